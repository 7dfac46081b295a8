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

use std::sync::Arc;

use async_trait::async_trait;
pub use onhand_core::api::ScopedRoutes;
use onhand_core::{
    cache::StockCache,
    clock::Clock,
    config::{Config, Topics},
    db::{Catalog, ConnectorState, Db, Sources, StockReads},
    health::{Component, Failure},
    ingest::{Durability, Ingest},
    kafka::Producer,
    lease::Leaser,
    relay::{Forget, Relay},
    telemetry::Metrics,
};
use prometheus::{core::Collector, IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use tokio_util::sync::CancellationToken;

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
            sources: db,
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
