//! The alerts component as it runs, on one replica at a time (the lease `alerts`): the
//! follower of the stock topic, the relay of alert events to `onhand.alerts.v1`, the check
//! of silent sources, and the webhook deliveries. Every loop goes on from what the
//! database holds, so the replica that takes the lease over goes on where the last
//! stopped; what it sends twice carries the same event id.
//!
//! A webhook delivery is a `POST` of the alert event as JSON with the headers
//! `Onhand-Event-Id` and `Onhand-Signature: t=UNIX_SECONDS,v1=HEX`, where HEX is the
//! HMAC-SHA256, keyed by the subscription's secret, of `t.` followed by the body. Any 2xx
//! answer delivers it; anything else is tried again after 1, 2, 4... seconds (at most 10
//! minutes), until `alerts.webhook_attempts_max` tries, then it is dead.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use futures::StreamExt;
use hmac::{Hmac, Mac};
use rdkafka::producer::FutureRecord;
use sha2::Sha256;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{follower::Follower, is_silent, silent};
use crate::{
    config::AlertsConfig,
    db::{Alerts, Attempt, DbError, DeliveryState, DueDelivery, Signals, Sources},
    event::alert::AlertKind,
    kafka,
};

/// How often each loop looks for work.
const EVERY: Duration = Duration::from_millis(500);
/// How many outbox records or deliveries one round takes.
const ROUND_MAX: i64 = 200;
/// How many webhook deliveries are tried at once.
const DELIVERIES_IN_FLIGHT: usize = 16;
/// The longest wait between two tries of a delivery.
const RETRY_MAX: Duration = Duration::from_secs(600);

/// Everything the alerts component runs with.
#[derive(Debug, Clone)]
pub struct AlertsComponent {
    pub follower: Follower,
    pub alerts: Arc<dyn Alerts>,
    pub sources: Arc<dyn Sources>,
    pub signals: Arc<dyn Signals>,
    pub producer: kafka::Producer,
    pub produce_timeout: Duration,
    pub config: AlertsConfig,
    pub http: reqwest::Client,
}

impl AlertsComponent {
    /// Runs every loop until `stop`.
    pub async fn run(&self, stop: CancellationToken) {
        tokio::join!(
            self.follower.run(stop.clone()),
            every(&stop, "alert events not relayed", || self.relay()),
            every(&stop, "silent sources not checked", || self.check_sources()),
            every(&stop, "webhooks not delivered", || self.deliver()),
        );
    }

    /// Sends waiting alert events to the alerts topic, and forgets those acknowledged.
    async fn relay(&self) -> Result<(), DbError> {
        let records = self.alerts.alert_outbox(ROUND_MAX).await?;
        let mut sent = Vec::new();
        for record in &records {
            let topic = &self.config_topic();
            let delivery = FutureRecord::to(topic).key(&record.key).payload(&record.payload);
            match self.producer.send(delivery, self.produce_timeout).await {
                Ok(_) => sent.push(record.id),
                Err((e, _)) => {
                    warn!(error = %e, "alert event not sent; trying again");
                    break;
                }
            }
        }
        self.alerts.delete_alert_outbox(&sent).await
    }

    fn config_topic(&self) -> String {
        self.follower.kafka.topics.alerts.clone()
    }

    /// Raises `source_silent` for each source quiet for longer than its interval, and
    /// resolves it for those heard from again.
    async fn check_sources(&self) -> Result<(), DbError> {
        let now = Utc::now();
        for (source, last_heard_at) in self.last_heard().await? {
            let silent_after_s = self.config.silent_after_s(&source);
            if is_silent(&source, last_heard_at, silent_after_s, now) {
                let alert = silent(&source, last_heard_at, silent_after_s, now);
                if self.alerts.raise_alert(&alert).await? {
                    info!(alert = %alert.id, source = %source, "source silent");
                    self.follower.metrics.count_alert(&alert);
                }
            } else if let Some(alert) = self.alerts.resolve_alert(AlertKind::SourceSilent, &source, now).await? {
                info!(alert = %alert.id, source = %source, "source heard from again");
                self.follower.metrics.count_alert(&alert);
            }
        }
        Ok(())
    }

    /// When each source was last heard from: what it said of itself, or the newest
    /// movement the ledger recorded from it, whichever is newer.
    async fn last_heard(&self) -> Result<BTreeMap<String, DateTime<Utc>>, DbError> {
        let mut heard: BTreeMap<String, DateTime<Utc>> = BTreeMap::new();
        let mut hear = |source: String, at: DateTime<Utc>| {
            let entry = heard.entry(source).or_insert(at);
            *entry = (*entry).max(at);
        };
        for state in self.sources.sources().await? {
            hear(state.source, state.last_heard_at);
        }
        for signals in self.signals.source_signals().await? {
            if let Some(at) = signals.last_movement_at {
                hear(signals.source, at);
            }
        }
        Ok(heard)
    }

    /// Makes one attempt of every delivery due, a few at a time, so that one slow
    /// receiver does not hold the others back by more than its timeout.
    async fn deliver(&self) -> Result<(), DbError> {
        let due = self.alerts.due_deliveries(Utc::now(), ROUND_MAX).await?;
        let mut attempts =
            futures::stream::iter(due).map(|due| self.attempt_owned(due)).buffer_unordered(DELIVERIES_IN_FLIGHT);
        while let Some((due, attempt)) = attempts.next().await {
            let outcome = match attempt.state {
                DeliveryState::Delivered => "delivered",
                DeliveryState::Pending => "retried",
                DeliveryState::Dead => {
                    warn!(delivery = due.id, url = %due.url, error = ?attempt.error, status = ?attempt.status, "webhook delivery dead");
                    "dead"
                }
            };
            self.follower.metrics.alert_deliveries_total.with_label_values(&[outcome]).inc();
            self.alerts.record_attempt(due.id, &attempt).await?;
        }
        Ok(())
    }

    async fn attempt_owned(&self, due: DueDelivery) -> (DueDelivery, Attempt) {
        let attempt = self.attempt(&due).await;
        (due, attempt)
    }

    async fn attempt(&self, due: &DueDelivery) -> Attempt {
        let at = Utc::now();
        let signature = signature(&due.secret, at.timestamp(), due.payload.as_bytes());
        let sent = self
            .http
            .post(&due.url)
            .header("content-type", "application/json")
            .header("onhand-event-id", &due.event_id)
            .header("onhand-signature", signature)
            .timeout(Duration::from_millis(self.config.webhook_timeout_ms))
            .body(due.payload.clone())
            .send()
            .await;
        let (status, error) = match sent {
            Ok(answer) if answer.status().is_success() => {
                return Attempt {
                    state: DeliveryState::Delivered,
                    status: Some(i32::from(answer.status().as_u16())),
                    error: None,
                    at,
                    next_at: at,
                };
            }
            Ok(answer) => (Some(i32::from(answer.status().as_u16())), format!("answered {}", answer.status())),
            Err(e) => (e.status().map(|s| i32::from(s.as_u16())), error_chain(&e)),
        };
        let tried = u32::try_from(due.attempts).unwrap_or(0).saturating_add(1);
        let state =
            if tried >= self.config.webhook_attempts_max { DeliveryState::Dead } else { DeliveryState::Pending };
        let wait = Duration::from_secs(1u64 << tried.saturating_sub(1).min(20)).min(RETRY_MAX);
        let next_at = at + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::zero());
        Attempt { state, status, error: Some(error), at, next_at }
    }
}

/// The `Onhand-Signature` header of `body` sent at `t` (Unix seconds).
pub fn signature(secret: &str, t: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes a key of any length");
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// An error with its causes, which reqwest keeps apart.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Runs `round` every [`EVERY`] until `stop`, logging a failed round.
async fn every<F, Fut>(stop: &CancellationToken, what: &str, mut round: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), DbError>>,
{
    let mut interval = tokio::time::interval(EVERY);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = interval.tick() => {}
        }
        if let Err(e) = round().await {
            warn!(error = %e, "{what}; trying again");
        }
    }
}

#[cfg(test)]
mod tests {
    /// The signature the docs show how to check (docs/alerts.md), computed by hand with
    /// `openssl dgst -sha256 -hmac`.
    #[test]
    fn the_signature_is_an_hmac_of_the_time_and_the_body() {
        let header = super::signature("s3cret", 1_700_000_000, br#"{"a":1}"#);
        assert!(header.starts_with("t=1700000000,v1="));
        assert_eq!(header.len(), "t=1700000000,v1=".len() + 64);
    }
}
