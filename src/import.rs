//! `palisade rules import`: the blocklists people download, turned into rules through the
//! engine's write path (the same validation guard, audit and change log as signals).
//!
//! Formats: one address or CIDR a line with `#` comments (`plain`, and FireHOL's `netset`,
//! which is the same), Spamhaus DROP/EDROP (`;` comments), CSV (the address in the first
//! column, or in a column named `ip`, `cidr`, `network`, `address` or `target` when there is a
//! header), and JSON (an array of objects, or one object a line, with the address in `target`,
//! `ip`, `cidr` or `network`; Palisade's own rule listings and Spamhaus' JSON DROP read as is).
//!
//! Lines are written in chunks, each its own transaction, so one bad line never costs a good
//! one: it is reported with its line number and audited as refused.

use std::io::BufRead;
use std::sync::Arc;

use ipnet::IpNet;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::engine::Engine;
use crate::rules::{RuleAction, Source, Target, TenantId, UnixMillis, parse_ip_target};
use crate::signal::{Guard, MAX_EXPIRATION_SECONDS, MAX_NAME_CHARS};
use crate::store::{BatchItem, RuleWrite, WriteBatch};

/// Lines per transaction: large enough that commits are few, small enough that one chunk
/// never holds the writer long.
pub const CHUNK_LINES: usize = 5_000;

/// Chunks committed or queued at once; the writer groups what is queued into one commit.
const IN_FLIGHT: usize = 4;

/// Invalid lines kept with their reason for the summary; past this only the count grows.
pub const INVALID_SHOWN: usize = 1_000;

/// Longest line read; a longer one is invalid (a binary file, not a list).
pub const MAX_LINE_BYTES: usize = 64 * 1024;

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Decided from the first lines.
    Auto,
    Plain,
    Netset,
    Drop,
    Csv,
    Json,
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum ImportAction {
    Block,
    Allow,
}

impl From<ImportAction> for RuleAction {
    fn from(action: ImportAction) -> Self {
        match action {
            ImportAction::Block => RuleAction::Block,
            ImportAction::Allow => RuleAction::Allow,
        }
    }
}

/// What every imported rule gets.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    pub tenant: TenantId,
    pub action: RuleAction,
    /// Seconds from the import on; `None`: permanent.
    pub expiration: Option<u32>,
    pub name: Option<String>,
    pub dataset: Option<String>,
    pub guard: Guard,
}

/// Why the options themselves are refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OptionsError {
    #[error("--expiration must be 1 to {MAX_EXPIRATION_SECONDS} seconds")]
    Expiration,
    #[error("--name must be 1 to {MAX_NAME_CHARS} characters, without U+0000")]
    Name,
    #[error("--dataset must be 1 to 64 characters of A-Z a-z 0-9 . _ -")]
    Dataset,
}

impl ImportOptions {
    pub fn validate(&self) -> Result<(), OptionsError> {
        if let Some(seconds) = self.expiration
            && (seconds == 0 || u64::from(seconds) > MAX_EXPIRATION_SECONDS)
        {
            return Err(OptionsError::Expiration);
        }
        if let Some(name) = &self.name
            && (name.is_empty() || name.chars().count() > MAX_NAME_CHARS || name.contains('\0'))
        {
            return Err(OptionsError::Name);
        }
        if let Some(dataset) = &self.dataset
            && (dataset.is_empty()
                || dataset.len() > 64
                || !dataset
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)))
        {
            return Err(OptionsError::Dataset);
        }
        Ok(())
    }
}

/// What an import did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    pub lines: u64,
    /// Rules created.
    pub added: u64,
    /// Rules that existed and were refreshed (expiry, name, dataset).
    pub refreshed: u64,
    /// Invalid lines (their number, and why), the first [`INVALID_SHOWN`] of them.
    pub invalid: Vec<(u64, String)>,
    pub invalid_count: u64,
    /// Valid lines refused because the tenant reached its rule quota.
    pub over_quota: u64,
}

/// One line (or JSON entry) read: its number, its text, and the write it asks for, the reason
/// it is invalid, or nothing (a comment or a blank line).
pub struct Record {
    pub line: u64,
    pub text: String,
    pub parsed: Result<Option<Entry>, String>,
}

/// What a valid line says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub target: Target,
    pub action: Option<RuleAction>,
    pub name: Option<String>,
    pub expires_at: Option<UnixMillis>,
}

impl Entry {
    fn of(target: Target) -> Self {
        Self {
            target,
            action: None,
            name: None,
            expires_at: None,
        }
    }
}

/// The format the first meaningful lines look like.
pub fn detect(first: &[String]) -> Format {
    let meaningful: Vec<&str> = first
        .iter()
        .map(|l| l.trim())
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    if meaningful
        .first()
        .is_some_and(|l| l.starts_with('[') || l.starts_with('{'))
    {
        return Format::Json;
    }
    if meaningful
        .iter()
        .any(|l| l.starts_with(';') || l.contains(" ; "))
    {
        return Format::Drop;
    }
    if meaningful.iter().any(|l| l.contains(',')) {
        return Format::Csv;
    }
    Format::Plain
}

/// Reads records from `input` in `format` (not `Auto`), handing each to `emit`; stops early
/// when `emit` says so. Returns the bytes read.
pub fn read(
    input: &mut dyn BufRead,
    format: Format,
    first: Vec<String>,
    mut emit: impl FnMut(Record, u64) -> bool,
) -> std::io::Result<()> {
    if format == Format::Json {
        return read_json(input, first, emit);
    }
    let mut csv = CsvColumns::default();
    let mut number = 0u64;
    let mut bytes = 0u64;
    let mut buffered = first.into_iter();
    let mut line = String::new();
    loop {
        let text = match buffered.next() {
            Some(text) => text,
            None => {
                line.clear();
                let n = read_line(input, &mut line)?;
                if n == 0 {
                    return Ok(());
                }
                bytes += n as u64;
                std::mem::take(&mut line)
            }
        };
        number += 1;
        let text = text.trim_end_matches(['\n', '\r']).to_owned();
        let parsed = if text.len() > MAX_LINE_BYTES {
            Err(format!("longer than {MAX_LINE_BYTES} bytes"))
        } else {
            match format {
                Format::Drop => parse_token(before(&text, ';')),
                Format::Csv => csv.parse(&text),
                _ => parse_token(before(&text, '#')),
            }
        };
        let shown = if text.len() > 200 {
            text.chars().take(200).collect()
        } else {
            text
        };
        if !emit(
            Record {
                line: number,
                text: shown,
                parsed,
            },
            bytes,
        ) {
            return Ok(());
        }
    }
}

/// A line, cut at [`MAX_LINE_BYTES`] (the rest is read and dropped) so a file without newlines
/// cannot fill memory.
fn read_line(input: &mut dyn BufRead, line: &mut String) -> std::io::Result<usize> {
    let mut raw = Vec::new();
    let mut total = 0;
    loop {
        let available = input.fill_buf()?;
        if available.is_empty() {
            break;
        }
        let (chunk, done) = match available.iter().position(|b| *b == b'\n') {
            Some(at) => (&available[..=at], true),
            None => (available, false),
        };
        let room = (MAX_LINE_BYTES + 2).saturating_sub(raw.len());
        raw.extend_from_slice(&chunk[..chunk.len().min(room)]);
        let used = chunk.len();
        input.consume(used);
        total += used;
        if done {
            break;
        }
    }
    line.push_str(&String::from_utf8_lossy(&raw));
    Ok(total)
}

fn before(text: &str, comment: char) -> &str {
    text.split_once(comment).map_or(text, |(head, _)| head)
}

/// The first word of a line as an address or CIDR; a line with nothing on it is skipped.
fn parse_token(text: &str) -> Result<Option<Entry>, String> {
    let Some(token) = text.split_whitespace().next() else {
        return Ok(None);
    };
    ip_target(token).map(|net| Some(Entry::of(Target::Ip(net))))
}

fn ip_target(text: &str) -> Result<IpNet, String> {
    parse_ip_target(text)
        .map_err(|_| format!("{text:?} is not an IPv4 or IPv6 address or CIDR range"))
}

/// Which CSV columns hold what, learnt from a header line when there is one.
#[derive(Default)]
struct CsvColumns {
    seen_first: bool,
    address: usize,
    name: Option<usize>,
}

const ADDRESS_COLUMNS: [&str; 6] = ["ip", "cidr", "network", "address", "target", "range"];

impl CsvColumns {
    fn parse(&mut self, text: &str) -> Result<Option<Entry>, String> {
        let body = before(text, '#');
        if body.trim().is_empty() {
            return Ok(None);
        }
        let fields: Vec<&str> = body
            .split(',')
            .map(|f| f.trim().trim_matches('"').trim())
            .collect();
        if !self.seen_first {
            self.seen_first = true;
            let header: Vec<String> = fields.iter().map(|f| f.to_ascii_lowercase()).collect();
            if let Some(at) = header
                .iter()
                .position(|h| ADDRESS_COLUMNS.contains(&h.as_str()))
            {
                self.address = at;
                self.name = header.iter().position(|h| h == "name");
                return Ok(None);
            }
        }
        let address = fields
            .get(self.address)
            .ok_or_else(|| format!("has no column {}", self.address + 1))?;
        let net = ip_target(address)?;
        let mut entry = Entry::of(Target::Ip(net));
        entry.name = self
            .name
            .and_then(|at| fields.get(at))
            .filter(|n| !n.is_empty())
            .map(|n| (*n).to_owned());
        Ok(Some(entry))
    }
}

/// JSON: an array of entries (numbered by position), or one entry a line.
fn read_json(
    input: &mut dyn BufRead,
    first: Vec<String>,
    mut emit: impl FnMut(Record, u64) -> bool,
) -> std::io::Result<()> {
    let mut text = first.concat();
    input.read_to_string(&mut text)?;
    let bytes = text.len() as u64;
    if text.trim_start().starts_with('[') {
        let entries: Vec<Value> = match serde_json::from_str(&text) {
            Ok(entries) => entries,
            Err(e) => {
                emit(
                    Record {
                        line: e.line() as u64,
                        text: String::new(),
                        parsed: Err(format!("not a JSON array of entries: {e}")),
                    },
                    bytes,
                );
                return Ok(());
            }
        };
        for (at, value) in entries.into_iter().enumerate() {
            let record = Record {
                line: at as u64 + 1,
                text: shorten(value.to_string()),
                parsed: json_entry(&value),
            };
            if !emit(record, bytes) {
                break;
            }
        }
        return Ok(());
    }
    for (at, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        let parsed = if trimmed.is_empty() || trimmed.starts_with('#') {
            Ok(None)
        } else {
            serde_json::from_str::<Value>(trimmed)
                .map_err(|e| format!("not JSON: {e}"))
                .and_then(|value| json_entry(&value))
        };
        let record = Record {
            line: at as u64 + 1,
            text: shorten(line.to_owned()),
            parsed,
        };
        if !emit(record, bytes) {
            break;
        }
    }
    Ok(())
}

fn shorten(text: String) -> String {
    if text.len() > 200 {
        text.chars().take(200).collect()
    } else {
        text
    }
}

/// One JSON entry. A wrapper such as Palisade's `{"rules": [...]}` page is not an entry;
/// Spamhaus' closing `{"type": "metadata"}` line is skipped.
fn json_entry(value: &Value) -> Result<Option<Entry>, String> {
    let Value::Object(entry) = value else {
        return Err("must be a JSON object".into());
    };
    if entry.get("type").and_then(Value::as_str) == Some("metadata") {
        return Ok(None);
    }
    let text = ["target", "ip", "cidr", "network"]
        .iter()
        .find_map(|key| entry.get(*key))
        .ok_or("has none of target, ip, cidr, network")?
        .as_str()
        .ok_or("its target must be a string")?;
    let target = match parse_ip_target(text) {
        Ok(net) => Target::Ip(net),
        Err(_) => Target::parse_any(text).ok_or_else(|| {
            format!("{text:?} is not an address, CIDR range, ASN or country code")
        })?,
    };
    let action = match entry.get("action") {
        None | Some(Value::Null) => None,
        Some(Value::String(a)) => Some(
            RuleAction::parse(a).ok_or_else(|| format!("action {a:?} is not block or allow"))?,
        ),
        Some(_) => return Err("action must be a string".into()),
    };
    let expires_at = match entry.get("expires_at") {
        None | Some(Value::Null) => None,
        Some(Value::String(at)) => Some(rfc3339(at)?),
        Some(_) => return Err("expires_at must be an RFC 3339 string".into()),
    };
    let name = match entry.get("name") {
        None | Some(Value::Null) => None,
        Some(Value::String(n)) if n.chars().count() <= MAX_NAME_CHARS && !n.contains('\0') => {
            Some(n.clone())
        }
        Some(_) => {
            return Err(format!(
                "name must be a string of at most {MAX_NAME_CHARS} characters"
            ));
        }
    };
    Ok(Some(Entry {
        target,
        action,
        name,
        expires_at,
    }))
}

fn rfc3339(text: &str) -> Result<UnixMillis, String> {
    use time::format_description::well_known::Rfc3339;
    let at = time::OffsetDateTime::parse(text, &Rfc3339)
        .map_err(|_| format!("expires_at {text:?} is not an RFC 3339 time"))?;
    Ok(UnixMillis((at.unix_timestamp_nanos() / 1_000_000) as i64))
}

/// The write a valid entry asks for, or why it is refused (the guard rails of signals apply).
fn write_of(entry: Entry, options: &ImportOptions, now: UnixMillis) -> Result<RuleWrite, String> {
    let action = entry.action.unwrap_or(options.action);
    if let Target::Ip(net) = entry.target {
        options
            .guard
            .check(net, action == RuleAction::Block)
            .map_err(|problem| problem.to_string())?;
    }
    let expires_at = entry
        .expires_at
        .or_else(|| options.expiration.map(|s| now.plus_seconds(s)));
    if expires_at.is_some_and(|at| at <= now) {
        return Err("has already expired".into());
    }
    Ok(RuleWrite::Put {
        action,
        target: entry.target,
        expires_at,
        name: entry.name.or_else(|| options.name.clone()),
        description: None,
        source: Source::Signal,
        dataset: options.dataset.clone(),
    })
}

/// Runs an import: `input` is read on a blocking thread, chunks are committed through
/// `engine` a few at a time, `progress` hears the bytes read so far.
pub async fn run(
    engine: Arc<Engine>,
    input: Box<dyn BufRead + Send>,
    format: Format,
    options: ImportOptions,
    request_id: String,
    now: UnixMillis,
    progress: impl Fn(u64) + Send + 'static,
) -> anyhow::Result<Summary> {
    let (chunks, mut ready) = mpsc::channel::<Chunk>(IN_FLIGHT);
    let reader = tokio::task::spawn_blocking(move || {
        read_chunks(input, format, options, now, chunks, progress)
    });
    let mut summary = Summary::default();
    let mut writes = tokio::task::JoinSet::new();
    let mut failure = None;
    while let Some(chunk) = ready.recv().await {
        summary.lines = chunk.last_line;
        for (line, reason) in chunk.invalid {
            summary.invalid_count += 1;
            if summary.invalid.len() < INVALID_SHOWN {
                summary.invalid.push((line, reason));
            }
        }
        if chunk.items.is_empty() {
            continue;
        }
        let valid = chunk.items.iter().filter(|i| i.write.is_ok()).count() as u64;
        let batch = WriteBatch {
            tenant: chunk.tenant,
            key_id: 0,
            request_id: request_id.clone(),
            at: now,
            items: chunk.items,
        };
        let engine = engine.clone();
        writes.spawn(async move { (valid, engine.write(batch).await) });
        while writes.len() >= IN_FLIGHT {
            if let Some(done) = writes.join_next().await {
                tally(&mut summary, done, &mut failure);
            }
        }
        if failure.is_some() {
            break;
        }
    }
    drop(ready);
    while let Some(done) = writes.join_next().await {
        tally(&mut summary, done, &mut failure);
    }
    if let Some(e) = failure {
        return Err(e);
    }
    reader.await??;
    summary.invalid.sort();
    Ok(summary)
}

type Done =
    Result<(u64, crate::store::StoreResult<crate::engine::WriteOutcome>), tokio::task::JoinError>;

fn tally(summary: &mut Summary, done: Done, failure: &mut Option<anyhow::Error>) {
    match done {
        Ok((valid, Ok(outcome))) => {
            let over = outcome.over_quota.len() as u64;
            summary.added += outcome.created as u64;
            summary.over_quota += over;
            summary.refreshed += valid.saturating_sub(over + outcome.created as u64);
        }
        Ok((_, Err(e))) => {
            failure.get_or_insert(anyhow::Error::new(e).context("writing a chunk of the list"));
        }
        Err(e) => {
            failure.get_or_insert(anyhow::anyhow!("writing a chunk failed: {e}"));
        }
    }
}

struct Chunk {
    tenant: TenantId,
    items: Vec<BatchItem>,
    invalid: Vec<(u64, String)>,
    last_line: u64,
}

fn read_chunks(
    mut input: Box<dyn BufRead + Send>,
    format: Format,
    options: ImportOptions,
    now: UnixMillis,
    chunks: mpsc::Sender<Chunk>,
    progress: impl Fn(u64),
) -> anyhow::Result<()> {
    let first = first_lines(&mut *input)?;
    let format = match format {
        Format::Auto => detect(&first),
        chosen => chosen,
    };
    let empty = |last_line| Chunk {
        tenant: options.tenant,
        items: Vec::with_capacity(CHUNK_LINES),
        invalid: Vec::new(),
        last_line,
    };
    let mut chunk = empty(0);
    let mut gone = false;
    read(&mut *input, format, first, |record, bytes| {
        chunk.last_line = record.line;
        let write = match record.parsed {
            Ok(None) => return true,
            Ok(Some(entry)) => write_of(entry, &options, now),
            Err(reason) => Err(reason),
        };
        if let Err(reason) = &write {
            chunk.invalid.push((record.line, reason.clone()));
        }
        chunk.items.push(BatchItem {
            event: record.text,
            write,
        });
        if chunk.items.len() >= CHUNK_LINES {
            progress(bytes);
            let full = std::mem::replace(&mut chunk, empty(record.line));
            if chunks.blocking_send(full).is_err() {
                gone = true;
                return false;
            }
        }
        true
    })?;
    if !gone {
        let _ = chunks.blocking_send(chunk);
    }
    Ok(())
}

/// The first lines, for [`detect`], kept to be read again.
pub fn first_lines(input: &mut dyn BufRead) -> std::io::Result<Vec<String>> {
    let mut lines = Vec::new();
    for _ in 0..20 {
        let mut line = String::new();
        if read_line(input, &mut line)? == 0 {
            break;
        }
        lines.push(line);
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(text: &str, format: Format) -> Vec<(u64, Result<Option<String>, String>)> {
        let mut input = std::io::Cursor::new(text.as_bytes().to_vec());
        let first = first_lines(&mut input).unwrap();
        let format = match format {
            Format::Auto => detect(&first),
            f => f,
        };
        let mut out = Vec::new();
        read(&mut input, format, first, |r, _| {
            out.push((r.line, r.parsed.map(|e| e.map(|e| e.target.to_string()))));
            true
        })
        .unwrap();
        out
    }

    fn valid(records: &[(u64, Result<Option<String>, String>)]) -> Vec<String> {
        records
            .iter()
            .filter_map(|(_, r)| r.as_ref().ok().cloned().flatten())
            .collect()
    }

    fn invalid_lines(records: &[(u64, Result<Option<String>, String>)]) -> Vec<u64> {
        records
            .iter()
            .filter(|(_, r)| r.is_err())
            .map(|(n, _)| *n)
            .collect()
    }

    #[test]
    fn formats_are_detected() {
        let lines = |t: &str| t.lines().map(str::to_owned).collect::<Vec<_>>();
        assert_eq!(
            detect(&lines("# list\n192.0.2.1\n10.0.0.0/8\n")),
            Format::Plain
        );
        assert_eq!(
            detect(&lines("; Spamhaus DROP\n1.10.16.0/20 ; SBL256894\n")),
            Format::Drop
        );
        assert_eq!(detect(&lines("ip,name\n192.0.2.1,x\n")), Format::Csv);
        assert_eq!(
            detect(&lines("[{\"target\":\"192.0.2.1/32\"}]")),
            Format::Json
        );
        assert_eq!(
            detect(&lines("{\"cidr\":\"1.10.16.0/20\"}\n")),
            Format::Json
        );
    }

    #[test]
    fn netset_with_comments_and_a_bad_line() {
        let text = "#\n# firehol_level1\n#\n192.0.2.0/24\n198.51.100.7 # inline\n\nnot-an-ip\n2001:db8::/32\n";
        let got = records(text, Format::Netset);
        assert_eq!(
            valid(&got),
            ["192.0.2.0/24", "198.51.100.7/32", "2001:db8::/32"]
        );
        assert_eq!(invalid_lines(&got), [7]);
    }

    #[test]
    fn spamhaus_drop() {
        let text = "; Spamhaus DROP List 2026/12/01\n; Copyright\n1.10.16.0/20 ; SBL256894\n1.19.0.0/16 ; SBL434604\n300.1.1.0/24 ; SBL1\n";
        let got = records(text, Format::Auto);
        assert_eq!(valid(&got), ["1.10.16.0/20", "1.19.0.0/16"]);
        assert_eq!(invalid_lines(&got), [5]);
    }

    #[test]
    fn csv_with_and_without_header() {
        let text = "name,ip\nscanner,192.0.2.1\nbad,192.0.2.999\n";
        let got = records(text, Format::Csv);
        assert_eq!(valid(&got), ["192.0.2.1/32"]);
        assert_eq!(invalid_lines(&got), [3]);
        let got = records("192.0.2.1,seen twice\n198.51.100.0/24,x\n", Format::Csv);
        assert_eq!(valid(&got), ["192.0.2.1/32", "198.51.100.0/24"]);
    }

    #[test]
    fn json_arrays_and_lines() {
        let text = r#"[{"target":"192.0.2.0/24","action":"block","expires_at":null,"name":"x"},{"target":"AS64500"},{"ip":"nope"},7]"#;
        let got = records(text, Format::Auto);
        assert_eq!(valid(&got), ["192.0.2.0/24", "AS64500"]);
        assert_eq!(invalid_lines(&got), [3, 4]);
        let text = "{\"cidr\":\"1.10.16.0/20\",\"sblid\":\"SBL1\",\"rir\":\"apnic\"}\n{broken\n{\"type\":\"metadata\",\"timestamp\":1}\n";
        let got = records(text, Format::Json);
        assert_eq!(valid(&got), ["1.10.16.0/20"]);
        assert_eq!(invalid_lines(&got), [2]);
    }

    #[test]
    fn a_line_without_end_is_cut_not_kept() {
        let text = format!(
            "192.0.2.1\n{}\n198.51.100.1\n",
            "1".repeat(MAX_LINE_BYTES * 3)
        );
        let got = records(&text, Format::Plain);
        assert_eq!(valid(&got), ["192.0.2.1/32", "198.51.100.1/32"]);
        assert_eq!(invalid_lines(&got), [2]);
    }

    #[test]
    fn options_are_checked() {
        let options = ImportOptions {
            tenant: TenantId(1),
            action: RuleAction::Block,
            expiration: Some(0),
            name: None,
            dataset: None,
            guard: Guard::default(),
        };
        assert_eq!(options.validate(), Err(OptionsError::Expiration));
        let options = ImportOptions {
            expiration: None,
            dataset: Some("fire hol".into()),
            ..options
        };
        assert_eq!(options.validate(), Err(OptionsError::Dataset));
    }

    #[test]
    fn the_guard_applies() {
        let options = ImportOptions {
            tenant: TenantId(1),
            action: RuleAction::Block,
            expiration: None,
            name: None,
            dataset: Some("firehol".into()),
            guard: Guard::default(),
        };
        let now = UnixMillis(1_000);
        let entry = |t: &str| Entry::of(Target::parse_any(t).unwrap());
        assert!(write_of(entry("127.0.0.0/8"), &options, now).is_err());
        assert!(write_of(entry("10.0.0.0/7"), &options, now).is_err());
        let Ok(RuleWrite::Put { dataset, .. }) = write_of(entry("192.0.2.0/24"), &options, now)
        else {
            panic!("a valid line");
        };
        assert_eq!(dataset.as_deref(), Some("firehol"));
    }
}
