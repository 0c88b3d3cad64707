//! Copying the WAL back into the database file on a thread of its own. Left to the writer
//! (SQLite's automatic checkpoint), every 64 MB of WAL one commit also wrote tens of megabytes
//! into the database file and synced them, and every write queued behind it. Here a second
//! connection copies what has been committed while the writer goes on; the writer waits only
//! while the WAL is started again, for the frames committed since the last copy.

use std::path::Path;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::Duration;

use rusqlite::Connection;

use crate::store::{StoreError, StoreResult};

/// How often committed frames are copied into the database file. A page that commits keep
/// touching (an index leaf) is copied once per round, however many commits touched it.
const INTERVAL: Duration = Duration::from_millis(100);

/// WAL frames (4 KiB pages) after which the WAL, once copied, is started again from its
/// beginning. That needs a pause between the writer's transactions (see [`RESTART_WAIT`]);
/// under writes without pauses the writer's own checkpoint bounds the WAL instead.
const RESTART_FRAMES: i64 = 8_192;

/// How long a restart waits for the writer's transaction to end and for readers still on the
/// old WAL. Writers wait for a restart in progress, so it gives up rather than hold them
/// longer; the next round tries again.
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
        // copying from it and the database file before the WAL may be reused.
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

/// Copies what it can without holding up the writer, then starts the WAL again when it holds
/// at least `restart_frames`: only the frames committed meanwhile are copied with the writer
/// held.
fn checkpoint(conn: &Connection, restart_frames: i64) -> rusqlite::Result<()> {
    if run_checkpoint(conn, "PASSIVE")? >= restart_frames {
        run_checkpoint(conn, "RESTART")?;
    }
    Ok(())
}

/// Runs one checkpoint; returns the frames the WAL held. A checkpoint that could not finish
/// (`SQLITE_BUSY`) answers with a row like any other: the next round tries again.
fn run_checkpoint(conn: &Connection, mode: &str) -> rusqlite::Result<i64> {
    conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |row| {
        row.get(1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Frames in the WAL, and how many of them are copied into the database file.
    fn wal(conn: &Connection) -> (i64, i64) {
        conn.query_row("PRAGMA wal_checkpoint(NOOP)", [], |row| {
            Ok((row.get(1)?, row.get(2)?))
        })
        .unwrap()
    }

    fn writer(path: &Path) -> Connection {
        let conn = Connection::open(path).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        // Only the checkpoints under test copy the WAL.
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
    fn a_long_wal_is_copied_and_started_again_while_the_writer_keeps_its_connection() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let writer = writer(&path);
        let checkpointer = Connection::open(&path).unwrap();
        commit_rows(&writer, 40);
        let (frames, copied) = wal(&checkpointer);
        assert!(
            frames >= 40 && copied == 0,
            "{frames} frames, {copied} copied"
        );

        checkpoint(&checkpointer, 16).unwrap();
        commit_rows(&writer, 1);

        // The next commit went to the start of the WAL, and everything before it is in the
        // database file.
        let (after, _) = wal(&checkpointer);
        assert!(after < 5, "the WAL was not started again: {after} frames");
        let rows: i64 = checkpointer
            .query_row("SELECT count(*) FROM t", [], |row| row.get(0))
            .unwrap();
        assert_eq!(rows, 41);
    }

    #[test]
    fn the_thread_copies_the_wal_without_being_asked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let writer = writer(&path);
        commit_rows(&writer, 20);
        let observer = Connection::open(&path).unwrap();
        let _running = Checkpointer::start(&path, "FULL").unwrap();
        // Waits for the thread's first rounds, at most 10 s, so that a thread that never
        // copies fails.
        let copied = (0..400).find_map(|_| {
            std::thread::sleep(INTERVAL / 4);
            let (frames, copied) = wal(&observer);
            (copied == frames).then_some(copied)
        });
        assert!(copied.is_some_and(|c| c >= 20), "copied: {copied:?}");
    }
}
