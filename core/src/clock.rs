//! The time onhand decides by, where a decision depends on it (a reservation's expiry):
//! the system clock in production, a clock the test moves by hand in tests.

use std::sync::{Arc, Mutex};

use chrono::{DateTime, SubsecRound, Utc};

#[derive(Debug, Clone, Default)]
pub enum Clock {
    #[default]
    System,
    /// Stands still until [`Clock::advance`] moves it.
    Manual(Arc<Mutex<DateTime<Utc>>>),
}

impl Clock {
    /// A hand-moved clock that starts at the current time.
    pub fn manual() -> Clock {
        Clock::Manual(Arc::new(Mutex::new(Utc::now().trunc_subsecs(6))))
    }

    /// The current time, to the microsecond (what the databases keep).
    pub fn now(&self) -> DateTime<Utc> {
        match self {
            Clock::System => Utc::now().trunc_subsecs(6),
            Clock::Manual(now) => *now.lock().unwrap_or_else(|poisoned| poisoned.into_inner()),
        }
    }

    /// Moves a manual clock forward; the system clock moves by itself.
    pub fn advance(&self, by: chrono::Duration) {
        if let Clock::Manual(now) = self {
            let mut now = now.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            *now += by;
        }
    }
}
