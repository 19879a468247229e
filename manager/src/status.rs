//! Applying what agents report: the state machine is driven by their
//! updates, never by the manager guessing. Stale and duplicate updates are
//! dropped by (attempt, sequence).
use std::borrow::Cow;
use std::sync::LazyLock;

use minkube::convert::task_state_name;
use minkube::pb::{self, DesiredState, FailureKind, TaskState};
use minkube_common::state_machine;

use crate::cluster::Cluster;
use crate::error::ManagerError;
use crate::policy::{self, Outcome, RetryTimings};
use crate::state::{State, TransitionError};
use crate::store::Mutation;
use crate::task_table::Slot;

/// What applying one update did.
#[derive(Debug, PartialEq, Eq)]
pub enum Applied {
    /// The task changed.
    Changed,
    /// Known, current, but nothing new (e.g. a repeated report).
    Unchanged,
    /// Ignored, and this node's attempt is over for good: the task finished
    /// or is gone, or a newer attempt has it. A terminal report of such an
    /// attempt can be released like an applied one: no DesiredSet will ask
    /// the node for it again.
    Superseded(&'static str),
    /// Ignored for now: a stale sequence, an impossible change, a malformed
    /// update, or an attempt this manager does not know yet.
    Ignored(&'static str),
    /// The node reported an attempt that was never placed on it: not a
    /// stale report but one node speaking for another.
    Forbidden,
}

/// Longest reason kept from an agent; longer ones are cut (an agent must
/// not be able to grow the store with one update).
pub const MAX_REASON_BYTES: usize = 1024;
/// Longest container id accepted (Docker's are 64 hex digits).
pub const MAX_CONTAINER_ID_BYTES: usize = 128;
/// Most host ports kept per update (a spec has at most 64 ports, each bound
/// on IPv4 and IPv6).
pub const MAX_REPORTED_PORTS: usize = 128;

/// The update with its free-text fields cut to bounds, or why it is refused.
fn bounded(u: &pb::TaskStatusUpdate) -> Result<Cow<'_, pb::TaskStatusUpdate>, &'static str> {
    if u.container_id.len() > MAX_CONTAINER_ID_BYTES {
        return Err("container id too long");
    }
    let long_host = |p: &pb::PortBinding| p.host_ip.len() > 64;
    if u.reason.len() <= MAX_REASON_BYTES
        && u.ports.len() <= MAX_REPORTED_PORTS
        && !u.ports.iter().any(long_host)
    {
        return Ok(Cow::Borrowed(u));
    }
    let mut v = u.clone();
    if v.reason.len() > MAX_REASON_BYTES {
        let mut cut = MAX_REASON_BYTES;
        while !v.reason.is_char_boundary(cut) {
            cut -= 1;
        }
        v.reason.truncate(cut);
        v.reason.push_str("...");
    }
    v.ports.truncate(MAX_REPORTED_PORTS);
    v.ports.retain(|p| !long_host(p));
    Ok(Cow::Owned(v))
}

fn fill(status: &mut pb::TaskStatus, u: &pb::TaskStatusUpdate) {
    if !u.container_id.is_empty() {
        status.container_id = u.container_id.clone();
    }
    // Ports of a finished container are no longer bound: drop them.
    if !u.ports.is_empty() || state_machine::is_terminal(u.state()) {
        status.ports = u.ports.clone();
    }
    if u.exit_code.is_some() {
        status.exit_code = u.exit_code;
    }
    if u.started_at.is_some() {
        status.started_at = u.started_at;
    }
    if u.finished_at.is_some() {
        status.finished_at = u.finished_at;
    }
}

/// Applies one update from `node_id` to the state.
pub fn apply_update(
    st: &mut State,
    node_id: &str,
    timings: &RetryTimings,
    u: &pb::TaskStatusUpdate,
    out: &mut Vec<Mutation>,
) -> Applied {
    let u = match bounded(u) {
        Ok(u) => u,
        Err(why) => return Applied::Ignored(why),
    };
    let u = u.as_ref();
    if let Some(Slot::Finished(_)) = st.tasks.slot(&u.task_id) {
        // E.g. a returning node reports stopping a container of a task the
        // manager already ended. Nothing can change a finished task, and its
        // history (which node ran which attempt) is no longer in memory.
        return Applied::Superseded("task already finished");
    }
    let Some(e) = st.tasks.get_mut(&u.task_id) else {
        // Deleted, or never created: nothing will be placed for it.
        return Applied::Superseded("unknown task");
    };
    let status = e.status();
    if status.node_id != node_id {
        // A node that once ran this attempt may still report it (e.g. after
        // a partition); one that never did is speaking for another node.
        let ran_it = e
            .events
            .iter()
            .any(|ev| ev.attempt == u.attempt && ev.node_id == node_id);
        // Every move is a new attempt, so the one it ran is over.
        return if ran_it {
            Applied::Superseded("task is placed on another node")
        } else {
            Applied::Forbidden
        };
    }
    if u.attempt < status.attempt {
        return Applied::Superseded("update for an earlier attempt");
    }
    if u.attempt != status.attempt {
        return Applied::Ignored("update for another attempt");
    }
    if u.sequence <= e.last_sequence {
        return Applied::Ignored("stale sequence");
    }
    let same_facts = (status.container_id == u.container_id || u.container_id.is_empty())
        && status.reason == u.reason;
    e.last_sequence = u.sequence;
    let from = e.state();
    let to = TaskState::try_from(u.state).unwrap_or(TaskState::Unspecified);
    // (Finished tasks were turned away above: `from` is not terminal.)
    if from == to && same_facts {
        st.put_task(&u.task_id, out);
        return Applied::Unchanged;
    }
    if !state_machine::can_transition(from, to) {
        tracing::warn!(
            task_id = %u.task_id,
            from = task_state_name(from),
            to = task_state_name(to),
            "agent reported an impossible state change; keeping the current state"
        );
        st.put_task(&u.task_id, out);
        return Applied::Ignored("illegal transition");
    }
    if to == TaskState::Running && from == TaskState::Scheduled {
        record_submit_to_running(&e.task);
    }
    let result = if state_machine::is_terminal(to) {
        finish_attempt(st, u, to, timings, out)
    } else {
        st.transition(
            &u.task_id,
            to,
            &u.reason,
            |s| {
                fill(s, u);
                if to == TaskState::Running {
                    // It started: transient trouble is over.
                    s.transient_failures = 0;
                }
            },
            out,
        )
    };
    match result {
        Ok(()) => Applied::Changed,
        Err(_) => Applied::Ignored("illegal transition"),
    }
}

/// Looked up once: the macro would search the registry for every task.
static SUBMIT_TO_RUNNING: LazyLock<metrics::Histogram> =
    LazyLock::new(|| metrics::histogram!("minkube_manager_submit_to_running_seconds"));

/// Time from CreateTask to the first attempt running.
fn record_submit_to_running(task: &pb::Task) {
    let first_attempt = task.status.as_ref().is_some_and(|s| s.attempt == 1);
    if let (true, Some(created)) = (first_attempt, task.created_at.as_ref()) {
        let created = minkube::convert::from_timestamp(created);
        if let Ok(d) = std::time::SystemTime::now().duration_since(created) {
            SUBMIT_TO_RUNNING.record(d.as_secs_f64());
        }
    }
}

/// How the agent's terminal report reads to the retry policy.
fn outcome_of(u: &pb::TaskStatusUpdate, to: TaskState) -> Outcome {
    if to == TaskState::Completed {
        return Outcome::Succeeded;
    }
    match u.failure() {
        FailureKind::Transient => Outcome::Transient(u.reason.clone()),
        FailureKind::Permanent => Outcome::Permanent(u.reason.clone()),
        FailureKind::Exited | FailureKind::Unspecified => Outcome::Exited(u.reason.clone()),
    }
}

/// An attempt ended: finish the task, or start a new attempt, as the
/// policy decides.
fn finish_attempt(
    st: &mut State,
    u: &pb::TaskStatusUpdate,
    to: TaskState,
    timings: &RetryTimings,
    out: &mut Vec<Mutation>,
) -> Result<(), TransitionError> {
    let Some(e) = st.tasks.live(&u.task_id) else {
        return Err(TransitionError::NotFound(u.task_id.clone()));
    };
    let outcome = outcome_of(u, to);
    let decision = policy::decide(&e.task, &outcome, timings, &mut rand::rng());
    if let Some(e) = st.tasks.get_mut(&u.task_id) {
        // The ended attempt's facts (exit code, times) stay visible either way.
        fill(e.task.status.get_or_insert_with(Default::default), u);
    }
    st.apply_decision(&u.task_id, &outcome, decision, out)
}

/// The reason a stop order carries (and the agent's report repeats).
pub fn stop_reason(task: &pb::Task) -> String {
    match task.desired_state() {
        DesiredState::Moving => format!(
            "node {} drained",
            task.status.as_ref().map_or("", |s| s.node_name.as_str())
        ),
        _ => "stopped by user".into(),
    }
}

/// What the node should run (DesiredSet) and what it must stop, for a new session.
pub fn desired_for(st: &State, node_id: &str) -> (pb::DesiredSet, Vec<pb::StopOrder>) {
    let mut set = pb::DesiredSet::default();
    let mut stops = Vec::new();
    for e in st.active_on(node_id) {
        let s = e.status();
        if e.task.desired_state() != DesiredState::Running {
            stops.push(pb::StopOrder {
                task_id: e.task.id.clone(),
                attempt: s.attempt,
                reason: stop_reason(&e.task),
                // A stop re-sent on reconnect continues the task's trace.
                trace_context: e.trace_context.as_ref().clone(),
            });
        } else {
            set.assignments.push(crate::scheduler::assignment_of(
                &e.task,
                e.trace_context.as_ref().clone(),
            ));
        }
    }
    (set, stops)
}

impl Cluster {
    /// Applies a batch of updates in one durable write. After a session's
    /// full sync, tells the agent what it should run.
    pub async fn apply_status(
        &self,
        node_id: &str,
        batch: pb::StatusBatch,
    ) -> Result<(), ManagerError> {
        let full_sync = batch.full_sync;
        let (freed, ended, follow_up, forbidden) = self
            .write(|st, out| {
                let mut freed = false;
                let mut ended = Vec::new();
                let mut forbidden = None;
                for u in &batch.updates {
                    let applied = apply_update(st, node_id, &self.config.retry, u, out);
                    if applied == Applied::Forbidden {
                        forbidden.get_or_insert_with(|| u.task_id.clone());
                    }
                    if let Applied::Ignored(why) | Applied::Superseded(why) = applied {
                        tracing::debug!(node_id, task_id = %u.task_id, why, "update ignored");
                    }
                    let terminal = state_machine::is_terminal(
                        TaskState::try_from(u.state).unwrap_or_default(),
                    );
                    freed |= applied == Applied::Changed && terminal;
                    // The manager has (or, once this write is durable, will
                    // have) this attempt's end, or no longer wants it: the
                    // agent may drop it.
                    let settled = matches!(
                        applied,
                        Applied::Changed | Applied::Unchanged | Applied::Superseded(_)
                    );
                    if terminal && settled {
                        ended.push(pb::ReleasedAttempt {
                            task_id: u.task_id.clone(),
                            attempt: u.attempt,
                        });
                    }
                }
                let follow_up = full_sync.then(|| desired_for(st, node_id));
                Ok((freed, ended, follow_up, forbidden))
            })
            .await?;
        if let Some(task_id) = forbidden {
            return Err(ManagerError::PermissionDenied(format!(
                "node {node_id} reported task {task_id}, which was never placed on it: the session is closed"
            )));
        }
        if freed {
            self.kick_scheduler();
        }
        if let Some(desired) = follow_up {
            // The DesiredSet lets the agent drop what it finished before.
            self.releases.session_synced(node_id);
            self.send_desired(node_id, desired).await;
        } else if let Some(attempts) = self.releases.note(node_id, ended) {
            self.send(
                node_id,
                pb::manager_message::Msg::Release(pb::Release { attempts }),
            )
            .await;
        }
        Ok(())
    }

    /// Tells a node again what it should run and stop, e.g. when it comes
    /// back from lost on its old session (a cut network that heals before
    /// either side noticed the connection was gone): whatever was moved off
    /// it meanwhile is stopped there.
    pub(crate) async fn resend_desired(&self, node_id: &str) {
        let desired = desired_for(&self.lock(), node_id);
        tracing::info!(
            node_id,
            tasks = desired.0.assignments.len(),
            stops = desired.1.len(),
            "node back from lost: sending its desired set again"
        );
        self.send_desired(node_id, desired).await;
    }

    async fn send_desired(
        &self,
        node_id: &str,
        (set, stops): (pb::DesiredSet, Vec<pb::StopOrder>),
    ) {
        self.send(node_id, pb::manager_message::Msg::DesiredSet(set))
            .await;
        for s in stops {
            self.send(node_id, pb::manager_message::Msg::Stop(s)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const T: RetryTimings = RetryTimings {
        backoff: minkube_common::retry::Backoff {
            initial: std::time::Duration::from_millis(100),
            max: std::time::Duration::from_secs(1),
            multiplier: 2.0,
        },
    };

    fn placed(st: &mut State, id: &str, node: &str) {
        crate::state::fixtures::placed(st, id, node, pb::RestartPolicy::Never);
    }

    fn update(id: &str, seq: u64, state: TaskState) -> pb::TaskStatusUpdate {
        pb::TaskStatusUpdate {
            task_id: id.into(),
            attempt: 1,
            sequence: seq,
            state: state as i32,
            reason: format!("r{seq}"),
            container_id: "c1".into(),
            exit_code: (state == TaskState::Completed).then_some(0),
            ..Default::default()
        }
    }

    /// The status of task `id`, to set up a case.
    fn status_of<'a>(st: &'a mut State, id: &str) -> &'a mut pb::TaskStatus {
        let e = st.tasks.get_mut(id).unwrap();
        e.task.status.get_or_insert_with(Default::default)
    }

    /// What became of `u`, reported by `node` (the mutations dropped).
    fn report(st: &mut State, node: &str, u: &pb::TaskStatusUpdate) -> Applied {
        apply_update(st, node, &T, u, &mut Vec::new())
    }

    #[test]
    fn applies_in_sequence_and_drops_stale() {
        let mut st = State::default();
        placed(&mut st, "t", "n1");
        assert_eq!(
            report(&mut st, "n1", &update("t", 1, TaskState::Running)),
            Applied::Changed
        );
        assert_eq!(st.tasks.get("t").unwrap().status().container_id, "c1");
        // A repeat of a sequence already applied changes nothing.
        assert_eq!(
            report(&mut st, "n1", &update("t", 1, TaskState::Running)),
            Applied::Ignored("stale sequence")
        );
        assert_eq!(
            report(&mut st, "n1", &update("t", 3, TaskState::Completed)),
            Applied::Changed
        );
        // Arrives late: must not resurrect the task.
        assert_eq!(
            report(&mut st, "n1", &update("t", 2, TaskState::Running)),
            Applied::Superseded("task already finished")
        );
        assert_eq!(st.tasks.get("t").unwrap().state(), TaskState::Completed);
        assert_eq!(st.tasks.get("t").unwrap().status().exit_code, Some(0));
    }

    #[test]
    fn a_node_that_once_had_the_attempt_is_ignored_not_refused() {
        let mut st = State::default();
        placed(&mut st, "t", "n1");
        // The attempt moved on (e.g. n1 was lost); n1 reports late.
        status_of(&mut st, "t").node_id = "n2".into();
        assert_eq!(
            report(&mut st, "n1", &update("t", 1, TaskState::Running)),
            Applied::Superseded("task is placed on another node")
        );
    }

    #[test]
    fn reports_about_finished_tasks_change_nothing() {
        let mut st = State::default();
        placed(&mut st, "t", "n1");
        let done = update("t", 1, TaskState::Completed);
        assert_eq!(report(&mut st, "n1", &done), Applied::Changed);
        // Its history is no longer in memory; any node's late word is dropped.
        for node in ["n2", "n1"] {
            let late = update("t", 2, TaskState::Failed);
            assert!(matches!(
                report(&mut st, node, &late),
                Applied::Superseded(_)
            ));
        }
        assert_eq!(st.tasks.get("t").unwrap().state(), TaskState::Completed);
    }

    #[test]
    fn ignores_other_nodes_attempts_and_impossible_changes() {
        let mut st = State::default();
        placed(&mut st, "t", "n1");
        let u = update("t", 1, TaskState::Running);
        // n2 never had this attempt: it speaks for another node.
        assert_eq!(report(&mut st, "n2", &u), Applied::Forbidden);
        let mut old = u.clone();
        old.attempt = 7;
        assert_eq!(
            report(&mut st, "n1", &old),
            Applied::Ignored("update for another attempt")
        );
        let mut bad = update("t", 2, TaskState::Pending);
        bad.reason = "x".into();
        assert_eq!(
            report(&mut st, "n1", &bad),
            Applied::Ignored("illegal transition")
        );
        assert_eq!(st.tasks.get("t").unwrap().state(), TaskState::Scheduled);
        assert_eq!(
            report(&mut st, "n1", &update("nope", 1, TaskState::Running)),
            Applied::Superseded("unknown task")
        );
    }

    #[test]
    fn an_earlier_attempt_on_the_same_node_is_superseded() {
        let mut st = State::default();
        placed(&mut st, "t", "n1");
        status_of(&mut st, "t").attempt = 2;
        assert_eq!(
            report(&mut st, "n1", &update("t", 1, TaskState::Failed)),
            Applied::Superseded("update for an earlier attempt")
        );
        assert_eq!(st.tasks.get("t").unwrap().state(), TaskState::Scheduled);
    }

    #[test]
    fn transient_failures_retry_and_exits_follow_the_restart_policy() {
        let mut st = State::default();
        placed(&mut st, "t", "n1");
        let mut out = Vec::new();
        let mut u = update("t", 1, TaskState::Failed);
        u.failure = FailureKind::Transient as i32;
        u.reason = "docker unavailable".into();
        assert_eq!(report(&mut st, "n1", &u), Applied::Changed);
        let e = &st.tasks.get("t").unwrap();
        assert_eq!(e.state(), TaskState::Scheduled);
        assert_eq!(e.status().attempt, 2);
        assert!(e.status().next_attempt_at.is_some());
        assert!(
            e.status().reason.starts_with("attempt 2/3 in"),
            "{}",
            e.status().reason
        );
        assert!(st.unplaced.contains_key("t"));
        // A late report of attempt 1 changes nothing.
        let mut late = update("t", 2, TaskState::Running);
        late.attempt = 1;
        assert_eq!(
            report(&mut st, "n1", &late),
            Applied::Superseded("task is placed on another node")
        );

        // The third transient failure gives up, and counts.
        let mut st = State::default();
        placed(&mut st, "g", "n1");
        st.tasks
            .get_mut("g")
            .unwrap()
            .task
            .status
            .as_mut()
            .unwrap()
            .transient_failures = 2;
        let mut u = update("g", 1, TaskState::Failed);
        u.failure = FailureKind::Transient as i32;
        u.reason = "docker unavailable".into();
        report(&mut st, "n1", &u);
        let g = st.tasks.get("g").unwrap();
        let g = g.status();
        assert_eq!((g.state(), g.transient_failures), (TaskState::Failed, 3));
        assert_eq!(g.reason, "gave up after 3 attempts: docker unavailable");

        let mut st = State::default();
        placed(&mut st, "p", "n1");
        let mut u = update("p", 1, TaskState::Failed);
        u.failure = FailureKind::Permanent as i32;
        u.reason = "image \"x\" not found".into();
        out.clear();
        apply_update(&mut st, "n1", &T, &u, &mut out);
        assert_eq!(st.tasks.get("p").unwrap().state(), TaskState::Failed);
        let failed_events = out
            .iter()
            .filter(|m| {
                matches!(m, Mutation::PutEvent { event, .. } if event.state() == TaskState::Failed)
            })
            .count();
        assert_eq!(failed_events, 1, "one FAILED event, no retry");

        let mut st = State::default();
        placed(&mut st, "a", "n1");
        st.tasks
            .get_mut("a")
            .unwrap()
            .task
            .spec
            .as_mut()
            .unwrap()
            .restart_policy = pb::RestartPolicy::Always as i32;
        apply_update(
            &mut st,
            "n1",
            &T,
            &update("a", 1, TaskState::Running),
            &mut out,
        );
        apply_update(
            &mut st,
            "n1",
            &T,
            &update("a", 2, TaskState::Completed),
            &mut out,
        );
        let e = &st.tasks.get("a").unwrap();
        assert_eq!(
            (e.state(), e.status().attempt, e.status().restarts),
            (TaskState::Scheduled, 2, 1)
        );
        assert_eq!(
            e.status().exit_code,
            Some(0),
            "the ended attempt's exit code stays visible"
        );
    }

    #[test]
    fn desired_set_lists_running_work_and_stops_unwanted() {
        let mut st = State::default();
        placed(&mut st, "keep", "n1");
        placed(&mut st, "stop", "n1");
        placed(&mut st, "other", "n2");
        st.tasks
            .get_mut("stop")
            .unwrap()
            .task
            .set_desired_state(DesiredState::Stopped);
        let (set, stops) = desired_for(&st, "n1");
        let ids: Vec<_> = set.assignments.iter().map(|a| a.task_id.as_str()).collect();
        assert_eq!(ids, ["keep"]);
        assert_eq!(stops.len(), 1);
        assert_eq!(stops[0].task_id, "stop");
    }
}
