//! The `onhand` command: parses the command line and runs library code.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use onhand::{
    app::{App, StartOptions},
    ops::{self, Exit},
};
use onhand_connectors::pos::agent::{Agent, AgentConfig, LocalAuth};
use onhand_core::config::Config;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(name = "onhand", version, about = "Real-time, multi-channel inventory")]
struct Cli {
    /// How log lines are written to stderr: `text` for a person, `json` (one object a line,
    /// with the fields of the request or task each line belongs to) for a log pipeline.
    #[arg(long, global = true, value_enum, env = "ONHAND_LOG_FORMAT", default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs everything in one process with nothing to install: Kafka in process, SQLite.
    Dev {
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        #[arg(long, default_value = ".onhand-dev")]
        data_dir: PathBuf,
        /// A TOML file whose [channels], [orders] and [alerts] sections replace dev's
        /// defaults (the sales channels, delivery calendars and regions, alert thresholds).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Runs against a Kafka cluster and PostgreSQL, configured by a file and the environment.
    Serve {
        /// A TOML file (see deploy/onhand.toml); ONHAND_SECTION__FIELD and DATABASE_URL override it.
        #[arg(long, env = "ONHAND_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Runs in a store beside the tills: serves the POS routes, keeps every line in a local
    /// outbox and forwards it to the central service, in order, whenever it can.
    StoreAgent {
        /// The onhand location of this store, e.g. store-012.
        #[arg(long)]
        store: String,
        /// The central onhand, e.g. https://onhand.example.com.
        #[arg(long)]
        central: String,
        /// A file holding the central API key (movements:write and stock:read, bound to
        /// the store: onhand keys create --store ...). Or set ONHAND_AGENT_KEY. Never on
        /// the command line, where `ps` shows it to every user of the machine.
        #[arg(long)]
        key_file: Option<PathBuf>,
        #[arg(long, default_value = "127.0.0.1:8090")]
        listen: SocketAddr,
        #[arg(long, default_value = ".onhand-agent")]
        data_dir: PathBuf,
        /// The tills' tokens, one `NAME TOKEN` a line. Default: DATA_DIR/local-tokens,
        /// made with one token on the first start.
        #[arg(long, conflicts_with = "no_local_auth")]
        local_tokens: Option<PathBuf>,
        /// Serve the tills without tokens (only on a network nothing else can reach).
        #[arg(long)]
        no_local_auth: bool,
    },
    /// Runs one connector on its own (no HTTP API, no ledger), configured like `serve`.
    Connector {
        #[command(subcommand)]
        connector: ConnectorCommand,
    },
    /// The product catalog.
    Products {
        #[command(subcommand)]
        command: ProductsCommand,
    },
    /// API keys of the HTTP API.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    #[command(flatten)]
    Operation(ops::command::Operation),
}

#[derive(Debug, Subcommand)]
enum ConnectorCommand {
    /// Takes the distribution centre's CSV files from an inbox (docs/connectors/wms.md).
    Wms {
        /// The directory the WMS drops files into; replaces [connectors.wms] inbox.
        #[arg(long)]
        inbox: Option<PathBuf>,
        #[command(flatten)]
        listen: Listen,
        /// A TOML file (see deploy/onhand.toml); ONHAND_SECTION__FIELD and DATABASE_URL override it.
        #[arg(long, env = "ONHAND_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Captures the ERP's stock journal, by polling or from Debezium (docs/connectors/erp.md).
    Erp {
        /// A TOML file with [connectors.erp] (see deploy/onhand.toml); the environment overrides it.
        #[arg(long, env = "ONHAND_CONFIG")]
        config: Option<PathBuf>,
        #[command(flatten)]
        listen: Listen,
    },
}

/// Where a connector running on its own serves `/healthz`, `/readyz` and `/metrics`.
#[derive(Debug, clap::Args)]
struct Listen {
    /// Serve /healthz, /readyz and /metrics on this address (e.g. 0.0.0.0:9090), for
    /// probes and Prometheus; none by default.
    #[arg(long = "listen", env = "ONHAND_CONNECTOR_LISTEN")]
    addr: Option<SocketAddr>,
}

#[derive(Debug, Subcommand)]
enum ProductsCommand {
    /// Imports products from a .csv (columns sku, name, category, then attributes) or an
    /// .ndjson file; a file with any bad line imports nothing.
    Import {
        file: PathBuf,
        /// postgres://... or, for onhand dev, sqlite://.onhand-dev/onhand.db
        #[arg(long, env = "DATABASE_URL")]
        database_url: String,
    },
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Creates a key and prints it, this once: onhand stores only a hash of it.
    Create {
        /// Who or what uses the key, for people reading `onhand keys list`.
        #[arg(long)]
        name: String,
        /// Comma-separated: stock:read, movements:write, reservations:write, admin (all).
        #[arg(long)]
        scopes: String,
        /// Binds the key to a store: it writes only that store's movements, under its ids
        /// (pos:STORE:...), and may report its store agent's progress.
        #[arg(long, conflicts_with = "source")]
        store: Option<String>,
        /// Binds the key to another source, SYSTEM:INSTANCE (erp:erp-main, api:pricing):
        /// it writes only that source's movements, under the ids SYSTEM:INSTANCE:...
        #[arg(long)]
        source: Option<String>,
        /// postgres://... or, for onhand dev, sqlite://.onhand-dev/onhand.db
        #[arg(long, env = "DATABASE_URL")]
        database_url: String,
    },
    /// Lists the keys, revoked ones too (never their secrets).
    List {
        #[arg(long, env = "DATABASE_URL")]
        database_url: String,
    },
    /// Revokes a key: running instances refuse it within http.api_key_cache_ttl_s.
    Revoke {
        /// The id of the key (onh_<id>_...), as `onhand keys list` shows it.
        id: String,
        #[arg(long, env = "DATABASE_URL")]
        database_url: String,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.init(),
        // Each line: timestamp, level, target, the event's fields at the top level, and
        // `spans`, the fields of every span it is in (a request's `request_id`, ...).
        LogFormat::Json => logs.json().flatten_event(true).with_current_span(false).with_span_list(true).init(),
    }
    let command = cli.command;
    // The operator's commands end with a code scripts act on (`ops::Exit`), 2 for an error.
    let error = if matches!(command, Command::Operation(_)) { ops::EXIT_ERROR } else { 1 };
    match run(command).await {
        Ok(exit) => exit.into(),
        Err(e) => {
            eprintln!("onhand: {e:#}");
            ExitCode::from(error)
        }
    }
}

async fn run(command: Command) -> anyhow::Result<Exit> {
    let app = match command {
        Command::Operation(operation) => return ops::command::run(operation).await,
        Command::Products { command: ProductsCommand::Import { file, database_url } } => {
            let db = onhand_core::db::open(&database_url, 2).await?;
            let report = onhand::products::import(&file, &*db).await?;
            println!("imported {} products ({} new)", report.products, report.created);
            return Ok(Exit::Ok);
        }
        Command::Keys { command } => return keys(command).await.map(|()| Exit::Ok),
        Command::Connector { connector: ConnectorCommand::Wms { inbox, config, listen } } => {
            let mut overrides = serde_json::Map::new();
            if let Some(inbox) = inbox {
                overrides.insert("inbox".into(), serde_json::json!(inbox));
            }
            return connector(Config::load(config.as_deref())?, "wms", overrides, listen.addr).await.map(|()| Exit::Ok);
        }
        Command::Connector { connector: ConnectorCommand::Erp { config, listen } } => {
            let config = Config::load(config.as_deref())?;
            return connector(config, "erp", serde_json::Map::new(), listen.addr).await.map(|()| Exit::Ok);
        }
        Command::StoreAgent { store, central, key_file, listen, data_dir, local_tokens, no_local_auth } => {
            let store =
                onhand_core::event::LocationId::parse(store).map_err(|e| anyhow::anyhow!("--store: {}", e.message))?;
            let key = agent_key(key_file.as_deref())?;
            std::fs::create_dir_all(&data_dir).map_err(|e| anyhow::anyhow!("{}: {e}", data_dir.display()))?;
            let local_auth = match (no_local_auth, local_tokens) {
                (true, _) => LocalAuth::Off,
                (false, Some(file)) => LocalAuth::parse(
                    &std::fs::read_to_string(&file).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?,
                )
                .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?,
                (false, None) => {
                    let file = data_dir.join(LOCAL_TOKENS_FILE);
                    let auth = LocalAuth::from_file_or_create(&file).map_err(anyhow::Error::msg)?;
                    println!("onhand store-agent: the tills send a token of {}", file.display());
                    auth
                }
            };
            let mut config = AgentConfig::new(store, central, key, data_dir);
            config.listen = listen;
            config.local_auth = local_auth;
            let agent = Agent::start(config).await?;
            println!("onhand store-agent: pos routes on http://{}", agent.local_addr);
            shutdown_signal().await;
            agent.stop().await;
            return Ok(Exit::Ok);
        }
        Command::Dev { listen, data_dir, config } => {
            let business = config.map(|file| Config::read(Some(&file))).transpose()?;
            let app = App::dev(listen, &data_dir, business).await?;
            let key = onhand::keys::dev_key(&*app.db, &data_dir).await?;
            print_dev_banner(&app, &data_dir, &key);
            app
        }
        Command::Serve { config } => {
            let config = Config::load(config.as_deref())?;
            let app = App::serve(config, StartOptions::default()).await?;
            println!("onhand serve: http api on http://{}", app.local_addr);
            app
        }
    };
    // A component that cannot go on fails the process, with its reason, for the service
    // manager to start it again; a signal stops it cleanly.
    let failure = tokio::select! {
        _ = shutdown_signal() => None,
        failure = app.failed() => Some(failure),
    };
    app.stop().await?;
    failure.map_or(Ok(Exit::Ok), |failure| Err(failure.into()))
}

/// The file in the agent's data directory with the tills' tokens, made at the first start.
const LOCAL_TOKENS_FILE: &str = "local-tokens";

/// The central API key of a store agent: from `--key-file`, else `ONHAND_AGENT_KEY`.
fn agent_key(key_file: Option<&std::path::Path>) -> anyhow::Result<String> {
    let key = match key_file {
        Some(file) => std::fs::read_to_string(file).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?,
        None => std::env::var("ONHAND_AGENT_KEY")
            .map_err(|_| anyhow::anyhow!("the central api key: give --key-file FILE or set ONHAND_AGENT_KEY"))?,
    };
    let key = key.trim().to_string();
    anyhow::ensure!(!key.is_empty(), "the central api key is empty");
    Ok(key)
}

/// Runs one connector until Ctrl-C or SIGTERM.
async fn connector(
    config: Config,
    name: &str,
    overrides: serde_json::Map<String, serde_json::Value>,
    listen: Option<SocketAddr>,
) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        stop.cancel();
    });
    onhand::connector::run(config, name, overrides, listen, shutdown).await?;
    Ok(())
}

async fn keys(command: KeysCommand) -> anyhow::Result<()> {
    match command {
        KeysCommand::Create { name, scopes, store: bound_store, source, database_url } => {
            let db = onhand_core::db::open(&database_url, 1).await?;
            let bound_to = bound_store.map(|s| format!("store:{s}")).or(source);
            let created = onhand::keys::create(&*db, &name, &scopes, bound_to.as_deref()).await?;
            println!("id      {}", created.key.id);
            println!("name    {}", created.key.name);
            println!("scopes  {}", created.key.scopes);
            if let Some(bound) = &created.key.bound_to {
                println!("bound   {bound}");
            }
            println!("key     {}", created.plaintext);
            eprintln!("keep the key now: it is not shown again, onhand stores only its hash");
        }
        KeysCommand::List { database_url } => {
            let db = onhand_core::db::open(&database_url, 1).await?;
            for key in onhand::keys::list(&*db).await? {
                println!("{}", onhand::keys::describe(&key));
            }
        }
        KeysCommand::Revoke { id, database_url } => {
            let db = onhand_core::db::open(&database_url, 1).await?;
            onhand::keys::revoke(&*db, &id).await?;
            println!("revoked api key {id}");
        }
    }
    Ok(())
}

fn print_dev_banner(app: &App, data_dir: &std::path::Path, key: &str) {
    let c = &app.config;
    println!("onhand dev is running");
    println!("  http api   http://{}", app.local_addr);
    println!("  kafka      embedded mock cluster at {} ({} partitions)", c.kafka.brokers, c.kafka.partitions);
    let t = &c.kafka.topics;
    println!("             topics {}, {}, {}, {}", t.movements, t.stock, t.dlq, t.alerts);
    println!("  database   {}", c.database.url);
    println!("  ledger     consumer group {}", c.ledger.group_id);
    println!("  data dir   {}", data_dir.display());
    println!("  dashboard  http://{}/dashboard   (paste the api key below once)", app.local_addr);
    println!("  api key    {key}");
    println!("             admin, kept in {}", data_dir.join(onhand::keys::DEV_KEY_FILE).display());
    println!(
        "try: curl -s -H \"Authorization: Bearer {key}\" http://{}/v1/stock/SKU-1   (README.md has a movement to post)",
        app.local_addr
    );
    println!("press Ctrl-C to stop");
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("a SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
