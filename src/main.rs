//! The `palisade` command: thin wiring around the library.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use palisade::api::check::answer;
use palisade::app::{Application, create_key, open_backend};
use palisade::clock::{Clock, SystemClock};
use palisade::config::{Config, DatabaseOverride, Overrides};
use palisade::engine::{Engine, Feed, Policies};
use palisade::geo::Geo;
use palisade::import::ImportOptions;
use palisade::index::Index;
use palisade::keys::{DEFAULT_TENANT, Role};
use palisade::rules::TenantId;
use palisade::rules::normalize_ip;
use palisade::store::backend::SharedBackend;
use palisade::telemetry::logging::LogFormat;
use std::io::IsTerminal;

#[derive(Parser)]
#[command(
    name = "palisade",
    version,
    about = "Self-hosted security-signal service"
)]
struct Cli {
    /// How log lines are written (to stderr).
    #[arg(
        long,
        global = true,
        value_enum,
        default_value_t,
        env = "PALISADE_LOG_FORMAT"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP server.
    Serve {
        /// Address to listen on [default: 127.0.0.1:8080]
        #[arg(long, env = "PALISADE_LISTEN")]
        listen: Option<std::net::SocketAddr>,
        #[command(flatten)]
        location: Location,
    },
    /// Manage API keys (works while the server runs: a new key works at once, a revoked one
    /// stops within a second).
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Decide about an address from the data directory, as `GET /v1/check` would.
    Check {
        ip: IpAddr,
        #[arg(long, default_value = DEFAULT_TENANT)]
        tenant: String,
        #[command(flatten)]
        location: Location,
    },
    /// Inspect the configured geo data.
    #[command(subcommand)]
    Geo(GeoCommand),
    /// Check configuration files.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Manage rules in bulk.
    #[command(subcommand)]
    Rules(RulesCommand),
}

#[derive(Subcommand)]
enum RulesCommand {
    /// Import a blocklist (one address or CIDR a line, FireHOL netset, Spamhaus DROP, CSV, or
    /// JSON) as rules; a running server enforces them within `store.follow_interval_ms`.
    /// Prints a summary; exits 1 when any line was invalid (the valid ones are imported).
    Import {
        /// The list; `-` reads standard input.
        file: PathBuf,
        #[arg(long, value_enum, default_value = "auto")]
        format: palisade::import::Format,
        #[arg(long, value_enum, default_value = "block")]
        action: palisade::import::ImportAction,
        /// Seconds until the imported rules expire [default: never].
        #[arg(long)]
        expiration: Option<u32>,
        /// Name given to every imported rule.
        #[arg(long)]
        name: Option<String>,
        /// Dataset the rules are filed under (for listing and replacing them later).
        #[arg(long)]
        dataset: Option<String>,
        #[arg(long, default_value = DEFAULT_TENANT)]
        tenant: String,
        #[command(flatten)]
        location: Location,
    },
    /// Write the tenant's blocklist to standard output, as `GET /v1/blocklist` serves it: what
    /// is blocked now (allow rules taken out), streamed.
    Export {
        /// plain, json, nftables, ipset or nginx.
        #[arg(long, default_value = "plain", value_parser = parse_export_format)]
        format: palisade::export::format::Format,
        /// Also list the ranges the tenant's ASN and country block rules cover (needs geo data).
        #[arg(long)]
        expand: bool,
        #[arg(long, default_value = DEFAULT_TENANT)]
        tenant: String,
        #[command(flatten)]
        location: Location,
    },
}

fn parse_export_format(text: &str) -> Result<palisade::export::format::Format, String> {
    text.parse()
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Read FILE strictly (an unknown key or a bad value is an error naming its line) and print
    /// the configuration the server would run with, environment applied and secrets masked.
    /// Exits 1 when anything is wrong.
    Check { file: PathBuf },
}

#[derive(Subcommand)]
enum GeoCommand {
    /// Print what the ASN and country files say about an address.
    Lookup {
        ip: IpAddr,
        #[command(flatten)]
        location: Location,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create a key; the key itself is printed alone on the last line of stdout.
    Create {
        #[arg(long)]
        name: String,
        #[arg(long, value_enum, default_value_t = Role::Writer)]
        role: Role,
        #[arg(long, default_value = DEFAULT_TENANT)]
        tenant: String,
        #[command(flatten)]
        location: Location,
    },
    /// List keys (never their secrets).
    List {
        #[command(flatten)]
        location: Location,
    },
    /// Revoke a key by id.
    Revoke {
        id: i64,
        #[command(flatten)]
        location: Location,
    },
}

/// Where the data and configuration are.
#[derive(Args)]
struct Location {
    /// Data directory of the embedded store [default: ./palisade-data]
    #[arg(long, env = "PALISADE_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// A shared PostgreSQL database instead of the embedded store
    /// (postgres://user:password@host/database; env PALISADE_DATABASE_URL).
    #[arg(long)]
    database_url: Option<String>,
    /// TOML configuration file.
    #[arg(long, env = "PALISADE_CONFIG")]
    config: Option<PathBuf>,
}

impl Location {
    fn load(&self, listen: Option<std::net::SocketAddr>) -> anyhow::Result<Config> {
        let overrides = Overrides {
            listen,
            data_dir: self.data_dir.clone(),
            database: self
                .database_url
                .clone()
                .map(|url| DatabaseOverride { url }),
        };
        Config::load(self.config.as_deref(), &overrides).context("reading the configuration")
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    palisade::telemetry::logging::init(cli.log_format);

    match cli.command {
        Command::Serve { listen, location } => serve(location.load(listen)?).await,
        Command::Keys(command) => keys(command).await,
        Command::Check {
            ip,
            tenant,
            location,
        } => check(ip, &tenant, &location.load(None)?).await,
        Command::Geo(GeoCommand::Lookup { ip, location }) => geo_lookup(ip, &location.load(None)?),
        Command::Config(ConfigCommand::Check { file }) => config_check(&file),
        Command::Rules(RulesCommand::Import {
            file,
            format,
            action,
            expiration,
            name,
            dataset,
            tenant,
            location,
        }) => {
            let config = location.load(None)?;
            let options = ImportOptions {
                tenant: TenantId(0),
                action: action.into(),
                expiration,
                name,
                dataset,
                guard: config.guard(),
            };
            import(&config, &file, format, &tenant, options).await
        }
        Command::Rules(RulesCommand::Export {
            format,
            expand,
            tenant,
            location,
        }) => export(&location.load(None)?, format, expand, &tenant).await,
    }
}

async fn tenant_id(backend: &SharedBackend, tenant: &str) -> anyhow::Result<TenantId> {
    backend
        .keys()
        .await?
        .into_iter()
        .find(|k| k.tenant.as_str() == tenant)
        .map(|k| k.tenant_id)
        .with_context(|| format!("no tenant named {tenant:?}"))
}

async fn import(
    config: &Config,
    file: &std::path::Path,
    format: palisade::import::Format,
    tenant: &str,
    mut options: ImportOptions,
) -> anyhow::Result<()> {
    options.validate()?;
    let (input, size): (Box<dyn std::io::BufRead + Send>, Option<u64>) = if file.as_os_str() == "-"
    {
        (Box::new(std::io::BufReader::new(std::io::stdin())), None)
    } else {
        let opened =
            std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
        let size = opened.metadata().ok().map(|m| m.len());
        (
            Box::new(std::io::BufReader::with_capacity(1 << 16, opened)),
            size,
        )
    };
    let engine = Arc::new(open_engine(config).await?);
    options.tenant = tenant_id(engine.backend(), tenant).await?;
    let bar = progress_bar(size);
    let shown = bar.clone();
    let started = std::time::Instant::now();
    let summary = palisade::import::run(
        engine,
        input,
        format,
        options,
        palisade::api::request_id(),
        SystemClock.now(),
        move |bytes| shown.set_position(bytes),
    )
    .await?;
    bar.finish_and_clear();
    println!(
        "{}: {} lines in {:.1} s: {} rules added, {} refreshed, {} invalid lines{}",
        file.display(),
        summary.lines,
        started.elapsed().as_secs_f64(),
        summary.added,
        summary.refreshed,
        summary.invalid_count,
        if summary.over_quota > 0 {
            format!(", {} over the tenant's rule quota", summary.over_quota)
        } else {
            String::new()
        }
    );
    for (line, reason) in &summary.invalid {
        println!("  line {line}: {reason}");
    }
    if summary.invalid_count > summary.invalid.len() as u64 {
        println!(
            "  ... and {} more invalid lines",
            summary.invalid_count - summary.invalid.len() as u64
        );
    }
    if summary.invalid_count > 0 || summary.over_quota > 0 {
        std::process::exit(1);
    }
    Ok(())
}

async fn export(
    config: &Config,
    format: palisade::export::format::Format,
    expand: bool,
    tenant: &str,
) -> anyhow::Result<()> {
    let geo = Arc::new(Geo::open(&config.geo).context("loading the geo data")?);
    let index = Arc::new(Index::new(geo.current().clone()));
    let backend = open_backend(config).await?;
    let tenant = tenant_id(&backend, tenant).await?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let feed = Feed::new(backend, clock.clone(), vec![index.clone()]);
    feed.load().await.context("loading the rules")?;
    let expansions = palisade::export::expand::Expansions::new(index.clone(), geo, clock.clone());
    let expansion = expansions.get_blocking(tenant);
    if expand {
        expansion.within(config.crowdsec.max_decisions)?;
    }
    let export =
        palisade::export::Export::new(index.ip_rules(tenant), Some(expansion), expand, clock.now());
    tokio::task::spawn_blocking(move || {
        let stdout = std::io::stdout();
        let mut out = std::io::BufWriter::with_capacity(1 << 16, stdout.lock());
        export.write_to(format, &mut out)
    })
    .await?
    .context("writing the export")?;
    Ok(())
}

/// A progress bar on a terminal; hidden otherwise, so logs and pipes stay clean.
fn progress_bar(size: Option<u64>) -> indicatif::ProgressBar {
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    match size {
        Some(size) => {
            let bar = indicatif::ProgressBar::new(size);
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} {eta}",
            ) {
                bar.set_style(style);
            }
            bar
        }
        None => indicatif::ProgressBar::new_spinner(),
    }
}

fn config_check(file: &std::path::Path) -> anyhow::Result<()> {
    match palisade::config_check::check(file) {
        Ok(effective) => {
            print!("{effective}");
            eprintln!("{}: OK", file.display());
            Ok(())
        }
        Err(problems) => {
            for problem in problems {
                eprintln!("{}: {problem}", file.display());
            }
            std::process::exit(1);
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    if let Some(open_files) = palisade::server::raise_open_files_limit() {
        let wanted = config.server.max_connections as u64 + 256;
        if open_files < wanted {
            tracing::warn!(
                open_files,
                max_connections = config.server.max_connections,
                "the open-files limit is below server.max_connections plus what the store needs; raise the hard limit (LimitNOFILE=) or lower max_connections"
            );
        }
    }
    let data_dir = config.data_dir.clone();
    let app = Application::build(config).await?;
    if let Some(key) = &app.bootstrap_key {
        println!(
            "No API keys existed, so an admin key for tenant '{DEFAULT_TENANT}' was created.\n\
             It is shown only this once; store it now:\n\n    {key}\n\n\
             Make more keys with:\n    palisade keys create --name NAME --role writer --data-dir {}\n",
            data_dir.display()
        );
    }
    tracing::info!(address = %app.local_addr(), data_dir = %data_dir.display(), "palisade listening");
    app.run_until_stopped(shutdown_signal()).await?;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut sig) => {
                sig.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}

/// The engine over the configured store, for commands that write (keys); nothing follows
/// its feed.
async fn open_engine(config: &Config) -> anyhow::Result<Engine> {
    let backend = open_backend(config).await?;
    let feed = Arc::new(Feed::new(
        backend.clone(),
        Arc::new(SystemClock),
        Vec::new(),
    ));
    let policies = Policies {
        write: config.write_policy(),
        ..Policies::default()
    };
    Ok(Engine::start(backend, feed, policies))
}

async fn check(ip: IpAddr, tenant: &str, config: &Config) -> anyhow::Result<()> {
    let geo = Geo::open(&config.geo).context("loading the geo data")?;
    let index = Arc::new(Index::new(geo.current().clone()));
    let backend = open_backend(config).await?;
    let tenant_id = tenant_id(&backend, tenant).await?;
    let feed = Feed::new(backend, Arc::new(SystemClock), vec![index.clone()]);
    feed.load().await.context("loading the rules")?;
    let view = index.view(tenant_id);
    let answer = answer(&view, ip, SystemClock.now());
    println!("{}", serde_json::to_string_pretty(&answer)?);
    Ok(())
}

fn geo_lookup(ip: IpAddr, config: &Config) -> anyhow::Result<()> {
    let geo = Geo::open(&config.geo).context("loading the geo data")?;
    let record = geo.lookup(ip);
    let show = |configured: bool, value: Option<String>| match (configured, value) {
        (false, _) => "(no file configured)".to_owned(),
        (true, None) => "(not in the data)".to_owned(),
        (true, Some(v)) => v,
    };
    println!("ip:      {}", normalize_ip(ip));
    println!(
        "asn:     {}",
        show(geo.has_asn_source(), record.asn.map(|a| a.to_string()))
    );
    println!(
        "country: {}",
        show(
            geo.has_country_source(),
            record.country.map(|c| c.to_string())
        )
    );
    Ok(())
}

async fn keys(command: KeysCommand) -> anyhow::Result<()> {
    match command {
        KeysCommand::Create {
            name,
            role,
            tenant,
            location,
        } => {
            let engine = open_engine(&location.load(None)?).await?;
            let (secret, key) = create_key(
                &engine,
                &name,
                role,
                &tenant,
                &SystemClock,
                palisade::store::Actor::command_line(),
            )
            .await?;
            println!(
                "Created key {} '{}' (role {}, tenant {}). It is shown only this once:",
                key.id, key.name, key.role, key.tenant
            );
            println!("{secret}");
        }
        KeysCommand::List { location } => {
            let backend = open_backend(&location.load(None)?).await?;
            let bouncers: std::collections::HashMap<i64, _> = backend
                .bouncers()
                .await?
                .into_iter()
                .map(|b| (b.key_id, b))
                .collect();
            println!(
                "{:>5}  {:<24} {:<7} {:<16} {:<24} {:<24} LAST PULL (bouncers: address, version, user agent)",
                "ID", "NAME", "ROLE", "TENANT", "CREATED", "REVOKED"
            );
            for key in backend.keys().await? {
                let pulled = bouncers.get(&key.id).map_or_else(
                    || "-".to_owned(),
                    |b| {
                        format!(
                            "{}  {}  {}  {}",
                            b.last_pull,
                            b.address.as_deref().unwrap_or("-"),
                            b.version.as_deref().unwrap_or("-"),
                            b.user_agent.as_deref().unwrap_or("-"),
                        )
                    },
                );
                println!(
                    "{:>5}  {:<24} {:<7} {:<16} {:<24} {:<24} {}",
                    key.id,
                    key.name,
                    key.role,
                    key.tenant,
                    key.created_at,
                    key.revoked_at
                        .map(|t| t.to_string())
                        .unwrap_or_else(|| "-".into()),
                    pulled
                );
            }
        }
        KeysCommand::Revoke { id, location } => {
            let engine = open_engine(&location.load(None)?).await?;
            match engine
                .revoke_key(
                    id,
                    SystemClock.now(),
                    palisade::store::Actor::command_line(),
                )
                .await?
            {
                Some(key) => println!("Revoked key {} '{}'", key.id, key.name),
                None => anyhow::bail!("no key with id {id}"),
            }
        }
    }
    Ok(())
}
