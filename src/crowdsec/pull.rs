//! The use cases behind the bouncer routes: decision look-ups and listings, stream pulls, and
//! the bouncer's record (last pull, user agent, address, version, stream cursor), which lives
//! in the store so that a restarted node, or another node, carries on where a bouncer was.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

use super::geo::{self, GeoRanges};
use super::stream::{self, News};
use super::{CrowdsecConfig, Decision, Facts, Filter};
use crate::export::expand::Expansion;
use crate::index::{Index, Verdict};
use crate::rules::{RuleAction, Target, TenantId, UnixMillis};
use crate::store::backend::{RuleChunks, SharedBackend};
use crate::store::{CursorMove, Pull, StoreError, StreamCursor};

/// Rules encoded per piece of a long answer.
const CHUNK: usize = 2048;

/// Times a stream pull reads again when another pull of the same key moved the cursor first.
const CURSOR_RACES: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Other pulls of the same key kept moving its cursor.
    #[error("other pulls of this key keep moving its stream cursor")]
    Contended,
}

/// What `GET /v1/decisions` asks for, beside the stream's filters.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub filter: Filter,
    pub ip: Option<IpAddr>,
    pub range: Option<IpNet>,
    /// With `range`: decisions whose range holds it (`true`, the default), or that it holds.
    pub contains: bool,
    pub scope: Option<String>,
    pub value: Option<String>,
    /// `type`: only `ban` decisions exist.
    pub kind: Option<String>,
}

impl Selection {
    fn admits(&self, target: &Target, decision: &Decision<'_>) -> bool {
        let kind_ok = self.kind.as_deref().is_none_or(|k| k == decision.kind);
        let scope_ok = self
            .scope
            .as_deref()
            .is_none_or(|s| s.eq_ignore_ascii_case(&decision.scope));
        let value_ok = self.value.as_deref().is_none_or(|v| v == decision.value);
        let range_ok = match (self.range, target) {
            (None, _) => true,
            (Some(range), Target::Ip(net)) if self.contains => net.contains(&range),
            (Some(range), Target::Ip(net)) => range.contains(net),
            (Some(_), _) => false,
        };
        kind_ok && scope_ok && value_ok && range_ok && self.filter.admits(decision)
    }
}

/// The answer to a stream pull.
pub enum StreamAnswer {
    /// Every active decision, read in chunks (start-up, or a cursor the log no longer covers),
    /// and the ranges of the tenant's ASN and country rules when they are expanded.
    Full(RuleChunks, Option<Arc<Expansion>>),
    /// `{"new": [...], "deleted": [...]}`, encoded.
    Incremental(Vec<u8>),
}

pub struct Bouncers {
    backend: SharedBackend,
    index: Arc<Index>,
    config: Arc<CrowdsecConfig>,
    /// The last look-up written per key, and the user agent and address it carried.
    recorded: std::sync::Mutex<HashMap<i64, Pull>>,
    /// ASN and country rules as ranges (`crowdsec.expand_geo`).
    geo: Option<GeoRanges>,
}

impl Bouncers {
    pub fn new(
        backend: SharedBackend,
        index: Arc<Index>,
        config: CrowdsecConfig,
        geo: Option<GeoRanges>,
    ) -> Self {
        Self {
            backend,
            index,
            config: Arc::new(config),
            recorded: Default::default(),
            geo,
        }
    }

    pub fn config(&self) -> &Arc<CrowdsecConfig> {
        &self.config
    }

    /// Records a pull that is not a stream pull (at most once per `record_interval_ms` for a
    /// bouncer that keeps its user agent and address).
    pub async fn record(&self, pull: Pull) -> Result<(), PullError> {
        if !self.due(&pull) {
            return Ok(());
        }
        self.backend.record_pull(pull, CursorMove::Keep).await?;
        Ok(())
    }

    fn due(&self, pull: &Pull) -> bool {
        let mut recorded = self.recorded.lock().unwrap_or_else(|e| e.into_inner());
        let interval = i64::try_from(self.config.record_interval_ms).unwrap_or(i64::MAX);
        let fresh = recorded.get(&pull.key_id).is_some_and(|last| {
            (0..interval).contains(&pull.at.0.saturating_sub(last.at.0))
                && last.user_agent == pull.user_agent
                && last.address == pull.address
        });
        if !fresh {
            recorded.insert(pull.key_id, pull.clone());
        }
        !fresh
    }

    /// The decisions covering one address, JSON (`null` for none). The same index look-up as
    /// `/v1/check`, so ASN and country rules apply too; an address on the allowlist has none.
    /// The verdict comes along for counting.
    pub fn lookup(
        &self,
        tenant: TenantId,
        ip: IpAddr,
        selection: &Selection,
        now: UnixMillis,
    ) -> (Vec<u8>, Verdict) {
        let view = self.index.view(tenant);
        let found = crate::engine::check::answer(&view, ip, now);
        let verdict = Verdict {
            blocked: found.blocked,
            allowed: found.allowed,
        };
        if !verdict.blocked {
            return (b"null".to_vec(), verdict);
        }
        let decisions: Vec<Decision<'_>> = found
            .matches
            .iter()
            .map(|found| &found.0)
            .filter(|rule| rule.action == RuleAction::Block)
            .map(|rule| (rule, Facts::of_ref(rule).decision(&self.config, now)))
            .filter(|(rule, decision)| selection.admits(&rule.target, decision))
            .map(|(_, decision)| decision)
            .collect();
        (list_json(&decisions), verdict)
    }

    /// Every active decision the selection admits, encoded as it is read.
    pub async fn list(
        &self,
        tenant: TenantId,
        selection: Selection,
        now: UnixMillis,
    ) -> Result<tokio::sync::mpsc::Receiver<Result<Vec<u8>, StoreError>>, PullError> {
        let (_, chunks) = self.backend.active_blocks(tenant, now, CHUNK).await?;
        Ok(encode(
            chunks,
            self.config.clone(),
            now,
            Listing::Array(selection),
        ))
    }

    /// One pull of the decision stream (see [`stream`]).
    pub async fn stream(
        &self,
        pull: Pull,
        startup: bool,
        filter: &Filter,
    ) -> Result<StreamAnswer, PullError> {
        let now = pull.at;
        let limit = self.config.max_changes_per_pull.max(1);
        let ranges = match &self.geo {
            Some(geo) => geo.current(pull.key_id, pull.tenant).await,
            None => None,
        };
        if !startup {
            let mut races = 0;
            loop {
                let record = self.backend.bouncer(pull.key_id).await?;
                let Some(since) = record
                    .filter(|r| r.tenant == pull.tenant)
                    .and_then(|r| r.cursor)
                else {
                    break;
                };
                let delta = self
                    .backend
                    .decision_delta(pull.tenant, since, now, limit)
                    .await?;
                if delta.oldest.is_some_and(|oldest| oldest > since.seq + 1) {
                    tracing::warn!(
                        key_id = pull.key_id,
                        cursor = since.seq,
                        oldest = delta.oldest,
                        "the change log no longer holds what this bouncer missed; sending every decision again"
                    );
                    break;
                }
                let complete = delta.changes.len() < limit;
                let to = StreamCursor {
                    seq: delta.head.max(since.seq),
                    at: if complete {
                        now.max(since.at)
                    } else {
                        since.at
                    },
                };
                let moved = CursorMove::Advance {
                    from: Some(since),
                    to,
                };
                if !self.backend.record_pull(pull.clone(), moved).await? {
                    races += 1;
                    if races >= CURSOR_RACES {
                        return Err(PullError::Contended);
                    }
                    continue;
                }
                let mut news = stream::news(&delta, since, now, complete, filter, &self.config);
                if let Some(geo) = &self.geo {
                    let (new, deleted) = geo.news(pull.key_id, ranges, now, filter, &self.config);
                    news.new.extend(new);
                    news.deleted.extend(deleted);
                }
                return Ok(StreamAnswer::Incremental(news_json(&news)));
            }
        }
        let (head, chunks) = self.backend.active_blocks(pull.tenant, now, CHUNK).await?;
        let cursor = StreamCursor { seq: head, at: now };
        let key_id = pull.key_id;
        self.backend
            .record_pull(pull, CursorMove::Set(cursor))
            .await?;
        if let Some(geo) = &self.geo {
            geo.sent(key_id, ranges.clone(), now);
        }
        Ok(StreamAnswer::Full(chunks, ranges))
    }

    /// Every active decision as the start of a stream, encoded as it is read.
    pub fn startup(
        &self,
        chunks: RuleChunks,
        ranges: Option<Arc<Expansion>>,
        filter: Filter,
        now: UnixMillis,
    ) -> tokio::sync::mpsc::Receiver<Result<Vec<u8>, StoreError>> {
        encode(
            chunks,
            self.config.clone(),
            now,
            Listing::Stream(filter, ranges),
        )
    }
}

fn list_json(decisions: &[Decision<'_>]) -> Vec<u8> {
    if decisions.is_empty() {
        return b"null".to_vec();
    }
    serde_json::to_vec(decisions).unwrap_or_else(|_| b"null".to_vec())
}

#[derive(serde::Serialize)]
struct NewsJson<'n, 'a> {
    new: &'n [Decision<'a>],
    deleted: &'n [Decision<'a>],
}

fn news_json(news: &News<'_>) -> Vec<u8> {
    serde_json::to_vec(&NewsJson {
        new: &news.new,
        deleted: &news.deleted,
    })
    .unwrap_or_else(|_| br#"{"new":[],"deleted":[]}"#.to_vec())
}

enum Listing {
    /// `[...]`, or `null` when nothing is admitted.
    Array(Selection),
    /// `{"new": [...], "deleted": []}`, the expanded ranges after the rules.
    Stream(Filter, Option<Arc<Expansion>>),
}

/// Encodes the decisions of `chunks` piece by piece as they arrive; memory holds a chunk or two,
/// never the whole answer.
fn encode(
    mut chunks: RuleChunks,
    config: Arc<CrowdsecConfig>,
    now: UnixMillis,
    listing: Listing,
) -> tokio::sync::mpsc::Receiver<Result<Vec<u8>, StoreError>> {
    let (pieces, receiver) = tokio::sync::mpsc::channel(2);
    tokio::spawn(async move {
        let (open, close, empty): (&[u8], &[u8], &[u8]) = match &listing {
            Listing::Array(_) => (b"[", b"]", b"null"),
            Listing::Stream(..) => (
                br#"{"new":["#,
                br#"],"deleted":[]}"#,
                br#"{"new":[],"deleted":[]}"#,
            ),
        };
        let mut written = 0usize;
        while let Some(chunk) = chunks.recv().await {
            let rules = match chunk {
                Ok(rules) => rules,
                Err(e) => {
                    let _ = pieces.send(Err(e)).await;
                    return;
                }
            };
            let mut piece = Vec::with_capacity(rules.len() * 160);
            for rule in &rules {
                let decision = Facts::of_rule(rule).decision(&config, now);
                let admitted = match &listing {
                    Listing::Array(selection) => selection.admits(&rule.target, &decision),
                    Listing::Stream(filter, _) => filter.admits(&decision),
                };
                if !admitted {
                    continue;
                }
                piece.extend_from_slice(if written == 0 { open } else { b"," });
                if serde_json::to_writer(&mut piece, &decision).is_err() {
                    let _ = pieces
                        .send(Err(StoreError::Task("encoding a decision failed".into())))
                        .await;
                    return;
                }
                written += 1;
            }
            if !piece.is_empty() && pieces.send(Ok(piece)).await.is_err() {
                return;
            }
        }
        if let Listing::Stream(filter, Some(ranges)) = &listing {
            let mut piece = Vec::new();
            for (net, until) in ranges.blocked_cidrs(now) {
                let decision = geo::decision(net, until, now, &config);
                if !filter.admits(&decision) {
                    continue;
                }
                piece.extend_from_slice(if written == 0 { open } else { b"," });
                if serde_json::to_writer(&mut piece, &decision).is_err() {
                    let _ = pieces
                        .send(Err(StoreError::Task("encoding a decision failed".into())))
                        .await;
                    return;
                }
                written += 1;
                if piece.len() >= CHUNK * 160
                    && pieces.send(Ok(std::mem::take(&mut piece))).await.is_err()
                {
                    return;
                }
            }
            if !piece.is_empty() && pieces.send(Ok(piece)).await.is_err() {
                return;
            }
        }
        let end = if written == 0 { empty } else { close };
        let _ = pieces.send(Ok(end.to_vec())).await;
    });
    receiver
}
