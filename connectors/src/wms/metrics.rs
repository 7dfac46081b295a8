//! The WMS connector's metrics, `onhand_wms_*`, registered on the process's registry when
//! the connector is built.

use prometheus::{IntCounter, IntCounterVec, IntGauge, Registry};

use super::config::NAME;
use crate::contract::{ConnectorError, Registrar};

#[derive(Debug, Clone)]
pub struct WmsMetrics {
    pub files_total: IntCounterVec,
    pub lines_total: IntCounter,
    pub file_lines: IntGauge,
}

impl WmsMetrics {
    pub fn register(registry: &Registry) -> Result<WmsMetrics, ConnectorError> {
        let metrics = Registrar::new(NAME, registry);
        Ok(WmsMetrics {
            files_total: metrics.counter_vec(
                "onhand_wms_files_total",
                "WMS files done with, by outcome (archived: every line acknowledged by Kafka; rejected: a bad line).",
                &["outcome"],
            )?,
            lines_total: metrics.counter(
                "onhand_wms_lines_total",
                "Lines of WMS files produced to Kafka and acknowledged (a file taken again counts again).",
            )?,
            file_lines: metrics
                .gauge("onhand_wms_file_lines", "Lines of the WMS file being produced, 0 when none is.")?,
        })
    }
}
