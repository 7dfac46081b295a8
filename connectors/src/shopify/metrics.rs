//! The Shopify connector's metrics, `onhand_shopify_*`, registered on the process's
//! registry when the connector is built.

use prometheus::{IntCounter, IntCounterVec, IntGauge, Registry};

use super::config::NAME;
use crate::contract::{ConnectorError, Registrar};

#[derive(Debug, Clone)]
pub struct ShopifyMetrics {
    pub webhooks_total: IntCounterVec,
    pub dlq_records_total: IntCounterVec,
    pub level_updates_total: IntCounterVec,
    pub reconcile_movements_total: IntCounter,
    pub reconcile_cursor_age_seconds: IntGauge,
    pub pushes_total: IntCounterVec,
    pub pending_items: IntGauge,
}

impl ShopifyMetrics {
    pub fn register(registry: &Registry) -> Result<ShopifyMetrics, ConnectorError> {
        let metrics = Registrar::new(NAME, registry);
        Ok(ShopifyMetrics {
            webhooks_total: metrics.counter_vec(
                "onhand_shopify_webhooks_total",
                "Shopify webhooks by topic (orders_create, orders_cancelled, refunds_create, inventory_levels_update, \
                 other) and outcome (accepted, ignored, invalid_signature, stale, failed).",
                &["topic", "outcome"],
            )?,
            dlq_records_total: metrics.counter_vec(
                "onhand_shopify_dlq_records_total",
                "Shopify records sent to the dead-letter topic, by reason code.",
                &["reason"],
            )?,
            level_updates_total: metrics.counter_vec(
                "onhand_shopify_level_updates_total",
                "inventory_levels/update webhooks by verdict (echo, in_sync, no_baseline, not_pushed_location, \
                 superseded, manual_change, manual_change_ignored).",
                &["verdict"],
            )?,
            reconcile_movements_total: metrics.counter(
                "onhand_shopify_reconcile_movements_total",
                "Movements the reconciliation produced (most are duplicates of webhooks the ledger skips).",
            )?,
            reconcile_cursor_age_seconds: metrics.gauge(
                "onhand_shopify_reconcile_cursor_age_seconds",
                "How far behind now the reconciliation's saved cursor is, after its last round.",
            )?,
            pushes_total: metrics.counter_vec(
                "onhand_shopify_pushes_total",
                "Inventory items the sink handled, by outcome (pushed, unchanged, stale, throttled, failed, \
                 rejected, unmapped).",
                &["outcome"],
            )?,
            pending_items: metrics.gauge(
                "onhand_shopify_pending_items",
                "Items whose newest availability the sink has not pushed to Shopify yet (one per item at most).",
            )?,
        })
    }
}
