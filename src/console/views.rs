//! What the pages show: one struct per template (`templates/console/`), holding text ready to
//! print. Askama escapes every value for HTML.

use askama::Template;
use time::OffsetDateTime;
use time::macros::format_description;

use super::Operator;
use crate::api::rules::RuleView;
use crate::keys::Permission;
use crate::rules::UnixMillis;

/// The frame around every page: title, navigation and who is signed in.
pub struct Layout {
    pub title: String,
    /// Which navigation entry is the current page.
    pub nav: &'static str,
    pub operator: Option<OperatorView>,
}

pub struct OperatorView {
    pub key_name: String,
    pub role: &'static str,
    pub tenant: String,
    pub csrf: String,
    pub can_write: bool,
    pub is_admin: bool,
}

impl Layout {
    pub fn of(operator: &Operator, title: impl Into<String>, nav: &'static str) -> Self {
        let p = &operator.principal;
        Layout {
            title: title.into(),
            nav,
            operator: Some(OperatorView {
                key_name: p.key_name.clone(),
                role: p.role.as_str(),
                tenant: p.tenant.to_string(),
                csrf: operator.csrf.clone(),
                can_write: operator.may(Permission::WriteRules),
                is_admin: operator.may(Permission::ReadAudit),
            }),
        }
    }

    pub fn anonymous(title: &str) -> Self {
        Layout {
            title: title.into(),
            nav: "",
            operator: None,
        }
    }
}

/// An instant as operators read it: `2026-12-01 17:32:55 UTC`.
pub fn when(at: UnixMillis) -> String {
    let format = format_description!("[year]-[month]-[day] [hour]:[minute]:[second] UTC");
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(at.0) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_else(|| at.0.to_string())
}

/// When a rule ends: its expiry, or "permanent".
pub fn until(expires_at: Option<UnixMillis>) -> String {
    expires_at.map_or_else(|| "permanent".to_owned(), when)
}

/// One rule in a list.
pub struct RuleRow {
    pub id: i64,
    pub kind: &'static str,
    pub target: String,
    pub action: &'static str,
    pub until: String,
    pub name: String,
    pub source: &'static str,
    pub dataset: String,
    pub tags: String,
}

impl From<&crate::rules::Rule> for RuleRow {
    fn from(rule: &crate::rules::Rule) -> Self {
        RuleRow {
            id: rule.id,
            kind: rule.target.kind().as_str(),
            target: rule.target.to_string(),
            action: rule.action.as_str(),
            until: until(rule.expires_at),
            name: rule.name.clone().unwrap_or_default(),
            source: rule.source.as_str(),
            dataset: rule.dataset.clone().unwrap_or_default(),
            tags: rule.tags.join(", "),
        }
    }
}

#[derive(Template)]
#[template(path = "console/sign_in.html")]
pub struct SignInPage {
    pub layout: Layout,
    pub csrf: String,
    pub error: Option<String>,
}

/// A matching rule of a check, in words.
pub struct MatchRow {
    pub id: i64,
    pub kind: &'static str,
    pub target: String,
    pub action: &'static str,
    pub since: String,
    pub until: String,
    pub name: String,
}

/// The answer of `GET /v1/check`, for reading.
pub struct CheckView {
    pub ip: String,
    /// `blocked`, `allowed` or `clear`.
    pub class: &'static str,
    pub verdict: String,
    pub asn: String,
    pub country: String,
    pub matches: Vec<MatchRow>,
    pub truncated: bool,
}

#[derive(Template)]
#[template(path = "console/check.html")]
pub struct CheckPage {
    pub layout: Layout,
    pub ip: String,
    pub result: Option<CheckView>,
    pub error: Option<String>,
}

/// The search form's values, to show them back.
#[derive(Default)]
pub struct SearchValues {
    pub q: String,
    pub kind: String,
    pub action: String,
    pub source: String,
    pub name: String,
    pub dataset: String,
    pub tag: String,
}

#[derive(Template)]
#[template(path = "console/rules.html")]
pub struct RulesPage {
    pub layout: Layout,
    pub search: SearchValues,
    pub rules: Vec<RuleRow>,
    /// What the list is: all rules, rules covering an address, ...
    pub heading: String,
    pub next: Option<String>,
    pub first: Option<String>,
    pub notice: Option<String>,
    pub error: Option<String>,
    /// Polled by htmx; answers 204 while no change has been committed since this page.
    pub refresh_url: String,
    pub refresh_secs: u64,
    pub can_write: bool,
}

/// An audit entry about a rule.
pub struct HistoryRow {
    pub at: String,
    pub key_id: i64,
    pub event: String,
    pub outcome: &'static str,
    pub error: String,
}

#[derive(Template)]
#[template(path = "console/rule.html")]
pub struct RulePage {
    pub layout: Layout,
    pub rule: RuleView,
    pub since: String,
    pub until: String,
    pub history: Vec<HistoryRow>,
    pub scanned: usize,
    pub can_write: bool,
    pub can_audit: bool,
}

#[derive(Template)]
#[template(path = "console/confirm_delete.html")]
pub struct ConfirmDeletePage {
    pub layout: Layout,
    pub rule: RuleView,
    pub csrf: String,
}

/// The add form's values, kept when the form comes back with errors.
#[derive(Default)]
pub struct AddValues {
    pub action: String,
    pub ip: String,
    pub asn: String,
    pub country: String,
    pub expiration: String,
    pub name: String,
    pub description: String,
    pub ips: String,
}

/// What became of a submitted form, in the words of `POST /v1/signal`.
pub struct AddOutcome {
    pub message: String,
    pub errors: Vec<String>,
    /// Every event applied.
    pub ok: bool,
    pub applied: usize,
}

#[derive(Template)]
#[template(path = "console/add.html")]
pub struct AddPage {
    pub layout: Layout,
    pub csrf: String,
    pub form: AddValues,
    pub outcome: Option<AddOutcome>,
}

pub struct CountRow {
    pub kind: &'static str,
    pub block: u64,
    pub allow: u64,
}

pub struct ChangeRow {
    pub at: String,
    pub op: &'static str,
    pub rule_id: i64,
    pub target: String,
    pub action: &'static str,
    /// Whether the rule is still there to link to.
    pub live: bool,
}

/// The look-ups and blocks chart: polylines in a 600 x 120 box.
pub struct Chart {
    pub lookups: String,
    pub blocks: String,
    pub max: u64,
    pub total_lookups: u64,
    pub total_blocks: u64,
}

/// What changes without a rule changing: look-ups, the report queue, the geo data.
pub struct StateView {
    pub chart: Chart,
    pub queue_depth: u64,
    pub queue_oldest: String,
    pub geo: String,
}

#[derive(Template)]
#[template(path = "console/overview.html")]
pub struct OverviewPage {
    pub layout: Layout,
    pub counts: Vec<CountRow>,
    pub total: u64,
    pub recent: Vec<ChangeRow>,
    pub state: StateView,
    /// The change the page was rendered at (live refresh).
    pub seen: u64,
    pub refresh_secs: u64,
}

/// The overview's state panel alone, polled on its own: it is cheap, while counting rules
/// is not, so that part is only read again when the change feed moves.
#[derive(Template)]
#[template(path = "console/state.html")]
pub struct StatePart {
    pub state: StateView,
    pub refresh_secs: u64,
}

pub struct AuditRow {
    pub id: i64,
    pub at: String,
    pub key_id: i64,
    pub request_id: String,
    pub event: String,
    pub outcome: &'static str,
    pub error: String,
}

#[derive(Template)]
#[template(path = "console/audit.html")]
pub struct AuditPage {
    pub layout: Layout,
    pub entries: Vec<AuditRow>,
    pub next: Option<String>,
}

/// A report waiting for the worker.
pub struct WaitingRow {
    pub id: i64,
    pub kind: &'static str,
    pub received: String,
    pub key_id: i64,
    /// The start of the validated request.
    pub request: String,
}

#[derive(Template)]
#[template(path = "console/queue.html")]
pub struct QueuePage {
    pub layout: Layout,
    pub depth: u64,
    pub oldest: String,
    pub waiting: Vec<WaitingRow>,
}

pub struct KeyRow {
    pub id: i64,
    pub name: String,
    pub role: &'static str,
    pub tenant: String,
    pub created: String,
    pub revoked: String,
    pub live: bool,
    /// A bouncer's last pull of decisions with this key: when, from where, which version.
    pub last_pull: String,
}

/// A key just made: its secret, shown on this page only.
pub struct NewSecret {
    pub name: String,
    pub role: &'static str,
    pub secret: String,
}

#[derive(Template)]
#[template(path = "console/keys.html")]
pub struct KeysPage {
    pub layout: Layout,
    pub csrf: String,
    pub keys: Vec<KeyRow>,
    pub created: Option<NewSecret>,
    pub notice: Option<String>,
    pub error: Option<String>,
}
