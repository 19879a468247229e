//! Background jobs of the reconciler: start a task, stop it, remove stray
//! containers, list the node's containers. Each runs in the reconciler's
//! JoinSet and hands back a [`JobResult`]; none touches reconciler state.
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use minkube::pb;
use minkube_common::retry::Backoff;
use minkube_common::trace_context;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use super::Internal;
use crate::runtime::{
    ensure_image, ContainerFilter, ContainerInfo, ContainerRef, ContainerSpec, ContainerStatus,
    Runtime, RuntimeError,
};

/// Retries of a stop when the daemon is unreachable. Stops are not
/// attempts the manager counts: it only waits for the task to end.
const STOP_RETRIES: u32 = 3;

/// Why a listing was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ListPurpose {
    /// At startup, before any session: no sweeping, the desired set decides.
    Startup,
    /// Periodic or after the event stream came back.
    Resync,
    /// After a desired set: also removes containers no task owns.
    Sweep,
}

/// The node's containers, with details of those unfinished records care about.
#[derive(Debug, Clone, Default)]
pub(crate) struct Listing {
    pub containers: Vec<ContainerRef>,
    pub details: HashMap<String, ContainerInfo>,
}

/// How a start job ended.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum StartOutcome {
    /// A container of the attempt runs (new or adopted).
    Running(ContainerInfo),
    /// An adopted container had already exited.
    Exited(ContainerInfo),
    /// It could not be started; reported at once with its failure kind,
    /// since the manager decides whether another attempt follows.
    Failed(RuntimeError),
    /// Given up on request before a container ran.
    Cancelled,
}

/// What a finished job hands back to the reconciler.
#[derive(Debug)]
pub(crate) enum JobResult {
    Start {
        task_id: String,
        attempt: u32,
        outcome: StartOutcome,
    },
    Stop {
        task_id: String,
        attempt: u32,
        outcome: Result<Option<i32>, String>,
    },
    Cleanup {
        container_ids: Vec<String>,
    },
    List {
        purpose: ListPurpose,
        generation: u64,
        result: Result<Listing, RuntimeError>,
    },
}

fn retry_delay(attempt: u32) -> Duration {
    let backoff = Backoff {
        initial: Duration::from_millis(500),
        max: Duration::from_secs(5),
        multiplier: 2.0,
    };
    backoff.delay(attempt, &mut rand::rng())
}

/// Gets one attempt of a task running: removes the containers of older
/// attempts, then adopts a container that already exists for this attempt,
/// else makes sure of the image and creates one. Tried once: a failure goes
/// to the manager, which decides about (and records) any new attempt.
pub(crate) async fn start(
    rt: Arc<dyn Runtime>,
    node_id: String,
    assignment: pb::Assignment,
    stop_timeout: Duration,
    mut cancel: watch::Receiver<bool>,
    progress: mpsc::Sender<Internal>,
) -> StartOutcome {
    let spec = match ContainerSpec::for_assignment(&node_id, &assignment) {
        // The container continues this job's trace.
        Ok(spec) => spec.with_telemetry_env(&trace_context::current()),
        Err(e) => return StartOutcome::Failed(e),
    };
    let job = Start {
        rt: &*rt,
        node_id: &node_id,
        a: &assignment,
        spec: &spec,
        stop_timeout,
        progress: &progress,
    };
    match job.run(&mut cancel).await {
        Ok(outcome) => outcome,
        Err(e) => {
            warn!(task_id = %assignment.task_id, attempt = assignment.attempt, error = %e, failure = ?e.failure_kind(), "start failed");
            StartOutcome::Failed(e)
        }
    }
}

/// One start job's inputs.
struct Start<'a> {
    rt: &'a dyn Runtime,
    node_id: &'a str,
    a: &'a pb::Assignment,
    spec: &'a ContainerSpec,
    stop_timeout: Duration,
    progress: &'a mpsc::Sender<Internal>,
}

impl Start<'_> {
    async fn run(&self, cancel: &mut watch::Receiver<bool>) -> Result<StartOutcome, RuntimeError> {
        let (rt, a) = (self.rt, self.a);
        let listed = rt
            .list(&ContainerFilter::task(self.node_id, &a.task_id))
            .await?;
        // Only the newest attempt keeps a container, and the old one is gone
        // before the new one runs (its memory is counted for the new one).
        // Newer attempts are not touched: this job may be the superseded one.
        for old in listed.iter().filter(|c| c.attempt < a.attempt) {
            if *cancel.borrow() {
                return Ok(StartOutcome::Cancelled);
            }
            info!(task_id = %a.task_id, attempt = a.attempt, old_attempt = old.attempt, container_id = %old.id, "removing the container of an older attempt");
            rt.stop_and_remove(&old.id, self.stop_timeout).await?;
        }
        // Never a second container for one attempt: adopt the one there is.
        let mine: Vec<&ContainerRef> = listed.iter().filter(|c| c.attempt == a.attempt).collect();
        if let Some(c) = mine
            .iter()
            .find(|c| c.status.is_live())
            .or_else(|| mine.iter().find(|c| c.status != ContainerStatus::Removing))
        {
            if let Some(info) = rt.inspect(&c.id).await? {
                debug!(task_id = %a.task_id, attempt = a.attempt, container_id = %info.id, "adopting an existing container");
                return match info.status {
                    s if s.is_live() => Ok(StartOutcome::Running(info)),
                    s if s.is_exited() => Ok(StartOutcome::Exited(info)),
                    _ if *cancel.borrow() => Ok(StartOutcome::Cancelled),
                    _ => rt.start_existing(&info.id).await.map(StartOutcome::Running),
                };
            }
        }
        if *cancel.borrow() {
            return Ok(StartOutcome::Cancelled);
        }
        let policy = a
            .spec
            .as_ref()
            .and_then(|s| pb::PullPolicy::try_from(s.pull_policy).ok())
            .unwrap_or(pb::PullPolicy::IfNotPresent);
        let on_pull = || {
            // Best effort: a full channel only costs the "pulling" report.
            let _ = self.progress.try_send(Internal::Progress {
                task_id: a.task_id.clone(),
                attempt: a.attempt,
                reason: format!("pulling image {:?}", self.spec.image),
            });
        };
        tokio::select! {
            r = ensure_image(rt, &self.spec.image, policy, on_pull) => r?,
            _ = cancel.wait_for(|c| *c) => return Ok(StartOutcome::Cancelled),
        }
        if *cancel.borrow() {
            return Ok(StartOutcome::Cancelled);
        }
        rt.create_and_start(self.spec)
            .await
            .map(StartOutcome::Running)
    }
}

/// Stops and removes the containers of the attempt and of older attempts (in
/// any state: a stopped task keeps none). Returns the attempt's exit code.
pub(crate) async fn stop(
    rt: Arc<dyn Runtime>,
    node_id: String,
    task_id: String,
    attempt: u32,
    known_container: Option<String>,
    timeout: Duration,
) -> Result<Option<i32>, String> {
    let mut tries = 0;
    loop {
        match try_stop(
            &*rt,
            &node_id,
            &task_id,
            attempt,
            known_container.as_deref(),
            timeout,
        )
        .await
        {
            Ok(code) => return Ok(code),
            Err(e) if e.is_unavailable() && tries < STOP_RETRIES => {
                warn!(task_id = %task_id, attempt, error = %e, "stop failed; retrying");
                tries += 1;
                tokio::time::sleep(retry_delay(tries)).await;
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

async fn try_stop(
    rt: &dyn Runtime,
    node_id: &str,
    task_id: &str,
    attempt: u32,
    known_container: Option<&str>,
    timeout: Duration,
) -> Result<Option<i32>, RuntimeError> {
    let listed = rt.list(&ContainerFilter::task(node_id, task_id)).await?;
    // A newer attempt's container belongs to an assignment that replaced this one.
    let mut targets: Vec<(String, bool)> = listed
        .iter()
        .filter(|c| c.attempt <= attempt)
        .map(|c| (c.id.clone(), c.attempt == attempt))
        .collect();
    if let Some(known) = known_container {
        if !targets.iter().any(|(id, _)| id == known) {
            targets.push((known.to_string(), true));
        }
    }
    let mut exit_code = None;
    for (id, current) in targets {
        let code = rt.stop_and_remove(&id, timeout).await?;
        if current {
            exit_code = exit_code.or(code);
        }
    }
    Ok(exit_code)
}

/// Stops and removes containers, logging (not failing on) errors: a later
/// sweep tries again.
pub(crate) async fn cleanup(rt: Arc<dyn Runtime>, container_ids: &[String], timeout: Duration) {
    for id in container_ids {
        if let Err(e) = rt.stop_and_remove(id, timeout).await {
            warn!(container_id = %id, error = %e, "cannot remove container");
        }
    }
}

/// Lists the node's containers. Those of `wanted` attempts are inspected
/// when their record needs more than the listing shows: an exit code, or
/// the ports of a container not yet reported running (the flag).
pub(crate) async fn list(
    rt: Arc<dyn Runtime>,
    node_id: String,
    wanted: HashMap<(String, u32), bool>,
) -> Result<Listing, RuntimeError> {
    let containers = rt.list(&ContainerFilter::node(&node_id)).await?;
    let mut details = HashMap::new();
    for c in &containers {
        let Some(&not_yet_running) = wanted.get(&(c.task_id.clone(), c.attempt)) else {
            continue;
        };
        if not_yet_running || !c.status.is_live() {
            if let Some(info) = rt.inspect(&c.id).await? {
                details.insert(c.id.clone(), info);
            }
        }
    }
    Ok(Listing {
        containers,
        details,
    })
}
