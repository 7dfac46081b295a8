//! Starting and stopping onhand: the database, Kafka, the ledger, the background tasks,
//! the connectors and the HTTP API, in that order. Every task but the ledger runs under
//! one [`Supervisor`], and one shutdown token stops them all.

use std::{net::SocketAddr, path::Path, sync::Arc, time::Duration};

use onhand_connectors::{registry, Connector, ConnectorContext, SourceHealth};
use onhand_core::{
    alerts::{delivery::AlertsComponent, follower::Follower},
    api::{self, ApiContext},
    cache::{self, StockCache},
    clock::Clock,
    config::{Config, ConfigError},
    db::{Db, DbError, Ping, Signals, Sources},
    health::{Component, Failure, Health, State},
    ingest::{Durability, Ingest},
    kafka::{self, EmbeddedKafka},
    lease::Leaser,
    ledger::{self, FaultInjection, LedgerError, LedgerHandle, LedgerParts},
    order::worker::{EventRelay, OrderWorker},
    relay::{Forget, Relay},
    reservation::service::Reservations,
    stream::Hub,
    supervisor::{Supervisor, Task, TaskFailure},
    telemetry::Metrics,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

pub use crate::boot::StartError;
use crate::boot::{self, API_LINGER};

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
    /// The live stream's hub, which tests publish to directly.
    pub stream: Hub,
    /// Every task but the ledger, and the shutdown token of all.
    supervisor: Supervisor,
    /// The ledger stays outside the supervisor: it runs on a thread of its own (librdkafka
    /// calls its rebalance callback from `poll`), is never restarted in process (a stopped
    /// ledger stops the process, see [`App::failed`]), and its error is what [`App::stop`]
    /// answers. It stops by a child of the supervisor's token.
    ledger: Option<LedgerHandle>,
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
        let db = boot::db(&config, config.database.connections_max).await?;
        let producer = boot::kafka(&config).await?;
        Self::start(config, db, producer, None, options, Mode::Serve).await
    }

    /// `onhand dev`: Kafka in process (librdkafka's mock cluster), an SQLite file in
    /// `data_dir`, and everything else as in production. What it accepts is written to
    /// SQLite before it answers, so a stop or a kill loses nothing (see `ingest`).
    ///
    /// `business` is a configuration file's business settings, when one is given: its
    /// channels, orders (regions, calendars) and alerts replace the defaults; everything
    /// about infrastructure stays dev's own.
    pub async fn dev(listen: SocketAddr, data_dir: &Path, business: Option<Config>) -> Result<App, StartError> {
        std::fs::create_dir_all(data_dir).map_err(|source| StartError::Database {
            url: data_dir.display().to_string(),
            source: DbError::Database(sqlx::Error::Io(source)),
        })?;
        let mut config = Config::default();
        if let Some(file) = business {
            config.channels = file.channels;
            config.orders = file.orders;
            config.alerts = file.alerts;
        }
        config.http.listen = listen;
        // The store feeds need nothing outside onhand, so dev serves them.
        config.connectors.insert("pos".into(), serde_json::json!({}));
        config.database.url = format!("sqlite://{}", data_dir.join("onhand.db").display());
        let topics = &config.kafka.topics;
        let embedded = EmbeddedKafka::start(
            &[&topics.movements, &topics.stock, &topics.dlq, &topics.alerts, &topics.orders],
            config.kafka.partitions,
        )?;
        config.kafka.brokers = embedded.brokers().to_string();
        // For the operator's commands (`onhand verify --dev DATA_DIR`) to find it.
        let brokers_file = data_dir.join(crate::ops::DEV_BROKERS_FILE);
        std::fs::write(&brokers_file, &config.kafka.brokers).map_err(|source| StartError::Database {
            url: brokers_file.display().to_string(),
            source: DbError::Database(sqlx::Error::Io(source)),
        })?;
        config.check()?;
        let db = boot::db(&config, config.database.connections_max).await?;
        // The embedded Kafka starts empty every run, so offsets saved by an earlier run
        // point nowhere; the movements that run applied stay recorded in SQLite, and what
        // it accepted without applying is still in the outbox, relayed again.
        // The alerts' reader of the stock topic starts over too: the levels it decided stay
        // decided (by version), so reading them again raises nothing twice.
        for (group, topic) in [
            (&config.ledger.group_id, &config.kafka.topics.movements),
            (&config.alerts.group_id, &config.kafka.topics.stock),
        ] {
            db.reset_consumer_offsets(group, topic)
                .await
                .map_err(|source| StartError::Database { url: config.database.url.clone(), source })?;
        }
        // The embedded DLQ is lost at every stop: every dead letter is also kept in a file,
        // and those of earlier runs go back on the fresh topic before anything runs.
        let journal = data_dir.join(crate::ops::DEV_DEAD_LETTERS_FILE);
        config.kafka.dead_letter_journal = Some(journal.clone());
        let producer = kafka::Producer::new(&config.kafka, API_LINGER)?;
        let restored = kafka::restore_dead_letters(&producer, &config.kafka.topics.dlq, &journal).await?;
        info!(restored, "dead letters of earlier runs restored");
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
        // A connector whose section cannot be read refuses the start before anything runs.
        let metrics = Metrics::new();
        let connectors = registry(&config, metrics.registry())?;
        let health = Health::new(metrics.clone());
        let mut supervisor = Supervisor::new(health.clone(), CancellationToken::new());
        // Until the app is fully started, a failure stops what already runs: the ledger by
        // the token, the tasks as the supervisor is dropped.
        let stop_on_failure = supervisor.shutdown().clone().drop_guard();
        let watched: Arc<dyn Ping> = db.clone();
        // A replica without the ledger answers reads from its cache, marked stale, while the
        // database is down: it stays ready (degraded), so a load balancer keeps sending it
        // reads instead of leaving the sales channels with no answer at all.
        let database = Task::new("database");
        let database = if config.ledger.enabled { database.critical() } else { database };
        supervisor.spawn(database, move |component, stop| api::watch_database(Arc::clone(&watched), component, stop));
        let ledger = start_ledger(&config, &metrics, &health, supervisor.shutdown(), options.faults).await?;
        let engine = Engine::new(&config, &db, &producer, &metrics, &options.clock, mode);
        spawn_background(&mut supervisor, &config, &db, &metrics, &engine);
        let Engine { cache, relay, ingest, reservations } = engine;
        let orders_reservations = reservations.clone();
        let order_events = EventRelay::new(db.clone(), producer.clone(), config.kafka.clone());
        let stream = spawn_stream(&mut supervisor, &config, &db, &metrics);

        let context = ConnectorContext {
            producer: producer.clone(),
            ingest: ingest.clone(),
            component: Component::detached("connectors"),
            topics: config.kafka.topics.clone(),
            catalog: db.clone(),
            stock: db.clone(),
            cursors: db.clone(),
            sources: db.clone(),
            health: SourceHealth::new(db.clone(), db.clone()),
            cache: cache.clone(),
            config: Arc::new(config.clone()),
            shutdown: supervisor.shutdown().child_token(),
            leaser: Leaser::new(db.clone(), &config.leases, metrics.clone(), Some(health.clone())),
            metrics: metrics.clone(),
        };
        let routes = connectors.iter().flat_map(|c| c.routes(&context)).collect();
        let router = api::router(
            ApiContext {
                keys: db.clone(),
                catalog: db.clone(),
                policies: db.clone(),
                freshness: db.clone(),
                signals: db.clone(),
                history: db.clone(),
                alerts: db.clone(),
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
                stream: stream.clone(),
                orders: db.clone(),
                db: db.clone(),
                orders_config: config.orders.clone(),
                order_events: order_events.clone(),
                clock: options.clock.clone(),
            },
            routes,
        );
        for connector in connectors {
            spawn_connector(&mut supervisor, connector, context.clone());
        }
        if config.alerts.enabled {
            spawn_alerts(&mut supervisor, &config, &db, &producer, &metrics, context.leaser.clone())?;
        }
        if config.orders.enabled {
            let parts = (&orders_reservations, &order_events);
            spawn_order_workers(&mut supervisor, &config, &db, &metrics, &options.clock, parts)?;
        }

        let addr = config.http.listen;
        let listener = TcpListener::bind(addr).await.map_err(|source| StartError::Bind { addr, source })?;
        let local_addr = listener.local_addr().map_err(|source| StartError::Bind { addr, source })?;
        let router = api::finish(router, metrics.clone());
        // Run once: its listener cannot be bound again, so any failure of the server is final.
        supervisor.spawn_once(Task::new("http").critical(), move |_, stop| async move {
            let served = api::serve(listener, router, stop.clone()).await;
            server_outcome(served, &stop)
        });
        stop_on_failure.disarm();
        info!(%local_addr, "http api listening");
        Ok(App { local_addr, config, metrics, db, health, stream, supervisor, ledger, _embedded: embedded })
    }

    pub fn ledger(&self) -> Option<&LedgerHandle> {
        self.ledger.as_ref()
    }

    /// Fires when the process cannot go on and should stop with this reason, for its
    /// orchestrator to start it again: a supervised task failed for good (the server
    /// among them), or the ledger stopped.
    pub async fn failed(&self) -> TaskFailure {
        tokio::select! {
            failure = self.supervisor.failed() => failure,
            failure = self.ledger_stopped() => failure,
        }
    }

    /// The ledger's thread is outside the supervisor: its end is polled.
    async fn ledger_stopped(&self) -> TaskFailure {
        loop {
            if self.ledger.as_ref().is_some_and(LedgerHandle::is_finished) {
                let message = match self.health.state("ledger") {
                    Some(State::Failed(why)) => why,
                    _ => "it stopped".to_string(),
                };
                return TaskFailure { task: "ledger".into(), message };
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Stops every component and waits for them; the ledger's result tells whether it
    /// had stopped on an error before.
    pub async fn stop(self) -> Result<(), LedgerError> {
        // A task that failed for good was answered by `failed`, and logged; what the stop
        // answers is the ledger's result, as it always has.
        let _ = self.supervisor.stop().await;
        match self.ledger {
            Some(ledger) => ledger.join().await,
            None => Ok(()),
        }
    }
}

/// Starts the ledger consumer, when this process runs one, stopped by a child of `shutdown`.
async fn start_ledger(
    config: &Config,
    metrics: &Metrics,
    health: &Health,
    shutdown: &CancellationToken,
    faults: FaultInjection,
) -> Result<Option<LedgerHandle>, StartError> {
    if !config.ledger.enabled {
        return Ok(None);
    }
    // A pool of its own: no flood of API requests can take the ledger's connections.
    let ledger_db = boot::db(config, config.database.ledger_connections_max).await?;
    let parts = LedgerParts {
        db: ledger_db,
        metrics: metrics.clone(),
        component: health.component("ledger", true),
        shutdown: shutdown.child_token(),
        faults,
    };
    Ok(Some(ledger::spawn(&config.kafka, &config.ledger, parts).await?))
}

/// What the API and the connectors share: the stock cache, the relay to Kafka, the edge's
/// ingest and the reservations.
struct Engine {
    cache: StockCache,
    relay: Relay,
    ingest: Ingest,
    reservations: Reservations,
}

impl Engine {
    fn new(
        config: &Config,
        db: &Arc<dyn Db>,
        producer: &kafka::Producer,
        metrics: &Metrics,
        clock: &Clock,
        mode: Mode,
    ) -> Engine {
        let cache = StockCache::new(db.clone(), &config.query, metrics.clone());
        let relay = Relay {
            db: db.clone(),
            producer: producer.clone(),
            topics: config.kafka.topics.clone(),
            produce_timeout: Duration::from_millis(config.kafka.produce_timeout_ms),
            cache: cache.clone(),
            clock: clock.clone(),
            forget: if mode == Mode::Dev { Forget::WhenRecorded } else { Forget::WhenAcknowledged },
            acknowledged: Arc::default(),
        };
        let ingest = Ingest {
            durability: if mode == Mode::Dev { Durability::Outbox } else { Durability::Kafka },
            producer: producer.clone(),
            movements_topic: config.kafka.topics.movements.clone(),
            produce_timeout: Duration::from_millis(config.kafka.produce_timeout_ms),
            db: db.clone(),
            relay: relay.clone(),
        };
        let reservations = Reservations::new(
            db.clone(),
            relay.clone(),
            clock.clone(),
            config.reservations.clone(),
            config.channels.clone(),
            metrics.clone(),
        );
        Engine { cache, relay, ingest, reservations }
    }
}

/// The background tasks of the engine, each ending only at shutdown (`cache_preload`
/// when it is done), started again after a panic.
fn spawn_background(
    supervisor: &mut Supervisor,
    config: &Config,
    db: &Arc<dyn Db>,
    metrics: &Metrics,
    engine: &Engine,
) {
    let (relaying, expiring) = (engine.relay.clone(), engine.reservations.clone());
    supervisor.spawn(Task::new("relay"), move |_, stop| relaying.clone().run(stop));
    supervisor.spawn(Task::new("reservation_expiry"), move |_, stop| expiring.clone().run_expiry(stop));
    let (watched, heard): (Arc<dyn Sources>, Arc<dyn Signals>) = (db.clone(), db.clone());
    let (watch_metrics, sources) = (metrics.clone(), config.sources.clone());
    supervisor.spawn(Task::new("source_watch"), move |_, stop| {
        let (db, signals) = (Arc::clone(&watched), Arc::clone(&heard));
        onhand_core::freshness::watch::run(db, signals, watch_metrics.clone(), sources.clone(), stop)
    });
    let lag = onhand_core::lag::LagWatch {
        kafka: config.kafka.clone(),
        group_id: config.ledger.group_id.clone(),
        ledger: db.clone(),
        signals: db.clone(),
        metrics: metrics.clone(),
    };
    supervisor.spawn(Task::new("ledger_lag"), move |_, stop| lag.clone().run(stop));
    let (followed, kafka_config) = (engine.cache.clone(), config.kafka.clone());
    supervisor.spawn(Task::new("cache_follower"), move |_, stop| {
        cache::follow_stock_topic(kafka_config.clone(), followed.clone(), stop)
    });
    let preloaded = engine.cache.clone();
    supervisor.spawn(Task::new("cache_preload"), move |_, stop| {
        let cache = preloaded.clone();
        async move { cache.preload(stop).await }
    });
}

/// The alerts component, on one replica at a time (the lease `alerts`).
/// The order workers (`core/src/order/worker.rs`): the process's member of the orders
/// topic's consumer group, restarted with backoff when Kafka refuses it.
fn spawn_order_workers(
    supervisor: &mut Supervisor,
    config: &Config,
    db: &Arc<dyn Db>,
    metrics: &Metrics,
    clock: &Clock,
    (reservations, events): (&Reservations, &EventRelay),
) -> Result<(), StartError> {
    let calendars = onhand_core::order::schedule::calendars(&config.orders).map_err(ConfigError::Invalid)?;
    let worker = OrderWorker {
        db: db.clone(),
        reservations: reservations.clone(),
        producer: events.producer(),
        kafka: config.kafka.clone(),
        config: config.orders.clone(),
        channels: config.channels.clone(),
        calendars,
        metrics: metrics.clone(),
        clock: clock.clone(),
        events: events.clone(),
        sweeps: Default::default(),
    };
    supervisor.spawn(Task::new("order_workers"), move |component, stop| worker.clone().run(component, stop));
    Ok(())
}

fn spawn_alerts(
    supervisor: &mut Supervisor,
    config: &Config,
    db: &Arc<dyn Db>,
    producer: &kafka::Producer,
    metrics: &Metrics,
    leaser: Leaser,
) -> Result<(), StartError> {
    let http = reqwest::Client::builder().timeout(Duration::from_millis(config.alerts.webhook_timeout_ms)).build()?;
    let component = AlertsComponent {
        follower: Follower {
            alerts: db.clone(),
            history: db.clone(),
            stock: db.clone(),
            offsets: db.clone(),
            kafka: config.kafka.clone(),
            config: config.alerts.clone(),
            channels: config.channels.clone(),
            metrics: metrics.clone(),
        },
        alerts: db.clone(),
        sources: db.clone(),
        signals: db.clone(),
        producer: producer.clone(),
        produce_timeout: Duration::from_millis(config.kafka.produce_timeout_ms),
        config: config.alerts.clone(),
        http,
    };
    supervisor.spawn(Task::new("alerts"), move |_, stop| {
        let (component, leaser) = (component.clone(), leaser.clone());
        async move {
            let held = leaser.run("alerts", &stop, |lease| {
                let component = component.clone();
                async move {
                    component.run(lease).await;
                    Ok::<(), std::convert::Infallible>(())
                }
            });
            let Ok(()) = held.await;
        }
    });
    Ok(())
}

/// The live stream's hub and the tasks that feed it: the stock, alerts and orders topics
/// from their end, and the sources' health polled from the database. Each ends at shutdown, and
/// so does every client's stream.
fn spawn_stream(supervisor: &mut Supervisor, config: &Config, db: &Arc<dyn Db>, metrics: &Metrics) -> Hub {
    use onhand_core::stream;
    let hub = Hub::new(&config.stream, metrics.clone(), supervisor.shutdown().child_token());
    let (levels, alerts, sources) = (hub.clone(), hub.clone(), hub.clone());
    let (stock_kafka, alerts_kafka) = (config.kafka.clone(), config.kafka.clone());
    supervisor.spawn(Task::new("stream_levels"), move |_, stop| {
        stream::follow_levels(levels.clone(), stock_kafka.clone(), stop)
    });
    supervisor.spawn(Task::new("stream_alerts"), move |_, stop| {
        stream::follow_alerts(alerts.clone(), alerts_kafka.clone(), stop)
    });
    // Every instance, whether it runs order workers or not: an API replica streams orders too.
    let (orders, orders_kafka) = (hub.clone(), config.kafka.clone());
    supervisor.spawn(Task::new("stream_orders"), move |_, stop| {
        stream::follow_orders(orders.clone(), orders_kafka.clone(), stop)
    });
    let (watched, heard): (Arc<dyn Sources>, Arc<dyn Signals>) = (db.clone(), db.clone());
    let sources_config = config.sources.clone();
    supervisor.spawn(Task::new("stream_sources"), move |_, stop| {
        let (db, signals) = (Arc::clone(&watched), Arc::clone(&heard));
        stream::watch_sources(sources.clone(), db, signals, sources_config.clone(), stop)
    });
    hub
}

/// Runs a connector under supervision, as the component `connector:NAME`: started again
/// after a retryable failure or a panic, failed for good after one that needs a person.
pub(crate) fn spawn_connector(supervisor: &mut Supervisor, connector: Arc<dyn Connector>, context: ConnectorContext) {
    supervisor.spawn(Task::new(format!("connector:{}", connector.name())), move |component, _| {
        let (connector, context) = (Arc::clone(&connector), ConnectorContext { component, ..context.clone() });
        async move { connector.run(context).await.map_err(Failure::from) }
    });
}

/// The HTTP server's end: at shutdown it is done; an error, or an end before shutdown,
/// is a failure for good (nothing answers any more).
pub(crate) fn server_outcome(served: std::io::Result<()>, stop: &CancellationToken) -> Result<(), Failure> {
    let message = match served {
        Err(e) => format!("the http server stopped: {e}"),
        Ok(()) if !stop.is_cancelled() => "the http server stopped before shutdown".to_string(),
        Ok(()) => return Ok(()),
    };
    Err(Failure { message, retryable: false })
}
