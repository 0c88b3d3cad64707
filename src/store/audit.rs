//! The audit log as stored: one row per request (an audit record), holding every event the
//! request carried with what became of it. A 1000-event batch is one row and one entry in each
//! of the row's two indexes instead of a thousand of each: on PostgreSQL, where every write
//! waits for the one before, that took a tenth of the database's CPU time off each ingested
//! event (see `BENCHMARKS.md`).
//!
//! Readers still see one [`AuditEntry`] per event. An entry's id is its record's id with its
//! position in the record below it ([`entry_id`]), so entries sort newest first by id alone and
//! a page can end in the middle of a record.

use super::backend::Backend;
use super::{AuditEntry, Page, StoreError, StoreResult};
use crate::rules::{TenantId, UnixMillis};

/// Bits of an entry id that hold the entry's position in its record.
const POSITION_BITS: u32 = 16;

/// Most entries one record holds; a larger batch is audited as several records. Bounds a
/// record's size and keeps positions within [`POSITION_BITS`].
pub const MAX_RECORD_ENTRIES: usize = 1024;

const _: () = assert!(MAX_RECORD_ENTRIES <= 1 << POSITION_BITS);

/// The id readers see for the entry at `position` in the record numbered `record`.
pub fn entry_id(record: i64, position: usize) -> i64 {
    (record << POSITION_BITS) | position as i64
}

/// The record that holds the entry numbered `entry`.
fn record_of(entry: i64) -> i64 {
    entry >> POSITION_BITS
}

/// The position of the entry numbered `entry` in its record.
fn position_of(entry: i64) -> usize {
    (entry & ((1 << POSITION_BITS) - 1)) as usize
}

/// A record to append: what a key sent in one request and what became of each event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAuditRecord {
    pub tenant: TenantId,
    pub key_id: i64,
    pub request_id: String,
    pub at: UnixMillis,
    /// How many entries `entries` holds, at least one.
    pub entry_count: u32,
    /// The entries, packed (see [`AuditEntries`]).
    pub entries: String,
}

impl NewAuditRecord {
    pub fn new(
        tenant: TenantId,
        key_id: i64,
        request_id: String,
        at: UnixMillis,
        entries: AuditEntries,
    ) -> Self {
        Self {
            tenant,
            key_id,
            request_id,
            at,
            entry_count: entries.len() as u32,
            entries: entries.into_text(),
        }
    }

    /// A record of one event that is not part of a batch (a deletion, a key made, a report).
    pub fn single(
        tenant: TenantId,
        key_id: i64,
        request_id: String,
        at: UnixMillis,
        event: &str,
        error: Option<&str>,
    ) -> Self {
        let mut entries = AuditEntries::with_capacity(1, event.len());
        entries.push(None, event, error);
        Self::new(tenant, key_id, request_id, at, entries)
    }
}

/// A record's entries as they are stored: a JSON array of `[index, event, error]`, with
/// `index` the event's position in its batch (`null` outside batches), `event` the event's
/// text as a JSON string and `error` `null` for an applied event. JSON so that either
/// database's own functions can write it (the migrations that moved older entries did).
/// SQLite keeps the text compressed (`sqlite::rows::packed_audit_entries`).
pub struct AuditEntries {
    text: Vec<u8>,
    len: usize,
}

impl AuditEntries {
    pub fn with_capacity(entries: usize, event_bytes: usize) -> Self {
        // An entry's brackets, index and error, and the escapes of a JSON event's quotes.
        let mut text = Vec::with_capacity(2 + event_bytes + entries * 40);
        text.push(b'[');
        Self { text, len: 0 }
    }

    pub fn push(&mut self, index: Option<u32>, event: &str, error: Option<&str>) {
        if self.len > 0 {
            self.text.push(b',');
        }
        serde_json::to_writer(&mut self.text, &(index, event, error))
            .expect("writing JSON into memory cannot fail");
        self.len += 1;
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn into_text(mut self) -> String {
        self.text.push(b']');
        String::from_utf8(self.text).expect("serde_json writes UTF-8")
    }
}

/// A stored record, as a backend reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    pub id: i64,
    pub at: UnixMillis,
    pub key_id: i64,
    pub request_id: String,
    pub entries: String,
}

/// One entry as packed in [`AuditEntries`].
type PackedEntry = (Option<u32>, String, Option<String>);

impl AuditRecord {
    /// The record's entries, last first, with their ids.
    fn entries_newest_first(self) -> StoreResult<impl Iterator<Item = AuditEntry>> {
        let packed: Vec<PackedEntry> = serde_json::from_str(&self.entries)
            .map_err(|e| StoreError::Corrupt(format!("audit record {}: {e}", self.id)))?;
        let Self {
            id,
            at,
            key_id,
            request_id,
            ..
        } = self;
        Ok(packed
            .into_iter()
            .enumerate()
            .rev()
            .map(move |(position, (index, event, error))| AuditEntry {
                id: entry_id(id, position),
                at,
                key_id,
                request_id: request_id.clone(),
                index,
                event,
                error,
            }))
    }
}

/// A page of `limit` entries of `tenant`, newest first, below the entry id `before`. The
/// records' sizes are read first, so that a page reads the records it shows and at most one
/// more, however large they are.
pub async fn page<B: Backend + ?Sized>(
    backend: &B,
    tenant: TenantId,
    before: Option<i64>,
    limit: usize,
) -> StoreResult<Page<AuditEntry>> {
    let before = before.unwrap_or(i64::MAX);
    let wanted = limit.saturating_add(1);
    // Every record holds an entry, except that the record of `before` may hold none below it.
    let sizes = backend
        .audit_record_sizes(tenant, record_of(before), wanted.saturating_add(1))
        .await?;
    let (mut covered, mut oldest) = (0, None);
    for &(id, entries) in &sizes {
        covered += if id == record_of(before) {
            entries.min(position_of(before))
        } else {
            entries
        };
        oldest = Some(id);
        if covered >= wanted {
            break;
        }
    }
    let mut items = Vec::with_capacity(covered.min(wanted));
    if let (Some(&(newest, _)), Some(oldest)) = (sizes.first(), oldest) {
        for record in backend.audit_records(tenant, oldest, newest).await? {
            let left = wanted - items.len();
            items.extend(
                record
                    .entries_newest_first()?
                    .filter(|e| e.id < before)
                    .take(left),
            );
        }
    }
    Ok(Page::of(items, limit, |e| e.id))
}

/// `(key_id, request_id, at, index, event, error)`, as an older store kept an audit entry.
#[cfg(test)]
type OlderEntry = (
    i64,
    &'static str,
    i64,
    Option<u32>,
    &'static str,
    Option<&'static str>,
);

/// Entries as an older store kept them, one row per event, oldest first, of tenant 1. The tests of both backends' migrations
/// store them the old way and read them back.
#[cfg(test)]
pub(crate) const OLDER_ENTRIES: [OlderEntry; 3] = [
    (4, "req-a", 10, Some(0), r#"{"ip":"192.0.2.1"}"#, None),
    (
        4,
        "req-a",
        10,
        Some(1),
        r#"{"ip":"x \" \\ é"}"#,
        Some("ip: not an address"),
    ),
    (
        5,
        "command-line",
        20,
        None,
        "{\"op\":\"create_key\"}\n",
        None,
    ),
];

/// What a page of the whole log says of [`OLDER_ENTRIES`]: the same, newest first.
#[cfg(test)]
pub(crate) fn assert_older_entries_read_back(page: &Page<AuditEntry>) {
    let read: Vec<_> = page
        .items
        .iter()
        .map(|e| {
            (
                e.key_id,
                e.request_id.as_str(),
                e.at.0,
                e.index,
                e.event.as_str(),
                e.error.as_deref(),
            )
        })
        .collect();
    let want: Vec<_> = OLDER_ENTRIES.iter().rev().copied().collect();
    assert_eq!(read, want);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_keep_their_index_text_and_error() {
        let mut entries = AuditEntries::with_capacity(2, 0);
        entries.push(Some(0), "{\"ip\":\"192.0.2.1\"}", None);
        entries.push(None, "\u{0}\\N\n\"é", Some("bad ip"));
        let record = AuditRecord {
            id: 9,
            at: UnixMillis(5),
            key_id: 2,
            request_id: "r".into(),
            entries: entries.into_text(),
        };
        let read: Vec<AuditEntry> = record.entries_newest_first().unwrap().collect();
        assert_eq!(read[0].id, entry_id(9, 1));
        assert_eq!(read[0].index, None);
        assert_eq!(read[0].event, "\u{0}\\N\n\"é");
        assert_eq!(read[0].error.as_deref(), Some("bad ip"));
        assert_eq!(read[1].id, entry_id(9, 0));
        assert_eq!(read[1].index, Some(0));
        assert_eq!(read[1].event, "{\"ip\":\"192.0.2.1\"}");
        assert_eq!(read[1].error, None);
    }
}
