//! Starting and stopping onhand: the store, Kafka topics, the ledger, the connectors and
//! the HTTP API, in that order, all stopped by one shutdown token.

use std::{net::SocketAddr, path::Path, sync::Arc, time::Duration};

use onhand_connectors::{registry, Connector, ConnectorContext};
use onhand_core::{
    api::{self, ApiContext},
    cache::{self, StockCache},
    clock::Clock,
    config::Config,
    db::{self, Db, DbError},
    health::{supervise, Component, Failure, Health},
    ingest::{Durability, Ingest},
    kafka::{self, EmbeddedKafka, KafkaSetupError},
    ledger::{self, FaultInjection, LedgerError, LedgerHandle, LedgerParts},
    relay::{Forget, Relay},
    reservation::service::Reservations,
    telemetry::Metrics,
};
use rdkafka::{error::KafkaError, producer::Producer as _, types::RDKafkaErrorCode};
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// How long the API's producer gathers movements into one request: a client waits for
/// Kafka's acknowledgement, so this stays short.
pub(crate) const API_LINGER: Duration = Duration::from_millis(5);

/// Why onhand refused to start; each message names the dependency and what to check.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] onhand_core::config::ConfigError),
    #[error("database {url} is unreachable or refused the migrations: {source}")]
    Database { url: String, source: DbError },
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
    pub db: Arc<dyn Db>,
    pub health: Health,
    shutdown: CancellationToken,
    ledger: Option<LedgerHandle>,
    tasks: Vec<JoinHandle<()>>,
    server: JoinHandle<std::io::Result<()>>,
    _embedded: Option<EmbeddedKafka>,
}

/// How the process keeps what it accepted: a Kafka cluster, or `onhand dev`'s embedded
/// broker with the outbox in front of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Serve,
    Dev,
}

impl App {
    /// `onhand serve`: connects to the configured Kafka cluster and PostgreSQL, creates
    /// missing topics and runs the migrations; refuses to start when either is unreachable.
    pub async fn serve(config: Config, options: StartOptions) -> Result<App, StartError> {
        config.check()?;
        let db = open_store(&config, config.database.connections_max).await?;
        let producer = kafka::Producer::new(&config.kafka, API_LINGER)?;
        check_brokers(&config, &producer).await?;
        tokio::time::timeout(Duration::from_secs(30), kafka::ensure_topics(&config.kafka)).await.map_err(|_| {
            StartError::KafkaUnreachable {
                brokers: config.kafka.brokers.clone(),
                source: KafkaError::AdminOpCreation("creating topics timed out".into()),
            }
        })??;
        Self::start(config, db, producer, None, options, Mode::Serve).await
    }

    /// `onhand dev`: Kafka in process (librdkafka's mock cluster), an SQLite file in
    /// `data_dir`, and everything else as in production. What it accepts is written to
    /// SQLite before it answers, so a stop or a kill loses nothing (see `ingest`).
    pub async fn dev(listen: SocketAddr, data_dir: &Path) -> Result<App, StartError> {
        std::fs::create_dir_all(data_dir).map_err(|source| StartError::Database {
            url: data_dir.display().to_string(),
            source: DbError::Database(sqlx::Error::Io(source)),
        })?;
        let mut config = Config::default();
        config.http.listen = listen;
        // The store feeds need nothing outside onhand, so dev serves them.
        config.connectors.insert("pos".into(), serde_json::json!({}));
        config.database.url = format!("sqlite://{}", data_dir.join("onhand.db").display());
        let topics = &config.kafka.topics;
        let embedded = EmbeddedKafka::start(&[&topics.movements, &topics.stock, &topics.dlq], config.kafka.partitions)?;
        config.kafka.brokers = embedded.brokers().to_string();
        let db = open_store(&config, config.database.connections_max).await?;
        // The embedded Kafka starts empty every run, so offsets saved by an earlier run
        // point nowhere; the movements that run applied stay recorded in SQLite, and what
        // it accepted without applying is still in the outbox, relayed again.
        db.reset_consumer_offsets(&config.ledger.group_id, &config.kafka.topics.movements)
            .await
            .map_err(|source| StartError::Database { url: config.database.url.clone(), source })?;
        let producer = kafka::Producer::new(&config.kafka, API_LINGER)?;
        Self::start(config, db, producer, Some(embedded), StartOptions::default(), Mode::Dev).await
    }

    async fn start(
        config: Config,
        db: Arc<dyn Db>,
        producer: kafka::Producer,
        embedded: Option<EmbeddedKafka>,
        options: StartOptions,
        mode: Mode,
    ) -> Result<App, StartError> {
        let metrics = Metrics::new();
        // A connector whose section cannot be read refuses the start before anything runs.
        let connectors = registry(&config, metrics.registry())?;
        let shutdown = CancellationToken::new();
        // Until the app is fully started, a failure stops what already runs.
        let stop_on_failure = shutdown.clone().drop_guard();
        let health = Health::new(metrics.clone());
        let mut tasks = vec![tokio::spawn(api::watch_database(
            Arc::clone(&db),
            health.component("database", true),
            shutdown.child_token(),
        ))];
        let ledger = if config.ledger.enabled {
            // A pool of its own: no flood of API requests can take the ledger's connections.
            let ledger_store = open_store(&config, config.database.ledger_connections_max).await?;
            let parts = LedgerParts {
                db: ledger_store,
                metrics: metrics.clone(),
                component: health.component("ledger", true),
                shutdown: shutdown.child_token(),
                faults: options.faults,
            };
            Some(ledger::spawn(&config.kafka, &config.ledger, parts).await?)
        } else {
            None
        };

        let cache = StockCache::new(Arc::clone(&db), &config.query, metrics.clone());
        let relay = Relay {
            db: Arc::clone(&db),
            producer: producer.clone(),
            topics: config.kafka.topics.clone(),
            produce_timeout: Duration::from_millis(config.kafka.produce_timeout_ms),
            cache: cache.clone(),
            clock: options.clock.clone(),
            forget: if mode == Mode::Dev { Forget::WhenRecorded } else { Forget::WhenAcknowledged },
            acknowledged: Arc::default(),
        };
        let ingest = Ingest {
            durability: if mode == Mode::Dev { Durability::Outbox } else { Durability::Kafka },
            producer: producer.clone(),
            movements_topic: config.kafka.topics.movements.clone(),
            produce_timeout: Duration::from_millis(config.kafka.produce_timeout_ms),
            db: Arc::clone(&db),
            relay: relay.clone(),
        };
        let reservations = Reservations::new(
            relay.clone(),
            options.clock.clone(),
            config.reservations.clone(),
            config.channels.clone(),
            metrics.clone(),
        );
        let (relaying, expiring) = (relay.clone(), reservations.clone());
        tasks.push(supervised(&health, "relay", &shutdown, move |stop| relaying.clone().run(stop)));
        tasks.push(supervised(&health, "reservation_expiry", &shutdown, move |stop| expiring.clone().run_expiry(stop)));
        let (watched, watch_metrics, sources) = (Arc::clone(&db), metrics.clone(), config.sources.clone());
        tasks.push(supervised(&health, "source_watch", &shutdown, move |stop| {
            onhand_core::freshness::watch::run(Arc::clone(&watched), watch_metrics.clone(), sources.clone(), stop)
        }));
        let (followed, kafka_config) = (cache.clone(), config.kafka.clone());
        tasks.push(supervised(&health, "cache_follower", &shutdown, move |stop| {
            cache::follow_stock_topic(kafka_config.clone(), followed.clone(), stop)
        }));
        let preloaded = cache.clone();
        tasks.push(supervised(&health, "cache_preload", &shutdown, move |stop| {
            let cache = preloaded.clone();
            async move { cache.preload(stop).await }
        }));

        let context = ConnectorContext {
            producer: producer.clone(),
            ingest: ingest.clone(),
            component: Component::detached("connectors"),
            topics: config.kafka.topics.clone(),
            db: Arc::clone(&db),
            cache: cache.clone(),
            config: Arc::new(config.clone()),
            shutdown: shutdown.child_token(),
            metrics: metrics.clone(),
        };
        let routes = connectors.iter().flat_map(|c| c.routes(&context)).collect();
        let router = api::router(
            ApiContext {
                db: Arc::clone(&db),
                ingest,
                metrics: metrics.clone(),
                http: config.http.clone(),
                health: health.clone(),
                cache: cache.clone(),
                query: config.query.clone(),
                channels: config.channels.clone(),
                relay,
                reservations,
                sources: config.sources.clone(),
            },
            routes,
        );
        for connector in connectors {
            tasks.push(tokio::spawn(run_connector(connector, context.clone(), &health)));
        }

        let addr = config.http.listen;
        let listener = TcpListener::bind(addr).await.map_err(|source| StartError::Bind { addr, source })?;
        let local_addr = listener.local_addr().map_err(|source| StartError::Bind { addr, source })?;
        let server = tokio::spawn(api::serve(listener, api::finish(router), shutdown.child_token()));
        stop_on_failure.disarm();
        info!(%local_addr, "http api listening");
        Ok(App { local_addr, config, metrics, db, health, shutdown, ledger, tasks, server, _embedded: embedded })
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

/// Spawns a background task supervised as the component `name`: `task` makes each run,
/// which ends only at shutdown (or by a panic, after which it is started again).
fn supervised<F, Fut>(health: &Health, name: &str, shutdown: &CancellationToken, mut task: F) -> JoinHandle<()>
where
    F: FnMut(CancellationToken) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (component, shutdown) = (health.component(name, false), shutdown.child_token());
    tokio::spawn(async move {
        let stop = shutdown.clone();
        supervise(component, shutdown, move |_| {
            let run = task(stop.clone());
            async move {
                run.await;
                Ok(())
            }
        })
        .await;
    })
}

/// Runs a connector under supervision, as the component `connector:NAME`: started again
/// after a retryable failure or a panic, reported failed after one that needs a person.
pub(crate) fn run_connector(
    connector: Arc<dyn Connector>,
    context: ConnectorContext,
    health: &Health,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let component = health.component(&format!("connector:{}", connector.name()), false);
    let shutdown = context.shutdown.clone();
    async move {
        supervise(component, shutdown, move |component| {
            let (connector, context) = (Arc::clone(&connector), ConnectorContext { component, ..context.clone() });
            async move { connector.run(context).await.map_err(Failure::from) }
        })
        .await;
    }
}

pub(crate) async fn open_store(config: &Config, connections_max: u32) -> Result<Arc<dyn Db>, StartError> {
    let url = &config.database.url;
    db::open(url, connections_max).await.map_err(|source| StartError::Database { url: redact(url), source })
}

/// Asks the brokers for metadata, so that a wrong address fails at start, not later.
/// Tries a few times: brokers that restart, or a loaded machine, may miss one probe.
pub(crate) async fn check_brokers(config: &Config, producer: &kafka::Producer) -> Result<(), StartError> {
    const ATTEMPTS: u32 = 3;
    let mut attempt = 1;
    loop {
        let probe = producer.get();
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
    let (base, query) = url.split_once('?').map_or((url, None), |(b, q)| (b, Some(q)));
    let mut out = match (base.find("://"), base.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let credentials = &base[scheme_end + 3..at];
            let user = credentials.split(':').next().unwrap_or_default();
            format!("{}{user}:***{}", &base[..scheme_end + 3], &base[at..])
        }
        _ => base.to_string(),
    };
    if let Some(query) = query {
        // libpq's parameters may carry secrets too: password=, sslpassword=.
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((key, _)) if key.to_ascii_lowercase().contains("password") => format!("{key}=***"),
                _ => pair.to_string(),
            })
            .collect();
        out.push('?');
        out.push_str(&pairs.join("&"));
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_are_not_shown() {
        assert_eq!(super::redact("postgres://u:secret@h:5432/db"), "postgres://u:***@h:5432/db");
        assert_eq!(super::redact("sqlite:///tmp/x.db"), "sqlite:///tmp/x.db");
        // L8: libpq takes the password as a parameter too.
        assert_eq!(
            super::redact("postgres://h/db?user=u&password=secret&sslmode=require&sslpassword=s2"),
            "postgres://h/db?user=u&password=***&sslmode=require&sslpassword=***"
        );
    }
}
