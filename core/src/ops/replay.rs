//! Moving a consumer group back on a topic, for `onhand replay group`: each partition's
//! committed offset to an earlier one (the first record at or after a time, a named
//! offset, or the earliest retained), so that its consumers read those records again.
//!
//! A replay never skips a record: a partition whose target is after its committed offset
//! keeps it (asked by time or earliest) or refuses the whole move (a named offset). It is
//! refused while the group has live members, whose own position would win; a broker that
//! cannot tell (tansu) is refused too, unless the operator says the members are stopped.
//!
//! Where the offsets live depends on the group. The ledger's offsets are saved in the
//! database, in the same transaction as the movements they cover (Kafka's committed
//! offsets are never read back), so its group is moved there, only backwards
//! ([`LedgerWrites::rewind_consumer_offsets`]). Every other group (the Shopify sink on the
//! stock topic, an outside analytics group) is committed to Kafka by a consumer of that
//! group that never joins it.
//!
//! Records read again carry the event ids they had: the ledger skips an event id it
//! recorded, and a level on the stock topic carries its version, so a replay changes
//! nothing that was already counted.

use std::{collections::BTreeMap, fmt, time::Duration};

use chrono::{DateTime, Utc};
use rdkafka::{
    consumer::{BaseConsumer, CommitMode, Consumer},
    error::KafkaError,
    Offset, TopicPartitionList,
};
use serde::Serialize;

use crate::{
    config::Config,
    db::{DbError, LedgerWrites, PartitionOffset},
    kafka,
};

/// Why a group could not be planned or moved.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("no kafka brokers are configured (for onhand dev: is it running?)")]
    NoBrokers,
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("the topic {0} does not exist")]
    NoTopic(String),
    #[error("database: {0}")]
    Db(#[from] DbError),
    #[error("the kafka client stopped: {0}")]
    Stopped(String),
}

/// Where a group is moved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum To {
    /// In every partition, the first record at or after this time (its Kafka timestamp).
    Time(DateTime<Utc>),
    /// These offsets, by partition; the partitions not named stay.
    Offsets(BTreeMap<i32, i64>),
    /// The first record each partition still keeps.
    Earliest,
}

impl fmt::Display for To {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            To::Time(t) => write!(f, "the first records at or after {}", t.to_rfc3339()),
            To::Offsets(offsets) => {
                let named: Vec<String> = offsets.iter().map(|(p, o)| format!("{p}:{o}")).collect();
                write!(f, "offsets {}", named.join(", "))
            }
            To::Earliest => write!(f, "the earliest records kept"),
        }
    }
}

/// One `onhand replay group`.
#[derive(Debug, Clone)]
pub struct Request {
    pub group: String,
    pub topic: String,
    pub to: To,
    /// The operator says the group's members are stopped, for a broker that cannot
    /// describe groups.
    pub members_stopped: bool,
}

/// Where a group's committed offsets are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Keeper {
    /// The ledger's group: in the database's `consumer_offsets`, beside its movements.
    Database,
    /// Any other group: Kafka's committed offsets.
    Kafka,
}

/// What the broker says of the group's members.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Members {
    /// None: the group is empty, or unknown to the broker.
    Stopped,
    /// Consumers hold the group: their position would win over a committed one.
    Live { count: usize, state: String },
    /// The broker could not say (tansu cannot describe groups).
    Unknown { why: String },
    /// The broker could not say, and the operator says they are stopped.
    Asserted { why: String },
}

/// One partition of a move.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionMove {
    pub partition: i32,
    /// The oldest offset the partition keeps, and its end (the next record's offset).
    pub low: i64,
    pub high: i64,
    /// Where the group is: its next offset (`None`: nothing committed; the ledger then
    /// starts at the oldest record, another group where its `auto.offset.reset` says).
    pub committed: Option<i64>,
    /// Where it goes.
    pub target: i64,
    /// Whether it moves; a partition stays when it is at its target already, when it has
    /// not read that far yet, or when it is not named.
    pub moves: bool,
    /// Records read again (or, with nothing committed, read from the target to the end).
    pub rereads: i64,
}

/// Why a move is refused, with a stable code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Refusal {
    /// `live_members`, `members_unknown`, `forward`, `out_of_range` or `unknown_partition`.
    pub code: &'static str,
    pub reason: String,
}

/// What a replay of a group would do.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub group: String,
    pub topic: String,
    pub to: String,
    pub offsets_kept_in: Keeper,
    pub members: Members,
    pub partitions: Vec<PartitionMove>,
    /// Records read again, over every partition.
    pub rereads: i64,
    /// Why the move must not be made, if it must not; nothing is moved then.
    pub refused: Vec<Refusal>,
}

impl Plan {
    /// The partitions that move.
    pub fn moves(&self) -> impl Iterator<Item = &PartitionMove> {
        self.partitions.iter().filter(|m| m.moves)
    }
}

const TIMEOUT: Duration = Duration::from_secs(10);

/// A consumer of `group` that never joins it: it reads the group's description and its
/// committed offsets, and commits new ones.
fn group_client(config: &Config, group: &str) -> Result<BaseConsumer, ReplayError> {
    if config.kafka.brokers.trim().is_empty() {
        return Err(ReplayError::NoBrokers);
    }
    Ok(kafka::client_config(&config.kafka)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .create()?)
}

/// Whether `group` and `topic` are the ledger's, whose offsets the database keeps.
pub fn keeper(config: &Config, group: &str, topic: &str) -> Keeper {
    if group == config.ledger.group_id && topic == config.kafka.topics.movements {
        Keeper::Database
    } else {
        Keeper::Kafka
    }
}

/// Plans the move: every partition's committed offset and target, the records read again,
/// and whether the move is refused.
pub async fn plan(config: &Config, db: &dyn LedgerWrites, request: &Request) -> Result<Plan, ReplayError> {
    let keeper = keeper(config, &request.group, &request.topic);
    let saved = match keeper {
        Keeper::Database => Some(db.consumer_offsets(&request.group, &request.topic).await?),
        Keeper::Kafka => None,
    };
    let (config, asked) = (config.clone(), request.clone());
    let (members, marks, committed, resolved) = blocking(move || {
        let client = group_client(&config, &asked.group)?;
        let members = members(&client, &asked.group, asked.members_stopped);
        let marks = watermarks(&client, &asked.topic)?;
        let committed = match saved {
            Some(saved) => saved.into_iter().map(|o| (o.partition, o.next_offset)).collect(),
            None => committed(&client, &asked.topic, &marks)?,
        };
        let resolved = resolve(&client, &asked.topic, &asked.to, &marks)?;
        Ok((members, marks, committed, resolved))
    })
    .await?;
    let (partitions, mut refused) = moves(keeper, &request.to, &marks, &committed, &resolved);
    refused.extend(members_refusal(&members, &request.group));
    Ok(Plan {
        group: request.group.clone(),
        topic: request.topic.clone(),
        to: request.to.to_string(),
        offsets_kept_in: keeper,
        members,
        rereads: partitions.iter().fold(0i64, |sum, m| sum.saturating_add(m.rereads)),
        partitions,
        refused,
    })
}

/// Each partition's move, from its watermarks, its committed offset and the offset `to`
/// resolved to, and the refusals of a named offset that is forward or out of range.
fn moves(
    keeper: Keeper,
    to: &To,
    marks: &BTreeMap<i32, (i64, i64)>,
    committed: &BTreeMap<i32, i64>,
    resolved: &BTreeMap<i32, i64>,
) -> (Vec<PartitionMove>, Vec<Refusal>) {
    let mut refused = Vec::new();
    if let To::Offsets(offsets) = to {
        for (&partition, &offset) in offsets {
            match marks.get(&partition) {
                None => refused.push(Refusal {
                    code: "unknown_partition",
                    reason: format!("the topic has no partition {partition}"),
                }),
                Some(&(low, high)) if offset < low || offset > high => refused.push(Refusal {
                    code: "out_of_range",
                    reason: format!("partition {partition} keeps offsets {low} to {high}: {offset} is not among them"),
                }),
                Some(_) => {}
            }
        }
    }
    let mut partitions = Vec::new();
    for (&partition, &(low, high)) in marks {
        let committed = committed.get(&partition).copied();
        // With nothing saved, the ledger starts at the oldest record there is.
        let at = match keeper {
            Keeper::Database => Some(committed.unwrap_or(low)),
            Keeper::Kafka => committed,
        };
        let (target, moves) = match (resolved.get(&partition).copied(), at) {
            // A partition not named stays.
            (None, _) => (at.unwrap_or(high), false),
            (Some(wanted), Some(at)) if wanted > at => {
                // A named offset out of the partition's range is refused as such above.
                if matches!(to, To::Offsets(_)) && wanted <= high {
                    refused.push(Refusal {
                        code: "forward",
                        reason: format!(
                            "partition {partition} is at {at}: {wanted} is after it, and a replay never skips a \
                             record (it only moves back)"
                        ),
                    });
                }
                (at, false)
            }
            (Some(wanted), Some(at)) if wanted == at => (at, false),
            (Some(wanted), _) => (wanted, true),
        };
        let rereads = if moves { at.unwrap_or(high).saturating_sub(target).max(0) } else { 0 };
        partitions.push(PartitionMove { partition, low, high, committed, target, moves, rereads });
    }
    (partitions, refused)
}

fn members_refusal(members: &Members, group: &str) -> Option<Refusal> {
    match members {
        Members::Stopped | Members::Asserted { .. } => None,
        Members::Live { count, state } => Some(Refusal {
            code: "live_members",
            reason: format!(
                "the group {group} has {count} live member(s) ({state}): stop its consumers first (their own \
                 position would win), and wait for their session to time out"
            ),
        }),
        Members::Unknown { why } => Some(Refusal {
            code: "members_unknown",
            reason: format!(
                "the broker cannot say whether the group {group} has live members ({why}): stop its consumers, then \
                 run again with --members-stopped"
            ),
        }),
    }
}

/// What the broker says of the group's members; `asserted`: the operator says they are
/// stopped, which stands when the broker cannot tell.
fn members(client: &BaseConsumer, group: &str, asserted: bool) -> Members {
    let unknown = |why: String| if asserted { Members::Asserted { why } } else { Members::Unknown { why } };
    let list = match client.fetch_group_list(Some(group), TIMEOUT) {
        Ok(list) => list,
        Err(e) => return unknown(format!("describing the group failed: {e}")),
    };
    let Some(info) = list.groups().iter().find(|g| g.name() == group) else {
        return Members::Stopped;
    };
    let (count, state) = (info.members().len(), info.state().to_string());
    match state.as_str() {
        _ if count > 0 => Members::Live { count, state },
        "Empty" | "Dead" => Members::Stopped,
        _ => unknown(format!("the group's state is {state:?} with no member listed")),
    }
}

/// Each partition's oldest offset and end.
fn watermarks(client: &BaseConsumer, topic: &str) -> Result<kafka::Watermarks, ReplayError> {
    kafka::watermarks(client, topic, TIMEOUT)?.ok_or_else(|| ReplayError::NoTopic(topic.to_string()))
}

/// The group's committed offsets in Kafka, where it has any.
fn committed(
    client: &BaseConsumer,
    topic: &str,
    marks: &BTreeMap<i32, (i64, i64)>,
) -> Result<BTreeMap<i32, i64>, ReplayError> {
    let mut tpl = TopicPartitionList::new();
    for &partition in marks.keys() {
        tpl.add_partition(topic, partition);
    }
    let answered = client.committed_offsets(tpl, TIMEOUT)?;
    Ok(answered
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some((e.partition(), o)),
            _ => None,
        })
        .collect())
}

/// The offset each partition goes to, before the rule that a replay never moves forward.
fn resolve(
    client: &BaseConsumer,
    topic: &str,
    to: &To,
    marks: &BTreeMap<i32, (i64, i64)>,
) -> Result<BTreeMap<i32, i64>, ReplayError> {
    match to {
        To::Earliest => Ok(marks.iter().map(|(&p, &(low, _))| (p, low)).collect()),
        To::Offsets(offsets) => Ok(offsets.clone()),
        To::Time(at) => {
            let mut tpl = TopicPartitionList::new();
            for &partition in marks.keys() {
                tpl.add_partition_offset(topic, partition, Offset::Offset(at.timestamp_millis()))?;
            }
            let answered = client.offsets_for_times(tpl, TIMEOUT)?;
            let mut offsets = BTreeMap::new();
            for e in answered.elements() {
                let (low, high) = marks.get(&e.partition()).copied().unwrap_or((0, 0));
                // No record at or after the time: the partition's end.
                let offset = match e.offset() {
                    Offset::Offset(o) => o.clamp(low, high),
                    _ => high,
                };
                offsets.insert(e.partition(), offset);
            }
            Ok(offsets)
        }
    }
}

/// Makes the move of a plan that is not refused: the ledger's offsets in the database,
/// any other group's in Kafka. Answers the group's offsets afterwards, as read back.
pub async fn apply(config: &Config, db: &dyn LedgerWrites, plan: &Plan) -> Result<BTreeMap<i32, i64>, ReplayError> {
    let moves: Vec<PartitionOffset> =
        plan.moves().map(|m| PartitionOffset { partition: m.partition, next_offset: m.target }).collect();
    match plan.offsets_kept_in {
        Keeper::Database => {
            db.rewind_consumer_offsets(&plan.group, &plan.topic, &moves).await?;
            let saved = db.consumer_offsets(&plan.group, &plan.topic).await?;
            Ok(saved.into_iter().map(|o| (o.partition, o.next_offset)).collect())
        }
        Keeper::Kafka => {
            let (config, group, topic) = (config.clone(), plan.group.clone(), plan.topic.clone());
            let partitions: Vec<i32> = plan.partitions.iter().map(|m| m.partition).collect();
            blocking(move || {
                let client = group_client(&config, &group)?;
                if !moves.is_empty() {
                    let mut tpl = TopicPartitionList::new();
                    for o in &moves {
                        tpl.add_partition_offset(&topic, o.partition, Offset::Offset(o.next_offset))?;
                    }
                    client.commit(&tpl, CommitMode::Sync)?;
                }
                let marks = partitions.into_iter().map(|p| (p, (0, 0))).collect();
                committed(&client, &topic, &marks)
            })
            .await
        }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ReplayError> + Send + 'static,
) -> Result<T, ReplayError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ReplayError::Stopped(e.to_string()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_ledgers_group_on_the_movements_topic_is_kept_in_the_database() {
        let config = Config::default();
        let (ledger, movements) = (&config.ledger.group_id, &config.kafka.topics.movements);
        assert_eq!(keeper(&config, ledger, movements), Keeper::Database);
        assert_eq!(keeper(&config, ledger, &config.kafka.topics.stock), Keeper::Kafka);
        assert_eq!(keeper(&config, "onhand-shopify-sink", movements), Keeper::Kafka);
    }

    #[test]
    fn members_nobody_can_see_refuse_unless_the_operator_says_they_are_stopped() {
        let why = "describing the group failed".to_string();
        let refused = members_refusal(&Members::Unknown { why: why.clone() }, "g").unwrap();
        assert_eq!(refused.code, "members_unknown");
        assert!(refused.reason.contains("--members-stopped"), "{}", refused.reason);
        assert_eq!(members_refusal(&Members::Asserted { why }, "g"), None);
        let live = members_refusal(&Members::Live { count: 2, state: "Stable".into() }, "g").unwrap();
        assert_eq!(live.code, "live_members");
        assert_eq!(members_refusal(&Members::Stopped, "g"), None);
    }

    /// (partition, committed, resolved target) -> (target, moves, rereads), on partitions
    /// keeping offsets 10 to 100.
    #[test]
    fn a_replay_moves_back_stays_where_it_has_not_read_that_far_and_refuses_a_named_forward_offset() {
        let marks: BTreeMap<i32, (i64, i64)> = (0..4).map(|p| (p, (10, 100))).collect();
        let committed: BTreeMap<i32, i64> = [(0, 80), (1, 30), (2, 100)].into();
        let by_time: BTreeMap<i32, i64> = [(0, 50), (1, 60), (2, 100), (3, 40)].into();
        let run = |keeper, to: &To, resolved: &BTreeMap<i32, i64>| {
            let (moves, refused) = moves(keeper, to, &marks, &committed, resolved);
            let rows: Vec<(i32, i64, bool, i64)> =
                moves.iter().map(|m| (m.partition, m.target, m.moves, m.rereads)).collect();
            (rows, refused.iter().map(|r| r.code).collect::<Vec<_>>())
        };
        let at = To::Time(Utc::now());
        // Partition 1 has not read as far as the time: it stays. Partition 3 has nothing
        // saved: the ledger reads it from the oldest record anyway; another group gets
        // the time's offset committed and reads from there to the end.
        assert_eq!(
            run(Keeper::Database, &at, &by_time),
            (vec![(0, 50, true, 30), (1, 30, false, 0), (2, 100, false, 0), (3, 10, false, 0)], vec![])
        );
        assert_eq!(run(Keeper::Kafka, &at, &by_time).0[3], (3, 40, true, 60));
        let named = To::Offsets([(0, 70), (1, 31)].into());
        let (rows, refused) = run(Keeper::Database, &named, &[(0, 70), (1, 31)].into());
        assert_eq!(refused, ["forward"]);
        assert_eq!(rows[..2], [(0, 70, true, 10), (1, 30, false, 0)]);
        let wrong = To::Offsets([(0, 5), (7, 1)].into());
        assert_eq!(run(Keeper::Kafka, &wrong, &[(0, 5), (7, 1)].into()).1, ["out_of_range", "unknown_partition"]);
    }

    #[test]
    fn targets_are_described_for_people() {
        assert_eq!(To::Offsets([(0, 5), (2, 9)].into()).to_string(), "offsets 0:5, 2:9");
        assert_eq!(To::Earliest.to_string(), "the earliest records kept");
    }
}
