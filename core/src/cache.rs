//! The read side's cache of stock levels, between the database and the HTTP API.
//!
//! Every API instance keeps its own bounded cache (moka) and follows the stock topic, so a
//! level the ledger commits reaches every replica's cache within a second; a time-to-live
//! stays as a safety net. A read that misses, or finds an entry older than the TTL, goes
//! to the database within a time budget; when the database is slow or down, the last
//! known levels answer, marked stale. Instances share nothing but Kafka and the database.

use std::{
    collections::HashMap,
    sync::{Arc, OnceLock},
    time::{Duration, Instant},
};

use axum::body::Bytes;

use chrono::{DateTime, SubsecRound, Utc};
use moka::{
    future::Cache,
    ops::compute::{CompResult, Op},
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::{
    config::{KafkaConfig, QueryConfig},
    db::StockReads,
    event::{Sku, SourceSystem, StockLevel},
    kafka,
    telemetry::Metrics,
};

/// The levels of one SKU at every location where it has one, as the cache answers them.
#[derive(Debug, Clone)]
pub struct SkuStock {
    entry: Arc<Entry>,
    /// Whether the answer comes from the cache because the database could not.
    pub stale: bool,
}

impl SkuStock {
    pub fn levels(&self) -> &[StockLevel] {
        &self.entry.levels
    }

    /// When these levels were last known to be current: the database read, or the
    /// newest level that arrived from the stock topic since.
    pub fn as_of(&self) -> DateTime<Utc> {
        self.entry.as_of
    }

    /// The answer body for these levels, rendered once per cached version: the hot path of
    /// a read is then a lookup and a copy of bytes. A stale answer is rendered each time.
    pub fn rendered(&self, render: impl FnOnce(&SkuStock) -> Bytes) -> Bytes {
        if self.stale {
            return render(self);
        }
        self.entry.rendered.get_or_init(|| render(self)).clone()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    #[error("no stock is recorded for this sku")]
    NotFound,
    #[error("the database did not answer in time and this sku was never read before")]
    Unavailable,
}

#[derive(Debug)]
struct Entry {
    levels: Vec<StockLevel>,
    as_of: DateTime<Utc>,
    loaded_at: Instant,
    rendered: OnceLock<Bytes>,
}

impl Entry {
    fn new(levels: Vec<StockLevel>, as_of: DateTime<Utc>, loaded_at: Instant) -> Arc<Self> {
        Arc::new(Entry { levels, as_of, loaded_at, rendered: OnceLock::new() })
    }
}

#[derive(Debug, Clone)]
pub struct StockCache {
    db: Arc<dyn StockReads>,
    entries: Cache<Sku, Arc<Entry>>,
    /// SKUs the database had no level of, briefly: a query of many unknown SKUs costs one
    /// read, not one per request. A level arriving from the stock topic forgets it.
    missing: Cache<Sku, ()>,
    ttl: Duration,
    budget: Duration,
    capacity: u64,
    metrics: Metrics,
}

/// How long a SKU the database did not know answers `NotFound` without asking again.
const MISSING_TTL: Duration = Duration::from_secs(2);
/// The most SKUs that may be remembered as missing.
const MISSING_MAX: u64 = 100_000;

impl StockCache {
    pub fn new(db: Arc<dyn StockReads>, config: &QueryConfig, metrics: Metrics) -> Self {
        Self {
            db,
            // No time-based eviction: an old entry is still the last known value when the
            // database is down. Age is checked on read instead.
            entries: Cache::new(config.cache_skus_max),
            missing: Cache::builder().max_capacity(MISSING_MAX).time_to_live(MISSING_TTL).build(),
            ttl: Duration::from_secs(config.cache_ttl_s),
            budget: Duration::from_millis(config.database_budget_ms),
            capacity: config.cache_skus_max,
            metrics,
        }
    }

    /// The levels of `sku`: from the cache while it is fresh, else from the database within
    /// the time budget, else the last known levels marked stale.
    pub async fn get(&self, sku: &Sku) -> Result<SkuStock, ReadError> {
        self.get_many(std::slice::from_ref(sku)).await.pop().unwrap_or(Err(ReadError::Unavailable))
    }

    /// The levels of each SKU, in order, as [`get`](Self::get) answers them, with one read
    /// of the database for all the SKUs the cache cannot answer.
    pub async fn get_many(&self, skus: &[Sku]) -> Vec<Result<SkuStock, ReadError>> {
        let mut answers: Vec<Option<Result<SkuStock, ReadError>>> = Vec::with_capacity(skus.len());
        let mut cached: Vec<Option<Arc<Entry>>> = Vec::with_capacity(skus.len());
        let mut misses: Vec<Sku> = Vec::new();
        for sku in skus {
            let entry = self.entries.get(sku).await;
            let answer = match &entry {
                Some(e) if e.loaded_at.elapsed() < self.ttl => {
                    Some(Ok(SkuStock { entry: Arc::clone(e), stale: false }))
                }
                None if self.missing.contains_key(sku) => Some(Err(ReadError::NotFound)),
                _ => {
                    misses.push(sku.clone());
                    None
                }
            };
            if answer.is_some() {
                self.metrics.query_reads_total.with_label_values(&["cache"]).inc();
            }
            answers.push(answer);
            cached.push(entry);
        }
        if misses.is_empty() {
            return answers.into_iter().flatten().collect();
        }
        misses.sort();
        misses.dedup();
        let read = match tokio::time::timeout(self.budget, self.db.stock_by_skus(&misses)).await {
            Ok(Ok(levels)) => Some(levels),
            Ok(Err(e)) => {
                warn!(error = %e, "stock read failed; answering from the cache");
                None
            }
            Err(_) => {
                debug!("stock read over its time budget; answering from the cache");
                None
            }
        };
        if let Some(levels) = read {
            let mut by_sku: HashMap<Sku, Vec<StockLevel>> = HashMap::with_capacity(misses.len());
            for level in levels {
                by_sku.entry(level.sku.clone()).or_default().push(level);
            }
            let mut found: HashMap<Sku, Result<SkuStock, ReadError>> = HashMap::with_capacity(misses.len());
            for sku in misses {
                self.metrics.query_reads_total.with_label_values(&["database"]).inc();
                let answer = match by_sku.remove(&sku) {
                    Some(levels) => Ok(SkuStock { entry: self.remember(&sku, levels).await, stale: false }),
                    None => {
                        self.missing.insert(sku.clone(), ()).await;
                        Err(ReadError::NotFound)
                    }
                };
                found.insert(sku, answer);
            }
            return skus
                .iter()
                .zip(answers)
                .map(|(sku, answer)| {
                    answer.unwrap_or_else(|| found.get(sku).cloned().unwrap_or(Err(ReadError::NotFound)))
                })
                .collect();
        }
        skus.iter()
            .zip(answers)
            .zip(cached)
            .map(|((_, answer), entry)| match answer {
                Some(answer) => answer,
                None => {
                    self.metrics.query_reads_total.with_label_values(&["stale"]).inc();
                    entry.map(|entry| SkuStock { entry, stale: true }).ok_or(ReadError::Unavailable)
                }
            })
            .collect()
    }

    /// Caches levels read from the database, merged with what the cache holds now, level
    /// by level, the higher version winning: a newer level that arrived from the stock
    /// topic while the read was under way is kept, whatever the interleaving, because the
    /// merge runs under the cache's lock of this SKU.
    async fn remember(&self, sku: &Sku, levels: Vec<StockLevel>) -> Arc<Entry> {
        let merged = self
            .entries
            .entry_by_ref(sku)
            .and_compute_with(|current| {
                let mut merged = levels;
                let mut as_of = Utc::now().trunc_subsecs(6);
                if let Some(current) = current.map(|e| e.into_value()) {
                    for held in &current.levels {
                        match merged.iter_mut().find(|l| l.location == held.location) {
                            Some(read) if read.version >= held.version => {}
                            Some(read) => {
                                as_of = as_of.max(held.updated_at);
                                *read = held.clone();
                            }
                            None => merged.push(held.clone()),
                        }
                    }
                    merged.sort_by(|a, b| a.location.cmp(&b.location));
                }
                std::future::ready(Op::Put(Entry::new(merged, as_of, Instant::now())))
            })
            .await;
        match merged {
            CompResult::Inserted(entry) | CompResult::ReplacedWith(entry) => entry.into_value(),
            // Put always inserts or replaces; keep the read's answer all the same.
            _ => Entry::new(Vec::new(), Utc::now(), Instant::now()),
        }
    }

    /// Loads every level into the cache, a page at a time, until the cache is full: after
    /// a start, reads hit the cache instead of the database. A SKU already cached (read
    /// meanwhile) is left as it is. A change published while its page was read is missed
    /// until the TTL, which is what the TTL is for.
    pub async fn preload(&self, shutdown: CancellationToken) {
        const PAGE_LEVELS: usize = 20_000;
        let started = Instant::now();
        let mut after: Option<Sku> = None;
        let mut loaded = 0u64;
        while !shutdown.is_cancelled() && loaded < self.capacity {
            let mut page = match self.db.stock_page(after.as_ref(), PAGE_LEVELS as i64).await {
                Ok(page) if page.is_empty() => break,
                Ok(page) => page,
                Err(e) => {
                    warn!(error = %e, "cache preload stopped; SKUs load on their first read");
                    return;
                }
            };
            // The last SKU of a full page may go on in the next one: read it again there,
            // unless it fills the page alone.
            if page.len() == PAGE_LEVELS && page[0].sku != page[PAGE_LEVELS - 1].sku {
                let last = page[PAGE_LEVELS - 1].sku.clone();
                page.retain(|l| l.sku != last);
            }
            let as_of = Utc::now().trunc_subsecs(6);
            for group in page.chunk_by(|a, b| a.sku == b.sku) {
                let sku = group[0].sku.clone();
                let entry = Entry::new(group.to_vec(), as_of, Instant::now());
                self.entries
                    .entry_by_ref(&sku)
                    .and_compute_with(|current| {
                        std::future::ready(if current.is_some() { Op::Nop } else { Op::Put(entry) })
                    })
                    .await;
                loaded += 1;
                after = Some(sku);
            }
        }
        self.metrics.query_cache_preloaded_skus.set(loaded as i64);
        info!(skus = loaded, elapsed_ms = started.elapsed().as_millis() as u64, "stock cache preloaded");
    }

    /// Applies a level from the stock topic (or written by this instance) to a cached SKU,
    /// under the cache's lock of the SKU. An older or equal version changes nothing; an
    /// uncached SKU is left to its next read, which finds the level in the database.
    /// Answers whether reads now see this version: false when the cache held it or a newer
    /// one already.
    pub async fn apply(&self, level: StockLevel) -> bool {
        self.missing.invalidate(&level.sku).await;
        let result = self
            .entries
            .entry_by_ref(&level.sku)
            .and_compute_with(|current| {
                let op = match current.map(|e| e.into_value()) {
                    None => Op::Nop,
                    Some(entry) => {
                        let mut levels = entry.levels.clone();
                        match levels.iter_mut().find(|l| l.location == level.location) {
                            Some(held) if held.version >= level.version => Op::Nop,
                            found => {
                                match found {
                                    Some(held) => *held = level.clone(),
                                    None => {
                                        levels.push(level.clone());
                                        levels.sort_by(|a, b| a.location.cmp(&b.location));
                                    }
                                }
                                let as_of = entry.as_of.max(level.updated_at);
                                Op::Put(Entry::new(levels, as_of, entry.loaded_at))
                            }
                        }
                    }
                };
                std::future::ready(op)
            })
            .await;
        !matches!(result, CompResult::Unchanged(_))
    }
}

impl StockCache {
    /// Counts how long a movement recorded at `recorded_at` took to reach this cache: once
    /// per level version, when reads start to see it. A clock behind the recorder's counts
    /// as no time at all.
    fn observe_propagation(&self, recorded_at: DateTime<Utc>, source: SourceSystem) {
        let seconds = (Utc::now() - recorded_at).num_microseconds().unwrap_or(i64::MAX).max(0) as f64 / 1e6;
        self.metrics.query_propagation_seconds.with_label_values(&[source.as_str()]).observe(seconds);
    }
}

/// Follows the stock topic from its end and applies every level to the cache, until
/// `shutdown`. It reads every partition (no consumer group): each instance needs all.
pub async fn follow_stock_topic(config: KafkaConfig, cache: StockCache, shutdown: CancellationToken) {
    let topic = config.topics.stock.clone();
    kafka::follow::follow(&config, &topic, "onhand-stock-cache", shutdown, |payload, offset| {
        let level = serde_json::from_slice::<StockLevel>(payload);
        let cache = &cache;
        async move {
            match level {
                Ok(level) => {
                    let came_from = level.last_recorded_at.zip(level.last_source);
                    if cache.apply(level).await {
                        if let Some((recorded_at, source)) = came_from {
                            cache.observe_propagation(recorded_at, source);
                        }
                    }
                }
                Err(e) => warn!(error = %e, offset, "unreadable stock level skipped"),
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::db::SqliteDb;

    fn level(version: i64) -> StockLevel {
        StockLevel { updated_at: Utc::now().trunc_subsecs(6), ..crate::testing::stock_level("s1", version, version) }
    }

    /// A level is timed to the cache once, when reads start to see its version: an old or
    /// repeated version is not.
    #[tokio::test]
    async fn applying_says_whether_reads_see_the_version_now() {
        let dir = tempfile::tempdir().unwrap();
        let db = SqliteDb::connect(&format!("sqlite://{}", dir.path().join("t.db").display())).await.unwrap();
        let cache = StockCache::new(Arc::new(db), &QueryConfig::default(), Metrics::new());
        assert!(cache.apply(level(1)).await, "an uncached sku is read from the database, which has it");
        cache
            .entries
            .insert(Sku::parse("SKU-1").unwrap(), Entry::new(vec![level(2)], Utc::now(), Instant::now()))
            .await;
        assert!(!cache.apply(level(2)).await, "the same version again");
        assert!(!cache.apply(level(1)).await, "an older version");
        assert!(cache.apply(level(3)).await);
        assert_eq!(cache.entries.get(&Sku::parse("SKU-1").unwrap()).await.unwrap().levels[0].version, 3);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// M3: whatever the interleaving of levels arriving from the stock topic and reads
        /// of the database (each read merges what it read with what the cache holds), the
        /// cache ends with the newest version any of them carried.
        #[test]
        fn a_newer_level_is_never_replaced_by_an_older_one(
            versions in prop::collection::vec(1i64..200, 1..60),
            database_version in 1i64..200,
            reads in 1usize..20,
        ) {
            let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build().unwrap();
            let cached = runtime.block_on(async {
                let dir = tempfile::tempdir().unwrap();
                let db = SqliteDb::connect(&format!("sqlite://{}", dir.path().join("t.db").display())).await.unwrap();
                sqlx::query(
                    "INSERT INTO stock_levels (sku, location, on_hand, version, last_movement_at, last_event_id, updated_at)
                     VALUES ('SKU-1', 's1', 0, ?1, 0, 'e', 0)",
                )
                .bind(database_version)
                .execute(db.pool())
                .await
                .unwrap();
                // ttl 0: every read goes to the database and merges its answer.
                let config = QueryConfig { cache_ttl_s: 0, ..QueryConfig::default() };
                let cache = StockCache::new(Arc::new(db), &config, Metrics::new());
                let sku = Sku::parse("SKU-1").unwrap();
                cache.get(&sku).await.unwrap();
                let mut tasks = Vec::new();
                for (i, version) in versions.iter().enumerate() {
                    let (applying, version) = (cache.clone(), *version);
                    tasks.push(tokio::spawn(async move {
                        applying.apply(level(version)).await;
                    }));
                    if i < reads {
                        let (reading, sku) = (cache.clone(), sku.clone());
                        tasks.push(tokio::spawn(async move { reading.get(&sku).await.map(|_| ()).unwrap() }));
                    }
                }
                for task in tasks {
                    task.await.unwrap();
                }
                cache.entries.get(&sku).await.unwrap().levels[0].version
            });
            let newest = versions.iter().copied().max().unwrap().max(database_version);
            prop_assert_eq!(cached, newest);
        }
    }
}
