//! Publishing stock levels: the one way a level written to the database reaches the stock
//! topic, for the ledger after its commit and for the relay after the API or a reservation
//! wrote one.
//!
//! A level's record is keyed `sku@location` and carries the level as JSON
//! (`onhand.stock-level.v1`, `docs/events.md`), without headers. [`enqueue`] hands the
//! records to the producer in the order of the levels and waits only for room in its
//! queue, never for Kafka, so the ledger's consumer thread goes on to its next batch while
//! they travel. [`Publications::acknowledged`] then waits for Kafka and answers the
//! publications to record (the ledger's next batch, or `Db::record_published`) and how many
//! failed. A level whose publication failed stays unpublished in the database, and the
//! ledger's sweep publishes it again.

use std::{sync::Arc, time::Duration};

use futures::future::join_all;
use rdkafka::{
    error::KafkaError,
    producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer as _},
    types::RDKafkaErrorCode,
};
use tracing::warn;

use crate::{db::Published, event::StockLevel, kafka::Producer};

/// How long to wait for room when the producer's queue is full. Records in the queue leave
/// it within the produce timeout (acknowledged or failed), so room always comes.
const QUEUE_FULL_PAUSE: Duration = Duration::from_millis(10);

/// Records on their way to the stock topic.
#[must_use = "the publications must be awaited to be recorded"]
pub struct Publications {
    producer: Producer,
    sent_by: Arc<FutureProducer>,
    sends: Vec<(Published, DeliveryFuture)>,
    /// Records the producer refused at once.
    refused: usize,
}

impl std::fmt::Debug for Publications {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publications").field("sent", &self.sends.len()).field("refused", &self.refused).finish()
    }
}

/// What Kafka made of some publications.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Acknowledged {
    /// The level versions on the topic, to record as published.
    pub published: Vec<Published>,
    /// The levels not published, which stay unpublished in the database.
    pub failed: usize,
}

/// Hands the record of each level to the producer, in order, and answers without waiting
/// for Kafka.
pub async fn enqueue(producer: &Producer, topic: &str, levels: &[StockLevel]) -> Publications {
    let sent_by = producer.get();
    let mut sends = Vec::with_capacity(levels.len());
    let mut refused = 0;
    for level in levels {
        let key = level.kafka_key();
        let value = serde_json::to_vec(level).expect("a level always serializes");
        let mut record = FutureRecord::to(topic).key(&key).payload(&value);
        loop {
            match sent_by.send_result(record) {
                Ok(delivery) => {
                    let published =
                        Published { sku: level.sku.clone(), location: level.location.clone(), version: level.version };
                    sends.push((published, delivery));
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    tokio::time::sleep(QUEUE_FULL_PAUSE).await;
                }
                Err((e, _)) => {
                    warn!(error = %e, "stock level not published");
                    refused += 1;
                    break;
                }
            }
        }
    }
    renew_if_fatal(producer, &sent_by);
    Publications { producer: producer.clone(), sent_by, sends, refused }
}

impl Publications {
    /// Waits for Kafka's answer to every record.
    pub async fn acknowledged(self) -> Acknowledged {
        let Publications { producer, sent_by, sends, refused } = self;
        let total = sends.len() + refused;
        let deliveries = sends.into_iter().map(|(published, delivery)| async move {
            match delivery.await {
                Ok(Ok(_)) => Ok(published),
                Ok(Err((e, _))) => Err(Some(e)),
                // The producer went away before it answered.
                Err(_) => Err(None),
            }
        });
        let mut published = Vec::with_capacity(total);
        let mut first_error = None;
        for delivered in join_all(deliveries).await {
            match delivered {
                Ok(p) => published.push(p),
                Err(e) => first_error = first_error.or(e),
            }
        }
        let failed = total - published.len();
        if failed > 0 {
            let error = first_error.map(|e| e.to_string());
            warn!(failures = failed, error, "stock levels not published; the ledger's sweep publishes them again");
            renew_if_fatal(&producer, &sent_by);
        }
        Acknowledged { published, failed }
    }
}

/// A producer that failed fatally refuses every record for good: the next ones go through
/// a fresh one.
fn renew_if_fatal(producer: &Producer, sent_by: &Arc<FutureProducer>) {
    if sent_by.client().fatal_error().is_some() {
        producer.renew_if(sent_by);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use chrono::Utc;
    use rdkafka::{
        consumer::{BaseConsumer, Consumer},
        Message, Offset, TopicPartitionList,
    };

    use super::*;
    use crate::{
        config::KafkaConfig,
        kafka::{self, EmbeddedKafka},
    };

    fn level(location: &str, version: i64) -> StockLevel {
        StockLevel {
            reserved: 1,
            safety_stock: 2,
            updated_at: Utc::now(),
            ..crate::testing::stock_level(location, 7, version)
        }
    }

    #[tokio::test]
    async fn a_level_goes_out_keyed_sku_at_location_as_its_json_and_is_recorded_once_acknowledged() {
        let embedded = EmbeddedKafka::start(&["stock"], 1).unwrap();
        let config = KafkaConfig { brokers: embedded.brokers().into(), ..KafkaConfig::default() };
        let producer = Producer::new(&config, Duration::from_millis(1)).unwrap();
        let levels = [level("s1", 3), level("s2", 5)];

        let acknowledged = enqueue(&producer, "stock", &levels).await.acknowledged().await;
        let version =
            |l: &StockLevel| Published { sku: l.sku.clone(), location: l.location.clone(), version: l.version };
        assert_eq!(acknowledged, Acknowledged { published: levels.iter().map(version).collect(), failed: 0 });

        let consumer: BaseConsumer = kafka::client_config(&config).set("group.id", "publish-test").create().unwrap();
        let mut partitions = TopicPartitionList::new();
        partitions.add_partition_offset("stock", 0, Offset::Beginning).unwrap();
        consumer.assign(&partitions).unwrap();
        let mut records = HashMap::new();
        while records.len() < levels.len() {
            let message = consumer.poll(Duration::from_secs(10)).expect("a record within 10 s").unwrap();
            assert!(message.headers().is_none(), "a level's record has no headers");
            let key = String::from_utf8(message.key().unwrap().to_vec()).unwrap();
            let value: StockLevel = serde_json::from_slice(message.payload().unwrap()).unwrap();
            records.insert(key, value);
        }
        assert_eq!(
            records,
            HashMap::from([("SKU-1@s1".to_string(), levels[0].clone()), ("SKU-1@s2".to_string(), levels[1].clone())])
        );
    }

    #[tokio::test]
    async fn levels_kafka_does_not_acknowledge_are_counted_and_not_recorded() {
        let config = KafkaConfig { brokers: "127.0.0.1:1".into(), produce_timeout_ms: 200, ..KafkaConfig::default() };
        let producer = Producer::new(&config, Duration::from_millis(1)).unwrap();
        let acknowledged = enqueue(&producer, "stock", &[level("s1", 1), level("s2", 1)]).await.acknowledged().await;
        assert_eq!(acknowledged, Acknowledged { published: Vec::new(), failed: 2 });
    }
}
