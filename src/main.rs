//! The `palisade` command: thin wiring around the library.

use std::io::IsTerminal;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use palisade::api::check::answer;
use palisade::app::{Application, create_key, rebuild_index};
use palisade::clock::{Clock, SystemClock};
use palisade::config::{Config, Overrides};
use palisade::geo::Geo;
use palisade::index::Index;
use palisade::keys::{DEFAULT_TENANT, Role};
use palisade::rules::normalize_ip;
use palisade::store::sqlite::{SqliteOptions, SqliteStore};
use palisade::store::{ChangeSink, NoSink, SharedStore, Store};

#[derive(Parser)]
#[command(
    name = "palisade",
    version,
    about = "Self-hosted security-signal service"
)]
struct Cli {
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
    /// Manage API keys (works while the server runs; changes apply within a second).
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
    /// Data directory [default: ./palisade-data]
    #[arg(long, env = "PALISADE_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// TOML configuration file.
    #[arg(long, env = "PALISADE_CONFIG")]
    config: Option<PathBuf>,
}

impl Location {
    fn load(&self, listen: Option<std::net::SocketAddr>) -> anyhow::Result<Config> {
        let overrides = Overrides {
            listen,
            data_dir: self.data_dir.clone(),
        };
        Config::load(self.config.as_deref(), &overrides).context("reading the configuration")
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Logs go to stderr, so stdout carries only what scripts read (keys, tables).
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();

    match Cli::parse().command {
        Command::Serve { listen, location } => serve(location.load(listen)?).await,
        Command::Keys(command) => keys(command).await,
        Command::Check {
            ip,
            tenant,
            location,
        } => check(ip, &tenant, &location.load(None)?).await,
        Command::Geo(GeoCommand::Lookup { ip, location }) => geo_lookup(ip, &location.load(None)?),
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
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

fn open_store(config: &Config, sink: Arc<dyn ChangeSink>) -> anyhow::Result<SqliteStore> {
    SqliteStore::open(
        &config.data_dir,
        SqliteOptions {
            synchronous: config.store.synchronous,
            cache_mib: config.store.cache_mib,
        },
        sink,
    )
    .with_context(|| format!("opening the store in {}", config.data_dir.display()))
}

async fn check(ip: IpAddr, tenant: &str, config: &Config) -> anyhow::Result<()> {
    let geo = Geo::open(&config.geo).context("loading the geo data")?;
    let index = Arc::new(Index::new(geo.current().clone()));
    let store: SharedStore = Arc::new(open_store(config, index.clone())?);
    let tenant_id = store
        .keys()
        .await?
        .into_iter()
        .find(|k| k.tenant.as_str() == tenant)
        .map(|k| k.tenant_id)
        .with_context(|| format!("no tenant named {tenant:?}"))?;
    rebuild_index(&store, &index, &SystemClock).await?;
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
            let store = open_store(&location.load(None)?, Arc::new(NoSink))?;
            let (secret, key) = create_key(&store, &name, role, &tenant, &SystemClock).await?;
            println!(
                "Created key {} '{}' (role {}, tenant {}). It is shown only this once:",
                key.id, key.name, key.role, key.tenant
            );
            println!("{secret}");
        }
        KeysCommand::List { location } => {
            let store = open_store(&location.load(None)?, Arc::new(NoSink))?;
            println!(
                "{:>5}  {:<24} {:<7} {:<16} {:<24} REVOKED",
                "ID", "NAME", "ROLE", "TENANT", "CREATED"
            );
            for key in store.keys().await? {
                println!(
                    "{:>5}  {:<24} {:<7} {:<16} {:<24} {}",
                    key.id,
                    key.name,
                    key.role,
                    key.tenant,
                    key.created_at,
                    key.revoked_at
                        .map(|t| t.to_string())
                        .unwrap_or_else(|| "-".into())
                );
            }
        }
        KeysCommand::Revoke { id, location } => {
            let store = open_store(&location.load(None)?, Arc::new(NoSink))?;
            match store.revoke_key(id, SystemClock.now()).await? {
                Some(key) => println!("Revoked key {} '{}'", key.id, key.name),
                None => anyhow::bail!("no key with id {id}"),
            }
        }
    }
    Ok(())
}
