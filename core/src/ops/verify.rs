//! `onhand verify`: every level recomputed from the recorded movements under the ledger's
//! rules ([`super::recompute`]) and compared with `stock_levels`, in one snapshot of the
//! database ([`Audit`]); beside it, the units reserved against the reservation lines that
//! hold them, the outbox's age, levels not yet published, and the ledger's saved offsets
//! against each partition's end. With a snapshot of an outside system (`--against`), the
//! levels are compared with it too, grouped by the source that last moved each level and
//! by the size of the difference.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    io::Read,
};

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{
    dlq::{self, DlqError},
    recompute::{empty_state, Folds, Recomputed},
    Progress,
};
use crate::{
    config::KafkaConfig,
    db::{Audit, AuditFacts, AuditReader, AuditedLevel, DbError, LevelRewrite, SavedOffset},
    event::{LocationId, Movement, Sku},
    ledger::rules::LevelKey,
};

/// Why `onhand verify` could not run.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("database: {0}")]
    Db(#[from] DbError),
    #[error("{0}")]
    Snapshot(#[from] SnapshotError),
}

/// How much delay is normal on a live deployment, and not a problem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tolerance {
    /// How old an outbox record, or a level not yet published, may be.
    pub grace: chrono::Duration,
    /// How many movements the ledger may be behind on a partition.
    pub lag_max: i64,
}

/// `sku@location`, as reports and the stock topic name a level.
pub fn level_name((sku, location): &LevelKey) -> String {
    format!("{sku}@{location}")
}

/// A level whose stored ledger columns are not what its movements make.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Drift {
    pub level: String,
    /// on_hand as the movements make it.
    pub expected: i64,
    /// on_hand as stored; `None` when the level has movements but no row.
    pub found: Option<i64>,
    /// What differs: `on_hand`, `last_count` (the count on_hand is based on),
    /// `last_movement_at`, or `missing` (no row).
    pub differs: Vec<&'static str>,
    /// The source (`system:instance`) of the last movement that changed the level.
    pub source: Option<String>,
    /// The write that puts the level right, for `onhand rebuild`.
    #[serde(skip)]
    pub rewrite: LevelRewrite,
}

/// A recorded movement the rules refuse in ledger order (it would take its level out of
/// range): the ledger would have dead-lettered it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Refused {
    pub level: String,
    pub event_id: String,
    pub reason: String,
}

/// A level whose reserved units are not those its reservation lines hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReservedDrift {
    pub level: String,
    pub reserved: i64,
    /// What the lines of held reservations, and of committed ones not yet sold, hold.
    pub held: i64,
}

/// The outbox: movements the API accepted that have not reached Kafka yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OutboxCheck {
    pub records: i64,
    pub oldest_age_s: Option<i64>,
    /// Older than the grace: the relay is not sending them.
    pub stuck: bool,
}

/// Levels written but not acknowledged on the stock topic yet.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct UnpublishedCheck {
    pub levels: u64,
    /// Those written longer ago than the grace: the ledger's sweep has not published them.
    pub overdue: u64,
    /// The first overdue ones, by name.
    pub overdue_levels: Vec<String>,
}

/// How far behind its partitions' ends a consumer group's saved offsets are.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LagCheck {
    /// Whether the brokers answered; when not, `note` says why and lag is not checked.
    pub checked: bool,
    pub note: Option<String>,
    pub partitions: Vec<PartitionLag>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionLag {
    pub group_id: String,
    pub topic: String,
    pub partition: i32,
    /// The next offset saved in the database; `None`: never saved (the group starts at
    /// the partition's beginning).
    pub saved: Option<i64>,
    /// The partition's end (high watermark).
    pub end: i64,
    pub lag: i64,
    /// More than the lag allowed.
    pub behind: bool,
}

/// What `onhand verify` found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    pub levels: u64,
    pub movements: u64,
    pub drifts: Vec<Drift>,
    pub refused: Vec<Refused>,
    pub reserved: Vec<ReservedDrift>,
    pub outbox: Option<OutboxCheck>,
    pub unpublished: UnpublishedCheck,
    pub lag: LagCheck,
    pub against: Option<Against>,
    /// How many problems in all: each drift, refused movement, reserved drift, overdue
    /// level, partition behind, difference from the outside snapshot, and a stuck outbox.
    pub problems: u64,
}

impl Report {
    fn count_problems(&mut self) {
        let against = self.against.as_ref().map_or(0, |a| a.differences.len());
        let outbox = self.outbox.as_ref().is_some_and(|o| o.stuck);
        self.problems = (self.drifts.len()
            + self.refused.len()
            + self.reserved.len()
            + self.lag.partitions.iter().filter(|p| p.behind).count()
            + against
            + usize::from(outbox)) as u64
            + self.unpublished.overdue;
    }
}

/// How many overdue levels a report names; it counts them all.
const OVERDUE_NAMED_MAX: usize = 100;

/// Verifies the database: every level, the reservations, the outbox, what is
/// unpublished; and, when given, compares the levels with an outside `snapshot`. The lag
/// is measured apart ([`lag`]), since it needs Kafka.
pub async fn verify(
    db: &dyn Audit,
    snapshot: Option<Snapshot>,
    tolerance: Tolerance,
    progress: &dyn Progress,
) -> Result<(Report, Vec<SavedOffset>), VerifyError> {
    let mut checker = Checker::new(progress, snapshot, Utc::now(), tolerance);
    let facts = db.audit(&mut checker).await?;
    progress.finish();
    let saved = facts.offsets.clone();
    Ok((checker.report(Some(facts)), saved))
}

/// Adds the lag of every consumer group saved in the database, and of the ledger's group
/// on `movements_topic` even when it saved nothing yet, to `report`. When the brokers do
/// not answer, says so instead.
pub async fn lag(
    report: &mut Report,
    kafka: &KafkaConfig,
    ledger_group: &str,
    movements_topic: &str,
    saved: &[SavedOffset],
    lag_max: i64,
) {
    let mut groups: BTreeMap<(&str, &str), BTreeMap<i32, i64>> = BTreeMap::new();
    groups.entry((ledger_group, movements_topic)).or_default();
    for s in saved {
        groups.entry((&s.group_id, &s.topic)).or_default().insert(s.partition, s.next_offset);
    }
    let mut marks_of: HashMap<&str, BTreeMap<i32, (i64, i64)>> = HashMap::new();
    for ((group, topic), offsets) in &groups {
        if !marks_of.contains_key(topic) {
            match dlq::marks(kafka, topic).await {
                Ok(marks) => {
                    marks_of.insert(topic, marks);
                }
                // A group's old topic that is gone is no lag; the ledger's topic must be there.
                Err(DlqError::NoTopic(_)) if *topic != movements_topic => continue,
                Err(e) => {
                    let why = match e {
                        DlqError::NoTopic(t) => format!("the topic {t} does not exist"),
                        other => other.to_string(),
                    };
                    report.lag = LagCheck { checked: false, note: Some(why), partitions: Vec::new() };
                    report.count_problems();
                    return;
                }
            }
        }
        for (&partition, &(low, high)) in &marks_of[topic] {
            let saved = offsets.get(&partition).copied();
            let lag = crate::kafka::unread((low, high), saved);
            report.lag.partitions.push(PartitionLag {
                group_id: group.to_string(),
                topic: topic.to_string(),
                partition,
                saved,
                end: high,
                lag,
                behind: lag > lag_max,
            });
        }
    }
    report.lag.checked = true;
    report.count_problems();
}

/// The audit's reader: folds each level's movements as they stream by and compares the
/// level with what is stored once its movements are over.
pub(super) struct Checker<'p> {
    progress: &'p dyn Progress,
    now: DateTime<Utc>,
    tolerance: Tolerance,
    folds: Folds,
    /// The stored levels whose movements have not come yet.
    found: BTreeMap<LevelKey, AuditedLevel>,
    /// Reserved units of the levels that have any.
    reserved: BTreeMap<LevelKey, i64>,
    /// The levels counted as unpublished.
    unpublished: BTreeSet<LevelKey>,
    against: Option<Comparison>,
    report: Report,
    unreported_steps: u64,
    movements_started: bool,
    totals: (u64, u64),
}

impl<'p> Checker<'p> {
    pub(super) fn new(
        progress: &'p dyn Progress,
        snapshot: Option<Snapshot>,
        now: DateTime<Utc>,
        tolerance: Tolerance,
    ) -> Self {
        Checker {
            progress,
            now,
            tolerance,
            folds: Folds::default(),
            found: BTreeMap::new(),
            reserved: BTreeMap::new(),
            unpublished: BTreeSet::new(),
            against: snapshot.map(Comparison::new),
            report: Report::default(),
            unreported_steps: 0,
            movements_started: false,
            totals: (0, 0),
        }
    }

    fn step(&mut self) {
        self.unreported_steps += 1;
        if self.unreported_steps == 1024 {
            self.progress.advance(self.unreported_steps);
            self.unreported_steps = 0;
        }
    }

    /// Compares a level done with what is stored for it.
    fn settle(&mut self, done: Recomputed, found: Option<AuditedLevel>) {
        if let Some(refused) = &done.refused {
            self.report.refused.push(Refused {
                level: level_name(&done.key),
                event_id: refused.event_id.to_string(),
                reason: refused.reason.clone(),
            });
        }
        if let Some(against) = &mut self.against {
            against.source(&done.key, done.source.as_deref());
        }
        if let Some(drift) = compare(&done, found.as_ref()) {
            self.report.drifts.push(drift);
        }
    }

    /// Settles the last level with movements and every stored level without any; the
    /// drifts, as `onhand rebuild` writes them back.
    pub(super) fn settle_all(&mut self) -> &[Drift] {
        if let Some(done) = self.folds.finish() {
            let found = self.found.remove(&done.key);
            self.settle(done, found);
        }
        for (key, level) in std::mem::take(&mut self.found) {
            let nothing = Recomputed { key, state: empty_state(), source: None, movements: 0, refused: None };
            self.settle(nothing, Some(level));
        }
        self.report.drifts.sort_by(|a, b| a.level.cmp(&b.level));
        &self.report.drifts
    }

    /// The report, with the facts the snapshot held beside the levels.
    pub(super) fn report(mut self, facts: Option<AuditFacts>) -> Report {
        self.settle_all();
        if let Some(facts) = facts {
            self.check_facts(facts);
        }
        self.report.levels = self.totals.0;
        self.report.against = self.against.take().map(Comparison::finish);
        self.report.count_problems();
        self.report
    }

    pub(super) fn drifts(&self) -> &[Drift] {
        &self.report.drifts
    }

    /// Counts a level not acknowledged on the stock topic, written at `at`, once.
    fn unpublished(&mut self, key: &LevelKey, at: DateTime<Utc>) {
        if !self.unpublished.insert(key.clone()) {
            return;
        }
        self.report.unpublished.levels += 1;
        if at < self.now - self.tolerance.grace {
            self.report.unpublished.overdue += 1;
            if self.report.unpublished.overdue_levels.len() < OVERDUE_NAMED_MAX {
                self.report.unpublished.overdue_levels.push(level_name(key));
            }
        }
    }

    fn check_facts(&mut self, facts: AuditFacts) {
        // The ledger's levels whose publication its batch still owes.
        for (key, at) in &facts.owed {
            self.unpublished(key, *at);
        }
        let mut reserved = std::mem::take(&mut self.reserved);
        for (key, held) in facts.held {
            let units = reserved.remove(&key).unwrap_or(0);
            if units != held {
                self.report.reserved.push(ReservedDrift { level: level_name(&key), reserved: units, held });
            }
        }
        for (key, units) in reserved {
            self.report.reserved.push(ReservedDrift { level: level_name(&key), reserved: units, held: 0 });
        }
        self.report.reserved.sort_by(|a, b| a.level.cmp(&b.level));
        let age = facts.outbox_oldest.map(|oldest| (self.now - oldest).num_seconds().max(0));
        self.report.outbox = Some(OutboxCheck {
            records: facts.outbox_records,
            oldest_age_s: age,
            stuck: age.is_some_and(|age| age > self.tolerance.grace.num_seconds()),
        });
    }
}

impl AuditReader for Checker<'_> {
    fn counted(&mut self, levels: u64, movements: u64) {
        self.totals = (levels, movements);
        self.progress.start("levels", Some(levels));
    }

    fn level(&mut self, audited: AuditedLevel) {
        self.step();
        let level = &audited.level;
        let key = (level.sku.clone(), level.location.clone());
        if audited.published_version < level.version {
            self.unpublished(&key, level.updated_at);
        }
        if level.reserved != 0 {
            self.reserved.insert(key.clone(), level.reserved);
        }
        if let Some(against) = &mut self.against {
            against.stored(&key, level.on_hand);
        }
        self.found.insert(key, audited);
    }

    fn movement(&mut self, movement: Movement) {
        if !self.movements_started {
            self.movements_started = true;
            self.progress.advance(self.unreported_steps);
            self.unreported_steps = 0;
            self.progress.start("movements", Some(self.totals.1));
        }
        self.step();
        self.report.movements += 1;
        if let Some(done) = self.folds.push(&movement) {
            let found = self.found.remove(&done.key);
            self.settle(done, found);
        }
    }
}

/// The drift of a level, when its stored ledger columns are not what its movements make.
/// `last_event_id` is not compared: which of two movements of one transaction and one
/// partition offset came last is not recorded in every case (onhand dev's tests).
fn compare(done: &Recomputed, found: Option<&AuditedLevel>) -> Option<Drift> {
    let expected = &done.state;
    let mut differs = Vec::new();
    match found.map(AuditedLevel::state) {
        None => differs.push("missing"),
        Some(stored) => {
            if stored.on_hand != expected.on_hand {
                differs.push("on_hand");
            }
            if stored.last_count != expected.last_count {
                differs.push("last_count");
            }
            if stored.last_movement_at != expected.last_movement_at {
                differs.push("last_movement_at");
            }
        }
    }
    if differs.is_empty() {
        return None;
    }
    Some(Drift {
        level: level_name(&done.key),
        expected: expected.on_hand,
        found: found.map(|f| f.level.on_hand),
        differs,
        source: done.source.clone(),
        rewrite: LevelRewrite {
            key: done.key.clone(),
            state: expected.clone(),
            version: found.map(|f| f.level.version),
        },
    })
}

/// The most rows an outside snapshot may have.
pub const SNAPSHOT_ROWS_MAX: usize = 5_000_000;

/// An outside system's stock (an ERP or WMS export, Shopify's levels): one quantity per
/// level, as read from CSV `sku,location,quantity`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub name: String,
    pub quantities: BTreeMap<LevelKey, i64>,
}

/// A row of a snapshot that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {message}")]
pub struct SnapshotError {
    pub file: String,
    /// 1 for the first line.
    pub line: u64,
    pub message: String,
}

impl Snapshot {
    /// Reads CSV `sku,location,quantity`, with or without that header line; `name` (the
    /// file's) is in every error, with the line.
    pub fn read(name: &str, input: impl Read) -> Result<Snapshot, SnapshotError> {
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .trim(csv::Trim::All)
            .comment(Some(b'#'))
            .from_reader(input);
        let mut quantities = BTreeMap::new();
        let mut lines: HashMap<LevelKey, u64> = HashMap::new();
        for (i, record) in reader.records().enumerate() {
            let error = |line: u64, message: String| SnapshotError { file: name.to_string(), line, message };
            let record = record.map_err(|e| {
                let line = e.position().map_or(0, |p| p.line());
                error(line, format!("not CSV: {e}"))
            })?;
            let line = record.position().map_or(i as u64 + 1, |p| p.line());
            let fields: Vec<&str> = record.iter().collect();
            if i == 0 && fields.iter().map(|f| f.to_ascii_lowercase()).eq(["sku", "location", "quantity"]) {
                continue;
            }
            let (key, quantity) = row(&fields).map_err(|message| error(line, message))?;
            if let Some(first) = lines.insert(key.clone(), line) {
                return Err(error(line, format!("{} is on line {first} already", level_name(&key))));
            }
            if quantities.len() == SNAPSHOT_ROWS_MAX {
                return Err(error(line, format!("more than {SNAPSHOT_ROWS_MAX} rows: split the file")));
            }
            quantities.insert(key, quantity);
        }
        Ok(Snapshot { name: name.to_string(), quantities })
    }
}

fn row(fields: &[&str]) -> Result<(LevelKey, i64), String> {
    let [sku, location, quantity] = fields else {
        return Err(format!("expected 3 fields (sku,location,quantity), found {}", fields.len()));
    };
    let sku = Sku::parse(*sku).map_err(|e| e.message)?;
    let location = LocationId::parse(*location).map_err(|e| e.message)?;
    let quantity = quantity.parse::<i64>().map_err(|_| format!("quantity {quantity:?} is not a whole number"))?;
    Ok(((sku, location), quantity))
}

/// The levels compared with an outside snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Against {
    pub file: String,
    /// Levels in the file.
    pub rows: u64,
    pub matching: u64,
    /// Every level whose quantities differ, by name.
    pub differences: Vec<Difference>,
    /// The differences by the source that last moved each level (`none`: no movement).
    pub by_source: BTreeMap<String, Group>,
    /// The differences by how large they are, in [`SIZE_BUCKETS`] order.
    pub by_size: Vec<Bucket>,
    /// Levels onhand holds stock at that the file does not name.
    pub not_in_file: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Difference {
    pub level: String,
    /// on_hand as onhand has it (0 for a level it does not know).
    pub onhand: i64,
    /// The quantity in the file.
    pub outside: i64,
    /// `onhand - outside`.
    pub difference: i64,
    pub source: String,
    pub size: &'static str,
}

/// How many levels differ, and by how many units in all (their absolute differences).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Group {
    pub levels: u64,
    pub units: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Bucket {
    pub size: &'static str,
    pub levels: u64,
    pub units: u64,
}

/// The sizes of a difference, by its absolute value: (name, largest).
pub const SIZE_BUCKETS: [(&str, u64); 5] = [("1", 1), ("2-5", 5), ("6-20", 20), ("21-100", 100), ("101+", u64::MAX)];

fn size_of(difference: u64) -> &'static str {
    SIZE_BUCKETS.iter().find(|(_, largest)| difference <= *largest).map_or("101+", |(name, _)| name)
}

/// A snapshot being compared: the stored on_hand and the last source of each level it
/// names, gathered as the audit streams by.
struct Comparison {
    snapshot: Snapshot,
    onhand: HashMap<LevelKey, i64>,
    sources: HashMap<LevelKey, String>,
    not_in_file: u64,
}

impl Comparison {
    fn new(snapshot: Snapshot) -> Self {
        Comparison { snapshot, onhand: HashMap::new(), sources: HashMap::new(), not_in_file: 0 }
    }

    fn stored(&mut self, key: &LevelKey, on_hand: i64) {
        if self.snapshot.quantities.contains_key(key) {
            self.onhand.insert(key.clone(), on_hand);
        } else if on_hand != 0 {
            self.not_in_file += 1;
        }
    }

    fn source(&mut self, key: &LevelKey, source: Option<&str>) {
        if let (true, Some(source)) = (self.snapshot.quantities.contains_key(key), source) {
            self.sources.insert(key.clone(), source.to_string());
        }
    }

    fn finish(self) -> Against {
        let mut against = Against {
            file: self.snapshot.name.clone(),
            rows: self.snapshot.quantities.len() as u64,
            not_in_file: self.not_in_file,
            ..Against::default()
        };
        let mut by_size: BTreeMap<&str, Group> = BTreeMap::new();
        for (key, &outside) in &self.snapshot.quantities {
            let onhand = self.onhand.get(key).copied().unwrap_or(0);
            if onhand == outside {
                against.matching += 1;
                continue;
            }
            let difference = onhand.saturating_sub(outside);
            let units = difference.unsigned_abs();
            let source = self.sources.get(key).cloned().unwrap_or_else(|| "none".to_string());
            let size = size_of(units);
            for group in [against.by_source.entry(source.clone()).or_default(), by_size.entry(size).or_default()] {
                group.levels += 1;
                group.units = group.units.saturating_add(units);
            }
            against.differences.push(Difference { level: level_name(key), onhand, outside, difference, source, size });
        }
        against.by_size = SIZE_BUCKETS
            .iter()
            .filter_map(|(size, _)| by_size.get(size).map(|g| Bucket { size, levels: g.levels, units: g.units }))
            .collect();
        against
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> Result<Snapshot, SnapshotError> {
        Snapshot::read("erp.csv", text.as_bytes())
    }

    #[test]
    fn a_snapshot_is_read_with_or_without_its_header() {
        let with = read("sku,location,quantity\nSKU-1,s1,5\nSKU-2, s2 ,-1\n").unwrap();
        let without = read("SKU-1,s1,5\nSKU-2,s2,-1\n").unwrap();
        assert_eq!(with.quantities, without.quantities);
        assert_eq!(with.quantities.len(), 2);
    }

    #[test]
    fn a_bad_row_is_refused_with_its_line() {
        let cases = [
            (
                "sku,location,quantity\nSKU-1,s1,5\nSKU-2,s2,five\n",
                "erp.csv:3: quantity \"five\" is not a whole number",
            ),
            ("SKU-1,s1\n", "erp.csv:1: expected 3 fields (sku,location,quantity), found 2"),
            ("SKU-1,s1,1\nSKU-1,s1,2\n", "erp.csv:2: SKU-1@s1 is on line 1 already"),
            ("SKU-1,s1,1\nSKU 1,s1,2\n", "erp.csv:2: "),
        ];
        for (text, message) in cases {
            let error = read(text).unwrap_err().to_string();
            assert!(error.starts_with(message), "{error} should start with {message}");
        }
    }

    #[test]
    fn a_level_is_unpublished_once_whether_by_its_version_or_owed() {
        use crate::{
            ops::Silent,
            testing::{at, stock_level},
        };
        let tolerance = Tolerance { grace: chrono::Duration::seconds(60), lag_max: 0 };
        let mut checker = Checker::new(&Silent, None, at(600), tolerance);
        checker.counted(3, 0);
        let audited = |location, published_version| AuditedLevel {
            level: stock_level(location, 1, 2),
            last_count: None,
            published_version,
        };
        // s1 unpublished by its version, s2 and s3 owed by the ledger (s1 too), s3 recently.
        checker.level(audited("s1", 1));
        checker.level(audited("s2", 2));
        checker.level(audited("s3", 2));
        let key = |location| (Sku::parse("SKU-1").unwrap(), LocationId::parse(location).unwrap());
        let owed = vec![(key("s1"), at(0)), (key("s2"), at(0)), (key("s3"), at(590))];
        let report = checker.report(Some(AuditFacts { owed, ..AuditFacts::default() }));
        assert_eq!((report.unpublished.levels, report.unpublished.overdue), (3, 2));
        assert_eq!(report.unpublished.overdue_levels, ["SKU-1@s1", "SKU-1@s2"]);
    }

    #[test]
    fn differences_are_grouped_by_source_and_size() {
        let key = |sku: &str| (Sku::parse(sku).unwrap(), LocationId::parse("s1").unwrap());
        let snapshot = read("A,s1,10\nB,s1,10\nC,s1,10\nD,s1,3\n").unwrap();
        let mut comparison = Comparison::new(snapshot);
        for (sku, on_hand, source) in [("A", 10, "pos:s1"), ("B", 9, "pos:s1"), ("C", 40, "erp:main"), ("E", 2, "x:y")]
        {
            comparison.stored(&key(sku), on_hand);
            comparison.source(&key(sku), Some(source));
        }
        let against = comparison.finish();
        assert_eq!((against.rows, against.matching, against.not_in_file), (4, 1, 1));
        let found: Vec<(&str, i64, &str, &str)> =
            against.differences.iter().map(|d| (d.level.as_str(), d.difference, d.source.as_str(), d.size)).collect();
        assert_eq!(
            found,
            [("B@s1", -1, "pos:s1", "1"), ("C@s1", 30, "erp:main", "21-100"), ("D@s1", -3, "none", "2-5")]
        );
        assert_eq!(against.by_source["pos:s1"], Group { levels: 1, units: 1 });
        let sizes: Vec<&str> = against.by_size.iter().map(|b| b.size).collect();
        assert_eq!(sizes, ["1", "2-5", "21-100"]);
    }
}
