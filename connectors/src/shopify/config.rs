//! `[connectors.shopify]`: which shop, its secrets, how its locations map to onhand's, and
//! the limits of the reconciliation and the sink. `docs/connectors/shopify.md` explains
//! each field; `deploy/onhand.toml` has a commented example.

use std::{collections::BTreeMap, time::Duration};

use onhand_core::{backoff::Backoff, config::Config, event::LocationId};
use serde::{Deserialize, Deserializer};

use crate::contract::{section, ConnectorError};

/// The name of the connector: its section, its routes' prefix, its saved state.
pub const NAME: &str = "shopify";

/// The Admin API version whose shapes this connector reads and writes. 2026-04 is the
/// first version that requires `changeFromQuantity` and an idempotency key on
/// `inventorySetQuantities`, which the sink sends.
pub const API_VERSION: &str = "2026-04";

/// The most orders in one page of the reconciliation: with one line of each and one refund
/// line, 77 orders would cost 1003 points, more than Shopify allows one query
/// (`client::orders_query_cost` says how a page costs; a test there checks this number).
pub const RECONCILE_PAGE_SIZE_MAX: u32 = 76;

/// A secret from the configuration: never printed, not even by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl<'de> Deserialize<'de> for Secret {
    /// Accepts a number too: an environment variable made only of digits reaches the
    /// section as one.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::String(s) if !s.is_empty() => Ok(Secret(s)),
            serde_json::Value::Number(n) => Ok(Secret(n.to_string())),
            _ => Err(serde::de::Error::custom("a secret must be a non-empty string")),
        }
    }
}

/// The connector's section, read once at start.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShopifyConfig {
    /// The shop's domain, `example.myshopify.com`: the `source.instance` of every movement.
    pub shop: String,
    /// The Admin GraphQL endpoint. Default: `https://{shop}/admin/api/{api_version}/graphql.json`;
    /// tests point it at a fake Shopify.
    #[serde(default)]
    pub admin_api_url: Option<String>,
    #[serde(default = "api_version")]
    pub api_version: String,
    /// The Admin API access token of the app (`shpat_...`), sent as `X-Shopify-Access-Token`.
    /// Usually from `ONHAND_CONNECTORS__SHOPIFY__ACCESS_TOKEN`.
    pub access_token: Secret,
    /// The app's client secret, which signs webhooks (`X-Shopify-Hmac-Sha256`). Usually
    /// from `ONHAND_CONNECTORS__SHOPIFY__WEBHOOK_SECRET`.
    pub webhook_secret: Secret,
    /// Shopify location id (the number in `gid://shopify/Location/N`) to onhand location.
    #[serde(default)]
    pub location_map: BTreeMap<String, LocationId>,
    /// Where an order without a location (a web order) sells from: the web store's
    /// fulfilment location, as onhand names it.
    pub default_location: LocationId,
    /// The largest webhook body accepted, in bytes; a large order is a few hundred KiB.
    #[serde(default = "webhook_body_bytes_max")]
    pub webhook_body_bytes_max: usize,
    /// A delivery whose `X-Shopify-Triggered-At` is older than this is refused
    /// (`stale_delivery`). Shopify retries a failed delivery 8 times over 4 hours, keeping
    /// the time it was first triggered, and in rare cases delivers up to a day late; 48
    /// hours leaves room for both. The header is not signed, so this catches Shopify's own
    /// late deliveries and bodies replayed with their old headers; what keeps a replay
    /// from counting twice is that every event id comes from the signed body.
    #[serde(default = "webhook_max_age_s")]
    pub webhook_max_age_s: u64,
    /// How long an `inventory_levels/update` that does not match onhand's numbers waits
    /// for onhand to catch up (a web order's sale on its way through the ledger) before
    /// it is taken as a manual change. Under Shopify's 5 s webhook timeout.
    #[serde(default = "echo_settle_ms")]
    pub echo_settle_ms: u64,
    /// What a manual change made in Shopify's admin becomes: `adjust` (an adjustment in
    /// onhand, as a person who edits Shopify expects) or `ignore` (onhand stays the
    /// authority, and its next push of the item overwrites Shopify). Shopify's webhook does
    /// not say why a quantity changed, so with `adjust` a web order whose webhook reaches
    /// onhand more than `echo_settle_ms` after its level update is counted twice: choose
    /// `ignore` when nobody edits quantities in Shopify.
    #[serde(default)]
    pub manual_changes: ManualChanges,
    #[serde(default)]
    pub reconcile: ReconcileConfig,
    /// The sink pushing a channel's availability to Shopify; absent: no sink.
    #[serde(default)]
    pub sink: Option<SinkConfig>,
    #[serde(default)]
    pub http: HttpClientConfig,
}

/// See [`ShopifyConfig::manual_changes`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ManualChanges {
    #[default]
    Adjust,
    Ignore,
}

/// The task that polls Shopify for orders the webhooks missed.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReconcileConfig {
    pub enabled: bool,
    /// Time between two rounds.
    pub interval_s: u64,
    /// Orders per GraphQL page, at most [`RECONCILE_PAGE_SIZE_MAX`]. Shopify charges a
    /// query for every line it may return, orders × lines, and refuses one that costs more
    /// than 1000 points, so a page of more orders reads fewer lines of each with them (7
    /// at 20 orders, 2 at 50); the rest of an order takes one more query per 250 lines.
    pub page_size: u32,
    /// Pages read in one round; the next round goes on from the saved cursor.
    pub pages_max: u32,
    /// The most queries for the rest of one order's lines and its refunds' lines, each
    /// up to 250 (249 for a refund's) lines. An order with more is recorded without the
    /// rest and dead-lettered (`shopify_lines_truncated`); its webhook carries every line.
    pub line_pages_max: u32,
    /// Where the first round starts, before any cursor is saved: this long ago.
    pub initial_lookback_h: u64,
    /// Each round re-reads orders updated this long before the cursor: Shopify's
    /// `updated_at` may become visible late, and a re-read order changes nothing.
    pub overlap_s: u64,
}

impl Default for ReconcileConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            interval_s: 300,
            page_size: 20,
            pages_max: 20,
            line_pages_max: 20,
            initial_lookback_h: 24,
            overlap_s: 60,
        }
    }
}

/// The sink: onhand's availability for one channel, pushed to one Shopify location.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    /// A channel of `[channels]`: the web store sells what this channel may sell.
    pub channel: String,
    /// The Shopify location whose `available` quantity the sink sets.
    pub location_id: u64,
    /// The Kafka consumer group on the stock topic; replicas split the partitions.
    #[serde(default = "sink_group_id")]
    pub group_id: String,
    /// Items in one `inventorySetQuantities` call (Shopify allows 250).
    #[serde(default = "batch_size_max")]
    pub batch_size_max: usize,
    /// Items with a value waiting to be pushed, one per item; when full, the sink stops
    /// reading the stock topic until pushes make room.
    #[serde(default = "pending_items_max")]
    pub pending_items_max: usize,
    /// How long a change waits for others to join its batch.
    #[serde(default = "linger_ms")]
    pub linger_ms: u64,
}

/// The Admin API client: timeouts and backoff.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpClientConfig {
    pub request_timeout_ms: u64,
    /// The first wait after a failure (5xx, timeout, unreachable); it doubles each time.
    pub backoff_ms_min: u64,
    /// The longest wait between two attempts.
    pub backoff_ms_max: u64,
}

impl Default for HttpClientConfig {
    fn default() -> Self {
        Self { request_timeout_ms: 10_000, backoff_ms_min: 200, backoff_ms_max: 30_000 }
    }
}

impl HttpClientConfig {
    /// The pauses between failed calls to Shopify, for the sink and the reconciliation.
    pub fn backoff(&self) -> Backoff {
        Backoff::new(Duration::from_millis(self.backoff_ms_min), Duration::from_millis(self.backoff_ms_max))
    }
}

fn api_version() -> String {
    API_VERSION.into()
}
fn webhook_body_bytes_max() -> usize {
    2 * 1024 * 1024
}
fn webhook_max_age_s() -> u64 {
    48 * 3600
}
fn echo_settle_ms() -> u64 {
    2_000
}
fn sink_group_id() -> String {
    "onhand-shopify-sink".into()
}
fn batch_size_max() -> usize {
    50
}
fn pending_items_max() -> usize {
    100_000
}
fn linger_ms() -> u64 {
    200
}

impl ShopifyConfig {
    /// Reads and checks the section against the whole configuration (the sink's channel
    /// must exist).
    pub fn from_section(config: &Config, value: &serde_json::Value) -> Result<Self, ConnectorError> {
        let shopify: ShopifyConfig = section(NAME, value)?;
        shopify.check(config).map_err(|message| ConnectorError {
            connector: NAME,
            message: format!("[connectors.shopify] is not valid: {message}"),
            retryable: false,
        })?;
        Ok(shopify)
    }

    fn check(&self, config: &Config) -> Result<(), String> {
        if self.shop.is_empty() || self.shop.chars().count() > 64 {
            return Err("shop must be 1 to 64 characters".into());
        }
        if let Some(bad) = self.location_map.keys().find(|k| k.parse::<u64>().is_err()) {
            return Err(format!("location_map key {bad:?} is not a Shopify location id (a number)"));
        }
        let r = &self.reconcile;
        if r.interval_s == 0 || r.pages_max == 0 || r.line_pages_max == 0 {
            return Err("reconcile: interval_s, pages_max and line_pages_max must be 1 or more".into());
        }
        if r.page_size == 0 || r.page_size > RECONCILE_PAGE_SIZE_MAX {
            return Err(format!(
                "reconcile: page_size must be 1 to {RECONCILE_PAGE_SIZE_MAX}: a page of more orders costs more than \
                 the 1000 points Shopify allows a query"
            ));
        }
        let h = &self.http;
        if h.request_timeout_ms == 0 || h.backoff_ms_min == 0 || h.backoff_ms_min > h.backoff_ms_max {
            return Err("http: request_timeout_ms and backoff_ms_min must be 1 or more, at most backoff_ms_max".into());
        }
        if self.webhook_max_age_s < 60 {
            return Err("webhook_max_age_s must be 60 or more: a shorter window refuses deliveries on time".into());
        }
        if self.echo_settle_ms >= 4_000 {
            return Err("echo_settle_ms must be under 4000: Shopify gives up on a webhook after 5 s".into());
        }
        if let Some(sink) = &self.sink {
            if !config.channels.contains_key(&sink.channel) {
                return Err(format!("sink.channel {:?} is not a channel of [channels]", sink.channel));
            }
            if sink.batch_size_max == 0 || sink.batch_size_max > 250 || sink.pending_items_max == 0 {
                return Err("sink: batch_size_max must be 1 to 250, pending_items_max 1 or more".into());
            }
        }
        Ok(())
    }

    /// The Admin GraphQL endpoint.
    pub fn graphql_url(&self) -> String {
        self.admin_api_url
            .clone()
            .unwrap_or_else(|| format!("https://{}/admin/api/{}/graphql.json", self.shop, self.api_version))
    }

    /// The onhand location of a Shopify location id.
    pub fn location(&self, shopify_location_id: u64) -> Option<&LocationId> {
        self.location_map.get(&shopify_location_id.to_string())
    }
}
