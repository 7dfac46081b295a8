//! The level of one sku@location over time, for charts: the ledger's rules
//! (`ledger::rules`, the count rule included) applied to the level's movements in the order
//! they occurred, which the rules make equal to any order they arrived in. A point holds
//! on_hand at the end of its step, so the last point of a window that reaches past the
//! newest movement is the level the ledger holds.
//!
//! The level just before a time `t` is the last count that occurred before `t` plus the
//! deltas that occurred after that count and before `t` (a delta at the count's own
//! instant is superseded by it), or the sum of every delta before `t` when the level was
//! never counted. The database finds that count through an index and sums from it
//! ([`Start`]); the movements inside the window are then folded here ([`chart`]).

use chrono::{DateTime, Duration, Utc};

use crate::{event::EventId, ledger::rules::CountMark};

/// The most points one history answers: a chart's width, and a bound on the work.
pub const POINTS_MAX: i64 = 1000;

/// What one movement does to its level, as the `movements` table keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Adds to on_hand (negative for a sale); 0 for a reservation event.
    Delta(i64),
    /// Sets on_hand to the units counted.
    Count(i64),
}

/// One recorded movement of the level.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LevelMovement {
    pub occurred_at: DateTime<Utc>,
    pub event_id: EventId,
    pub change: Change,
}

/// The level just before a window starts, as the database computes it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Start {
    /// The last count before the window, with the units it counted.
    pub count: Option<(CountMark, i64)>,
    /// The sum of the deltas after that count (of every delta, without one) and before
    /// the window. Wide: a sum of any number of deltas.
    pub deltas: i128,
}

/// The steps of a history: from `since`, `points` steps of `step`, the last one ending at
/// `until` at the latest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub since: DateTime<Utc>,
    pub until: DateTime<Utc>,
    pub step: Duration,
}

/// Why a window cannot be charted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    #[error("since must be before until")]
    Empty,
    #[error("step must be at least one second")]
    StepTooShort,
    #[error("{points} steps between since and until, at most {POINTS_MAX} are answered: ask a longer step or a shorter window")]
    TooManyPoints { points: i64 },
}

impl Window {
    pub fn new(since: DateTime<Utc>, until: DateTime<Utc>, step: Duration) -> Result<Window, WindowError> {
        if since >= until {
            return Err(WindowError::Empty);
        }
        if step < Duration::seconds(1) {
            return Err(WindowError::StepTooShort);
        }
        let window = Window { since, until, step };
        match window.points() {
            points if points > POINTS_MAX => Err(WindowError::TooManyPoints { points }),
            _ => Ok(window),
        }
    }

    /// How many steps, the last one cut short at `until`. Computed in whole seconds and
    /// microseconds apart so that no window overflows.
    pub fn points(&self) -> i64 {
        let span = (self.until - self.since).num_microseconds().unwrap_or(i64::MAX);
        let step = self.step.num_microseconds().unwrap_or(i64::MAX).max(1);
        span / step + i64::from(span % step != 0)
    }

    /// Where step `i` ends.
    fn end(&self, i: i64) -> DateTime<Utc> {
        let end = i32::try_from(i + 1)
            .ok()
            .and_then(|n| self.step.checked_mul(n))
            .and_then(|d| self.since.checked_add_signed(d));
        end.map_or(self.until, |end| end.min(self.until))
    }
}

/// One step of a history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Point {
    /// The end of the step (exclusive): the level holds every movement that occurred
    /// before it.
    pub at: DateTime<Utc>,
    pub on_hand: i64,
    /// The movements that occurred in the step, superseded ones and reservation events
    /// included.
    pub movements: u64,
}

/// The level as the fold goes: the ledger's `LevelState`, wide.
#[derive(Debug, Clone)]
struct Level {
    on_hand: i128,
    last_count: Option<CountMark>,
}

impl Start {
    /// on_hand just before the window.
    pub fn on_hand(&self) -> i64 {
        Level::from_start(self).on_hand()
    }
}

impl Level {
    fn from_start(start: &Start) -> Level {
        match &start.count {
            Some((mark, counted)) => {
                Level { on_hand: i128::from(*counted) + start.deltas, last_count: Some(mark.clone()) }
            }
            None => Level { on_hand: start.deltas, last_count: None },
        }
    }

    /// The ledger's rule for one more movement, in occurred order: a delta at or before
    /// the count on_hand is based on is superseded; a newer count sets on_hand.
    fn apply(&mut self, m: &LevelMovement) {
        match (m.change, &self.last_count) {
            (Change::Delta(_), Some(count)) if m.occurred_at <= count.at => {}
            (Change::Count(_), Some(count)) if (m.occurred_at, &m.event_id) <= (count.at, &count.event_id) => {}
            (Change::Delta(delta), _) => self.on_hand += i128::from(delta),
            (Change::Count(counted), _) => {
                self.on_hand = i128::from(counted);
                self.last_count = Some(CountMark { at: m.occurred_at, event_id: m.event_id.clone() });
            }
        }
    }

    /// on_hand as the API shows it. The ledger keeps every level it writes in range;
    /// a state in between, in occurred order, could leave it only with hostile data.
    fn on_hand(&self) -> i64 {
        i64::try_from(self.on_hand).unwrap_or(if self.on_hand < 0 { i64::MIN } else { i64::MAX })
    }
}

/// The level at the end of each step of `window`, from the level before it and the
/// movements that occurred in it, in any order.
pub fn chart(window: &Window, start: &Start, movements: &mut [LevelMovement]) -> Vec<Point> {
    movements.sort_by(|a, b| (a.occurred_at, &a.event_id).cmp(&(b.occurred_at, &b.event_id)));
    let mut level = Level::from_start(start);
    let mut next = movements.iter().skip_while(|m| m.occurred_at < window.since).peekable();
    (0..window.points())
        .map(|i| {
            let at = window.end(i);
            let mut count = 0;
            while let Some(m) = next.next_if(|m| m.occurred_at < at) {
                level.apply(m);
                count += 1;
            }
            Point { at, on_hand: level.on_hand(), movements: count }
        })
        .collect()
}

/// The level before `at`, folding every movement before it: what the database's shortcut
/// ([`Start`]) must equal.
#[cfg(test)]
pub fn level_before(at: DateTime<Utc>, movements: &mut [LevelMovement]) -> i64 {
    movements.sort_by(|a, b| (a.occurred_at, &a.event_id).cmp(&(b.occurred_at, &b.event_id)));
    let mut level = Level::from_start(&Start::default());
    movements.iter().take_while(|m| m.occurred_at < at).for_each(|m| level.apply(m));
    level.on_hand()
}

#[cfg(test)]
mod tests;
