//! `[connectors.erp]`: where the ERP's stock journal is and how its codes map to onhand.

use std::{collections::BTreeMap, time::Duration};

use onhand_core::backoff::Backoff;
use serde::Deserialize;

/// The connector's name: its section, its component `connector:erp`.
pub const NAME: &str = "erp";

/// The journal query of a PostgreSQL ERP, as in `tests/fixtures/erp/schema.sql`. Any query
/// works that takes the same four parameters (`$1` the cursor's change time, `$2` its row
/// id, `$3` the safety delay in seconds, `$4` the most rows) and returns the same columns.
pub const DEFAULT_QUERY: &str = "
    SELECT id, changed_at, item, warehouse, movement_type, quantity, reference
    FROM stock_journal
    WHERE (changed_at, id) > ($1, $2) AND changed_at <= now() - make_interval(secs => $3)
    ORDER BY changed_at, id
    LIMIT $4";

/// How the journal reaches onhand.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// onhand queries the journal after its cursor.
    #[default]
    Poll,
    /// Debezium writes the journal's change events to a topic, which onhand consumes.
    Debezium,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ErpConfig {
    pub mode: Mode,
    /// The ERP database (or a read replica), `postgres://reader:...@erp-db/erp`; polling only.
    pub source_url: String,
    /// The journal query; see [`DEFAULT_QUERY`].
    pub query: String,
    /// How long to wait for new rows when the journal is caught up.
    pub poll_interval_ms: u64,
    /// The most rows read, and produced, at once.
    pub batch_rows_max: i64,
    /// Rows changed less than this long ago are left for the next poll: a transaction that
    /// commits late may still add rows with an earlier change time.
    pub safety_delay_ms: u64,
    /// ERP movement-type codes to onhand kinds, e.g. `ENT = "receipt"`.
    pub kinds: BTreeMap<String, String>,
    /// ERP warehouse codes to onhand locations, e.g. `CD01 = "dc-sp"`.
    pub locations: BTreeMap<String, String>,
    /// `source.instance` of the movements.
    pub source_instance: String,
    /// The longest wait between two attempts when the ERP database or Kafka fails.
    pub retry_max_ms: u64,
    /// How often the journal is read again behind the cursor, for rows whose transaction
    /// committed later than `safety_delay_ms` after their change time (0: never).
    pub lookback_interval_s: u64,
    /// How far behind the cursor that re-scan reads: a row that commits later than this
    /// after its change time is missed for good (docs/connectors/erp.md).
    pub lookback_window_s: u64,
    pub debezium: DebeziumConfig,
}

/// `[connectors.erp.debezium]`, for `mode = "debezium"`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DebeziumConfig {
    /// The change topic of the journal table, e.g. `erp.ERP.STOCK_JOURNAL`.
    pub topic: String,
    pub group_id: String,
    pub columns: DebeziumColumns,
}

impl Default for DebeziumConfig {
    fn default() -> Self {
        Self { topic: String::new(), group_id: "onhand-erp-debezium".into(), columns: DebeziumColumns::default() }
    }
}

/// The journal's column names in Debezium's `after` (Oracle's are upper case).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DebeziumColumns {
    pub id: String,
    pub changed_at: String,
    pub item: String,
    pub warehouse: String,
    pub movement_type: String,
    pub quantity: String,
    pub reference: String,
}

impl Default for DebeziumColumns {
    fn default() -> Self {
        Self {
            id: "ID".into(),
            changed_at: "CHANGED_AT".into(),
            item: "ITEM".into(),
            warehouse: "WAREHOUSE".into(),
            movement_type: "MOVEMENT_TYPE".into(),
            quantity: "QUANTITY".into(),
            reference: "REFERENCE".into(),
        }
    }
}

impl Default for ErpConfig {
    fn default() -> Self {
        Self {
            mode: Mode::Poll,
            source_url: String::new(),
            query: DEFAULT_QUERY.to_string(),
            poll_interval_ms: 1_000,
            batch_rows_max: 1_000,
            safety_delay_ms: 5_000,
            kinds: BTreeMap::new(),
            locations: BTreeMap::new(),
            source_instance: "erp".into(),
            retry_max_ms: 30_000,
            lookback_interval_s: 60,
            lookback_window_s: 900,
            debezium: DebeziumConfig::default(),
        }
    }
}

impl ErpConfig {
    /// The pauses between attempts while the ERP database or Kafka fails, for the poller and
    /// the Debezium follower alike: 200 ms, doubling, at most `retry_max_ms`.
    pub fn retry_backoff(&self) -> Backoff {
        Backoff::new(Duration::from_millis(200), Duration::from_millis(self.retry_max_ms))
    }
}
