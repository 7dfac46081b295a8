//! The task that keeps the `onhand_source_*` metrics current and warns about lasting gaps,
//! from the sources' state in the database and what onhand heard from them.

use std::{sync::Arc, time::Duration};

use chrono::Utc;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::SourceReport;
use crate::{
    config::SourcesConfig,
    db::{Signals, Sources},
    telemetry::Metrics,
};

/// How often the sources' metrics are refreshed.
const WATCH_INTERVAL: Duration = Duration::from_secs(5);
/// The most sources with metric series of their own: a source's name comes from outside
/// (a store's id), and a series per name must not grow without bound.
const SOURCE_SERIES_MAX: usize = 500;

/// Keeps the sources' metrics current and warns about lasting gaps, until `shutdown`.
pub async fn run(
    db: Arc<dyn Sources>,
    signals: Arc<dyn Signals>,
    metrics: Metrics,
    config: SourcesConfig,
    shutdown: CancellationToken,
) {
    let mut interval = tokio::time::interval(WATCH_INTERVAL);
    let mut alerted = std::collections::HashSet::new();
    let mut exported: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = interval.tick() => {}
        }
        let Ok(states) = db.sources().await else { continue };
        let Ok(heard) = signals.source_signals().await else { continue };
        let now = Utc::now();
        let reports = SourceReport::all(states, heard, now, &config);
        if reports.len() > SOURCE_SERIES_MAX {
            warn!(
                sources = reports.len(),
                max = SOURCE_SERIES_MAX,
                "more sources than metric series; GET /v1/sources lists them all"
            );
        }
        // Sorted by name: the same sources keep their series.
        let reports: Vec<SourceReport> = reports.into_iter().take(SOURCE_SERIES_MAX).collect();
        let current: std::collections::BTreeSet<String> = reports.iter().map(|r| r.state.source.clone()).collect();
        for gone in exported.difference(&current) {
            for gauge in [
                &metrics.source_behind_movements,
                &metrics.source_behind_seconds,
                &metrics.source_gap,
                &metrics.source_healthy,
                &metrics.source_last_movement_age_seconds,
            ] {
                let _ = gauge.remove_label_values(&[gone]);
            }
        }
        exported = current;
        for report in reports {
            let source = report.state.source.as_str();
            match report.last_movement_age_seconds {
                Some(age) => metrics.source_last_movement_age_seconds.with_label_values(&[source]).set(age),
                None => {
                    let _ = metrics.source_last_movement_age_seconds.remove_label_values(&[source]);
                }
            }
            metrics.source_behind_movements.with_label_values(&[source]).set(report.behind_movements);
            metrics.source_behind_seconds.with_label_values(&[source]).set(report.behind_seconds);
            metrics.source_gap.with_label_values(&[source]).set(i64::from(report.gap_alert));
            metrics.source_healthy.with_label_values(&[source]).set(i64::from(report.state.healthy));
            if report.gap_alert && alerted.insert(source.to_string()) {
                warn!(
                    source,
                    acked_seq = report.state.acked_seq,
                    max_seq = report.state.max_seq,
                    "movements are missing from this source"
                );
            } else if !report.gap_alert {
                alerted.remove(source);
            }
        }
    }
}
