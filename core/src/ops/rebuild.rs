//! `onhand rebuild`: the levels recomputed from the recorded movements and written back in
//! one transaction, while every writer of `stock_levels` waits for it ([`Audit::rebuild`]):
//! only the levels that drifted are written, their reserved units and stock policy kept,
//! each with its version bumped. Interrupted at any point, nothing is written; once
//! committed, the levels written are published through the one way a level reaches the
//! stock topic ([`publish`]), and one whose publication fails stays unpublished in the
//! database, for the ledger's sweep to publish.

use chrono::Utc;
use serde::Serialize;

use super::{
    verify::{Checker, Drift, Tolerance},
    Progress,
};
use crate::{
    db::{Audit, AuditFacts, DbError, LevelRewrite, Outbox, Rebuilding},
    event::StockLevel,
    kafka::Producer,
    publish,
};

impl Rebuilding for Checker<'_> {
    fn rewrites(&mut self) -> Vec<LevelRewrite> {
        self.settle_all().iter().map(|d| d.rewrite.clone()).collect()
    }
}

/// What a rebuild would write, read without pausing anything: the drifts of
/// `onhand verify`.
pub async fn plan(db: &dyn Audit, progress: &dyn Progress) -> Result<Vec<Drift>, DbError> {
    let mut checker = Checker::new(progress, None, Utc::now(), TOLERANCE);
    let facts: AuditFacts = db.audit(&mut checker).await?;
    progress.finish();
    Ok(checker.report(Some(facts)).drifts)
}

/// Only the levels matter here.
const TOLERANCE: Tolerance = Tolerance { grace: chrono::Duration::zero(), lag_max: 0 };

/// What a rebuild did.
#[derive(Debug, Clone, Serialize)]
pub struct Rebuilt {
    /// The levels written back, each as it drifted.
    pub rewritten: Vec<Drift>,
    /// The levels as written (with their new versions).
    #[serde(skip)]
    pub written: Vec<StockLevel>,
}

/// Recomputes every level and writes back those that drifted, in one transaction that
/// pauses the ledger (see [`Audit::rebuild`]).
pub async fn rebuild(db: &dyn Audit, progress: &dyn Progress) -> Result<Rebuilt, DbError> {
    let mut checker = Checker::new(progress, None, Utc::now(), TOLERANCE);
    let written = db.rebuild(&mut checker).await?;
    progress.finish();
    Ok(Rebuilt { rewritten: checker.drifts().to_vec(), written })
}

/// What became of the publication of the levels written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Publication {
    pub published: u64,
    /// Not acknowledged: they stay unpublished, and the ledger's sweep publishes them.
    pub failed: u64,
}

/// Publishes `levels` on `topic` and records what Kafka acknowledged, as the relay does
/// for every level written outside a ledger batch.
pub async fn publish(db: &dyn Outbox, producer: &Producer, topic: &str, levels: &[StockLevel]) -> Publication {
    if levels.is_empty() {
        return Publication::default();
    }
    let acknowledged = publish::enqueue(producer, topic, levels).await.acknowledged().await;
    let mut publication =
        Publication { published: acknowledged.published.len() as u64, failed: acknowledged.failed as u64 };
    if let Err(e) = db.record_published(acknowledged.published).await {
        tracing::warn!(error = %e, "publications not recorded; the ledger's sweep publishes the levels again");
        publication.failed += publication.published;
        publication.published = 0;
    }
    publication
}
