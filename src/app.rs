//! Starting and stopping onhand: the store, Kafka topics, the ledger, the connectors and
//! the HTTP API, in that order, all stopped by one shutdown token.

use std::{net::SocketAddr, path::Path, sync::Arc, time::Duration};

use onhand_connectors::{registry, ConnectorContext};
use onhand_core::{
    api::{self, ApiContext},
    cache::{self, StockCache},
    clock::Clock,
    config::Config,
    kafka::{self, EmbeddedKafka, KafkaSetupError},
    ledger::{self, FaultInjection, LedgerError, LedgerHandle},
    relay::Relay,
    reservation::Reservations,
    store::{self, Store, StoreError},
    telemetry::Metrics,
};
use rdkafka::{
    error::KafkaError,
    producer::{FutureProducer, Producer},
    types::RDKafkaErrorCode,
};
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

/// How long the API's producer gathers movements into one request: a client waits for
/// Kafka's acknowledgement, so this stays short.
pub(crate) const API_LINGER: Duration = Duration::from_millis(5);

/// Why onhand refused to start; each message names the dependency and what to check.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] onhand_core::config::ConfigError),
    #[error("database {url} is unreachable or refused the migrations: {source}")]
    Database { url: String, source: StoreError },
    #[error("kafka brokers {brokers} are unreachable: {source}")]
    KafkaUnreachable { brokers: String, source: KafkaError },
    #[error(transparent)]
    KafkaSetup(#[from] KafkaSetupError),
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Connector(#[from] onhand_connectors::ConnectorError),
}

/// Test hooks; production starts with the default.
#[derive(Debug, Clone, Default)]
pub struct StartOptions {
    pub faults: FaultInjection,
    /// The clock reservations expire by.
    pub clock: Clock,
}

/// A running onhand.
#[derive(Debug)]
pub struct App {
    pub local_addr: SocketAddr,
    pub config: Config,
    pub metrics: Metrics,
    pub store: Arc<dyn Store>,
    shutdown: CancellationToken,
    ledger: Option<LedgerHandle>,
    tasks: Vec<JoinHandle<()>>,
    server: JoinHandle<std::io::Result<()>>,
    _embedded: Option<EmbeddedKafka>,
}

impl App {
    /// `onhand serve`: connects to the configured Kafka cluster and PostgreSQL, creates
    /// missing topics and runs the migrations; refuses to start when either is unreachable.
    pub async fn serve(config: Config, options: StartOptions) -> Result<App, StartError> {
        config.check()?;
        let store = open_store(&config).await?;
        let producer = kafka::producer(&config.kafka, API_LINGER)?;
        check_brokers(&config, &producer).await?;
        tokio::time::timeout(Duration::from_secs(30), kafka::ensure_topics(&config.kafka)).await.map_err(|_| {
            StartError::KafkaUnreachable {
                brokers: config.kafka.brokers.clone(),
                source: KafkaError::AdminOpCreation("creating topics timed out".into()),
            }
        })??;
        Self::start(config, store, producer, None, options).await
    }

    /// `onhand dev`: Kafka in process (librdkafka's mock cluster), an SQLite file in
    /// `data_dir`, and everything else as in production.
    pub async fn dev(listen: SocketAddr, data_dir: &Path) -> Result<App, StartError> {
        std::fs::create_dir_all(data_dir).map_err(|source| StartError::Database {
            url: data_dir.display().to_string(),
            source: StoreError::Database(sqlx::Error::Io(source)),
        })?;
        let mut config = Config::default();
        config.http.listen = listen;
        // The store feeds need nothing outside onhand, so dev serves them.
        config.connectors.insert("pos".into(), serde_json::json!({}));
        config.database.url = format!("sqlite://{}", data_dir.join("onhand.db").display());
        let topics = &config.kafka.topics;
        let embedded = EmbeddedKafka::start(&[&topics.movements, &topics.stock, &topics.dlq], config.kafka.partitions)?;
        config.kafka.brokers = embedded.brokers().to_string();
        let store = open_store(&config).await?;
        // The embedded Kafka starts empty every run, so offsets saved by an earlier run
        // point nowhere; the movements that run applied stay recorded in SQLite.
        store
            .reset_consumer_offsets(&config.ledger.group_id, &config.kafka.topics.movements)
            .await
            .map_err(|source| StartError::Database { url: config.database.url.clone(), source })?;
        let producer = kafka::producer(&config.kafka, API_LINGER)?;
        Self::start(config, store, producer, Some(embedded), StartOptions::default()).await
    }

    async fn start(
        config: Config,
        store: Arc<dyn Store>,
        producer: FutureProducer,
        embedded: Option<EmbeddedKafka>,
        options: StartOptions,
    ) -> Result<App, StartError> {
        // A connector whose section cannot be read refuses the start before anything runs.
        let connectors = registry(&config)?;
        let shutdown = CancellationToken::new();
        // Until the app is fully started, a failure stops what already runs.
        let stop_on_failure = shutdown.clone().drop_guard();
        let metrics = Metrics::new();
        let ledger = if config.ledger.enabled {
            Some(ledger::spawn(
                &config.kafka,
                &config.ledger,
                Arc::clone(&store),
                metrics.clone(),
                shutdown.child_token(),
                options.faults,
            )?)
        } else {
            None
        };

        let cache = StockCache::new(Arc::clone(&store), &config.query, metrics.clone());
        let relay = Relay {
            store: Arc::clone(&store),
            producer: producer.clone(),
            topics: config.kafka.topics.clone(),
            produce_timeout: Duration::from_millis(config.kafka.produce_timeout_ms),
            cache: cache.clone(),
            clock: options.clock.clone(),
        };
        let reservations = Reservations::new(
            relay.clone(),
            options.clock.clone(),
            config.reservations.clone(),
            config.channels.clone(),
            metrics.clone(),
        );
        let mut tasks = vec![
            tokio::spawn(relay.clone().run(shutdown.child_token())),
            tokio::spawn(reservations.clone().run_expiry(shutdown.child_token())),
            tokio::spawn(onhand_core::source::watch(
                Arc::clone(&store),
                metrics.clone(),
                config.sources.clone(),
                shutdown.child_token(),
            )),
        ];
        let context = ConnectorContext {
            producer: producer.clone(),
            topics: config.kafka.topics.clone(),
            store: Arc::clone(&store),
            cache: cache.clone(),
            config: Arc::new(config.clone()),
            shutdown: shutdown.child_token(),
            metrics: metrics.clone(),
        };
        let routes = connectors.iter().flat_map(|c| c.routes(&context)).collect();
        let router = api::router(
            ApiContext {
                store: Arc::clone(&store),
                producer,
                topics: config.kafka.topics.clone(),
                metrics: metrics.clone(),
                http: config.http.clone(),
                produce_timeout_ms: config.kafka.produce_timeout_ms,
                ledger: ledger.as_ref().map(LedgerHandle::running),
                cache: cache.clone(),
                query: config.query.clone(),
                channels: config.channels.clone(),
                relay,
                reservations,
                sources: config.sources.clone(),
            },
            routes,
        );
        let preload = (cache.clone(), shutdown.child_token());
        tasks.push(tokio::spawn(async move { preload.0.preload(preload.1).await }));
        tasks.push(tokio::spawn(cache::follow_stock_topic(config.kafka.clone(), cache, shutdown.child_token())));
        for connector in connectors {
            let context = context.clone();
            tasks.push(tokio::spawn(async move {
                let name = connector.name();
                if let Err(e) = connector.run(context).await {
                    error!(connector = name, error = %e, "connector stopped");
                }
            }));
        }

        let addr = config.http.listen;
        let listener = TcpListener::bind(addr).await.map_err(|source| StartError::Bind { addr, source })?;
        let local_addr = listener.local_addr().map_err(|source| StartError::Bind { addr, source })?;
        let server = tokio::spawn(api::serve(listener, api::finish(router), shutdown.child_token()));
        stop_on_failure.disarm();
        info!(%local_addr, "http api listening");
        Ok(App { local_addr, config, metrics, store, shutdown, ledger, tasks, server, _embedded: embedded })
    }

    pub fn ledger(&self) -> Option<&LedgerHandle> {
        self.ledger.as_ref()
    }

    /// Fires when a component stopped on its own (the ledger died, the server failed).
    pub async fn failed(&self) {
        loop {
            let ledger_done = self.ledger.as_ref().is_some_and(LedgerHandle::is_finished);
            if ledger_done || self.server.is_finished() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Stops every component and waits for them; the ledger's result tells whether it
    /// had stopped on an error before.
    pub async fn stop(self) -> Result<(), LedgerError> {
        self.shutdown.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
        let _ = self.server.await;
        match self.ledger {
            Some(ledger) => ledger.join().await,
            None => Ok(()),
        }
    }
}

pub(crate) async fn open_store(config: &Config) -> Result<Arc<dyn Store>, StartError> {
    let url = &config.database.url;
    store::open(url, config.database.connections_max)
        .await
        .map_err(|source| StartError::Database { url: redact(url), source })
}

/// Asks the brokers for metadata, so that a wrong address fails at start, not later.
/// Tries a few times: brokers that restart, or a loaded machine, may miss one probe.
pub(crate) async fn check_brokers(config: &Config, producer: &FutureProducer) -> Result<(), StartError> {
    const ATTEMPTS: u32 = 3;
    let mut attempt = 1;
    loop {
        let probe = producer.clone();
        let result = tokio::task::spawn_blocking(move || {
            probe.client().fetch_metadata(None, Duration::from_secs(10)).map(|_| ())
        })
        .await
        .unwrap_or(Err(KafkaError::MetadataFetch(RDKafkaErrorCode::Fail)));
        match result {
            Ok(()) => return Ok(()),
            Err(source) if attempt == ATTEMPTS => {
                return Err(StartError::KafkaUnreachable { brokers: config.kafka.brokers.clone(), source })
            }
            Err(e) => warn!(error = %e, attempt, "kafka brokers did not answer; trying again"),
        }
        attempt += 1;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let credentials = &url[scheme_end + 3..at];
            let user = credentials.split(':').next().unwrap_or_default();
            format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_are_not_shown() {
        assert_eq!(super::redact("postgres://u:secret@h:5432/db"), "postgres://u:***@h:5432/db");
        assert_eq!(super::redact("sqlite:///tmp/x.db"), "sqlite:///tmp/x.db");
    }
}
