//! Making the writer's commits durable (`synchronous = full`) without the writer waiting for it.
//!
//! SQLite's own FULL mode syncs the WAL inside each COMMIT, while the one writing connection
//! holds the database: under ingest the writer, which every write goes through, spent a good
//! part of each group commit waiting for the disk, and the next group waited behind it. So the
//! writing connection runs at NORMAL (a commit reaches the operating system, so it survives the
//! process being killed), and the WAL is synced here, on another thread, while the engine hands
//! the group's changes to the index. A write is acknowledged only once both are done.
//!
//! A checkpoint syncs the WAL before it copies from it, at NORMAL as at FULL, so a WAL started
//! again after a checkpoint never holds the only copy of an unsynced commit. Unlike SQLite's
//! FULL, readers of the database may see a commit up to one sync before it is on disk; a
//! bouncer's stream records its cursor (a commit synced before it returns, which syncs all
//! before it) before it answers, so what a stream sends is on disk.
//!
//! After a failed sync nothing is known of what reached the disk (the kernel may have dropped
//! the pages it could not write, and a second sync would then succeed): every later sync fails
//! too, so nothing more is acknowledged until a restart has SQLite recover from what the disk
//! holds.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use crate::store::{StoreError, StoreResult};

pub(super) struct WalSync {
    wal: PathBuf,
    /// Transactions the writer has committed, counted up to the one whose COMMIT returned last.
    committed: AtomicU64,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The WAL file as last opened, with its inode number.
    file: Option<(u64, File)>,
    /// Commits known to be on disk: the count of `committed` read before the last sync.
    synced: u64,
    failed: Option<String>,
}

impl WalSync {
    /// For the database file `db`.
    pub(super) fn new(db: &Path) -> Self {
        Self {
            wal: PathBuf::from(format!("{}-wal", db.display())),
            committed: AtomicU64::new(0),
            state: Mutex::default(),
        }
    }

    /// The writer's COMMIT of a transaction returned: its pages are in the WAL file.
    pub(super) fn committed(&self) {
        self.committed.fetch_add(1, Ordering::Release);
    }

    /// Returns once every transaction committed before the call is on disk. Callers that come
    /// while a sync runs wait for it; the sync after it then covers all of them at once.
    pub(super) fn sync(&self) -> StoreResult<()> {
        let wanted = self.committed.load(Ordering::Acquire);
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(why) = &state.failed {
            return Err(failed(why));
        }
        if state.synced >= wanted {
            return Ok(());
        }
        // Read again: commits made while this waited for the lock are covered as well.
        let covered = self.committed.load(Ordering::Acquire);
        match state.sync_file(&self.wal) {
            Ok(()) => {
                state.synced = covered;
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, wal = %self.wal.display(), "syncing the WAL failed; no write is acknowledged until a restart");
                let why = e.to_string();
                let error = failed(&why);
                state.failed = Some(why);
                Err(error)
            }
        }
    }

    #[cfg(test)]
    pub(super) fn counts(&self) -> (u64, u64) {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        (self.committed.load(Ordering::Acquire), state.synced)
    }
}

impl State {
    fn sync_file(&mut self, wal: &Path) -> std::io::Result<()> {
        // SQLite keeps the WAL file while a connection is open, and empties it rather than
        // deleting it; but a file opened before could have been deleted and made again by
        // another process once every connection had closed. Sync the file the path names now.
        let inode = match std::fs::metadata(wal) {
            Ok(meta) => meta.ino(),
            // The last connection to close copied the WAL into the database, synced it and
            // deleted the WAL: nothing is left to sync.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let file = match self.file.take() {
            Some((opened, file)) if opened == inode => file,
            _ => File::options().read(true).write(true).open(wal)?,
        };
        let synced = file.sync_data();
        self.file = Some((inode, file));
        synced
    }
}

fn failed(why: &str) -> StoreError {
    StoreError::Unavailable(format!("syncing the write-ahead log failed: {why}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sync_covers_every_commit_before_it_and_a_missing_wal_holds_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("palisade.db");
        let sync = WalSync::new(&db);
        sync.committed();
        // No WAL file yet: nothing to sync.
        sync.sync().unwrap();
        std::fs::write(dir.path().join("palisade.db-wal"), b"frames").unwrap();
        sync.committed();
        sync.committed();
        sync.sync().unwrap();
        assert_eq!(sync.counts(), (3, 3));
        // The WAL made again under the same name is the one synced.
        std::fs::remove_file(dir.path().join("palisade.db-wal")).unwrap();
        std::fs::write(dir.path().join("palisade.db-wal"), b"other frames").unwrap();
        sync.committed();
        sync.sync().unwrap();
        assert_eq!(sync.counts(), (4, 4));
    }

    #[test]
    fn after_a_failed_sync_every_sync_fails() {
        let dir = tempfile::tempdir().unwrap();
        // A directory where the WAL should be: opening it for writing fails.
        std::fs::create_dir(dir.path().join("palisade.db-wal")).unwrap();
        let sync = WalSync::new(&dir.path().join("palisade.db"));
        sync.committed();
        assert!(matches!(sync.sync(), Err(StoreError::Unavailable(_))));
        std::fs::remove_dir(dir.path().join("palisade.db-wal")).unwrap();
        std::fs::write(dir.path().join("palisade.db-wal"), b"frames").unwrap();
        assert!(matches!(sync.sync(), Err(StoreError::Unavailable(_))));
        assert_eq!(sync.counts(), (1, 0));
    }
}
