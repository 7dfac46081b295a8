//! What PostgreSQL and SQLite do differently ([`Dialect`]), and the codecs of the rows
//! both read alike.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{Pool, Transaction};

use super::{
    batch::{Allocation, LedgerTx, Recording, StoredLevel},
    corrupt,
    driver::{Cells, Driver},
    DbError, OutboxRecord,
};
use crate::{
    auth::{ApiKey, Binding, Scopes},
    event::{EventId, LocationId, Movement, Sku, StockLevel},
    ledger::rules::{CountMark, LevelKey, LevelState},
    product::Product,
    reservation::Reservation,
};

/// What PostgreSQL and SQLite do differently.
#[async_trait]
pub(super) trait Dialect: Driver {
    /// Begins a transaction that writes. SQLite takes its one write lock here (`BEGIN
    /// IMMEDIATE`, waiting up to its busy timeout): a transaction that took the lock only
    /// at its first write could find that another writer committed since it read, and
    /// fail without waiting.
    const BEGIN_WRITE: &'static str;
    /// The levels of the SKUs in the list `$1`, ordered by SKU then location.
    const STOCK_BY_SKUS: &'static str;
    /// The state of source `$1`, which the transaction will write: locked in PostgreSQL,
    /// where replicas may hear from one source at once.
    const SOURCE_FOR_UPDATE: &'static str;
    /// Product rows (sku, name, category, attributes as text) whose attribute `$1` has a
    /// value in the list `$2`, ordered by SKU.
    const PRODUCTS_BY_ATTRIBUTE: &'static str;
    /// Products other than `$1` in category `$2` or sharing an attribute of `$3`, with
    /// their most `available` at a serving location (every one when `$4`, else those in
    /// the list `$5`) at least `$6`: the same category first, then the most available.
    const SIMILAR_IN_STOCK: &'static str;
    /// Deletes the outbox records whose ids are in the list `$1`.
    const DELETE_OUTBOX: &'static str;
    /// A movement's `source.system` and `source.instance`, read from its stored event: the
    /// very expressions the index `movements_source_recorded` is built on.
    const SOURCE_SYSTEM: &'static str;
    const SOURCE_INSTANCE: &'static str;
    /// Begins a transaction that reads one snapshot of every table and writes nothing.
    const BEGIN_SNAPSHOT: &'static str;
    /// Begins the transaction of `onhand rebuild`, which writes levels.
    const BEGIN_REBUILD: &'static str;
    /// Run first in that transaction: what makes every other writer of `stock_levels`,
    /// the ledger first, wait until it ends. (SQLite's write lock is taken by its begin.)
    const PAUSE_WRITERS: &'static [&'static str];
    /// The database's clock now, as its column of a time holds it: leases expire by it,
    /// never by a replica's clock.
    const NOW: &'static str;
    /// The database's clock plus `$3` milliseconds, as `NOW`.
    const NOW_PLUS_MS_3: &'static str;

    async fn begin_write(pool: &Pool<Self>) -> Result<Transaction<'static, Self>, DbError> {
        Ok(pool.begin_with(Self::BEGIN_WRITE).await?)
    }

    /// The steps of a ledger batch, in the transaction `tx` is the connection of, its
    /// movements recorded as `recording` says (a database without a faster way to take
    /// rows that are all new may skip known ones always).
    fn ledger(tx: &mut Self::Connection, recording: Recording) -> Box<dyn LedgerTx + '_>;
    /// Creates or replaces products; answers how many were new.
    async fn put_products(conn: &mut Self::Connection, products: &[Product]) -> Result<u64, DbError>;
    /// Names the locations that have no name yet; answers how many.
    async fn name_locations(conn: &mut Self::Connection, names: &[(LocationId, String)]) -> Result<u64, DbError>;
    async fn insert_reservation_lines(conn: &mut Self::Connection, reservation: &Reservation) -> Result<(), DbError>;
    /// Writes movements to the outbox, in order.
    async fn enqueue(
        conn: &mut Self::Connection,
        movements: &[Movement],
        now: DateTime<Utc>,
    ) -> Result<Vec<OutboxRecord>, DbError>;
}

/// A published level from the columns of `stock_level_columns!`.
pub(super) fn stock_level(row: &impl Cells) -> Result<StockLevel, DbError> {
    let (sku, location) = level_key(row)?;
    Ok(StockLevel {
        sku,
        location,
        on_hand: row.cell("on_hand")?,
        reserved: row.cell("reserved")?,
        safety_stock: row.cell("safety_stock")?,
        reorder_point: row.cell("reorder_point")?,
        version: row.cell("version")?,
        last_movement_at: row.optional_time("last_movement_at")?,
        last_event_id: optional_event_id(row.cell("last_event_id")?)?,
        last_count_at: row.optional_time("last_count_at")?,
        updated_at: row.time("updated_at")?,
        // The database keeps no trace of where the last movement came from: only the
        // ledger's publication of a level it just wrote carries it.
        last_recorded_at: None,
        last_source: None,
    })
}

/// The level a row of `stock_levels` is of, from its `sku` and `location`.
pub(super) fn level_key(row: &impl Cells) -> Result<LevelKey, DbError> {
    Ok((
        Sku::parse(row.cell::<String>("sku")?).map_err(corrupt)?,
        LocationId::parse(row.cell::<String>("location")?).map_err(corrupt)?,
    ))
}

/// A level as the ledger reads it before writing it again.
pub(super) fn stored_level(row: &impl Cells) -> Result<(LevelKey, StoredLevel), DbError> {
    let last_count = match (row.optional_time("last_count_at")?, row.cell::<Option<String>>("last_count_event_id")?) {
        (Some(at), Some(id)) => Some(CountMark { at, event_id: EventId::parse(id).map_err(corrupt)? }),
        _ => None,
    };
    let state = LevelState {
        on_hand: row.cell("on_hand")?,
        last_movement_at: row.optional_time("last_movement_at")?,
        last_event_id: optional_event_id(row.cell("last_event_id")?)?,
        last_count,
    };
    let allocation = Allocation {
        reserved: row.cell("reserved")?,
        safety_stock: row.cell("safety_stock")?,
        reorder_point: row.cell("reorder_point")?,
    };
    Ok((level_key(row)?, StoredLevel { state, allocation, version: row.cell("version")? }))
}

/// A product from its `sku`, `name`, `category` and `attributes` (as JSON text).
pub(super) fn product(row: &impl Cells) -> Result<Product, DbError> {
    Ok(Product {
        sku: Sku::parse(row.cell::<String>("sku")?).map_err(corrupt)?,
        name: row.cell("name")?,
        category: row.cell("category")?,
        attributes: serde_json::from_str(&row.cell::<String>("attributes")?).map_err(corrupt)?,
    })
}

/// An API key from the columns of `api_key_columns!`.
pub(super) fn api_key(row: &impl Cells) -> Result<ApiKey, DbError> {
    let mut secret_sha256 = [0u8; 32];
    hex::decode_to_slice(row.cell::<String>("secret_hash")?, &mut secret_sha256).map_err(corrupt)?;
    let bound_to = row.cell::<Option<String>>("bound_to")?;
    Ok(ApiKey {
        id: row.cell("id")?,
        name: row.cell("name")?,
        scopes: Scopes::parse(&row.cell::<String>("scopes")?).map_err(corrupt)?,
        secret_sha256,
        created_at: row.time("created_at")?,
        revoked_at: row.optional_time("revoked_at")?,
        bound_to: bound_to.map(|b| Binding::parse(&b).map_err(corrupt)).transpose()?,
    })
}

fn optional_event_id(id: Option<String>) -> Result<Option<EventId>, DbError> {
    id.map(|id| EventId::parse(id).map_err(corrupt)).transpose()
}
