//! The connector contract: what a connector folder implements and what it gets.
//!
//! - [`ConnectorKind`]: a connector as the registry lists it, a value: its name, and how
//!   it is built from its `[connectors.NAME]` section (its typed configuration, read with
//!   [`section`]) with its own metrics (registered with a [`Registrar`]).
//! - [`Connector`]: a built connector: its HTTP routes, if it receives pushes, and its
//!   long-running task, which reports its health through `context.component`.
//! - [`ConnectorContext`]: what the process hands a connector's routes and task, and
//!   [`ConnectorContext::leased`], how a poller or an inbox runs on one replica at a time.
//! - [`ConnectorError`]: why a connector could not be built, or stopped, and whether running
//!   it again may help.
//! - [`SourceHealth`]: how a connector says, on each success and error, whether its source
//!   is healthy, for `GET /v1/sources`.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use async_trait::async_trait;
use chrono::Utc;
pub use onhand_core::api::ScopedRoutes;
use onhand_core::{
    cache::StockCache,
    clock::Clock,
    config::{Config, Topics},
    db::{Catalog, ConnectorState, Db, Signals, Sources, StockReads},
    freshness::SourceUpdate,
    health::{Component, Failure},
    ingest::{Durability, Ingest},
    kafka::Producer,
    lease::Leaser,
    relay::{Forget, Relay},
    telemetry::Metrics,
};
use prometheus::{core::Collector, IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// A connector failed. `retryable` says whether running it again may succeed (the outside
/// system or Kafka was unreachable) or a person must act (bad configuration).
#[derive(Debug, thiserror::Error)]
#[error("connector {connector}: {message}")]
pub struct ConnectorError {
    pub connector: &'static str,
    pub message: String,
    pub retryable: bool,
}

impl From<ConnectorError> for Failure {
    fn from(e: ConnectorError) -> Failure {
        Failure { message: e.to_string(), retryable: e.retryable }
    }
}

/// A connector as the registry lists it: a value (each folder's `KIND`), so that adding a
/// connector is one more item in [`crate::connectors`].
#[derive(Debug, Clone, Copy)]
pub struct ConnectorKind {
    /// A short, stable name: its `[connectors.NAME]` section, its component
    /// `connector:NAME`, its `onhand connector NAME`.
    pub name: &'static str,
    pub build: Build,
}

/// How a [`ConnectorKind`] builds its connector: reads the section into the connector's
/// typed configuration (refused, naming the field, when it is not valid, also against the
/// whole configuration), then registers the connector's metrics on `metrics`, the registry
/// of the process's `/metrics`.
pub type Build =
    fn(section: &serde_json::Value, config: &Config, metrics: &Registry) -> Result<Arc<dyn Connector>, ConnectorError>;

/// A connector built by its [`ConnectorKind`], ready to serve its routes and run.
#[async_trait]
pub trait Connector: Send + Sync + std::fmt::Debug {
    /// Its kind's name.
    fn name(&self) -> &'static str;

    /// Routes served by the HTTP API for this connector, if it receives pushes, each group
    /// with the API-key scope it needs.
    fn routes(&self, _context: &ConnectorContext) -> Vec<ScopedRoutes> {
        Vec::new()
    }

    /// Runs until `context.shutdown` fires, reporting through `context.component` when it
    /// is blocked; its supervisor runs it again after a retryable error.
    async fn run(self: Arc<Self>, context: ConnectorContext) -> Result<(), ConnectorError>;
}

/// What a connector gets from the process that runs it.
#[derive(Clone)]
pub struct ConnectorContext {
    /// Idempotent, `acks=all`, renewed when it fails fatally: for dead letters, and for
    /// movements of a connector that makes them safe itself (a cursor moved only after
    /// Kafka acknowledged). Routes that answer a client accept movements through `ingest`.
    pub producer: Producer,
    /// Makes a movement safe before the answer says so (Kafka, or `onhand dev`'s outbox).
    pub ingest: Ingest,
    /// Where the connector reports that it is blocked (`/readyz`); its supervisor reports
    /// restarts and failures.
    pub component: Component,
    pub topics: Topics,
    /// The product catalog and the locations' names. A connector never writes stock
    /// levels: it produces movements.
    pub catalog: Arc<dyn Catalog>,
    /// The stock levels as the database has them now (a sink pushing them outside).
    pub stock: Arc<dyn StockReads>,
    /// The connector's saved cursors.
    pub cursors: Arc<dyn ConnectorState>,
    /// The sources' progress, which a connector reports.
    pub sources: Arc<dyn Sources>,
    /// Where the connector says, on each success and error, whether its source is healthy.
    pub health: SourceHealth,
    /// The stock levels as the API answers them.
    pub cache: StockCache,
    /// The whole configuration: a connector reads its own section, and the Kafka settings
    /// when it consumes a topic.
    pub config: Arc<Config>,
    pub shutdown: CancellationToken,
    /// This replica's leases: a poller or an inbox, which must run on one replica at a
    /// time, runs through [`ConnectorContext::leased`]. Routes need none: every replica
    /// serves them.
    pub leaser: Leaser,
    /// Core's metrics, which the mechanisms a connector calls (dead letters, the cache)
    /// count in; a connector's own metrics are registered when it is built.
    pub metrics: Metrics,
}

impl ConnectorContext {
    /// The context of a connector running on its own, without the API (`onhand connector
    /// NAME`, benchmarks): against a Kafka cluster, so movements are safe once acknowledged.
    pub fn standalone(
        config: &Config,
        db: Arc<dyn Db>,
        producer: Producer,
        metrics: Metrics,
        shutdown: CancellationToken,
    ) -> ConnectorContext {
        let cache = StockCache::new(db.clone(), &config.query, metrics.clone());
        let produce_timeout = std::time::Duration::from_millis(config.kafka.produce_timeout_ms);
        let relay = Relay {
            db: db.clone(),
            producer: producer.clone(),
            topics: config.kafka.topics.clone(),
            produce_timeout,
            cache: cache.clone(),
            clock: Clock::default(),
            forget: Forget::WhenAcknowledged,
            acknowledged: Arc::default(),
        };
        let ingest = Ingest {
            durability: Durability::Kafka,
            producer: producer.clone(),
            movements_topic: config.kafka.topics.movements.clone(),
            produce_timeout,
            db: db.clone(),
            relay,
        };
        let leaser = Leaser::new(db.clone(), &config.leases, metrics.clone(), None);
        ConnectorContext {
            producer,
            ingest,
            leaser,
            component: Component::detached("connector"),
            topics: config.kafka.topics.clone(),
            catalog: db.clone(),
            stock: db.clone(),
            cursors: db.clone(),
            sources: db.clone(),
            health: SourceHealth::new(db.clone(), db),
            cache,
            config: Arc::new(config.clone()),
            shutdown,
            metrics,
        }
    }
}

impl ConnectorContext {
    /// Runs `work` only while this replica holds the lease `name` (see
    /// `onhand_core::lease`), until shutdown or the work's own end, whose result it
    /// answers. `work` gets this context with a `shutdown` that also fires when the lease
    /// is lost; it is called again each time the lease is taken again, and must resume
    /// from what it committed (a cursor, a file still in the inbox).
    pub async fn leased<F, Fut>(&self, name: &'static str, mut work: F) -> Result<(), ConnectorError>
    where
        F: FnMut(ConnectorContext) -> Fut,
        Fut: std::future::Future<Output = Result<(), ConnectorError>>,
    {
        self.leaser.run(name, &self.shutdown, |stop| work(ConnectorContext { shutdown: stop, ..self.clone() })).await
    }
}

impl std::fmt::Debug for ConnectorContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectorContext").field("topics", &self.topics).finish_non_exhaustive()
    }
}

/// How a connector reports its source's health in `GET /v1/sources` (`healthy`, `detail`,
/// `last_error`): [`ok`](Self::ok) after each success, [`error`](Self::error) after each
/// failure. Only a change is written, so a connector may call it on every request or poll;
/// an error still failing is written again every [`ERROR_REFRESH`], so that
/// `last_error_at` says it goes on. Shared by every clone of the context.
#[derive(Clone)]
pub struct SourceHealth {
    sources: Arc<dyn Sources>,
    signals: Arc<dyn Signals>,
    reported: Arc<Mutex<HashMap<String, Reported>>>,
}

/// What was last written for a source: its error (`None` when healthy), and when.
type Reported = (Option<String>, Instant);

/// How often an error that goes on is written again.
pub const ERROR_REFRESH: Duration = Duration::from_secs(60);
/// The most sources whose reports are remembered (stores are sources): past it, every
/// report is written.
const REPORTED_MAX: usize = 10_000;

impl SourceHealth {
    pub fn new(sources: Arc<dyn Sources>, signals: Arc<dyn Signals>) -> SourceHealth {
        SourceHealth { sources, signals, reported: Arc::default() }
    }

    /// `source` works: its health is written when it was not healthy before.
    pub async fn ok(&self, source: &str) {
        if self.unchanged(source, None) {
            return;
        }
        let update = SourceUpdate::Health { healthy: true, detail: None };
        match self.sources.update_source(source, &update, Utc::now()).await {
            Ok(_) => self.remember(source, None),
            Err(e) => warn!(error = %e, source, "source health not recorded"),
        }
    }

    /// `source` failed with `error` (for people: no secrets, no payloads): it is unhealthy
    /// with this detail, and this is its last error.
    pub async fn error(&self, source: &str, error: impl std::fmt::Display) {
        let error = error.to_string();
        if self.unchanged(source, Some(&error)) {
            return;
        }
        let now = Utc::now();
        let update = SourceUpdate::Health { healthy: false, detail: Some(error.clone()) };
        let written = match self.sources.update_source(source, &update, now).await {
            Ok(_) => self.signals.record_error(source, &error, now).await,
            Err(e) => Err(e),
        };
        match written {
            Ok(()) => self.remember(source, Some(error)),
            Err(e) => warn!(error = %e, source, "source health not recorded"),
        }
    }

    /// Whether `error` is what was last written for `source` (recently, for an error).
    fn unchanged(&self, source: &str, error: Option<&str>) -> bool {
        let reported = self.reported.lock().unwrap_or_else(PoisonError::into_inner);
        match reported.get(source) {
            Some((None, _)) => error.is_none(),
            Some((Some(last), at)) => error == Some(last.as_str()) && at.elapsed() < ERROR_REFRESH,
            None => false,
        }
    }

    fn remember(&self, source: &str, error: Option<String>) {
        let mut reported = self.reported.lock().unwrap_or_else(PoisonError::into_inner);
        if reported.len() < REPORTED_MAX || reported.contains_key(source) {
            reported.insert(source.to_string(), (error, Instant::now()));
        }
    }
}

impl std::fmt::Debug for SourceHealth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceHealth").finish_non_exhaustive()
    }
}

/// Reads a connector's section into its typed configuration, naming the connector and
/// the field in the error.
pub fn section<T: serde::de::DeserializeOwned>(
    connector: &'static str,
    value: &serde_json::Value,
) -> Result<T, ConnectorError> {
    serde_json::from_value(value.clone()).map_err(|e| ConnectorError {
        connector,
        message: format!("[connectors.{connector}] is not valid: {e}"),
        retryable: false,
    })
}

/// Registers a connector's metrics on the process's registry, so that `/metrics` shows them
/// with the others. A metric is refused when it is there already: the connector was built
/// twice on one registry.
#[derive(Debug, Clone, Copy)]
pub struct Registrar<'a> {
    connector: &'static str,
    registry: &'a Registry,
}

impl<'a> Registrar<'a> {
    pub fn new(connector: &'static str, registry: &'a Registry) -> Registrar<'a> {
        Registrar { connector, registry }
    }

    pub fn counter(&self, name: &str, help: &str) -> Result<IntCounter, ConnectorError> {
        self.register(IntCounter::new(name, help))
    }

    pub fn counter_vec(&self, name: &str, help: &str, labels: &[&str]) -> Result<IntCounterVec, ConnectorError> {
        self.register(IntCounterVec::new(Opts::new(name, help), labels))
    }

    pub fn gauge(&self, name: &str, help: &str) -> Result<IntGauge, ConnectorError> {
        self.register(IntGauge::new(name, help))
    }

    fn register<M: Collector + Clone + 'static>(&self, metric: prometheus::Result<M>) -> Result<M, ConnectorError> {
        let registered = metric.and_then(|metric| self.registry.register(Box::new(metric.clone())).map(|()| metric));
        registered.map_err(|e| ConnectorError {
            connector: self.connector,
            message: format!("its metrics cannot be registered: {e}"),
            retryable: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use onhand_core::db::{self, Db};

    use super::SourceHealth;

    async fn database() -> (Arc<dyn Db>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("onhand.db").display());
        (db::open(&url, 2).await.unwrap(), dir)
    }

    async fn state(db: &Arc<dyn Db>, name: &str) -> (bool, Option<String>, Option<String>) {
        let source = db.sources().await.unwrap().into_iter().find(|s| s.source == name).unwrap();
        let heard = db.source_signals().await.unwrap().into_iter().find(|s| s.source == name);
        (source.healthy, source.detail, heard.and_then(|h| h.last_error))
    }

    #[tokio::test]
    async fn a_source_fails_recovers_and_keeps_its_last_error() {
        let (db, _dir) = database().await;
        let health = SourceHealth::new(db.clone(), db.clone());
        health.ok("wms").await;
        assert_eq!(state(&db, "wms").await, (true, None, None));
        health.error("wms", "file a.csv rejected").await;
        let failing = (false, Some("file a.csv rejected".to_string()), Some("file a.csv rejected".to_string()));
        assert_eq!(state(&db, "wms").await, failing);
        // A clone shares what was reported: the same error is not written again.
        let heard_at = db.sources().await.unwrap()[0].last_heard_at;
        health.clone().error("wms", "file a.csv rejected").await;
        assert_eq!(db.sources().await.unwrap()[0].last_heard_at, heard_at, "written once");
        health.ok("wms").await;
        assert_eq!(state(&db, "wms").await, (true, None, Some("file a.csv rejected".to_string())));
    }
}
