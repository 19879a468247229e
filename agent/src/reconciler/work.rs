//! Background jobs of the reconciler: start a task, stop it, remove stray
//! containers, list the node's containers. Each runs in the reconciler's
//! JoinSet and hands back a [`JobResult`]; none touches reconciler state.
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use minkube::pb;
use minkube_common::retry::Backoff;
use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};

use super::Internal;
use crate::runtime::{
    ensure_image, ContainerFilter, ContainerInfo, ContainerRef, ContainerSpec, ContainerStatus,
    Runtime, RuntimeError,
};

/// Retries of a start or stop when the daemon is unreachable.
const TRANSIENT_RETRIES: u32 = 3;

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
    /// It could not be started; the reason is for the user.
    Failed(String),
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

fn retry_backoff() -> Backoff {
    Backoff {
        initial: Duration::from_millis(500),
        max: Duration::from_secs(5),
        multiplier: 2.0,
    }
}

fn retry_delay(attempt: u32) -> Duration {
    retry_backoff().delay(attempt, &mut rand::rng())
}

/// Gets one attempt of a task running: adopts a container that already
/// exists for it, else makes sure of the image and creates one.
pub(crate) async fn start(
    rt: Arc<dyn Runtime>,
    node_id: String,
    assignment: pb::Assignment,
    mut cancel: watch::Receiver<bool>,
    progress: mpsc::Sender<Internal>,
) -> StartOutcome {
    let spec = match ContainerSpec::for_assignment(&node_id, &assignment) {
        Ok(spec) => spec,
        Err(e) => return StartOutcome::Failed(e.to_string()),
    };
    let mut tries = 0;
    loop {
        match try_start(&*rt, &node_id, &assignment, &spec, &mut cancel, &progress).await {
            Ok(outcome) => return outcome,
            Err(e) if e.is_transient() && tries < TRANSIENT_RETRIES => {
                warn!(task_id = %assignment.task_id, attempt = assignment.attempt, error = %e, "start failed; retrying");
                tries += 1;
                tokio::select! {
                    () = tokio::time::sleep(retry_delay(tries)) => {}
                    _ = cancel.wait_for(|c| *c) => return StartOutcome::Cancelled,
                }
            }
            Err(e) => return StartOutcome::Failed(e.to_string()),
        }
    }
}

async fn try_start(
    rt: &dyn Runtime,
    node_id: &str,
    a: &pb::Assignment,
    spec: &ContainerSpec,
    cancel: &mut watch::Receiver<bool>,
    progress: &mpsc::Sender<Internal>,
) -> Result<StartOutcome, RuntimeError> {
    // Never a second container for one attempt: look for one first.
    let existing = rt
        .list(&ContainerFilter::attempt(node_id, &a.task_id, a.attempt))
        .await?;
    if let Some(c) = existing.iter().find(|c| c.status.is_live()).or_else(|| {
        existing
            .iter()
            .find(|c| c.status != ContainerStatus::Removing)
    }) {
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
        let _ = progress.try_send(Internal::Progress {
            task_id: a.task_id.clone(),
            attempt: a.attempt,
            reason: format!("pulling image {:?}", spec.image),
        });
    };
    tokio::select! {
        r = ensure_image(rt, &spec.image, policy, on_pull) => r?,
        _ = cancel.wait_for(|c| *c) => return Ok(StartOutcome::Cancelled),
    }
    if *cancel.borrow() {
        return Ok(StartOutcome::Cancelled);
    }
    rt.create_and_start(spec).await.map(StartOutcome::Running)
}

/// Stops and removes the attempt's container (in any state) and any still
/// running container of older attempts. Returns the attempt's exit code.
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
            Err(e) if e.is_transient() && tries < TRANSIENT_RETRIES => {
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
    let mut targets: Vec<(String, bool)> = listed
        .iter()
        .filter(|c| c.attempt == attempt || !c.status.is_exited())
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

/// Removes the containers of one attempt; returns their ids.
pub(crate) async fn cleanup_attempt(
    rt: Arc<dyn Runtime>,
    node_id: String,
    task_id: String,
    attempt: u32,
    timeout: Duration,
) -> Vec<String> {
    let ids: Vec<String> = match rt
        .list(&ContainerFilter::attempt(&node_id, &task_id, attempt))
        .await
    {
        Ok(found) => found.into_iter().map(|c| c.id).collect(),
        Err(e) => {
            warn!(task_id = %task_id, attempt, error = %e, "cannot list an old attempt's containers; a later sweep removes them");
            return Vec::new();
        }
    };
    cleanup(rt, &ids, timeout).await;
    ids
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
