//! The one way to follow a topic from its end: every partition assigned at its end
//! offset, no consumer group joined, nothing committed. Each reader sees what is written
//! after it started, as a process-local view (the stock cache, the live stream) needs.

use std::{future::Future, time::Duration};

use rdkafka::{
    consumer::{BaseConsumer, Consumer, StreamConsumer},
    error::KafkaError,
    types::RDKafkaErrorCode,
    ClientConfig, Message, Offset, TopicPartitionList,
};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{backoff::Backoff, config::KafkaConfig};

/// A consumer of `topic` with every partition assigned at its end. `group_id` is one
/// librdkafka insists on; it is never joined and nothing is committed under it.
pub async fn from_end(config: &KafkaConfig, topic: &str, group_id: &str) -> Result<StreamConsumer, KafkaError> {
    let consumer: StreamConsumer = super::client_config(config)
        .set("group.id", group_id)
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("fetch.wait.max.ms", super::FETCH_WAIT_MAX_MS)
        .create()?;
    let probe: ClientConfig = super::client_config(config);
    let probed = topic.to_string();
    let metadata = tokio::task::spawn_blocking(move || {
        let client: BaseConsumer = probe.create()?;
        client.fetch_metadata(Some(&probed), Duration::from_secs(10))
    })
    .await
    .map_err(|_| KafkaError::Canceled)??;
    let mut partitions = TopicPartitionList::new();
    for found in metadata.topics().iter().filter(|t| t.name() == topic && t.error().is_none()) {
        for partition in found.partitions() {
            partitions.add_partition_offset(found.name(), partition.id(), Offset::End)?;
        }
    }
    if partitions.count() == 0 {
        return Err(KafkaError::MetadataFetch(RDKafkaErrorCode::UnknownTopic));
    }
    consumer.assign(&partitions)?;
    Ok(consumer)
}

/// Follows `topic` from its end until `shutdown`, handing each record's payload and offset
/// to `handle`, in order per partition. Until the topic can be read, it retries with
/// backoff; a failed read is logged and the reading goes on.
pub async fn follow<F, Fut>(
    config: &KafkaConfig,
    topic: &str,
    group_id: &str,
    shutdown: CancellationToken,
    mut handle: F,
) where
    F: FnMut(&[u8], i64) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    let consumer = loop {
        match from_end(config, topic, group_id).await {
            Ok(consumer) => break consumer,
            Err(e) => {
                warn!(error = %e, topic, "cannot follow the topic; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff.fail()) => {}
                }
            }
        }
    };
    info!(topic, "following the topic from its end");
    loop {
        let message = tokio::select! {
            _ = shutdown.cancelled() => return,
            message = consumer.recv() => message,
        };
        match message {
            Ok(message) => {
                if let Some(payload) = message.payload() {
                    handle(payload, message.offset()).await;
                }
            }
            Err(e) => warn!(error = %e, topic, "topic read failed"),
        }
    }
}
