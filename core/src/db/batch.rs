//! The one algorithm that applies a ledger batch ([`apply_batch`]), over the steps of a
//! [`LedgerTx`] that each database writes in its own SQL.

use std::collections::{BTreeMap, HashMap, HashSet};

use async_trait::async_trait;
use chrono::{DateTime, SubsecRound, Utc};

use super::{
    corrupt, Applied, Batch, DbError, Envelope, PartitionOffset, Published, CONFLICT_ROUNDS_MAX, LEVEL_OUT_OF_RANGE,
};
use crate::{
    event::{EventId, LocationId, Movement, MovementKind, Sku, SourceSystem, StockLevel},
    freshness,
    ledger::rules::{plan_key, KeyPlan, LevelKey, LevelState},
    reservation,
};

/// The columns of a level that writers other than the ledger own: units reserved by
/// checkouts, and the stock policy. The ledger reads them only to publish whole levels.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Allocation {
    pub(super) reserved: i64,
    pub(super) safety_stock: i64,
    pub(super) reorder_point: Option<i64>,
}

/// A level as stored, with the version its next write must compare against.
#[derive(Debug, Clone)]
pub(super) struct StoredLevel {
    pub(super) state: LevelState,
    pub(super) allocation: Allocation,
    pub(super) version: i64,
}

/// A compare-and-set write: `expected_version` `None` inserts a row that must not exist yet.
#[derive(Debug, Clone)]
pub(super) struct LevelWrite {
    pub(super) key: LevelKey,
    pub(super) expected_version: Option<i64>,
    pub(super) state: LevelState,
    /// As it will be written: `reserved` already less `release`.
    pub(super) allocation: Allocation,
    /// Reserved units that committed sales of this batch release.
    pub(super) release: i64,
}

impl LevelWrite {
    /// The level as written, with the newest recorded of `movements` (those of this write)
    /// as where its last change came from.
    fn level(&self, updated_at: DateTime<Utc>, movements: &[&Movement]) -> StockLevel {
        let newest = movements.iter().max_by_key(|m| m.recorded_at);
        StockLevel {
            sku: self.key.0.clone(),
            location: self.key.1.clone(),
            on_hand: self.state.on_hand,
            reserved: self.allocation.reserved,
            safety_stock: self.allocation.safety_stock,
            reorder_point: self.allocation.reorder_point,
            version: self.expected_version.map_or(1, |v| v + 1),
            last_movement_at: self.state.last_movement_at,
            last_event_id: self.state.last_event_id.clone(),
            last_count_at: self.state.last_count.as_ref().map(|c| c.at),
            updated_at,
            last_recorded_at: newest.map(|m| m.recorded_at),
            last_source: newest.map(|m| m.source.system),
        }
    }
}

/// How a batch's movements go into `movements`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Recording {
    /// All of them, as if none was recorded before: PostgreSQL COPYs them, and a known
    /// event_id fails the transaction ([`DbError::is_recorded_before`]), which then runs
    /// again with `SkipRecorded`. A re-delivery is the rare case; the common one pays for
    /// no duplicate check.
    AllNew,
    /// Each one unless its event_id is recorded.
    SkipRecorded,
}

/// The steps of a ledger transaction, in the order [`apply_batch`] takes them, each one
/// statement or a few in each database's SQL (set-based in PostgreSQL); the algorithm that
/// strings them together is shared by both.
#[async_trait]
pub(super) trait LedgerTx: Send {
    /// Inserts the movements whose event_id is new and returns those ids (with
    /// [`Recording::AllNew`], all of them or an error).
    async fn insert_movements(&mut self, movements: &[&Envelope]) -> Result<HashSet<EventId>, DbError>;
    /// Settles the lines of committed reservations whose sales are in `sales` (each once)
    /// and answers the units each level releases.
    async fn settle_reservation_lines(
        &mut self,
        sales: &[(&str, i32, &Movement)],
        now: DateTime<Utc>,
    ) -> Result<HashMap<LevelKey, i64>, DbError>;
    async fn load_levels(&mut self, keys: &[&LevelKey]) -> Result<HashMap<LevelKey, StoredLevel>, DbError>;
    /// For each count, the sum of the deltas recorded for its level that occurred after it,
    /// this batch's included. Wide: a sum of any number of deltas.
    async fn recorded_later(&mut self, counts: &[&Movement]) -> Result<HashMap<EventId, i128>, DbError>;
    /// Writes the levels whose version still matches and returns the keys written.
    async fn write_levels(
        &mut self,
        writes: &[LevelWrite],
        updated_at: DateTime<Utc>,
    ) -> Result<HashSet<LevelKey>, DbError>;
    /// Writes what the batch records after its levels (see [`Closing`]), and answers the
    /// id of the publication it owes, if it wrote levels.
    async fn close(&mut self, closing: &Closing<'_>) -> Result<Option<i64>, DbError>;
}

/// What a batch writes after its levels: one step, so that PostgreSQL takes it in one
/// statement.
pub(super) struct Closing<'a> {
    /// Movements a count made irrelevant: their effect is `superseded`.
    pub(super) superseded: &'a [EventId],
    /// Reservation events, which change no level: their effect is `recorded`.
    pub(super) recorded: &'a [EventId],
    /// Publications of levels found unpublished (`published_version < version`); a
    /// level's published version never moves backwards.
    pub(super) published: &'a [Published],
    /// Publications owed by earlier batches and now acknowledged: forgotten.
    pub(super) settled: &'a [i64],
    /// The levels this batch wrote, as JSON (`[["SKU", "location"], ...]`), kept in
    /// `ledger_publications` until their publication is acknowledged; `None` when it
    /// wrote none.
    pub(super) owed: Option<String>,
    pub(super) group_id: &'a str,
    pub(super) topic: &'a str,
    pub(super) offsets: &'a [PartitionOffset],
    /// For each source, the newest time a movement of it was recorded that the batch
    /// heard (`source_signals`); an older time than the one kept changes nothing, so that
    /// batches may commit in any order.
    pub(super) heard: &'a [(String, DateTime<Utc>)],
    pub(super) updated_at: DateTime<Utc>,
}

/// Applies a batch with the steps of `tx`: the one algorithm of both backends. The caller
/// commits the transaction the steps run in.
pub(super) async fn apply_batch(mut tx: Box<dyn LedgerTx + '_>, batch: &Batch) -> Result<Applied, DbError> {
    let mut outcome = Applied::default();

    // A re-delivery can put the same event twice in one batch: keep the first.
    let mut seen = HashSet::with_capacity(batch.movements.len());
    let mut unique: Vec<&Envelope> = Vec::with_capacity(batch.movements.len());
    for envelope in &batch.movements {
        if seen.insert(&envelope.movement.event_id) {
            unique.push(envelope);
        } else {
            outcome.count_duplicate(&envelope.movement);
        }
    }

    // Inserting in event_id order means two transactions that share events wait for each
    // other in the same order, instead of deadlocking.
    let mut by_id = unique.clone();
    by_id.sort_by(|a, b| a.movement.event_id.cmp(&b.movement.event_id));
    let new_ids = if by_id.is_empty() { HashSet::new() } else { tx.insert_movements(&by_id).await? };
    for envelope in unique.iter().filter(|e| !new_ids.contains(&e.movement.event_id)) {
        outcome.count_duplicate(&envelope.movement);
    }

    let new = NewMovements::sort(&unique, &new_ids);
    outcome.recorded = new.recorded.len() as u64;
    let updated_at = Utc::now().trunc_subsecs(6);
    // A committed reservation's units are released by the same write that applies its
    // sale, so what a channel may sell never jumps.
    let released =
        if new.sales.is_empty() { HashMap::new() } else { tx.settle_reservation_lines(&new.sales, updated_at).await? };
    outcome.released = released.values().sum();
    let superseded = write_in_rounds(&mut *tx, &new.by_key, &released, updated_at, &mut outcome).await?;

    let owed = (!outcome.levels.is_empty()).then(|| owed_levels(&outcome.levels));
    let closing = Closing {
        superseded: &superseded,
        recorded: &new.recorded,
        published: &newest_publications(&batch.published),
        settled: &batch.settled,
        owed,
        group_id: &batch.group_id,
        topic: &batch.topic,
        offsets: &batch.offsets,
        heard: &heard(&unique),
        updated_at,
    };
    outcome.owed.extend(tx.close(&closing).await?);
    Ok(outcome)
}

/// The newest `recorded_at` of the batch's movements from each source, by the name
/// `/v1/sources` gives it: a duplicate too says its source is alive.
fn heard(movements: &[&Envelope]) -> Vec<(String, DateTime<Utc>)> {
    let mut newest: BTreeMap<(SourceSystem, &str), DateTime<Utc>> = BTreeMap::new();
    for m in movements.iter().map(|e| &e.movement) {
        // A store is one source whoever of its till or agent sent; any other system is one.
        let key = match m.source.system {
            SourceSystem::Pos | SourceSystem::StoreAgent => (SourceSystem::Pos, m.source.instance.as_str()),
            system => (system, ""),
        };
        let at = newest.entry(key).or_insert(m.recorded_at);
        *at = (*at).max(m.recorded_at);
    }
    newest.into_iter().map(|((system, instance), at)| (freshness::name_of(system, instance), at)).collect()
}

impl Applied {
    /// Counts `movement` as a duplicate skipped, by its source.
    fn count_duplicate(&mut self, movement: &Movement) {
        self.duplicates += 1;
        *self.duplicates_by_source.entry(movement.source.system).or_default() += 1;
    }
}

/// A batch's new movements, by what they do.
struct NewMovements<'a> {
    /// The movements of each level they change, in arrival order.
    by_key: BTreeMap<LevelKey, Vec<&'a Movement>>,
    /// Reservation events: recorded for the audit trail, they change no level.
    recorded: Vec<EventId>,
    /// Sales that may settle a line of a committed reservation: (reservation, line, sale).
    sales: Vec<(&'a str, i32, &'a Movement)>,
}

impl<'a> NewMovements<'a> {
    fn sort(unique: &[&'a Envelope], new_ids: &HashSet<EventId>) -> Self {
        let mut new = NewMovements { by_key: BTreeMap::new(), recorded: Vec::new(), sales: Vec::new() };
        for envelope in unique.iter().filter(|e| new_ids.contains(&e.movement.event_id)) {
            let m = &envelope.movement;
            if m.kind.is_reservation_event() {
                new.recorded.push(m.event_id.clone());
                continue;
            }
            if let (MovementKind::Sale, Some((id, line))) = (m.kind, reservation::settled_line(&m.event_id)) {
                new.sales.push((id, line, m));
            }
            new.by_key.entry((m.sku.clone(), m.location.clone())).or_default().push(m);
        }
        new
    }
}

/// Writes the levels the movements of `by_key` change, each with a compare-and-set on its
/// version; a level another writer changed first is read and planned again, for at most
/// [`CONFLICT_ROUNDS_MAX`] rounds. Answers the movements a count superseded.
async fn write_in_rounds(
    tx: &mut (dyn LedgerTx + '_),
    by_key: &BTreeMap<LevelKey, Vec<&Movement>>,
    released: &HashMap<LevelKey, i64>,
    updated_at: DateTime<Utc>,
    outcome: &mut Applied,
) -> Result<Vec<EventId>, DbError> {
    let mut pending: Vec<&LevelKey> = by_key.keys().collect();
    let mut superseded = Vec::new();
    for round in 0.. {
        if pending.is_empty() {
            break;
        }
        if round == CONFLICT_ROUNDS_MAX {
            return Err(DbError::Contended);
        }
        let stored = tx.load_levels(&pending).await?;
        let counts: Vec<&Movement> =
            pending.iter().flat_map(|k| by_key[*k].iter().copied()).filter(|m| m.delta().is_none()).collect();
        let later = if counts.is_empty() { HashMap::new() } else { recorded_before(tx, &counts, by_key).await? };
        let (mut plans, writes) = plan_writes(&pending, &stored, by_key, &later, released)?;
        let written = tx.write_levels(&writes, updated_at).await?;
        let planned: HashSet<&LevelKey> = writes.iter().map(|w| &w.key).collect();

        let mut conflicts = Vec::new();
        for key in pending {
            let plan = plans.remove(key).expect("every pending key has a plan");
            if planned.contains(key) && !written.contains(key) {
                if let Some(newest) = by_key[key].iter().max_by_key(|m| m.recorded_at) {
                    *outcome.conflicts_by_source.entry(newest.source.system).or_default() += 1;
                }
                conflicts.push(key);
                continue;
            }
            outcome.applied += plan.applied;
            outcome.superseded += plan.superseded.len() as u64;
            superseded.extend(plan.superseded);
        }
        outcome
            .levels
            .extend(writes.iter().filter(|w| written.contains(&w.key)).map(|w| w.level(updated_at, &by_key[&w.key])));
        outcome.conflicts_retried += conflicts.len() as u64;
        pending = conflicts;
    }
    Ok(superseded)
}

/// The levels a publication owes, as `ledger_publications.levels` keeps them:
/// `[["SKU", "location"], ...]`.
fn owed_levels(levels: &[StockLevel]) -> String {
    let keys: Vec<(&str, &str)> = levels.iter().map(|l| (l.sku.as_str(), l.location.as_str())).collect();
    serde_json::to_string(&keys).expect("keys always serialize")
}

/// The keys of `ledger_publications.levels`, as [`owed_levels`] wrote them.
pub(super) fn owed_keys(levels: &str) -> Result<Vec<LevelKey>, DbError> {
    let keys: Vec<(String, String)> = serde_json::from_str(levels).map_err(corrupt)?;
    keys.into_iter()
        .map(|(sku, location)| Ok((Sku::parse(sku).map_err(corrupt)?, LocationId::parse(location).map_err(corrupt)?)))
        .collect()
}

/// For each count, the sum of the deltas recorded before this batch that occurred after
/// it: the database's sum less this batch's own new movements, inserted above (plan_key
/// adds those that came before the count itself). A re-delivered movement is not in
/// `by_key` and was recorded before: it counts.
async fn recorded_before(
    tx: &mut (dyn LedgerTx + '_),
    counts: &[&Movement],
    by_key: &BTreeMap<LevelKey, Vec<&Movement>>,
) -> Result<HashMap<EventId, i128>, DbError> {
    let mut later = tx.recorded_later(counts).await?;
    for count in counts {
        let own: i128 = by_key[&(count.sku.clone(), count.location.clone())]
            .iter()
            .filter(|m| m.occurred_at > count.occurred_at)
            .filter_map(|m| m.delta())
            .map(i128::from)
            .sum();
        if let Some(sum) = later.get_mut(&count.event_id) {
            *sum = sum.saturating_sub(own);
        }
    }
    Ok(later)
}

/// The plan of each pending level, from its stored state, and the writes the plans need.
fn plan_writes<'k>(
    pending: &[&'k LevelKey],
    stored: &HashMap<LevelKey, StoredLevel>,
    by_key: &BTreeMap<LevelKey, Vec<&Movement>>,
    later: &HashMap<EventId, i128>,
    released: &HashMap<LevelKey, i64>,
) -> Result<(HashMap<&'k LevelKey, KeyPlan>, Vec<LevelWrite>), DbError> {
    let mut plans = HashMap::with_capacity(pending.len());
    let mut writes = Vec::new();
    for &key in pending {
        let prior = stored.get(key);
        let plan = plan_key(prior.map(|s| &s.state), &by_key[key], later).map_err(|e| DbError::Refused {
            event_id: e.event_id,
            code: LEVEL_OUT_OF_RANGE,
            reason: e.reason,
        })?;
        if let Some(write) = level_write(key, prior, &plan, released.get(key).copied().unwrap_or(0)) {
            writes.push(write);
        }
        plans.insert(key, plan);
    }
    Ok((plans, writes))
}

/// The write a level needs: its new state when movements applied, or its state as it was
/// when only reserved units are released (a sale a count superseded still settles its
/// reservation).
fn level_write(key: &LevelKey, prior: Option<&StoredLevel>, plan: &KeyPlan, release: i64) -> Option<LevelWrite> {
    let release = if prior.is_some() { release } else { 0 };
    let state = match (&plan.state, prior) {
        (Some(state), _) => state.clone(),
        (None, Some(prior)) if release > 0 => prior.state.clone(),
        (None, _) => return None,
    };
    let mut allocation = prior.map(|s| s.allocation).unwrap_or_default();
    allocation.reserved -= release;
    Some(LevelWrite { key: key.clone(), expected_version: prior.map(|s| s.version), state, allocation, release })
}

/// The newest acknowledged version of each level, by key: one statement that updates a
/// row from two source rows applies just one of them, maybe the older.
fn newest_publications(published: &[Published]) -> Vec<Published> {
    // In key order: two writers recording publications lock the rows in the same order.
    let mut newest: BTreeMap<(&Sku, &LocationId), i64> = BTreeMap::new();
    for p in published {
        let version = newest.entry((&p.sku, &p.location)).or_default();
        *version = (*version).max(p.version);
    }
    newest
        .into_iter()
        .map(|((sku, location), version)| Published { sku: sku.clone(), location: location.clone(), version })
        .collect()
}
