//! Where stock lives: the [`Db`] trait and its one implementation, [`SqlDb`], on
//! PostgreSQL in production ([`PostgresDb`]) and on SQLite for `onhand dev` ([`SqliteDb`]).
//! This file is the contract: `Db`, the types its methods take and answer, and
//! [`DbError`]. The files below implement it and import from here, never the other way
//! round, so that no files import each other in a loop:
//!
//! - `batch.rs`: the one algorithm that applies a ledger batch, over the steps of a
//!   `LedgerTx`.
//! - `reservations.rs`: the reservation transactions and their steps.
//! - `history.rs`: the [`History`] role, the audit trail's reads.
//! - `schema.rs`: a look at a database that changes nothing (its migrations, clock, keys
//!   and saved offsets), for `onhand doctor`.
//! - `audit.rs`: the [`Audit`] role, `onhand verify`'s one consistent read of everything
//!   and `onhand rebuild`'s write of recomputed levels while the ledger waits.
//! - `leases.rs`: the [`Leases`] role, which replica does a piece of work that must run once.
//! - `signals.rs`: the [`Signals`] role, what onhand heard from each source and the levels
//!   that need a look.
//! - `alerts.rs`: the [`Alerts`] role, alerts with their events and webhook deliveries
//!   written in the transaction of each change.
//! - `sql.rs`: `SqlDb<D>`, every method of `Db` written once over the database's
//!   `Dialect` `D`.
//! - `dialect.rs`: the `Dialect` trait, what PostgreSQL and SQLite do differently, and the
//!   codecs of rows both read alike.
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

/// The columns of a published stock level, which `dialect::stock_level` reads: one list, so
/// that a new column cannot be forgotten in one query.
macro_rules! stock_level_columns {
    () => {
        "sku, location, on_hand, reserved, safety_stock, reorder_point, version, last_movement_at, last_event_id, \
         last_count_at, updated_at"
    };
}

/// The columns of an API key, which `dialect::api_key` reads.
macro_rules! api_key_columns {
    () => {
        "id, name, scopes, secret_hash, created_at, revoked_at, bound_to"
    };
}

mod alerts;
mod audit;
mod batch;
mod dialect;
mod driver;
mod history;
mod leases;
mod orders;
mod postgres;
mod reservations;
pub mod schema;
mod signals;
mod sql;
mod sqlite;

use std::{collections::BTreeMap, sync::Arc};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{pool::PoolConnection, Database, Pool};

use crate::{
    auth::ApiKey,
    config::ChannelConfig,
    event::{
        alert::{Alert, AlertKind, AlertState, ReservationAtRisk},
        EventId, LocationId, Movement, Sku, SourceSystem, StockLevel,
    },
    freshness::{SourceSignals, SourceState, SourceUpdate},
    history::{LevelMovement, Start},
    ledger::rules::{CountMark, Effect, LevelKey, LevelState},
    product::{Product, StoredProduct},
    reservation::{Decision, LineRequest, Reservation, Status},
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
    /// A level changed under `onhand rebuild` although it held the lock every writer takes.
    #[error("the level {0} changed while the rebuild held the lock of stock_levels; nothing was written")]
    Raced(String),
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
    /// A movement's event_id was recorded already: what a batch recorded as all new
    /// ([`batch::Recording::AllNew`]) fails with when it holds a re-delivery.
    fn is_recorded_before(&self) -> bool {
        matches!(self, DbError::Database(sqlx::Error::Database(e))
            if e.is_unique_violation() && e.constraint() == Some("movements_pkey"))
    }

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
            DbError::Contended | DbError::Raced(_) => true,
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

/// Stored data that does not read back as what was written.
fn corrupt(what: impl std::fmt::Display) -> DbError {
    DbError::Corrupt(what.to_string())
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
    /// Levels found unpublished (`published_version < version`, written by other
    /// writers than the ledger) whose publication was acknowledged since the last batch.
    pub published: Vec<Published>,
    /// The publications owed by earlier batches (their `Applied::owed`) that were
    /// acknowledged since the last batch.
    pub settled: Vec<i64>,
}

/// How much of a level is kept back from every channel, and when it is low.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StockPolicy {
    pub safety_stock: i64,
    pub reorder_point: Option<i64>,
}

/// What the ledger's sweep publishes again ([`LedgerWrites::unpublished_levels`]).
#[derive(Debug, Default)]
pub struct Unpublished {
    /// The levels, each once.
    pub levels: Vec<StockLevel>,
    /// The owed publications (`Applied::owed`) whose levels `levels` holds: settled once all
    /// of them are acknowledged.
    pub owed: Vec<i64>,
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
    /// `duplicates`, by the system of the movement skipped.
    pub duplicates_by_source: BTreeMap<SourceSystem, u64>,
    /// `conflicts_retried`, by the system of the newest movement of the level redone.
    pub conflicts_by_source: BTreeMap<SourceSystem, u64>,
    /// The levels as written, one per sku@location the batch changed.
    pub levels: Vec<StockLevel>,
    /// The publications of `levels` that the batch owes (one per transaction that wrote
    /// levels): kept in the database until a later batch settles them (`Batch::settled`),
    /// and published again by the ledger's sweep if none does.
    pub owed: Vec<i64>,
}

// The roles of the database: one trait per kind of work, so each component gets the
// narrow interface it uses (the ledger its writes, the cache its reads, a connector its
// cursors) and reaches nothing else. `Db` is every role at once: what `open` answers and
// what the application wires from; an `Arc<dyn Db>` coerces to any role.

/// The ledger's: batches applied exactly once with their consumer offsets (which only
/// `onhand replay` moves back), and the levels it has still to publish.
#[async_trait]
pub trait LedgerWrites: Send + Sync + std::fmt::Debug {
    /// Applies a batch exactly once, in one transaction.
    async fn apply_batch(&self, batch: &Batch) -> Result<Applied, DbError>;
    /// The saved next offsets of a consumer group on a topic.
    async fn consumer_offsets(&self, group_id: &str, topic: &str) -> Result<Vec<PartitionOffset>, DbError>;
    /// Forgets the saved offsets of a consumer group on a topic, so that it starts over
    /// from the beginning. Applied movements stay recorded, so nothing counts twice.
    async fn reset_consumer_offsets(&self, group_id: &str, topic: &str) -> Result<(), DbError>;
    /// Moves saved offsets of a consumer group on a topic back to `offsets`, in one
    /// transaction, for `onhand replay group`: a partition whose saved offset is at or
    /// before its new one keeps it, and a partition with none saved stays without (it
    /// starts from the beginning), so this never skips a movement. Answers the partitions
    /// moved. The movements read again are duplicates, which change nothing.
    async fn rewind_consumer_offsets(
        &self,
        group_id: &str,
        topic: &str,
        offsets: &[PartitionOffset],
    ) -> Result<Vec<PartitionOffset>, DbError>;
    /// Levels written before `written_before` but not acknowledged on the stock topic yet,
    /// as they are now: those other writers left unpublished, oldest first, at most
    /// `limit`, and those of the ledger's owed publications, oldest first, until `limit`.
    async fn unpublished_levels(&self, written_before: DateTime<Utc>, limit: i64) -> Result<Unpublished, DbError>;
    /// How many movements are recorded.
    async fn movement_count(&self) -> Result<i64, DbError>;
}

/// The operator's: which event ids the ledger recorded, for `onhand dlq redrive` to tell
/// what came through.
#[async_trait]
pub trait MovementLookups: Send + Sync + std::fmt::Debug {
    /// Those of `ids` that are recorded in `movements`.
    async fn recorded_event_ids(&self, ids: &[EventId]) -> Result<Vec<EventId>, DbError>;
}

/// The read side's: levels by SKU, for the cache and the sinks.
#[async_trait]
pub trait StockReads: Send + Sync + std::fmt::Debug {
    /// At most `levels_max` levels of the SKUs after `after` (all SKUs when `None`), in SKU
    /// then location order: for paging through every level. The last SKU of a full page
    /// may have more levels on the next one.
    async fn stock_page(&self, after: Option<&Sku>, levels_max: i64) -> Result<Vec<StockLevel>, DbError>;
    /// The levels of a SKU at every location, ordered by location.
    async fn stock_by_sku(&self, sku: &Sku) -> Result<Vec<StockLevel>, DbError>;
    /// The levels of many SKUs in one read, ordered by SKU then location.
    async fn stock_by_skus(&self, skus: &[Sku]) -> Result<Vec<StockLevel>, DbError>;
}

/// The stock policies (reorder point, safety stock) an admin sets through the API.
#[async_trait]
pub trait StockPolicies: Send + Sync + std::fmt::Debug {
    /// Sets the stock policy of a level, creating the level (with nothing on hand) when no
    /// movement reached it yet. Bumps the version like every other write of the level.
    async fn set_policy(&self, key: &LevelKey, policy: StockPolicy) -> Result<StockLevel, DbError>;
}

/// The product catalog and the locations' names.
#[async_trait]
pub trait Catalog: Send + Sync + std::fmt::Debug {
    /// Creates or replaces products, in one transaction; answers how many were new.
    async fn put_products(&self, products: &[Product]) -> Result<u64, DbError>;
    async fn product(&self, sku: &Sku) -> Result<Option<StoredProduct>, DbError>;
    /// The products whose attribute `name` has one of `values`, ordered by SKU: how a
    /// connector finds the SKU of an outside id kept in the catalog (a Shopify variant id
    /// in `shopify_variant_id`). Answers nothing for a name with `"` or `\\` in it.
    async fn products_by_attribute(&self, name: &str, values: &[String]) -> Result<Vec<Product>, DbError>;
    /// Names locations that have none yet (a store's name from its stock report); answers
    /// how many were new.
    async fn name_locations(&self, names: &[(LocationId, String)]) -> Result<u64, DbError>;
}

/// The API keys, as hashes of their secrets.
#[async_trait]
pub trait Keys: Send + Sync + std::fmt::Debug {
    /// Stores a new API key; fails when its id is taken.
    async fn create_api_key(&self, key: &ApiKey) -> Result<(), DbError>;
    /// The API key with this id, revoked or not.
    async fn api_key(&self, id: &str) -> Result<Option<ApiKey>, DbError>;
    /// At most `limit` API keys, oldest first.
    async fn api_keys(&self, limit: i64) -> Result<Vec<ApiKey>, DbError>;
    /// Revokes an API key; answers false when no active key has this id.
    async fn revoke_api_key(&self, id: &str) -> Result<bool, DbError>;
}

/// Reservations and the idempotency keys of their requests.
#[async_trait]
pub trait ReservationRecords: Send + Sync + std::fmt::Debug {
    /// Takes a reservation, all lines or none, or answers why not; gives a retry with the
    /// same idempotency key the first decision again.
    async fn reserve(&self, new: &NewReservation<'_>) -> Result<Reserved, DbError>;
    async fn reservation(&self, id: &str) -> Result<Option<Reservation>, DbError>;
    /// Ends a held reservation: `Committed`, `Cancelled` or `Expired`.
    async fn close_reservation(&self, id: &str, to: Status, now: DateTime<Utc>) -> Result<Closed, DbError>;
    /// Held reservations whose time is up at `now`, at most `limit`, oldest first.
    async fn due_reservations(&self, now: DateTime<Utc>, limit: i64) -> Result<Vec<String>, DbError>;
    /// Idempotency keys older than `created_before` are forgotten; answers how many.
    async fn forget_idempotency_keys(&self, created_before: DateTime<Utc>) -> Result<u64, DbError>;
}

/// What waits to reach Kafka from outside the ledger: movements in the outbox, and the
/// levels the API wrote, once published.
#[async_trait]
pub trait Outbox: Send + Sync + std::fmt::Debug {
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
    /// Records publications of levels written outside a ledger batch (by the API).
    async fn record_published(&self, published: Vec<Published>) -> Result<(), DbError>;
}

/// What connectors keep between runs: their cursors.
#[async_trait]
pub trait ConnectorState: Send + Sync + std::fmt::Debug {
    /// A value a connector saved under `key` (a cursor), if any.
    async fn connector_state(&self, connector: &str, key: &str) -> Result<Option<String>, DbError>;
    /// Saves a connector's value under `key`, replacing the one before.
    async fn set_connector_state(&self, connector: &str, key: &str, value: &str) -> Result<(), DbError>;
}

/// How far behind each source is (see `freshness`).
#[async_trait]
pub trait Sources: Send + Sync + std::fmt::Debug {
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
}

/// What onhand heard from its sources apart from what they say of themselves (the newest
/// movement the ledger recorded, the last error a connector met), and the levels that
/// need a look: for `GET /v1/sources` and the signals' metrics.
#[async_trait]
pub trait Signals: Send + Sync + std::fmt::Debug {
    /// Records that the connector of `source` met `error` at `at`; kept after it recovered,
    /// until the next error. The text is cut to a few hundred characters.
    async fn record_error(&self, source: &str, error: &str, at: DateTime<Utc>) -> Result<(), DbError>;
    /// What was heard from every source, by name.
    async fn source_signals(&self) -> Result<Vec<SourceSignals>, DbError>;
    /// How many levels are below zero, how many hold more reserved units than on hand,
    /// and the units reserved over all.
    async fn level_anomalies(&self) -> Result<LevelAnomalies, DbError>;
}

/// Levels that are not wrong by the rules but deserve a person's look, and the units
/// checkouts hold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LevelAnomalies {
    /// Levels with on_hand below zero: sales recorded before the stock that covered them.
    pub negative: i64,
    /// Levels whose reserved units are more than their on_hand: a count or a loss took
    /// units that checkouts hold.
    pub overreserved: i64,
    /// The units reserved over every level.
    pub reserved: i64,
}

/// Whether the database answers, for `/readyz`.
#[async_trait]
pub trait Ping: Send + Sync + std::fmt::Debug {
    /// Checks that the database answers.
    async fn ping(&self) -> Result<(), DbError>;
}

/// The audit trail: recorded movements as they are, for `GET /v1/movements` and a level's
/// history. Every query is served by an index (migrations `*_history.sql`).
#[async_trait]
pub trait History: Send + Sync + std::fmt::Debug {
    /// The movements `query` selects, newest recorded first (`recorded_at`, then
    /// `event_id`, both descending), at most `query.limit`.
    async fn movements(&self, query: &MovementQuery) -> Result<Vec<RecordedMovement>, DbError>;
    /// The level just before `before`: the last count that occurred before it, and the
    /// sum of the deltas after that count (or of all, without one) that occurred before it.
    async fn level_start(&self, key: &LevelKey, before: DateTime<Utc>) -> Result<Start, DbError>;
    /// The movements of a level that occurred in `[since, until)`, at most `limit`, in
    /// occurred order.
    async fn level_movements(
        &self,
        key: &LevelKey,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<LevelMovement>, DbError>;
}

/// The operator's audit (`onhand verify`, `onhand rebuild`): every level and every
/// recorded movement read in one consistent snapshot, and recomputed levels written back
/// while the ledger waits. Reads are streamed to an [`AuditReader`], so that neither side
/// holds the movements in memory.
#[async_trait]
pub trait Audit: Send + Sync + std::fmt::Debug {
    /// Reads, in one snapshot (PostgreSQL's `REPEATABLE READ`, an SQLite read
    /// transaction), every level and then every movement into `reader`, and answers the
    /// rest of what that snapshot holds. Writers go on meanwhile; none of them waits.
    async fn audit(&self, reader: &mut dyn AuditReader) -> Result<AuditFacts, DbError>;
    /// Pauses the ledger and every other writer of `stock_levels` (PostgreSQL: `LOCK TABLE
    /// stock_levels IN SHARE ROW EXCLUSIVE MODE`, which every write of a level waits for;
    /// SQLite: its one write lock), reads every level and movement into `reader` as
    /// [`Audit::audit`] does, then writes the levels `reader` answers, each with its
    /// version bumped, in the same transaction: all of them or, when anything fails or the
    /// process stops, none. Answers the levels as written, which are unpublished until
    /// their publication is recorded. A writer that waited re-reads what it lost the race
    /// for (its compare-and-set on `version` fails).
    async fn rebuild(&self, reader: &mut dyn Rebuilding) -> Result<Vec<StockLevel>, DbError>;
}

/// What receives the audit's reads, in this order: [`counted`](Self::counted) once, every
/// level, then every movement.
pub trait AuditReader: Send {
    /// How many levels and movements the snapshot holds, before any is read.
    fn counted(&mut self, levels: u64, movements: u64);
    /// A stored level; levels come in (sku, location) order.
    fn level(&mut self, level: AuditedLevel);
    /// A recorded movement that may change a level (reservation events are left out).
    /// The movements of a level come together, levels in (sku, location) order, and a
    /// level's in ledger order: by the transaction that recorded them, then by their place
    /// on Kafka (partition, offset), then by event id.
    fn movement(&mut self, movement: Movement);
}

/// An [`AuditReader`] that, once everything is read, says which levels to write back.
pub trait Rebuilding: AuditReader {
    /// The levels to write, after the last movement was read.
    fn rewrites(&mut self) -> Vec<LevelRewrite>;
}

/// A stored level as the audit reads it: what is published, and what the ledger keeps
/// beside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditedLevel {
    pub level: StockLevel,
    /// The count on_hand is based on (`last_count_at` and its event id).
    pub last_count: Option<CountMark>,
    /// The newest version acknowledged on the stock topic.
    pub published_version: i64,
}

impl AuditedLevel {
    /// What the ledger's rules know of this level.
    pub fn state(&self) -> LevelState {
        LevelState {
            on_hand: self.level.on_hand,
            last_movement_at: self.level.last_movement_at,
            last_event_id: self.level.last_event_id.clone(),
            last_count: self.last_count.clone(),
        }
    }
}

/// A level's ledger columns as `onhand rebuild` writes them back; its reserved units and
/// stock policy stay as they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LevelRewrite {
    pub key: LevelKey,
    pub state: LevelState,
    /// The version read, which the write compares; `None` inserts a level that has
    /// movements but no row.
    pub version: Option<i64>,
}

/// The rest of what the audit's snapshot holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFacts {
    /// The units reservation lines hold at each level, in (sku, location) order: the lines
    /// of held reservations, and those of committed ones whose sale the ledger has not
    /// applied yet. Levels without any are left out.
    pub held: Vec<(LevelKey, i64)>,
    /// How many records wait in the outbox.
    pub outbox_records: i64,
    /// When the oldest of them was written.
    pub outbox_oldest: Option<DateTime<Utc>>,
    /// The levels of the ledger's owed publications (`Applied::owed`), each with when the
    /// oldest publication that owes it was written.
    pub owed: Vec<(LevelKey, DateTime<Utc>)>,
    /// Every consumer offset saved, by group, topic and partition.
    pub offsets: Vec<SavedOffset>,
}

/// A consumer group's saved next offset on one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedOffset {
    pub group_id: String,
    pub topic: String,
    pub partition: i32,
    pub next_offset: i64,
    pub updated_at: DateTime<Utc>,
}

/// Leases: which replica does a piece of work that must run in one place at a time (a
/// poller, an inbox), for `lease::Leaser`. Every time is the database's clock, so replicas
/// whose clocks disagree still agree on who holds a lease.
#[async_trait]
pub trait Leases: Send + Sync + std::fmt::Debug {
    /// Takes the lease `name` for `holder` until `ttl` from now, or renews it, in one
    /// conditional write: when it is free, expired, or `holder`'s already. Answers the lease
    /// when `holder` holds it now, `None` when another holder does.
    async fn acquire_lease(&self, name: &str, holder: &str, ttl: std::time::Duration)
        -> Result<Option<Lease>, DbError>;
    /// Gives the lease up when `holder` holds it, so that another may take it at once;
    /// answers whether it did.
    async fn release_lease(&self, name: &str, holder: &str) -> Result<bool, DbError>;
    /// The lease `name` as it is, expired or not, if anyone ever took it.
    async fn lease(&self, name: &str) -> Result<Option<Lease>, DbError>;
}

/// Alerts (`core::alerts`): each change of an alert is written with its event for the
/// alerts topic (`alert_outbox`) and a delivery for each webhook subscription that wants
/// it, in one transaction, so that no change is lost or told twice.
#[async_trait]
pub trait Alerts: Send + Sync + std::fmt::Debug {
    /// Decides the alerts of one level version once, and saves the reader's offset after
    /// it, in one transaction: when `version` is newer than the one decided last for
    /// `key`, records it, and writes what `decide` answers for the alerts of the level not
    /// resolved yet (new alerts open, or those alerts resolved). Answers the changes
    /// written, `None` when this version, or a newer one, was decided already.
    async fn decide_level(
        &self,
        progress: &Progress<'_>,
        key: &LevelKey,
        version: i64,
        decide: &(dyn for<'a> Fn(&'a [Alert]) -> Vec<Alert> + Send + Sync),
    ) -> Result<Option<Vec<Alert>>, DbError>;
    /// Saves the reader's offset after a record that decides nothing (unreadable).
    async fn skip_alert_message(&self, progress: &Progress<'_>) -> Result<(), DbError>;
    /// Raises `alert` unless an alert of its kind and subject is not resolved yet; answers
    /// whether it did.
    async fn raise_alert(&self, alert: &Alert) -> Result<bool, DbError>;
    /// Resolves the unresolved alert of `kind` about `subject`, if any, and answers it.
    async fn resolve_alert(&self, kind: AlertKind, subject: &str, now: DateTime<Utc>)
        -> Result<Option<Alert>, DbError>;
    /// Marks an open alert seen by `by`.
    async fn acknowledge_alert(&self, id: &str, by: &str, now: DateTime<Utc>) -> Result<Acknowledged, DbError>;
    async fn alert(&self, id: &str) -> Result<Option<Alert>, DbError>;
    /// The alerts `query` selects, by the time they last changed (then id), oldest first.
    async fn alerts(&self, query: &AlertQuery) -> Result<Vec<Alert>, DbError>;
    /// The held reservations with units at a level.
    async fn reservations_at(&self, key: &LevelKey) -> Result<Vec<ReservationAtRisk>, DbError>;
    /// Alert events waiting for the alerts topic, oldest first, at most `limit`.
    async fn alert_outbox(&self, limit: i64) -> Result<Vec<OutboxRecord>, DbError>;
    async fn delete_alert_outbox(&self, ids: &[i64]) -> Result<(), DbError>;
    async fn create_subscription(&self, subscription: &Subscription) -> Result<(), DbError>;
    /// Every subscription, oldest first, without secrets.
    async fn subscriptions(&self) -> Result<Vec<Subscription>, DbError>;
    /// Deletes a subscription and its delivery log; answers whether it existed.
    async fn delete_subscription(&self, id: &str) -> Result<bool, DbError>;
    /// A subscription's newest deliveries first, at most `limit`; `None` without it.
    async fn deliveries(&self, subscription_id: &str, limit: i64) -> Result<Option<Vec<Delivery>>, DbError>;
    /// Pending deliveries due at `now`, oldest first, at most `limit`, with where they go.
    async fn due_deliveries(&self, now: DateTime<Utc>, limit: i64) -> Result<Vec<DueDelivery>, DbError>;
    /// Records an attempt of a delivery: delivered, to be tried again at `next_at`, or dead.
    async fn record_attempt(&self, id: i64, attempt: &Attempt) -> Result<(), DbError>;
}

/// Where a reader of a topic is, saved with what it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress<'a> {
    pub group_id: &'a str,
    pub topic: &'a str,
    pub offset: PartitionOffset,
}

/// What acknowledging an alert did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acknowledged {
    /// It was open and is acknowledged now.
    Done(Alert),
    /// It was acknowledged before: nothing changed.
    Already(Alert),
    /// It is resolved: there is nothing to acknowledge.
    Resolved(Alert),
    NotFound,
}

/// What `Alerts::alerts` selects: each filter optional, all of them applying.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AlertQuery {
    pub location: Option<LocationId>,
    pub kind: Option<AlertKind>,
    pub state: Option<AlertState>,
    /// Changed at or after.
    pub since: Option<DateTime<Utc>>,
    pub limit: i64,
}

/// A webhook subscription to alerts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    pub id: String,
    pub url: String,
    /// The locations whose alerts it wants; `None`: every location, and the sources' alerts.
    pub locations: Option<Vec<LocationId>>,
    /// The kinds it wants; `None`: every kind.
    pub kinds: Option<Vec<AlertKind>>,
    /// A subscription to this sales channel's order events (its orders' status changes
    /// and back-in-stock notices) instead of alerts.
    pub channel: Option<String>,
    /// Signs every delivery; empty when read back, it is never answered.
    pub secret: String,
    pub created_at: DateTime<Utc>,
    pub created_by: String,
}

impl Subscription {
    /// Whether this subscription wants `alert`.
    pub fn wants(&self, alert: &Alert) -> bool {
        if self.channel.is_some() {
            return false;
        }
        let kind = self.kinds.as_ref().is_none_or(|kinds| kinds.contains(&alert.kind));
        let location = match (&self.locations, &alert.location) {
            (None, _) => true,
            (Some(wanted), Some(location)) => wanted.contains(location),
            (Some(_), None) => false,
        };
        kind && location
    }
}

/// One delivery of an alert event to a subscription, as its log shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub id: i64,
    pub event_id: String,
    pub state: DeliveryState,
    pub attempts: i32,
    pub next_at: DateTime<Utc>,
    pub last_status: Option<i32>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryState {
    Pending,
    Delivered,
    /// Given up after the configured number of attempts.
    Dead,
}

impl DeliveryState {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Dead => "dead",
        }
    }
}

/// A pending delivery with where it goes, for the deliverer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueDelivery {
    pub id: i64,
    pub url: String,
    pub secret: String,
    pub event_id: String,
    pub payload: String,
    /// Attempts made before this one.
    pub attempts: i32,
}

/// How one attempt of a delivery went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub state: DeliveryState,
    pub status: Option<i32>,
    pub error: Option<String>,
    pub at: DateTime<Utc>,
    /// When to try again, for a delivery still pending.
    pub next_at: DateTime<Utc>,
}

/// A lease as the database has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub name: String,
    pub holder: String,
    /// When `holder` took it (a renewal keeps it).
    pub acquired_at: DateTime<Utc>,
    /// When it is free for another to take, unless renewed before.
    pub expires_at: DateTime<Utc>,
    /// The holder whose expired lease `holder` took over, if it was not free.
    pub taken_from: Option<String>,
}

/// What `History::movements` selects: each filter is optional, and they all apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MovementQuery {
    pub sku: Option<Sku>,
    pub location: Option<LocationId>,
    /// The source's system and instance.
    pub source: Option<(SourceSystem, String)>,
    /// Recorded at or after.
    pub since: Option<DateTime<Utc>>,
    /// Recorded before.
    pub until: Option<DateTime<Utc>>,
    /// Only movements after this one in the order (older): the keyset of the page before.
    pub after: Option<MovementKey>,
    pub limit: i64,
}

/// A movement's place in the order of `History::movements`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct MovementKey {
    pub recorded_at: DateTime<Utc>,
    pub event_id: EventId,
}

/// A movement as the ledger recorded it.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedMovement {
    /// The event as received.
    pub movement: Movement,
    /// The signed change to on_hand; `None` for a count.
    pub delta: Option<i64>,
    pub effect: Effect,
    /// When the ledger recorded it.
    pub applied_at: DateTime<Utc>,
}

impl RecordedMovement {
    pub fn key(&self) -> MovementKey {
        MovementKey { recorded_at: self.movement.recorded_at, event_id: self.movement.event_id.clone() }
    }
}

/// Every role: the database as `open` answers it, implemented by `SqlDb`. Components take
/// the roles they use (`Arc<dyn StockReads>`), which an `Arc<dyn Db>` turns into by coercion.
pub trait Db:
    LedgerWrites
    + StockReads
    + StockPolicies
    + Catalog
    + Keys
    + ReservationRecords
    + Outbox
    + ConnectorState
    + Sources
    + Ping
    + History
    + MovementLookups
    + Audit
    + Leases
    + Signals
    + Alerts
    + Orders
{
}

/// An order as `POST /v1/orders` received it, before any decision.
#[derive(Debug, Clone)]
pub struct NewOrder<'a> {
    pub id: &'a str,
    /// Who sent it (the API key): idempotency keys are theirs alone.
    pub owner: &'a str,
    pub idempotency_key: &'a str,
    pub channel: &'a str,
    /// The order as checked, as canonical JSON: the same key with another order is refused.
    pub request: &'a str,
    /// Its `received` event (`onhand.order.v1`), written with it.
    pub event: ChannelEvent<'a>,
    pub now: DateTime<Utc>,
}

/// An event about a channel's order or back-in-stock wish, written in the transaction of
/// the change it tells of: to the order outbox (for the orders topic) and as a delivery to
/// each webhook subscription of its channel.
#[derive(Debug, Clone, Copy)]
pub struct ChannelEvent<'a> {
    /// The order or wish it is about: the topic's key.
    pub key: &'a str,
    /// The event's id (the same however often it is sent).
    pub id: &'a str,
    pub channel: &'a str,
    /// The event's JSON.
    pub payload: &'a str,
}

impl<'a> ChannelEvent<'a> {
    /// An order's event, as `payload` renders it.
    pub fn of_order(event: &'a crate::order::OrderEvent, payload: &'a str) -> ChannelEvent<'a> {
        ChannelEvent { key: &event.order_id, id: &event.event_id, channel: &event.channel, payload }
    }
}

/// What recording a received order did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// It is new, waiting for a decision.
    New(OrderRecord),
    /// The key was used before with the same order: the order as it is now.
    Replayed(OrderRecord),
    /// The key was used before with another order.
    KeyReused,
}

/// An order as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderRecord {
    pub id: String,
    pub owner: String,
    pub channel: String,
    pub status: crate::order::OrderStatus,
    /// The order as checked (JSON).
    pub request: String,
    /// What the worker decided (JSON), once it did.
    pub decision: Option<String>,
    pub reservation_id: Option<String>,
    pub received_at: DateTime<Utc>,
    pub decided_at: Option<DateTime<Utc>>,
}

/// The orders waiting for a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OrderQueue {
    pub waiting: i64,
    pub oldest_received_at: Option<DateTime<Utc>>,
}

/// An order decided (or cancelled) lately: its status now, and how long it waited for
/// its decision.
#[derive(Debug, Clone, PartialEq)]
pub struct RecentDecision {
    pub status: crate::order::OrderStatus,
    pub waited_s: f64,
}

/// One order of a delivery slot, booked only while the slot has room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Booking<'a> {
    pub location: &'a str,
    pub method: &'a str,
    pub date: chrono::NaiveDate,
    pub slot: &'a str,
    pub capacity: u32,
}

/// A worker's decision on a received order.
#[derive(Debug, Clone)]
pub struct OrderDecision<'a> {
    pub id: &'a str,
    /// `scheduled` or `rejected`.
    pub status: crate::order::OrderStatus,
    /// The decision as answered (JSON).
    pub decision: &'a str,
    pub reservation_id: Option<&'a str>,
    /// The slot a scheduled order takes.
    pub booking: Option<Booking<'a>>,
    /// The decision's event (`onhand.order.v1`), written with it.
    pub event: ChannelEvent<'a>,
    pub now: DateTime<Utc>,
}

/// A customer's wish to be told when a SKU is available again in a channel.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct BackInStock {
    pub id: String,
    #[serde(skip)]
    pub owner: String,
    pub channel: String,
    #[schema(value_type = String)]
    pub sku: Sku,
    pub customer: String,
    pub created_at: DateTime<Utc>,
    /// When the customer was told (the `onhand.back-in-stock.v1` event); null until then.
    pub notified_at: Option<DateTime<Utc>>,
}

/// A cart as stored: its lines as checked (JSON) and its hold, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CartRecord {
    pub id: String,
    pub owner: String,
    pub channel: String,
    pub lines: String,
    pub reservation_id: Option<String>,
    pub updated_at: DateTime<Utc>,
}

/// What writing a decision did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decided {
    Done,
    /// The order was decided already (or is unknown): nothing was written.
    Already,
    /// The slot filled up meanwhile: nothing was written; choose another.
    SlotFull,
}

/// Orders (`docs/orders.md`): received, queued and decided exactly once.
#[async_trait]
pub trait Orders: Send + Sync + std::fmt::Debug {
    /// Records a received order, or answers the one its owner's idempotency key recorded.
    async fn receive_order(&self, new: &NewOrder<'_>) -> Result<Received, DbError>;
    async fn order(&self, id: &str) -> Result<Option<OrderRecord>, DbError>;
    /// How many orders wait for a decision, and since when the oldest does.
    async fn order_queue(&self) -> Result<OrderQueue, DbError>;
    /// The orders decided since `since`, newest first, at most `limit`.
    async fn recent_decisions(&self, since: DateTime<Utc>, limit: i64) -> Result<Vec<RecentDecision>, DbError>;
    /// The ids of orders received before `before` still waiting, oldest first, at most
    /// `limit`: the ones to put on the orders topic again.
    async fn waiting_orders(&self, before: DateTime<Utc>, limit: i64) -> Result<Vec<String>, DbError>;
    /// The orders booked per slot for `method` at `location` from `from` to `to`, both
    /// included.
    async fn booked_slots(
        &self,
        location: &str,
        method: &str,
        from: chrono::NaiveDate,
        to: chrono::NaiveDate,
    ) -> Result<Vec<(chrono::NaiveDate, String, u32)>, DbError>;
    /// Writes the decision on a received order, its slot's booking and the worker's
    /// offset (when given) in one transaction, or nothing (see [`Decided`]); the offset is
    /// saved whatever the outcome but `SlotFull`.
    async fn decide_order(
        &self,
        decision: &OrderDecision<'_>,
        progress: Option<&Progress<'_>>,
    ) -> Result<Decided, DbError>;
    /// Cancels an order that is `from` (received or scheduled) in one transaction: its
    /// status, the booking it took given back, and `returns` (the movements that put a
    /// committed order's units back) written to the outbox. `None` when the order is no
    /// longer `from`: read it again.
    async fn cancel_order(
        &self,
        id: &str,
        from: crate::order::OrderStatus,
        booking: Option<Booking<'_>>,
        returns: &[Movement],
        event: ChannelEvent<'_>,
        now: DateTime<Utc>,
    ) -> Result<Option<Vec<OutboxRecord>>, DbError>;
    /// Records a customer's wish to hear when `sku` is available again in `channel`, or
    /// answers the one recorded before for the same owner, channel, SKU and customer.
    async fn watch_back_in_stock(&self, watch: &BackInStock) -> Result<BackInStock, DbError>;
    async fn back_in_stock(&self, id: &str) -> Result<Option<BackInStock>, DbError>;
    /// The wishes not told yet, oldest first, at most `limit`.
    async fn waiting_back_in_stock(&self, limit: i64) -> Result<Vec<BackInStock>, DbError>;
    /// Marks a wish told and writes its event to the order outbox, once: `false` when it
    /// was told already.
    async fn notify_back_in_stock(
        &self,
        id: &str,
        event: ChannelEvent<'_>,
        now: DateTime<Utc>,
    ) -> Result<bool, DbError>;
    /// Writes a cart (new or replaced), unless another owner has one of this id: then
    /// answers that one, unchanged.
    async fn put_cart(&self, cart: &CartRecord) -> Result<CartRecord, DbError>;
    async fn cart(&self, id: &str) -> Result<Option<CartRecord>, DbError>;
    /// Deletes a cart; answers whether there was one.
    async fn delete_cart(&self, id: &str) -> Result<bool, DbError>;
    /// Order events waiting for the orders topic, oldest first, at most `limit`.
    async fn order_outbox(&self, limit: i64) -> Result<Vec<OutboxRecord>, DbError>;
    async fn delete_order_outbox(&self, ids: &[i64]) -> Result<(), DbError>;
    /// Orders scheduled since `since` whose reservation is still held (a worker stopped
    /// between the decision and the commit), as (order id, reservation id), at most `limit`.
    async fn unsettled_orders(&self, since: DateTime<Utc>, limit: i64) -> Result<Vec<(String, String)>, DbError>;
}

/// A movement waiting in the outbox for the movements topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRecord {
    pub id: i64,
    pub key: String,
    pub payload: String,
}

/// Everything a reservation request carries into its transaction.
#[derive(Debug, Clone)]
pub struct NewReservation<'a> {
    /// Who asked (the API key): idempotency keys are theirs alone.
    pub owner: &'a str,
    pub idempotency_key: &'a str,
    /// The request as canonical JSON, to refuse the same key with another request.
    pub request: &'a str,
    pub id: &'a str,
    pub channel: &'a str,
    pub serving: &'a ChannelConfig,
    pub lines: &'a [LineRequest],
    pub now: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// The outcome of a reservation request.
#[derive(Debug, Clone)]
pub enum Reserved {
    /// Decided now, and saved as the key's decision.
    Decided { decision: Decision, levels: Vec<StockLevel>, outbox: Vec<OutboxRecord> },
    /// The key was used before for this request: its first decision.
    Replayed(Decision),
    /// The key was used before for another request.
    KeyReused,
}

/// What ending a reservation did.
#[derive(Debug, Clone)]
pub enum Closing {
    /// It was held and is now in the status asked.
    Done(Reservation),
    /// It already was in the status asked: nothing changed.
    Already(Reservation),
    /// It is in another status, which cannot change to the one asked; an expired
    /// reservation refuses a commit (and is expired now if it was not yet).
    Refused(Reservation),
    NotFound,
}

#[derive(Debug, Clone)]
pub struct Closed {
    pub closing: Closing,
    pub levels: Vec<StockLevel>,
    pub outbox: Vec<OutboxRecord>,
}

/// The database, PostgreSQL or SQLite as `D` says: `PostgresDb` and `SqliteDb`.
pub struct SqlDb<D: Database> {
    pool: Pool<D>,
}

impl<D: Database> Clone for SqlDb<D> {
    fn clone(&self) -> Self {
        SqlDb { pool: self.pool.clone() }
    }
}

impl<D: Database> std::fmt::Debug for SqlDb<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlDb").field("pool", &self.pool).finish()
    }
}

impl<D: Database> SqlDb<D> {
    /// A database whose migrations have run.
    fn migrated(pool: Pool<D>) -> Self {
        SqlDb { pool }
    }

    pub fn pool(&self) -> &Pool<D> {
        &self.pool
    }

    async fn conn(&self) -> Result<PoolConnection<D>, DbError> {
        Ok(self.pool.acquire().await?)
    }
}

/// PostgreSQL, the production database (`postgres.rs`).
pub type PostgresDb = SqlDb<sqlx::Postgres>;
/// SQLite, the embedded database of `onhand dev` (`sqlite.rs`).
pub type SqliteDb = SqlDb<sqlx::Sqlite>;

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

/// The URL without its password, for messages.
pub fn redact_url(url: &str) -> String {
    let (base, query) = url.split_once('?').map_or((url, None), |(b, q)| (b, Some(q)));
    let mut out = match (base.find("://"), base.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let credentials = &base[scheme_end + 3..at];
            let user = credentials.split(':').next().unwrap_or_default();
            format!("{}{user}:***{}", &base[..scheme_end + 3], &base[at..])
        }
        _ => base.to_string(),
    };
    if let Some(query) = query {
        // libpq's parameters may carry secrets too: password=, sslpassword=.
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((key, _)) if key.to_ascii_lowercase().contains("password") => format!("{key}=***"),
                _ => pair.to_string(),
            })
            .collect();
        out.push('?');
        out.push_str(&pairs.join("&"));
    }
    out
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod redaction {
    #[test]
    fn passwords_are_not_shown() {
        assert_eq!(super::redact_url("postgres://u:secret@h:5432/db"), "postgres://u:***@h:5432/db");
        assert_eq!(super::redact_url("sqlite:///tmp/x.db"), "sqlite:///tmp/x.db");
        // L8: libpq takes the password as a parameter too.
        assert_eq!(
            super::redact_url("postgres://h/db?user=u&password=secret&sslmode=require&sslpassword=s2"),
            "postgres://h/db?user=u&password=***&sslmode=require&sslpassword=***"
        );
    }
}
