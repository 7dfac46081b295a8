//! The operator's work, which the `onhand verify|rebuild|replay|dlq|doctor` commands run:
//! checks and repairs over the database and Kafka, run beside a live deployment.
//!
//! Each piece reports its progress through [`Progress`], so the command line can draw a
//! bar and tests can ignore it.
//!
//! - `dlq`: the dead-letter topic, read, filtered and re-driven.
//! - `doctor`: a deployment checked end to end, changing nothing.
//! - `recompute`: the levels as the recorded movements make them, under the ledger's rules.
//! - `verify`: the levels, reservations, outbox, publications and lag checked.
//! - `rebuild`: the levels that drifted written back while the ledger waits, and published.
//! - `replay`: a consumer group moved back on its topic, in Kafka or, for the ledger, in
//!   the database.

pub mod dlq;
pub mod doctor;
pub mod rebuild;
pub mod recompute;
pub mod replay;
pub mod verify;

/// Where long work says how far it is.
pub trait Progress: Send + Sync {
    /// A new stage begins: `what` it does, and how many steps it has when that is known.
    fn start(&self, what: &str, total: Option<u64>);
    /// `steps` more are done.
    fn advance(&self, steps: u64);
    /// The work is over.
    fn finish(&self);
}

/// Progress nobody watches.
#[derive(Debug, Clone, Copy, Default)]
pub struct Silent;

impl Progress for Silent {
    fn start(&self, _what: &str, _total: Option<u64>) {}
    fn advance(&self, _steps: u64) {}
    fn finish(&self) {}
}
