//! The configuration of onhand: typed, documented, every field defaulted. `onhand serve`
//! reads a TOML file and then environment overrides (`ONHAND_SECTION__FIELD`, and
//! `DATABASE_URL`); `onhand dev` builds one in code. `deploy/onhand.toml` shows every field.

use std::{collections::BTreeMap, net::SocketAddr, path::Path};

use figment::{
    providers::{Env, Format, Serialized, Toml},
    Figment,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub database: DatabaseConfig,
    pub kafka: KafkaConfig,
    pub ledger: LedgerConfig,
    pub http: HttpConfig,
    pub query: QueryConfig,
    pub reservations: ReservationConfig,
    pub sources: SourcesConfig,
    pub leases: LeaseConfig,
    pub alerts: AlertsConfig,
    pub stream: StreamConfig,
    pub orders: OrdersConfig,
    /// Which locations serve each sales channel, by channel name.
    pub channels: BTreeMap<String, ChannelConfig>,
    /// Each connector's section, `[connectors.NAME]`, as written: the connector reads it
    /// into its own typed configuration (`connectors/src/NAME/config.rs`), and a section
    /// it cannot read refuses the start. A connector without a section does not run.
    pub connectors: BTreeMap<String, serde_json::Value>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            database: DatabaseConfig::default(),
            kafka: KafkaConfig::default(),
            ledger: LedgerConfig::default(),
            http: HttpConfig::default(),
            query: QueryConfig::default(),
            reservations: ReservationConfig::default(),
            sources: SourcesConfig::default(),
            leases: LeaseConfig::default(),
            alerts: AlertsConfig::default(),
            stream: StreamConfig::default(),
            orders: OrdersConfig::default(),
            connectors: BTreeMap::new(),
            channels: BTreeMap::from([(
                "all".to_string(),
                ChannelConfig { all_locations: true, ..ChannelConfig::default() },
            )]),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `postgres://user:password@host/db` in production, `sqlite://path` for development.
    pub url: String,
    /// Connections of the API, the connectors and the background tasks.
    pub connections_max: u32,
    /// Connections of the ledger, in a pool of its own: no flood of requests can take
    /// the connections the ledger applies movements with.
    pub ledger_connections_max: u32,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self { url: String::new(), connections_max: 16, ledger_connections_max: 4 }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// The bootstrap servers, comma-separated `host:port`.
    pub brokers: String,
    pub topics: Topics,
    /// Partitions of the topics onhand creates when they are missing.
    pub partitions: i32,
    /// Replication factor of the topics onhand creates; 3 on a production cluster.
    pub replication_factor: i32,
    /// `min.insync.replicas` of the topics onhand creates: with `acks=all`, how many
    /// replicas hold a record before it counts as written. 2 with a replication factor of
    /// 3: an accepted movement survives the loss of a broker, and writes go on through it.
    pub min_insync_replicas: i32,
    /// How long the topics onhand creates keep their records (`retention.ms`).
    pub retention_ms: Retention,
    /// How long a produce may wait for the brokers' acknowledgement.
    pub produce_timeout_ms: u64,
    /// Extra librdkafka properties for every client (TLS, SASL, ...).
    pub client: BTreeMap<String, String>,
    /// `onhand dev` only, never read from a file: where every dead letter Kafka
    /// acknowledged is also kept (`kafka::journal`), since its embedded Kafka is lost at
    /// every stop.
    #[serde(skip)]
    pub dead_letter_journal: Option<std::path::PathBuf>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: String::new(),
            topics: Topics::default(),
            partitions: 12,
            replication_factor: 1,
            min_insync_replicas: 1,
            retention_ms: Retention::default(),
            produce_timeout_ms: 10_000,
            client: BTreeMap::new(),
            dead_letter_journal: None,
        }
    }
}

/// How long each topic keeps its records, in milliseconds (`retention.ms`; -1 keeps them
/// forever). The stock topic is compacted instead: its newest level of each key is kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Retention {
    /// At least as long as the longest outage to replay after (`onhand replay`) and the
    /// longest the ledger may be down: a movement that expires unread is lost to it.
    pub movements: i64,
    /// As long as an operator may take to redrive a dead letter (`onhand dlq`).
    pub dlq: i64,
    /// Alerts' changes: their readers follow the topic's end; the database keeps alerts.
    pub alerts: i64,
    /// Orders: the database keeps each order; the topic is their queue.
    pub orders: i64,
}

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;

impl Default for Retention {
    fn default() -> Self {
        Self { movements: 14 * DAY_MS, dlq: 30 * DAY_MS, alerts: 7 * DAY_MS, orders: 7 * DAY_MS }
    }
}

/// The topic names; see `docs/events.md`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Topics {
    /// Movements, keyed by SKU.
    pub movements: String,
    /// Stock levels after each change, compacted, keyed by `sku@location`.
    pub stock: String,
    /// Records the ledger could not read, with the reason in headers.
    pub dlq: String,
    /// Alerts' changes (`onhand.alert.v1`), keyed by their subject.
    pub alerts: String,
    /// Orders waiting for a decision and their changes, keyed by order id (`docs/orders.md`).
    pub orders: String,
}

impl Default for Topics {
    fn default() -> Self {
        Self {
            movements: "onhand.movements.v1".into(),
            stock: "onhand.stock.v1".into(),
            dlq: "onhand.movements.dlq.v1".into(),
            alerts: "onhand.alerts.v1".into(),
            orders: "onhand.orders.v1".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LedgerConfig {
    /// Run the ledger consumer in this process.
    pub enabled: bool,
    /// The Kafka consumer group; its offsets live in the database.
    pub group_id: String,
    /// The most movements applied in one transaction while the ledger keeps up.
    pub batch_size_max: usize,
    /// The most while it is behind: after each full batch the next may be twice as large,
    /// up to this (at least `batch_size_max`), which costs less per movement; the first
    /// batch that does not fill brings it back to `batch_size_max`.
    pub backlog_batch_size_max: usize,
    /// How long a batch waits to fill once its first movement arrived.
    pub linger_ms: u64,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            group_id: "onhand-ledger".into(),
            batch_size_max: 2_000,
            backlog_batch_size_max: 16_000,
            linger_ms: 20,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    /// The largest request body accepted, in bytes.
    pub body_bytes_max: usize,
    /// The most movements in one `POST /v1/movements`.
    pub movements_per_request_max: usize,
    /// Requests a second each API key may make on average; beyond, the answer is 429.
    pub rate_limit_per_s: u32,
    /// Requests an API key may make at once after a quiet spell, above the average.
    pub rate_limit_burst: u32,
    /// How long a verified API key is trusted without reading the database again: a
    /// revoked key stops working within this long. While the database is down, keys seen
    /// before keep working, up to `api_key_max_age_s`.
    pub api_key_cache_ttl_s: u64,
    /// The longest a key is honoured on what the database last said of it, when the
    /// database cannot be asked again: after this, the key waits for a fresh read.
    pub api_key_max_age_s: u64,
    /// Requests a second each client address may make with a key that is not cached (each
    /// costs a database read) or that is refused; beyond, the answer is 429. Known keys do
    /// not count against it.
    pub unverified_per_address_per_s: u32,
    pub unverified_per_address_burst: u32,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            body_bytes_max: 4 * 1024 * 1024,
            movements_per_request_max: 1_000,
            rate_limit_per_s: 200,
            rate_limit_burst: 400,
            api_key_cache_ttl_s: 30,
            api_key_max_age_s: 300,
            unverified_per_address_per_s: 20,
            unverified_per_address_burst: 40,
        }
    }
}

/// The stock read path: a cache kept fresh by the stock topic, in front of the database.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueryConfig {
    /// How long a stock read may wait for the database before answering from the cache,
    /// marked stale.
    pub database_budget_ms: u64,
    /// SKUs kept in the cache (each with all its locations).
    pub cache_skus_max: u64,
    /// After this long, a cached SKU is read again from the database even though the
    /// stock topic keeps it fresh: a safety net, not the way changes arrive.
    pub cache_ttl_s: u64,
    /// The most SKUs in one `POST /v1/stock/query`.
    pub query_skus_max: usize,
}

impl Default for QueryConfig {
    fn default() -> Self {
        Self { database_budget_ms: 150, cache_skus_max: 200_000, cache_ttl_s: 60, query_skus_max: 500 }
    }
}

/// Reservations: how long they hold, and how they are bounded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReservationConfig {
    /// How long a reservation holds its units when the request does not say.
    pub ttl_s_default: u64,
    /// The longest hold a request may ask for.
    pub ttl_s_max: u64,
    /// The most lines in one reservation.
    pub lines_max: usize,
    /// How often held reservations past their time are looked for and released.
    pub expiry_interval_ms: u64,
    /// How long the first answer to an Idempotency-Key is kept for retries.
    pub idempotency_keys_kept_h: u64,
}

impl Default for ReservationConfig {
    fn default() -> Self {
        Self {
            ttl_s_default: 600,
            ttl_s_max: 86_400,
            lines_max: 100,
            expiry_interval_ms: 1_000,
            idempotency_keys_kept_h: 24,
        }
    }
}

/// Watching the sources (store agents, connectors): `GET /v1/sources` and its metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SourcesConfig {
    /// A hole in a source's sequence numbers that lasts longer than this is flagged
    /// (`gap_alert` in `GET /v1/sources`, `onhand_source_gap`, a warning in the log).
    pub gap_alert_s: u64,
}

impl Default for SourcesConfig {
    fn default() -> Self {
        Self { gap_alert_s: 300 }
    }
}

/// The alerts component: what raises an alert, and how alerts are pushed to webhooks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    /// Whether this process runs the alerts component (its consumer of the stock topic,
    /// and under a lease its publication, source checks and webhook deliveries).
    pub enabled: bool,
    /// The consumer group of the alerts component on the stock topic.
    pub group_id: String,
    /// The reorder point of a level that has none of its own: `low_stock` is raised at or
    /// below it (the default of the stores' stock report too).
    pub reorder_point_default: i64,
    /// `low_stock` resolves only once available is above the reorder point plus this, so
    /// a level hovering around its threshold raises one alert, not one per sale.
    pub hysteresis: i64,
    /// A source not heard from for longer than this raises `source_silent`.
    pub silent_after_s: u64,
    /// The same, per source: a source's full name (`pos:store-012`, `erp`) or its system
    /// (`pos`, every store), the full name first; 0 turns the check off for it.
    pub silent_after_s_by_source: BTreeMap<String, u64>,
    /// How many times a webhook delivery is tried before it is dead-lettered.
    pub webhook_attempts_max: u32,
    /// How long a webhook receiver has to answer one delivery.
    pub webhook_timeout_ms: u64,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            group_id: "onhand-alerts".into(),
            reorder_point_default: 5,
            hysteresis: 2,
            silent_after_s: 900,
            silent_after_s_by_source: BTreeMap::new(),
            webhook_attempts_max: 8,
            webhook_timeout_ms: 5_000,
        }
    }
}

impl AlertsConfig {
    /// How long `source` may stay quiet: its own setting, its system's, or the default.
    pub fn silent_after_s(&self, source: &str) -> u64 {
        let system = source.split(':').next().unwrap_or(source);
        self.silent_after_s_by_source
            .get(source)
            .or_else(|| self.silent_after_s_by_source.get(system))
            .copied()
            .unwrap_or(self.silent_after_s)
    }
}

/// The live stream (`GET /v1/stream`, `/v1/ws`): what each API instance keeps for
/// clients that reconnect, and how far a client may fall behind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamConfig {
    /// The newest events kept for clients that reconnect with `Last-Event-ID`.
    pub replay_events_max: usize,
    /// The events a client may have waiting; a client further behind is told so and
    /// disconnected.
    pub client_buffer_max: usize,
    /// The most clients connected to one instance at once.
    pub clients_max: usize,
}

impl Default for StreamConfig {
    fn default() -> Self {
        Self { replay_events_max: 10_000, client_buffer_max: 1_024, clients_max: 5_000 }
    }
}

/// Orders (`docs/orders.md`): where an order is fulfilled from and when it can be
/// delivered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OrdersConfig {
    /// Run the order workers in this process: a consumer group of the orders topic (run
    /// several to share its partitions).
    pub enabled: bool,
    pub group_id: String,
    /// How old the oldest order waiting for a decision may be before `POST /v1/orders`
    /// answers 503 `order_queue_saturated` instead of queueing one more.
    pub queue_age_max_s: u64,
    /// How many orders one worker decides at once (1 to 256): those the topic has ready
    /// are taken together, each decided on its own, and the next ones read once all are.
    pub in_flight_max: usize,
    /// How long an order's units stay held between its reservation and its commit (a
    /// worker that dies in between leaves them held this long at most).
    pub hold_ttl_s: u64,
    /// How long a cart's soft hold keeps its units, in a channel with `hold = true`.
    pub cart_hold_ttl_s: u64,
    /// How many days ahead a delivery may be promised before an order is rejected with
    /// `no_delivery_capacity`.
    pub horizon_days: u32,
    /// By postal-code prefix, the locations to fulfil from, best first (`"013" =
    /// ["store-012", "dc-01"]`); the longest matching prefix wins. Locations of the channel
    /// that no region names come after them.
    pub regions: BTreeMap<String, Vec<String>>,
    /// By location, when it dispatches and how much; a location without a calendar is
    /// never chosen to fulfil an order.
    pub calendars: BTreeMap<String, CalendarConfig>,
}

impl Default for OrdersConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            group_id: "onhand-orders".into(),
            queue_age_max_s: 30,
            in_flight_max: 16,
            hold_ttl_s: 300,
            cart_hold_ttl_s: 900,
            horizon_days: 14,
            regions: BTreeMap::new(),
            calendars: BTreeMap::new(),
        }
    }
}

/// A location's delivery calendar.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct CalendarConfig {
    /// The days it dispatches: `mon` to `sun`.
    pub days: Vec<String>,
    /// The delivery slots of each such day, in order (`"09:00-13:00"`).
    pub slots: Vec<String>,
    /// By method (`standard`, `express`, `pickup`), how many orders each slot takes; a
    /// method not named is not offered from this location.
    pub capacity: BTreeMap<String, u32>,
    /// By method, how many days after the order its first slot can be (0: the same day).
    pub lead_days: BTreeMap<String, u32>,
}

/// The leases that let one replica at a time run each poller and inbox (`lease`), when
/// several `onhand serve` share the connectors' sections.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LeaseConfig {
    /// How long a lease holds without being renewed: its holder renews it every third of
    /// this, and when the holder dies another replica takes over after at most this long
    /// (and one more third, its next try). From 1000 to 300000.
    pub ttl_ms: u64,
}

impl LeaseConfig {
    /// The shortest `ttl_ms`: a renewal must fit well within a third of it.
    pub const TTL_MS_MIN: u64 = 1_000;
    /// The longest `ttl_ms`: work must not stand still longer after its holder died.
    pub const TTL_MS_MAX: u64 = 300_000;
}

impl Default for LeaseConfig {
    fn default() -> Self {
        Self { ttl_ms: 15_000 }
    }
}

/// The locations whose stock a sales channel may sell.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ChannelConfig {
    /// Every location serves the channel.
    pub all_locations: bool,
    /// The locations that serve it, when not all do.
    pub locations: Vec<String>,
    /// Putting lines in a cart (`PUT /v1/carts/{id}`) holds their units for
    /// `orders.cart_hold_ttl_s` (a reservation its order converts), rather than only
    /// telling what is available.
    pub hold: bool,
    /// The payment methods the channel takes (of [`PAYMENT_METHODS`]); empty: every one.
    /// An order paid otherwise is rejected with `invalid_payment`.
    pub payment_methods: Vec<String>,
}

/// The payment methods an order may name, as `order::PaymentMethod` spells them.
pub const PAYMENT_METHODS: [&str; 4] = ["card", "pix", "boleto", "wallet"];

impl ChannelConfig {
    pub fn serves(&self, location: &str) -> bool {
        self.all_locations || self.locations.iter().any(|l| l == location)
    }

    /// Whether the channel takes payments by `method`.
    pub fn takes_payment(&self, method: &str) -> bool {
        self.payment_methods.is_empty() || self.payment_methods.iter().any(|m| m == method)
    }

    /// What the channel may sell of a SKU: the availability of its serving locations. The
    /// one computation of it, for the API and the connectors that push it.
    pub fn available(&self, levels: &[crate::event::StockLevel]) -> i64 {
        levels.iter().filter(|l| self.serves(l.location.as_str())).map(|l| l.available()).sum()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config: {0}")]
    Load(#[from] Box<figment::Error>),
    #[error("config file {0} does not exist")]
    MissingFile(String),
    #[error("config: {0}")]
    Invalid(String),
}

impl Config {
    /// Reads the file (if given), then the environment, and checks the result.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let config = Config::read(file)?;
        config.check()?;
        Ok(config)
    }

    /// What [`load`](Config::load) reads, before [`check`](Config::check): for a caller
    /// that overrides fields (a command's `--database-url`) and checks the result.
    pub fn read(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            if !file.exists() {
                return Err(ConfigError::MissingFile(file.display().to_string()));
            }
            figment = figment.merge(Toml::file(file));
        }
        // Only `ONHAND_SECTION__FIELD` names are configuration; other ONHAND_ variables
        // (ONHAND_CONFIG, a test suite's own) are left alone.
        figment = figment.merge(Env::prefixed("ONHAND_").filter(|key| key.as_str().contains("__")).split("__"));
        if let Ok(url) = std::env::var("DATABASE_URL") {
            figment = figment.merge(Serialized::default("database.url", url));
        }
        Ok(figment.extract().map_err(Box::new)?)
    }

    /// Refuses a configuration that cannot work, with the reason.
    pub fn check(&self) -> Result<(), ConfigError> {
        let invalid = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        if self.database.url.is_empty() {
            return invalid("database.url is not set (or set DATABASE_URL)");
        }
        if self.kafka.brokers.trim().is_empty() {
            return invalid("kafka.brokers is not set (or set ONHAND_KAFKA__BROKERS)");
        }
        if self.database.connections_max == 0 || self.database.ledger_connections_max == 0 {
            return invalid("database.connections_max and database.ledger_connections_max must be 1 or more");
        }
        if self.kafka.produce_timeout_ms == 0 {
            return invalid("kafka.produce_timeout_ms must be 1 or more (0 would wait forever)");
        }
        if self.kafka.partitions < 1 {
            return invalid("kafka.partitions must be 1 or more");
        }
        let k = &self.kafka;
        if k.replication_factor < 1 || !(1..=k.replication_factor).contains(&k.min_insync_replicas) {
            return invalid("kafka.replication_factor must be 1 or more, and kafka.min_insync_replicas 1 to it");
        }
        let r = &k.retention_ms;
        if [r.movements, r.dlq, r.alerts, r.orders].iter().any(|&ms| ms != -1 && ms < HOUR_MS) {
            return invalid(
                "kafka.retention_ms: each topic keeps its records an hour (3600000) or more, or -1 (forever)",
            );
        }
        if self.ledger.batch_size_max == 0 || self.ledger.batch_size_max > 50_000 {
            return invalid("ledger.batch_size_max must be 1 to 50000");
        }
        if self.ledger.backlog_batch_size_max < self.ledger.batch_size_max
            || self.ledger.backlog_batch_size_max > 50_000
        {
            return invalid("ledger.backlog_batch_size_max must be ledger.batch_size_max to 50000");
        }
        for (name, channel) in &self.channels {
            if !channel.all_locations && channel.locations.is_empty() {
                return Err(ConfigError::Invalid(format!(
                    "channel {name} has no location (set locations or all_locations)"
                )));
            }
            if let Some(bad) = channel.payment_methods.iter().find(|m| !PAYMENT_METHODS.contains(&m.as_str())) {
                return Err(ConfigError::Invalid(format!(
                    "channels.{name}.payment_methods: {bad:?} is not one of {}",
                    PAYMENT_METHODS.join(", ")
                )));
            }
        }
        if self.query.query_skus_max == 0 || self.query.cache_skus_max == 0 {
            return invalid("query.query_skus_max and query.cache_skus_max must be 1 or more");
        }
        let r = &self.reservations;
        if r.ttl_s_default == 0 || r.ttl_s_default > r.ttl_s_max || r.lines_max == 0 || r.expiry_interval_ms == 0 {
            return invalid(
                "reservations: ttl_s_default must be 1 to ttl_s_max, lines_max and expiry_interval_ms 1 or more",
            );
        }
        let o = &self.orders;
        if o.hold_ttl_s > self.reservations.ttl_s_max || o.cart_hold_ttl_s > self.reservations.ttl_s_max {
            return invalid("orders.hold_ttl_s and orders.cart_hold_ttl_s must be at most reservations.ttl_s_max");
        }
        if !(1..=256).contains(&o.in_flight_max) {
            return invalid("orders.in_flight_max must be 1 to 256");
        }
        if o.cart_hold_ttl_s == 0 {
            return invalid("orders.cart_hold_ttl_s must be 1 or more");
        }
        if o.queue_age_max_s == 0 || o.hold_ttl_s == 0 || o.horizon_days == 0 || o.horizon_days > 366 {
            return invalid("orders: queue_age_max_s and hold_ttl_s must be 1 or more, horizon_days 1 to 366");
        }
        for (prefix, locations) in &self.orders.regions {
            if let Some(bad) = locations.iter().find(|l| crate::event::LocationId::parse(l.as_str()).is_err()) {
                return Err(ConfigError::Invalid(format!("orders.regions.{prefix}: {bad:?} is not a location id")));
            }
        }
        if self.http.movements_per_request_max == 0 {
            return invalid("http.movements_per_request_max must be 1 or more");
        }
        let a = &self.alerts;
        if !(0..=crate::event::QUANTITY_MAX).contains(&a.reorder_point_default)
            || !(0..=crate::event::QUANTITY_MAX).contains(&a.hysteresis)
        {
            return Err(ConfigError::Invalid(format!(
                "alerts.reorder_point_default and alerts.hysteresis must be 0 to {}",
                crate::event::QUANTITY_MAX
            )));
        }
        if a.silent_after_s == 0 || a.silent_after_s_by_source.values().any(|s| *s == 0) {
            return invalid("alerts.silent_after_s (and each of silent_after_s_by_source) must be 1 or more");
        }
        if a.webhook_attempts_max == 0 || a.webhook_timeout_ms == 0 {
            return invalid("alerts.webhook_attempts_max and alerts.webhook_timeout_ms must be 1 or more");
        }
        let s = &self.stream;
        if s.replay_events_max == 0 || s.client_buffer_max == 0 || s.clients_max == 0 {
            return invalid("stream.replay_events_max, client_buffer_max and clients_max must be 1 or more");
        }
        if self.http.rate_limit_per_s == 0 || self.http.rate_limit_burst == 0 {
            return invalid("http.rate_limit_per_s and http.rate_limit_burst must be 1 or more");
        }
        if self.http.unverified_per_address_per_s == 0 || self.http.unverified_per_address_burst == 0 {
            return invalid(
                "http.unverified_per_address_per_s and http.unverified_per_address_burst must be 1 or more",
            );
        }
        if !(LeaseConfig::TTL_MS_MIN..=LeaseConfig::TTL_MS_MAX).contains(&self.leases.ttl_ms) {
            return Err(ConfigError::Invalid(format!(
                "leases.ttl_ms must be {} to {}",
                LeaseConfig::TTL_MS_MIN,
                LeaseConfig::TTL_MS_MAX
            )));
        }
        if self.http.api_key_max_age_s < self.http.api_key_cache_ttl_s {
            return invalid("http.api_key_max_age_s must be at least http.api_key_cache_ttl_s");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use figment::{providers::Format, Figment};

    use super::*;

    /// `deploy/onhand.toml` documents every field with its default value.
    #[test]
    fn the_example_file_is_valid_and_shows_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/onhand.toml");
        let config: Config = Figment::from(Toml::file(&path)).extract().expect("deploy/onhand.toml is valid");
        let mut expected = Config::default();
        expected.http.listen = SocketAddr::from(([0, 0, 0, 0], 8080));
        assert_eq!(config, expected);
    }

    #[test]
    fn a_config_without_database_or_brokers_is_refused() {
        let mut config = Config::default();
        assert!(matches!(config.check(), Err(ConfigError::Invalid(m)) if m.contains("database.url")));
        config.database.url = "postgres://localhost/onhand".into();
        assert!(matches!(config.check(), Err(ConfigError::Invalid(m)) if m.contains("kafka.brokers")));
        config.kafka.brokers = "localhost:9092".into();
        assert!(config.check().is_ok());
    }

    #[test]
    fn a_lease_ttl_out_of_range_is_refused() {
        let mut config = Config::default();
        config.database.url = "postgres://localhost/onhand".into();
        config.kafka.brokers = "localhost:9092".into();
        for (ttl_ms, valid) in [(999, false), (1_000, true), (15_000, true), (300_000, true), (300_001, false)] {
            config.leases.ttl_ms = ttl_ms;
            let checked = config.check();
            assert_eq!(checked.is_ok(), valid, "{ttl_ms}: {checked:?}");
            if let Err(ConfigError::Invalid(m)) = checked {
                assert!(m.contains("leases.ttl_ms"), "{m}");
            }
        }
    }
}
