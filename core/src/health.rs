//! What each long-running part of a process is doing, for `GET /readyz` and the
//! `onhand_component_*` metrics, and [`supervise`], which runs a task, restarts it with
//! backoff when it fails on an error that may pass, and says so.
//!
//! A component is one task (the ledger, the relay, a connector...). It reports its own
//! [`State`]: a task that is alive but cannot make progress (its dead letters cannot be
//! written, its consumer holds no partition while movements wait) says `Blocked` with the
//! reason, so that a stall is visible within seconds instead of looking like a quiet day.
//! A process is ready when every critical component runs and none has failed for good.

use std::{
    collections::BTreeMap,
    future::Future,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use chrono::{DateTime, SubsecRound, Utc};
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::telemetry::Metrics;

/// What a component is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    Starting,
    Running,
    /// Alive, but it cannot make progress, for this reason.
    Blocked(String),
    /// It failed on an error that may pass, and starts again after a pause.
    Restarting(String),
    /// It failed on an error that needs a person.
    Failed(String),
    /// It ended: on purpose (shutdown), or a task that runs once and finished.
    Done,
}

impl State {
    pub fn as_str(&self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Running => "running",
            State::Blocked(_) => "blocked",
            State::Restarting(_) => "restarting",
            State::Failed(_) => "failed",
            State::Done => "done",
        }
    }

    fn detail(&self) -> Option<&str> {
        match self {
            State::Blocked(why) | State::Restarting(why) | State::Failed(why) => Some(why),
            _ => None,
        }
    }

    /// Running or finished as intended.
    fn is_up(&self) -> bool {
        matches!(self, State::Running | State::Done)
    }
}

#[derive(Debug)]
struct Entry {
    state: State,
    since: DateTime<Utc>,
    /// The process is not ready unless this component is up.
    critical: bool,
}

/// Every component of a process. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Health {
    components: Arc<Mutex<BTreeMap<String, Entry>>>,
    metrics: Metrics,
}

/// One component, as its task holds it to report its state.
#[derive(Debug, Clone)]
pub struct Component {
    name: Arc<str>,
    /// `None` for a component reported nowhere (tests, a context shared by routes).
    health: Option<Health>,
}

/// A component as `GET /readyz` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ComponentReport {
    /// `starting`, `running`, `blocked`, `restarting`, `failed` or `done`.
    pub state: &'static str,
    /// Why it is blocked, restarting or failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    pub since: DateTime<Utc>,
    pub critical: bool,
}

/// The process as `GET /readyz` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Readiness {
    /// Every critical component runs, and none failed for good.
    pub ready: bool,
    /// Ready, but some component is not running.
    pub degraded: bool,
    pub components: BTreeMap<String, ComponentReport>,
}

impl Health {
    pub fn new(metrics: Metrics) -> Health {
        Health { components: Arc::default(), metrics }
    }

    /// Registers a component, starting. Its name is a metric label: a fixed name from the
    /// code (`ledger`, `connector:erp`), never outside input.
    pub fn component(&self, name: &str, critical: bool) -> Component {
        let entry = Entry { state: State::Starting, since: now(), critical };
        self.lock().insert(name.to_string(), entry);
        self.metrics.component_up.with_label_values(&[name]).set(0);
        Component { name: name.into(), health: Some(self.clone()) }
    }

    pub fn readiness(&self) -> Readiness {
        let components = self.lock();
        let ready =
            components.values().all(|e| !matches!(e.state, State::Failed(_)) && (!e.critical || e.state.is_up()));
        let degraded = components.values().any(|e| !e.state.is_up());
        let components = components
            .iter()
            .map(|(name, e)| {
                let report = ComponentReport {
                    state: e.state.as_str(),
                    detail: e.state.detail().map(str::to_string),
                    since: e.since,
                    critical: e.critical,
                };
                (name.clone(), report)
            })
            .collect();
        Readiness { ready, degraded, components }
    }

    /// The state of one component, if it is registered.
    pub fn state(&self, name: &str) -> Option<State> {
        self.lock().get(name).map(|e| e.state.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Entry>> {
        self.components.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Component {
    /// A component whose states go nowhere.
    pub fn detached(name: &str) -> Component {
        Component { name: name.into(), health: None }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Reports a state; logged when it changes, so that a stall or a recovery shows.
    pub fn set(&self, state: State) {
        let Some(health) = &self.health else { return };
        let mut components = health.lock();
        let Some(entry) = components.get_mut(&*self.name) else { return };
        if entry.state == state {
            return;
        }
        match &state {
            State::Blocked(why) => warn!(component = %self.name, reason = %why, "component cannot make progress"),
            State::Running if !matches!(entry.state, State::Starting) => {
                info!(component = %self.name, "component running again")
            }
            _ => {}
        }
        entry.since = now();
        entry.state = state;
        let up = i64::from(entry.state.is_up());
        drop(components);
        health.metrics.component_up.with_label_values(&[&self.name]).set(up);
    }

    pub fn running(&self) {
        self.set(State::Running);
    }

    pub fn blocked(&self, why: impl Into<String>) {
        self.set(State::Blocked(why.into()));
    }

    pub fn state(&self) -> Option<State> {
        self.health.as_ref()?.state(&self.name)
    }
}

fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(3)
}

/// Why a supervised task stopped, and whether starting it again may help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Failure {
    pub message: String,
    pub retryable: bool,
}

/// The first pause before a failed task is started again; it doubles up to
/// [`RESTART_BACKOFF_MAX`], and starts over once the task ran for that long.
const RESTART_BACKOFF_MIN: Duration = Duration::from_secs(1);
const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(60);

/// Runs `task` until `shutdown`, as `component`: started again after a pause when it
/// fails on a retryable error or panics; left failed when its error needs a person. The
/// task gets the component, to report that it is blocked. Answers the last state.
pub async fn supervise<F, Fut>(component: Component, shutdown: CancellationToken, mut task: F) -> State
where
    F: FnMut(Component) -> Fut,
    Fut: Future<Output = Result<(), Failure>> + Send + 'static,
{
    let metrics = component.health.as_ref().map(|h| h.metrics.clone());
    let mut backoff = RESTART_BACKOFF_MIN;
    loop {
        component.running();
        let started = tokio::time::Instant::now();
        // A task of its own, so that a panic ends only it.
        let outcome = tokio::spawn(task(component.clone())).await;
        if shutdown.is_cancelled() {
            component.set(State::Done);
            return State::Done;
        }
        let why = match outcome {
            Ok(Ok(())) => {
                component.set(State::Done);
                return State::Done;
            }
            Ok(Err(Failure { message, retryable: false })) => {
                error!(component = component.name(), error = %message, "component failed; it needs a person");
                let state = State::Failed(message);
                component.set(state.clone());
                return state;
            }
            Ok(Err(Failure { message, retryable: true })) => message,
            Err(e) if e.is_panic() => format!("panicked: {}", panic_message(e.into_panic())),
            Err(_) => "cancelled".to_string(),
        };
        if started.elapsed() >= RESTART_BACKOFF_MAX {
            backoff = RESTART_BACKOFF_MIN;
        }
        warn!(component = component.name(), error = %why, retry_in_s = backoff.as_secs(), "component stopped; starting it again");
        if let Some(metrics) = &metrics {
            metrics.component_restarts_total.with_label_values(&[component.name()]).inc();
        }
        component.set(State::Restarting(why));
        tokio::select! {
            _ = shutdown.cancelled() => {
                component.set(State::Done);
                return State::Done;
            }
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(RESTART_BACKOFF_MAX);
    }
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(text) => *text,
        Err(payload) => {
            payload.downcast::<&'static str>().map(|s| s.to_string()).unwrap_or_else(|_| "(no message)".into())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[test]
    fn a_process_is_ready_when_its_critical_components_run_and_none_failed() {
        let health = Health::new(Metrics::new());
        let ledger = health.component("ledger", true);
        let sink = health.component("connector:shopify", false);
        assert!(!health.readiness().ready, "starting");
        ledger.running();
        sink.running();
        assert!(health.readiness().ready && !health.readiness().degraded);
        sink.blocked("shopify unreachable");
        let readiness = health.readiness();
        assert!(readiness.ready && readiness.degraded, "a blocked optional component degrades");
        assert_eq!(readiness.components["connector:shopify"].detail.as_deref(), Some("shopify unreachable"));
        ledger.blocked("no partitions");
        assert!(!health.readiness().ready, "a blocked critical component is not ready");
        ledger.running();
        sink.set(State::Failed("bad token".into()));
        assert!(!health.readiness().ready, "a failed component needs a person");
    }

    /// M2: a task that fails on a passing error or panics is started again, and the
    /// restarts show in the component's state and the metric; a permanent error stops it.
    #[tokio::test(start_paused = true)]
    async fn a_failing_task_is_restarted_and_a_permanent_failure_is_reported() {
        let metrics = Metrics::new();
        let health = Health::new(metrics.clone());
        let runs = Arc::new(AtomicU32::new(0));
        let counted = Arc::clone(&runs);
        let state = supervise(health.component("relay", false), CancellationToken::new(), move |_| {
            let run = counted.fetch_add(1, Ordering::SeqCst);
            async move {
                match run {
                    0 => Err(Failure { message: "kafka down".into(), retryable: true }),
                    1 => panic!("a bug"),
                    _ => Err(Failure { message: "bad config".into(), retryable: false }),
                }
            }
        })
        .await;
        assert_eq!(state, State::Failed("bad config".into()));
        assert_eq!(runs.load(Ordering::SeqCst), 3);
        assert_eq!(metrics.component_restarts_total.with_label_values(&["relay"]).get(), 2);
        assert_eq!(metrics.component_up.with_label_values(&["relay"]).get(), 0);
        assert_eq!(health.state("relay"), Some(State::Failed("bad config".into())));
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_ends_a_supervised_task_as_done() {
        let health = Health::new(Metrics::new());
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        let state = supervise(health.component("watch", false), shutdown, move |_| {
            let stop = stop.clone();
            async move {
                stop.cancel();
                Ok(())
            }
        })
        .await;
        assert_eq!(state, State::Done);
        assert!(health.readiness().ready);
    }
}
