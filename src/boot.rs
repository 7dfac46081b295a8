//! The start-up steps that `onhand serve` and `onhand connector NAME` share, written
//! once: the database, opened and migrated ([`db`]), then Kafka ([`kafka`]: the producer,
//! a probe of the brokers, the topics). Each refuses the start with a [`StartError`]
//! that names the dependency and what to check.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use onhand_core::{
    config::Config,
    db::{self, Db, DbError},
    kafka::{self, KafkaSetupError},
    ledger::LedgerError,
};
use rdkafka::{error::KafkaError, producer::Producer as _, types::RDKafkaErrorCode};
use tracing::warn;

/// How long the API's producer gathers movements into one request: a client waits for
/// Kafka's acknowledgement, so this stays short.
pub(crate) const API_LINGER: Duration = Duration::from_millis(5);

/// How long creating the missing topics may take before the brokers count as unreachable.
const ENSURE_TOPICS_TIMEOUT: Duration = Duration::from_secs(30);

/// Why onhand refused to start; each message names the dependency and what to check.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] onhand_core::config::ConfigError),
    #[error("database {url} is unreachable or refused the migrations: {source}")]
    Database { url: String, source: DbError },
    #[error("kafka brokers {brokers} are unreachable: {source}")]
    KafkaUnreachable { brokers: String, source: KafkaError },
    #[error(transparent)]
    KafkaSetup(#[from] KafkaSetupError),
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Connector(#[from] onhand_connectors::ConnectorError),
    #[error("the webhook client cannot be built: {0}")]
    Webhooks(#[from] reqwest::Error),
}

/// Opens the configured database with a pool of `connections_max` and runs its
/// migrations. The error shows the URL without its password.
pub(crate) async fn db(config: &Config, connections_max: u32) -> Result<Arc<dyn Db>, StartError> {
    let url = &config.database.url;
    db::open(url, connections_max).await.map_err(|source| StartError::Database { url: db::redact_url(url), source })
}

/// The producer of a process against a Kafka cluster, once the brokers answered and the
/// topics exist (created when missing), so that a wrong address fails at start, not later.
pub(crate) async fn kafka(config: &Config) -> Result<kafka::Producer, StartError> {
    let producer = kafka::Producer::new(&config.kafka, API_LINGER)?;
    check_brokers(config, &producer).await?;
    tokio::time::timeout(ENSURE_TOPICS_TIMEOUT, kafka::ensure_topics(&config.kafka)).await.map_err(|_| {
        StartError::KafkaUnreachable {
            brokers: config.kafka.brokers.clone(),
            source: KafkaError::AdminOpCreation("creating topics timed out".into()),
        }
    })??;
    Ok(producer)
}

/// Asks the brokers for metadata. Tries a few times: brokers that restart, or a loaded
/// machine, may miss one probe.
async fn check_brokers(config: &Config, producer: &kafka::Producer) -> Result<(), StartError> {
    const ATTEMPTS: u32 = 3;
    let mut attempt = 1;
    loop {
        let probe = producer.get();
        let result = tokio::task::spawn_blocking(move || {
            probe.client().fetch_metadata(None, Duration::from_secs(10)).map(|_| ())
        })
        .await
        .unwrap_or(Err(KafkaError::MetadataFetch(RDKafkaErrorCode::Fail)));
        match result {
            Ok(()) => return Ok(()),
            Err(source) if attempt == ATTEMPTS => {
                return Err(StartError::KafkaUnreachable { brokers: config.kafka.brokers.clone(), source })
            }
            Err(e) => warn!(error = %e, attempt, "kafka brokers did not answer; trying again"),
        }
        attempt += 1;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
