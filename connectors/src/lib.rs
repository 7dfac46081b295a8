//! Connectors turn what each outside system says into movements on Kafka.
//!
//! - `contract`: what every connector implements and gets: [`ConnectorKind`] (its name,
//!   and its build from its typed `[connectors.NAME]` section, registering its own
//!   metrics), [`Connector`] (its routes and its task, which reports its health) and
//!   [`ConnectorContext`] (the Kafka producer and topics, the database, the stock cache,
//!   the configuration, the shutdown signal, core's metrics).
//! - [`connectors`]: the list of every connector kind, the one place a connector is added;
//!   [`registry`] builds the configured ones from it.
//!
//! Each connector lives in a folder of its own with the same files: `mod.rs` (its `KIND`
//! and its [`Connector`]), `config.rs` (its name and its typed section,
//! `deny_unknown_fields`), `metrics.rs` (its metrics, `onhand_NAME_*`, if any), `source.rs` (the
//! task or routes reading the outside system), `mapping.rs` (pure functions from the
//! outside format to movements) and `tests.rs`:
//!
//! - [`pos`]: store tills' feeds and stock reports, and the offline-safe store agent.
//! - [`erp`]: the ERP's stock journal, captured by polling with a persisted cursor.
//! - [`shopify`]: the Shopify web store: orders, refunds and manual changes in (webhooks
//!   and a reconciliation), the web channel's availability out (a sink).
//! - [`wms`]: the distribution centre's CSV files, dropped into an inbox.

mod contract;
pub mod erp;
pub mod pos;
pub mod shopify;
pub mod wms;

use std::sync::Arc;

use onhand_core::config::Config;
use prometheus::Registry;

pub use self::contract::{
    section, Build, Connector, ConnectorContext, ConnectorError, ConnectorKind, Registrar, ScopedRoutes, SourceHealth,
};

/// Every connector this build knows: the one place a new connector is added.
pub fn connectors() -> &'static [ConnectorKind] {
    &[erp::KIND, pos::KIND, shopify::KIND, wms::KIND]
}

/// The configured connectors, each built by its kind from its `[connectors.NAME]` section,
/// with its metrics registered on `metrics`. A connector without a section does not run; a
/// section no kind is named after, or that its kind cannot read, refuses the start.
pub fn registry(config: &Config, metrics: &Registry) -> Result<Vec<Arc<dyn Connector>>, ConnectorError> {
    let kinds = connectors();
    let built = config.connectors.iter().map(|(name, section)| {
        let Some(kind) = kinds.iter().find(|kind| kind.name == name) else {
            let mut known: Vec<&str> = kinds.iter().map(|kind| kind.name).collect();
            known.sort_unstable();
            return Err(ConnectorError {
                connector: "registry",
                message: format!("[connectors.{name}]: no connector is named {name:?} (known: {})", known.join(", ")),
                retryable: false,
            });
        };
        (kind.build)(section, config, metrics)
    });
    built.collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use onhand_core::config::{ChannelConfig, Config};
    use prometheus::Registry;
    use serde_json::json;

    use crate::{Connector, ConnectorError};

    /// Each call on a registry of its own, as each process has: a connector's metrics are
    /// registered once per registry.
    fn registry(config: &Config) -> Result<Vec<Arc<dyn Connector>>, ConnectorError> {
        super::registry(config, &Registry::new())
    }

    fn shopify_section() -> serde_json::Value {
        json!({
            "shop": "casa-onhand.myshopify.com", "access_token": "shpat_x", "webhook_secret": "s",
            "default_location": "dc-sp", "sink": { "channel": "web", "location_id": 1 }
        })
    }

    #[test]
    fn the_registry_builds_known_connectors_and_refuses_unknown_names() {
        let mut config = Config::default();
        config.channels.insert(
            "web".into(),
            ChannelConfig { all_locations: true, locations: Vec::new(), ..ChannelConfig::default() },
        );
        assert!(registry(&config).unwrap().is_empty(), "no section, no connector");
        config.connectors.insert("shopify".into(), shopify_section());
        let connectors = registry(&config).unwrap();
        assert_eq!(connectors.iter().map(|c| c.name()).collect::<Vec<_>>(), ["shopify"]);

        config.connectors.insert("sap".into(), json!({}));
        let refused = registry(&config).unwrap_err();
        assert!(refused.message.contains("no connector is named \"sap\""), "{}", refused.message);
        assert!(!refused.retryable);
        config.connectors.remove("sap");
        config.connectors.insert("pos".into(), json!({}));
        let names: Vec<&str> = registry(&config).unwrap().iter().map(|c| c.name()).collect();
        assert_eq!(names, ["pos", "shopify"]);
        config.connectors.remove("pos");

        config.connectors.remove("sap");
        config.channels.remove("web");
        let refused = registry(&config).unwrap_err();
        assert!(refused.message.contains("sink.channel \"web\" is not a channel"), "{}", refused.message);
    }

    #[test]
    fn each_connector_registers_its_metrics_on_the_registry_it_is_built_with() {
        let mut config = Config::default();
        config.connectors.insert("sap".into(), json!({}));
        let refused = registry(&config).unwrap_err();
        assert_eq!(refused.message, "[connectors.sap]: no connector is named \"sap\" (known: erp, pos, shopify, wms)");
        config.connectors.remove("sap");

        config.connectors.insert("wms".into(), json!({ "inbox": "/srv/wms/inbox" }));
        let metrics = Registry::new();
        super::registry(&config, &metrics).unwrap();
        let names: Vec<String> = metrics.gather().iter().map(|family| family.name().to_string()).collect();
        assert!(names.iter().any(|n| n == "onhand_wms_lines_total"), "{names:?}");
        let twice = super::registry(&config, &metrics).unwrap_err();
        assert!(twice.message.contains("its metrics cannot be registered"), "{}", twice.message);
        assert!(!twice.retryable);
    }
}
