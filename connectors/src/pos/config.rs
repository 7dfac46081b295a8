//! `[connectors.pos]`: the central side of the store feeds. An empty section turns it on
//! with the defaults below.

use serde::Deserialize;

/// The connector's name: its section, its component `connector:pos`.
pub const NAME: &str = "pos";

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PosConfig {
    /// The onhand location of the store in a stock report: `{id_loja}` is replaced by the
    /// report's `id_loja`, so store `001` is `store-001`.
    pub store_location_format: String,
    /// The reorder point of a level that has none: a stock report at or below it is
    /// answered with the low-stock alert.
    pub reorder_point_default: i64,
    /// The most lines in one request of a till or a store agent.
    pub lines_per_request_max: usize,
}

impl Default for PosConfig {
    fn default() -> Self {
        Self { store_location_format: "store-{id_loja}".into(), reorder_point_default: 5, lines_per_request_max: 5_000 }
    }
}
