//! `onhand doctor`'s checks of a deployment, end to end: its configuration, its database
//! (reachable, migrated, clock, API keys), its brokers and topics (partitions, retention,
//! compaction) and how far the ledger's consumer group is behind. Each check says in
//! plain words what it found and, when something is wrong, how to fix it. Nothing here
//! changes anything.

use std::time::Duration;

use chrono::{DateTime, Utc};
use rdkafka::{
    admin::{AdminClient, AdminOptions, ResourceSpecifier},
    client::DefaultClientContext,
    config::RDKafkaLogLevel,
    consumer::{BaseConsumer, Consumer},
    metadata::Metadata,
};
use serde::Serialize;

use super::dlq;
use crate::{
    config::Config,
    db::{self, schema::Inspection, PartitionOffset},
    kafka,
};

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Ok,
    /// Works, but needs a look.
    Warn,
    /// Broken: onhand cannot work like this.
    Fail,
}

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// What part of the deployment: `config`, `database`, `kafka`, `ledger`.
    pub area: &'static str,
    pub status: Status,
    /// What was found, in plain words.
    pub found: String,
    /// What to do about it, when something is wrong.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

/// Every finding, in the order they were made.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    pub checks: Vec<Check>,
}

impl Report {
    /// The worst status of any check.
    pub fn status(&self) -> Status {
        self.checks.iter().map(|c| c.status).max().unwrap_or(Status::Ok)
    }

    fn ok(&mut self, area: &'static str, found: impl Into<String>) {
        self.checks.push(Check { area, status: Status::Ok, found: found.into(), fix: None });
    }

    fn warn(&mut self, area: &'static str, found: impl Into<String>, fix: impl Into<String>) {
        self.checks.push(Check { area, status: Status::Warn, found: found.into(), fix: Some(fix.into()) });
    }

    fn fail(&mut self, area: &'static str, found: impl Into<String>, fix: impl Into<String>) {
        self.checks.push(Check { area, status: Status::Fail, found: found.into(), fix: Some(fix.into()) });
    }

    /// The report of a configuration that could not be read at all.
    pub fn unreadable_config(error: &str) -> Report {
        let mut report = Report::default();
        report.fail(
            "config",
            format!("the configuration cannot be read: {error}"),
            "fix the file named by --config or ONHAND_CONFIG, or the ONHAND_SECTION__FIELD variables \
             (deploy/onhand.toml shows every field)",
        );
        report
    }
}

/// A clock further than this from the database's is reported.
const CLOCK_SKEW_WARN: chrono::Duration = chrono::Duration::seconds(2);
/// A ledger further behind than this many movements is reported.
const LAG_WARN: i64 = 10_000;
/// The movements topic should keep at least this long, for a replay to reach back.
const RETENTION_WARN: Duration = Duration::from_secs(7 * 24 * 3600);
const KAFKA_TIMEOUT: Duration = Duration::from_secs(10);

/// Checks the deployment `config` describes, as this machine's clock reads `now`.
pub async fn examine(config: &Config, now: DateTime<Utc>) -> Report {
    let mut report = Report::default();
    report.ok("config", "the configuration is read");
    let inspection = database(config, now, &mut report).await;
    let Some(metadata) = brokers(config, &mut report).await else {
        return report;
    };
    topics(config, &metadata, &mut report).await;
    if let Some(inspection) = inspection {
        ledger_lag(config, &inspection.offsets, &mut report).await;
    }
    report
}

async fn database(config: &Config, now: DateTime<Utc>, report: &mut Report) -> Option<Inspection> {
    let url = &config.database.url;
    if url.is_empty() {
        report.fail("database", "no database is configured", "set database.url or DATABASE_URL (postgres://...)");
        return None;
    }
    let shown = db::redact_url(url);
    let inspection = match db::schema::inspect(url, &config.ledger.group_id, &config.kafka.topics.movements).await {
        Ok(inspection) => inspection,
        Err(e) => {
            report.fail(
                "database",
                format!("{shown} does not answer: {e}"),
                "check that the server runs, that the address, user and password are right, and that this \
                 machine may connect",
            );
            return None;
        }
    };
    let latest = inspection.applied.last().map_or("none".to_string(), |v| v.to_string());
    report.ok("database", format!("{shown} answers; {} migrations applied, latest {latest}", inspection.applied.len()));
    if !inspection.failed.is_empty() {
        report.fail(
            "database",
            format!("migrations {:?} failed halfway", inspection.failed),
            "read the server's log for the error, repair the schema by hand, delete those rows from \
             _sqlx_migrations, and start onhand serve again",
        );
    }
    if !inspection.unknown.is_empty() {
        report.fail(
            "database",
            format!("migrations {:?} were applied by a newer onhand than this one", inspection.unknown),
            "run the same onhand version as the deployment that migrated this database",
        );
    }
    if !inspection.pending.is_empty() {
        report.warn(
            "database",
            format!(
                "{} migrations of this onhand are not applied yet: {:?}",
                inspection.pending.len(),
                inspection.pending
            ),
            "the next start of onhand serve applies them; start the new version once before the others",
        );
    }
    if let Some(clock) = inspection.clock {
        let skew = now - clock;
        if skew.abs() > CLOCK_SKEW_WARN {
            report.warn(
                "database",
                format!("this machine's clock is {:.1} s from the database's", skew.num_milliseconds() as f64 / 1000.0),
                "synchronise both clocks (chrony or systemd-timesyncd): reservations expire and freshness is \
                 measured by them",
            );
        } else {
            report.ok("database", "this machine's clock agrees with the database's");
        }
    }
    match (inspection.active_keys, inspection.admin_keys) {
        _ if inspection.applied.is_empty() => {}
        (0, _) => report.warn(
            "database",
            "there is no API key: every /v1 call is refused",
            "create one: onhand keys create --name ops --scopes admin",
        ),
        (keys, 0) => report.warn(
            "database",
            format!("{keys} API key(s), none with the admin scope: products, keys and policies cannot be managed"),
            "create one: onhand keys create --name ops --scopes admin",
        ),
        (keys, admins) => report.ok("database", format!("{keys} API key(s), {admins} of them admin")),
    }
    Some(inspection)
}

/// A consumer that joins no group and commits nothing: for metadata and watermarks.
fn looker(config: &Config) -> Result<BaseConsumer, rdkafka::error::KafkaError> {
    kafka::client_config(&config.kafka)
        .set("group.id", "onhand-doctor")
        .set("enable.auto.commit", "false")
        .set_log_level(RDKafkaLogLevel::Error)
        .create()
}

async fn brokers(config: &Config, report: &mut Report) -> Option<Metadata> {
    if config.kafka.brokers.is_empty() {
        report.fail(
            "kafka",
            "no kafka brokers are configured",
            "set kafka.brokers or ONHAND_KAFKA__BROKERS (for onhand dev: is it running?)",
        );
        return None;
    }
    let brokers = config.kafka.brokers.clone();
    let config = config.clone();
    let metadata =
        tokio::task::spawn_blocking(move || looker(&config)?.fetch_metadata(None, KAFKA_TIMEOUT)).await.ok()?;
    match metadata {
        Ok(metadata) => {
            report
                .ok("kafka", format!("brokers {brokers} answer: {} brokers in the cluster", metadata.brokers().len()));
            Some(metadata)
        }
        Err(e) => {
            report.fail(
                "kafka",
                format!("brokers {brokers} do not answer: {e}"),
                "check kafka.brokers, that the brokers run, and the TLS/SASL settings under kafka.client",
            );
            None
        }
    }
}

async fn topics(config: &Config, metadata: &Metadata, report: &mut Report) {
    let names = &config.kafka.topics;
    let mut present = Vec::new();
    for name in [&names.movements, &names.stock, &names.dlq, &names.alerts, &names.orders] {
        match metadata.topics().iter().find(|t| t.name() == name.as_str()) {
            None => report.fail(
                "kafka",
                format!("topic {name} does not exist"),
                format!(
                    "start onhand serve once (it creates its topics), or create it with {} partitions",
                    config.kafka.partitions
                ),
            ),
            Some(topic) => {
                let leaderless = topic.partitions().iter().filter(|p| p.leader() < 0).count();
                if leaderless > 0 {
                    report.fail(
                        "kafka",
                        format!("topic {name}: {leaderless} of {} partitions have no leader", topic.partitions().len()),
                        "bring the brokers that hold them back; see docs/operations.md, \"the broker was lost\"",
                    );
                } else {
                    report.ok("kafka", format!("topic {name}: {} partitions", topic.partitions().len()));
                    present.push(name.clone());
                }
                let replicas = topic.partitions().iter().map(|p| p.replicas().len()).min().unwrap_or(0);
                let wanted = usize::try_from(config.kafka.replication_factor).unwrap_or(0);
                if replicas < wanted {
                    report.warn(
                        "kafka",
                        format!("topic {name} has {replicas} replica(s) per partition, kafka.replication_factor asks {wanted}"),
                        "reassign its partitions to more brokers (kafka-reassign-partitions.sh); docs/operations.md, \"Topics\"",
                    );
                }
            }
        }
    }
    if present.is_empty() {
        return;
    }
    let admin: AdminClient<DefaultClientContext> = match kafka::client_config(&config.kafka).create() {
        Ok(admin) => admin,
        Err(e) => return report.warn("kafka", format!("cannot ask the topics' settings: {e}"), "check the brokers"),
    };
    let resources: Vec<ResourceSpecifier> = present.iter().map(|name| ResourceSpecifier::Topic(name)).collect();
    let options = AdminOptions::new().request_timeout(Some(KAFKA_TIMEOUT));
    let described = match admin.describe_configs(&resources, &options).await {
        Ok(described) => described,
        Err(e) => {
            return report.warn(
                "kafka",
                format!("the brokers do not tell the topics' settings ({e}): retention and compaction unchecked"),
                "check them with kafka-configs.sh --describe --entity-type topics",
            )
        }
    };
    for (name, resource) in present.iter().zip(described) {
        let Ok(resource) = resource else {
            report.warn("kafka", format!("topic {name}: its settings could not be read"), "check the brokers' log");
            continue;
        };
        let setting = |key: &str| resource.get(key).and_then(|entry| entry.value.clone());
        let insync: Option<i32> = setting("min.insync.replicas").and_then(|v| v.parse().ok());
        if let Some(n) = insync.filter(|&n| n < config.kafka.min_insync_replicas) {
            report.warn(
                "kafka",
                format!(
                    "topic {name} has min.insync.replicas={n}, kafka.min_insync_replicas asks {}: an accepted write may live on fewer brokers",
                    config.kafka.min_insync_replicas
                ),
                format!(
                    "kafka-configs.sh --alter --entity-type topics --entity-name {name} --add-config min.insync.replicas={}",
                    config.kafka.min_insync_replicas
                ),
            );
        }
        if name == &names.stock {
            let policy = setting("cleanup.policy").unwrap_or_default();
            if policy.split(',').any(|p| p.trim() == "compact") {
                report.ok("kafka", format!("topic {name} is compacted"));
            } else {
                report.fail(
                    "kafka",
                    format!("topic {name} has cleanup.policy={policy:?}: old levels expire instead of compacting"),
                    format!("kafka-configs.sh --alter --entity-type topics --entity-name {name} --add-config cleanup.policy=compact"),
                );
            }
        } else {
            let retention_ms: Option<i64> = setting("retention.ms").and_then(|v| v.parse().ok());
            match retention_ms {
                Some(ms) if ms >= 0 && (ms as u128) < RETENTION_WARN.as_millis() => report.warn(
                    "kafka",
                    format!("topic {name} keeps records {:.1} days: a replay cannot reach further back", ms as f64 / 86_400_000.0),
                    format!("keep at least 7 days: kafka-configs.sh --alter --entity-type topics --entity-name {name} --add-config retention.ms=604800000"),
                ),
                Some(ms) if ms >= 0 => report.ok("kafka", format!("topic {name} keeps records {:.0} days", ms as f64 / 86_400_000.0)),
                Some(_) => report.ok("kafka", format!("topic {name} keeps records forever")),
                None => report.warn(
                    "kafka",
                    format!("topic {name}: the brokers do not report retention.ms (their default applies: 7 days on Apache Kafka)"),
                    format!("confirm it: kafka-configs.sh --describe --entity-type topics --entity-name {name}"),
                ),
            }
        }
    }
}

async fn ledger_lag(config: &Config, saved: &[PartitionOffset], report: &mut Report) {
    let group = &config.ledger.group_id;
    let marks = match dlq::marks(&config.kafka, &config.kafka.topics.movements).await {
        Ok(marks) => marks,
        Err(e) => return report.warn("ledger", format!("the ledger's lag cannot be read: {e}"), "check the brokers"),
    };
    let mut behind: i64 = 0;
    let mut ahead = Vec::new();
    for (&partition, &(low, high)) in &marks {
        let next = saved.iter().find(|s| s.partition == partition).map(|s| s.next_offset);
        match next {
            Some(next) if next > high => ahead.push(partition),
            _ => behind = behind.saturating_add(kafka::unread((low, high), next)),
        }
    }
    if !ahead.is_empty() {
        report.fail(
            "ledger",
            format!("group {group} saved offsets past the end of partitions {ahead:?}: the topic lost records or was made again"),
            "see docs/operations.md, \"the broker was lost\": onhand replay group moves the offsets back",
        );
    } else if behind > LAG_WARN {
        report.warn(
            "ledger",
            format!("group {group} is {behind} movements behind"),
            "is a ledger running (onhand serve with ledger.enabled)? watch that the lag shrinks",
        );
    } else {
        report.ok("ledger", format!("group {group} is {behind} movements behind"));
    }
}
