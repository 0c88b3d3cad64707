//! Copying the WAL back into the database file on a thread of its own. Left to the writer
//! (SQLite's automatic checkpoint), every 64 MB of WAL one commit also wrote tens of megabytes
//! into the database file and synced them, and every write queued behind it. Here a second
//! connection copies what has been committed while the writer goes on; the writer waits only
//! for the short tail a restart of the log needs.

use std::path::Path;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::Duration;

use rusqlite::Connection;

use crate::store::{StoreError, StoreResult};

/// How often committed frames are copied into the database file. A page that commits keep
/// touching (an index leaf) is copied once per round, however many commits touched it.
const INTERVAL: Duration = Duration::from_millis(100);

/// WAL frames (4 KiB pages) after which the log, once copied, is started again from its
/// beginning; this bounds the WAL file to about this size while writes keep coming.
const RESTART_FRAMES: i64 = 8_192;

/// How long a restart waits for the writer's transaction and for readers still on the old
/// log. Writers wait for a restart in progress, so it gives up rather than hold them longer;
/// the next round tries again.
const RESTART_WAIT: Duration = Duration::from_millis(100);

/// Runs checkpoints until dropped.
pub(super) struct Checkpointer {
    _stop: Sender<()>,
}

impl Checkpointer {
    pub(super) fn start(path: &Path, synchronous: &str) -> StoreResult<Self> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(RESTART_WAIT)?;
        // As durable as the writer: with either setting, a checkpoint syncs the WAL before
        // copying it and the database file before the log may be reused.
        conn.pragma_update(None, "synchronous", synchronous)?;
        let (stop, stopped) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("palisade-checkpoint".into())
            .spawn(move || run(conn, stopped))
            .map_err(|e| StoreError::Task(e.to_string()))?;
        Ok(Self { _stop: stop })
    }
}

fn run(conn: Connection, stopped: Receiver<()>) {
    while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(INTERVAL) {
        if let Err(e) = checkpoint(&conn, RESTART_FRAMES) {
            tracing::warn!(error = %e, "checkpoint failed; trying again");
        }
    }
}

/// Copies what it can without holding up the writer, then restarts the log when it holds at
/// least `restart_frames`: only the frames committed meanwhile are copied with the writer held.
fn checkpoint(conn: &Connection, restart_frames: i64) -> rusqlite::Result<()> {
    if run_checkpoint(conn, "PASSIVE")? >= restart_frames {
        run_checkpoint(conn, "RESTART")?;
    }
    Ok(())
}

/// Runs one checkpoint; returns the frames the log held. A checkpoint that could not finish
/// (`SQLITE_BUSY`) answers with a row like any other: the next round tries again.
fn run_checkpoint(conn: &Connection, mode: &str) -> rusqlite::Result<i64> {
    conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |row| {
        row.get(1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Frames in the log, as a checkpoint that copies nothing reports them.
    fn frames(conn: &Connection) -> i64 {
        conn.query_row("PRAGMA wal_checkpoint(NOOP)", [], |row| row.get(1))
            .unwrap()
    }

    fn writer(path: &Path) -> Connection {
        let conn = Connection::open(path).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        // Only the checkpoints under test copy the log.
        conn.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
        conn.execute_batch("CREATE TABLE t (v TEXT)").unwrap();
        conn
    }

    fn commit_rows(conn: &Connection, commits: usize) {
        for i in 0..commits {
            conn.execute("INSERT INTO t (v) VALUES (?1)", [format!("row {i}")])
                .unwrap();
        }
    }

    #[test]
    fn a_long_log_is_copied_and_started_again_while_the_writer_keeps_its_connection() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let writer = writer(&path);
        let checkpointer = Connection::open(&path).unwrap();
        commit_rows(&writer, 40);
        let before = frames(&checkpointer);
        assert!(before >= 40, "each commit adds a frame: {before}");

        checkpoint(&checkpointer, 16).unwrap();
        commit_rows(&writer, 1);

        // The next commit went to the start of the log, and everything before it is in the
        // database file.
        let after = frames(&checkpointer);
        assert!(after < 5, "the log was not started again: {after} frames");
        let rows: i64 = checkpointer
            .query_row("SELECT count(*) FROM t", [], |row| row.get(0))
            .unwrap();
        assert_eq!(rows, 41);
    }

    #[test]
    fn the_thread_copies_the_log_without_being_asked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let writer = writer(&path);
        commit_rows(&writer, 20);
        let observer = Connection::open(&path).unwrap();
        let _running = Checkpointer::start(&path, "FULL").unwrap();
        // Waits for the thread's first rounds; bounded so that a thread that never copies fails.
        let copied = (0..200).find_map(|_| {
            std::thread::sleep(INTERVAL / 4);
            let copied: i64 = observer
                .query_row("PRAGMA wal_checkpoint(NOOP)", [], |row| row.get(2))
                .unwrap();
            (copied >= 20).then_some(copied)
        });
        assert!(copied.is_some(), "no frame was copied in 5 s");
    }
}
