//! onhand to Shopify: the web store shows the availability of one channel.
//!
//! The sink follows the stock topic in its own consumer group (replicas split the
//! partitions) and marks each SKU whose level at a serving location changed as pending.
//! The pending set holds each SKU once, however many changes arrive, and is bounded: when
//! full, the sink stops reading until pushes make room, and Kafka keeps the rest. A push
//! reads the SKU's levels from the database at that moment, so it always sends the newest
//! value, and a value computed earlier can never overwrite a newer one, even when Shopify
//! was offline for hours or two replicas push the same SKU.
//!
//! Pushes go in batches through `inventorySetQuantities`, each quantity compared with what
//! Shopify is believed to hold (`changeFromQuantity`), with an idempotency key derived from
//! the items and their level versions. A stale compare re-reads the quantity and retries;
//! throttling waits for the cost bucket to refill; 5xx and timeouts back off. Offsets are
//! committed only when nothing is pending, so a restart re-reads what was not pushed.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::Duration,
};

use onhand_core::{
    backoff::Backoff,
    config::ChannelConfig,
    event::{Sku, StockLevel},
    kafka,
};
use rdkafka::{
    consumer::{CommitMode, Consumer, StreamConsumer},
    Message,
};
use sha2::{Digest, Sha256};
use tokio::time::Instant;
use tracing::{error, info, warn};

use super::{
    client::{AdminError, SetQuantity},
    config::{SinkConfig, NAME},
    mapping::INVENTORY_ITEM_ATTRIBUTE,
    shared::{pushed_key, Shared, ShopifyError, SINK_SOURCE},
};

/// The SKUs waiting for a push, each once. A SKU marked again while its push is under way
/// stays pending, so the newer value goes out too.
///
/// The sink marks a SKU for every stock record it reads and looks for the oldest SKUs on
/// every loop, with up to `pending_items_max` of them pending, so no operation may scan
/// them all: `items` finds a SKU by name, and `queue` holds the same SKUs ordered by when
/// they were first marked, so the oldest are at its front. Marking, finding the due time
/// and forgetting a SKU cost O(log n); taking `count` SKUs costs O(count + log n).
#[derive(Debug, Default)]
pub struct Pending {
    items: HashMap<Sku, Entry>,
    /// (first marked, the generation of that first mark) to SKU. The generation makes
    /// each key unique, and orders SKUs first marked at the same instant as they came.
    queue: BTreeMap<(Instant, u64), Sku>,
    generation: u64,
}

/// A pending SKU: its key in the queue, and the generation of its newest mark.
#[derive(Debug, Clone, Copy)]
struct Entry {
    queued: (Instant, u64),
    generation: u64,
}

impl Pending {
    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn contains(&self, sku: &Sku) -> bool {
        self.items.contains_key(sku)
    }

    /// Marks a SKU changed at `now`; it keeps the time it was first marked, for lingering.
    pub fn mark(&mut self, sku: Sku, now: Instant) {
        self.generation += 1;
        let generation = self.generation;
        match self.items.get_mut(&sku) {
            Some(entry) => entry.generation = generation,
            None => {
                let queued = (now, generation);
                self.queue.insert(queued, sku.clone());
                self.items.insert(sku, Entry { queued, generation });
            }
        }
    }

    /// When the oldest pending SKU has lingered long enough.
    pub fn due_at(&self, linger: Duration) -> Option<Instant> {
        self.queue.keys().next().map(|(at, _)| *at + linger)
    }

    /// Up to `count` SKUs, oldest first, with the generation each had. They stay pending
    /// until [`Pending::done`], so a push that fails is taken again.
    pub fn take(&self, count: usize) -> Vec<(Sku, u64)> {
        self.queue.values().take(count).map(|sku| (sku.clone(), self.items[sku].generation)).collect()
    }

    /// Forgets a SKU that was pushed, unless it was marked again since it was taken.
    pub fn done(&mut self, sku: &Sku, generation: u64) {
        if let Some(entry) = self.items.get(sku).filter(|e| e.generation == generation) {
            self.queue.remove(&entry.queued);
            self.items.remove(sku);
        }
    }
}

/// The idempotency key of one push: the same items at the same level versions with the
/// same compare give the same key, so a retry after a timeout is applied once.
pub fn idempotency_key(items: &[(u64, i64, i64, i64)]) -> String {
    let mut hash = Sha256::new();
    for (item, quantity, change_from, version) in items {
        hash.update(format!("{item}:{quantity}:{change_from}:{version};"));
    }
    format!("onhand-{}", &hex::encode(hash.finalize())[..40])
}

/// One SKU ready to push.
#[derive(Debug, Clone)]
struct Planned {
    sku: Sku,
    generation: u64,
    inventory_item_id: u64,
    available: i64,
    version: i64,
}

struct Sink {
    shared: Arc<Shared>,
    config: SinkConfig,
    channel: ChannelConfig,
    pending: Pending,
    /// What Shopify holds per inventory item, as last read or set: the next compare.
    known: HashMap<u64, i64>,
    /// What was last written to `connector_state` per item, to skip writing it again.
    recorded: HashMap<u64, i64>,
    backoff: Backoff,
    not_before: Instant,
}

/// Runs the sink until shutdown.
pub async fn run(shared: Arc<Shared>, config: SinkConfig) -> Result<(), ShopifyError> {
    let context = &shared.context;
    let channel = context.config.channels.get(&config.channel).cloned().unwrap_or_default();
    let consumer: StreamConsumer = kafka::client_config(&context.config.kafka)
        .set("group.id", &config.group_id)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", kafka::FETCH_WAIT_MAX_MS)
        .create()?;
    consumer.subscribe(&[&context.topics.stock])?;
    info!(channel = %config.channel, location_id = config.location_id, "shopify sink following the stock topic");
    let backoff = shared.config.http.backoff();
    let mut sink = Sink {
        shared: Arc::clone(&shared),
        config,
        channel,
        pending: Pending::default(),
        known: HashMap::new(),
        recorded: HashMap::new(),
        backoff,
        not_before: Instant::now(),
    };
    sink.run(&consumer).await;
    Ok(())
}

impl Sink {
    async fn run(&mut self, consumer: &StreamConsumer) {
        let shutdown = self.shared.context.shutdown.clone();
        let linger = Duration::from_millis(self.config.linger_ms);
        loop {
            let flush_at = self.pending.due_at(linger).map(|due| due.max(self.not_before));
            let room = self.pending.len() < self.config.pending_items_max;
            tokio::select! {
                _ = shutdown.cancelled() => return,
                message = consumer.recv(), if room => match message {
                    Ok(message) => self.on_record(message.payload()),
                    Err(e) => warn!(error = %e, "stock topic read failed"),
                },
                _ = tokio::time::sleep_until(flush_at.unwrap_or_else(Instant::now)), if flush_at.is_some() => {
                    self.flush().await;
                    if self.pending.is_empty() {
                        // Every change read so far reached Shopify: a restart may start here.
                        if let Err(e) = consumer.commit_consumer_state(CommitMode::Async) {
                            warn!(error = %e, "sink offsets not committed; a restart re-reads some levels");
                        }
                    }
                }
            }
            self.shared.metrics.pending_items.set(self.pending.len() as i64);
        }
    }

    fn on_record(&mut self, payload: Option<&[u8]>) {
        let Some(payload) = payload else { return };
        match serde_json::from_slice::<StockLevel>(payload) {
            Ok(level) if self.channel.serves(level.location.as_str()) => self.pending.mark(level.sku, Instant::now()),
            Ok(_) => {}
            Err(e) => warn!(error = %e, "unreadable stock level skipped"),
        }
    }

    fn count(&self, outcome: &str, n: usize) {
        self.shared.metrics.pushes_total.with_label_values(&[outcome]).inc_by(n as u64);
    }

    /// One batch: plan, read unknown quantities, push, and settle the outcome.
    async fn flush(&mut self) {
        let taken = self.pending.take(self.config.batch_size_max);
        let planned = match self.plan(taken).await {
            Ok(planned) => planned,
            Err(e) => return self.failed(&e, 0).await,
        };
        let unknown: Vec<u64> =
            planned.iter().map(|p| p.inventory_item_id).filter(|i| !self.known.contains_key(i)).collect();
        if !unknown.is_empty() {
            match self.shared.admin.read_available(&unknown, self.config.location_id).await {
                Ok(read) => self.known.extend(read),
                Err(e) => return self.failed(&e.into(), planned.len()).await,
            }
        }
        let mut to_set = Vec::new();
        for p in planned {
            match self.known.get(&p.inventory_item_id).copied() {
                None => {
                    error!(sku = %p.sku, inventory_item_id = p.inventory_item_id, "item not stocked at the sink's shopify location");
                    self.count("rejected", 1);
                    self.pending.done(&p.sku, p.generation);
                }
                Some(held) if held == p.available => {
                    self.count("unchanged", 1);
                    self.settled(&p).await;
                }
                Some(held) => to_set.push((p, held)),
            }
        }
        if to_set.is_empty() {
            self.shared.context.health.ok(SINK_SOURCE).await;
        } else {
            self.push(to_set).await;
        }
    }

    /// The SKUs' current availability and inventory items, read from the database now.
    async fn plan(&mut self, taken: Vec<(Sku, u64)>) -> Result<Vec<Planned>, ShopifyError> {
        let (stock, catalog) = (&self.shared.context.stock, &self.shared.context.catalog);
        let mut planned = Vec::with_capacity(taken.len());
        for (sku, generation) in taken {
            let item = catalog
                .product(&sku)
                .await?
                .and_then(|p| p.product.attributes.get(INVENTORY_ITEM_ATTRIBUTE).and_then(|v| v.parse::<u64>().ok()));
            let Some(inventory_item_id) = item else {
                warn!(sku = %sku, "no {INVENTORY_ITEM_ATTRIBUTE} in the catalog: not pushed to shopify");
                self.count("unmapped", 1);
                self.pending.done(&sku, generation);
                continue;
            };
            let levels = stock.stock_by_sku(&sku).await?;
            let serving = levels.iter().filter(|l| self.channel.serves(l.location.as_str()));
            let version = serving.map(|l| l.version).sum();
            let available = self.channel.available(&levels);
            planned.push(Planned { sku, generation, inventory_item_id, available, version });
        }
        Ok(planned)
    }

    async fn push(&mut self, to_set: Vec<(Planned, i64)>) {
        let quantities: Vec<SetQuantity> = to_set
            .iter()
            .map(|(p, held)| SetQuantity {
                inventory_item_id: p.inventory_item_id,
                quantity: p.available,
                change_from: *held,
            })
            .collect();
        let key_parts: Vec<(u64, i64, i64, i64)> =
            to_set.iter().map(|(p, held)| (p.inventory_item_id, p.available, *held, p.version)).collect();
        let key = idempotency_key(&key_parts);
        let outcome = match self.shared.admin.set_available(&quantities, self.config.location_id, &key).await {
            Ok(outcome) => outcome,
            Err(e) => return self.failed(&e.into(), to_set.len()).await,
        };
        self.backoff.reset();
        self.shared.context.health.ok(SINK_SOURCE).await;
        for (i, message) in &outcome.rejected {
            let (p, _) = &to_set[*i];
            error!(sku = %p.sku, inventory_item_id = p.inventory_item_id, message = %message, "shopify refused the quantity");
            self.count("rejected", 1);
            self.pending.done(&p.sku, p.generation);
        }
        for i in &outcome.stale {
            // Someone else changed it (a web order, the admin): read it again next round.
            self.known.remove(&to_set[*i].0.inventory_item_id);
            self.count("stale", 1);
        }
        if outcome.applied {
            self.count("pushed", to_set.len());
            for (p, _) in &to_set {
                self.known.insert(p.inventory_item_id, p.available);
                self.settled(p).await;
            }
        }
    }

    /// Shopify holds the planned value: record it for the echo rule and forget the SKU,
    /// unless a newer change arrived meanwhile.
    async fn settled(&mut self, p: &Planned) {
        if self.recorded.get(&p.inventory_item_id) != Some(&p.available) {
            let key = pushed_key(p.inventory_item_id, self.config.location_id);
            match self.shared.context.cursors.set_connector_state(NAME, &key, &p.available.to_string()).await {
                Ok(()) => {
                    self.recorded.insert(p.inventory_item_id, p.available);
                }
                // The push stands; the webhook route may take its echo for a manual change
                // only if this write keeps failing, and the next push records it again.
                Err(e) => warn!(error = %e, "the pushed quantity was not recorded"),
            }
        }
        self.pending.done(&p.sku, p.generation);
    }

    async fn failed(&mut self, e: &ShopifyError, items: usize) {
        let wait = match e {
            // Shopify's rate limit at work, not a fault.
            ShopifyError::Admin(AdminError::Throttled { wait_ms }) => {
                self.count("throttled", items);
                Duration::from_millis(*wait_ms)
            }
            _ => {
                self.count("failed", items);
                self.shared.context.health.error(SINK_SOURCE, format!("a push to shopify failed: {e}")).await;
                self.backoff.fail()
            }
        };
        if e.is_retryable() {
            warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "shopify push failed; retrying");
        } else {
            error!(error = %e, retry_in_ms = wait.as_millis() as u64, "shopify refused the push; check the token and scopes");
        }
        self.not_before = Instant::now() + wait;
    }
}
