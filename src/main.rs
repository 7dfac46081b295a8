//! The `onhand` command: parses the command line and runs library code.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use onhand::app::{App, StartOptions};
use onhand_core::config::Config;
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(name = "onhand", version, about = "Real-time, multi-channel inventory")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs everything in one process with nothing to install: Kafka in process, SQLite.
    Dev {
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        #[arg(long, default_value = ".onhand-dev")]
        data_dir: PathBuf,
    },
    /// Runs against a Kafka cluster and PostgreSQL, configured by a file and the environment.
    Serve {
        /// A TOML file (see deploy/onhand.toml); ONHAND_SECTION__FIELD and DATABASE_URL override it.
        #[arg(long, env = "ONHAND_CONFIG")]
        config: Option<PathBuf>,
    },
    /// The product catalog.
    Products {
        #[command(subcommand)]
        command: ProductsCommand,
    },
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

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("onhand: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let app = match cli.command {
        Command::Products { command: ProductsCommand::Import { file, database_url } } => {
            let store = onhand_core::store::open(&database_url, 2).await?;
            let report = onhand::products::import(&file, &*store).await?;
            println!("imported {} products ({} new)", report.products, report.created);
            return Ok(());
        }
        Command::Dev { listen, data_dir } => {
            let app = App::dev(listen, &data_dir).await?;
            print_dev_banner(&app, &data_dir);
            app
        }
        Command::Serve { config } => {
            let config = Config::load(config.as_deref())?;
            let app = App::serve(config, StartOptions::default()).await?;
            println!("onhand serve: http api on http://{}", app.local_addr);
            app
        }
    };
    tokio::select! {
        _ = shutdown_signal() => {}
        _ = app.failed() => {}
    }
    app.stop().await?;
    Ok(())
}

fn print_dev_banner(app: &App, data_dir: &std::path::Path) {
    let c = &app.config;
    println!("onhand dev is running");
    println!("  http api   http://{}", app.local_addr);
    println!("  kafka      embedded mock cluster at {} ({} partitions)", c.kafka.brokers, c.kafka.partitions);
    println!("             topics {}, {}, {}", c.kafka.topics.movements, c.kafka.topics.stock, c.kafka.topics.dlq);
    println!("  database   {}", c.database.url);
    println!("  ledger     consumer group {}", c.ledger.group_id);
    println!("  data dir   {}", data_dir.display());
    println!("try: curl -s http://{}/v1/stock/SKU-1   (README.md has a movement to post)", app.local_addr);
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
