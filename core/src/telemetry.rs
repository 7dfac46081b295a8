//! The metrics of core's components, defined in one place, named
//! `onhand_<component>_<noun>_<unit>`. Labels come from small fixed sets (reject codes,
//! partitions, outcomes), never from SKUs or error text. Each [`Metrics`] has its own
//! registry, so several instances can live in one process (as they do in tests); a
//! component defined outside core (a connector) registers its own metrics on the same
//! registry ([`Metrics::registry`]), so that `/metrics` shows them too.

use std::sync::Arc;

use prometheus::{
    exponential_buckets, Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::event::SourceSystem;

tokio::task_local! {
    /// The id of the HTTP request being served (`api::observe`), for what it produces.
    pub static REQUEST_ID: Arc<str>;
}

/// The Kafka header in which a movement produced while a request was served carries the
/// request's id to the ledger's log lines.
pub const REQUEST_ID_KAFKA_HEADER: &str = "onhand-request-id";

/// The id of the request being served, if this task serves one.
pub fn request_id() -> Option<Arc<str>> {
    REQUEST_ID.try_with(Arc::clone).ok()
}

/// `work`, carrying the id of the request being served (if any) into the task that
/// spawns it.
pub fn with_request_id<F: std::future::Future>(work: F) -> impl std::future::Future<Output = F::Output> {
    let id = request_id();
    async move {
        match id {
            Some(id) => REQUEST_ID.scope(id, work).await,
            None => work.await,
        }
    }
}

/// Every metric, behind one `Arc`: a clone is one reference count, as cheap as handing
/// the metrics to every request and task needs it to be.
#[derive(Debug, Clone)]
pub struct Metrics(Arc<Registered>);

impl std::ops::Deref for Metrics {
    type Target = Registered;

    fn deref(&self) -> &Registered {
        &self.0
    }
}

#[derive(Debug)]
pub struct Registered {
    registry: Registry,
    pub ledger_movements_applied_total: IntCounter,
    pub ledger_movements_superseded_total: IntCounter,
    pub ledger_duplicates_skipped_total: IntCounter,
    pub ledger_conflicts_retried_total: IntCounter,
    pub ledger_batch_retries_total: IntCounter,
    pub ledger_dlq_records_total: IntCounterVec,
    pub ledger_batch_size_movements: Histogram,
    pub ledger_apply_duration_seconds: Histogram,
    pub ledger_consumer_lag_messages: IntGaugeVec,
    pub ledger_stock_publish_failures_total: IntCounter,
    pub ledger_offset_gaps_total: IntCounter,
    pub api_movements_total: IntCounterVec,
    pub api_requests_refused_total: IntCounterVec,
    pub query_reads_total: IntCounterVec,
    pub query_cache_preloaded_skus: IntGauge,
    pub reservations_requests_total: IntCounterVec,
    pub source_behind_movements: IntGaugeVec,
    pub source_behind_seconds: IntGaugeVec,
    pub source_gap: IntGaugeVec,
    pub source_healthy: IntGaugeVec,
    pub reservations_closed_total: IntCounterVec,
    pub component_up: IntGaugeVec,
    pub component_restarts_total: IntCounterVec,
    pub ledger_assigned_partitions: IntGauge,
    pub ledger_rejoins_total: IntCounter,
    pub ledger_offsets_beyond_end_total: IntCounter,
    pub ledger_refused_batches_total: IntCounter,
    pub dlq_truncated_total: IntCounter,
    pub dead_letters_total: IntCounterVec,
    pub lease_held: IntGaugeVec,
    pub lease_takeovers_total: IntCounterVec,
    pub alerts_raised_total: IntCounterVec,
    pub alerts_resolved_total: IntCounterVec,
    pub alert_deliveries_total: IntCounterVec,
    pub ledger_duplicates_total: IntCounterVec,
    pub ledger_conflicts_total: IntCounterVec,
    pub ledger_behind_movements: IntGaugeVec,
    pub ledger_behind_seconds: IntGaugeVec,
    pub ledger_negative_levels: IntGauge,
    pub ledger_overreserved_levels: IntGauge,
    pub query_propagation_seconds: HistogramVec,
    pub source_last_movement_age_seconds: IntGaugeVec,
    pub stream_clients: IntGauge,
    pub stream_events_published_total: IntCounterVec,
    pub stream_events_sent_total: IntCounterVec,
    pub stream_slow_consumers_total: IntCounter,
    pub http_requests_total: IntCounterVec,
    pub http_request_duration_seconds: HistogramVec,
    pub reservations_held_units: IntGauge,
    pub build_info: IntGaugeVec,
    pub orders_received_total: IntCounterVec,
    pub orders_decided_total: IntCounterVec,
    pub orders_decision_seconds: Histogram,
    pub orders_waiting: IntGauge,
    pub orders_oldest_waiting_seconds: IntGauge,
    pub orders_unsettled_total: IntCounter,
    pub orders_back_in_stock_told_total: IntCounter,
    pub orders_worker_lag: IntGaugeVec,
}

impl Metrics {
    /// Counts an alert this replica raised or resolved.
    pub fn count_alert(&self, alert: &crate::event::alert::Alert) {
        let counter = match alert.state {
            crate::event::alert::AlertState::Resolved => &self.alerts_resolved_total,
            _ => &self.alerts_raised_total,
        };
        counter.with_label_values(&[alert.kind.as_str()]).inc();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("a valid metric");
            registry.register(Box::new(c.clone())).expect("a metric registered once");
            c
        };
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("a valid metric");
            registry.register(Box::new(c.clone())).expect("a metric registered once");
            c
        };
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets)).expect("a valid metric");
            registry.register(Box::new(h.clone())).expect("a metric registered once");
            h
        };
        let lag = IntGaugeVec::new(
            Opts::new("onhand_ledger_consumer_lag_messages", "Movements on a partition not applied yet."),
            &["partition"],
        )
        .expect("a valid metric");
        registry.register(Box::new(lag.clone())).expect("a metric registered once");
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("a valid metric");
            registry.register(Box::new(g.clone())).expect("a metric registered once");
            g
        };

        // Every system is a series from the start, so that a rate over it is defined
        // before the first event.
        let by_system = |name: &str, help: &str| {
            let c = counter_vec(name, help, &["source"]);
            for system in SourceSystem::ALL {
                c.with_label_values(&[system.as_str()]);
            }
            c
        };
        let by_partition = |name: &str, help: &str| {
            let g = IntGaugeVec::new(Opts::new(name, help), &["partition"]).expect("a valid metric");
            registry.register(Box::new(g.clone())).expect("a metric registered once");
            g
        };
        let propagation = HistogramVec::new(
            HistogramOpts::new(
                "onhand_query_propagation_seconds",
                "Time from a movement's recorded_at to its level in this instance's cache, by the movement's \
                 source system.",
            )
            .buckets(exponential_buckets(0.01, 2.0, 16).expect("valid buckets")),
            &["source"],
        )
        .expect("a valid metric");
        registry.register(Box::new(propagation.clone())).expect("a metric registered once");

        // The route is its template (`/v1/stock/{sku}`), so the labels stay a small set.
        let http_duration = HistogramVec::new(
            HistogramOpts::new(
                "onhand_http_request_duration_seconds",
                "Time to answer an HTTP request, by route and method.",
            )
            .buckets(exponential_buckets(0.000_5, 2.0, 16).expect("valid buckets")),
            &["route", "method"],
        )
        .expect("a valid metric");
        registry.register(Box::new(http_duration.clone())).expect("a metric registered once");
        let build_info =
            IntGaugeVec::new(Opts::new("onhand_build_info", "1, labelled with the running version."), &["version"])
                .expect("a valid metric");
        registry.register(Box::new(build_info.clone())).expect("a metric registered once");
        build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);

        let orders_worker_lag = IntGaugeVec::new(
            Opts::new(
                "onhand_orders_worker_lag",
                "Records of the orders topic a worker has not read yet, per partition it holds (every 5 s).",
            ),
            &["partition"],
        )
        .expect("a valid metric");
        registry.register(Box::new(orders_worker_lag.clone())).expect("a metric registered once");
        let gauge_vec = |name: &str, help: &str| {
            let g = IntGaugeVec::new(Opts::new(name, help), &["source"]).expect("a valid metric");
            registry.register(Box::new(g.clone())).expect("a metric registered once");
            g
        };

        Self(Arc::new(Registered {
            source_behind_movements: gauge_vec(
                "onhand_source_behind_movements",
                "Movements a source (a store agent) holds that have not arrived, by source.",
            ),
            source_behind_seconds: gauge_vec(
                "onhand_source_behind_seconds",
                "Age of the oldest movement a source holds that has not arrived, by source.",
            ),
            source_gap: gauge_vec(
                "onhand_source_gap",
                "1 when a source's sequence numbers have had a hole for longer than sources.gap_alert_s.",
            ),
            source_healthy: gauge_vec("onhand_source_healthy", "1 when a source reports itself healthy."),
            ledger_movements_applied_total: counter(
                "onhand_ledger_movements_applied_total",
                "Movements that changed a stock level.",
            ),
            ledger_movements_superseded_total: counter(
                "onhand_ledger_movements_superseded_total",
                "Movements recorded without changing a level because a newer count covers them.",
            ),
            ledger_duplicates_skipped_total: counter(
                "onhand_ledger_duplicates_skipped_total",
                "Movements skipped because their event_id was already recorded.",
            ),
            ledger_conflicts_retried_total: counter(
                "onhand_ledger_conflicts_retried_total",
                "Stock level writes that lost an optimistic-concurrency check and were redone.",
            ),
            ledger_batch_retries_total: counter(
                "onhand_ledger_batch_retries_total",
                "Batches whose transaction failed and was retried.",
            ),
            ledger_dlq_records_total: counter_vec(
                "onhand_ledger_dlq_records_total",
                "Records sent to the dead-letter topic, by reject code.",
                &["reason"],
            ),
            ledger_batch_size_movements: histogram(
                "onhand_ledger_batch_size_movements",
                "Records per applied batch.",
                exponential_buckets(1.0, 4.0, 9).expect("valid buckets"),
            ),
            ledger_apply_duration_seconds: histogram(
                "onhand_ledger_apply_duration_seconds",
                "Time to apply one batch in the database, commit included.",
                exponential_buckets(0.000_5, 2.0, 16).expect("valid buckets"),
            ),
            ledger_consumer_lag_messages: lag,
            ledger_stock_publish_failures_total: counter(
                "onhand_ledger_stock_publish_failures_total",
                "Stock levels that could not be published to the stock topic.",
            ),
            ledger_offset_gaps_total: counter(
                "onhand_ledger_offset_gaps_total",
                "Movements that expired from Kafka before the ledger read them (retention shorter than an outage).",
            ),
            api_movements_total: counter_vec(
                "onhand_api_movements_total",
                "Movements posted to the HTTP API, by outcome (accepted, rejected, failed).",
                &["outcome"],
            ),
            api_requests_refused_total: counter_vec(
                "onhand_api_requests_refused_total",
                "Requests refused before their route ran, by error code (missing_api_key, invalid_api_key, \
                 insufficient_scope, rate_limited, unavailable).",
                &["reason"],
            ),
            query_reads_total: counter_vec(
                "onhand_query_reads_total",
                "Stock reads by where the answer came from (cache, database, stale).",
                &["source"],
            ),
            query_cache_preloaded_skus: gauge(
                "onhand_query_cache_preloaded_skus",
                "SKUs the cache loaded at start (set when done).",
            ),
            reservations_requests_total: counter_vec(
                "onhand_reservations_requests_total",
                "Reservation requests by outcome (held, short, replayed, refused).",
                &["outcome"],
            ),
            reservations_closed_total: counter_vec(
                "onhand_reservations_closed_total",
                "Reservations that stopped holding units, by status (committed, cancelled, expired).",
                &["status"],
            ),
            component_up: {
                let g = IntGaugeVec::new(
                    Opts::new(
                        "onhand_component_up",
                        "1 when a component of this process runs (or finished as intended), 0 when it is starting, \
                         blocked, restarting or failed; GET /readyz says why.",
                    ),
                    &["component"],
                )
                .expect("a valid metric");
                registry.register(Box::new(g.clone())).expect("a metric registered once");
                g
            },
            component_restarts_total: counter_vec(
                "onhand_component_restarts_total",
                "Times a supervised component failed (an error that may pass, or a panic) and was started again.",
                &["component"],
            ),
            ledger_assigned_partitions: gauge(
                "onhand_ledger_assigned_partitions",
                "Partitions of the movements topic this ledger consumer owns now.",
            ),
            ledger_rejoins_total: counter(
                "onhand_ledger_rejoins_total",
                "Times the ledger left and rejoined its consumer group because it held no partition while \
                 movements waited and nobody applied them.",
            ),
            ledger_offsets_beyond_end_total: counter(
                "onhand_ledger_offsets_beyond_end_total",
                "Partitions assigned whose saved offset is beyond the partition's end (the topic was recreated): \
                 new records there are skipped until a person acts.",
            ),
            ledger_refused_batches_total: counter(
                "onhand_ledger_refused_batches_total",
                "Batches the database refused for good, searched for the movements it refuses (set aside to the \
                 dead-letter topic) so that the rest applies.",
            ),
            dlq_truncated_total: counter(
                "onhand_dlq_truncated_total",
                "Dead letters whose original was too large for the broker and went truncated, with its size and \
                 SHA-256 in headers.",
            ),
            dead_letters_total: counter_vec(
                "onhand_dead_letters_total",
                "Records sent to the dead-letter topic by any component (the ledger, connectors), by reason code \
                 (docs/events.md; a code outside that list counts as other).",
                &["reason_code"],
            ),
            lease_held: {
                let g = IntGaugeVec::new(
                    Opts::new(
                        "onhand_lease_held",
                        "1 while this replica holds the lease of a poller or inbox (and runs it), by lease name.",
                    ),
                    &["name"],
                )
                .expect("a valid metric");
                registry.register(Box::new(g.clone())).expect("a metric registered once");
                g
            },
            lease_takeovers_total: counter_vec(
                "onhand_lease_takeovers_total",
                "Times this replica took a lease over from a holder that let it expire (died, or lost the \
                 database), by lease name.",
                &["name"],
            ),
            alerts_raised_total: counter_vec(
                "onhand_alerts_raised_total",
                "Alerts this replica raised, by kind (low_stock, out_of_stock, oversold, \
                 reservation_exceeds_stock, source_silent).",
                &["kind"],
            ),
            alerts_resolved_total: counter_vec(
                "onhand_alerts_resolved_total",
                "Alerts this replica resolved, by kind.",
                &["kind"],
            ),
            alert_deliveries_total: counter_vec(
                "onhand_alert_deliveries_total",
                "Webhook delivery attempts, by outcome: delivered, retried (to be tried again) or dead (tries \
                 exhausted).",
                &["outcome"],
            ),
            ledger_duplicates_total: by_system(
                "onhand_ledger_duplicates_total",
                "Movements skipped because their event_id was already recorded, by source system.",
            ),
            ledger_conflicts_total: by_system(
                "onhand_ledger_conflicts_total",
                "Stock level writes that lost a compare-and-set and were redone, by the source system of the \
                 level's newest movement.",
            ),
            ledger_behind_movements: by_partition(
                "onhand_ledger_behind_movements",
                "Records of a partition of the movements topic after the ledger's saved offset (its high \
                 watermark less the offset the database holds).",
            ),
            ledger_behind_seconds: by_partition(
                "onhand_ledger_behind_seconds",
                "Age of the oldest record of a partition the ledger has not applied yet; 0 when none waits.",
            ),
            ledger_negative_levels: gauge(
                "onhand_ledger_negative_levels",
                "Stock levels whose on_hand is below zero (sales recorded before the stock that covered them).",
            ),
            ledger_overreserved_levels: gauge(
                "onhand_ledger_overreserved_levels",
                "Stock levels whose reserved units are more than their on_hand.",
            ),
            query_propagation_seconds: propagation,
            source_last_movement_age_seconds: gauge_vec(
                "onhand_source_last_movement_age_seconds",
                "Seconds since the newest movement the ledger recorded from a source (a store, a connector).",
            ),
            stream_clients: gauge(
                "onhand_stream_clients",
                "Clients of the live stream (GET /v1/stream, /v1/ws) connected to this instance.",
            ),
            stream_events_published_total: counter_vec(
                "onhand_stream_events_published_total",
                "Events the live stream's hub published, by kind (level, alert, source).",
                &["kind"],
            ),
            stream_events_sent_total: counter_vec(
                "onhand_stream_events_sent_total",
                "Events sent to the live stream's clients (one per client), by kind (level, alert, source).",
                &["kind"],
            ),
            stream_slow_consumers_total: counter(
                "onhand_stream_slow_consumers_total",
                "Live stream clients disconnected because they fell more than stream.client_buffer_max events \
                 behind.",
            ),
            http_requests_total: counter_vec(
                "onhand_http_requests_total",
                "HTTP requests answered, by route, method and status code.",
                &["route", "method", "status"],
            ),
            http_request_duration_seconds: http_duration,
            reservations_held_units: gauge(
                "onhand_reservations_held_units",
                "Units reserved by checkouts over every level, counted from the database every 5 s.",
            ),
            build_info,
            orders_received_total: counter_vec(
                "onhand_orders_received_total",
                "Orders posted, by outcome (received, replayed, invalid, saturated, failed).",
                &["outcome"],
            ),
            orders_decided_total: counter_vec(
                "onhand_orders_decided_total",
                "Orders the workers decided, by outcome (scheduled, or the reason of a rejection).",
                &["outcome"],
            ),
            orders_decision_seconds: histogram(
                "onhand_orders_decision_seconds",
                "Time from an order's receipt to its decision.",
                exponential_buckets(0.005, 2.0, 16).expect("valid buckets"),
            ),
            orders_waiting: gauge(
                "onhand_orders_waiting",
                "Orders received and not decided yet, counted from the database every 5 s.",
            ),
            orders_oldest_waiting_seconds: gauge(
                "onhand_orders_oldest_waiting_seconds",
                "Age of the oldest order not decided yet; 0 when none waits.",
            ),
            orders_unsettled_total: counter(
                "onhand_orders_unsettled_total",
                "Scheduled orders whose units could not be committed (held longer than orders.hold_ttl_s).",
            ),
            orders_back_in_stock_told_total: counter(
                "onhand_orders_back_in_stock_told_total",
                "Customers told that a SKU they waited for is available again (onhand.back-in-stock.v1).",
            ),
            orders_worker_lag,
            registry,
        }))
    }

    /// The registry these metrics are on, where a component defined outside core registers
    /// its own: what is registered there is rendered with the rest.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The Prometheus text exposition of every metric on the registry.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out).expect("the text encoder writes to memory");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}
