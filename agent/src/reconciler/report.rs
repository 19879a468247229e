//! Building, recording and sending status updates. The order is always:
//! check the transition, bump the sequence, write the record, then send.
use minkube::convert::{now, task_state_name};
use minkube::pb::{self, FailureKind, TaskState};
use minkube_common::state_machine;
use prost_types::Timestamp;
use tracing::{info, warn};

use super::{Exit, Outbound, Reconciler};
use crate::runtime::ContainerInfo;

/// Reason of a task stopped on the manager's order.
pub(super) const STOPPED_BY_USER: &str = "stopped by user";

/// How an ended container is reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitOutcome {
    /// COMPLETED or FAILED.
    pub state: TaskState,
    /// Reason for the user.
    pub reason: String,
    /// EXITED when the container failed by itself; unspecified otherwise.
    pub failure: FailureKind,
}

/// State, reason and failure kind for a container that ended. Every failure
/// of a container that ran (non-zero exit, OOM kill, unknown exit) is
/// EXITED: the restart policy decides, not the retry budget.
pub fn exit_outcome(exit_code: Option<i32>, oom_killed: bool, stop_requested: bool) -> ExitOutcome {
    let failed = |reason: String| ExitOutcome {
        state: TaskState::Failed,
        reason,
        failure: FailureKind::Exited,
    };
    if stop_requested {
        return ExitOutcome {
            state: TaskState::Completed,
            reason: STOPPED_BY_USER.to_string(),
            failure: FailureKind::Unspecified,
        };
    }
    if oom_killed {
        return failed("out of memory (OOM killed)".to_string());
    }
    match exit_code {
        Some(0) => ExitOutcome {
            state: TaskState::Completed,
            reason: "exited with code 0".to_string(),
            failure: FailureKind::Unspecified,
        },
        Some(code) => failed(format!("exited with code {code}")),
        None => failed("container exited; its exit code is unknown".to_string()),
    }
}

/// One observed change; unset fields keep their previous values.
#[derive(Debug, Clone, Default)]
pub(super) struct Report {
    state: TaskState,
    reason: String,
    container_id: Option<String>,
    ports: Option<Vec<pb::PortBinding>>,
    started_at: Option<Timestamp>,
    exit_code: Option<i32>,
    finished_at: Option<Timestamp>,
    failure: FailureKind,
}

impl Report {
    pub(super) fn new(state: TaskState, reason: impl Into<String>) -> Self {
        Self {
            state,
            reason: reason.into(),
            ..Default::default()
        }
    }

    /// A failure of the given kind.
    pub(super) fn failed(failure: FailureKind, reason: impl Into<String>) -> Self {
        Self {
            failure,
            ..Self::new(TaskState::Failed, reason)
        }
    }

    /// Container id, ports and times from Docker.
    pub(super) fn container(mut self, info: &ContainerInfo) -> Self {
        if !info.id.is_empty() {
            self.container_id = Some(info.id.clone());
        }
        self.ports = Some(info.ports.clone());
        self.started_at = info.started_at;
        if info.status.is_exited() {
            self.exit_code = info.exit_code;
            self.finished_at = info.finished_at;
        }
        self
    }

    pub(super) fn exit_code(mut self, code: Option<i32>) -> Self {
        self.exit_code = code;
        self
    }

    /// The terminal report for an ended container.
    pub(super) fn exited(exit: &Exit, stop_requested: bool) -> Self {
        let outcome = exit_outcome(exit.exit_code, exit.oom_killed, stop_requested);
        let mut r = Self::new(outcome.state, outcome.reason).exit_code(exit.exit_code);
        r.failure = outcome.failure;
        if !exit.container_id.is_empty() {
            r.container_id = Some(exit.container_id.clone());
        }
        r.finished_at = exit.at;
        r
    }
}

impl Reconciler {
    /// Applies a report to the task's record and writes it; returns the
    /// update to send, or `None` if the task is unknown or the transition is
    /// illegal.
    pub(super) fn record_update(
        &mut self,
        task_id: &str,
        r: Report,
    ) -> Option<pb::TaskStatusUpdate> {
        let entry = self.tasks.get_mut(task_id)?;
        let attempt = entry.rec.attempt();
        let from = entry.rec.state();
        if let Err(e) = state_machine::check(from, r.state) {
            warn!(task_id = %task_id, attempt, error = %e, reason = %r.reason, "not reporting an illegal transition");
            return None;
        }
        let failure = if r.state == TaskState::Failed {
            if r.failure == FailureKind::Unspecified {
                warn!(task_id = %task_id, attempt, reason = %r.reason, "a failure without a kind; reporting it as exited");
                FailureKind::Exited
            } else {
                r.failure
            }
        } else {
            FailureKind::Unspecified
        };
        let prev = entry.rec.last_update.take().unwrap_or_default();
        let terminal = state_machine::is_terminal(r.state);
        entry.rec.sequence += 1;
        let update = pb::TaskStatusUpdate {
            task_id: task_id.to_string(),
            attempt,
            sequence: entry.rec.sequence,
            state: r.state as i32,
            reason: r.reason,
            container_id: r.container_id.unwrap_or(prev.container_id),
            exit_code: r.exit_code,
            // A finished container holds no ports any more.
            ports: if terminal {
                Vec::new()
            } else {
                r.ports.unwrap_or(prev.ports)
            },
            started_at: r.started_at.or(prev.started_at),
            finished_at: if terminal {
                r.finished_at.or_else(|| Some(now()))
            } else {
                None
            },
            observed_at: Some(now()),
            failure: failure as i32,
        };
        entry.rec.last_update = Some(update.clone());
        info!(
            task_id = %task_id,
            attempt,
            sequence = update.sequence,
            state = %task_state_name(r.state),
            reason = %update.reason,
            "task state"
        );
        self.touch(task_id);
        self.stage(task_id);
        self.note_running(from, r.state);
        Some(update)
    }

    /// Records and sends one update.
    pub(super) async fn report(&mut self, task_id: &str, r: Report) {
        if let Some(update) = self.record_update(task_id, r) {
            self.queue(Outbound::Update(update));
        }
    }

    /// Sends the last update again under a new sequence: for a manager that
    /// still lists as active a task whose end it was already told.
    pub(super) async fn resend_last(&mut self, task_id: &str) {
        let Some(entry) = self.tasks.get_mut(task_id) else {
            return;
        };
        let Some(mut update) = entry.rec.last_update.clone() else {
            return;
        };
        entry.rec.sequence += 1;
        update.sequence = entry.rec.sequence;
        update.observed_at = Some(now());
        entry.rec.last_update = Some(update.clone());
        warn!(
            task_id = %task_id,
            attempt = update.attempt,
            sequence = update.sequence,
            "manager still lists a finished task; reporting its end again"
        );
        self.stage(task_id);
        self.queue(Outbound::Update(update));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(state: TaskState, reason: &str, failure: FailureKind) -> ExitOutcome {
        ExitOutcome {
            state,
            reason: reason.into(),
            failure,
        }
    }

    #[test]
    fn exit_rules() {
        assert_eq!(
            exit_outcome(Some(0), false, false),
            outcome(
                TaskState::Completed,
                "exited with code 0",
                FailureKind::Unspecified
            )
        );
        assert_eq!(
            exit_outcome(Some(3), false, false),
            outcome(TaskState::Failed, "exited with code 3", FailureKind::Exited)
        );
        assert_eq!(
            exit_outcome(Some(137), true, false),
            outcome(
                TaskState::Failed,
                "out of memory (OOM killed)",
                FailureKind::Exited
            )
        );
        assert_eq!(
            exit_outcome(Some(137), true, true),
            outcome(
                TaskState::Completed,
                "stopped by user",
                FailureKind::Unspecified
            )
        );
        let unknown = exit_outcome(None, false, false);
        assert_eq!(
            (unknown.state, unknown.failure),
            (TaskState::Failed, FailureKind::Exited)
        );
    }
}
