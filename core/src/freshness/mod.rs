//! How far behind each source is: the store agents number every movement of their store
//! (a per-store sequence), and the connectors report their health. The central service
//! keeps, per source, the highest sequence number up to which nothing is missing, what
//! the source last said it holds, and since when a gap has lasted. `GET /v1/sources`
//! answers these. The pure rules are here; the database keeps the state; `watch` keeps the
//! `onhand_source_*` metrics current.
//!
//! Apart from what a source says of itself, onhand keeps what it heard from it
//! ([`SourceSignals`]): the newest movement the ledger recorded from it, named by
//! [`source_name`], and the last error its connector met. A store that sends nothing is
//! then visible by the age of its last movement, whatever its heartbeats say.

pub mod watch;

use crate::{
    config::SourcesConfig,
    event::{Source, SourceSystem},
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// At most this many out-of-order ranges are remembered above the contiguous sequence; a
/// source that leaves more holes than that is reported by its gap, and its oldest ranges
/// are merged into one.
const RANGES_MAX: usize = 64;

/// What is known of one source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SourceState {
    /// `pos:store-012`, `erp`, `shopify`...
    pub source: String,
    /// Identifies one life of a source's numbering (a store agent's database): when it
    /// changes, the numbering started again and the counters are reset.
    pub epoch: String,
    /// Every sequence number up to this one has arrived.
    pub acked_seq: i64,
    /// The highest sequence number that arrived.
    pub max_seq: i64,
    /// Ranges that arrived above `acked_seq`, waiting for the hole below them.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub ranges: Vec<(i64, i64)>,
    /// The highest sequence number the source said it holds.
    pub head_seq: i64,
    /// When the oldest movement the source has not forwarded yet occurred, as it said.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oldest_pending_at: Option<DateTime<Utc>>,
    /// Since when numbers are missing below `max_seq`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gap_since: Option<DateTime<Utc>>,
    pub healthy: bool,
    /// Why the source is unhealthy, for people.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    pub last_heard_at: DateTime<Utc>,
}

/// What a source just told the central service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceUpdate {
    /// Movements `first..=last` of `epoch` were accepted onto Kafka.
    Received { epoch: String, first: i64, last: i64 },
    /// The source holds movements up to `head`, the oldest unforwarded one from `oldest_pending_at`.
    Heartbeat { epoch: String, head: i64, oldest_pending_at: Option<DateTime<Utc>> },
    /// A connector's own view of its health.
    Health { healthy: bool, detail: Option<String> },
}

impl SourceState {
    pub fn new(source: &str, now: DateTime<Utc>) -> SourceState {
        SourceState {
            source: source.to_string(),
            epoch: String::new(),
            acked_seq: 0,
            max_seq: 0,
            ranges: Vec::new(),
            head_seq: 0,
            oldest_pending_at: None,
            gap_since: None,
            healthy: true,
            detail: None,
            last_heard_at: now,
        }
    }

    /// The state after `update`, heard at `now`.
    pub fn apply(mut self, update: &SourceUpdate, now: DateTime<Utc>) -> SourceState {
        self.last_heard_at = now;
        match update {
            SourceUpdate::Received { epoch, first, last } => {
                self.enter_epoch(epoch);
                self.receive(*first, *last);
                self.head_seq = self.head_seq.max(self.max_seq);
            }
            SourceUpdate::Heartbeat { epoch, head, oldest_pending_at } => {
                self.enter_epoch(epoch);
                self.head_seq = (*head).max(self.max_seq);
                self.oldest_pending_at = *oldest_pending_at;
            }
            SourceUpdate::Health { healthy, detail } => {
                self.healthy = *healthy;
                self.detail = detail.clone();
            }
        }
        self.gap_since = match (self.max_seq > self.acked_seq, self.gap_since) {
            (true, Some(since)) => Some(since),
            (true, None) => Some(now),
            (false, _) => None,
        };
        self
    }

    /// A new epoch means the source's numbering started again: what was counted before
    /// says nothing about the new numbers.
    fn enter_epoch(&mut self, epoch: &str) {
        if self.epoch != epoch {
            let source = std::mem::take(&mut self.source);
            *self = SourceState { source, epoch: epoch.to_string(), ..SourceState::new("", self.last_heard_at) };
        }
    }

    fn receive(&mut self, first: i64, last: i64) {
        if last <= self.acked_seq || first > last {
            return; // sent again: already counted
        }
        self.max_seq = self.max_seq.max(last);
        self.ranges.push((first, last));
        self.ranges.sort_unstable();
        // Fold every range that now touches the contiguous part into it.
        while let Some(&(first, last)) = self.ranges.first() {
            if first > self.acked_seq.saturating_add(1) {
                break;
            }
            self.acked_seq = self.acked_seq.max(last);
            self.ranges.remove(0);
        }
        if self.ranges.len() > RANGES_MAX {
            let (first, _) = self.ranges[0];
            let (_, last) = self.ranges[1];
            self.ranges.splice(0..2, [(first, last)]);
        }
    }

    /// Movements the source holds that have not arrived.
    pub fn behind_movements(&self) -> i64 {
        self.head_seq.saturating_sub(self.acked_seq).max(0)
    }

    /// How old the oldest movement not arrived yet is, in seconds; 0 when none is missing.
    pub fn behind_seconds(&self, now: DateTime<Utc>) -> i64 {
        if self.behind_movements() == 0 {
            return 0;
        }
        let since = self.oldest_pending_at.or(self.gap_since).unwrap_or(self.last_heard_at);
        (now - since).num_seconds().max(0)
    }

    /// Whether numbers have been missing for longer than `gap_alert`.
    pub fn gap_alert(&self, now: DateTime<Utc>, gap_alert: chrono::Duration) -> bool {
        self.gap_since.is_some_and(|since| now - since > gap_alert)
    }
}

/// The name under which a movement's source is known in `GET /v1/sources`: a store by
/// itself (`pos:store-012`, whether its till or its store agent sent the movement), any
/// other system as one (`erp`, `shopify`, `wms`, `api`), as its connector reports its
/// health.
pub fn source_name(source: &Source) -> String {
    name_of(source.system, &source.instance)
}

/// [`source_name`] of a source of `system` whose instance is `instance`.
pub fn name_of(system: SourceSystem, instance: &str) -> String {
    match system {
        SourceSystem::Pos | SourceSystem::StoreAgent => format!("pos:{instance}"),
        system => system.as_str().to_string(),
    }
}

/// What onhand heard from a source, apart from what the source says of itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceSignals {
    /// As [`source_name`] names it.
    pub source: String,
    /// `recorded_at` of the newest movement the ledger recorded from it.
    pub last_movement_at: Option<DateTime<Utc>>,
    /// The last error its connector met, for people, and when; kept after it recovered.
    pub last_error: Option<String>,
    pub last_error_at: Option<DateTime<Utc>>,
}

/// A source as `GET /v1/sources` answers it: its state and the figures derived from it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SourceReport {
    #[serde(flatten)]
    pub state: SourceState,
    pub behind_movements: i64,
    pub behind_seconds: i64,
    /// Numbers have been missing for longer than `sources.gap_alert_s`.
    pub gap_alert: bool,
    /// `recorded_at` of the newest movement the ledger recorded from this source; null
    /// when none was ever recorded.
    pub last_movement_at: Option<DateTime<Utc>>,
    /// Seconds since `last_movement_at`: how long the source has been silent.
    pub last_movement_age_seconds: Option<i64>,
    /// The last error its connector reported, kept after it recovered.
    pub last_error: Option<String>,
    /// When the connector reported `last_error` (again every minute while it goes on).
    pub last_error_at: Option<DateTime<Utc>>,
}

impl SourceReport {
    pub fn new(
        state: SourceState,
        signals: Option<&SourceSignals>,
        now: DateTime<Utc>,
        config: &SourcesConfig,
    ) -> SourceReport {
        let gap_alert = state.gap_alert(now, chrono::Duration::seconds(config.gap_alert_s as i64));
        let last_movement_at = signals.and_then(|s| s.last_movement_at);
        SourceReport {
            behind_movements: state.behind_movements(),
            behind_seconds: state.behind_seconds(now),
            gap_alert,
            last_movement_at,
            last_movement_age_seconds: last_movement_at.map(|at| (now - at).num_seconds().max(0)),
            last_error: signals.and_then(|s| s.last_error.clone()),
            last_error_at: signals.and_then(|s| s.last_error_at),
            state,
        }
    }

    /// Every source, by name, from what the sources said (`states`) and what onhand heard
    /// (`signals`): a source that only sent movements (the API, a store without an agent)
    /// is listed too, heard when it last sent or failed.
    pub fn all(
        states: Vec<SourceState>,
        signals: Vec<SourceSignals>,
        now: DateTime<Utc>,
        config: &SourcesConfig,
    ) -> Vec<SourceReport> {
        let mut signals: std::collections::BTreeMap<String, SourceSignals> =
            signals.into_iter().map(|s| (s.source.clone(), s)).collect();
        let mut reports: Vec<SourceReport> = states
            .into_iter()
            .map(|state| {
                let heard = signals.remove(&state.source);
                SourceReport::new(state, heard.as_ref(), now, config)
            })
            .collect();
        for (name, heard) in signals {
            let Some(last_heard_at) = heard.last_movement_at.max(heard.last_error_at) else { continue };
            reports.push(SourceReport::new(SourceState::new(&name, last_heard_at), Some(&heard), now, config));
        }
        reports.sort_by(|a, b| a.state.source.cmp(&b.state.source));
        reports
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::at;

    fn received(first: i64, last: i64) -> SourceUpdate {
        SourceUpdate::Received { epoch: "e1".into(), first, last }
    }

    /// (updates in, (acked, max, gap?) out).
    #[test]
    fn the_contiguous_sequence_advances_only_over_what_arrived() {
        let cases: Vec<(Vec<SourceUpdate>, (i64, i64, bool))> = vec![
            (vec![received(1, 10)], (10, 10, false)),
            (vec![received(1, 10), received(11, 20)], (20, 20, false)),
            (vec![received(1, 10), received(5, 10)], (10, 10, false)),
            (vec![received(1, 10), received(21, 30)], (10, 30, true)),
            (vec![received(1, 10), received(21, 30), received(11, 20)], (30, 30, false)),
            (vec![received(3, 4)], (0, 4, true)),
            (vec![received(1, 5), SourceUpdate::Received { epoch: "e2".into(), first: 1, last: 2 }], (2, 2, false)),
        ];
        for (updates, (acked, max, gap)) in cases {
            let state = updates.iter().fold(SourceState::new("pos:s1", at(0)), |s, u| s.apply(u, at(1)));
            assert_eq!((state.acked_seq, state.max_seq, state.gap_since.is_some()), (acked, max, gap), "{updates:?}");
        }
    }

    #[test]
    fn lag_is_what_the_source_holds_and_has_not_sent() {
        let state = SourceState::new("pos:s1", at(0))
            .apply(&received(1, 10), at(1))
            .apply(&SourceUpdate::Heartbeat { epoch: "e1".into(), head: 25, oldest_pending_at: Some(at(5)) }, at(20));
        assert_eq!((state.behind_movements(), state.behind_seconds(at(65))), (15, 60));
        let caught_up = state.apply(&received(11, 25), at(70));
        assert_eq!((caught_up.behind_movements(), caught_up.behind_seconds(at(80))), (0, 0));
    }

    #[test]
    fn a_gap_is_flagged_once_it_lasts() {
        let state = SourceState::new("pos:s1", at(0)).apply(&received(1, 10), at(0)).apply(&received(20, 21), at(10));
        let alert_after = chrono::Duration::seconds(300);
        assert!(!state.gap_alert(at(300), alert_after));
        assert!(state.gap_alert(at(311), alert_after));
        assert!(!state.apply(&received(11, 19), at(320)).gap_alert(at(400), alert_after));
    }

    /// L3: sequence numbers and heads at the edges of i64 never overflow the arithmetic.
    #[test]
    fn extreme_sequence_numbers_do_not_overflow() {
        let heartbeat = |head| SourceUpdate::Heartbeat { epoch: "e1".into(), head, oldest_pending_at: None };
        let full = SourceState::new("pos:s1", at(0))
            .apply(&received(1, i64::MAX), at(1))
            .apply(&received(i64::MAX, i64::MAX), at(1))
            .apply(&heartbeat(i64::MIN), at(2));
        assert_eq!((full.acked_seq, full.head_seq, full.behind_movements()), (i64::MAX, i64::MAX, 0));
        let behind = SourceState::new("pos:s1", at(0))
            .apply(&received(i64::MIN, i64::MIN + 1), at(1))
            .apply(&received(1, 5), at(1))
            .apply(&heartbeat(i64::MAX), at(2));
        assert_eq!((behind.acked_seq, behind.behind_movements()), (5, i64::MAX - 5));
    }

    #[test]
    fn a_report_shows_what_was_heard_and_lists_sources_that_only_sent_movements() {
        let config = SourcesConfig::default();
        let heard = |source: &str, movement: Option<i64>, error: Option<&str>| SourceSignals {
            source: source.into(),
            last_movement_at: movement.map(at),
            last_error: error.map(str::to_string),
            last_error_at: error.map(|_| at(50)),
        };
        let states = vec![SourceState::new("erp", at(0)), SourceState::new("pos:s1", at(0))];
        let signals = vec![heard("api", Some(40), None), heard("erp", Some(10), Some("journal down"))];
        let reports = SourceReport::all(states, signals, at(100), &config);
        let seen: Vec<(&str, Option<i64>, Option<&str>)> = reports
            .iter()
            .map(|r| (r.state.source.as_str(), r.last_movement_age_seconds, r.last_error.as_deref()))
            .collect();
        assert_eq!(
            seen,
            vec![("api", Some(60), None), ("erp", Some(90), Some("journal down")), ("pos:s1", None, None)]
        );
        assert_eq!(reports[0].state.last_heard_at, at(40), "heard when it last sent");
    }

    #[test]
    fn a_store_is_one_source_whether_its_till_or_its_agent_sent() {
        let source = |system, instance: &str| Source { system, instance: instance.into(), reference: "r".into() };
        assert_eq!(source_name(&source(SourceSystem::Pos, "s1")), "pos:s1");
        assert_eq!(source_name(&source(SourceSystem::StoreAgent, "s1")), "pos:s1");
        assert_eq!(source_name(&source(SourceSystem::Erp, "erp-main")), "erp");
    }

    #[test]
    fn holes_are_bounded() {
        let state =
            (0..200).fold(SourceState::new("pos:s1", at(0)), |s, i| s.apply(&received(i * 3 + 2, i * 3 + 2), at(1)));
        assert!(state.ranges.len() <= RANGES_MAX);
        assert_eq!(state.acked_seq, 0);
    }
}
