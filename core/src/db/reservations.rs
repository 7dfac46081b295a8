//! The transactions of reservations, written once for both databases: taking one
//! ([`reserve`]) and ending one ([`close`]), from the steps of a [`ReservationTx`]. Only
//! the writes of many rows and the search for similar products are the [`Dialect`]'s.

use std::{
    collections::{BTreeMap, HashMap},
    ops::DerefMut,
};

use chrono::{DateTime, Utc};
use sqlx::{Database, Pool, Transaction};

use super::{
    corrupt,
    dialect::{stock_level, Dialect},
    driver::{query, Cells, List, Time},
    Closed, Closing, DbError, NewReservation, OutboxRecord, Reserved,
};
use crate::{
    config::ChannelConfig,
    event::{LocationId, Movement, MovementKind, Sku, StockLevel},
    ledger::rules::LevelKey,
    reservation::{self, Decision, Line, Reservation, ShortLine, Status, Suggestion},
};

/// How many times a reservation re-reads the levels after another writer took the units
/// it planned on, before it answers with what it last read.
const PLAN_ROUNDS_MAX: u32 = 8;
/// How many similar SKUs a short line suggests.
const SUGGESTIONS_MAX: usize = 5;

/// A [`Decision`] as `idempotency_keys` keeps it: `status` names the kind with the numbers
/// its rows have always carried (held 201, short 409), and `body` is the decision as JSON
/// (the reservation, or `{"short_lines": [...]}`; rows written before decisions were typed
/// also carry an `error` beside the short lines, which reading ignores).
#[derive(Debug, Clone, PartialEq, Eq)]
struct SavedDecision {
    pub status: i64,
    pub body: String,
}

const SAVED_HELD: i64 = 201;
const SAVED_SHORT: i64 = 409;

#[derive(serde::Serialize, serde::Deserialize)]
struct SavedShort {
    short_lines: Vec<ShortLine>,
}

impl SavedDecision {
    fn of(decision: &Decision) -> SavedDecision {
        let (status, body) = match decision {
            Decision::Held(reservation) => (SAVED_HELD, serde_json::to_string(reservation)),
            Decision::Short(lines) => (SAVED_SHORT, serde_json::to_string(&SavedShort { short_lines: lines.clone() })),
        };
        SavedDecision { status, body: body.expect("a decision always serializes") }
    }

    fn decision(&self) -> Result<Decision, DbError> {
        let unreadable = |e: serde_json::Error| corrupt(format!("a saved reservation decision: {e}"));
        match self.status {
            SAVED_HELD => serde_json::from_str(&self.body).map(Decision::Held).map_err(unreadable),
            SAVED_SHORT => serde_json::from_str::<SavedShort>(&self.body)
                .map(|s| Decision::Short(s.short_lines))
                .map_err(unreadable),
            other => Err(corrupt(format!("a saved reservation decision of kind {other}"))),
        }
    }
}

/// Takes a reservation: all lines or none, decided by conditional updates in the database.
pub(super) async fn reserve<D: Dialect>(
    mut tx: ReservationTx<D>,
    new: &NewReservation<'_>,
) -> Result<Reserved, DbError> {
    // The first statement claims the key: a concurrent request with the same key waits
    // here for this transaction, then finds its decision.
    if let Some((request, saved)) = tx.claim_key(new.owner, new.idempotency_key, new.request, new.now).await? {
        return Ok(match saved {
            Some(saved) if request == new.request => Reserved::Replayed(saved.decision()?),
            _ => Reserved::KeyReused,
        });
    }
    let mut skus: Vec<&Sku> = new.lines.iter().map(|l| &l.sku).collect();
    skus.sort();
    skus.dedup();
    let mut round = 0;
    let (decision, levels, outbox) = loop {
        round += 1;
        let available: BTreeMap<LevelKey, i64> = tx
            .levels_of(&skus)
            .await?
            .into_iter()
            .map(|l| ((l.sku.clone(), l.location.clone()), l.available()))
            .collect();
        let locations = match reservation::plan(new.lines, &available, |l| new.serving.serves(l.as_str())) {
            Ok(locations) => locations,
            Err(short) => {
                let lines = short_lines(&mut tx, new, short).await?;
                break (Decision::Short(lines), Vec::new(), Vec::new());
            }
        };
        let lines: Vec<Line> = new
            .lines
            .iter()
            .zip(locations)
            .zip(1..)
            .map(|((l, location), n)| Line { line: n, sku: l.sku.clone(), location, quantity: l.quantity })
            .collect();
        tx.savepoint().await?;
        let holds = reservation::holds(&lines);
        let mut levels = Vec::new();
        for (key, quantity) in &holds {
            match tx.change_reserved(key, *quantity, new.now).await? {
                Some(level) => levels.push(level),
                None => break,
            }
        }
        if levels.len() < holds.len() {
            // Another writer took units between the read and the update: read again.
            tx.rollback_to_savepoint().await?;
            if round < PLAN_ROUNDS_MAX {
                continue;
            }
            return Err(DbError::Contended);
        }
        let reservation = Reservation {
            id: new.id.to_string(),
            channel: new.channel.to_string(),
            status: Status::Held,
            created_at: new.now,
            expires_at: new.expires_at,
            closed_at: None,
            lines,
            owner: Some(new.owner.to_string()),
        };
        tx.insert_reservation(&reservation).await?;
        let outbox = tx.enqueue(&reservation::events(&reservation, MovementKind::Reserve, new.now), new.now).await?;
        break (Decision::Held(reservation), levels, outbox);
    };
    tx.save_decision(new.owner, new.idempotency_key, &SavedDecision::of(&decision)).await?;
    tx.commit().await?;
    Ok(Reserved::Decided { decision, levels, outbox })
}

async fn short_lines<D: Dialect>(
    tx: &mut ReservationTx<D>,
    new: &NewReservation<'_>,
    short: Vec<(usize, i64)>,
) -> Result<Vec<ShortLine>, DbError> {
    let mut lines = Vec::with_capacity(short.len());
    for (i, available) in short {
        let line = &new.lines[i];
        let suggestions = match tx.similar_in_stock(&line.sku, new.serving, line.quantity).await? {
            Some(similar) => reservation::rank_suggestions(
                similar.category.as_deref(),
                &similar.attributes,
                similar.candidates,
                SUGGESTIONS_MAX,
            ),
            None => Vec::new(),
        };
        lines.push(ShortLine {
            line: i as i32 + 1,
            sku: line.sku.clone(),
            requested: line.quantity,
            available,
            suggestions,
        });
    }
    Ok(lines)
}

/// Ends a held reservation: `Committed` queues its sales, `Cancelled` and `Expired`
/// release its units. A commit of a reservation past its time expires it instead.
pub(super) async fn close<D: Dialect>(
    mut tx: ReservationTx<D>,
    id: &str,
    to: Status,
    now: DateTime<Utc>,
) -> Result<Closed, DbError> {
    let mut closed = Closed { closing: Closing::NotFound, levels: Vec::new(), outbox: Vec::new() };
    let moved = tx.close_held(id, to, now, to == Status::Committed).await?;
    let expired_on_commit = !moved && to == Status::Committed && tx.close_held(id, Status::Expired, now, false).await?;
    let Some(reservation) = tx.load_reservation(id).await? else {
        return Ok(closed);
    };
    if moved || expired_on_commit {
        let kind = match reservation.status {
            Status::Committed => MovementKind::Commit,
            _ => {
                for (key, quantity) in reservation::holds(&reservation.lines) {
                    let level = tx.change_reserved(&key, -quantity, now).await?;
                    closed.levels.push(level.ok_or_else(|| corrupt("a reserved level disappeared"))?);
                }
                MovementKind::Release
            }
        };
        closed.outbox = tx.enqueue(&reservation::events(&reservation, kind, now), now).await?;
        tx.commit().await?;
    }
    closed.closing = match reservation.status {
        _ if moved => Closing::Done(reservation),
        status if status == to => Closing::Already(reservation),
        _ => Closing::Refused(reservation),
    };
    Ok(closed)
}

/// A reservation transaction, and its steps.
pub(super) struct ReservationTx<D: Database> {
    tx: Transaction<'static, D>,
}

/// The short SKU's category and attributes, and the candidates to rank against them.
struct SimilarProducts {
    category: Option<String>,
    attributes: HashMap<String, String>,
    candidates: Vec<(Suggestion, Option<String>, HashMap<String, String>)>,
}

impl<D: Dialect> ReservationTx<D> {
    pub(super) async fn begin(pool: &Pool<D>) -> Result<Self, DbError> {
        Ok(ReservationTx { tx: D::begin_write(pool).await? })
    }

    /// Claims an idempotency key for `request`; when it was claimed before, answers the
    /// request it was claimed for and its decision.
    async fn claim_key(
        &mut self,
        owner: &str,
        key: &str,
        request: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<(String, Option<SavedDecision>)>, DbError> {
        let claimed = query::<D>(
            "INSERT INTO idempotency_keys (owner, key, request, created_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (owner, key) DO NOTHING",
        )
        .bind(owner)
        .bind(key)
        .bind(request)
        .bind(Time(now))
        .execute(&mut *self.tx)
        .await?;
        if claimed == 1 {
            return Ok(None);
        }
        let row = query::<D>("SELECT request, status, body FROM idempotency_keys WHERE owner = $1 AND key = $2")
            .bind(owner)
            .bind(key)
            .fetch_one(&mut *self.tx)
            .await?;
        let saved = match (row.cell::<Option<i32>>("status")?, row.cell::<Option<String>>("body")?) {
            (Some(status), Some(body)) => Some(SavedDecision { status: i64::from(status), body }),
            _ => None,
        };
        Ok(Some((row.cell("request")?, saved)))
    }

    async fn save_decision(&mut self, owner: &str, key: &str, decision: &SavedDecision) -> Result<(), DbError> {
        query::<D>("UPDATE idempotency_keys SET status = $3, body = $4 WHERE owner = $1 AND key = $2")
            .bind(owner)
            .bind(key)
            .bind(i32::try_from(decision.status).map_err(corrupt)?)
            .bind(decision.body.as_str())
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    async fn levels_of(&mut self, skus: &[&Sku]) -> Result<Vec<StockLevel>, DbError> {
        let skus: Vec<&str> = skus.iter().map(|s| s.as_str()).collect();
        let rows = query::<D>(D::STOCK_BY_SKUS).bind(List(&skus)).fetch_all(&mut *self.tx).await?;
        rows.iter().map(stock_level).collect()
    }

    async fn savepoint(&mut self) -> Result<(), DbError> {
        query::<D>("SAVEPOINT hold").execute(&mut *self.tx).await?;
        Ok(())
    }

    async fn rollback_to_savepoint(&mut self) -> Result<(), DbError> {
        query::<D>("ROLLBACK TO SAVEPOINT hold").execute(&mut *self.tx).await?;
        Ok(())
    }

    /// Adds `delta` to the level's reserved units: a hold (> 0) only if that many units
    /// are available, a release (< 0) always. The level as written, or `None` when the
    /// units are not available (any more) or the level does not exist. In PostgreSQL, at
    /// READ COMMITTED, an update that waited for another writer's row lock checks its
    /// condition again on the row as that writer left it, which is what makes the last
    /// unit go to one request; in SQLite the transaction is the only writer.
    async fn change_reserved(
        &mut self,
        (sku, location): &LevelKey,
        delta: i64,
        now: DateTime<Utc>,
    ) -> Result<Option<StockLevel>, DbError> {
        let row = query::<D>(concat!(
            "UPDATE stock_levels SET reserved = reserved + $3, version = version + 1, updated_at = $4
             WHERE sku = $1 AND location = $2 AND ($3 < 0 OR on_hand - reserved - safety_stock >= $3)
             RETURNING ",
            stock_level_columns!()
        ))
        .bind(sku.as_str())
        .bind(location.as_str())
        .bind(delta)
        .bind(Time(now))
        .fetch_optional(&mut *self.tx)
        .await?;
        row.as_ref().map(stock_level).transpose()
    }

    async fn insert_reservation(&mut self, r: &Reservation) -> Result<(), DbError> {
        query::<D>(
            "INSERT INTO reservations (id, channel, status, created_at, expires_at, owner) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(r.id.as_str())
        .bind(r.channel.as_str())
        .bind(r.status.as_str())
        .bind(Time(r.created_at))
        .bind(Time(r.expires_at))
        .bind(r.owner.as_deref())
        .execute(&mut *self.tx)
        .await?;
        D::insert_reservation_lines(&mut self.tx, r).await
    }

    /// Moves a held reservation to `to`; with `unexpired_only`, only if it has not expired
    /// at `now`. Answers whether it moved.
    async fn close_held(
        &mut self,
        id: &str,
        to: Status,
        now: DateTime<Utc>,
        unexpired_only: bool,
    ) -> Result<bool, DbError> {
        let moved = query::<D>(
            "UPDATE reservations SET status = $2, closed_at = $3
             WHERE id = $1 AND status = 'held' AND (NOT $4 OR expires_at > $3)",
        )
        .bind(id)
        .bind(to.as_str())
        .bind(Time(now))
        .bind(unexpired_only)
        .execute(&mut *self.tx)
        .await?;
        Ok(moved == 1)
    }

    async fn load_reservation(&mut self, id: &str) -> Result<Option<Reservation>, DbError> {
        load_reservation::<D>(&mut *self.tx, id).await
    }

    async fn enqueue(&mut self, movements: &[Movement], now: DateTime<Utc>) -> Result<Vec<OutboxRecord>, DbError> {
        D::enqueue(&mut self.tx, movements, now).await
    }

    /// Products like `sku` (same category or a shared attribute) that one serving
    /// location has at least `quantity` of, with their category and attributes.
    async fn similar_in_stock(
        &mut self,
        sku: &Sku,
        serving: &ChannelConfig,
        quantity: i64,
    ) -> Result<Option<SimilarProducts>, DbError> {
        let Some(product) =
            query::<D>("SELECT category, CAST(attributes AS TEXT) AS attributes FROM products WHERE sku = $1")
                .bind(sku.as_str())
                .fetch_optional(&mut *self.tx)
                .await?
        else {
            return Ok(None);
        };
        let category: Option<String> = product.cell("category")?;
        let attributes: String = product.cell("attributes")?;
        let rows = query::<D>(D::SIMILAR_IN_STOCK)
            .bind(sku.as_str())
            .bind(category.as_deref())
            .bind(attributes.as_str())
            .bind(serving.all_locations)
            .bind(List(&serving.locations))
            .bind(quantity)
            .fetch_all(&mut *self.tx)
            .await?;
        let candidates = rows
            .iter()
            .map(|row| {
                let suggestion = Suggestion {
                    sku: Sku::parse(row.cell::<String>("sku")?).map_err(corrupt)?,
                    name: row.cell("name")?,
                    available: row.cell("available")?,
                };
                Ok((suggestion, row.cell("category")?, text_attributes(&row.cell::<String>("attributes")?)))
            })
            .collect::<Result<_, DbError>>()?;
        Ok(Some(SimilarProducts { category, attributes: text_attributes(&attributes), candidates }))
    }

    async fn commit(self) -> Result<(), DbError> {
        self.tx.commit().await?;
        Ok(())
    }
}

/// A reservation with its lines, ordered by line.
pub(super) async fn load_reservation<D: Dialect>(
    conn: impl DerefMut<Target = D::Connection> + Send,
    id: &str,
) -> Result<Option<Reservation>, DbError> {
    let rows = query::<D>(
        "SELECT r.id, r.channel, r.status, r.created_at, r.expires_at, r.closed_at, r.owner,
                l.line, l.sku, l.location, l.quantity
         FROM reservations r JOIN reservation_lines l ON l.reservation_id = r.id
         WHERE r.id = $1 ORDER BY l.line",
    )
    .bind(id)
    .fetch_all(conn)
    .await?;
    let Some(first) = rows.first() else { return Ok(None) };
    let status: String = first.cell("status")?;
    let lines = rows.iter().map(|row| {
        Ok(Line {
            line: row.cell("line")?,
            sku: Sku::parse(row.cell::<String>("sku")?).map_err(corrupt)?,
            location: LocationId::parse(row.cell::<String>("location")?).map_err(corrupt)?,
            quantity: row.cell("quantity")?,
        })
    });
    Ok(Some(Reservation {
        id: first.cell("id")?,
        channel: first.cell("channel")?,
        status: Status::parse(&status).ok_or_else(|| corrupt(format!("unknown reservation status {status:?}")))?,
        created_at: first.time("created_at")?,
        expires_at: first.time("expires_at")?,
        closed_at: first.optional_time("closed_at")?,
        lines: lines.collect::<Result<_, DbError>>()?,
        owner: first.cell("owner")?,
    }))
}

/// Product attributes as text, whatever JSON type a value has.
fn text_attributes(json: &str) -> HashMap<String, String> {
    let map: serde_json::Map<String, serde_json::Value> = serde_json::from_str(json).unwrap_or_default();
    map.into_iter()
        .map(|(k, v)| {
            let v = match v {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            };
            (k, v)
        })
        .collect()
}
