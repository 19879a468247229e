//! What Docker says: container events, finished start jobs and listings.
use std::collections::HashMap;
use std::sync::Arc;

use minkube::pb::{FailureKind, TaskState};
use tracing::{debug, info, warn};

use super::report::Report;
use super::work::{self, JobResult, ListPurpose, Listing, StartOutcome};
use super::{Exit, Internal, Job, Reconciler};
use crate::runtime::{ContainerInfo, ContainerStatus, EventKind, RuntimeEvent};

impl Reconciler {
    pub(super) async fn on_internal(&mut self, msg: Internal) {
        match msg {
            Internal::Event(ev) => self.on_event(ev).await,
            Internal::EventsResumed => {
                info!("Docker events resumed; re-listing containers to catch up");
                self.request_listing(ListPurpose::Resync);
            }
            Internal::Progress {
                task_id,
                attempt,
                reason,
            } => {
                let current = self.tasks.get(&task_id).is_some_and(|e| {
                    e.rec.attempt() == attempt
                        && matches!(e.job, Job::Starting { .. })
                        && !e.rec.stop_requested
                        && e.rec.state() == TaskState::Scheduled
                });
                if current {
                    self.report(&task_id, Report::new(TaskState::Scheduled, reason))
                        .await;
                }
            }
        }
    }

    async fn on_event(&mut self, ev: RuntimeEvent) {
        let Some(e) = self.tasks.get_mut(&ev.task_id) else {
            debug!(task_id = %ev.task_id, container_id = %ev.container_id, "event for a task without a record");
            return;
        };
        if e.rec.attempt() != ev.attempt || e.rec.is_terminal() {
            return;
        }
        if e.rec
            .container_id()
            .is_some_and(|known| known != ev.container_id)
        {
            return;
        }
        match ev.kind {
            EventKind::Started => {
                if matches!(e.job, Job::Starting { .. }) {
                    e.started_seen = Some(ev.at);
                }
                // Started outside a start job (e.g. replayed after a restart): adopt it.
                let adopt = matches!(e.job, Job::Idle)
                    && !e.rec.stop_requested
                    && e.rec.state() == TaskState::Scheduled;
                if adopt {
                    self.spawn_start(&ev.task_id);
                }
            }
            EventKind::Died {
                exit_code,
                oom_killed,
            } => {
                let exit = Exit {
                    container_id: ev.container_id.clone(),
                    exit_code: Some(exit_code),
                    oom_killed,
                    at: Some(ev.at),
                };
                match e.job {
                    // The engine saw it start and end: both are reported now,
                    // not after the start job's last call (an inspect that
                    // waits behind every other request to a busy engine).
                    Job::Starting { .. } if !e.rec.stop_requested => {
                        let was_running = e.rec.state() == TaskState::Running;
                        let started = ContainerInfo {
                            id: ev.container_id.clone(),
                            task_id: ev.task_id.clone(),
                            attempt: ev.attempt,
                            status: ContainerStatus::Running,
                            exit_code: None,
                            oom_killed: false,
                            ports: Vec::new(),
                            started_at: Some(e.started_seen.take().unwrap_or(ev.at)),
                            finished_at: None,
                        };
                        if !was_running {
                            let r = Report::new(TaskState::Running, "started").container(&started);
                            self.report(&ev.task_id, r).await;
                        }
                        self.report(&ev.task_id, Report::exited(&exit, false)).await;
                    }
                    // Applied once the start result is in: the stop decides.
                    Job::Starting { .. } => e.pending_exit = Some(exit),
                    // The stop job reports once the container is removed.
                    Job::Stopping => {}
                    Job::Idle if e.rec.stop_requested => self.spawn_stop(&ev.task_id),
                    Job::Idle => {
                        let stop_requested = e.rec.stop_requested;
                        self.report(&ev.task_id, Report::exited(&exit, stop_requested))
                            .await;
                    }
                }
            }
        }
    }

    pub(super) async fn on_start_done(
        &mut self,
        task_id: &str,
        attempt: u32,
        outcome: StartOutcome,
    ) {
        let current = self
            .tasks
            .get(task_id)
            .is_some_and(|e| e.rec.attempt() == attempt && matches!(e.job, Job::Starting { .. }));
        if !current {
            // A superseded attempt: its container, if it got one, must go.
            if let StartOutcome::Running(info) | StartOutcome::Exited(info) = outcome {
                self.spawn_cleanup(vec![info.id]);
            }
            return;
        }
        let Some(e) = self.tasks.get_mut(task_id) else {
            return;
        };
        let overtaken = e.start_overtaken();
        e.job = Job::Idle;
        if overtaken {
            // Its container's start and exit went out already.
            if std::mem::take(&mut e.release_held) {
                self.drop_released(task_id);
            }
            return;
        }
        let stop_requested = e.rec.stop_requested;
        let pending_exit = e.pending_exit.take();
        match outcome {
            StartOutcome::Running(info) if stop_requested => {
                // Started just as the stop came in: stop it now.
                if let Some(e) = self.tasks.get_mut(task_id) {
                    if let Some(u) = e.rec.last_update.as_mut() {
                        u.container_id.clone_from(&info.id);
                    }
                }
                self.spawn_stop(task_id);
            }
            StartOutcome::Running(info) => {
                self.report(
                    task_id,
                    Report::new(TaskState::Running, "started").container(&info),
                )
                .await;
                if let Some(exit) = pending_exit {
                    self.report(task_id, Report::exited(&exit, false)).await;
                }
            }
            StartOutcome::Exited(_) if stop_requested => self.spawn_stop(task_id),
            StartOutcome::Exited(info) => {
                let exit = exit_of(&info);
                let r = Report::exited(&exit, false).container(&info);
                self.report(task_id, r).await;
            }
            // The stop job removes anything a cancelled start left behind.
            StartOutcome::Failed(_) | StartOutcome::Cancelled if stop_requested => {
                self.spawn_stop(task_id);
            }
            StartOutcome::Failed(e) => {
                self.report(task_id, Report::failed(e.failure_kind(), e.to_string()))
                    .await;
            }
            StartOutcome::Cancelled => {
                // Cancelled without a stop: only a superseded attempt does that.
                debug!(task_id = %task_id, attempt, "start cancelled");
            }
        }
    }

    fn spawn_cleanup(&mut self, container_ids: Vec<String>) {
        let rt = Arc::clone(&self.rt);
        let timeout = self.settings.stop_timeout;
        self.jobs.spawn(async move {
            work::cleanup(rt, &container_ids, timeout).await;
            JobResult::Cleanup { container_ids }
        });
    }

    /// (task id, attempt) of every unfinished record, and whether it still
    /// waits for its RUNNING report: the listing inspects what they need.
    pub(super) fn wanted(&self) -> HashMap<(String, u32), bool> {
        self.tasks
            .values()
            .filter(|e| !e.rec.is_terminal())
            .map(|e| {
                let key = (e.rec.task_id().to_string(), e.rec.attempt());
                (key, e.rec.state() != TaskState::Running)
            })
            .collect()
    }

    pub(super) fn request_listing(&mut self, purpose: ListPurpose) {
        if self.listing_in_flight {
            // A sweep outranks a plain resync.
            if self.listing_again != Some(ListPurpose::Sweep) {
                self.listing_again = Some(purpose);
            }
            return;
        }
        self.listing_in_flight = true;
        let generation = self.bump();
        let wanted = self.wanted();
        let rt = Arc::clone(&self.rt);
        let node_id = self.node_id.clone();
        self.jobs.spawn(async move {
            JobResult::List {
                purpose,
                generation,
                result: work::list(rt, node_id, wanted).await,
            }
        });
    }

    /// Reconciles records with a listing taken at `generation`. Records that
    /// changed since, or have work in flight, are left alone: the listing may
    /// predate what they know.
    pub(super) async fn apply_listing(
        &mut self,
        purpose: ListPurpose,
        generation: u64,
        listing: Listing,
    ) {
        let mut ids: Vec<String> = self
            .tasks
            .iter()
            .filter(|(_, e)| {
                !e.rec.is_terminal() && matches!(e.job, Job::Idle) && e.generation <= generation
            })
            .map(|(id, _)| id.clone())
            .collect();
        ids.sort();
        for task_id in ids {
            self.reconcile_record(purpose, &task_id, &listing).await;
        }
        if purpose != ListPurpose::Startup && self.desired_seen {
            self.sweep(&listing);
        }
    }

    async fn reconcile_record(&mut self, purpose: ListPurpose, task_id: &str, listing: &Listing) {
        let Some(e) = self.tasks.get(task_id) else {
            return;
        };
        let attempt = e.rec.attempt();
        let stop_requested = e.rec.stop_requested;
        let stop_reason = e.rec.stop_reason();
        let state = e.rec.state();
        let known_container = e.rec.container_id().map(str::to_string);
        let mut mine: Vec<_> = listing
            .containers
            .iter()
            .filter(|c| c.task_id == task_id && c.attempt == attempt)
            .collect();
        // A live container wins over leftovers.
        mine.sort_by_key(|c| !c.status.is_live());
        let found = mine.first().map(|c| {
            let info = listing.details.get(&c.id).cloned();
            (c.status, info)
        });
        match found {
            Some(_) if stop_requested => self.spawn_stop(task_id),
            Some((status, info)) if status.is_live() => {
                if state == TaskState::Scheduled {
                    let r = Report::new(TaskState::Running, "running (found after agent restart)");
                    let r = match &info {
                        Some(info) => r.container(info),
                        None => r,
                    };
                    self.report(task_id, r).await;
                }
            }
            Some((status, Some(info))) if status.is_exited() => {
                let r = Report::exited(&exit_of(&info), false).container(&info);
                self.report(task_id, r).await;
            }
            Some((status, None)) if status.is_exited() => {
                warn!(
                    task_id = %task_id,
                    attempt, "exited container vanished while being inspected"
                );
            }
            // Created but never started (or being removed): a start job or the
            // desired set deals with it.
            Some(_) => {}
            None if stop_requested => {
                self.report(task_id, Report::new(TaskState::Completed, stop_reason))
                    .await;
            }
            None => {
                if let Some(id) = known_container {
                    let reason = format!(
                        "container {} disappeared (removed outside minkube?)",
                        short(&id)
                    );
                    // It ran, so the restart policy decides, as for an exit.
                    self.report(task_id, Report::failed(FailureKind::Exited, reason))
                        .await;
                } else if purpose != ListPurpose::Startup {
                    debug!(
                        task_id = %task_id,
                        attempt, "task never started; waiting for the desired set"
                    );
                }
            }
        }
    }

    /// Stops containers of this node that no unfinished record owns (the
    /// desired set dropped them) and removes those of attempts older than a
    /// record's: only the newest attempt of a task keeps a container. Other
    /// containers that ended by themselves stay: their logs are the user's.
    fn sweep(&mut self, listing: &Listing) {
        let mut strays = Vec::new();
        for c in &listing.containers {
            let ended = c.status.is_exited();
            let keep = match self.tasks.get(&c.task_id) {
                Some(e) if c.attempt < e.rec.attempt() => false,
                Some(e) if c.attempt == e.rec.attempt() => {
                    ended || !e.rec.is_terminal() || !e.rec.stop_requested
                }
                _ => ended,
            };
            if !keep {
                info!(container_id = %c.id, task_id = %c.task_id, attempt = c.attempt, "removing a container no task here owns");
                strays.push(c.id.clone());
            }
        }
        if !strays.is_empty() {
            self.spawn_cleanup(strays);
        }
    }
}

fn exit_of(info: &ContainerInfo) -> Exit {
    Exit {
        container_id: info.id.clone(),
        exit_code: info.exit_code,
        oom_killed: info.oom_killed,
        at: info.finished_at,
    }
}

fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}
