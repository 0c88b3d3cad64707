//! Persistence: the types every backend stores, and the [`backend::Backend`] trait they fill.
//! The embedded default is [`sqlite::SqliteBackend`].
//!
//! Every rule change is written with a sequence number that grows in commit order (the change
//! log). In-memory indexes follow the rules only through those changes (see
//! [`crate::engine::feed`]), so a node that reads the change log of a shared database sees
//! exactly what the writing node saw.

pub mod audit;
pub mod backend;
pub mod postgres;
pub mod sqlite;

use crate::keys::{ApiKey, KeyDigest, Role, TenantName};
use crate::rules::{Kind, Rule, RuleAction, RuleId, Source, Target, TenantId, UnixMillis};

/// Why the store failed, whatever the backend: the engine and the API see only this.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be reached or stopped answering (refused or lost connection, a
    /// pool with no connection to give): worth retrying once it is back.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    #[error("database error: {0}")]
    Database(String),
    #[error("database migration failed: {0}")]
    Migration(String),
    #[error("cannot prepare data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error("only {free} bytes free on the data directory's disk (at least {wanted} wanted)")]
    DiskFull { free: u64, wanted: u64 },
    #[error("the store's writer has stopped")]
    WriterGone,
    #[error("stored data is not readable: {0}")]
    Corrupt(String),
    #[error("a background task failed: {0}")]
    Task(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// One write to the rules of a tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleWrite {
    /// Creates the rule for `(action, target)` or refreshes it: the expiry is always replaced
    /// (absent means permanent); name, description and dataset are replaced when given and
    /// kept when not.
    Put {
        action: RuleAction,
        target: Target,
        expires_at: Option<UnixMillis>,
        name: Option<String>,
        description: Option<String>,
        source: Source,
        /// The list the rule came from (an imported blocklist).
        dataset: Option<String>,
    },
    /// Removes the rule for exactly `(action, target)`; nothing to remove is not an error.
    Remove { action: RuleAction, target: Target },
    /// A reported address: creates the block rule, or merges into it: the expiry moves to the
    /// later of the two (a permanent rule stays permanent), tags are merged, the report count
    /// grows and the dataset becomes this report's.
    Report {
        target: Target,
        dataset: String,
        tags: Vec<String>,
        expires_at: UnixMillis,
    },
}

/// Which report endpoint a queued report came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReportKind {
    /// `POST /v1/ip`
    Report,
    /// `POST /v1/unban/ip`
    Unban,
    /// `POST /v1/false/add/ip`
    FalseAdd,
    /// `POST /v1/false/remove/ip`
    FalseRemove,
}

impl ReportKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ReportKind::Report => "report",
            ReportKind::Unban => "unban",
            ReportKind::FalseAdd => "false_add",
            ReportKind::FalseRemove => "false_remove",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "report" => Some(ReportKind::Report),
            "unban" => Some(ReportKind::Unban),
            "false_add" => Some(ReportKind::FalseAdd),
            "false_remove" => Some(ReportKind::FalseRemove),
            _ => None,
        }
    }
}

/// An accepted report waiting for the worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedReport {
    /// 0 until stored.
    pub id: i64,
    pub tenant: TenantId,
    pub key_id: i64,
    pub kind: ReportKind,
    /// The validated request as JSON (see `reports::ReportPayload`).
    pub payload: String,
    pub received_at: UnixMillis,
}

/// How many active rules of one kind and action a tenant has. IP rules of one address and IP
/// rules of a wider range are counted apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleCount {
    pub kind: Kind,
    /// An IP rule wider than one address.
    pub range: bool,
    pub action: RuleAction,
    pub count: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueStats {
    pub depth: u64,
    pub oldest: Option<UnixMillis>,
}

/// One received item of a batch: what to audit, and what to do if it was valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchItem {
    /// The event exactly as received.
    pub event: String,
    /// The write, or the reason the item was refused (it is then only audited).
    pub write: Result<RuleWrite, String>,
}

/// Everything one request wants written; committed in one transaction, or not at all.
#[derive(Debug, Clone)]
pub struct WriteBatch {
    pub tenant: TenantId,
    pub key_id: i64,
    pub request_id: String,
    pub at: UnixMillis,
    pub items: Vec<BatchItem>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChangeOp {
    /// A rule was created or refreshed.
    Put,
    /// A rule was removed by a request.
    Delete,
    /// An expired rule was purged.
    Expire,
}

impl ChangeOp {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeOp::Put => "put",
            ChangeOp::Delete => "delete",
            ChangeOp::Expire => "expire",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "put" => Some(ChangeOp::Put),
            "delete" => Some(ChangeOp::Delete),
            "expire" => Some(ChangeOp::Expire),
            _ => None,
        }
    }
}

/// An entry of the change log: enough to patch an index without reading the rule back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub seq: u64,
    pub tenant: TenantId,
    pub rule_id: RuleId,
    pub op: ChangeOp,
    pub action: RuleAction,
    pub target: Target,
    pub expires_at: Option<UnixMillis>,
    /// The rule's name after the change.
    pub name: Option<String>,
    pub at: UnixMillis,
    /// Which API made the rule, its report dataset and its description, after the change.
    pub source: Source,
    pub dataset: Option<String>,
    pub description: Option<String>,
}

impl Change {
    /// The change `op` makes to `rule` at `at`, before the change log numbers it.
    pub fn of(rule: &Rule, op: ChangeOp, at: UnixMillis) -> Self {
        Change {
            seq: 0,
            tenant: rule.tenant,
            rule_id: rule.id,
            op,
            action: rule.action,
            target: rule.target,
            expires_at: rule.expires_at,
            name: rule.name.clone(),
            at,
            source: rule.source,
            dataset: rule.dataset.clone(),
            description: rule.description.clone(),
        }
    }
}

/// All active rules at one point of the change log: what an index is built from.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The last change included.
    pub seq: u64,
    pub rules: Vec<Rule>,
}

/// Where a bouncer's decision stream stands: the last change it was sent, and the instant its
/// last pull was computed at (a rule that expired after it is news to the bouncer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamCursor {
    pub seq: u64,
    pub at: UnixMillis,
}

/// A pull of decisions, and what the bouncer said about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pull {
    pub key_id: i64,
    pub tenant: TenantId,
    pub at: UnixMillis,
    pub user_agent: Option<String>,
    pub address: Option<String>,
    pub version: Option<String>,
}

/// What a pull does to the bouncer's stream cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CursorMove {
    /// Not a stream pull: the cursor stays.
    Keep,
    /// A stream that starts over.
    Set(StreamCursor),
    /// Moves from `from` to `to`, only if it still is at `from` (another pull of the same key,
    /// on this node or another, may have moved it meanwhile).
    Advance {
        from: Option<StreamCursor>,
        to: StreamCursor,
    },
}

/// A key that pulled decisions: its last pull and its stream cursor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BouncerRecord {
    pub key_id: i64,
    pub tenant: TenantId,
    pub last_pull: UnixMillis,
    pub user_agent: Option<String>,
    pub address: Option<String>,
    pub version: Option<String>,
    pub cursor: Option<StreamCursor>,
}

/// What changed for one tenant's decisions since a stream cursor, read at one instant.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DecisionDelta {
    /// The change the read is current up to: the next cursor.
    pub head: u64,
    /// The tenant's changes after the cursor, up to `head`, oldest first.
    pub changes: Vec<Change>,
    /// The tenant's block rules, still stored, that expired after the cursor's instant and at
    /// or before the pull's.
    pub expired: Vec<Rule>,
    /// The oldest change the log still holds (retention deletes older ones); `None`: empty.
    pub oldest: Option<u64>,
}

#[derive(Debug, Clone, Default)]
pub struct RuleQuery {
    pub kind: Option<Kind>,
    pub target: Option<Target>,
    pub name: Option<String>,
    pub action: Option<RuleAction>,
    pub source: Option<Source>,
    pub dataset: Option<String>,
    /// Rules carrying this tag.
    pub tag: Option<String>,
    /// Only rules with a larger id (cursor pagination, ascending ids).
    pub after: Option<RuleId>,
    pub limit: usize,
    /// Rules expired at this instant are not listed, whether or not they were purged yet.
    pub now: UnixMillis,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Pass back to get the next page; `None` on the last page.
    pub next_cursor: Option<i64>,
}

impl<T> Page<T> {
    /// A page of at most `limit` of `items`, read with one item more than a page holds: when
    /// that one is there, the page is not the last, and its last item's cursor is the next.
    pub fn of(mut items: Vec<T>, limit: usize, cursor_of: impl Fn(&T) -> i64) -> Self {
        let next_cursor = if items.len() > limit {
            items.truncate(limit);
            items.last().map(cursor_of)
        } else {
            None
        };
        Self { items, next_cursor }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    pub id: i64,
    pub at: UnixMillis,
    pub key_id: i64,
    pub request_id: String,
    /// Position in the request's batch; `None` for requests that are not batches.
    pub index: Option<u32>,
    pub event: String,
    /// `None`: applied. `Some(reason)`: refused.
    pub error: Option<String>,
}

#[derive(Debug, Clone)]
pub struct NewKey {
    pub name: String,
    pub role: Role,
    pub tenant: TenantName,
    pub digest: KeyDigest,
    pub at: UnixMillis,
}

/// Who made a change that is not a signal or a report (a key made or revoked), for its audit
/// entry: the key that asked, and the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// 0 for the command line, which holds no key.
    pub key_id: i64,
    pub request_id: String,
}

impl Actor {
    /// `palisade keys ...` on the server's machine, and the first start's admin key.
    pub fn command_line() -> Self {
        Self {
            key_id: 0,
            request_id: "command-line".into(),
        }
    }
}

impl NewKey {
    /// The key as stored, once its backend has given it `id` in `tenant`.
    pub fn stored(&self, id: i64, tenant: TenantId) -> ApiKey {
        ApiKey {
            id,
            name: self.name.clone(),
            role: self.role,
            tenant: self.tenant.clone(),
            tenant_id: tenant,
            created_at: self.at,
            revoked_at: None,
        }
    }
}

/// The text an audit entry keeps of an event: the event itself when it is at most
/// `max_bytes`, else a JSON object with its size, its SHA-256 and as much of its beginning as
/// fits, so that junk cannot grow the audit log without bound but can still be recognised.
pub fn audit_text(event: &str, max_bytes: usize) -> std::borrow::Cow<'_, str> {
    use sha2::Digest;
    if event.len() <= max_bytes {
        return std::borrow::Cow::Borrowed(event);
    }
    // Room for the wrapper and the digest; the head's JSON escaping is counted char by char.
    let budget = max_bytes.saturating_sub(160);
    let mut escaped = 0;
    let head_end = event
        .char_indices()
        .find(|(_, c)| {
            escaped += match c {
                '"' | '\\' => 2,
                c if (*c as u32) < 0x20 => 6,
                c => c.len_utf8(),
            };
            escaped > budget
        })
        .map_or(event.len(), |(at, _)| at);
    let digest = sha2::Sha256::digest(event.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    std::borrow::Cow::Owned(
        serde_json::json!({
            "truncated": {"bytes": event.len(), "sha256": hex, "head": &event[..head_end]}
        })
        .to_string(),
    )
}
