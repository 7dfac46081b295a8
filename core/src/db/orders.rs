//! The [`Orders`] role on both databases (migrations `*_orders.sql`). An order is one row,
//! received, then decided by one conditional update (`status = 'received'`) in the same
//! transaction as its slot's booking and the worker's offset: a decision re-delivered, or
//! taken by a second worker, writes nothing.

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};

use super::{
    alerts::{events_waiting, forget_events, save_progress},
    corrupt,
    dialect::Dialect,
    driver::{query, Cells, Time},
    BackInStock, Booking, CartRecord, ChannelEvent, DbError, Decided, NewOrder, OrderDecision, OrderQueue, OrderRecord,
    Orders, OutboxRecord, Progress, Received, RecentDecision, SqlDb,
};
use crate::{
    event::{Movement, Sku},
    order::OrderStatus,
};

const ORDER_COLUMNS: &str = "id, owner, channel, status, request, decision, reservation_id, received_at, decided_at";
const CART_COLUMNS: &str = "id, owner, channel, lines, reservation_id, updated_at";
const WATCH_COLUMNS: &str = "id, owner, channel, sku, customer, created_at, notified_at";
const DAY_FORMAT: &str = "%Y-%m-%d";

#[async_trait]
impl<D: Dialect> Orders for SqlDb<D> {
    async fn receive_order(&self, new: &NewOrder<'_>) -> Result<Received, DbError> {
        let mut tx = D::begin_write(&self.pool).await?;
        let inserted = query::<D>(
            "INSERT INTO orders (id, owner, idempotency_key, channel, status, request, received_at)
             VALUES ($1, $2, $3, $4, 'received', $5, $6)
             ON CONFLICT (owner, idempotency_key) DO NOTHING",
        )
        .bind(new.id)
        .bind(new.owner)
        .bind(new.idempotency_key)
        .bind(new.channel)
        .bind(new.request)
        .bind(Time(new.now))
        .execute(&mut *tx)
        .await?;
        if inserted == 1 {
            order_event::<D>(&mut tx, &new.event, new.now).await?;
        }
        let sql = format!("SELECT {ORDER_COLUMNS} FROM orders WHERE owner = $1 AND idempotency_key = $2");
        let row = query::<D>(&sql).bind(new.owner).bind(new.idempotency_key).fetch_one(&mut *tx).await?;
        tx.commit().await?;
        let found = order(&row)?;
        Ok(match (inserted, found.request == new.request) {
            (1, _) => Received::New(found),
            (_, true) => Received::Replayed(found),
            (_, false) => Received::KeyReused,
        })
    }

    async fn order(&self, id: &str) -> Result<Option<OrderRecord>, DbError> {
        let sql = format!("SELECT {ORDER_COLUMNS} FROM orders WHERE id = $1");
        let row = query::<D>(&sql).bind(id).fetch_optional(self.conn().await?).await?;
        row.as_ref().map(order).transpose()
    }

    async fn order_queue(&self) -> Result<OrderQueue, DbError> {
        // Both read the partial index of waiting orders.
        let row = query::<D>(
            "SELECT (SELECT COUNT(*) FROM orders WHERE status = 'received') AS waiting,
                    (SELECT MIN(received_at) FROM orders WHERE status = 'received') AS oldest",
        )
        .fetch_one(self.conn().await?)
        .await?;
        Ok(OrderQueue { waiting: row.cell("waiting")?, oldest_received_at: row.optional_time("oldest")? })
    }

    async fn recent_decisions(&self, since: DateTime<Utc>, limit: i64) -> Result<Vec<RecentDecision>, DbError> {
        let rows = query::<D>(
            "SELECT status, received_at, decided_at FROM orders WHERE decided_at >= $1
             ORDER BY decided_at DESC LIMIT $2",
        )
        .bind(Time(since))
        .bind(limit)
        .fetch_all(self.conn().await?)
        .await?;
        rows.iter()
            .map(|row| {
                let status: String = row.cell("status")?;
                let status = OrderStatus::parse(&status).ok_or_else(|| corrupt(format!("order status {status:?}")))?;
                let waited = row.time("decided_at")? - row.time("received_at")?;
                Ok(RecentDecision { status, waited_s: waited.to_std().map_or(0.0, |d| d.as_secs_f64()) })
            })
            .collect()
    }

    async fn waiting_orders(&self, before: DateTime<Utc>, limit: i64) -> Result<Vec<String>, DbError> {
        let rows = query::<D>(
            "SELECT id FROM orders WHERE status = 'received' AND received_at < $1 ORDER BY received_at, id LIMIT $2",
        )
        .bind(Time(before))
        .bind(limit)
        .fetch_all(self.conn().await?)
        .await?;
        rows.iter().map(|row| row.cell("id")).collect()
    }

    async fn booked_slots(
        &self,
        location: &str,
        method: &str,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Vec<(NaiveDate, String, u32)>, DbError> {
        let rows = query::<D>(
            "SELECT day, slot, booked FROM delivery_bookings
             WHERE location = $1 AND method = $2 AND day >= $3 AND day <= $4 ORDER BY day, slot",
        )
        .bind(location)
        .bind(method)
        .bind(from.format(DAY_FORMAT).to_string())
        .bind(to.format(DAY_FORMAT).to_string())
        .fetch_all(self.conn().await?)
        .await?;
        rows.iter()
            .map(|row| {
                let day: String = row.cell("day")?;
                let day =
                    NaiveDate::parse_from_str(&day, DAY_FORMAT).map_err(|e| corrupt(format!("booking day: {e}")))?;
                let booked: i64 = row.cell("booked")?;
                let booked = u32::try_from(booked).map_err(|_| corrupt(format!("booked orders {booked}")))?;
                Ok((day, row.cell("slot")?, booked))
            })
            .collect()
    }

    async fn decide_order(
        &self,
        decision: &OrderDecision<'_>,
        progress: Option<&Progress<'_>>,
    ) -> Result<Decided, DbError> {
        let mut tx = D::begin_write(&self.pool).await?;
        let updated = query::<D>(
            "UPDATE orders SET status = $2, decision = $3, reservation_id = $4, decided_at = $5
             WHERE id = $1 AND status = 'received'",
        )
        .bind(decision.id)
        .bind(decision.status.as_str())
        .bind(decision.decision)
        .bind(decision.reservation_id)
        .bind(Time(decision.now))
        .execute(&mut *tx)
        .await?;
        let outcome = if updated == 0 { Decided::Already } else { Decided::Done };
        if let (Decided::Done, Some(booking)) = (outcome, &decision.booking) {
            // The compare-and-set on the slot's count: a full slot books nothing, and the
            // transaction is dropped with the decision.
            let booked = booking.capacity > 0
                && query::<D>(
                    "INSERT INTO delivery_bookings (location, method, day, slot, booked) VALUES ($1, $2, $3, $4, 1)
                     ON CONFLICT (location, method, day, slot) DO UPDATE
                     SET booked = delivery_bookings.booked + 1
                     WHERE delivery_bookings.booked < $5",
                )
                .bind(booking.location)
                .bind(booking.method)
                .bind(booking.date.format(DAY_FORMAT).to_string())
                .bind(booking.slot)
                .bind(i64::from(booking.capacity))
                .execute(&mut *tx)
                .await?
                    == 1;
            if !booked {
                return Ok(Decided::SlotFull);
            }
        }
        if outcome == Decided::Done {
            order_event::<D>(&mut tx, &decision.event, decision.now).await?;
        }
        if let Some(progress) = progress {
            save_progress::<D>(&mut tx, progress).await?;
        }
        tx.commit().await?;
        Ok(outcome)
    }

    async fn cancel_order(
        &self,
        id: &str,
        from: OrderStatus,
        booking: Option<Booking<'_>>,
        returns: &[Movement],
        event: ChannelEvent<'_>,
        now: DateTime<Utc>,
    ) -> Result<Option<Vec<OutboxRecord>>, DbError> {
        let mut tx = D::begin_write(&self.pool).await?;
        let cancelled = query::<D>(
            "UPDATE orders SET status = 'cancelled', decided_at = COALESCE(decided_at, $3) WHERE id = $1 AND status = $2",
        )
        .bind(id)
        .bind(from.as_str())
        .bind(Time(now))
        .execute(&mut *tx)
        .await?;
        if cancelled == 0 {
            return Ok(None);
        }
        if let Some(booking) = booking {
            query::<D>(
                "UPDATE delivery_bookings SET booked = booked - 1
                 WHERE location = $1 AND method = $2 AND day = $3 AND slot = $4 AND booked > 0",
            )
            .bind(booking.location)
            .bind(booking.method)
            .bind(booking.date.format(DAY_FORMAT).to_string())
            .bind(booking.slot)
            .execute(&mut *tx)
            .await?;
        }
        let records = D::enqueue(&mut tx, returns, now).await?;
        order_event::<D>(&mut tx, &event, now).await?;
        tx.commit().await?;
        Ok(Some(records))
    }

    async fn watch_back_in_stock(&self, w: &BackInStock) -> Result<BackInStock, DbError> {
        let mut tx = D::begin_write(&self.pool).await?;
        query::<D>(
            "INSERT INTO back_in_stock (id, owner, channel, sku, customer, created_at) VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (owner, channel, sku, customer) DO NOTHING",
        )
        .bind(w.id.as_str())
        .bind(w.owner.as_str())
        .bind(w.channel.as_str())
        .bind(w.sku.as_str())
        .bind(w.customer.as_str())
        .bind(Time(w.created_at))
        .execute(&mut *tx)
        .await?;
        let sql = format!("SELECT {WATCH_COLUMNS} FROM back_in_stock WHERE owner = $1 AND channel = $2 AND sku = $3 AND customer = $4");
        let row = query::<D>(&sql)
            .bind(w.owner.as_str())
            .bind(w.channel.as_str())
            .bind(w.sku.as_str())
            .bind(w.customer.as_str())
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        watch(&row)
    }

    async fn back_in_stock(&self, id: &str) -> Result<Option<BackInStock>, DbError> {
        let sql = format!("SELECT {WATCH_COLUMNS} FROM back_in_stock WHERE id = $1");
        let row = query::<D>(&sql).bind(id).fetch_optional(self.conn().await?).await?;
        row.as_ref().map(watch).transpose()
    }

    async fn waiting_back_in_stock(&self, limit: i64) -> Result<Vec<BackInStock>, DbError> {
        let sql = format!(
            "SELECT {WATCH_COLUMNS} FROM back_in_stock WHERE notified_at IS NULL ORDER BY created_at, id LIMIT $1"
        );
        let rows = query::<D>(&sql).bind(limit).fetch_all(self.conn().await?).await?;
        rows.iter().map(watch).collect()
    }

    async fn notify_back_in_stock(
        &self,
        id: &str,
        event: ChannelEvent<'_>,
        now: DateTime<Utc>,
    ) -> Result<bool, DbError> {
        let mut tx = D::begin_write(&self.pool).await?;
        let told = query::<D>("UPDATE back_in_stock SET notified_at = $2 WHERE id = $1 AND notified_at IS NULL")
            .bind(id)
            .bind(Time(now))
            .execute(&mut *tx)
            .await?;
        if told == 1 {
            order_event::<D>(&mut tx, &event, now).await?;
        }
        tx.commit().await?;
        Ok(told == 1)
    }

    async fn put_cart(&self, cart: &CartRecord) -> Result<CartRecord, DbError> {
        let mut tx = D::begin_write(&self.pool).await?;
        query::<D>(
            "INSERT INTO carts (id, owner, channel, lines, reservation_id, updated_at) VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (id) DO UPDATE SET channel = excluded.channel, lines = excluded.lines,
                 reservation_id = excluded.reservation_id, updated_at = excluded.updated_at
             WHERE carts.owner = excluded.owner",
        )
        .bind(cart.id.as_str())
        .bind(cart.owner.as_str())
        .bind(cart.channel.as_str())
        .bind(cart.lines.as_str())
        .bind(cart.reservation_id.as_deref())
        .bind(Time(cart.updated_at))
        .execute(&mut *tx)
        .await?;
        let row = query::<D>(&format!("SELECT {CART_COLUMNS} FROM carts WHERE id = $1"))
            .bind(cart.id.as_str())
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        cart_record(&row)
    }

    async fn cart(&self, id: &str) -> Result<Option<CartRecord>, DbError> {
        let sql = format!("SELECT {CART_COLUMNS} FROM carts WHERE id = $1");
        let row = query::<D>(&sql).bind(id).fetch_optional(self.conn().await?).await?;
        row.as_ref().map(cart_record).transpose()
    }

    async fn delete_cart(&self, id: &str) -> Result<bool, DbError> {
        let mut tx = D::begin_write(&self.pool).await?;
        let deleted = query::<D>("DELETE FROM carts WHERE id = $1").bind(id).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(deleted == 1)
    }

    async fn order_outbox(&self, limit: i64) -> Result<Vec<OutboxRecord>, DbError> {
        events_waiting(self, "order_outbox", limit).await
    }

    async fn delete_order_outbox(&self, ids: &[i64]) -> Result<(), DbError> {
        forget_events(self, "order_outbox", ids).await
    }

    async fn unsettled_orders(&self, since: DateTime<Utc>, limit: i64) -> Result<Vec<(String, String)>, DbError> {
        let rows = query::<D>(
            "SELECT o.id, o.reservation_id FROM orders o JOIN reservations r ON r.id = o.reservation_id
             WHERE o.status = 'scheduled' AND o.decided_at >= $1 AND r.status = 'held'
             ORDER BY o.decided_at, o.id LIMIT $2",
        )
        .bind(Time(since))
        .bind(limit)
        .fetch_all(self.conn().await?)
        .await?;
        rows.iter().map(|row| Ok((row.cell("id")?, row.cell("reservation_id")?))).collect()
    }
}

/// Writes an order's or a wish's event to the order outbox, and a delivery of it to each
/// webhook subscription of its channel, in the transaction of its change.
async fn order_event<D: Dialect>(
    tx: &mut sqlx::Transaction<'static, D>,
    event: &ChannelEvent<'_>,
    now: DateTime<Utc>,
) -> Result<(), DbError> {
    query::<D>("INSERT INTO order_outbox (key, payload, created_at) VALUES ($1, $2, $3)")
        .bind(event.key)
        .bind(event.payload)
        .bind(Time(now))
        .execute(&mut **tx)
        .await?;
    // One statement whatever the number of the channel's subscriptions.
    query::<D>(
        "INSERT INTO alert_deliveries (subscription_id, event_id, payload, state, attempts, next_at, created_at)
         SELECT id, $2, $3, 'pending', 0, $4, $4 FROM alert_subscriptions WHERE channel = $1
         ON CONFLICT DO NOTHING",
    )
    .bind(event.channel)
    .bind(event.id)
    .bind(event.payload)
    .bind(Time(now))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

fn cart_record(row: &impl Cells) -> Result<CartRecord, DbError> {
    Ok(CartRecord {
        id: row.cell("id")?,
        owner: row.cell("owner")?,
        channel: row.cell("channel")?,
        lines: row.cell("lines")?,
        reservation_id: row.cell("reservation_id")?,
        updated_at: row.time("updated_at")?,
    })
}

fn watch(row: &impl Cells) -> Result<BackInStock, DbError> {
    let sku: String = row.cell("sku")?;
    Ok(BackInStock {
        id: row.cell("id")?,
        owner: row.cell("owner")?,
        channel: row.cell("channel")?,
        sku: Sku::parse(sku).map_err(|e| corrupt(format!("back-in-stock sku: {}", e.message)))?,
        customer: row.cell("customer")?,
        created_at: row.time("created_at")?,
        notified_at: row.optional_time("notified_at")?,
    })
}

fn order(row: &impl Cells) -> Result<OrderRecord, DbError> {
    let status: String = row.cell("status")?;
    Ok(OrderRecord {
        id: row.cell("id")?,
        owner: row.cell("owner")?,
        channel: row.cell("channel")?,
        status: OrderStatus::parse(&status).ok_or_else(|| corrupt(format!("order status {status:?}")))?,
        request: row.cell("request")?,
        decision: row.cell("decision")?,
        reservation_id: row.cell("reservation_id")?,
        received_at: row.time("received_at")?,
        decided_at: row.optional_time("decided_at")?,
    })
}
