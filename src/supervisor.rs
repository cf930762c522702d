//! Background tasks that never die silently: each one runs under a supervisor that restarts it after a
//! panic or an unexpected return, and reports whether it is making progress, for `/readyz`.
//!
//! A task proves it is alive by calling [`Progress::tick`] whenever it has done a unit of real work (a
//! publish step that reached the database, a read of the log, a membership refresh). A task that has not
//! ticked for its `stall_after` counts as stalled: the process is not ready, and `/readyz` names the task.
//! This catches what a panic handler cannot: a loop that keeps failing on the same row, or an `.await` that
//! never returns.

use backon::{BackoffBuilder, ExponentialBuilder};
use serde::Serialize;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Counter of restarts after a panic or an unexpected end, labelled by `task`.
pub const TASK_RESTARTS: &str = "smartscheduler_task_restarts_total";

/// One supervised task's state, shared between the task (which ticks) and the readiness check.
#[derive(Debug)]
struct TaskState {
    name: &'static str,
    stall_after: Duration,
    /// Milliseconds after `Supervisor::started` of the last tick.
    last_tick_ms: AtomicU64,
    /// False from a panic or unexpected end until the restarted task ticks again.
    running: AtomicBool,
    restarts: AtomicU64,
}

/// Handle a supervised task uses to report progress. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Progress {
    state: Arc<TaskState>,
    started: Instant,
}

impl Progress {
    /// Records that the task did a unit of real work just now.
    pub fn tick(&self) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.state.last_tick_ms.store(ms, Ordering::Release);
        self.state.running.store(true, Ordering::Release);
    }

    /// A handle that records nothing anyone reads, for running a task outside a supervisor.
    pub fn detached(name: &'static str) -> Self {
        Supervisor::new().register(name, Duration::MAX)
    }
}

/// How one task is doing, as `/readyz` reports it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskReport {
    /// The task's name (for example `relay`).
    pub name: &'static str,
    /// True when the task is running and ticked within its `stall_after`.
    pub healthy: bool,
    /// Seconds since its last tick.
    pub since_progress_s: f64,
    /// Times it was restarted after a panic or an unexpected end.
    pub restarts: u64,
}

/// The process's supervised tasks. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Supervisor {
    tasks: Arc<Mutex<Vec<Arc<TaskState>>>>,
    started: Instant,
}

impl Default for Supervisor {
    fn default() -> Self {
        Self::new()
    }
}

impl Supervisor {
    /// A supervisor with no tasks yet.
    pub fn new() -> Self {
        Self { tasks: Arc::default(), started: Instant::now() }
    }

    /// Registers a task that counts as stalled when it has not ticked for `stall_after`. It starts with a
    /// tick, so that a task gets `stall_after` to do its first piece of work.
    pub fn register(&self, name: &'static str, stall_after: Duration) -> Progress {
        let state = Arc::new(TaskState {
            name,
            stall_after,
            last_tick_ms: AtomicU64::new(self.started.elapsed().as_millis() as u64),
            running: AtomicBool::new(true),
            restarts: AtomicU64::new(0),
        });
        self.tasks.lock().unwrap_or_else(|p| p.into_inner()).push(state.clone());
        Progress { state, started: self.started }
    }

    /// Runs `make(progress)` as a task until `shutdown`, starting it again (after a backoff of 100 ms doubling
    /// to 10 s, reset by progress) whenever it panics or returns before shutdown.
    pub fn spawn<F, Fut>(
        &self,
        name: &'static str,
        stall_after: Duration,
        shutdown: CancellationToken,
        make: F,
    ) -> tokio::task::JoinHandle<()>
    where
        F: Fn(Progress) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let progress = self.register(name, stall_after);
        tokio::spawn(async move {
            let mut backoff = restart_backoff();
            loop {
                let run = tokio::spawn(make(progress.clone()));
                let ended = run.await;
                if shutdown.is_cancelled() {
                    return;
                }
                let state = &progress.state;
                state.running.store(false, Ordering::Release);
                state.restarts.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(TASK_RESTARTS, "task" => name).increment(1);
                match ended {
                    Err(error) if error.is_panic() => {
                        tracing::error!(task = name, panic = %panic_message(error), "background task panicked; restarting it")
                    }
                    _ => tracing::error!(task = name, "background task ended unexpectedly; restarting it"),
                }
                let last_tick = state.last_tick_ms.load(Ordering::Acquire);
                let delay = backoff.next().unwrap_or(Duration::from_secs(10));
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.cancelled() => return,
                }
                if state.last_tick_ms.load(Ordering::Acquire) != last_tick {
                    backoff = restart_backoff();
                }
            }
        })
    }

    /// Every task's state now.
    pub fn report(&self) -> Vec<TaskReport> {
        let now_ms = self.started.elapsed().as_millis() as u64;
        let tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        tasks
            .iter()
            .map(|t| {
                let since = Duration::from_millis(now_ms.saturating_sub(t.last_tick_ms.load(Ordering::Acquire)));
                TaskReport {
                    name: t.name,
                    healthy: t.running.load(Ordering::Acquire) && since <= t.stall_after,
                    since_progress_s: since.as_secs_f64(),
                    restarts: t.restarts.load(Ordering::Relaxed),
                }
            })
            .collect()
    }

    /// True when every task is running and making progress.
    pub fn all_healthy(&self) -> bool {
        self.report().iter().all(|t| t.healthy)
    }
}

fn restart_backoff() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(10))
        .with_jitter()
        .without_max_times()
        .build()
}

fn panic_message(error: tokio::task::JoinError) -> String {
    let payload = error.into_panic();
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    #[tokio::test]
    async fn a_task_that_panics_is_restarted_and_reported_until_it_ticks_again() {
        let supervisor = Supervisor::new();
        let shutdown = CancellationToken::new();
        let runs = Arc::new(AtomicU32::new(0));
        let (ticked_tx, mut ticked) = tokio::sync::mpsc::unbounded_channel();
        let counted = runs.clone();
        supervisor.spawn("flaky", Duration::from_secs(60), shutdown.clone(), move |progress| {
            let run = counted.fetch_add(1, Ordering::SeqCst);
            let ticked_tx = ticked_tx.clone();
            async move {
                if run == 0 {
                    panic!("a bad row");
                }
                progress.tick();
                let _ = ticked_tx.send(run);
                std::future::pending::<()>().await;
            }
        });
        assert_eq!(ticked.recv().await, Some(1), "the second run ticks");
        let report = supervisor.report();
        assert_eq!(report.len(), 1);
        assert_eq!(report[0].restarts, 1);
        assert!(report[0].healthy);
        shutdown.cancel();
    }

    #[test]
    fn a_task_that_does_not_tick_within_its_window_is_unhealthy() {
        let supervisor = Supervisor::new();
        let stuck = supervisor.register("stuck", Duration::ZERO);
        let fine = supervisor.register("fine", Duration::from_secs(3600));
        std::thread::sleep(Duration::from_millis(5)); // the window is measured in wall time by design
        fine.tick();
        let _ = stuck;
        let report = supervisor.report();
        assert!(!report.iter().find(|t| t.name == "stuck").unwrap().healthy);
        assert!(report.iter().find(|t| t.name == "fine").unwrap().healthy);
        assert!(!supervisor.all_healthy());
    }
}
