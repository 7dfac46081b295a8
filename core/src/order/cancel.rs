//! Cancelling an order before its delivery day: a waiting order is only marked cancelled
//! (the workers skip it); a scheduled one gives its slot back and its units: released if
//! its reservation is still held, else put back by a `return` movement per line, written
//! to the outbox in the cancel's own transaction so the ledger counts it once.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use super::{OrderEvent, OrderOutcome, OrderRequest, OrderStatus};
use crate::{
    db::{Booking, ChannelEvent, Db, DbError, OrderRecord},
    event::{EventId, Movement, MovementKind, Source, SourceSystem},
    relay::Relay,
    reservation::{
        service::{Caller, ReservationError, Reservations},
        Status,
    },
};

/// What cancelling an order did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cancelled {
    /// Cancelled now, or before (a repeat answers the same).
    Done(OrderRecord),
    /// Rejected orders have nothing to cancel, and a delivery day that came is too late.
    Refused {
        order: OrderRecord,
        why: &'static str,
    },
    NotFound,
}

#[derive(Debug, thiserror::Error)]
pub enum CancelError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("the order's stored request or decision cannot be read: {0}")]
    Corrupt(String),
    #[error("order {0} kept changing while it was cancelled; retry")]
    Busy(String),
}

/// How many times a cancel reads the order again after a worker changed it meanwhile.
const ROUNDS_MAX: u32 = 5;

/// Cancels the order `id` for `owner` (an admin cancels any), as of `now`.
pub async fn cancel(
    db: &dyn Db,
    reservations: &Reservations,
    relay: &Relay,
    id: &str,
    caller: &Caller<'_>,
    now: DateTime<Utc>,
) -> Result<Cancelled, CancelError> {
    for _ in 0..ROUNDS_MAX {
        let Some(order) = db.order(id).await?.filter(|o| caller.admin || o.owner == caller.key_id) else {
            return Ok(Cancelled::NotFound);
        };
        let cancelled = OrderEvent::new(id, &order.channel, OrderStatus::Cancelled, None, now);
        let payload = cancelled.to_json();
        let event = ChannelEvent::of_order(&cancelled, &payload);
        let done = match order.status {
            OrderStatus::Cancelled => return Ok(Cancelled::Done(order)),
            OrderStatus::Rejected => return Ok(Cancelled::Refused { order, why: "a rejected order holds nothing" }),
            OrderStatus::Received => db.cancel_order(id, OrderStatus::Received, None, &[], event, now).await?,
            OrderStatus::Scheduled => {
                let outcome: OrderOutcome = read(order.decision.as_deref().unwrap_or_default())?;
                let OrderOutcome::Scheduled { location, method, date, slot, reservation_id } = outcome else {
                    return Err(CancelError::Corrupt(format!("order {id} is scheduled without a slot")));
                };
                if date <= now.date_naive() {
                    return Ok(Cancelled::Refused { order, why: "its delivery day has come: it may be on its way" });
                }
                // Units still held are released; units committed are sold, and go back
                // by returns.
                let returns = match reservations.cancel(&reservation_id, &Caller { key_id: "", admin: true }).await {
                    Ok(_) => Vec::new(),
                    Err(ReservationError::NotHeld { status: Status::Committed, .. }) => {
                        let request: OrderRequest = read(&order.request)?;
                        returns(&order, &request, &location, now)
                    }
                    // Expired (or cancelled) before its commit: nothing was sold, nothing to give back.
                    Err(ReservationError::NotHeld { .. }) => Vec::new(),
                    Err(ReservationError::Db(e)) => return Err(e.into()),
                    Err(e) => return Err(CancelError::Corrupt(e.to_string())),
                };
                let booking =
                    Booking { location: location.as_str(), method: method.as_str(), date, slot: &slot, capacity: 0 };
                db.cancel_order(id, OrderStatus::Scheduled, Some(booking), &returns, event, now).await?
            }
        };
        if let Some(records) = done {
            if !records.is_empty() {
                let relay = relay.clone();
                tokio::spawn(async move { relay.send_outbox(&records).await });
            }
            let order = db.order(id).await?.ok_or_else(|| CancelError::Corrupt(format!("order {id} vanished")))?;
            return Ok(Cancelled::Done(order));
        }
    }
    Err(CancelError::Busy(id.to_string()))
}

fn read<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, CancelError> {
    serde_json::from_str(text).map_err(|e| CancelError::Corrupt(e.to_string()))
}

/// A `return` per line of a committed order, at the location it was sold from.
fn returns(
    order: &OrderRecord,
    request: &OrderRequest,
    location: &crate::event::LocationId,
    now: DateTime<Utc>,
) -> Vec<Movement> {
    request
        .lines
        .iter()
        .zip(1..)
        .map(|(line, n)| Movement {
            event_id: EventId::parse(format!("order:{}:{n}:return", order.id)).expect("an order's ids are valid"),
            source: Source {
                system: SourceSystem::Api,
                instance: "orders".to_string(),
                reference: format!("{}/{n}", order.id),
            },
            sku: line.sku.clone(),
            location: location.clone(),
            kind: MovementKind::Return,
            quantity: line.quantity,
            occurred_at: now,
            recorded_at: now,
            actor: None,
            reason: Some("order cancelled".to_string()),
            correlation_id: Some(format!("order:{}", order.id)),
            attributes: BTreeMap::from([
                ("order_id".to_string(), order.id.clone()),
                ("channel".to_string(), order.channel.clone()),
            ]),
        })
        .collect()
}
