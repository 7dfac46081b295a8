//! The reservation service the API calls: checks a request at the edge, runs its
//! transaction in the database, then hands what it wrote to the [`Relay`]. The expiry
//! scheduler ([`Reservations::run_expiry`]) runs in every API instance; two instances
//! expiring the same reservation is harmless, the second finds it no longer held.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{Decision, LineRequest, Reservation, Status};
use crate::{
    clock::Clock,
    config::{ChannelConfig, ReservationConfig},
    db::{Closed, Closing, DbError, NewReservation, OutboxRecord, ReservationRecords, Reserved},
    event::{StockLevel, QUANTITY_MAX},
    relay::Relay,
    telemetry::{self, Metrics},
};

/// How many times a transaction that failed on a passing error (a deadlock detected by
/// the database, a contended level) is tried before the client is told to retry.
const ATTEMPTS_MAX: u32 = 3;
/// The most reservations expired in one pass of the scheduler.
const EXPIRY_BATCH_MAX: i64 = 500;

/// Who asks about a reservation: the API key, and whether it is an admin's.
#[derive(Debug, Clone, Copy)]
pub struct Caller<'a> {
    pub key_id: &'a str,
    pub admin: bool,
}

/// A reservation request whose fields are valid on their own.
#[derive(Debug, Clone)]
pub struct ReservationRequest {
    pub channel: String,
    pub lines: Vec<LineRequest>,
    pub ttl_s: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReservationError {
    #[error("no channel {0:?} is configured")]
    UnknownChannel(String),
    #[error("line {line}: location {location} does not serve channel {channel}")]
    LocationNotInChannel { line: usize, location: String, channel: String },
    #[error("{0}")]
    Invalid(String),
    #[error("idempotency key {0:?} was used before with another request")]
    KeyReused(String),
    #[error("no reservation {0:?}")]
    NotFound(String),
    #[error("reservation {id} is {}, it cannot be {action}", status.as_str())]
    NotHeld { id: String, status: Status, action: &'static str },
    #[error(transparent)]
    Db(#[from] DbError),
}

#[derive(Clone)]
pub struct Reservations {
    db: Arc<dyn ReservationRecords>,
    relay: Relay,
    clock: Clock,
    config: ReservationConfig,
    channels: BTreeMap<String, ChannelConfig>,
    metrics: Metrics,
}

impl std::fmt::Debug for Reservations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reservations").field("config", &self.config).finish_non_exhaustive()
    }
}

impl Reservations {
    pub fn new(
        db: Arc<dyn ReservationRecords>,
        relay: Relay,
        clock: Clock,
        config: ReservationConfig,
        channels: BTreeMap<String, ChannelConfig>,
        metrics: Metrics,
    ) -> Self {
        Self { db, relay, clock, config, channels, metrics }
    }

    /// Takes a reservation for `owner` (the API key), or gives again the first decision
    /// for `idempotency_key`: held, or short with the lines that are.
    pub async fn reserve(
        &self,
        owner: &str,
        idempotency_key: &str,
        request: &ReservationRequest,
    ) -> Result<Decision, ReservationError> {
        let serving = self.check(request)?;
        let now = self.clock.now();
        let ttl_s = request.ttl_s.unwrap_or(self.config.ttl_s_default);
        let canonical = canonical(request, ttl_s);
        let id = uuid::Uuid::new_v4().to_string();
        let new = NewReservation {
            owner,
            idempotency_key,
            request: &canonical,
            id: &id,
            channel: &request.channel,
            serving,
            lines: &request.lines,
            now,
            expires_at: now + chrono::Duration::seconds(ttl_s as i64),
        };
        let reserved = retry(|| self.db.reserve(&new)).await?;
        let outcome = |o: &str| self.metrics.reservations_requests_total.with_label_values(&[o]).inc();
        match reserved {
            Reserved::Decided { decision, levels, outbox } => {
                outcome(match decision {
                    Decision::Held(_) => "held",
                    Decision::Short(_) => "short",
                });
                self.hand_over(levels, outbox);
                Ok(decision)
            }
            Reserved::Replayed(decision) => {
                outcome("replayed");
                Ok(decision)
            }
            Reserved::KeyReused => {
                outcome("refused");
                Err(ReservationError::KeyReused(idempotency_key.to_string()))
            }
        }
    }

    /// The reservation `id`, when `caller` may see it: another key's reservation is not
    /// found, as if it did not exist.
    pub async fn get(&self, id: &str, caller: &Caller<'_>) -> Result<Reservation, ReservationError> {
        self.db
            .reservation(id)
            .await?
            .filter(|r| r.belongs_to(caller.key_id, caller.admin))
            .ok_or_else(|| ReservationError::NotFound(id.to_string()))
    }

    /// Turns a held reservation into sales; committing it again answers it as it is.
    pub async fn commit(&self, id: &str, caller: &Caller<'_>) -> Result<Reservation, ReservationError> {
        self.get(id, caller).await?;
        self.close(id, Status::Committed, "committed").await
    }

    /// Releases a held reservation; cancelling it again answers it as it is.
    pub async fn cancel(&self, id: &str, caller: &Caller<'_>) -> Result<Reservation, ReservationError> {
        self.get(id, caller).await?;
        self.close(id, Status::Cancelled, "cancelled").await
    }

    async fn close(&self, id: &str, to: Status, action: &'static str) -> Result<Reservation, ReservationError> {
        let closed = retry(|| self.db.close_reservation(id, to, self.clock.now())).await?;
        match self.after_close(closed) {
            Closing::Done(r) | Closing::Already(r) => Ok(r),
            Closing::Refused(r) => Err(ReservationError::NotHeld { id: r.id, status: r.status, action }),
            Closing::NotFound => Err(ReservationError::NotFound(id.to_string())),
        }
    }

    fn after_close(&self, closed: Closed) -> Closing {
        let Closed { closing, levels, outbox } = closed;
        if !outbox.is_empty() {
            // Something changed: a commit or release now, or an expiry a commit came too late for.
            let status = match &closing {
                Closing::Done(r) | Closing::Refused(r) => r.status.as_str(),
                _ => "unknown",
            };
            self.metrics.reservations_closed_total.with_label_values(&[status]).inc();
        }
        self.hand_over(levels, outbox);
        closing
    }

    /// Sends what a transaction wrote to Kafka without making the client wait: the outbox
    /// and the ledger's sweep send it later if this fails.
    fn hand_over(&self, levels: Vec<StockLevel>, outbox: Vec<OutboxRecord>) {
        if levels.is_empty() && outbox.is_empty() {
            return;
        }
        let relay = self.relay.clone();
        tokio::spawn(telemetry::with_request_id(async move {
            relay.publish_levels(&levels).await;
            if !outbox.is_empty() {
                relay.send_outbox(&outbox).await;
            }
        }));
    }

    /// Checks what the database cannot: the channel, the bounds, and that each given location
    /// serves the channel. Answers the channel's configuration.
    fn check(&self, request: &ReservationRequest) -> Result<&ChannelConfig, ReservationError> {
        let serving = self
            .channels
            .get(&request.channel)
            .ok_or_else(|| ReservationError::UnknownChannel(request.channel.clone()))?;
        let lines_max = self.config.lines_max;
        if request.lines.is_empty() || request.lines.len() > lines_max {
            return Err(ReservationError::Invalid(format!("a reservation has 1 to {lines_max} lines")));
        }
        let ttl_s_max = self.config.ttl_s_max;
        if request.ttl_s.is_some_and(|ttl| ttl == 0 || ttl > ttl_s_max) {
            return Err(ReservationError::Invalid(format!("ttl_s must be 1 to {ttl_s_max}")));
        }
        for (i, line) in request.lines.iter().enumerate() {
            if !(1..=QUANTITY_MAX).contains(&line.quantity) {
                return Err(ReservationError::Invalid(format!("line {}: quantity must be 1 to {QUANTITY_MAX}", i + 1)));
            }
            if let Some(location) = line.location.as_ref().filter(|l| !serving.serves(l.as_str())) {
                return Err(ReservationError::LocationNotInChannel {
                    line: i + 1,
                    location: location.to_string(),
                    channel: request.channel.clone(),
                });
            }
        }
        Ok(serving)
    }

    /// Releases held reservations past their time, every `expiry_interval_ms`, and forgets
    /// old idempotency keys, until `shutdown`.
    pub async fn run_expiry(self, shutdown: CancellationToken) {
        let mut interval = tokio::time::interval(Duration::from_millis(self.config.expiry_interval_ms));
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut passes: u64 = 0;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = interval.tick() => {}
            }
            if let Err(e) = self.expire_due().await {
                warn!(error = %e, "expired reservations not released; trying again");
            }
            // About once an hour at the default interval.
            passes += 1;
            if passes % 3_600 == 1 {
                let kept = chrono::Duration::hours(self.config.idempotency_keys_kept_h as i64);
                match self.db.forget_idempotency_keys(self.clock.now() - kept).await {
                    Ok(0) => {}
                    Ok(n) => info!(keys = n, "old idempotency keys forgotten"),
                    Err(e) => warn!(error = %e, "old idempotency keys not forgotten"),
                }
            }
        }
    }

    /// Releases the held reservations past their time now; answers how many.
    pub async fn expire_due(&self) -> Result<usize, DbError> {
        let due = self.db.due_reservations(self.clock.now(), EXPIRY_BATCH_MAX).await?;
        let mut expired = 0;
        for id in &due {
            // One reservation that cannot be closed must not hold back the ones after it;
            // it is tried again at the next pass.
            match retry(|| self.db.close_reservation(id, Status::Expired, self.clock.now())).await {
                Ok(closed) => expired += usize::from(matches!(self.after_close(closed), Closing::Done(_))),
                Err(e) => warn!(error = %e, reservation = %id, "expired reservation not released; trying again later"),
            }
        }
        if expired > 0 {
            info!(reservations = expired, "expired reservations released");
        }
        Ok(expired)
    }
}

/// The request as it is kept with its idempotency key: the same request always gives the
/// same text, whatever the spacing or field order it came with.
fn canonical(request: &ReservationRequest, ttl_s: u64) -> String {
    let lines: Vec<_> = request
        .lines
        .iter()
        .map(|l| json!({ "sku": l.sku.as_str(), "quantity": l.quantity, "location": l.location.as_ref().map(|l| l.as_str()) }))
        .collect();
    json!({ "channel": request.channel, "lines": lines, "ttl_s": ttl_s }).to_string()
}

/// Runs a store operation again when it failed on a passing error.
async fn retry<T, F, Fut>(mut operation: F) -> Result<T, DbError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, DbError>>,
{
    let mut attempt = 1;
    loop {
        match operation().await {
            Err(e) if passing(&e) && attempt < ATTEMPTS_MAX => {
                warn!(error = %e, attempt, "reservation transaction failed; trying again");
                attempt += 1;
            }
            result => return result,
        }
    }
}

/// A conflict between transactions, which the next attempt does not meet: a deadlock or
/// serialization failure (SQLSTATE class 40) or levels that kept changing. An unreachable
/// database is not retried here; the client gets 503 and retries.
fn passing(e: &DbError) -> bool {
    match e {
        DbError::Contended => true,
        DbError::Database(sqlx::Error::Database(e)) => e.code().is_some_and(|c| c.starts_with("40")),
        _ => false,
    }
}
