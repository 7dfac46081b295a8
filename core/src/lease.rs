//! Work that must run on one replica at a time (a poller, an inbox) when several `onhand
//! serve` share the connectors' sections: a [`Leaser`] runs it only while this replica
//! holds its lease in the database (the `Leases` role).
//!
//! The holder renews the lease every third of `leases.ttl_ms`. A renewal that fails (the
//! database did not answer within that third) or that finds the lease taken stops the
//! work at once, through the work's own cancellation token, and waits for it to end before
//! asking for the lease again: two copies never run on one replica, and a holder that
//! cannot reach the database gives the work up well before its lease expires. A holder
//! that dies keeps it until it expires; the replicas standing by ask every third of the
//! ttl, so one of them takes over within the ttl and a third. A holder whose work ends
//! (shutdown, or an error its supervisor will restart it after) releases the lease, so
//! another takes over at once.
//!
//! What runs under a lease must be safe to stop anywhere and to run again from its
//! committed progress on another replica: the ERP cursor moves only after Kafka
//! acknowledged the rows up to it, a WMS file leaves the inbox only once every line was
//! acknowledged, and their event ids repeat, so what the next holder sends again the
//! ledger skips.
//!
//! Each lease is reported as the component `lease:NAME` (`running` while held, `standby`
//! with its holder while another replica holds it; a replica standing by is ready) and in
//! `onhand_lease_held{name}` and `onhand_lease_takeovers_total{name}`.

use std::{future::Future, sync::Arc, time::Duration};

use tokio::time::{timeout, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    config::LeaseConfig,
    db::{DbError, Lease, Leases},
    health::{Component, Health, State},
    telemetry::Metrics,
};

/// Takes, renews and gives up leases for this replica. Cheap to clone; every clone is the
/// same holder.
#[derive(Debug, Clone)]
pub struct Leaser {
    leases: Arc<dyn Leases>,
    holder: Arc<str>,
    ttl: Duration,
    metrics: Metrics,
    /// Where each lease's component is reported; `None` reports nowhere.
    health: Option<Health>,
}

/// How holding a lease ended.
enum Held<E> {
    /// The work ended on its own, with this result.
    Ended(Result<(), E>),
    /// The lease could not be renewed, or another holder has it: the work was stopped.
    Lost,
}

impl Leaser {
    /// A holder of its own for this process: its host name, process id and a random part,
    /// so that two processes (or two `App`s of one test) never share one.
    pub fn new(leases: Arc<dyn Leases>, config: &LeaseConfig, metrics: Metrics, health: Option<Health>) -> Leaser {
        let host = std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()).unwrap_or_else(|| "onhand".into());
        let random = uuid::Uuid::new_v4().simple().to_string();
        let holder = format!("{host}:{}:{}", std::process::id(), &random[..8]);
        Leaser { leases, holder: holder.into(), ttl: Duration::from_millis(config.ttl_ms), metrics, health }
    }

    /// Who this replica is in the `leases` table.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// How often the lease is renewed, and asked for while another replica holds it.
    fn every(&self) -> Duration {
        self.ttl / 3
    }

    /// Runs `work` whenever this replica holds the lease `name`, until `shutdown` fires
    /// or the work ends on its own; answers the work's result then (`Ok` at shutdown).
    /// `work` is given a token that fires at shutdown or when the lease is lost, and must
    /// end soon after; it is called again each time the lease is taken again.
    pub async fn run<F, Fut, E>(&self, name: &'static str, shutdown: &CancellationToken, mut work: F) -> Result<(), E>
    where
        F: FnMut(CancellationToken) -> Fut,
        Fut: Future<Output = Result<(), E>>,
    {
        let component = self.health.as_ref().map(|h| h.component(&format!("lease:{name}"), false));
        let held = self.metrics.lease_held.with_label_values(&[name]);
        held.set(0);
        loop {
            let Some(lease) = self.acquire(name, shutdown, component.as_ref()).await else {
                report(component.as_ref(), State::Done);
                return Ok(());
            };
            if let Some(from) = &lease.taken_from {
                self.metrics.lease_takeovers_total.with_label_values(&[name]).inc();
                info!(lease = name, from = %from, holder = %self.holder, "lease taken over from a holder that let it expire");
            } else {
                info!(lease = name, holder = %self.holder, "lease taken");
            }
            held.set(1);
            report(component.as_ref(), State::Running);
            let stop = shutdown.child_token();
            let outcome = self.hold(name, &stop, work(stop.clone())).await;
            held.set(0);
            match outcome {
                Held::Lost => continue,
                Held::Ended(result) => {
                    self.release(name).await;
                    report(component.as_ref(), State::Done);
                    return result;
                }
            }
        }
    }

    /// Asks for the lease every third of the ttl until it is this replica's; `None` at
    /// shutdown.
    async fn acquire(&self, name: &str, shutdown: &CancellationToken, component: Option<&Component>) -> Option<Lease> {
        loop {
            if shutdown.is_cancelled() {
                return None;
            }
            match self.ask(name).await {
                Ok(Some(lease)) => return Some(lease),
                Ok(None) => {
                    let why = match self.leases.lease(name).await {
                        Ok(Some(l)) => format!("replica {} holds the lease {name} (until {})", l.holder, l.expires_at),
                        _ => format!("another replica holds the lease {name}"),
                    };
                    report(component, State::Standby(why));
                }
                Err(e) => {
                    warn!(lease = name, error = %e, "the lease cannot be asked for; trying again");
                    report(component, State::Blocked(format!("the lease {name} cannot be asked for: {e}")));
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return None,
                _ = tokio::time::sleep(self.every()) => {}
            }
        }
    }

    /// Runs `work` and renews the lease every third of the ttl beside it; stops the work
    /// (`stop`) and waits for its end when a renewal fails or finds the lease taken.
    async fn hold<Fut, E>(&self, name: &str, stop: &CancellationToken, work: Fut) -> Held<E>
    where
        Fut: Future<Output = Result<(), E>>,
    {
        tokio::pin!(work);
        let mut next = Instant::now() + self.every();
        loop {
            tokio::select! {
                result = &mut work => return Held::Ended(result),
                _ = tokio::time::sleep_until(next) => {}
            }
            next = Instant::now() + self.every();
            let lost = match self.ask(name).await {
                Ok(Some(_)) => continue,
                Ok(None) => "another replica holds it now".to_string(),
                Err(e) => format!("it could not be renewed: {e}"),
            };
            warn!(lease = name, reason = %lost, "lease lost; its work stops");
            stop.cancel();
            // The work stops at its next step; it must not run twice on this replica.
            let _ = work.await;
            return Held::Lost;
        }
    }

    /// Takes or renews the lease, within a third of the ttl: a renewal that takes longer
    /// is a failed one.
    async fn ask(&self, name: &str) -> Result<Option<Lease>, LeaseError> {
        match timeout(self.every(), self.leases.acquire_lease(name, &self.holder, self.ttl)).await {
            Ok(answer) => Ok(answer?),
            Err(_) => Err(LeaseError::Timeout(self.every())),
        }
    }

    /// Gives the lease up, so that another replica takes over now rather than at its expiry.
    async fn release(&self, name: &str) {
        match timeout(self.every(), self.leases.release_lease(name, &self.holder)).await {
            Ok(Ok(_)) => info!(lease = name, "lease released"),
            Ok(Err(e)) => warn!(lease = name, error = %e, "lease not released; it expires by itself"),
            Err(_) => warn!(lease = name, "lease not released in time; it expires by itself"),
        }
    }
}

fn report(component: Option<&Component>, state: State) {
    if let Some(component) = component {
        component.set(state);
    }
}

/// Why a lease could not be taken or renewed.
#[derive(Debug, thiserror::Error)]
enum LeaseError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("the database did not answer within {0:?}")]
    Timeout(Duration),
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

    use super::*;
    use crate::db::{open, Db};

    async fn sqlite() -> (Arc<dyn Db>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("onhand.db").display());
        (open(&url, 4).await.unwrap(), dir)
    }

    fn leaser(db: &Arc<dyn Db>, ttl_ms: u64) -> (Leaser, Health) {
        let metrics = Metrics::new();
        let health = Health::new(metrics.clone());
        (Leaser::new(db.clone(), &LeaseConfig { ttl_ms }, metrics, Some(health.clone())), health)
    }

    /// Work that counts its runs and whether it is running, until its token fires.
    fn counted(
        runs: &Arc<AtomicU32>,
        running: &Arc<AtomicBool>,
    ) -> impl FnMut(CancellationToken) -> std::pin::Pin<Box<dyn Future<Output = Result<(), ()>> + Send>> {
        let (runs, running) = (Arc::clone(runs), Arc::clone(running));
        move |stop| {
            let (runs, running) = (Arc::clone(&runs), Arc::clone(&running));
            Box::pin(async move {
                runs.fetch_add(1, Ordering::SeqCst);
                running.store(true, Ordering::SeqCst);
                stop.cancelled().await;
                running.store(false, Ordering::SeqCst);
                Ok(())
            })
        }
    }

    async fn until(what: &str, mut check: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !check() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Two replicas: one works, the other stands by (and is up); when the holder dies
    /// without releasing, the other takes over once the lease expired, and counts it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_replica_works_and_another_takes_over_when_it_dies() {
        let (db, _dir) = sqlite().await;
        let ((a, health_a), (b, health_b)) = (leaser(&db, 1_000), leaser(&db, 1_000));
        let (runs_a, running_a) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicBool::new(false)));
        let (runs_b, running_b) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicBool::new(false)));
        let shutdown = CancellationToken::new();
        let (stop_a, stop_b) = (shutdown.clone(), shutdown.clone());
        let mut work_a = counted(&runs_a, &running_a);
        let replica_a = tokio::spawn(async move { a.run("inbox", &stop_a, &mut work_a).await });
        until("a works", || running_a.load(Ordering::SeqCst)).await;
        let b_run = b.clone();
        let mut work_b = counted(&runs_b, &running_b);
        let replica_b = tokio::spawn(async move { b_run.run("inbox", &stop_b, &mut work_b).await });
        until("b stands by", || matches!(health_b.state("lease:inbox"), Some(State::Standby(_)))).await;
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert_eq!(runs_b.load(Ordering::SeqCst), 0, "one replica works at a time");
        assert!(health_b.readiness().ready, "a replica standing by is ready");
        assert_eq!(health_a.state("lease:inbox"), Some(State::Running));

        replica_a.abort(); // dies: its lease is not released
        let died = Instant::now();
        until("b takes over", || running_b.load(Ordering::SeqCst)).await;
        assert!(died.elapsed() < Duration::from_millis(2 * 1_000), "within the ttl and a third, and some slack");
        assert_eq!(b.metrics.lease_takeovers_total.with_label_values(&["inbox"]).get(), 1);
        assert_eq!(b.metrics.lease_held.with_label_values(&["inbox"]).get(), 1);

        shutdown.cancel();
        assert_eq!(replica_b.await.unwrap(), Ok(()));
        assert!(!running_b.load(Ordering::SeqCst), "the work ended before the leaser did");
        assert_eq!(db.lease("inbox").await.unwrap(), None, "released at shutdown");
        assert_eq!(b.metrics.lease_held.with_label_values(&["inbox"]).get(), 0);
    }

    /// A holder that finds its lease taken (it could not renew in time) stops its work,
    /// waits for it to end, and asks again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lost_lease_stops_the_work() {
        let (db, _dir) = sqlite().await;
        let (a, _) = leaser(&db, 1_000);
        let (runs, running) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicBool::new(false)));
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        let mut work = counted(&runs, &running);
        let holder = a.clone();
        let replica = tokio::spawn(async move { holder.run("erp", &stop, &mut work).await });
        until("a works", || running.load(Ordering::SeqCst)).await;
        // Another replica takes it, as if it had expired.
        db.release_lease("erp", a.holder()).await.unwrap();
        db.acquire_lease("erp", "other", Duration::from_secs(2)).await.unwrap().expect("taken by the other");
        until("the work stopped", || !running.load(Ordering::SeqCst)).await;
        until("taken again once the other's expired", || running.load(Ordering::SeqCst)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        shutdown.cancel();
        replica.await.unwrap().unwrap();
    }

    /// Work that ends on its own (an error for its supervisor) gives the lease up at once.
    #[tokio::test]
    async fn work_that_ends_releases_the_lease() {
        let (db, _dir) = sqlite().await;
        let (a, _) = leaser(&db, 1_000);
        let ended = a.run("wms", &CancellationToken::new(), |_| async { Err::<(), _>("the inbox is gone") }).await;
        assert_eq!(ended, Err("the inbox is gone"));
        assert_eq!(db.lease("wms").await.unwrap(), None);
    }
}
