//! Exponential backoff: the one way a retrying loop of onhand waits between attempts.
//!
//! A loop keeps a [`Backoff`], calls [`Backoff::fail`] after each failed attempt for the
//! pause before the next one, and [`Backoff::reset`] after a success. A loop that counts
//! its attempts itself asks [`Backoff::after`] instead. The pause doubles from `min` up to
//! `max`, with saturating arithmetic, so no count of failures can overflow it.

use std::time::Duration;

/// The pauses of a retrying loop: `min`, doubling, at most `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// Pauses from `min` doubling up to `max` (`max` is raised to `min` if below it).
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff { min, max: max.max(min), next: min }
    }

    /// The pause after one more failure; the next one doubles.
    pub fn fail(&mut self) -> Duration {
        let wait = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        wait
    }

    /// Starts over at `min`, after a success.
    pub fn reset(&mut self) {
        self.next = self.min;
    }

    /// Whether the loop has failed since its last success.
    pub fn is_failing(&self) -> bool {
        self.next != self.min
    }

    /// The pause after the `failures`-th failure in a row (1 for the first): `min`
    /// doubled `failures - 1` times, at most `max`; no pause before any failure.
    pub fn after(&self, failures: u32) -> Duration {
        if failures == 0 {
            return Duration::ZERO;
        }
        let doublings = (failures - 1).min(31);
        self.min.saturating_mul(1u32 << doublings).min(self.max)
    }

    /// The longest pause.
    pub fn max(&self) -> Duration {
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_up_to_the_maximum_and_start_over_after_a_success() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        let pauses: Vec<u128> = (0..4).map(|_| backoff.fail().as_millis()).collect();
        assert_eq!(pauses, [100, 200, 350, 350]);
        assert!(backoff.is_failing());
        backoff.reset();
        assert!(!backoff.is_failing());
        assert_eq!(backoff.fail(), Duration::from_millis(100));
    }

    #[test]
    fn counted_failures_give_the_same_pauses_and_never_overflow() {
        let backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(300));
        assert_eq!(backoff.after(0), Duration::ZERO);
        assert_eq!(backoff.after(1), Duration::from_secs(1));
        assert_eq!(backoff.after(3), Duration::from_secs(4));
        assert_eq!(backoff.after(u32::MAX), Duration::from_secs(300));
        let mut endless = Backoff::new(Duration::from_secs(u64::MAX / 2), Duration::MAX);
        (0..3).for_each(|_| _ = endless.fail());
        assert_eq!(endless.fail(), Duration::MAX);
    }

    #[test]
    fn a_maximum_below_the_minimum_is_the_minimum() {
        let mut backoff = Backoff::new(Duration::from_secs(2), Duration::from_secs(1));
        assert_eq!((backoff.fail(), backoff.fail()), (Duration::from_secs(2), Duration::from_secs(2)));
    }
}
