//! The ERP connector's metrics, `onhand_erp_*`, registered on the process's registry when
//! the connector is built.

use prometheus::{IntCounter, IntCounterVec, IntGauge, Registry};

use super::config::NAME;
use crate::contract::{ConnectorError, Registrar};

#[derive(Debug, Clone)]
pub struct ErpMetrics {
    pub rows_total: IntCounterVec,
    pub cursor_lag_seconds: IntGauge,
    pub late_rows_total: IntCounter,
}

impl ErpMetrics {
    pub fn register(registry: &Registry) -> Result<ErpMetrics, ConnectorError> {
        let metrics = Registrar::new(NAME, registry);
        Ok(ErpMetrics {
            rows_total: metrics.counter_vec(
                "onhand_erp_rows_total",
                "ERP journal rows acknowledged by Kafka, by outcome (produced, dead_lettered).",
                &["outcome"],
            )?,
            cursor_lag_seconds: metrics.gauge(
                "onhand_erp_cursor_lag_seconds",
                "Age of the change time of the last journal row the ERP connector produced.",
            )?,
            late_rows_total: metrics.counter(
                "onhand_erp_late_rows_total",
                "ERP journal rows found behind the cursor by the look-back re-scan (a transaction that committed \
                 later than safety_delay_ms), produced then.",
            )?,
        })
    }
}
