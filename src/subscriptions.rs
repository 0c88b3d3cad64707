//! Subscriptions: blocklists Palisade fetches itself (`[[subscriptions]]`). Each list is
//! fetched on its interval (with `If-None-Match` / `If-Modified-Since`, so an unchanged list
//! costs one small answer), read like `palisade rules import` reads it, and made the rules of
//! its dataset: entries new to the list are added, rules of the dataset whose entries left the
//! list are removed, both through the engine's write path. A fetch or parse that fails keeps
//! the last good list in force; failures show in the logs and in
//! `palisade_subscription_fetches_total{result="failed"}`.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::clock::Clock;
use crate::engine::Engine;
use crate::import::{self, Format, ImportAction};
use crate::keys::DEFAULT_TENANT;
use crate::rules::{RuleAction, Target, TenantId, UnixMillis};
use crate::store::{BatchItem, RuleQuery, RuleWrite, WriteBatch};

pub const FETCHES: &str = "palisade_subscription_fetches_total";
pub const ENTRIES: &str = "palisade_subscription_entries";
pub const LAST_SUCCESS: &str = "palisade_subscription_last_success_timestamp_seconds";

/// One `[[subscriptions]]` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionConfig {
    /// `https://` (or `http://`) URL of the list.
    pub url: String,
    /// How the list is written; `auto` decides from its first lines.
    #[serde(default = "auto")]
    pub format: Format,
    /// Seconds between fetches (at least 1).
    #[serde(default = "hourly")]
    pub interval: u64,
    /// The rules of the list are filed under this dataset; the list owns them.
    pub dataset: String,
    #[serde(default = "block")]
    pub action: ImportAction,
    #[serde(default = "default_tenant")]
    pub tenant: String,
    /// Largest list body accepted, in bytes; a larger one fails the fetch.
    #[serde(default = "max_bytes")]
    pub max_bytes: usize,
    /// Seconds a fetch may take, from connecting to the last byte.
    #[serde(default = "timeout")]
    pub timeout_secs: u64,
    /// PEM file of the certificate authorities trusted for this list's HTTPS server instead of
    /// the system's (a mirror behind a private CA). Unset: the system's trusted roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<std::path::PathBuf>,
}

fn auto() -> Format {
    Format::Auto
}
fn hourly() -> u64 {
    3600
}
fn block() -> ImportAction {
    ImportAction::Block
}
fn default_tenant() -> String {
    DEFAULT_TENANT.to_owned()
}
fn max_bytes() -> usize {
    64 * 1024 * 1024
}
fn timeout() -> u64 {
    60
}

/// Writes per transaction when a list changes.
const CHUNK: usize = 5_000;

/// Rules of a dataset read per page.
const PAGE: usize = 10_000;

/// What one subscription remembers between fetches.
#[derive(Default)]
struct Validators {
    etag: Option<String>,
    last_modified: Option<String>,
}

/// Why a round failed; the rules stay as they were.
#[derive(Debug, thiserror::Error)]
pub enum SubscriptionError {
    #[error("fetching the list: {0}")]
    Fetch(String),
    #[error("the list is larger than max_bytes ({0})")]
    TooLarge(usize),
    #[error("no tenant named {0:?}")]
    NoTenant(String),
    #[error("the list has no valid entry ({0} invalid lines); keeping the last good list")]
    Empty(u64),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// What a round did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Round {
    pub not_modified: bool,
    pub added: usize,
    pub removed: usize,
}

/// Redirects followed at most, as browsers and curl allow a handful.
const MAX_REDIRECTS: usize = 5;

/// The subscription's HTTP client. A redirect from HTTPS to plain HTTP is refused: it would
/// let anyone on the path rewrite a list fetched over TLS.
fn client(config: &SubscriptionConfig) -> anyhow::Result<reqwest::Client> {
    use anyhow::Context;
    let redirects = reqwest::redirect::Policy::custom(|attempt| {
        let downgrade = attempt.url().scheme() == "http"
            && attempt.previous().iter().any(|url| url.scheme() == "https");
        if downgrade {
            attempt.error("refused a redirect from https to http")
        } else if attempt.previous().len() > MAX_REDIRECTS {
            attempt.error("too many redirects")
        } else {
            attempt.follow()
        }
    });
    let mut builder = reqwest::Client::builder()
        .timeout(Duration::from_secs(config.timeout_secs.max(1)))
        .redirect(redirects);
    if let Some(path) = &config.ca_file {
        let pem =
            std::fs::read(path).with_context(|| format!("reading ca_file {}", path.display()))?;
        let roots = reqwest::Certificate::from_pem_bundle(&pem)
            .with_context(|| format!("ca_file {} is not PEM certificates", path.display()))?;
        anyhow::ensure!(
            !roots.is_empty(),
            "ca_file {} holds no certificate",
            path.display()
        );
        builder = builder.tls_certs_only(roots);
    }
    Ok(builder.build()?)
}

/// Runs one subscription until aborted.
pub async fn run(engine: Arc<Engine>, clock: Arc<dyn Clock>, config: SubscriptionConfig) {
    let client = match client(&config) {
        Ok(client) => client,
        Err(e) => {
            tracing::error!(dataset = config.dataset, error = %e, "cannot make an HTTP client; subscription off");
            return;
        }
    };
    let mut validators = Validators::default();
    let mut tick = tokio::time::interval(Duration::from_secs(config.interval.max(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let dataset = config.dataset.clone();
        match round(&engine, &*clock, &client, &config, &mut validators).await {
            Ok(round) => {
                let result = if round.not_modified {
                    "not_modified"
                } else {
                    "ok"
                };
                metrics::counter!(FETCHES, "dataset" => dataset.clone(), "result" => result)
                    .increment(1);
                metrics::gauge!(LAST_SUCCESS, "dataset" => dataset.clone())
                    .set(clock.now().0 as f64 / 1000.0);
                if round.added + round.removed > 0 {
                    tracing::info!(
                        dataset,
                        added = round.added,
                        removed = round.removed,
                        "subscription updated"
                    );
                }
            }
            Err(e) => {
                metrics::counter!(FETCHES, "dataset" => dataset.clone(), "result" => "failed")
                    .increment(1);
                tracing::warn!(dataset, url = config.url, error = %e, "subscription round failed; the last good list stays");
            }
        }
    }
}

/// One fetch, and the rules made to match the list when it changed.
async fn round(
    engine: &Engine,
    clock: &dyn Clock,
    client: &reqwest::Client,
    config: &SubscriptionConfig,
    validators: &mut Validators,
) -> Result<Round, SubscriptionError> {
    let mut request = client.get(&config.url);
    if let Some(etag) = &validators.etag {
        request = request.header("If-None-Match", etag);
    }
    if let Some(since) = &validators.last_modified {
        request = request.header("If-Modified-Since", since);
    }
    let mut response = request
        .send()
        .await
        .map_err(|e| SubscriptionError::Fetch(e.to_string()))?;
    if response.status() == reqwest::StatusCode::NOT_MODIFIED {
        return Ok(Round {
            not_modified: true,
            ..Round::default()
        });
    }
    if !response.status().is_success() {
        return Err(SubscriptionError::Fetch(format!(
            "the server answered {}",
            response.status()
        )));
    }
    let header = |name: &str, response: &reqwest::Response| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let fresh = Validators {
        etag: header("etag", &response),
        last_modified: header("last-modified", &response),
    };
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| SubscriptionError::Fetch(e.to_string()))?
    {
        if body.len() + chunk.len() > config.max_bytes {
            return Err(SubscriptionError::TooLarge(config.max_bytes));
        }
        body.extend_from_slice(&chunk);
    }
    let (wanted, invalid) = entries(body, config.format).await?;
    if wanted.is_empty() {
        return Err(SubscriptionError::Empty(invalid));
    }
    if invalid > 0 {
        tracing::warn!(
            dataset = config.dataset,
            invalid,
            "lines of the list are invalid and skipped"
        );
    }
    metrics::gauge!(ENTRIES, "dataset" => config.dataset.clone()).set(wanted.len() as f64);
    let tenant = tenant_id(engine, &config.tenant).await?;
    let (added, removed) = sync(
        engine,
        tenant,
        &config.dataset,
        config.action.into(),
        wanted,
        clock.now(),
    )
    .await?;
    // Only once the rules match the list: a failed write fetches the whole list again.
    *validators = fresh;
    Ok(Round {
        not_modified: false,
        added,
        removed,
    })
}

/// The valid targets of a list, and how many lines were invalid.
async fn entries(
    body: Vec<u8>,
    format: Format,
) -> Result<(HashSet<Target>, u64), SubscriptionError> {
    tokio::task::spawn_blocking(move || {
        let mut input = std::io::Cursor::new(body);
        let first = import::first_lines(&mut input).map_err(|e| e.to_string())?;
        let format = match format {
            Format::Auto => import::detect(&first),
            chosen => chosen,
        };
        let mut wanted = HashSet::new();
        let mut invalid = 0;
        import::read(&mut input, format, first, |record, _| {
            match record.parsed {
                Ok(Some(entry)) => {
                    wanted.insert(entry.target);
                }
                Ok(None) => {}
                Err(_) => invalid += 1,
            }
            true
        })
        .map_err(|e| e.to_string())?;
        Ok((wanted, invalid))
    })
    .await
    .map_err(|e| SubscriptionError::Fetch(e.to_string()))?
    .map_err(SubscriptionError::Fetch)
}

async fn tenant_id(engine: &Engine, name: &str) -> Result<TenantId, SubscriptionError> {
    engine
        .backend()
        .keys()
        .await?
        .into_iter()
        .find(|k| k.tenant.as_str() == name)
        .map(|k| k.tenant_id)
        .ok_or_else(|| SubscriptionError::NoTenant(name.to_owned()))
}

/// Makes the rules of `dataset` exactly `wanted`: adds what is missing, removes what left.
/// Returns how many were added and removed. The guard rails of signals apply to additions
/// through [`crate::import`]'s reading; a protected or too broad entry is added as is only if
/// the guard allows it, so it is checked here too.
pub async fn sync(
    engine: &Engine,
    tenant: TenantId,
    dataset: &str,
    action: RuleAction,
    wanted: HashSet<Target>,
    now: UnixMillis,
) -> Result<(usize, usize), SubscriptionError> {
    let mut held = HashSet::new();
    let mut after = None;
    loop {
        let page = engine
            .backend()
            .rules(
                tenant,
                RuleQuery {
                    dataset: Some(dataset.to_owned()),
                    action: Some(action),
                    after,
                    limit: PAGE,
                    now,
                    ..RuleQuery::default()
                },
            )
            .await?;
        after = page.items.last().map(|rule| rule.id);
        held.extend(page.items.into_iter().map(|rule| rule.target));
        if page.next_cursor.is_none() {
            break;
        }
    }
    let guard = engine.guard();
    let mut writes: Vec<BatchItem> = Vec::new();
    let mut added = 0;
    for target in wanted.iter().filter(|t| !held.contains(*t)) {
        let write = match target {
            Target::Ip(net) => guard
                .check(*net, action == RuleAction::Block)
                .map_err(|problem| problem.to_string()),
            _ => Ok(()),
        }
        .map(|()| {
            added += 1;
            RuleWrite::Put {
                action,
                target: *target,
                expires_at: None,
                name: None,
                description: None,
                source: crate::rules::Source::Signal,
                dataset: Some(dataset.to_owned()),
            }
        });
        writes.push(BatchItem {
            event: target.to_string(),
            write,
        });
    }
    let removed = held.iter().filter(|t| !wanted.contains(*t)).count();
    writes.extend(
        held.iter()
            .filter(|t| !wanted.contains(*t))
            .map(|target| BatchItem {
                event: format!("-{target}"),
                write: Ok(RuleWrite::Remove {
                    action,
                    target: *target,
                }),
            }),
    );
    let request_id = format!("subscription-{dataset}");
    while !writes.is_empty() {
        let rest = writes.split_off(writes.len().min(CHUNK));
        let chunk = std::mem::replace(&mut writes, rest);
        engine
            .write(WriteBatch {
                tenant,
                key_id: 0,
                request_id: request_id.clone(),
                at: now,
                items: chunk,
            })
            .await?;
    }
    Ok((added, removed))
}
