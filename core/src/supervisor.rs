//! The long-running tasks of a process, owned in one place.
//!
//! Each task runs under a name, as a component of [`Health`]: its state shows in
//! `GET /readyz` and `onhand_component_up`, its restarts in
//! `onhand_component_restarts_total`. A task that fails on an error that may pass, or
//! panics, is started again after a pause of its [`Restart`] policy's [`Backoff`]; a task
//! that fails for good is left failed and reported by [`Supervisor::failed`], so that the
//! process stops with the reason and its orchestrator (systemd, Kubernetes) starts it again
//! while a person reads why. Every task ends at the one shutdown token the supervisor holds.
//!
//! Only lower layers are imported here (`health`, `backoff`, `telemetry` through
//! `health`): what a task does is the caller's, the supervisor knows none of it.

use std::{future::Future, sync::Arc, time::Duration};

use tokio::{sync::watch, task::JoinSet, time::Instant};
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

use crate::{
    backoff::Backoff,
    health::{Component, Failure, Health, State},
};

/// The first pause before a failed task is started again; it doubles up to
/// [`RESTART_BACKOFF_MAX`], and starts over once a run lasted that long.
pub const RESTART_BACKOFF_MIN: Duration = Duration::from_secs(1);
pub const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(60);

/// What happens when a task fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    /// Started again after a retryable failure or a panic, after the backoff's next pause;
    /// the pauses start over once a run lasted the longest pause. A permanent failure is
    /// final.
    OnFailure(Backoff),
    /// Never started again: its first failure of any kind is final. For a task that owns
    /// what it cannot get back, as the HTTP server its bound listener.
    Never,
}

impl Default for Restart {
    /// Pauses of 1 s doubling up to 60 s.
    fn default() -> Restart {
        Restart::OnFailure(Backoff::new(RESTART_BACKOFF_MIN, RESTART_BACKOFF_MAX))
    }
}

/// A task as the supervisor runs it: its name, whether the process is ready without it,
/// and its restart policy.
#[derive(Debug, Clone)]
pub struct Task {
    /// The component's name, a metric label: a fixed name from the code (`relay`,
    /// `connector:erp`), never outside input.
    name: String,
    critical: bool,
    restart: Restart,
}

impl Task {
    /// An optional task, restarted with the default backoff.
    pub fn new(name: impl Into<String>) -> Task {
        Task { name: name.into(), critical: false, restart: Restart::default() }
    }

    /// The process is not ready unless this task runs.
    pub fn critical(self) -> Task {
        Task { critical: true, ..self }
    }

    pub fn restart(self, restart: Restart) -> Task {
        Task { restart, ..self }
    }
}

/// A task that failed for good: the process cannot do its work without a person.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{task} failed: {message}")]
pub struct TaskFailure {
    pub task: String,
    pub message: String,
}

/// What one run of a task answers: nothing, for a task that ends only at shutdown (a
/// panic is its only failure), or whether it failed and may be started again.
pub trait Outcome {
    fn into_result(self) -> Result<(), Failure>;
}

impl Outcome for () {
    fn into_result(self) -> Result<(), Failure> {
        Ok(())
    }
}

impl Outcome for Result<(), Failure> {
    fn into_result(self) -> Result<(), Failure> {
        self
    }
}

/// Every supervised task of a process, and the shutdown token that ends them.
#[derive(Debug)]
pub struct Supervisor {
    health: Health,
    shutdown: CancellationToken,
    /// Dropping the supervisor (a start that failed half-way) aborts every task.
    tasks: JoinSet<()>,
    /// The first task that failed for good.
    failure: Arc<watch::Sender<Option<TaskFailure>>>,
}

impl Supervisor {
    /// Tasks reported to `health`, ended when `shutdown` fires.
    pub fn new(health: Health, shutdown: CancellationToken) -> Supervisor {
        Supervisor { health, shutdown, tasks: JoinSet::new(), failure: Arc::new(watch::channel(None).0) }
    }

    /// The token every task ends by, for what runs beside them (a thread of its own) to
    /// end with them: give it a child token.
    pub fn shutdown(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// Runs `task`: `run` makes each run, given the task's component (to report that it is
    /// blocked) and a token that fires at shutdown, when the run must end.
    pub fn spawn<F, Fut>(&mut self, task: Task, run: F)
    where
        F: FnMut(Component, CancellationToken) -> Fut + Send + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: Outcome,
    {
        let component = self.health.component(&task.name, task.critical);
        let (shutdown, failure) = (self.shutdown.child_token(), Arc::clone(&self.failure));
        self.tasks.spawn(async move {
            if let State::Failed(message) = supervise(component, shutdown, task.restart, run).await {
                failure.send_if_modified(|first| {
                    let new = first.is_none();
                    first.get_or_insert(TaskFailure { task: task.name, message });
                    new
                });
            }
        });
    }

    /// Runs `task` once: never started again, its first failure is final.
    pub fn spawn_once<F, Fut>(&mut self, task: Task, run: F)
    where
        F: FnOnce(Component, CancellationToken) -> Fut + Send + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: Outcome,
    {
        let mut once = Some(run);
        self.spawn(task.restart(Restart::Never), move |component, shutdown| {
            let run = once.take().map(|run| run(component, shutdown));
            async move {
                match run {
                    Some(run) => run.await.into_result(),
                    None => {
                        Err(Failure { message: "a task that runs once was started again".into(), retryable: false })
                    }
                }
            }
        });
    }

    /// Fires when a task failed for good, with the first such failure.
    pub async fn failed(&self) -> TaskFailure {
        let mut failures = self.failure.subscribe();
        loop {
            if let Some(failure) = failures.borrow_and_update().clone() {
                return failure;
            }
            if failures.changed().await.is_err() {
                // The sender lives as long as `self`: this does not happen.
                std::future::pending::<()>().await;
            }
        }
    }

    /// Waits until every task ended, on its own or at shutdown; answers the first that
    /// failed for good, if one did.
    pub async fn join(mut self) -> Result<(), TaskFailure> {
        while self.tasks.join_next().await.is_some() {}
        let failure = self.failure.borrow().clone();
        failure.map_or(Ok(()), Err)
    }

    /// Fires the shutdown token and waits until every task ended.
    pub async fn stop(self) -> Result<(), TaskFailure> {
        self.shutdown.cancel();
        self.join().await
    }
}

/// Runs `run` until `shutdown`, as `component`, under `restart`; answers the last state:
/// `Done` (at shutdown, or a run that ended on its own) or `Failed`.
async fn supervise<F, Fut>(component: Component, shutdown: CancellationToken, restart: Restart, mut run: F) -> State
where
    F: FnMut(Component, CancellationToken) -> Fut,
    Fut: Future + Send + 'static,
    Fut::Output: Outcome,
{
    let mut backoff = match restart {
        Restart::OnFailure(backoff) => Some(backoff),
        Restart::Never => None,
    };
    loop {
        component.running();
        let started = Instant::now();
        // A task of its own, so that a panic ends only this run.
        let this_run = run(component.clone(), shutdown.clone());
        let running = tokio::spawn(async move { this_run.await.into_result() });
        let _abort = AbortOnDrop(running.abort_handle());
        let outcome = running.await;
        if shutdown.is_cancelled() {
            return done(&component);
        }
        let why = match outcome {
            Ok(Ok(())) => return done(&component),
            Ok(Err(Failure { message, retryable: false })) => return failed(&component, message),
            Ok(Err(Failure { message, retryable: true })) => message,
            Err(e) if e.is_panic() => format!("panicked: {}", panic_message(e.into_panic())),
            Err(_) => "cancelled".to_string(),
        };
        let Some(backoff) = backoff.as_mut() else { return failed(&component, why) };
        if started.elapsed() >= backoff.max() {
            backoff.reset();
        }
        let pause = backoff.fail();
        warn!(component = component.name(), error = %why, retry_in_s = pause.as_secs_f64(), "component stopped; starting it again");
        component.restarting(why);
        tokio::select! {
            _ = shutdown.cancelled() => return done(&component),
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

fn done(component: &Component) -> State {
    component.set(State::Done);
    State::Done
}

fn failed(component: &Component, message: String) -> State {
    error!(component = component.name(), error = %message, "component failed; it needs a person");
    let state = State::Failed(message);
    component.set(state.clone());
    state
}

/// Aborts a run when its supervising task is aborted (the supervisor was dropped), so
/// that no run outlives its supervisor.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
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
    use std::sync::{
        atomic::{AtomicU32, Ordering},
        Mutex,
    };

    use super::*;
    use crate::telemetry::Metrics;

    fn supervisor() -> (Supervisor, Health, Metrics) {
        let metrics = Metrics::new();
        let health = Health::new(metrics.clone());
        (Supervisor::new(health.clone(), CancellationToken::new()), health, metrics)
    }

    fn retryable(message: &str) -> Failure {
        Failure { message: message.into(), retryable: true }
    }

    /// A task that fails on a passing error or panics is started again after pauses that
    /// double; the restarts show in its state and the metric, and a run that lasted the
    /// longest pause starts the pauses over.
    #[tokio::test(start_paused = true)]
    async fn a_failing_task_is_restarted_with_backoff() {
        let (mut supervisor, health, metrics) = supervisor();
        let starts = Arc::new(Mutex::new(Vec::new()));
        let (recorded, origin) = (Arc::clone(&starts), Instant::now());
        supervisor.spawn(Task::new("relay"), move |_, stop| {
            let run = {
                let mut starts = recorded.lock().unwrap();
                starts.push(origin.elapsed().as_secs());
                starts.len()
            };
            async move {
                match run {
                    1 | 2 => Err(retryable("kafka down")),
                    3 => panic!("a bug"),
                    // Runs longer than the longest pause, then fails: the pauses start over.
                    4 => {
                        tokio::time::sleep(RESTART_BACKOFF_MAX).await;
                        Err(retryable("kafka down again"))
                    }
                    _ => {
                        stop.cancelled().await;
                        Ok(())
                    }
                }
            }
        });
        tokio::time::sleep(Duration::from_secs(200)).await;
        assert_eq!(*starts.lock().unwrap(), [0, 1, 3, 7, 68]);
        assert_eq!(health.state("relay"), Some(State::Running));
        assert_eq!(metrics.component_restarts_total.with_label_values(&["relay"]).get(), 4);
        assert_eq!(metrics.component_up.with_label_values(&["relay"]).get(), 1);
        assert_eq!(supervisor.stop().await, Ok(()));
        assert_eq!(health.state("relay"), Some(State::Done));
    }

    /// While a task waits to be started again, `/readyz` says why.
    #[tokio::test(start_paused = true)]
    async fn a_restarting_task_shows_why() {
        let (mut supervisor, health, metrics) = supervisor();
        supervisor.spawn(Task::new("cache_follower").critical(), |_, _| async { Err(retryable("broker gone")) });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(health.state("cache_follower"), Some(State::Restarting("broker gone".into())));
        assert!(!health.readiness().ready, "a critical task that restarts is not ready");
        assert_eq!(metrics.component_up.with_label_values(&["cache_follower"]).get(), 0);
        supervisor.stop().await.unwrap();
    }

    /// A permanent failure is not retried: the task is failed, the process unready, and
    /// `failed` answers which task and why, for the process to stop with it.
    #[tokio::test(start_paused = true)]
    async fn a_permanent_failure_is_reported() {
        let (mut supervisor, health, metrics) = supervisor();
        let runs = Arc::new(AtomicU32::new(0));
        let counted = Arc::clone(&runs);
        supervisor.spawn(Task::new("connector:erp"), move |_, _| {
            counted.fetch_add(1, Ordering::SeqCst);
            async { Err(Failure { message: "bad config".into(), retryable: false }) }
        });
        supervisor.spawn(Task::new("relay"), |_, stop| async move { stop.cancelled().await });
        let failure = supervisor.failed().await;
        assert_eq!(failure, TaskFailure { task: "connector:erp".into(), message: "bad config".into() });
        assert_eq!(failure.to_string(), "connector:erp failed: bad config");
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(health.state("connector:erp"), Some(State::Failed("bad config".into())));
        assert!(!health.readiness().ready, "a failed task needs a person");
        assert_eq!(metrics.component_restarts_total.with_label_values(&["connector:erp"]).get(), 0);
        assert_eq!(supervisor.stop().await, Err(failure));
        assert_eq!(health.state("relay"), Some(State::Done));
    }

    /// A task that is never restarted fails for good on any failure, a panic too.
    #[tokio::test(start_paused = true)]
    async fn a_task_run_once_fails_for_good_on_its_first_failure() {
        let (mut supervisor, health, _) = supervisor();
        async fn serve() -> Result<(), Failure> {
            panic!("the listener broke");
        }
        supervisor.spawn_once(Task::new("http").critical(), |_, _| serve());
        let failure = supervisor.failed().await;
        assert_eq!(failure.message, "panicked: the listener broke");
        assert_eq!(health.state("http"), Some(State::Failed("panicked: the listener broke".into())));
        assert!(supervisor.join().await.is_err());
    }

    /// Shutdown ends every task, running or waiting to be started again, as done; a task
    /// that ends on its own is done too, and nothing failed.
    #[tokio::test(start_paused = true)]
    async fn shutdown_ends_every_task() {
        let (mut supervisor, health, _) = supervisor();
        for name in ["relay", "source_watch"] {
            supervisor.spawn(Task::new(name), |_, stop| async move { stop.cancelled().await });
        }
        supervisor.spawn(Task::new("cache_follower"), |_, _| async { Err(retryable("broker gone")) });
        supervisor.spawn(Task::new("cache_preload"), |_, _| async {});
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(health.state("cache_preload"), Some(State::Done));
        let started = Instant::now();
        assert_eq!(supervisor.stop().await, Ok(()));
        assert!(started.elapsed() < RESTART_BACKOFF_MIN, "no task waited for its pause to end");
        for name in ["relay", "source_watch", "cache_follower", "cache_preload"] {
            assert_eq!(health.state(name), Some(State::Done), "{name}");
        }
        assert!(health.readiness().ready);
    }

    /// Dropping the supervisor (a start that failed half-way) ends its runs too.
    #[tokio::test(start_paused = true)]
    async fn a_dropped_supervisor_leaves_no_run_behind() {
        let (mut supervisor, _, _) = supervisor();
        let alive = Arc::new(());
        let held = Arc::clone(&alive);
        supervisor.spawn(Task::new("relay"), move |_, _| {
            let held = Arc::clone(&held);
            async move {
                let _held = held;
                std::future::pending::<()>().await;
            }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(Arc::strong_count(&alive), 3, "the closure's copy and the run's");
        drop(supervisor);
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(Arc::strong_count(&alive), 1, "the run was aborted");
    }
}
