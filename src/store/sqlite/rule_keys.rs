//! The key of every stored rule (tenant, action, target), kept in memory by the writer instead
//! of as a UNIQUE index in the database.
//!
//! Scattered addresses make such an index take its new keys all over the file: each rule a group
//! commit created dirtied a leaf page of its own, which went to the WAL and again into the
//! database at checkpoints, about 4.5 KB written per ingested event against 0.8 KB without the
//! index, and the writer spent most of its time there. Rules are found by key only in write
//! transactions (to merge a write into the rule it names) and in listings filtered by target, so
//! a map kept beside the one writing connection answers both.
//!
//! The map follows the change log, which every write of a rule appends to in the same
//! transaction: each write transaction first reads the changes numbered above the last one the
//! map reflects, so writes by another process (the command line) on the same file are seen
//! before this one writes. A rolled-back transaction's changes to the map are undone. When the
//! changes the map missed are no longer all in the log (retention purged them), or the map was
//! never built, it is read again from the rules table.
//!
//! Listings by target ask the map for the ids the last commit left under a key, with the change
//! number that state reflects; a listing whose snapshot is at another number (another process
//! wrote since, or a commit landed in between) scans the tenant's rules instead.

use std::sync::{Mutex, MutexGuard};

use foldhash::HashMapExt;
use rusqlite::{Connection, OptionalExtension};

use super::rows;
use crate::rules::{RuleAction, RuleId, Target, TenantId};
use crate::store::{StoreError, StoreResult};

pub(super) type RuleKey = (TenantId, RuleAction, Target);

/// The keys of the stored rules; `None` until the first write transaction that needs them.
#[derive(Default)]
pub(super) struct RuleKeys(Mutex<Option<KeyMap>>);

pub(super) struct KeyMap {
    ids: foldhash::HashMap<RuleKey, RuleId>,
    /// The number of the last change-log entry the map reflects.
    seen: i64,
    /// The open transaction's changes to the map, in order: each key changed and the id it
    /// held before (so a key's first entry is its committed id).
    undo: Vec<(RuleKey, Option<RuleId>)>,
    /// `seen` when the open transaction began: the last committed change the map reflects.
    seen_at_begin: i64,
    /// Read inside the open transaction, which may have changed rules before: a rollback
    /// cannot tell those changes apart, so it drops the map.
    read_in_open_tx: bool,
}

impl RuleKeys {
    /// A write transaction began on `conn`: the map takes in what other processes committed
    /// since, or is dropped to be read again when it cannot.
    pub(super) fn began(&self, conn: &Connection) -> StoreResult<()> {
        let mut keys = self.lock();
        if let Some(map) = keys.as_mut() {
            if map.catch_up(conn)? {
                map.undo.clear();
                map.seen_at_begin = map.seen;
            } else {
                *keys = None;
            }
        }
        Ok(())
    }

    /// The map, current as of the open write transaction on `conn` (read on first use).
    pub(super) fn current(&self, conn: &Connection) -> StoreResult<MutexGuard<'_, Option<KeyMap>>> {
        let mut keys = self.lock();
        if keys.is_none() {
            *keys = Some(KeyMap::read(conn)?);
        }
        Ok(keys)
    }

    /// Reads the map now, in a read transaction of its own, when it has not been read yet.
    /// The next write transaction takes in what was committed after, as always.
    pub(super) fn read_ahead(&self, conn: &mut Connection) -> StoreResult<()> {
        let tx = conn.transaction()?;
        drop(self.current(&tx)?);
        tx.rollback()?;
        // The read transaction wrote nothing: what the map holds is committed.
        self.committed();
        Ok(())
    }

    /// The ids of the rules stored under `keys` as last committed (not as the open write
    /// transaction has them), and the number of the last change that state reflects; `None`
    /// when the map has not been read. Blocks while the writer holds the map.
    pub(super) fn committed_ids(&self, keys: &[RuleKey]) -> Option<(Vec<RuleId>, i64)> {
        let guard = self.lock();
        let map = guard.as_ref().filter(|map| !map.read_in_open_tx)?;
        let ids = keys
            .iter()
            .filter_map(|key| {
                // A key the open transaction changed had, before, the first value it noted.
                match map.undo.iter().find(|(changed, _)| changed == key) {
                    Some((_, before)) => *before,
                    None => map.ids.get(key).copied(),
                }
            })
            .collect();
        Some((ids, map.seen_at_begin))
    }

    /// The open transaction appended changes up to number `last`, for the rules it changed.
    pub(super) fn appended(&self, last: i64) {
        if let Some(map) = self.lock().as_mut() {
            map.seen = last;
        }
    }

    /// The open transaction committed: its changes to the map stand.
    pub(super) fn committed(&self) {
        if let Some(map) = self.lock().as_mut() {
            map.undo.clear();
            map.seen_at_begin = map.seen;
            map.read_in_open_tx = false;
        }
    }

    /// The open transaction was rolled back: so are its changes to the map.
    pub(super) fn rolled_back(&self) {
        let mut keys = self.lock();
        if keys.as_ref().is_some_and(|map| map.read_in_open_tx) {
            *keys = None;
        } else if let Some(map) = keys.as_mut() {
            while let Some((key, before)) = map.undo.pop() {
                match before {
                    Some(id) => map.ids.insert(key, id),
                    None => map.ids.remove(&key),
                };
            }
            map.seen = map.seen_at_begin;
        }
    }

    fn lock(&self) -> MutexGuard<'_, Option<KeyMap>> {
        // A panic while holding the lock may have left the map half changed: read it again.
        self.0.lock().unwrap_or_else(|poisoned| {
            let mut keys = poisoned.into_inner();
            *keys = None;
            keys
        })
    }
}

impl KeyMap {
    /// Every stored rule's key, read in the open transaction.
    fn read(conn: &Connection) -> StoreResult<Self> {
        let seen = last_change(conn)?;
        let count: i64 = conn.query_row("SELECT count(*) FROM rules", [], |row| row.get(0))?;
        let mut ids = foldhash::HashMap::with_capacity(count.max(0) as usize);
        let mut stmt = conn.prepare("SELECT tenant_id, action, kind, target, id FROM rules")?;
        let mut found = stmt.query([])?;
        while let Some(row) = found.next()? {
            let key = rows::rule_key(row)?;
            if let Some(other) = ids.insert(key, row.get(4)?) {
                return Err(StoreError::Corrupt(format!(
                    "two stored rules (ids {other} and {}) have one key",
                    ids[&key]
                )));
            }
        }
        Ok(Self {
            ids,
            seen,
            undo: Vec::new(),
            seen_at_begin: seen,
            read_in_open_tx: true,
        })
    }

    /// Applies the changes committed since the map was last current; `false` when some of them
    /// are no longer in the log, so the map must be read again.
    fn catch_up(&mut self, conn: &Connection) -> StoreResult<bool> {
        let last = last_change(conn)?;
        if last == self.seen {
            return Ok(true);
        }
        let mut stmt = conn.prepare_cached(
            "SELECT tenant_id, action, kind, target, seq, rule_id, op FROM rule_changes
             WHERE seq > ?1 ORDER BY seq",
        )?;
        let mut found = stmt.query([self.seen])?;
        let mut expected = self.seen + 1;
        while let Some(row) = found.next()? {
            // Numbers are given without gaps (AUTOINCREMENT, rolled back with the transaction
            // that took them), so a gap is retention having deleted changes not yet seen.
            if row.get::<_, i64>(4)? != expected {
                return Ok(false);
            }
            expected += 1;
            let key = rows::rule_key(row)?;
            let id: RuleId = row.get(5)?;
            if row.get_ref(6)?.as_str().map_err(rusqlite::Error::from)? == "put" {
                self.ids.insert(key, id);
            } else if self.ids.get(&key) == Some(&id) {
                self.ids.remove(&key);
            }
        }
        if expected != last + 1 {
            return Ok(false);
        }
        self.seen = last;
        Ok(true)
    }

    pub(super) fn get(&self, key: &RuleKey) -> Option<RuleId> {
        self.ids.get(key).copied()
    }

    /// Notes a rule stored under `key` as `id` when no rule has that key; `false`, noting
    /// nothing, when one has (also one noted earlier in the open transaction). One search of
    /// the map for both: under ingest it is as large as the store, and each search a read
    /// from memory.
    pub(super) fn insert_absent(&mut self, key: RuleKey, id: RuleId) -> bool {
        match self.ids.entry(key) {
            std::collections::hash_map::Entry::Occupied(_) => false,
            std::collections::hash_map::Entry::Vacant(vacant) => {
                vacant.insert(id);
                self.undo.push((key, None));
                true
            }
        }
    }

    /// Notes the rule `id` stored under `key` deleted.
    pub(super) fn remove(&mut self, key: RuleKey, id: RuleId) {
        if self.ids.get(&key) == Some(&id) {
            self.ids.remove(&key);
            self.undo.push((key, Some(id)));
        }
    }
}

/// The number of the last change ever appended (0 for none); purging the log keeps it.
pub(super) fn last_change(conn: &Connection) -> StoreResult<i64> {
    Ok(conn
        .prepare_cached("SELECT seq FROM sqlite_sequence WHERE name = 'rule_changes'")?
        .query_row([], |row| row.get(0))
        .optional()?
        .unwrap_or(0))
}
