//! The order workers: a consumer group of the orders topic (run several processes to
//! share its partitions) that decides each received order once.
//!
//! For an order, the candidates of `schedule.rs` are tried in turn, each one that the
//! levels say can fill every line: its first free slot is found, every line is reserved
//! there at once (the reservations' conditional update, with the idempotency key
//! `order:{id}:{location}`, so a worker that takes the order again gets the same
//! reservation), and the decision, its slot's booking and the worker's offset are written
//! in one transaction that only a `received` order passes (`Orders::decide_order`). Then
//! the reservation is committed: its lines become sales for the ledger. An order no
//! candidate can take is rejected: `no_delivery_capacity` when stock was there but no
//! slot, else `out_of_stock` with, per line, what each location has and similar products.
//!
//! Kafka's committed offsets only shorten what a restarted worker reads again: every
//! order's decision is taken once by the database, whatever is read twice. A sweep puts
//! orders that wait too long on the topic again (a produce lost before its answer), and
//! commits the reservation of a scheduled order whose worker stopped before doing so.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use futures::{FutureExt, StreamExt};
use rdkafka::{
    consumer::{Consumer, ConsumerContext, StreamConsumer},
    producer::FutureRecord,
    statistics::Statistics,
    ClientContext, Message,
};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::{
    schedule::{self, Calendar, Slot},
    AvailableAt, BackInStockEvent, DeliveryMethod, OrderEvent, OrderOutcome, OrderRequest, OrderStatus, ShortOrderLine,
};
use crate::{
    clock::Clock,
    config::{ChannelConfig, KafkaConfig, OrdersConfig},
    db::{Booking, ChannelEvent, Db, DbError, Decided, OrderDecision, OrderRecord, Orders, PartitionOffset, Progress},
    event::{LocationId, Sku},
    health::{Component, Failure},
    kafka::{self, Producer},
    reservation::{
        service::{Caller, ReservationError, ReservationRequest, Reservations},
        Decision, LineRequest, Suggestion,
    },
    telemetry::Metrics,
};

/// The API key name the workers' reservations are made under.
pub const WORKER_OWNER: &str = "order-worker";
/// How often the sweep looks for orders to put on the topic again or to settle.
const SWEEP_INTERVAL: Duration = Duration::from_secs(5);
/// How long an order waits before the sweep puts it on the topic again (a produce lost
/// before its answer, or `onhand dev`'s broker gone with its records), and how often.
const REQUEUE_AFTER: chrono::Duration = chrono::Duration::seconds(60);
const REQUEUE_EVERY_SWEEPS: u64 = 12;
/// How long orders may wait while this worker holds no partition before it rejoins.
const REJOIN_AFTER_S: f64 = 20.0;
const SWEEP_BATCH: i64 = 500;
/// How many times a decision looks for another slot after the one it chose filled up.
const SLOT_ROUNDS_MAX: u32 = 5;

/// What the order workers need.
#[derive(Clone)]
pub struct OrderWorker {
    pub db: Arc<dyn Db>,
    pub reservations: Reservations,
    pub producer: Producer,
    pub kafka: KafkaConfig,
    pub config: OrdersConfig,
    pub channels: BTreeMap<String, ChannelConfig>,
    pub calendars: BTreeMap<LocationId, Calendar>,
    pub metrics: Metrics,
    pub clock: Clock,
    pub events: EventRelay,
    /// Sweeps run, to requeue every [`REQUEUE_EVERY_SWEEPS`].
    pub sweeps: Arc<std::sync::atomic::AtomicU64>,
}

impl std::fmt::Debug for OrderWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrderWorker").field("group_id", &self.config.group_id).finish_non_exhaustive()
    }
}

impl OrderWorker {
    /// Consumes the orders topic in the group until `shutdown`, with the sweep beside it.
    pub async fn run(self, component: Component, shutdown: CancellationToken) -> Result<(), Failure> {
        let failure = |message: String| Failure { message, retryable: true };
        let context = LagContext {
            topic: self.kafka.topics.orders.clone(),
            metrics: self.metrics.clone(),
            exported: Default::default(),
        };
        let consumer: StreamConsumer<LagContext> = kafka::client_config(&self.kafka)
            .set("group.id", &self.config.group_id)
            // Kafka's offsets follow what was read (every 5 s, and at a rebalance), so
            // that the group's lag in Kafka's own tools is right; the database decides.
            .set("enable.auto.commit", "true")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            // A worker that died hands its partitions over within 10 s, not the default 45.
            .set("session.timeout.ms", "10000")
            .set("statistics.interval.ms", "5000")
            // A customer waits for the decision: no fetch sits out librdkafka's 500 ms.
            .set("fetch.wait.max.ms", kafka::FETCH_WAIT_MAX_MS)
            .create_with_context(context)
            .map_err(|e| failure(format!("order workers: {e}")))?;
        consumer.subscribe(&[&self.kafka.topics.orders]).map_err(|e| failure(format!("order workers: {e}")))?;
        component.running();
        info!(group = %self.config.group_id, topic = %self.kafka.topics.orders, "order workers started");
        let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = sweep.tick() => {
                    let oldest = self.sweep().await;
                    self.rejoin_if_idle(&consumer, oldest);
                }
                message = consumer.recv() => {
                    let mut batch = vec![message];
                    // With it, what the topic has ready now, to decide side by side.
                    while batch.len() < self.config.in_flight_max {
                        match consumer.recv().now_or_never() {
                            Some(message) => batch.push(message),
                            None => break,
                        }
                    }
                    let batch: Vec<_> = batch
                        .into_iter()
                        .filter_map(|m| m.map_err(|e| warn!(error = %e, "order workers: kafka consumer error")).ok())
                        .collect();
                    let mut asked = Vec::with_capacity(batch.len());
                    for message in &batch {
                        // Only `received` events ask for a decision; the others tell what was decided.
                        let event = message.payload().and_then(|p| serde_json::from_slice::<OrderEvent>(p).ok());
                        if let Some(event) = event.filter(|e| e.status == OrderStatus::Received) {
                            let next_offset = message.offset() + 1;
                            asked.push((event.order_id, PartitionOffset { partition: message.partition(), next_offset }));
                        }
                    }
                    let (component, shutdown) = (&component, &shutdown);
                    let decided = futures::stream::iter(asked)
                        .map(|(id, progress)| self.decide_until_done(id, progress, component, shutdown))
                        .buffer_unordered(self.config.in_flight_max);
                    if decided.any(|done| std::future::ready(!done)).await {
                        return Ok(()); // shut down: what was not decided is read again
                    }
                    component.running();
                    // In the order read, so that each partition's stored offset only grows.
                    for message in &batch {
                        if let Err(e) = consumer.store_offset_from_message(message) {
                            warn!(error = %e, "order workers: offset not stored for kafka (the database decided the order)");
                        }
                    }
                }
            }
        }
    }

    /// Decides the order `id`, again every second while the database fails (the batch's
    /// offsets wait for it); `false` when `shutdown` came first.
    async fn decide_until_done(
        &self,
        id: String,
        progress: PartitionOffset,
        component: &Component,
        shutdown: &CancellationToken,
    ) -> bool {
        while let Err(e) = self.process(&id, progress).await {
            component.blocked(format!("the order {id} cannot be decided now: {e}"));
            tokio::select! {
                _ = shutdown.cancelled() => return false,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
        true
    }

    /// Decides the order `id` if it waits, or settles it if its commit is due.
    pub async fn process(&self, id: &str, offset: PartitionOffset) -> Result<(), DbError> {
        let Some(order) = self.db.order(id).await? else {
            warn!(order = %id, "an order id on the orders topic is not in the database; skipped");
            return Ok(());
        };
        match order.status {
            OrderStatus::Received => self.decide(&order, offset).await,
            OrderStatus::Scheduled => self.settle(&order).await,
            OrderStatus::Rejected | OrderStatus::Cancelled => Ok(()),
        }
    }

    async fn decide(&self, order: &OrderRecord, offset: PartitionOffset) -> Result<(), DbError> {
        let started = Instant::now();
        let progress = Progress { group_id: &self.config.group_id, topic: &self.kafka.topics.orders, offset };
        let reject = |reason: &str, short_lines| OrderOutcome::Rejected { reason: reason.into(), short_lines };
        let request: OrderRequest = match serde_json::from_str(&order.request) {
            Ok(request) => request,
            Err(e) => {
                error!(order = %order.id, error = %e, "a stored order cannot be read; rejected");
                return self
                    .write(order, &reject("unreadable_order", Vec::new()), None, &progress, started)
                    .await
                    .map(drop);
            }
        };
        let Some(channel) = self.channels.get(&request.channel) else {
            return self.write(order, &reject("unknown_channel", Vec::new()), None, &progress, started).await.map(drop);
        };
        if !channel.takes_payment(request.payment.method.as_str()) {
            return self.write(order, &reject("invalid_payment", Vec::new()), None, &progress, started).await.map(drop);
        }
        // The cart's soft hold gives way to the order's own reservation, just before it.
        if let Some(hold) = &request.hold {
            self.cancel(hold).await;
        }
        let skus: Vec<Sku> = request.lines.iter().map(|l| l.sku.clone()).collect();
        let levels = self.db.stock_by_skus(&skus).await?;
        let available: BTreeMap<(Sku, LocationId), i64> =
            levels.iter().map(|l| ((l.sku.clone(), l.location.clone()), l.available())).collect();
        let fits = |location: &LocationId| {
            request
                .lines
                .iter()
                .all(|l| available.get(&(l.sku.clone(), location.clone())).is_some_and(|a| *a >= l.quantity))
        };
        let known: Vec<LocationId> =
            levels.iter().map(|l| l.location.clone()).collect::<BTreeSet<_>>().into_iter().collect();
        let candidates =
            schedule::candidates(&request.delivery, channel, &self.config.regions, &self.calendars, &known);
        let method = request.delivery.method;
        let (mut no_slot, mut raced) = (false, false);
        for location in candidates.iter().filter(|l| fits(l)) {
            let Some(mut slot) = self.first_slot(location, method).await? else {
                no_slot = true;
                continue;
            };
            let lines = request
                .lines
                .iter()
                .map(|l| LineRequest { sku: l.sku.clone(), quantity: l.quantity, location: Some(location.clone()) })
                .collect();
            let ask =
                ReservationRequest { channel: request.channel.clone(), lines, ttl_s: Some(self.config.hold_ttl_s) };
            let key = format!("order:{}:{location}", order.id);
            let reservation = match self.hold(&order.id, &key, &ask).await? {
                // A hold taken by a worker that died longer ago than orders.hold_ttl_s has
                // expired: its replayed answer holds nothing, so hold again under a new key.
                Some(held) if held.expires_at <= self.clock.now() => {
                    let key = format!("{key}:{}", self.clock.now().timestamp_micros());
                    self.hold(&order.id, &key, &ask).await?
                }
                held => held,
            };
            // Another writer took the units since the levels were read: the next one.
            let Some(reservation) = reservation else {
                raced = true;
                continue;
            };
            for _ in 0..SLOT_ROUNDS_MAX {
                let outcome = OrderOutcome::Scheduled {
                    location: location.clone(),
                    method,
                    date: slot.date,
                    slot: slot.slot.clone(),
                    reservation_id: reservation.id.clone(),
                };
                let booking = Booking {
                    location: location.as_str(),
                    method: method.as_str(),
                    date: slot.date,
                    slot: &slot.slot,
                    capacity: self.calendars.get(location).map_or(0, |c| c.capacity(method)),
                };
                match self.write(order, &outcome, Some(booking), &progress, started).await? {
                    Decided::Done => return self.commit(&order.id, &reservation.id).await,
                    Decided::Already => return self.settle_again(order, &reservation.id).await,
                    Decided::SlotFull => match self.first_slot(location, method).await? {
                        Some(next) => slot = next,
                        None => break,
                    },
                }
            }
            // No slot left here after all: give the units back and try the next location.
            no_slot = true;
            self.cancel(&reservation.id).await;
        }
        if no_slot {
            return self
                .write(order, &reject("no_delivery_capacity", Vec::new()), None, &progress, started)
                .await
                .map(drop);
        }
        // What other orders took meanwhile is in the levels now, not in those read first.
        let levels = if raced { self.db.stock_by_skus(&skus).await? } else { levels };
        let short_lines = self.short_lines(order, &request, channel, &candidates, &levels).await?;
        self.write(order, &reject("out_of_stock", short_lines), None, &progress, started).await.map(drop)
    }

    /// Reserves an order's lines under `key`: the reservation, or `None` when they are
    /// short or the reservation is refused (the next candidate is tried).
    async fn hold(
        &self,
        order_id: &str,
        key: &str,
        ask: &ReservationRequest,
    ) -> Result<Option<crate::reservation::Reservation>, DbError> {
        match self.reservations.reserve(WORKER_OWNER, key, ask).await {
            Ok(Decision::Held(reservation)) => Ok(Some(reservation)),
            Ok(Decision::Short(_)) => Ok(None),
            Err(ReservationError::Db(e)) => Err(e),
            Err(e) => {
                warn!(order = %order_id, error = %e, "an order's reservation was refused; trying the next location");
                Ok(None)
            }
        }
    }

    /// The lines of a rejected order that no candidate could fill, each with what every
    /// location of the channel has, and similar products for a line the channel as a whole
    /// is short of: those come from a reservation of the short lines across the channel,
    /// which holds nothing since they are short (and is given back at once if a receipt
    /// came meanwhile).
    async fn short_lines(
        &self,
        order: &OrderRecord,
        request: &OrderRequest,
        channel: &ChannelConfig,
        candidates: &[LocationId],
        levels: &[crate::event::StockLevel],
    ) -> Result<Vec<ShortOrderLine>, DbError> {
        let available = |sku: &Sku, location: &LocationId| {
            levels.iter().find(|l| &l.sku == sku && &l.location == location).map_or(0, |l| l.available())
        };
        let mut short: Vec<&super::OrderLine> = request
            .lines
            .iter()
            .filter(|line| !candidates.iter().any(|c| available(&line.sku, c) >= line.quantity))
            .collect();
        // Each line fits somewhere, but not all of them at one location, or units freed
        // since the race: every line is told with what each location has.
        if short.is_empty() {
            short = request.lines.iter().collect();
        }
        let mut suggestions: BTreeMap<Sku, Vec<Suggestion>> = BTreeMap::new();
        let everywhere_short: Vec<LineRequest> = short
            .iter()
            .filter(|line| {
                let of_sku: Vec<_> = levels.iter().filter(|l| l.sku == line.sku).cloned().collect();
                channel.available(&of_sku) < line.quantity
            })
            .map(|l| LineRequest { sku: l.sku.clone(), quantity: l.quantity, location: None })
            .collect();
        if !everywhere_short.is_empty() {
            let ask = ReservationRequest { channel: request.channel.clone(), lines: everywhere_short, ttl_s: Some(1) };
            let key = format!("order:{}:suggestions", order.id);
            match self.reservations.reserve(WORKER_OWNER, &key, &ask).await {
                Ok(Decision::Short(lines)) => suggestions.extend(lines.into_iter().map(|s| (s.sku, s.suggestions))),
                Ok(Decision::Held(reservation)) => self.cancel(&reservation.id).await,
                Err(ReservationError::Db(e)) => return Err(e),
                Err(e) => warn!(order = %order.id, error = %e, "no suggestions for a rejected order"),
            }
        }
        Ok(short
            .into_iter()
            .map(|line| {
                let available_at = levels
                    .iter()
                    .filter(|l| l.sku == line.sku && l.available() > 0 && channel.serves(l.location.as_str()))
                    .map(|l| AvailableAt { location: l.location.clone(), available: l.available() })
                    .collect();
                ShortOrderLine {
                    sku: line.sku.clone(),
                    requested: line.quantity,
                    available_at,
                    suggestions: suggestions.remove(&line.sku).unwrap_or_default(),
                }
            })
            .collect())
    }

    /// The first slot with room at `location`, from today.
    async fn first_slot(&self, location: &LocationId, method: DeliveryMethod) -> Result<Option<Slot>, DbError> {
        let Some(calendar) = self.calendars.get(location) else { return Ok(None) };
        let today = self.clock.now().date_naive();
        let last = today.checked_add_days(chrono::Days::new(u64::from(self.config.horizon_days))).unwrap_or(today);
        let booked: BTreeMap<(chrono::NaiveDate, String), u32> = self
            .db
            .booked_slots(location.as_str(), method.as_str(), today, last)
            .await?
            .into_iter()
            .map(|(date, slot, n)| ((date, slot), n))
            .collect();
        Ok(schedule::first_slot(calendar, method, today, self.config.horizon_days, |date, slot| {
            booked.get(&(date, slot.to_string())).copied().unwrap_or(0)
        }))
    }

    async fn write(
        &self,
        order: &OrderRecord,
        outcome: &OrderOutcome,
        booking: Option<Booking<'_>>,
        progress: &Progress<'_>,
        started: Instant,
    ) -> Result<Decided, DbError> {
        let (status, reservation_id, label) = match outcome {
            OrderOutcome::Scheduled { reservation_id, .. } => {
                (OrderStatus::Scheduled, Some(reservation_id.as_str()), "scheduled".to_string())
            }
            OrderOutcome::Rejected { reason, .. } => (OrderStatus::Rejected, None, reason.clone()),
        };
        let body = serde_json::to_string(outcome).expect("an outcome always serializes");
        let now = self.clock.now();
        let event = OrderEvent::new(&order.id, &order.channel, status, Some(outcome.clone()), now);
        let payload = event.to_json();
        let event = ChannelEvent::of_order(&event, &payload);
        let decision = OrderDecision { id: &order.id, status, decision: &body, reservation_id, booking, event, now };
        let decided = self.db.decide_order(&decision, Some(progress)).await?;
        if decided == Decided::Done {
            self.events.kick();
            let m = &self.metrics;
            m.orders_decided_total.with_label_values(&[&label]).inc();
            m.orders_decision_seconds.observe(seconds_since(order.received_at, now));
            tracing::debug!(order = %order.id, outcome = %label, elapsed_ms = started.elapsed().as_millis() as u64, "order decided");
        }
        Ok(decided)
    }

    /// Another worker decided the order first: keep the reservation only if it is the one
    /// the decision names.
    async fn settle_again(&self, order: &OrderRecord, reservation_id: &str) -> Result<(), DbError> {
        let now = self.db.order(&order.id).await?;
        match now.and_then(|o| o.reservation_id) {
            Some(id) if id == reservation_id => self.commit(&order.id, reservation_id).await,
            _ => {
                self.cancel(reservation_id).await;
                Ok(())
            }
        }
    }

    /// Commits a scheduled order's reservation if it is still held.
    async fn settle(&self, order: &OrderRecord) -> Result<(), DbError> {
        match &order.reservation_id {
            Some(reservation_id) => self.commit(&order.id, reservation_id).await,
            None => Ok(()),
        }
    }

    async fn commit(&self, order_id: &str, reservation_id: &str) -> Result<(), DbError> {
        match self.reservations.commit(reservation_id, &admin()).await {
            Ok(_) => Ok(()),
            Err(ReservationError::Db(e)) => Err(e),
            Err(e) => {
                // Cancelled by the customer meanwhile: its units went back, as they should.
                if self.db.order(order_id).await?.is_some_and(|o| o.status == OrderStatus::Cancelled) {
                    return Ok(());
                }
                // Held longer than orders.hold_ttl_s: the units went back before the commit.
                error!(order = %order_id, reservation = %reservation_id, error = %e, "a scheduled order's units could not be committed");
                self.metrics.orders_unsettled_total.inc();
                Ok(())
            }
        }
    }

    async fn cancel(&self, reservation_id: &str) {
        if let Err(e) = self.reservations.cancel(reservation_id, &admin()).await {
            warn!(reservation = %reservation_id, error = %e, "an order's reservation not cancelled; it expires by itself");
        }
    }

    /// Puts orders that wait too long on the topic again, settles scheduled orders whose
    /// commit did not happen, and refreshes the queue's gauges.
    /// Answers the age of the oldest waiting order, in seconds.
    async fn sweep(&self) -> f64 {
        self.sweeps.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let now = self.clock.now();
        let oldest = match self.db.order_queue().await {
            Ok(queue) => {
                let age = queue.oldest_received_at.map_or(0.0, |at| seconds_since(at, now));
                set_queue_gauges(&self.metrics, queue.waiting, age);
                age
            }
            Err(e) => {
                warn!(error = %e, "the order queue cannot be measured now");
                0.0
            }
        };
        self.events.run_once().await;
        let requeue = self.sweeps.load(std::sync::atomic::Ordering::Relaxed) % REQUEUE_EVERY_SWEEPS == 0;
        let due = if requeue { self.db.waiting_orders(now - REQUEUE_AFTER, SWEEP_BATCH).await } else { Ok(Vec::new()) };
        match due {
            Ok(ids) => {
                for id in ids {
                    let Ok(Some(order)) = self.db.order(&id).await else { continue };
                    let event = OrderEvent::new(&id, &order.channel, OrderStatus::Received, None, order.received_at);
                    let payload = event.to_json();
                    let record = FutureRecord::to(&self.kafka.topics.orders).key(&id).payload(&payload);
                    let timeout = Duration::from_millis(self.kafka.produce_timeout_ms);
                    if let Err((e, _)) = self.producer.send(record, timeout).await {
                        warn!(order = %id, error = %e, "a waiting order not put on the topic again");
                    }
                }
            }
            Err(e) => warn!(error = %e, "waiting orders cannot be read now"),
        }
        if let Err(e) = self.tell_back_in_stock().await {
            warn!(error = %e, "back-in-stock wishes not checked now");
        }
        let since = now - chrono::Duration::seconds(self.config.hold_ttl_s as i64);
        match self.db.unsettled_orders(since, SWEEP_BATCH).await {
            Ok(unsettled) => {
                for (order, reservation) in unsettled {
                    if let Err(e) = self.commit(&order, &reservation).await {
                        warn!(order = %order, error = %e, "a scheduled order not settled now");
                    }
                }
            }
            Err(e) => warn!(error = %e, "unsettled orders cannot be read now"),
        }
        oldest
    }

    /// A worker that holds no partition while orders wait leaves the group and joins it
    /// again, which makes any broker rebalance (as the ledger's watchdog does: a member
    /// killed and started again at once may join beside its ghost and get nothing).
    fn rejoin_if_idle(&self, consumer: &StreamConsumer<LagContext>, oldest_waiting_s: f64) {
        let idle = consumer.assignment().map(|a| a.count() == 0).unwrap_or(false);
        if idle && oldest_waiting_s > REJOIN_AFTER_S {
            warn!(oldest_waiting_s, "the order workers hold no partition while orders wait; rejoining the group");
            consumer.unsubscribe();
            if let Err(e) = consumer.subscribe(&[&self.kafka.topics.orders]) {
                error!(error = %e, "the order workers cannot subscribe again");
            }
        }
    }
}

/// The workers' consumer context: from librdkafka's statistics, every 5 s, how many
/// records of each partition this worker holds it has not read yet (decisions and other
/// events it skips count as read), as `onhand_orders_worker_lag`. A partition it no longer
/// holds loses its series.
#[derive(Debug)]
pub struct LagContext {
    topic: String,
    metrics: Metrics,
    exported: std::sync::Mutex<BTreeSet<i32>>,
}

impl ClientContext for LagContext {
    fn stats(&self, statistics: Statistics) {
        let gauge = &self.metrics.orders_worker_lag;
        let partitions = statistics.topics.get(&self.topic).map(|t| &t.partitions);
        let held: BTreeMap<i32, i64> = partitions
            .into_iter()
            .flatten()
            .filter(|(&partition, stats)| partition >= 0 && stats.desired && stats.hi_offset >= 0)
            .map(|(&partition, stats)| {
                // Nothing read yet: what the group committed, else all that is kept, waits.
                let read = [stats.app_offset, stats.committed_offset, stats.lo_offset].into_iter().find(|o| *o >= 0);
                (partition, stats.hi_offset.saturating_sub(read.unwrap_or(0)).max(0))
            })
            .collect();
        let mut exported = self.exported.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for gone in exported.iter().filter(|p| !held.contains_key(p)) {
            let _ = gauge.remove_label_values(&[&gone.to_string()]);
        }
        for (partition, lag) in &held {
            gauge.with_label_values(&[&partition.to_string()]).set(*lag);
        }
        *exported = held.into_keys().collect();
    }
}

impl ConsumerContext for LagContext {}

/// Sends the order outbox's events to the orders topic, oldest first, and forgets those
/// Kafka acknowledged; what fails stays for the next round (the workers' sweep). One
/// relay a process, shared by its API and its workers: a change kicks it, and one round
/// runs at a time, again while changes came in meanwhile.
#[derive(Clone)]
pub struct EventRelay(Arc<RelayInner>);

struct RelayInner {
    db: Arc<dyn Orders>,
    producer: Producer,
    kafka: KafkaConfig,
    running: tokio::sync::Mutex<()>,
    again: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for EventRelay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventRelay").field("topic", &self.0.kafka.topics.orders).finish_non_exhaustive()
    }
}

impl EventRelay {
    pub fn new(db: Arc<dyn Orders>, producer: Producer, kafka: KafkaConfig) -> EventRelay {
        EventRelay(Arc::new(RelayInner {
            db,
            producer,
            kafka,
            running: tokio::sync::Mutex::new(()),
            again: std::sync::atomic::AtomicBool::new(false),
        }))
    }

    pub fn producer(&self) -> Producer {
        self.0.producer.clone()
    }

    /// Sends what the outbox holds soon, without waiting for it.
    pub fn kick(&self) {
        use std::sync::atomic::Ordering;
        self.0.again.store(true, Ordering::SeqCst);
        let relay = self.clone();
        tokio::spawn(async move {
            let Ok(_running) = relay.0.running.try_lock() else { return };
            while relay.0.again.swap(false, Ordering::SeqCst) {
                relay.round().await;
            }
        });
    }

    /// One round, waited for (the sweep's).
    pub async fn run_once(&self) {
        let _running = self.0.running.lock().await;
        self.round().await;
    }

    async fn round(&self) {
        let RelayInner { db, producer, kafka, .. } = &*self.0;
        let records = match db.order_outbox(SWEEP_BATCH).await {
            Ok(records) => records,
            Err(e) => return warn!(error = %e, "the order outbox cannot be read now"),
        };
        if records.is_empty() {
            return;
        }
        let timeout = Duration::from_millis(kafka.produce_timeout_ms);
        let sends = records.iter().map(|r| async move {
            let record = FutureRecord::to(&kafka.topics.orders).key(&r.key).payload(&r.payload);
            producer.send(record, timeout).await.ok().map(|_| r.id)
        });
        let sent: Vec<i64> = futures::future::join_all(sends).await.into_iter().flatten().collect();
        if let Err(e) = db.delete_order_outbox(&sent).await {
            warn!(error = %e, "sent order events not forgotten; they are sent again");
        }
    }
}

impl OrderWorker {
    /// Tells each customer waiting for a SKU that the channel has it again, once.
    async fn tell_back_in_stock(&self) -> Result<(), DbError> {
        let waiting = self.db.waiting_back_in_stock(SWEEP_BATCH).await?;
        if waiting.is_empty() {
            return Ok(());
        }
        let skus: Vec<Sku> = waiting.iter().map(|w| w.sku.clone()).collect::<BTreeSet<_>>().into_iter().collect();
        let levels = self.db.stock_by_skus(&skus).await?;
        let mut told = 0;
        for wish in waiting {
            let Some(channel) = self.channels.get(&wish.channel) else { continue };
            let of_sku: Vec<_> = levels.iter().filter(|l| l.sku == wish.sku).cloned().collect();
            let available = channel.available(&of_sku);
            if available <= 0 {
                continue;
            }
            let now = self.clock.now();
            let event = BackInStockEvent {
                event_type: BackInStockEvent::TYPE.to_string(),
                event_id: format!("{}:back_in_stock", wish.id),
                id: wish.id.clone(),
                channel: wish.channel.clone(),
                sku: wish.sku.clone(),
                customer: wish.customer.clone(),
                available,
                at: now,
            };
            let json = serde_json::to_string(&event).expect("an event always serializes");
            let told_event =
                ChannelEvent { key: &wish.id, id: &event.event_id, channel: &wish.channel, payload: &json };
            if self.db.notify_back_in_stock(&wish.id, told_event, now).await? {
                told += 1;
            }
        }
        if told > 0 {
            self.metrics.orders_back_in_stock_told_total.inc_by(told);
            self.events.kick();
        }
        Ok(())
    }
}

/// The queue's gauges, set by the workers' sweep and by every `GET /v1/orders/queue` and
/// `POST /v1/orders`, so that they move even while no worker runs.
pub fn set_queue_gauges(metrics: &Metrics, waiting: i64, oldest_waiting_s: f64) {
    metrics.orders_waiting.set(waiting);
    metrics.orders_oldest_waiting_seconds.set(oldest_waiting_s as i64);
}

fn admin() -> Caller<'static> {
    Caller { key_id: WORKER_OWNER, admin: true }
}

fn seconds_since(then: DateTime<Utc>, now: DateTime<Utc>) -> f64 {
    (now - then).to_std().map_or(0.0, |d| d.as_secs_f64())
}
