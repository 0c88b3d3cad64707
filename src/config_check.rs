//! `palisade config check FILE`: a configuration file read strictly (an unknown key or a bad
//! value is an error naming its line), checked for values that parse but cannot work, and
//! shown as the server would run with it (environment variables applied, secrets masked).

use std::path::Path;

use crate::config::{Config, Overrides};

/// What is wrong with a file, each with its line when it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub line: Option<usize>,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            Some(line) => write!(f, "line {line}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// Checks `file`. `Ok`: the effective configuration as TOML, secrets masked.
pub fn check(file: &Path) -> Result<String, Vec<Problem>> {
    let text = std::fs::read_to_string(file).map_err(|e| {
        vec![Problem {
            line: None,
            message: format!("cannot read {}: {e}", file.display()),
        }]
    })?;
    // The file alone first, so that an error points into it.
    let from_file: Config = toml::from_str(&text).map_err(|e| vec![parse_problem(&text, &e)])?;
    let mut problems = semantic_problems(&from_file, &text);
    // Then the layers the server would apply over it (environment variables).
    let effective = match Config::load(Some(file), &Overrides::default()) {
        Ok(config) => config,
        Err(e) => {
            problems.push(Problem {
                line: None,
                message: format!("with the environment applied: {e}"),
            });
            return Err(problems);
        }
    };
    if problems.is_empty() {
        problems = semantic_problems(&effective, "");
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    render(&effective).map_err(|message| {
        vec![Problem {
            line: None,
            message,
        }]
    })
}

fn parse_problem(text: &str, error: &toml::de::Error) -> Problem {
    let line = error
        .span()
        .map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1);
    Problem {
        line,
        message: error.message().to_owned(),
    }
}

/// Values that parse but that the server would refuse or that could never work.
fn semantic_problems(config: &Config, text: &str) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut problem = |section: &str, key: &str, message: String| {
        problems.push(Problem {
            line: line_of(text, section, key),
            message: format!("{}{key}: {message}", dotted(section)),
        });
    };
    if axum::http::HeaderName::try_from(config.client_ip_header.as_str()).is_err() {
        problem("", "client_ip_header", "is not a valid header name".into());
    }
    if let Err(message) = config.rate_limits.per_key_ids() {
        problem("rate_limits", "per_key", message);
    }
    if let Err(message) = config.crowdsec.range_limits() {
        problem("crowdsec", "max_decisions_per_key", message);
    }
    if config.guard.min_prefix_v4 > 32 {
        problem("guard", "min_prefix_v4", "must be at most 32".into());
    }
    if config.guard.min_prefix_v6 > 128 {
        problem("guard", "min_prefix_v6", "must be at most 128".into());
    }
    if config.server.max_connections == 0 {
        problem("server", "max_connections", "must be at least 1".into());
    }
    if config.database.acquire_timeout_ms == 0 {
        problem(
            "database",
            "acquire_timeout_ms",
            "must be at least 1".into(),
        );
    }
    if let Some(url) = &config.database.url
        && !(url.starts_with("postgres://") || url.starts_with("postgresql://"))
    {
        problem(
            "database",
            "url",
            "must be a postgres:// or postgresql:// URL".into(),
        );
    }
    for (at, subscription) in config.subscriptions.iter().enumerate() {
        if !subscription.url.starts_with("https://") && !subscription.url.starts_with("http://") {
            let message = format!(
                "{:?} (entry {}) must be an https:// or http:// URL",
                subscription.url,
                at + 1
            );
            problem("subscriptions", "url", message);
        }
        if let Some(path) = &subscription.ca_file
            && std::fs::metadata(path).is_err()
        {
            let message = format!("{} (entry {}) cannot be read", path.display(), at + 1);
            problem("subscriptions", "ca_file", message);
        }
        if subscription.dataset.is_empty() {
            problem(
                "subscriptions",
                "dataset",
                format!("(entry {}) must not be empty", at + 1),
            );
        }
    }
    for (key, path) in [("asn", &config.geo.asn), ("country", &config.geo.country)] {
        if let Some(path) = path
            && !path.is_file()
        {
            problem(
                "geo",
                key,
                format!("{} is not a readable file", path.display()),
            );
        }
    }
    if config.metrics_listen.is_some() && config.metrics_listen == Some(config.listen) {
        problem("", "metrics_listen", "must differ from listen".into());
    }
    problems
}

fn dotted(section: &str) -> String {
    if section.is_empty() {
        String::new()
    } else {
        format!("{section}.")
    }
}

/// The line where `key` is set in `[section]` ("" for the top level), if the file sets it.
fn line_of(text: &str, section: &str, key: &str) -> Option<usize> {
    let mut current = String::new();
    for (n, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if let Some(header) = trimmed.strip_prefix('[') {
            current = header
                .trim_start_matches('[')
                .trim_end_matches(']')
                .trim()
                .to_owned();
            continue;
        }
        if current == section
            && let Some((name, _)) = trimmed.split_once('=')
            && name.trim() == key
        {
            return Some(n + 1);
        }
    }
    None
}

/// The configuration as TOML, with secrets replaced.
fn render(config: &Config) -> Result<String, String> {
    let mut shown = config.clone();
    shown.database.url = shown.database.url.as_deref().map(mask_password);
    toml::to_string_pretty(&shown).map_err(|e| format!("cannot show the configuration: {e}"))
}

/// `scheme://user:secret@host/...` with the secret replaced by `****`.
pub fn mask_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    // The last '@' ends the credentials: a password may itself hold '@'.
    let authority = match authority.rfind('@') {
        Some(at) => {
            let (credentials, host) = authority.split_at(at);
            match credentials.split_once(':') {
                Some((user, _)) => format!("{user}:****{host}"),
                None => authority.to_owned(),
            }
        }
        None => authority.to_owned(),
    };
    // Passwords also arrive as a query parameter.
    let tail = mask_query_password(tail);
    format!("{scheme}://{authority}{tail}")
}

fn mask_query_password(tail: &str) -> String {
    let Some((path, query)) = tail.split_once('?') else {
        return tail.to_owned();
    };
    let query: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=****"),
            _ => pair.to_owned(),
        })
        .collect();
    format!("{path}?{}", query.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_text(text: &str) -> Result<String, Vec<Problem>> {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("palisade.toml");
        std::fs::write(&file, text).unwrap();
        check(&file)
    }

    #[test]
    fn an_unknown_key_is_an_error_with_its_line() {
        let problems =
            check_text("listen = \"127.0.0.1:8080\"\n\n[guard]\nmin_prefix = 12\n").unwrap_err();
        assert_eq!(problems[0].line, Some(4), "{problems:?}");
        assert!(problems[0].message.contains("min_prefix"), "{problems:?}");
    }

    #[test]
    fn a_bad_value_is_an_error_with_its_line() {
        let problems = check_text("[server]\nmax_connections = \"many\"\n").unwrap_err();
        assert_eq!(problems[0].line, Some(2), "{problems:?}");
        let problems = check_text("[guard]\nmin_prefix_v4 = 40\n").unwrap_err();
        assert_eq!(problems[0].line, Some(2), "{problems:?}");
        assert!(problems[0].to_string().contains("guard.min_prefix_v4"));
        let problems = check_text("client_ip_header = \"not a header\"\n").unwrap_err();
        assert_eq!(problems[0].line, Some(1), "{problems:?}");
        let problems = check_text("[database]\nacquire_timeout_ms = 0\n").unwrap_err();
        assert!(
            problems[0]
                .to_string()
                .contains("database.acquire_timeout_ms"),
            "{problems:?}"
        );
    }

    #[test]
    fn the_effective_configuration_masks_the_database_password() {
        let shown = check_text(
            "[database]\nurl = \"postgres://palisade:s3cr%40t@db.example:5432/palisade\"\n",
        )
        .unwrap();
        assert!(!shown.contains("s3cr"), "{shown}");
        assert!(shown.contains("postgres://palisade:****@db.example:5432/palisade"));
        // Defaults are shown too: the whole configuration in force.
        assert!(shown.contains("max_connections = 10000"), "{shown}");
    }

    #[test]
    fn passwords_are_masked_wherever_they_are() {
        assert_eq!(
            mask_password("postgres://u:p@h/db"),
            "postgres://u:****@h/db"
        );
        assert_eq!(
            mask_password("postgres://u:p@x@h/db"),
            "postgres://u:****@h/db"
        );
        assert_eq!(
            mask_password("postgres://h/db?user=u&password=p"),
            "postgres://h/db?user=u&password=****"
        );
        assert_eq!(mask_password("postgres://u@h/db"), "postgres://u@h/db");
    }

    /// The annotated example in `deploy/` sets every setting and passes the check.
    #[test]
    fn the_deploy_example_passes_and_sets_every_key() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/palisade.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        // Not the check's view of geo files (the example names where they usually live).
        let config: Config = toml::from_str(&text).unwrap();
        let problems: Vec<Problem> = semantic_problems(&config, &text)
            .into_iter()
            .filter(|p| !p.message.starts_with("geo."))
            .collect();
        assert!(problems.is_empty(), "{problems:?}");
        // Every key of the full configuration appears in the example.
        let full = toml::Value::try_from(Config {
            database: crate::config::DatabaseConfig {
                url: Some("postgres://x".into()),
                schema: Some("s".into()),
                ..Default::default()
            },
            geo: crate::config::GeoConfig {
                asn: Some("a".into()),
                country: Some("c".into()),
                ..Default::default()
            },
            metrics_listen: Some("127.0.0.1:9100".parse().unwrap()),
            subscriptions: vec![crate::subscriptions::SubscriptionConfig {
                url: "http://x".into(),
                format: crate::import::Format::Auto,
                interval: 1,
                dataset: "d".into(),
                action: crate::import::ImportAction::Block,
                tenant: "t".into(),
                max_bytes: 1,
                timeout_secs: 1,
                ca_file: Some("c".into()),
            }],
            crowdsec: crate::crowdsec::CrowdsecConfig {
                expand_geo: Some(true),
                max_decisions: Some(1),
                ..Default::default()
            },
            ..Config::default()
        })
        .unwrap();
        let documented: toml::Value = toml::from_str(&uncommented(&text)).unwrap();
        let mut missing = Vec::new();
        same_keys(&full, &documented, "", &mut missing);
        assert!(missing.is_empty(), "deploy/palisade.toml lacks {missing:?}");
    }

    /// The example with its commented-out settings (`# key = value`) switched on.
    fn uncommented(text: &str) -> String {
        text.lines()
            .map(|line| match line.strip_prefix("# ") {
                Some(rest) if rest.contains(" = ") && !rest.starts_with(' ') => rest,
                Some(rest) if rest.starts_with('[') => rest,
                _ => line,
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn same_keys(
        full: &toml::Value,
        documented: &toml::Value,
        at: &str,
        missing: &mut Vec<String>,
    ) {
        let (Some(full), Some(documented)) = (full.as_table(), documented.as_table()) else {
            return;
        };
        for (key, value) in full {
            let path = format!("{at}{key}");
            match documented.get(key) {
                None => missing.push(path),
                Some(inner) => same_keys(value, inner, &format!("{path}."), missing),
            }
        }
    }
}
