//! `onhand connector NAME`: one connector on its own, without the HTTP API or the ledger,
//! for a connector that runs near its outside system (the WMS's file share, the ERP's
//! network). It gets what it gets inside `onhand serve`: the Kafka producer and topics
//! (created when missing), the database, a stock cache, its `[connectors.NAME]` section.

use onhand_connectors::{registry, ConnectorContext, ConnectorError};
use std::net::SocketAddr;

use onhand_core::{
    api,
    config::Config,
    health::Health,
    supervisor::{Supervisor, Task},
    telemetry::Metrics,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::{
    app::{server_outcome, spawn_connector, StartError},
    boot,
};

/// The configuration with only connector `name` in it: its section as configured (an
/// empty one when there is none, for connectors whose defaults suffice), with the fields
/// of `overrides` (the command line's) replacing the section's.
pub fn only(mut config: Config, name: &str, overrides: serde_json::Map<String, serde_json::Value>) -> Config {
    let mut section = config.connectors.remove(name).unwrap_or_else(|| serde_json::json!({}));
    if let Some(fields) = section.as_object_mut() {
        fields.extend(overrides);
    }
    config.connectors = [(name.to_string(), section)].into();
    config
}

/// Runs connector `name` until `shutdown` fires or it stops on its own. Refuses to start,
/// naming the cause, when the section, the database or the brokers are not right.
///
/// With `listen`, it also serves `/healthz`, `/readyz` and `/metrics` there (for a
/// container's probes and Prometheus), and then runs until `shutdown`.
pub async fn run(
    config: Config,
    name: &str,
    overrides: serde_json::Map<String, serde_json::Value>,
    listen: Option<SocketAddr>,
    shutdown: CancellationToken,
) -> Result<(), StartError> {
    config.check()?;
    let config = only(config, name, overrides);
    let metrics = Metrics::new();
    let connector = registry(&config, metrics.registry())?.pop().ok_or_else(|| ConnectorError {
        connector: "registry",
        message: format!("no connector is named {name:?}"),
        retryable: false,
    })?;
    let db = boot::db(&config, config.database.connections_max).await?;
    let producer = boot::kafka(&config).await?;
    let health = Health::new(metrics.clone());
    let mut supervisor = Supervisor::new(health.clone(), shutdown.clone());
    if let Some(addr) = listen {
        let listener = TcpListener::bind(addr).await.map_err(|source| StartError::Bind { addr, source })?;
        let router = api::operations(health, metrics.clone());
        supervisor.spawn_once(Task::new("http").critical(), move |_, stop| async move {
            let served = api::serve(listener, router, stop.clone()).await;
            server_outcome(served, &stop)
        });
    }
    let context = ConnectorContext::standalone(&config, db, producer, metrics, shutdown);
    info!(connector = connector.name(), "connector running on its own");
    // Supervised as inside `onhand serve`: a passing failure restarts it; one that needs a
    // person ends the process with the reason, for its service manager to report.
    spawn_connector(&mut supervisor, connector, context);
    supervisor
        .join()
        .await
        .map_err(|failure| ConnectorError { connector: "connector", message: failure.message, retryable: false }.into())
}
