//! How a movement an edge of onhand accepts (`POST /v1/movements`, a connector's route)
//! is made safe before the answer says so: nothing answered as accepted may be lost.
//!
//! - With a Kafka cluster ([`Durability::Kafka`]), a movement is safe once the brokers
//!   acknowledged it (`acks=all`).
//! - With `onhand dev`'s embedded broker, which keeps nothing across a restart,
//!   acknowledgements mean nothing after a stop or a kill. There ([`Durability::Outbox`])
//!   accepted movements are written to the database's outbox first, in one transaction,
//!   then relayed to the broker; a record is dropped only once the ledger recorded it, and
//!   a start relays again whatever was not (`relay::Forget::WhenRecorded`).
//!
//! [`Ingest::accept_all`] writes through the outbox in both modes: a request whose records
//! must all count or none (a store's stock report) is then one transaction.

use std::{sync::Arc, time::Duration};

use chrono::Utc;
use futures::future::join_all;
use rdkafka::producer::FutureRecord;
use tracing::warn;

use crate::{
    db::Outbox,
    event::Movement,
    kafka::{self, Producer},
    relay::Relay,
    telemetry,
};

/// Where an accepted movement is safe before its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Acknowledged by the Kafka cluster.
    Kafka,
    /// Written to the database's outbox (the embedded broker of `onhand dev`).
    Outbox,
}

/// Why a movement was not accepted: the client should send it again, with the same event
/// id, which makes the retry harmless.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IngestError {
    #[error("kafka did not acknowledge the movement")]
    Kafka,
    #[error("the database did not take the movement")]
    Database,
}

impl IngestError {
    /// The code of an item's error, as `docs/api.md` lists them.
    pub fn code(&self) -> &'static str {
        match self {
            IngestError::Kafka => "kafka_unavailable",
            IngestError::Database => "database_unavailable",
        }
    }
}

/// Accepts movements for the ledger. Cheap to clone.
#[derive(Clone)]
pub struct Ingest {
    pub durability: Durability,
    pub producer: Producer,
    pub movements_topic: String,
    pub produce_timeout: Duration,
    pub db: Arc<dyn Outbox>,
    pub relay: Relay,
}

impl std::fmt::Debug for Ingest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ingest").field("durability", &self.durability).finish_non_exhaustive()
    }
}

impl Ingest {
    /// Makes each movement safe; one result per movement, in order.
    pub async fn accept(&self, movements: &[Movement]) -> Vec<Result<(), IngestError>> {
        match self.durability {
            Durability::Kafka => join_all(movements.iter().map(|m| self.produce(m))).await,
            Durability::Outbox => {
                let result = self.accept_all(movements).await;
                vec![result; movements.len()]
            }
        }
    }

    /// Makes every movement safe, or none: one transaction in the outbox, relayed at
    /// once without the caller waiting (and again by the relay's sweep if that fails).
    pub async fn accept_all(&self, movements: &[Movement]) -> Result<(), IngestError> {
        if movements.is_empty() {
            return Ok(());
        }
        let records = self.db.enqueue_outbox(movements, Utc::now()).await.map_err(|e| {
            warn!(error = %e, "movements not written to the outbox");
            IngestError::Database
        })?;
        let relay = self.relay.clone();
        tokio::spawn(telemetry::with_request_id(async move { relay.send_outbox(&records).await }));
        Ok(())
    }

    async fn produce(&self, m: &Movement) -> Result<(), IngestError> {
        let payload = m.to_json();
        let mut record = FutureRecord::to(&self.movements_topic).key(m.kafka_key()).payload(&payload);
        if let Some(headers) = kafka::request_headers() {
            record = record.headers(headers);
        }
        self.producer.send(record, self.produce_timeout).await.map(|_| ()).map_err(|(e, _)| {
            warn!(error = %e, event_id = %m.event_id, "movement not acknowledged by kafka");
            IngestError::Kafka
        })
    }
}
