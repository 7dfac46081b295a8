//! The live stream: an in-process fan-out of what changes, to the clients of
//! `GET /v1/stream` (Server-Sent Events) and `GET /v1/ws` (WebSocket) and the dashboard.
//!
//! Four kinds of events: `level` (a stock level as the stock topic carries it, with its
//! `available`), `alert` (an alert's change as the alerts topic carries it), `source` (a
//! source's health, polled from the database and sent when it changes) and `order` (an
//! order's change or a back-in-stock notice, as the orders topic carries it). Each event has
//! the id `{epoch}-{seq}`: the epoch names this hub's life (random, drawn at start), the
//! sequence grows by one per event. The hub keeps the newest `replay_events_max` events,
//! so that a client reconnecting with the last id it saw gets what it missed, without a
//! gap; an id the hub cannot resume from (another epoch, older than what it keeps, ahead of
//! it, unreadable) gets a `reset` first: the client reloads its state, then reads live.
//!
//! Every client reads the one broadcast channel of `client_buffer_max` events: a client
//! further behind than that is told it is a slow consumer and disconnected, so memory is
//! bounded by the ring and the channel whatever the clients do. At most `clients_max`
//! clients are connected at once.
//!
//! The hub reads the stock, alerts and orders topics from their end ([`kafka::follow`]), as every
//! instance's cache does: each instance streams what it sees, and shares nothing.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, VecDeque},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex, OnceLock, PoisonError,
    },
    time::{Duration, Instant},
};

use axum::body::Bytes;
use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::broadcast::{
    self,
    error::{RecvError, TryRecvError},
};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::{
    config::{KafkaConfig, SourcesConfig, StreamConfig},
    db::{Signals, Sources},
    event::{alert::AlertEvent, StockLevel},
    freshness::SourceReport,
    kafka,
    order::{BackInStockEvent, OrderEvent, OrderOutcome},
    telemetry::Metrics,
};

/// What an event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Level,
    Alert,
    Source,
    Order,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Level, Kind::Alert, Kind::Source, Kind::Order];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Level => "level",
            Kind::Alert => "alert",
            Kind::Source => "source",
            Kind::Order => "order",
        }
    }

    pub fn parse(text: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == text)
    }
}

/// One event, shared by every client that sends it.
#[derive(Debug)]
pub struct StreamEvent {
    pub seq: u64,
    /// `{epoch}-{seq}`.
    pub id: String,
    pub kind: Kind,
    /// What filters read: the SKU and location the event is about, when it is about one.
    pub sku: Option<String>,
    pub location: Option<String>,
    /// The event's JSON, on one line.
    pub data: String,
    /// When the hub published it, for the delay to each client.
    pub published_at: Instant,
    /// The event as a transport writes it, rendered once for every client.
    rendered: OnceLock<Bytes>,
}

impl StreamEvent {
    /// The event as `render` writes it, rendered by the first client that sends it: a
    /// thousand clients cost one rendering, not a thousand.
    pub fn rendered(&self, render: impl FnOnce(&StreamEvent) -> Bytes) -> Bytes {
        self.rendered.get_or_init(|| render(self)).clone()
    }
}

/// What a client asked to see: each set empty means every value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub skus: BTreeSet<String>,
    pub locations: BTreeSet<String>,
    pub kinds: BTreeSet<Kind>,
}

impl Filter {
    /// Whether `event` passes. An event about no SKU (a source's health) passes a SKU
    /// filter only when it is empty; the same for locations.
    pub fn matches(&self, event: &StreamEvent) -> bool {
        let passes = |set: &BTreeSet<String>, value: &Option<String>| {
            set.is_empty() || value.as_ref().is_some_and(|v| set.contains(v))
        };
        (self.kinds.is_empty() || self.kinds.contains(&event.kind))
            && passes(&self.skus, &event.sku)
            && passes(&self.locations, &event.location)
    }
}

/// The body of a `level` event: the level as the stock topic carries it, and what it
/// leaves available.
#[derive(Debug, Serialize)]
struct LevelData<'a> {
    #[serde(flatten)]
    level: &'a StockLevel,
    available: i64,
}

/// The body of a `source` event: a source's health as `GET /v1/sources` derives it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SourceHealth {
    pub source: String,
    /// `healthy`, `failing` (its connector says so) or `gap` (numbers missing for longer
    /// than `sources.gap_alert_s`).
    pub status: &'static str,
    pub last_heard_at: DateTime<Utc>,
    pub last_movement_at: Option<DateTime<Utc>>,
    pub behind_movements: i64,
    pub detail: Option<String>,
    pub last_error: Option<String>,
}

impl SourceHealth {
    pub fn of(report: &SourceReport) -> SourceHealth {
        let status = match (report.state.healthy, report.gap_alert) {
            (false, _) => "failing",
            (true, true) => "gap",
            (true, false) => "healthy",
        };
        SourceHealth {
            source: report.state.source.clone(),
            status,
            last_heard_at: report.state.last_heard_at,
            last_movement_at: report.last_movement_at,
            behind_movements: report.behind_movements,
            detail: report.state.detail.clone(),
            last_error: report.last_error.clone(),
        }
    }
}

/// The hub refused a client: `clients_max` are connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0} clients are connected, the most this instance takes")]
pub struct Saturated(pub usize);

/// Why the hub starts a client with a `reset` instead of what it missed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reset {
    /// The id is not one of this hub's (unreadable, another epoch: the instance restarted
    /// or the client was served by another one, or ahead of what was published).
    UnknownId,
    /// The id is this hub's, but older than the events it keeps.
    TooOld,
}

impl Reset {
    pub fn as_str(self) -> &'static str {
        match self {
            Reset::UnknownId => "unknown_event_id",
            Reset::TooOld => "event_id_too_old",
        }
    }
}

/// What a client reads next.
#[derive(Debug)]
pub enum Next {
    Event(Arc<StreamEvent>),
    /// The client fell more than `client_buffer_max` events behind: it is disconnected.
    SlowConsumer,
    /// The hub is gone (shutdown).
    Closed,
}

/// The longest `Last-Event-ID` read; anything longer is unknown.
const EVENT_ID_LEN_MAX: usize = 64;
/// How many seconds of flow the hub counts, and how many locations per second at most
/// (the others count as `other`): a location's name comes from outside.
const FLOW_SECONDS_MAX: usize = 3_600;
const FLOW_LOCATIONS_MAX: usize = 100;

/// The fan-out: cheap to clone.
#[derive(Debug, Clone)]
pub struct Hub(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    epoch: String,
    ring: Mutex<Ring>,
    sender: broadcast::Sender<Arc<StreamEvent>>,
    clients: AtomicUsize,
    config: StreamConfig,
    metrics: Metrics,
    flow: Mutex<Flow>,
    /// Ends every client's stream: the server's graceful stop waits for open responses.
    shutdown: CancellationToken,
}

#[derive(Debug, Default)]
struct Ring {
    seq: u64,
    events: VecDeque<Arc<StreamEvent>>,
}

impl Hub {
    /// A hub whose clients' streams end at `shutdown`.
    pub fn new(config: &StreamConfig, metrics: Metrics, shutdown: CancellationToken) -> Hub {
        let (sender, _) = broadcast::channel(config.client_buffer_max.max(1));
        let epoch = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
        Hub(Arc::new(Inner {
            epoch,
            ring: Mutex::new(Ring::default()),
            sender,
            clients: AtomicUsize::new(0),
            config: config.clone(),
            metrics,
            flow: Mutex::new(Flow::default()),
            shutdown,
        }))
    }

    /// This hub's life, the first part of every id it gives.
    pub fn epoch(&self) -> &str {
        &self.0.epoch
    }

    /// The most clients connected at once.
    pub fn clients_max(&self) -> usize {
        self.0.config.clients_max
    }

    /// Clients connected now.
    pub fn clients(&self) -> usize {
        self.0.clients.load(Ordering::Relaxed)
    }

    pub fn publish_level(&self, level: &StockLevel) -> Arc<StreamEvent> {
        let data = LevelData { level, available: level.available() };
        let data = serde_json::to_string(&data).expect("a level always serializes");
        self.flow().count(Kind::Level, Some(level.location.as_str()));
        self.publish(Kind::Level, Some(level.sku.to_string()), Some(level.location.to_string()), data)
    }

    pub fn publish_alert(&self, alert: &AlertEvent) -> Arc<StreamEvent> {
        let data = serde_json::to_string(alert).expect("an alert always serializes");
        let location = alert.alert.location.as_ref().map(|l| l.to_string());
        self.flow().count(Kind::Alert, location.as_deref());
        self.publish(Kind::Alert, alert.alert.sku.as_ref().map(|s| s.to_string()), location, data)
    }

    /// An order's change as the orders topic carries it: about the location a scheduled
    /// order is fulfilled from.
    pub fn publish_order(&self, order: &OrderEvent) -> Arc<StreamEvent> {
        let data = serde_json::to_string(order).expect("an order event always serializes");
        let location = match &order.decision {
            Some(OrderOutcome::Scheduled { location, .. }) => Some(location.to_string()),
            _ => None,
        };
        self.publish(Kind::Order, None, location, data)
    }

    /// A back-in-stock notice as the orders topic carries it: about its SKU.
    pub fn publish_back_in_stock(&self, told: &BackInStockEvent) -> Arc<StreamEvent> {
        let data = serde_json::to_string(told).expect("a back-in-stock event always serializes");
        self.publish(Kind::Order, Some(told.sku.to_string()), None, data)
    }

    pub fn publish_source(&self, source: &SourceHealth) -> Arc<StreamEvent> {
        let data = serde_json::to_string(source).expect("a source always serializes");
        self.publish(Kind::Source, None, None, data)
    }

    fn publish(&self, kind: Kind, sku: Option<String>, location: Option<String>, data: String) -> Arc<StreamEvent> {
        let mut ring = self.0.ring.lock().unwrap_or_else(PoisonError::into_inner);
        ring.seq += 1;
        let seq = ring.seq;
        let event = Arc::new(StreamEvent {
            seq,
            id: format!("{}-{seq}", self.0.epoch),
            kind,
            sku,
            location,
            data,
            published_at: Instant::now(),
            rendered: OnceLock::new(),
        });
        ring.events.push_back(Arc::clone(&event));
        while ring.events.len() > self.0.config.replay_events_max {
            ring.events.pop_front();
        }
        // Under the ring's lock, so that a client subscribing sees each event once: in
        // what it missed or live. No receiver is not an error.
        let _ = self.0.sender.send(Arc::clone(&event));
        self.0.metrics.stream_events_published_total.with_label_values(&[kind.as_str()]).inc();
        event
    }

    /// A new client, resuming after `last_event_id` when it gives one, seeing what
    /// `filter` lets through.
    pub fn subscribe(&self, last_event_id: Option<&str>, filter: Filter) -> Result<Subscription, Saturated> {
        let slot = Slot::take(&self.0)?;
        let ring = self.0.ring.lock().unwrap_or_else(PoisonError::into_inner);
        let live = self.0.sender.subscribe();
        let newest_id = format!("{}-{}", self.0.epoch, ring.seq);
        let (backlog, reset) = match last_event_id {
            None => (VecDeque::new(), None),
            Some(id) => match self.seq_of(id) {
                Some(after) if after > ring.seq => (VecDeque::new(), Some(Reset::UnknownId)),
                Some(after) => {
                    let oldest = ring.events.front().map_or(ring.seq + 1, |e| e.seq);
                    if after + 1 < oldest {
                        (VecDeque::new(), Some(Reset::TooOld))
                    } else {
                        let missed = ring.events.iter().filter(|e| e.seq > after && filter.matches(e));
                        (missed.cloned().collect(), None)
                    }
                }
                None => (VecDeque::new(), Some(Reset::UnknownId)),
            },
        };
        drop(ring);
        let shutdown = self.0.shutdown.clone();
        let metrics = self.0.metrics.clone();
        Ok(Subscription { reset, newest_id, backlog, live, filter, metrics, shutdown, _slot: slot })
    }

    /// The sequence of one of this hub's ids.
    fn seq_of(&self, id: &str) -> Option<u64> {
        if id.len() > EVENT_ID_LEN_MAX {
            return None;
        }
        let (epoch, seq) = id.trim().rsplit_once('-')?;
        if epoch != self.0.epoch || seq.is_empty() || !seq.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        seq.parse().ok()
    }

    fn flow(&self) -> std::sync::MutexGuard<'_, Flow> {
        self.0.flow.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// What the hub saw per second over the last `window_s` seconds (at most
    /// [`FLOW_SECONDS_MAX`]), oldest first, up to now.
    pub fn flow_stats(&self, window_s: usize) -> FlowStats {
        self.flow().stats(window_s.clamp(1, FLOW_SECONDS_MAX), Utc::now().timestamp())
    }
}

/// A place among the `clients_max`, given back when the client goes.
#[derive(Debug)]
struct Slot(Arc<Inner>);

impl Slot {
    fn take(inner: &Arc<Inner>) -> Result<Slot, Saturated> {
        let max = inner.config.clients_max;
        inner
            .clients
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1))
            .map_err(|_| Saturated(max))?;
        inner.metrics.stream_clients.inc();
        Ok(Slot(Arc::clone(inner)))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.clients.fetch_sub(1, Ordering::AcqRel);
        self.0.metrics.stream_clients.dec();
    }
}

/// One client's view of the hub.
#[derive(Debug)]
pub struct Subscription {
    /// Set when the client's last event id could not be resumed from: it is sent a
    /// `reset` first.
    pub reset: Option<Reset>,
    /// The hub's newest id when the client subscribed: the id of its `reset`, from which
    /// a client reconnecting resumes.
    pub newest_id: String,
    backlog: VecDeque<Arc<StreamEvent>>,
    live: broadcast::Receiver<Arc<StreamEvent>>,
    filter: Filter,
    metrics: Metrics,
    shutdown: CancellationToken,
    _slot: Slot,
}

impl Subscription {
    /// The next event the client's filter lets through: first what it missed, then live.
    pub async fn next(&mut self) -> Next {
        if self.shutdown.is_cancelled() {
            return Next::Closed;
        }
        if let Some(event) = self.backlog.pop_front() {
            return Next::Event(event);
        }
        loop {
            let received = tokio::select! {
                _ = self.shutdown.cancelled() => return Next::Closed,
                received = self.live.recv() => received,
            };
            match received {
                Ok(event) if self.filter.matches(&event) => return Next::Event(event),
                Ok(_) => {}
                Err(RecvError::Lagged(_)) => {
                    self.metrics.stream_slow_consumers_total.inc();
                    return Next::SlowConsumer;
                }
                Err(RecvError::Closed) => return Next::Closed,
            }
        }
    }

    /// The next event that is ready now, without waiting: `None` when none is. A
    /// transport drains what is ready into one write.
    pub fn try_next(&mut self) -> Option<Next> {
        if self.shutdown.is_cancelled() {
            return Some(Next::Closed);
        }
        if let Some(event) = self.backlog.pop_front() {
            return Some(Next::Event(event));
        }
        loop {
            match self.live.try_recv() {
                Ok(event) if self.filter.matches(&event) => return Some(Next::Event(event)),
                Ok(_) => {}
                Err(TryRecvError::Empty) => return None,
                Err(TryRecvError::Lagged(_)) => {
                    self.metrics.stream_slow_consumers_total.inc();
                    return Some(Next::SlowConsumer);
                }
                Err(TryRecvError::Closed) => return Some(Next::Closed),
            }
        }
    }

    /// Counts an event as sent to this client.
    pub fn sent(&self, event: &StreamEvent) {
        self.metrics.stream_events_sent_total.with_label_values(&[event.kind.as_str()]).inc();
    }
}

/// The flow the hub saw, per second.
#[derive(Debug, Default)]
struct Flow {
    seconds: VecDeque<Second>,
}

#[derive(Debug, Clone, Default)]
struct Second {
    at: i64,
    levels: u64,
    alerts: u64,
    by_location: HashMap<String, u64>,
}

impl Flow {
    fn count(&mut self, kind: Kind, location: Option<&str>) {
        let now = Utc::now().timestamp();
        if self.seconds.back().is_none_or(|s| s.at != now) {
            self.seconds.push_back(Second { at: now, ..Second::default() });
            while self.seconds.len() > FLOW_SECONDS_MAX {
                self.seconds.pop_front();
            }
        }
        let Some(second) = self.seconds.back_mut() else { return };
        match kind {
            Kind::Level => second.levels += 1,
            Kind::Alert => second.alerts += 1,
            Kind::Source | Kind::Order => return,
        }
        if kind == Kind::Level {
            let location = location.unwrap_or("other");
            let known = second.by_location.contains_key(location);
            let key = if known || second.by_location.len() < FLOW_LOCATIONS_MAX { location } else { "other" };
            *second.by_location.entry(key.to_string()).or_default() += 1;
        }
    }

    fn stats(&self, window_s: usize, now: i64) -> FlowStats {
        let since = now - window_s as i64 + 1;
        let mut seconds = Vec::with_capacity(window_s);
        let mut by_location: BTreeMap<String, u64> = BTreeMap::new();
        let mut kept = self.seconds.iter().filter(|s| s.at >= since && s.at <= now).peekable();
        for at in since..=now {
            match kept.next_if(|s| s.at == at) {
                Some(s) => {
                    for (location, n) in &s.by_location {
                        *by_location.entry(location.clone()).or_default() += n;
                    }
                    seconds.push(FlowSecond { at, levels: s.levels, alerts: s.alerts });
                }
                None => seconds.push(FlowSecond { at, levels: 0, alerts: 0 }),
            }
        }
        FlowStats { window_s, seconds, levels_by_location: by_location }
    }
}

/// `GET /v1/stream/stats`: level changes and alert changes the hub saw per second.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct FlowStats {
    pub window_s: usize,
    /// One per second of the window, oldest first.
    pub seconds: Vec<FlowSecond>,
    /// Level changes per location over the window (at most 100 locations a second; the
    /// rest as `other`).
    pub levels_by_location: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct FlowSecond {
    /// The second, as Unix time.
    pub at: i64,
    pub levels: u64,
    pub alerts: u64,
}

/// Feeds the hub with every level of the stock topic from its end, until `shutdown`.
pub async fn follow_levels(hub: Hub, config: KafkaConfig, shutdown: CancellationToken) {
    let topic = config.topics.stock.clone();
    kafka::follow::follow(&config, &topic, "onhand-stream-levels", shutdown, |payload, offset| {
        match serde_json::from_slice::<StockLevel>(payload) {
            Ok(level) => {
                hub.publish_level(&level);
            }
            Err(e) => warn!(error = %e, offset, "unreadable stock level not streamed"),
        }
        std::future::ready(())
    })
    .await;
}

/// Feeds the hub with every alert change of the alerts topic from its end, until `shutdown`.
pub async fn follow_alerts(hub: Hub, config: KafkaConfig, shutdown: CancellationToken) {
    let topic = config.topics.alerts.clone();
    kafka::follow::follow(&config, &topic, "onhand-stream-alerts", shutdown, |payload, offset| {
        match serde_json::from_slice::<AlertEvent>(payload) {
            Ok(alert) => {
                hub.publish_alert(&alert);
            }
            Err(e) => warn!(error = %e, offset, "unreadable alert not streamed"),
        }
        std::future::ready(())
    })
    .await;
}

/// Feeds the hub with every order change and back-in-stock notice of the orders topic
/// from its end, until `shutdown`.
pub async fn follow_orders(hub: Hub, config: KafkaConfig, shutdown: CancellationToken) {
    let topic = config.topics.orders.clone();
    kafka::follow::follow(&config, &topic, "onhand-stream-orders", shutdown, |payload, offset| {
        // The topic carries two types of event, told apart by `type`; any other is left.
        let published =
            serde_json::from_slice::<serde_json::Value>(payload).and_then(|event| match event["type"].as_str() {
                Some(OrderEvent::TYPE) => serde_json::from_value(event).map(|e| drop(hub.publish_order(&e))),
                Some(BackInStockEvent::TYPE) => {
                    serde_json::from_value(event).map(|e| drop(hub.publish_back_in_stock(&e)))
                }
                _ => Ok(()),
            });
        if let Err(e) = published {
            warn!(error = %e, offset, "unreadable order event not streamed");
        }
        std::future::ready(())
    })
    .await;
}

/// How often the sources' health is read for the stream.
pub const SOURCES_POLL_INTERVAL: Duration = Duration::from_secs(3);
/// The most sources whose health is remembered between polls.
const SOURCES_MAX: usize = 1_000;

/// Reads the sources' health every [`SOURCES_POLL_INTERVAL`] as `GET /v1/sources` does,
/// and streams each source whose health changed, until `shutdown`.
pub async fn watch_sources(
    hub: Hub,
    sources: Arc<dyn Sources>,
    signals: Arc<dyn Signals>,
    config: SourcesConfig,
    shutdown: CancellationToken,
) {
    let mut interval = tokio::time::interval(SOURCES_POLL_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last: BTreeMap<String, SourceHealth> = BTreeMap::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = interval.tick() => {}
        }
        let (Ok(states), Ok(heard)) = (sources.sources().await, signals.source_signals().await) else { continue };
        let reports = SourceReport::all(states, heard, Utc::now(), &config);
        let mut now: BTreeMap<String, SourceHealth> = BTreeMap::new();
        for report in reports.iter().take(SOURCES_MAX) {
            let health = SourceHealth::of(report);
            if last.get(&health.source) != Some(&health) {
                hub.publish_source(&health);
            }
            now.insert(health.source.clone(), health);
        }
        last = now;
    }
}

#[cfg(test)]
mod tests {
    use chrono::SubsecRound;

    use super::*;
    use crate::event::Sku;

    fn hub(replay: usize, buffer: usize, clients: usize) -> Hub {
        let config = StreamConfig { replay_events_max: replay, client_buffer_max: buffer, clients_max: clients };
        Hub::new(&config, Metrics::new(), CancellationToken::new())
    }

    fn level(sku: &str, location: &str, on_hand: i64) -> StockLevel {
        let base = crate::testing::stock_level(location, on_hand, on_hand);
        StockLevel { sku: Sku::parse(sku).unwrap(), reserved: 1, updated_at: Utc::now().trunc_subsecs(6), ..base }
    }

    async fn seqs(subscription: &mut Subscription, n: usize) -> Vec<u64> {
        let mut out = Vec::new();
        for _ in 0..n {
            match subscription.next().await {
                Next::Event(e) => out.push(e.seq),
                other => panic!("expected an event, got {other:?}"),
            }
        }
        out
    }

    #[tokio::test]
    async fn a_client_resumes_after_its_last_id_without_a_gap() {
        let hub = hub(10, 16, 10);
        let first = hub.publish_level(&level("A", "s1", 1));
        assert_eq!(first.id, format!("{}-1", hub.epoch()));
        let data: serde_json::Value = serde_json::from_str(&first.data).unwrap();
        assert_eq!((data["on_hand"].as_i64(), data["available"].as_i64()), (Some(1), Some(0)));
        for n in 2..=5 {
            hub.publish_level(&level("A", "s1", n));
        }
        let mut resumed = hub.subscribe(Some(&format!("{}-2", hub.epoch())), Filter::default()).unwrap();
        assert_eq!(resumed.reset, None);
        hub.publish_level(&level("A", "s1", 6));
        assert_eq!(seqs(&mut resumed, 4).await, [3, 4, 5, 6]);
    }

    #[tokio::test]
    async fn an_id_the_hub_cannot_resume_from_gets_a_reset() {
        let hub = hub(3, 16, 10);
        for n in 1..=6 {
            hub.publish_level(&level("A", "s1", n));
        }
        let epoch = hub.epoch().to_string();
        let reset = |id: &str| hub.subscribe(Some(id), Filter::default()).unwrap().reset;
        assert_eq!(reset(&format!("{epoch}-1")), Some(Reset::TooOld), "older than the ring");
        assert_eq!(reset(&format!("{epoch}-3")), None, "the event just before the oldest kept");
        assert_eq!(reset(&format!("{epoch}-7")), Some(Reset::UnknownId), "ahead of the hub");
        assert_eq!(reset("otherepoch-3"), Some(Reset::UnknownId));
        assert_eq!(reset(&format!("{epoch}-99999999999999999999999")), Some(Reset::UnknownId));
        assert_eq!(reset(&"9".repeat(10_000)), Some(Reset::UnknownId));
        assert_eq!(reset(&format!("{epoch}--1")), Some(Reset::UnknownId));
        assert_eq!(reset(""), Some(Reset::UnknownId));
    }

    #[tokio::test]
    async fn a_client_behind_its_buffer_is_a_slow_consumer() {
        let hub = hub(100, 4, 10);
        let mut slow = hub.subscribe(None, Filter::default()).unwrap();
        for n in 1..=10 {
            hub.publish_level(&level("A", "s1", n));
        }
        assert!(matches!(slow.next().await, Next::SlowConsumer));
    }

    #[tokio::test]
    async fn filters_let_through_what_was_asked() {
        let hub = hub(100, 64, 10);
        let filter = Filter { skus: ["B".to_string()].into(), locations: BTreeSet::new(), kinds: [Kind::Level].into() };
        let mut only_b = hub.subscribe(None, filter).unwrap();
        hub.publish_level(&level("A", "s1", 1));
        hub.publish_level(&level("B", "s2", 2));
        assert_eq!(seqs(&mut only_b, 1).await, [2]);
    }

    #[test]
    fn no_more_than_clients_max_are_connected() {
        let hub = hub(10, 4, 2);
        let a = hub.subscribe(None, Filter::default()).unwrap();
        let _b = hub.subscribe(None, Filter::default()).unwrap();
        assert_eq!(hub.subscribe(None, Filter::default()).unwrap_err(), Saturated(2));
        drop(a);
        let _c = hub.subscribe(None, Filter::default()).expect("a place is given back");
        assert_eq!(hub.clients(), 2);
    }

    #[test]
    fn the_flow_counts_levels_per_second_and_location() {
        let mut flow = Flow::default();
        flow.count(Kind::Level, Some("s1"));
        flow.count(Kind::Level, Some("s2"));
        flow.count(Kind::Alert, Some("s1"));
        let now = Utc::now().timestamp();
        let stats = flow.stats(5, now);
        assert_eq!(stats.seconds.len(), 5);
        assert_eq!(stats.seconds.iter().map(|s| s.levels).sum::<u64>(), 2);
        assert_eq!(stats.seconds.iter().map(|s| s.alerts).sum::<u64>(), 1);
        assert_eq!(stats.levels_by_location.get("s1"), Some(&1));
    }
}
