//! Manager messages: assignments, stop orders, the desired set and the
//! full-sync snapshot.
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use minkube::convert::task_state_name;
use minkube::pb::{self, TaskState};
use minkube_common::trace_context;
use tokio::sync::watch;
use tracing::{debug, error, info, warn, Instrument as _};

use super::report::Report;

/// Why the agent stops a container the manager's desired set leaves out.
const NOT_DESIRED: &str =
    "stopped: no longer wanted on this node (moved, finished or stopped while the node was away)";
use super::work::{self, JobResult, ListPurpose};
use super::{Entry, Input, Job, Outbound, Reconciler};
use crate::local_store::{valid_task_id, TaskRecord};

impl Reconciler {
    pub(super) async fn on_input(&mut self, input: Input) {
        match input {
            Input::Assignment(a) => self.on_assignment(*a, false).await,
            Input::Stop(order) => self.on_stop_order(order).await,
            Input::DesiredSet(set) => self.on_desired_set(set).await,
            Input::FullSync { session } => self.on_full_sync(session).await,
            Input::NodeId(id) => self.on_node_id(id),
            Input::Release(r) => self.on_release(r),
        }
    }

    /// Drops the records of finished attempts the manager has stored. A
    /// record of another attempt, or of one still running or being stopped,
    /// stays. The deletions are synced with the round; one lost in a crash
    /// only brings back a finished record, which the next session settles.
    fn on_release(&mut self, release: pb::Release) {
        let mut dropped = 0usize;
        for a in release.attempts {
            let Some(e) = self.tasks.get_mut(&a.task_id) else {
                continue;
            };
            if e.rec.attempt() != a.attempt || !e.rec.is_terminal() {
                continue;
            }
            match e.job {
                Job::Idle => {}
                // Its container is the record's: dropped when the job ends.
                Job::Starting { .. } if e.start_overtaken() => {
                    e.release_held = true;
                    continue;
                }
                _ => continue,
            }
            if self.drop_released(&a.task_id) {
                dropped += 1;
            }
        }
        debug!(dropped, "released task records dropped");
    }

    /// Drops the record of an attempt the manager released; whether it could.
    pub(super) fn drop_released(&mut self, task_id: &str) -> bool {
        if let Err(err) = self.store.stage_delete(task_id) {
            error!(task_id = %task_id, error = %err, "cannot drop a released task record");
            return false;
        }
        self.forget_entry(task_id);
        true
    }

    async fn on_assignment(&mut self, a: pb::Assignment, from_desired_set: bool) {
        if !valid_task_id(&a.task_id) {
            warn!(task_id = %a.task_id, "ignoring an assignment with an unusable task id");
            return;
        }
        let ack = Outbound::Ack(pb::Ack {
            task_id: a.task_id.clone(),
            attempt: a.attempt,
        });
        let mut sequence = 0;
        if let Some(e) = self.tasks.get(&a.task_id) {
            let known = e.rec.attempt();
            if known == a.attempt {
                self.queue(ack);
                if from_desired_set {
                    self.resume(&a.task_id).await;
                }
                return;
            }
            if known > a.attempt {
                debug!(task_id = %a.task_id, attempt = a.attempt, known, "ignoring an assignment for an older attempt");
                return;
            }
            sequence = e.rec.sequence;
            self.retire_attempt(&a.task_id, a.attempt);
        }
        let task_id = a.task_id.clone();
        let attempt = a.attempt;
        // The trace context links this log line to the request that placed the task.
        let traceparent = a
            .trace_context
            .get("traceparent")
            .map_or("", String::as_str);
        info!(task_id = %task_id, attempt, traceparent = %traceparent, "task assigned");
        let mut rec = TaskRecord::new(a);
        // The sequence outlives attempts: the manager must never see it go back.
        rec.sequence = sequence;
        let generation = self.bump();
        self.hold(task_id.clone(), Entry::new(rec, generation));
        // One write records the assignment and its first update, before the ack.
        let update = self.record_update(&task_id, Report::new(TaskState::Scheduled, "preparing"));
        self.queue(ack);
        if let Some(update) = update {
            self.queue(Outbound::Update(update));
        }
        // The record is durable before its container exists, and the ack
        // is on its way before the start can report.
        self.flush().await;
        self.spawn_start(&task_id);
    }

    /// For a desired task the agent already knows: start it if it was never
    /// started (e.g. after a restart); re-report it if it already ended.
    async fn resume(&mut self, task_id: &str) {
        let Some(e) = self.tasks.get(task_id) else {
            return;
        };
        if e.rec.is_terminal() {
            if e.synced_terminal {
                self.resend_last(task_id).await;
            }
            return;
        }
        let idle = matches!(e.job, Job::Idle);
        if idle && !e.rec.stop_requested && e.rec.state() != TaskState::Running {
            self.spawn_start(task_id);
        }
    }

    /// Gives up an older attempt that a newer one replaces: cancels its
    /// start. Its containers are removed by the job that follows (the new
    /// attempt's start, or the stop), before that job goes on; from here on
    /// nothing of the old attempt is reported (events, progress and job
    /// results carry its attempt, which no record holds any more).
    fn retire_attempt(&mut self, task_id: &str, next_attempt: u32) {
        let Some(e) = self.tasks.get(task_id) else {
            return;
        };
        info!(task_id = %task_id, attempt = e.rec.attempt(), next_attempt, state = %task_state_name(e.rec.state()), "attempt replaced by a newer one");
        if let Job::Starting { cancel } = &e.job {
            let _ = cancel.send(true);
        }
    }

    async fn on_stop_order(&mut self, order: pb::StopOrder) {
        if !valid_task_id(&order.task_id) {
            warn!(task_id = %order.task_id, "ignoring a stop order with an unusable task id");
            return;
        }
        let task_id = order.task_id.clone();
        info!(task_id = %task_id, attempt = order.attempt, reason = %order.reason, "stop ordered");
        let known = self
            .tasks
            .get(&task_id)
            .map(|e| (e.rec.attempt(), e.rec.sequence));
        match known {
            Some((attempt, _)) if attempt == order.attempt => {
                self.request_stop(&task_id, &order.reason, &order.trace_context);
            }
            Some((attempt, _)) if attempt > order.attempt => {
                debug!(task_id = %task_id, attempt = order.attempt, known = attempt, "ignoring a stop order for an older attempt");
            }
            other => {
                // An attempt this agent never recorded: keep a record so the
                // stop can be reported, and remove whatever container exists.
                if other.is_some() {
                    self.retire_attempt(&task_id, order.attempt);
                }
                let mut rec = TaskRecord::new(pb::Assignment {
                    task_id: task_id.clone(),
                    attempt: order.attempt,
                    ..Default::default()
                });
                rec.sequence = other.map_or(0, |(_, seq)| seq);
                let generation = self.bump();
                self.hold(task_id.clone(), Entry::new(rec, generation));
                self.request_stop(&task_id, &order.reason, &order.trace_context);
            }
        }
    }

    /// Marks a task for stopping (with the reason its report will carry) and
    /// gets the stop going.
    pub(super) fn request_stop(
        &mut self,
        task_id: &str,
        reason: &str,
        trace_context: &HashMap<String, String>,
    ) {
        let Some(e) = self.tasks.get_mut(task_id) else {
            return;
        };
        if e.rec.is_terminal() {
            debug!(task_id = %task_id, "stop ordered for a finished task; nothing to do");
            return;
        }
        if !e.rec.stop_requested {
            e.rec.stop_requested = true;
            e.rec.stop_reason = reason.to_string();
            e.rec.stop_trace_context = trace_context.clone();
            self.persist(task_id);
            self.touch(task_id);
        }
        let Some(e) = self.tasks.get(task_id) else {
            return;
        };
        match &e.job {
            // The start job notices, and its result leads to the report.
            Job::Starting { cancel } => {
                let _ = cancel.send(true);
            }
            Job::Stopping => {}
            Job::Idle => self.spawn_stop(task_id),
        }
    }

    async fn on_desired_set(&mut self, set: pb::DesiredSet) {
        self.desired_seen = true;
        info!(tasks = set.assignments.len(), "desired set received");
        let listed: HashSet<String> = set.assignments.iter().map(|a| a.task_id.clone()).collect();
        for a in set.assignments {
            self.on_assignment(a, true).await;
        }
        let mut others: Vec<String> = self
            .tasks
            .keys()
            .filter(|id| !listed.contains(*id))
            .cloned()
            .collect();
        others.sort();
        for task_id in others {
            let Some(e) = self.tasks.get(&task_id) else {
                continue;
            };
            if !e.rec.is_terminal() {
                info!(task_id = %task_id, attempt = e.rec.attempt(), "task not in the desired set; stopping it");
                self.request_stop(&task_id, NOT_DESIRED, &Default::default());
            } else if e.synced_terminal && matches!(e.job, Job::Idle) {
                // The manager has its end and no longer lists it.
                self.forget(&task_id);
            }
        }
        self.request_listing(ListPurpose::Sweep);
    }

    async fn on_full_sync(&mut self, session: u64) {
        let mut ids: Vec<&String> = self.tasks.keys().collect();
        ids.sort();
        let updates: Vec<pb::TaskStatusUpdate> = ids
            .into_iter()
            .filter_map(|id| self.tasks.get(id)?.rec.last_update.clone())
            .collect();
        for e in self.tasks.values_mut() {
            e.synced_terminal = e.rec.is_terminal();
        }
        info!(session, tasks = updates.len(), "full sync");
        self.queue(Outbound::FullSync { session, updates });
    }

    fn on_node_id(&mut self, node_id: String) {
        if node_id == self.node_id {
            return;
        }
        warn!(old = %self.node_id, new = %node_id, "the manager assigned a new node id; containers labelled with the old one are handled through the task records");
        self.node_id = node_id;
        self.start_watcher();
        self.request_listing(ListPurpose::Resync);
    }

    pub(super) fn spawn_start(&mut self, task_id: &str) {
        let Some(e) = self.tasks.get_mut(task_id) else {
            return;
        };
        let Some(assignment) = e.rec.assignment.clone() else {
            return;
        };
        let (cancel, cancel_rx) = watch::channel(false);
        e.job = Job::Starting { cancel };
        e.pending_exit = None;
        e.started_seen = None;
        e.release_held = false;
        let rt = Arc::clone(&self.rt);
        let node_id = self.node_id.clone();
        let progress = self.internal_tx.clone();
        let stop_timeout = self.settings.stop_timeout;
        self.touch(task_id);
        // A child of the manager's scheduling span: the trace goes on here,
        // and into the container through TRACEPARENT.
        let span = tracing::info_span!(
            "task.start",
            task_id = %assignment.task_id,
            attempt = assignment.attempt,
            node_id = %node_id,
        );
        trace_context::set_parent(&span, &assignment.trace_context);
        self.jobs.spawn(
            async move {
                let task_id = assignment.task_id.clone();
                let attempt = assignment.attempt;
                let outcome =
                    work::start(rt, node_id, assignment, stop_timeout, cancel_rx, progress).await;
                JobResult::Start {
                    task_id,
                    attempt,
                    outcome,
                }
            }
            .instrument(span),
        );
    }

    pub(super) fn spawn_stop(&mut self, task_id: &str) {
        let Some(e) = self.tasks.get_mut(task_id) else {
            return;
        };
        e.job = Job::Stopping;
        let attempt = e.rec.attempt();
        let known = e.rec.container_id().map(str::to_string);
        let rt = Arc::clone(&self.rt);
        let node_id = self.node_id.clone();
        let timeout = self.settings.stop_timeout;
        let id = task_id.to_string();
        let span = tracing::info_span!("task.stop", task_id = %id, attempt, node_id = %node_id);
        trace_context::set_parent(&span, &e.rec.stop_trace_context);
        self.touch(task_id);
        self.jobs.spawn(
            async move {
                let outcome = work::stop(rt, node_id, id.clone(), attempt, known, timeout).await;
                JobResult::Stop {
                    task_id: id,
                    attempt,
                    outcome,
                }
            }
            .instrument(span),
        );
    }

    pub(super) async fn on_stop_done(
        &mut self,
        task_id: &str,
        attempt: u32,
        outcome: Result<Option<i32>, String>,
    ) {
        let Some(e) = self.tasks.get_mut(task_id) else {
            return;
        };
        if e.rec.attempt() != attempt || !matches!(e.job, Job::Stopping) {
            return;
        }
        e.job = Job::Idle;
        let reason = e.rec.stop_reason();
        match outcome {
            Ok(exit_code) => {
                self.report(
                    task_id,
                    Report::new(TaskState::Completed, reason).exit_code(exit_code),
                )
                .await;
            }
            Err(reason) => {
                // Left marked: the next re-list tries again.
                warn!(task_id = %task_id, attempt, error = %reason, "cannot stop the container; will retry on the next re-list");
                self.touch(task_id);
            }
        }
    }
}
