//! The embedded backend: one SQLite file in WAL mode.
//!
//! One thread owns the only writing connection and runs the operations of the open write
//! transaction, in order ([`tx`]). Reads go to a small pool of read-only connections, which WAL
//! lets run beside the writer ([`read`]), and another thread copies the WAL back into the
//! database file ([`checkpoint`]). The writer's commits are synced to disk outside the commit
//! ([`wal_sync`]).

mod checkpoint;
mod read;
mod rows;
mod rule_keys;
mod tx;
mod wal_sync;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use r2d2::Pool;
use r2d2_sqlite::SqliteConnectionManager;
use rusqlite::Connection;
use rusqlite_migration::{M, Migrations};
use serde::{Deserialize, Serialize};

use super::audit::AuditRecord;
use super::backend::{Backend, RuleChunks, Transaction, TxOutput, TxWork};
use super::{
    BouncerRecord, Change, CursorMove, DecisionDelta, Page, Pull, QueueStats, RuleCount, RuleQuery,
    Snapshot, StoreError, StoreResult, StreamCursor,
};
use crate::keys::{ApiKey, KeyDigest, Principal};
use crate::rules::{Rule, RuleAction, RuleId, TenantId, UnixMillis};
use rule_keys::{RuleKey, RuleKeys};
use wal_sync::WalSync;

pub const DB_FILE: &str = "palisade.db";

/// How long a connection waits for another process's lock (the command line managing keys
/// while the server runs) before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// WAL size, in 4 KiB pages, at which the writer copies the rest of the WAL back into the
/// database itself and starts it again: under writes without pauses, where the [`checkpoint`]
/// thread copies most of it but finds no pause to start it again.
const WAL_CHECKPOINT_PAGES: i64 = 65_536;

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        match e {
            rusqlite::Error::SqliteFailure(ref f, _)
                if matches!(
                    f.code,
                    rusqlite::ErrorCode::CannotOpen
                        | rusqlite::ErrorCode::DatabaseBusy
                        | rusqlite::ErrorCode::DatabaseLocked
                        | rusqlite::ErrorCode::SystemIoFailure
                ) =>
            {
                StoreError::Unavailable(e.to_string())
            }
            e => StoreError::Database(e.to_string()),
        }
    }
}

impl From<rusqlite_migration::Error> for StoreError {
    fn from(e: rusqlite_migration::Error) -> Self {
        StoreError::Migration(e.to_string())
    }
}

impl From<r2d2::Error> for StoreError {
    fn from(e: r2d2::Error) -> Self {
        StoreError::Unavailable(e.to_string())
    }
}

/// When SQLite makes a commit durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    /// Survives a crash of the process (kill -9); a power cut may lose the last commits.
    Normal,
    /// Also survives a power cut: a write is acknowledged only once the WAL is synced (the sync
    /// runs beside the writer's next commit, see [`wal_sync`]).
    #[default]
    Full,
}

#[derive(Debug, Clone)]
pub struct SqliteOptions {
    pub synchronous: Synchronous,
    /// Page cache of the writing connection, in MiB.
    pub cache_mib: u32,
    /// Below this much free space on the data directory's file system the backend says it
    /// has no capacity: a nearly full disk still takes a probe's tiny write but refuses a batch
    /// of signals.
    pub min_free_bytes: u64,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        Self {
            synchronous: Synchronous::default(),
            cache_mib: 64,
            min_free_bytes: 64 * 1024 * 1024,
        }
    }
}

/// Work for the connection thread.
type Call = Box<dyn FnOnce(&mut Connection) + Send>;

pub struct SqliteBackend {
    calls: std::sync::mpsc::Sender<Call>,
    /// Held by the open write transaction.
    turn: Arc<tokio::sync::Mutex<()>>,
    readers: Pool<SqliteConnectionManager>,
    path: PathBuf,
    min_free_bytes: u64,
    /// The stored rules' keys, kept by the writer (see [`rule_keys`]).
    keys: Arc<RuleKeys>,
    /// Syncs the writer's commits at `synchronous = full` (see [`wal_sync`]).
    wal_sync: Option<Arc<WalSync>>,
    _checkpointer: checkpoint::Checkpointer,
}

/// Creates the data directory (0700) and the database file (0600) before SQLite does, so that
/// no other local user can read rules or key digests; SQLite gives its WAL and shared-memory
/// files the database file's mode. Files left readable by others (by an older version) are
/// tightened. Returns the database's path.
fn prepare_files(data_dir: &Path) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(data_dir)?;
    let path = data_dir.join(DB_FILE);
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&path)?;
    for suffix in ["", "-wal", "-shm"] {
        let file = PathBuf::from(format!("{}{suffix}", path.display()));
        if let Ok(meta) = std::fs::metadata(&file)
            && meta.permissions().mode() & 0o077 != 0
        {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))?;
            tracing::warn!(file = %file.display(), "the file was readable by other users; made it 0600");
        }
    }
    Ok(path)
}

fn migrations() -> Migrations<'static> {
    Migrations::new(vec![
        M::up(include_str!("schema_v1.sql")),
        M::up(include_str!("schema_v2.sql")),
        M::up(include_str!("schema_v3.sql")),
        M::up(include_str!("schema_v4.sql")),
        M::up(include_str!("schema_v5.sql")),
        M::up(include_str!("schema_v6.sql")),
        M::up(include_str!("schema_v7.sql")),
        M::up(include_str!("schema_v8.sql")),
    ])
}

impl SqliteBackend {
    /// Opens (creating when needed) the database in `data_dir`, migrates it, and starts the
    /// thread that owns the writing connection.
    pub fn open(data_dir: &Path, options: SqliteOptions) -> StoreResult<Self> {
        let path = prepare_files(data_dir).map_err(|source| StoreError::DataDir {
            path: data_dir.display().to_string(),
            source,
        })?;
        let mut conn = Connection::open(&path)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        let synchronous = match options.synchronous {
            Synchronous::Normal => "NORMAL",
            Synchronous::Full => "FULL",
        };
        conn.pragma_update(None, "synchronous", synchronous)?;
        // Inserts into large indexes touch pages all over the file; with SQLite's 2 MB default
        // cache, a group commit spills and rewrites the same pages several times.
        conn.pragma_update(None, "cache_size", -(options.cache_mib as i64) * 1024)?;
        // Every statement the writer runs stays prepared (there are a few dozen): rusqlite's
        // default of 16 would have maintenance and key writes evict the ingest's statements.
        conn.set_prepared_statement_cache_capacity(64);
        migrations().to_latest(&mut conn)?;
        conn.pragma_update(None, "wal_autocheckpoint", WAL_CHECKPOINT_PAGES)?;
        // Migrated at the setting asked for; from here on the writer's commits are synced by
        // `wal_sync`, outside the commit.
        let wal_sync = (options.synchronous == Synchronous::Full)
            .then(|| conn.pragma_update(None, "synchronous", "NORMAL"))
            .transpose()?
            .map(|()| Arc::new(WalSync::new(&path)));
        let checkpointer = checkpoint::Checkpointer::start(&path, synchronous)?;

        let manager = SqliteConnectionManager::file(&path).with_init(|c| {
            c.busy_timeout(BUSY_TIMEOUT)?;
            c.pragma_update(None, "query_only", true)
        });
        let readers = Pool::builder()
            .max_size(8)
            .min_idle(Some(1))
            .build(manager)?;

        let (calls, work) = std::sync::mpsc::channel::<Call>();
        std::thread::Builder::new()
            .name("palisade-writer".into())
            .spawn(move || {
                for call in work {
                    call(&mut conn);
                }
            })
            .map_err(|e| StoreError::Task(e.to_string()))?;
        Ok(Self {
            calls,
            turn: Arc::new(tokio::sync::Mutex::new(())),
            readers,
            path,
            min_free_bytes: options.min_free_bytes,
            keys: Default::default(),
            wal_sync,
            _checkpointer: checkpointer,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn read<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    {
        let pool = self.readers.clone();
        tokio::task::spawn_blocking(move || {
            let conn = pool.get()?;
            f(&conn)
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
    }
}

/// The whole of a write transaction on the connection's thread: the work's operations complete
/// as soon as they are asked for, so driving it to the end never waits.
/// At `synchronous = full`, the commit is synced later, by [`Backend::durable`].
fn run_on_thread(
    conn: &mut Connection,
    keys: &RuleKeys,
    wal_sync: Option<&WalSync>,
    work: TxWork,
) -> StoreResult<TxOutput> {
    let mut tx = tx::Direct::begin(conn, keys)?;
    match futures_executor::block_on(work(&mut tx)) {
        Ok(output) => tx.finish().map(|()| {
            wal_sync.inspect(|wal| wal.committed());
            output
        }),
        Err(e) => {
            tx.rollback();
            Err(e)
        }
    }
}

#[async_trait]
impl Backend for SqliteBackend {
    async fn begin(&self) -> StoreResult<Box<dyn Transaction>> {
        let turn = self.turn.clone().lock_owned().await;
        let tx = tx::SqliteTransaction::begin(
            self.calls.clone(),
            self.keys.clone(),
            self.wal_sync.clone(),
            turn,
        )
        .await?;
        Ok(Box::new(tx))
    }

    async fn transact(&self, work: TxWork) -> StoreResult<TxOutput> {
        let _turn = self.turn.lock().await;
        let (reply, answer) = tokio::sync::oneshot::channel();
        let keys = self.keys.clone();
        let wal_sync = self.wal_sync.clone();
        self.calls
            .send(Box::new(move |conn: &mut Connection| {
                let _ = reply.send(run_on_thread(conn, &keys, wal_sync.as_deref(), work));
            }))
            .map_err(|_| StoreError::WriterGone)?;
        answer.await.map_err(|_| StoreError::WriterGone)?
    }

    async fn durable(&self) -> StoreResult<()> {
        let Some(wal_sync) = self.wal_sync.clone() else {
            return Ok(());
        };
        tokio::task::spawn_blocking(move || wal_sync.sync())
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
    }

    async fn rule(
        &self,
        tenant: TenantId,
        id: RuleId,
        now: UnixMillis,
    ) -> StoreResult<Option<Rule>> {
        self.read(move |c| read::rule(c, tenant, id, now)).await
    }

    async fn rules(&self, tenant: TenantId, query: RuleQuery) -> StoreResult<Page<Rule>> {
        let keys = self.keys.clone();
        self.read(move |c| {
            // No index has the target: the writer's map of keys finds its rules, when the map
            // holds what this read's snapshot holds (else the listing scans the tenant's rules).
            let tx = c.unchecked_transaction()?;
            let ids = query.target.and_then(|target| {
                let wanted: Vec<RuleKey> = [RuleAction::Block, RuleAction::Allow]
                    .into_iter()
                    .filter(|action| query.action.is_none_or(|wanted| wanted == *action))
                    .map(|action| (tenant, action, target))
                    .collect();
                let (ids, seen) = keys.committed_ids(&wanted)?;
                (rule_keys::last_change(&tx).ok()? == seen).then_some(ids)
            });
            let page = read::rules(&tx, tenant, &query, ids.as_deref())?;
            tx.commit()?;
            Ok(page)
        })
        .await
    }

    async fn rule_counts(&self, tenant: TenantId, now: UnixMillis) -> StoreResult<Vec<RuleCount>> {
        self.read(move |c| read::rule_counts(c, tenant, now)).await
    }

    async fn audit_record_sizes(
        &self,
        tenant: TenantId,
        at_most: i64,
        limit: usize,
    ) -> StoreResult<Vec<(i64, usize)>> {
        self.read(move |c| read::audit_record_sizes(c, tenant, at_most, limit))
            .await
    }

    async fn audit_records(
        &self,
        tenant: TenantId,
        oldest: i64,
        newest: i64,
    ) -> StoreResult<Vec<AuditRecord>> {
        self.read(move |c| read::audit_records(c, tenant, oldest, newest))
            .await
    }

    async fn changes_since(&self, seq: u64, limit: usize) -> StoreResult<Vec<Change>> {
        self.read(move |c| read::changes_since(c, seq, limit)).await
    }

    async fn snapshot(&self, now: UnixMillis) -> StoreResult<Snapshot> {
        self.read(move |c| read::snapshot(c, now)).await
    }

    async fn keys(&self) -> StoreResult<Vec<ApiKey>> {
        self.read(read::keys).await
    }

    async fn live_keys(&self) -> StoreResult<Vec<(KeyDigest, Principal)>> {
        self.read(read::live_keys).await
    }

    async fn live_key(&self, digest: KeyDigest) -> StoreResult<Option<Principal>> {
        self.read(move |c| read::live_key(c, &digest)).await
    }

    async fn queue_stats(&self, tenant: Option<TenantId>) -> StoreResult<QueueStats> {
        self.read(move |c| read::queue_stats(c, tenant)).await
    }

    async fn waiting_reports(
        &self,
        tenant: TenantId,
        limit: usize,
    ) -> StoreResult<Vec<super::QueuedReport>> {
        self.read(move |c| read::waiting_reports(c, tenant, limit))
            .await
    }

    async fn bouncers(&self) -> StoreResult<Vec<BouncerRecord>> {
        self.read(read::bouncers).await
    }

    async fn bouncer(&self, key_id: i64) -> StoreResult<Option<BouncerRecord>> {
        self.read(move |c| read::bouncer(c, key_id)).await
    }

    async fn record_pull(&self, pull: Pull, cursor: CursorMove) -> StoreResult<bool> {
        // The turn keeps this write out of another write transaction's statements.
        let _turn = self.turn.lock().await;
        let (reply, answer) = tokio::sync::oneshot::channel();
        let wal_sync = self.wal_sync.clone();
        self.calls
            .send(Box::new(move |conn: &mut Connection| {
                let recorded = tx::record_pull(conn, &pull, cursor);
                let _ = reply.send(recorded.and_then(|changed| {
                    tx::synced(wal_sync.as_deref())?;
                    Ok(changed)
                }));
            }))
            .map_err(|_| StoreError::WriterGone)?;
        answer.await.map_err(|_| StoreError::WriterGone)?
    }

    async fn decision_delta(
        &self,
        tenant: TenantId,
        since: StreamCursor,
        now: UnixMillis,
        limit: usize,
    ) -> StoreResult<DecisionDelta> {
        self.read(move |c| read::decision_delta(c, tenant, since, now, limit))
            .await
    }

    async fn active_blocks(
        &self,
        tenant: TenantId,
        now: UnixMillis,
        chunk: usize,
    ) -> StoreResult<(u64, RuleChunks)> {
        let (head_to, head) = tokio::sync::oneshot::channel();
        let (chunks, receiver) = tokio::sync::mpsc::channel(2);
        let pool = self.readers.clone();
        let chunk = chunk.max(1);
        tokio::task::spawn_blocking(move || {
            let outcome = pool
                .get()
                .map_err(StoreError::from)
                .and_then(|conn| read::active_blocks(&conn, tenant, now, chunk, head_to, &chunks));
            if let Err(e) = outcome {
                let _ = chunks.blocking_send(Err(e));
            }
        });
        match head.await {
            Ok(seq) => Ok((seq?, receiver)),
            // The reading failed before it had a head: its error is the first chunk.
            Err(_) => {
                let mut receiver = receiver;
                match receiver.recv().await {
                    Some(Err(e)) => Err(e),
                    _ => Err(StoreError::Task("reading the rules stopped".into())),
                }
            }
        }
    }

    fn prepare_for_writes(&self) {
        let (turn, calls, keys) = (self.turn.clone(), self.calls.clone(), self.keys.clone());
        tokio::spawn(async move {
            // Between write transactions: a write driven hop by hop may be open.
            let _turn = turn.lock().await;
            let (done, read) = tokio::sync::oneshot::channel();
            let call: Call = Box::new(move |conn: &mut Connection| {
                let _ = done.send(keys.read_ahead(conn));
            });
            if calls.send(call).is_ok()
                && let Ok(Err(e)) = read.await
            {
                tracing::warn!(error = %e, "reading the rule keys ahead of the first write failed; that write will read them");
            }
        });
    }

    async fn capacity(&self) -> StoreResult<()> {
        let dir = self.path.parent().unwrap_or(Path::new(".")).to_owned();
        let stat = rustix::fs::statvfs(&dir).map_err(|e| StoreError::DataDir {
            path: dir.display().to_string(),
            source: e.into(),
        })?;
        let free = stat.f_bavail.saturating_mul(stat.f_frsize);
        if free < self.min_free_bytes {
            return Err(StoreError::DiskFull {
                free,
                wanted: self.min_free_bytes,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use rusqlite::Connection;

    use super::{SqliteBackend, migrations};
    use crate::rules::{TenantId, UnixMillis};
    use crate::store::StoreError;
    use crate::store::audit::{
        AuditEntries, NewAuditRecord, OLDER_ENTRIES, assert_older_entries_read_back, entry_id,
    };
    use crate::store::backend::Backend;

    /// The rebuilds of `rules` (keyed by target in version 6, without the key in version 8)
    /// keep every row, its id and the AUTOINCREMENT counter: ids of rules deleted before an
    /// upgrade are not handed out again.
    #[test]
    fn rules_rebuilt_keep_ids_and_the_id_counter() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrations().to_version(&mut conn, 5).unwrap();
        conn.execute_batch(
            "INSERT INTO rules (tenant_id, action, kind, target, source, created_at, updated_at,
                                tags, reports, dataset, expires_at, name, description)
             VALUES (1, 'block', 'ip', '192.0.2.1/32', 'signal', 1, 2, '[\"a\"]', 3, 'd', 9,
                     'n', 'x'),
                    (1, 'allow', 'ip', '192.0.2.1/32', 'signal', 1, 2, '[]', 0, NULL, NULL,
                     NULL, NULL),
                    (1, 'block', 'asn', '13335', 'report', 1, 2, '[]', 0, NULL, NULL, NULL,
                     NULL);
             DELETE FROM rules WHERE id = 3;",
        )
        .unwrap();
        let rows = |conn: &Connection| -> Vec<String> {
            conn.prepare(
                "SELECT id || ' ' || tenant_id || ' ' || action || ' ' || kind || ' ' || target
                        || ' ' || source || ' ' || tags || ' ' || reports || ' '
                        || coalesce(dataset, '-') || ' ' || coalesce(expires_at, '-') || ' '
                        || coalesce(name, '-') || ' ' || coalesce(description, '-')
                 FROM rules ORDER BY id",
            )
            .unwrap()
            .query_map([], |row| row.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
        };
        // The id a new rule gets.
        let insert = |conn: &Connection, target: &str| {
            conn.execute(
                "INSERT INTO rules (tenant_id, action, kind, target, source, created_at, updated_at)
                 VALUES (1, 'block', 'ip', ?1, 'signal', 1, 1)",
                [target],
            )
            .unwrap();
            conn.last_insert_rowid()
        };
        let before = rows(&conn);
        migrations().to_version(&mut conn, 6).unwrap();
        assert_eq!(rows(&conn), before);
        assert_eq!(before.len(), 2);
        assert_eq!(
            insert(&conn, "192.0.2.2/32"),
            4,
            "id 3 was used before the upgrade"
        );
        let duplicate = conn.execute(
            "INSERT INTO rules (tenant_id, action, kind, target, source, created_at, updated_at)
             VALUES (1, 'block', 'ip', '192.0.2.2/32', 'signal', 1, 1)",
            [],
        );
        assert!(duplicate.is_err(), "one rule per key");
        let indexes = index_names(&conn);
        assert_eq!(
            indexes,
            [
                "rules_by_expiry",
                "rules_by_tenant",
                "sqlite_autoindex_rules_1"
            ]
        );
        let key: Vec<String> = conn
            .prepare(
                "SELECT name FROM pragma_index_info('sqlite_autoindex_rules_1') ORDER BY seqno",
            )
            .unwrap()
            .query_map([], |row| row.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(key, ["target", "tenant_id", "action", "kind"]);

        let before = rows(&conn);
        migrations().to_latest(&mut conn).unwrap();
        assert_eq!(rows(&conn), before);
        assert_eq!(
            insert(&conn, "192.0.2.3/32"),
            5,
            "id 4 was used before the upgrade"
        );
        let indexes = index_names(&conn);
        assert_eq!(
            indexes,
            ["rules_by_expiry", "rules_by_tenant"],
            "the key is kept by the writer, not by an index"
        );
        migrations().validate().unwrap();
    }

    /// The names of the rules table's indexes, in order.
    fn index_names(conn: &Connection) -> Vec<String> {
        conn.prepare("SELECT name FROM pragma_index_list('rules') ORDER BY name")
            .unwrap()
            .query_map([], |row| row.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    /// Stores a rule and its change, as a write does; returns its id.
    async fn store_rule(backend: &SqliteBackend, rule: crate::rules::NewRule) -> i64 {
        let mut change = crate::store::Change::of(
            &rule.clone().with_id(0),
            crate::store::ChangeOp::Put,
            UnixMillis(1),
        );
        let mut tx = backend.begin().await.unwrap();
        let id = tx.insert_rules(&[rule]).await.unwrap()[0];
        change.rule_id = id;
        tx.append_changes(&mut [change]).await.unwrap();
        tx.commit().await.unwrap();
        id
    }

    /// At `synchronous = full` a group commit is synced when the engine asks the backend to
    /// make it durable, and a transaction committed through `begin` before its commit returns;
    /// at `normal` nothing is synced outside SQLite.
    #[tokio::test]
    async fn commits_are_synced_before_they_are_answered_at_full() {
        use crate::rules::{NewRule, Target};
        let dir = tempfile::tempdir().unwrap();
        let backend = SqliteBackend::open(dir.path(), Default::default()).unwrap();
        let syncs = backend.wal_sync.clone().expect("full is the default");
        let rule = NewRule::block(
            TenantId(1),
            Target::parse_any("192.0.2.1").unwrap(),
            UnixMillis(1),
        );
        store_rule(&backend, rule.clone()).await;
        assert_eq!(syncs.counts(), (1, 1), "synced within the commit");
        let work: super::TxWork = Box::new(move |tx| {
            Box::pin(async move {
                tx.insert_absent_rules(&[rule]).await?;
                Ok(Box::new(()) as super::TxOutput)
            })
        });
        backend.transact(work).await.unwrap();
        assert_eq!(syncs.counts(), (2, 1), "a group commit is synced later");
        backend.durable().await.unwrap();
        assert_eq!(syncs.counts(), (2, 2));

        let dir = tempfile::tempdir().unwrap();
        let options = super::SqliteOptions {
            synchronous: super::Synchronous::Normal,
            ..Default::default()
        };
        let backend = SqliteBackend::open(dir.path(), options).unwrap();
        assert!(backend.wal_sync.is_none());
        backend.durable().await.unwrap();
    }

    /// The engine answers a write only once the backend has made it durable.
    #[tokio::test]
    async fn the_engine_answers_a_write_once_it_is_synced() {
        use std::sync::Arc;

        use crate::engine::{Engine, Feed, Policies};
        let dir = tempfile::tempdir().unwrap();
        let backend = SqliteBackend::open(dir.path(), Default::default()).unwrap();
        let syncs = backend.wal_sync.clone().expect("full is the default");
        let backend: crate::store::backend::SharedBackend = Arc::new(backend);
        let feed = Arc::new(Feed::new(
            backend.clone(),
            Arc::new(crate::clock::SystemClock),
            Vec::new(),
        ));
        let engine = Engine::start(backend, feed, Policies::default());
        engine.probe(UnixMillis(1)).await.unwrap();
        let (committed, synced) = syncs.counts();
        assert!(committed >= 1);
        assert_eq!(synced, committed);
    }

    /// A server reads the rule keys ahead of its first write, and that write then finds them
    /// (including a rule stored after the read, by another handle on the file).
    #[tokio::test]
    async fn rule_keys_are_read_ahead_of_the_first_write() {
        use crate::rules::{NewRule, RuleAction, Target};
        let dir = tempfile::tempdir().unwrap();
        let new = |text: &str| {
            NewRule::block(TenantId(1), Target::parse_any(text).unwrap(), UnixMillis(1))
        };
        let other = SqliteBackend::open(dir.path(), Default::default()).unwrap();
        let first = store_rule(&other, new("192.0.2.1")).await;
        let backend = SqliteBackend::open(dir.path(), Default::default()).unwrap();
        let key = (
            TenantId(1),
            RuleAction::Block,
            Target::parse_any("192.0.2.1").unwrap(),
        );
        assert_eq!(
            backend.keys.committed_ids(&[key]),
            None,
            "not read before it is asked for"
        );
        backend.prepare_for_writes();
        // Polled, not timed: the read runs on the writer's thread.
        for _ in 0..1000 {
            if backend.keys.committed_ids(&[key]).is_some() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(
            backend.keys.committed_ids(&[key]).map(|(ids, _)| ids),
            Some(vec![first])
        );
        let second = store_rule(&other, new("192.0.2.2")).await;
        let mut tx = backend.begin().await.unwrap();
        let found = tx
            .insert_absent_rules(&[new("192.0.2.2"), new("192.0.2.3")])
            .await
            .unwrap();
        assert_eq!(found[0], None, "rule {second} is stored under that key");
        assert!(found[1].is_some());
    }

    /// Every audit entry of an older store becomes a record of its own, keeping its text, its
    /// error and its place; records made after are numbered above.
    #[tokio::test]
    async fn audit_entries_of_an_older_store_become_records_of_their_own() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = Connection::open(dir.path().join(super::DB_FILE)).unwrap();
        migrations().to_version(&mut conn, 6).unwrap();
        let mut insert = conn
            .prepare(
                "INSERT INTO audit (tenant_id, key_id, request_id, at, entry_index, event, error)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )
            .unwrap();
        for (key_id, request_id, at, index, event, error) in OLDER_ENTRIES {
            insert
                .execute(rusqlite::params![
                    1, key_id, request_id, at, index, event, error
                ])
                .unwrap();
        }
        // Another tenant's entry, which the first tenant's log does not show.
        insert
            .execute(rusqlite::params![2, 6, "req-b", 30, 0, "{}", None::<&str>])
            .unwrap();
        drop(insert);
        drop(conn);
        let backend = SqliteBackend::open(dir.path(), Default::default()).unwrap();
        assert_older_entries_read_back(&backend.audit(TenantId(1), None, 10).await.unwrap());
        let mut tx = backend.begin().await.unwrap();
        let after =
            NewAuditRecord::single(TenantId(1), 0, "after".into(), UnixMillis(40), "{}", None);
        tx.append_audit(&[after]).await.unwrap();
        tx.commit().await.unwrap();
        let newest = &backend.audit(TenantId(1), None, 1).await.unwrap().items[0];
        assert_eq!(
            (newest.id, newest.request_id.as_str()),
            (entry_id(5, 0), "after")
        );
    }

    /// A batch's audit entries are stored compressed and read back as written; a damaged
    /// record is refused as corrupt instead of being unpacked to whatever size it claims.
    #[tokio::test]
    async fn audit_entries_are_stored_compressed_and_read_back_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let backend = SqliteBackend::open(dir.path(), Default::default()).unwrap();
        let event = |i: u32| {
            format!(
                r#"{{"type":"access_rules","action":"block","ip":"192.0.2.{}"}}"#,
                i % 256
            )
        };
        let error = |i: u32| i.is_multiple_of(7).then_some("not a valid IP");
        let mut entries = AuditEntries::with_capacity(1000, 0);
        for i in 0..1000 {
            entries.push(Some(i), &event(i), error(i));
        }
        let record = NewAuditRecord::new(TenantId(1), 3, "batch".into(), UnixMillis(10), entries);
        let text_bytes = record.entries.len();
        let mut tx = backend.begin().await.unwrap();
        tx.append_audit(&[record]).await.unwrap();
        tx.commit().await.unwrap();

        let conn = Connection::open(dir.path().join(super::DB_FILE)).unwrap();
        let stored = || -> (String, i64) {
            conn.query_row(
                "SELECT typeof(entries), length(entries) FROM audit_records",
                [],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .unwrap()
        };
        let (stored_as, stored_bytes) = stored();
        assert_eq!(stored_as, "blob");
        assert!(
            stored_bytes as usize * 5 < text_bytes,
            "{stored_bytes} bytes stored for {text_bytes}"
        );
        let page = backend.audit(TenantId(1), None, 1000).await.unwrap();
        let read: Vec<_> = page
            .items
            .iter()
            .map(|e| {
                (
                    e.index,
                    e.event.clone(),
                    e.error.clone(),
                    e.request_id.as_str(),
                )
            })
            .collect();
        let written: Vec<_> = (0..1000)
            .rev()
            .map(|i| (Some(i), event(i), error(i).map(String::from), "batch"))
            .collect();
        assert_eq!(read, written);

        // The length in front says 2 GiB: refused on that length, before unpacking.
        conn.execute(
            "UPDATE audit_records SET entries = CAST(X'00000080' || substr(entries, 5) AS BLOB)",
            [],
        )
        .unwrap();
        assert_eq!(stored().0, "blob");
        let refused = backend.audit(TenantId(1), None, 10).await.unwrap_err();
        assert!(
            matches!(&refused, StoreError::Corrupt(why) if why.contains("2147483648 bytes")),
            "{refused:?}"
        );
        // Cut short.
        conn.execute("UPDATE audit_records SET entries = X'10000000f0'", [])
            .unwrap();
        assert_eq!(stored(), ("blob".into(), 5));
        let refused = backend.audit(TenantId(1), None, 10).await.unwrap_err();
        assert!(matches!(refused, StoreError::Corrupt(_)), "{refused:?}");
    }
}
