//! What each long-running part of a process is doing, for `GET /readyz` and the
//! `onhand_component_*` metrics. `supervisor` runs the tasks and reports their restarts
//! and failures here.
//!
//! A component is one task (the ledger, the relay, a connector...). It reports its own
//! [`State`]: a task that is alive but cannot make progress (its dead letters cannot be
//! written, its consumer holds no partition while movements wait) says `Blocked` with the
//! reason, so that a stall is visible within seconds instead of looking like a quiet day.
//! A process is ready when every critical component runs and none has failed for good.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, PoisonError},
};

use chrono::{DateTime, SubsecRound, Utc};
use serde::Serialize;
use tracing::{info, warn};

use crate::telemetry::Metrics;

/// What a component is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    Starting,
    Running,
    /// Alive, but it cannot make progress, for this reason.
    Blocked(String),
    /// Up and waiting: the work it would do runs on another replica, which holds its
    /// lease (`lease`), for this reason.
    Standby(String),
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
            State::Standby(_) => "standby",
            State::Restarting(_) => "restarting",
            State::Failed(_) => "failed",
            State::Done => "done",
        }
    }

    fn detail(&self) -> Option<&str> {
        match self {
            State::Blocked(why) | State::Standby(why) | State::Restarting(why) | State::Failed(why) => Some(why),
            _ => None,
        }
    }

    /// Running, standing by for another replica, or finished as intended.
    fn is_up(&self) -> bool {
        matches!(self, State::Running | State::Standby(_) | State::Done)
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
    /// `starting`, `running`, `blocked`, `standby` (another replica holds its lease),
    /// `restarting`, `failed` or `done`.
    pub state: &'static str,
    /// Why it is blocked, standing by, restarting or failed.
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

    /// Reports that the task failed on an error that may pass and starts again after a
    /// pause; counted in `onhand_component_restarts_total`.
    pub fn restarting(&self, why: impl Into<String>) {
        if let Some(health) = &self.health {
            health.metrics.component_restarts_total.with_label_values(&[&self.name]).inc();
        }
        self.set(State::Restarting(why.into()));
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

#[cfg(test)]
mod tests {
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
        sink.set(State::Standby("another replica holds the lease".into()));
        assert!(health.readiness().ready && !health.readiness().degraded, "a standby is up");
        sink.set(State::Failed("bad token".into()));
        assert!(!health.readiness().ready, "a failed component needs a person");
    }
}
