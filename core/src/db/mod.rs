//! Where stock lives: the [`Db`] trait and its one implementation, [`SqlDb`], on
//! PostgreSQL in production ([`PostgresDb`]) and on SQLite for `onhand dev` ([`SqliteDb`]).
//!
//! - `sql.rs`: `SqlDb<D>`, every method of `Db` written once over the database's
//!   `Dialect` `D`, and the codecs of rows.
//! - `reservations.rs`: the reservation transactions and their steps, written once too.
//! - `driver.rs`: sqlx for code that does not name its database (`query`, a row's
//!   `Cells`), and the two values the databases store differently: `Time` (`timestamptz`,
//!   or microseconds in SQLite) and `List` (an array, or a JSON array in SQLite).
//! - `postgres.rs`, `sqlite.rs`: each database's `Dialect`: how a write begins, the few
//!   statements whose text differs, the writes of many rows (set-based over `UNNEST` in
//!   PostgreSQL, row by row in SQLite) and the steps of a ledger batch (`LedgerTx`).
//! - `tests.rs`: one contract suite, run on both databases.
//!
//! A batch is applied in one transaction: new movements are inserted (a duplicate
//! `event_id` is skipped), the levels they touch are written with a compare-and-set on
//! `version` (retried on conflict), and the consumer's offsets are saved, all or nothing.

/// The columns of a published stock level, which `sql::stock_level` reads: one list, so
/// that a new column cannot be forgotten in one query.
macro_rules! stock_level_columns {
    () => {
        "sku, location, on_hand, reserved, safety_stock, reorder_point, version, last_movement_at, last_event_id, \
         last_count_at, updated_at"
    };
}

/// The columns of an API key, which `sql::api_key` reads.
macro_rules! api_key_columns {
    () => {
        "id, name, scopes, secret_hash, created_at, revoked_at, bound_to"
    };
}

mod driver;
mod postgres;
mod reservations;
mod sql;
mod sqlite;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Arc,
};

use async_trait::async_trait;
use chrono::{DateTime, SubsecRound, Utc};

pub use self::{
    postgres::PostgresDb,
    reservations::{Closed, Closing, NewReservation, OutboxRecord, Reserved},
    sql::SqlDb,
    sqlite::SqliteDb,
};
use crate::{
    auth::ApiKey,
    event::{EventId, LocationId, Movement, MovementKind, Sku, StockLevel},
    freshness::{SourceState, SourceUpdate},
    ledger::rules::{plan_key, KeyPlan, LevelKey, LevelState},
    product::{Product, StoredProduct},
    reservation::{self, Reservation, Status},
};

/// The dead-letter reason of a movement that would take its level out of range.
pub const LEVEL_OUT_OF_RANGE: &str = "level_out_of_range";

/// How many rounds of compare-and-set conflicts a batch rides out before it gives up and
/// the whole transaction is retried by the ledger.
const CONFLICT_ROUNDS_MAX: u32 = 32;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stock levels kept changing under this batch after {CONFLICT_ROUNDS_MAX} rounds")]
    Contended,
    #[error("unsupported database url {0:?}: expected postgres://... or sqlite://...")]
    UnsupportedUrl(String),
    #[error("stored data is not valid: {0}")]
    Corrupt(String),
    /// The ledger's rules refuse one movement of the batch (see `ledger::rules::OutOfRange`);
    /// the rest of the batch can apply without it.
    #[error("movement {event_id} cannot be applied: {reason}")]
    Refused { event_id: EventId, code: &'static str, reason: String },
}

impl DbError {
    /// Retrying the same operation later may succeed: the database was unreachable, busy or
    /// contended. Bad data or a bug (a constraint, a value out of range, bad SQL) fails the
    /// same way every time, and needs a person.
    pub fn is_retryable(&self) -> bool {
        match self {
            DbError::Database(sqlx::Error::Database(e)) => match e.code() {
                // A PostgreSQL SQLSTATE: data exceptions, integrity violations, syntax or
                // access-rule errors are permanent.
                Some(code) if code.len() == 5 => !matches!(&code[..2], "22" | "23" | "42"),
                // An SQLite result code: busy and locked are passing; too big, constraint,
                // mismatch and range are permanent.
                Some(code) => !matches!(code.parse::<i32>().map(|c| c & 0xff), Ok(18 | 19 | 20 | 25)),
                None => true,
            },
            DbError::Database(e) => !matches!(e, sqlx::Error::Configuration(_) | sqlx::Error::Migrate(_)),
            DbError::Contended => true,
            DbError::Migrate(_) | DbError::UnsupportedUrl(_) | DbError::Corrupt(_) | DbError::Refused { .. } => false,
        }
    }

    /// The database refused the data itself (a value out of range, a constraint): the same
    /// statement with other rows may pass, so one bad movement can be found and set aside.
    /// A syntax or permission error fails whatever the rows, and is not one of these.
    pub fn is_refused_data(&self) -> bool {
        let DbError::Database(sqlx::Error::Database(e)) = self else { return false };
        match e.code() {
            Some(code) if code.len() == 5 => matches!(&code[..2], "22" | "23"),
            Some(code) => matches!(code.parse::<i32>().map(|c| c & 0xff), Ok(18 | 19 | 20 | 25)),
            None => false,
        }
    }
}

/// A movement with the Kafka coordinates it was read from.
#[derive(Debug, Clone)]
pub struct Envelope {
    pub movement: Movement,
    pub partition: i32,
    pub offset: i64,
}

/// The next offset to read from a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionOffset {
    pub partition: i32,
    pub next_offset: i64,
}

/// What one ledger batch carries into a transaction.
#[derive(Debug, Clone)]
pub struct Batch {
    pub group_id: String,
    pub topic: String,
    pub movements: Vec<Envelope>,
    /// Saved in the same transaction; a partition's offset never moves backwards.
    pub offsets: Vec<PartitionOffset>,
    /// Levels whose publication on the stock topic was acknowledged since the last batch.
    pub published: Vec<Published>,
}

/// How much of a level is kept back from every channel, and when it is low.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StockPolicy {
    pub safety_stock: i64,
    pub reorder_point: Option<i64>,
}

/// A level version that reached the stock topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub sku: Sku,
    pub location: LocationId,
    pub version: i64,
}

/// What a committed batch did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// New movements that changed a level.
    pub applied: u64,
    /// New movements recorded without changing a level (see the count rule).
    pub superseded: u64,
    /// Movements skipped because their event_id was already recorded.
    pub duplicates: u64,
    /// New reservation events, recorded for the audit trail; they change no level.
    pub recorded: u64,
    /// Units of committed reservations released by their sales.
    pub released: i64,
    /// Level writes that lost a compare-and-set and were redone.
    pub conflicts_retried: u64,
    /// The levels as written, one per sku@location the batch changed.
    pub levels: Vec<StockLevel>,
}

#[async_trait]
pub trait Db: Send + Sync + std::fmt::Debug {
    /// Applies a batch exactly once, in one transaction.
    async fn apply_batch(&self, batch: &Batch) -> Result<Applied, DbError>;
    /// The saved next offsets of a consumer group on a topic.
    async fn consumer_offsets(&self, group_id: &str, topic: &str) -> Result<Vec<PartitionOffset>, DbError>;
    /// Forgets the saved offsets of a consumer group on a topic, so that it starts over
    /// from the beginning. Applied movements stay recorded, so nothing counts twice.
    async fn reset_consumer_offsets(&self, group_id: &str, topic: &str) -> Result<(), DbError>;
    /// Levels written before `written_before` but not acknowledged on the stock topic yet,
    /// oldest first, at most `limit`.
    async fn unpublished_levels(&self, written_before: DateTime<Utc>, limit: i64) -> Result<Vec<StockLevel>, DbError>;
    /// At most `levels_max` levels of the SKUs after `after` (all SKUs when `None`), in SKU
    /// then location order: for paging through every level. The last SKU of a full page
    /// may have more levels on the next one.
    async fn stock_page(&self, after: Option<&Sku>, levels_max: i64) -> Result<Vec<StockLevel>, DbError>;
    /// The levels of a SKU at every location, ordered by location.
    async fn stock_by_sku(&self, sku: &Sku) -> Result<Vec<StockLevel>, DbError>;
    /// The levels of many SKUs in one read, ordered by SKU then location.
    async fn stock_by_skus(&self, skus: &[Sku]) -> Result<Vec<StockLevel>, DbError>;
    /// Sets the stock policy of a level, creating the level (with nothing on hand) when no
    /// movement reached it yet. Bumps the version like every other write of the level.
    async fn set_policy(&self, key: &LevelKey, policy: StockPolicy) -> Result<StockLevel, DbError>;
    /// Records publications outside a ledger batch (the policy API publishes its levels).
    async fn record_published(&self, published: Vec<Published>) -> Result<(), DbError> {
        let batch = Batch {
            group_id: String::new(),
            topic: String::new(),
            movements: Vec::new(),
            offsets: Vec::new(),
            published,
        };
        self.apply_batch(&batch).await.map(|_| ())
    }
    /// Creates or replaces products, in one transaction; answers how many were new.
    async fn put_products(&self, products: &[Product]) -> Result<u64, DbError>;
    async fn product(&self, sku: &Sku) -> Result<Option<StoredProduct>, DbError>;
    /// The products whose attribute `name` has one of `values`, ordered by SKU: how a
    /// connector finds the SKU of an outside id kept in the catalog (a Shopify variant id
    /// in `shopify_variant_id`). Answers nothing for a name with `"` or `\\` in it.
    async fn products_by_attribute(&self, name: &str, values: &[String]) -> Result<Vec<Product>, DbError>;
    /// Stores a new API key; fails when its id is taken.
    async fn create_api_key(&self, key: &ApiKey) -> Result<(), DbError>;
    /// The API key with this id, revoked or not.
    async fn api_key(&self, id: &str) -> Result<Option<ApiKey>, DbError>;
    /// At most `limit` API keys, oldest first.
    async fn api_keys(&self, limit: i64) -> Result<Vec<ApiKey>, DbError>;
    /// Revokes an API key; answers false when no active key has this id.
    async fn revoke_api_key(&self, id: &str) -> Result<bool, DbError>;
    /// How many movements are recorded.
    async fn movement_count(&self) -> Result<i64, DbError>;

    /// Takes a reservation, all lines or none, or answers why not; replays the first
    /// answer to a retry with the same idempotency key.
    async fn reserve(&self, new: &NewReservation<'_>) -> Result<Reserved, DbError>;
    async fn reservation(&self, id: &str) -> Result<Option<Reservation>, DbError>;
    /// Ends a held reservation: `Committed`, `Cancelled` or `Expired`.
    async fn close_reservation(&self, id: &str, to: Status, now: DateTime<Utc>) -> Result<Closed, DbError>;
    /// Held reservations whose time is up at `now`, at most `limit`, oldest first.
    async fn due_reservations(&self, now: DateTime<Utc>, limit: i64) -> Result<Vec<String>, DbError>;
    /// Idempotency keys older than `created_before` are forgotten; answers how many.
    async fn forget_idempotency_keys(&self, created_before: DateTime<Utc>) -> Result<u64, DbError>;
    /// Outbox records written before `created_before` with an id above `after_id`, oldest
    /// first, at most `limit`.
    async fn outbox(
        &self,
        created_before: DateTime<Utc>,
        after_id: i64,
        limit: i64,
    ) -> Result<Vec<OutboxRecord>, DbError>;
    async fn delete_outbox(&self, ids: &[i64]) -> Result<(), DbError>;
    /// Writes movements to the outbox in one transaction, all or none: what an edge of
    /// onhand accepted is then safe in the database, whatever happens to Kafka.
    async fn enqueue_outbox(&self, movements: &[Movement], now: DateTime<Utc>) -> Result<Vec<OutboxRecord>, DbError>;
    /// Deletes the outbox records whose movement the ledger recorded; answers their ids.
    async fn delete_recorded_outbox(&self) -> Result<Vec<i64>, DbError>;

    /// A value a connector saved under `key` (a cursor), if any.
    async fn connector_state(&self, connector: &str, key: &str) -> Result<Option<String>, DbError>;
    /// Saves a connector's value under `key`, replacing the one before.
    async fn set_connector_state(&self, connector: &str, key: &str, value: &str) -> Result<(), DbError>;

    /// Applies what a source just said to its state, in one transaction, and answers the
    /// new state.
    async fn update_source(
        &self,
        source: &str,
        update: &SourceUpdate,
        now: DateTime<Utc>,
    ) -> Result<SourceState, DbError>;
    /// Every source's state, by name.
    async fn sources(&self) -> Result<Vec<SourceState>, DbError>;
    /// Names locations that have none yet (a store's name from its stock report); answers
    /// how many were new.
    async fn name_locations(&self, names: &[(LocationId, String)]) -> Result<u64, DbError>;

    /// Checks that the database answers.
    async fn ping(&self) -> Result<(), DbError>;
}

/// Opens the database named by `url` (`postgres://` or `sqlite://`) and runs its migrations.
pub async fn open(url: &str, connections_max: u32) -> Result<Arc<dyn Db>, DbError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(PostgresDb::connect(url, connections_max).await?))
    } else if url.starts_with("sqlite:") {
        Ok(Arc::new(SqliteDb::connect(url).await?))
    } else {
        Err(DbError::UnsupportedUrl(url.to_string()))
    }
}

/// The columns of a level that writers other than the ledger own: units reserved by
/// checkouts, and the stock policy. The ledger reads them only to publish whole levels.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Allocation {
    reserved: i64,
    safety_stock: i64,
    reorder_point: Option<i64>,
}

/// A level as stored, with the version its next write must compare against.
#[derive(Debug, Clone)]
struct StoredLevel {
    state: LevelState,
    allocation: Allocation,
    version: i64,
}

/// A compare-and-set write: `expected_version` `None` inserts a row that must not exist yet.
#[derive(Debug, Clone)]
struct LevelWrite {
    key: LevelKey,
    expected_version: Option<i64>,
    state: LevelState,
    /// As it will be written: `reserved` already less `release`.
    allocation: Allocation,
    /// Reserved units that committed sales of this batch release.
    release: i64,
}

impl LevelWrite {
    fn level(&self, updated_at: DateTime<Utc>) -> StockLevel {
        StockLevel {
            sku: self.key.0.clone(),
            location: self.key.1.clone(),
            on_hand: self.state.on_hand,
            reserved: self.allocation.reserved,
            safety_stock: self.allocation.safety_stock,
            reorder_point: self.allocation.reorder_point,
            version: self.expected_version.map_or(1, |v| v + 1),
            last_movement_at: self.state.last_movement_at,
            last_event_id: self.state.last_event_id.clone(),
            last_count_at: self.state.last_count.as_ref().map(|c| c.at),
            updated_at,
        }
    }
}

/// The steps of a ledger transaction, in the order [`apply_batch`] takes them, each one
/// statement or a few in each database's SQL (set-based in PostgreSQL); the algorithm that
/// strings them together is shared by both.
#[async_trait]
trait LedgerTx: Send {
    /// Inserts the movements whose event_id is new and returns those ids.
    async fn insert_movements(&mut self, movements: &[&Envelope]) -> Result<HashSet<EventId>, DbError>;
    /// Settles the lines of committed reservations whose sales are in `sales` (each once)
    /// and answers the units each level releases.
    async fn settle_reservation_lines(
        &mut self,
        sales: &[(&str, i32, &Movement)],
        now: DateTime<Utc>,
    ) -> Result<HashMap<LevelKey, i64>, DbError>;
    async fn load_levels(&mut self, keys: &[&LevelKey]) -> Result<HashMap<LevelKey, StoredLevel>, DbError>;
    /// For each count, the sum of the deltas recorded for its level that occurred after it,
    /// leaving out the movements of this batch. Wide: a sum of any number of deltas.
    async fn recorded_later(
        &mut self,
        counts: &[&Movement],
        batch_ids: &[&EventId],
    ) -> Result<HashMap<EventId, i128>, DbError>;
    /// Writes the levels whose version still matches and returns the keys written.
    async fn write_levels(
        &mut self,
        writes: &[LevelWrite],
        updated_at: DateTime<Utc>,
    ) -> Result<HashSet<LevelKey>, DbError>;
    /// Records the effect of movements that did not simply apply: `superseded` or `recorded`.
    async fn mark_effect(&mut self, event_ids: &[EventId], effect: &str) -> Result<(), DbError>;
    /// Records publications; a level's published version never moves backwards.
    async fn mark_published(&mut self, published: &[Published]) -> Result<(), DbError>;
    async fn save_offsets(&mut self, group_id: &str, topic: &str, offsets: &[PartitionOffset]) -> Result<(), DbError>;
}

/// Applies a batch with the steps of `tx`: the one algorithm of both backends. The caller
/// commits the transaction the steps run in.
async fn apply_batch(mut tx: Box<dyn LedgerTx + '_>, batch: &Batch) -> Result<Applied, DbError> {
    let mut outcome = Applied::default();

    // A re-delivery can put the same event twice in one batch: keep the first.
    let mut seen = HashSet::with_capacity(batch.movements.len());
    let unique: Vec<&Envelope> = batch.movements.iter().filter(|e| seen.insert(&e.movement.event_id)).collect();
    outcome.duplicates = (batch.movements.len() - unique.len()) as u64;

    // Inserting in event_id order means two transactions that share events wait for each
    // other in the same order, instead of deadlocking.
    let mut by_id = unique.clone();
    by_id.sort_by(|a, b| a.movement.event_id.cmp(&b.movement.event_id));
    let new_ids = tx.insert_movements(&by_id).await?;
    outcome.duplicates += (unique.len() - new_ids.len()) as u64;

    let new = NewMovements::sort(&unique, &new_ids);
    outcome.recorded = new.recorded.len() as u64;
    let updated_at = Utc::now().trunc_subsecs(6);
    // A committed reservation's units are released by the same write that applies its
    // sale, so what a channel may sell never jumps.
    let released =
        if new.sales.is_empty() { HashMap::new() } else { tx.settle_reservation_lines(&new.sales, updated_at).await? };
    outcome.released = released.values().sum();
    // Only this batch's new movements are left out of the recorded deltas a count adds
    // (plan_key adds them itself); a re-delivered one was recorded before and counts.
    let batch_ids: Vec<&EventId> = new_ids.iter().collect();
    let superseded = write_in_rounds(&mut *tx, &new.by_key, &batch_ids, &released, updated_at, &mut outcome).await?;

    if !superseded.is_empty() {
        tx.mark_effect(&superseded, "superseded").await?;
    }
    if !new.recorded.is_empty() {
        tx.mark_effect(&new.recorded, "recorded").await?;
    }
    if !batch.published.is_empty() {
        tx.mark_published(&newest_publications(&batch.published)).await?;
    }
    tx.save_offsets(&batch.group_id, &batch.topic, &batch.offsets).await?;
    Ok(outcome)
}

/// A batch's new movements, by what they do.
struct NewMovements<'a> {
    /// The movements of each level they change, in arrival order.
    by_key: BTreeMap<LevelKey, Vec<&'a Movement>>,
    /// Reservation events: recorded for the audit trail, they change no level.
    recorded: Vec<EventId>,
    /// Sales that may settle a line of a committed reservation: (reservation, line, sale).
    sales: Vec<(&'a str, i32, &'a Movement)>,
}

impl<'a> NewMovements<'a> {
    fn sort(unique: &[&'a Envelope], new_ids: &HashSet<EventId>) -> Self {
        let mut new = NewMovements { by_key: BTreeMap::new(), recorded: Vec::new(), sales: Vec::new() };
        for envelope in unique.iter().filter(|e| new_ids.contains(&e.movement.event_id)) {
            let m = &envelope.movement;
            if m.kind.is_reservation_event() {
                new.recorded.push(m.event_id.clone());
                continue;
            }
            if let (MovementKind::Sale, Some((id, line))) = (m.kind, reservation::settled_line(&m.event_id)) {
                new.sales.push((id, line, m));
            }
            new.by_key.entry((m.sku.clone(), m.location.clone())).or_default().push(m);
        }
        new
    }
}

/// Writes the levels the movements of `by_key` change, each with a compare-and-set on its
/// version; a level another writer changed first is read and planned again, for at most
/// [`CONFLICT_ROUNDS_MAX`] rounds. Answers the movements a count superseded.
async fn write_in_rounds(
    tx: &mut (dyn LedgerTx + '_),
    by_key: &BTreeMap<LevelKey, Vec<&Movement>>,
    batch_ids: &[&EventId],
    released: &HashMap<LevelKey, i64>,
    updated_at: DateTime<Utc>,
    outcome: &mut Applied,
) -> Result<Vec<EventId>, DbError> {
    let mut pending: Vec<&LevelKey> = by_key.keys().collect();
    let mut superseded = Vec::new();
    for round in 0.. {
        if pending.is_empty() {
            break;
        }
        if round == CONFLICT_ROUNDS_MAX {
            return Err(DbError::Contended);
        }
        let stored = tx.load_levels(&pending).await?;
        let counts: Vec<&Movement> =
            pending.iter().flat_map(|k| by_key[*k].iter().copied()).filter(|m| m.delta().is_none()).collect();
        let later = if counts.is_empty() { HashMap::new() } else { tx.recorded_later(&counts, batch_ids).await? };
        let (mut plans, writes) = plan_writes(&pending, &stored, by_key, &later, released)?;
        let written = tx.write_levels(&writes, updated_at).await?;
        let planned: HashSet<&LevelKey> = writes.iter().map(|w| &w.key).collect();

        let mut conflicts = Vec::new();
        for key in pending {
            let plan = plans.remove(key).expect("every pending key has a plan");
            if planned.contains(key) && !written.contains(key) {
                conflicts.push(key);
                continue;
            }
            outcome.applied += plan.applied;
            outcome.superseded += plan.superseded.len() as u64;
            superseded.extend(plan.superseded);
        }
        outcome.levels.extend(writes.iter().filter(|w| written.contains(&w.key)).map(|w| w.level(updated_at)));
        outcome.conflicts_retried += conflicts.len() as u64;
        pending = conflicts;
    }
    Ok(superseded)
}

/// The plan of each pending level, from its stored state, and the writes the plans need.
fn plan_writes<'k>(
    pending: &[&'k LevelKey],
    stored: &HashMap<LevelKey, StoredLevel>,
    by_key: &BTreeMap<LevelKey, Vec<&Movement>>,
    later: &HashMap<EventId, i128>,
    released: &HashMap<LevelKey, i64>,
) -> Result<(HashMap<&'k LevelKey, KeyPlan>, Vec<LevelWrite>), DbError> {
    let mut plans = HashMap::with_capacity(pending.len());
    let mut writes = Vec::new();
    for &key in pending {
        let prior = stored.get(key);
        let plan = plan_key(prior.map(|s| &s.state), &by_key[key], later).map_err(|e| DbError::Refused {
            event_id: e.event_id,
            code: LEVEL_OUT_OF_RANGE,
            reason: e.reason,
        })?;
        if let Some(write) = level_write(key, prior, &plan, released.get(key).copied().unwrap_or(0)) {
            writes.push(write);
        }
        plans.insert(key, plan);
    }
    Ok((plans, writes))
}

/// The write a level needs: its new state when movements applied, or its state as it was
/// when only reserved units are released (a sale a count superseded still settles its
/// reservation).
fn level_write(key: &LevelKey, prior: Option<&StoredLevel>, plan: &KeyPlan, release: i64) -> Option<LevelWrite> {
    let release = if prior.is_some() { release } else { 0 };
    let state = match (&plan.state, prior) {
        (Some(state), _) => state.clone(),
        (None, Some(prior)) if release > 0 => prior.state.clone(),
        (None, _) => return None,
    };
    let mut allocation = prior.map(|s| s.allocation).unwrap_or_default();
    allocation.reserved -= release;
    Some(LevelWrite { key: key.clone(), expected_version: prior.map(|s| s.version), state, allocation, release })
}

/// The newest acknowledged version of each level: one statement that updates a row from
/// two source rows applies just one of them, maybe the older.
fn newest_publications(published: &[Published]) -> Vec<Published> {
    let mut newest: HashMap<(&Sku, &LocationId), i64> = HashMap::with_capacity(published.len());
    for p in published {
        let version = newest.entry((&p.sku, &p.location)).or_default();
        *version = (*version).max(p.version);
    }
    newest
        .into_iter()
        .map(|((sku, location), version)| Published { sku: sku.clone(), location: location.clone(), version })
        .collect()
}

fn corrupt(what: impl std::fmt::Display) -> DbError {
    DbError::Corrupt(what.to_string())
}

#[cfg(test)]
mod tests;
