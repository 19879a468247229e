//! What happens after an attempt ends or its node is lost: retry (transient
//! errors), restart (restart policy), or finish. Pure functions of the task
//! and the outcome, so every rule is unit-tested.
use std::time::Duration;

use minkube::pb::{self, DesiredState, RestartPolicy, TaskState};
use minkube_common::retry::Backoff;

/// Default for `TaskSpec.max_attempts` = 0.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
/// Default for `TaskSpec.max_restarts` = 0.
pub const DEFAULT_MAX_RESTARTS: u32 = 3;

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The container exited 0.
    Succeeded,
    /// The container ran and failed (non-zero exit, OOM, vanished).
    Exited(String),
    /// Might work next time (Docker unreachable, timeout, registry unreachable).
    Transient(String),
    /// Will not work next time (image not found, invalid spec).
    Permanent(String),
    /// The node was lost while the container ran.
    NodeLostRunning,
    /// The node was lost before the container started.
    NodeLostBeforeStart,
}

impl Outcome {
    /// Counts against `max_attempts`.
    pub fn is_transient(&self) -> bool {
        matches!(self, Outcome::Transient(_) | Outcome::NodeLostBeforeStart)
    }
}

/// Whether a new attempt is a restart or a retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptKind {
    /// Restart policy: counts against `max_restarts`.
    Restart,
    /// Transient error: counts against `max_attempts`.
    Retry,
    /// Off a drained node: counts against nothing.
    Move,
}

/// The decision.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// End the task in this state with this reason.
    Finish(TaskState, String),
    /// Make a new attempt after `delay`.
    Again {
        /// Restart or retry.
        kind: AttemptKind,
        /// Backoff before the attempt may be placed.
        delay: Duration,
        /// Event reason, e.g. "attempt 2/3 in 1s: docker unavailable".
        reason: String,
    },
}

/// Backoffs for retries and restarts.
#[derive(Debug, Clone, Copy)]
pub struct RetryTimings {
    /// Curve of both retries and restarts.
    pub backoff: Backoff,
}

fn secs(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

fn or_default(v: u32, default: u32) -> u32 {
    if v == 0 {
        default
    } else {
        v
    }
}

/// Decides what follows `outcome` for `task`.
pub fn decide(
    task: &pb::Task,
    outcome: &Outcome,
    t: &RetryTimings,
    rng: &mut impl rand::Rng,
) -> Decision {
    let spec = task.spec.clone().unwrap_or_default();
    let status = task.status.clone().unwrap_or_default();
    if task.desired_state() == DesiredState::Stopped {
        return Decision::Finish(TaskState::Completed, "stopped by user".into());
    }
    let policy = spec.restart_policy();
    let next = status.attempt.saturating_add(1);
    if task.desired_state() == DesiredState::Moving {
        return moved(policy, &status);
    }
    match outcome {
        Outcome::Succeeded => {
            if policy == RestartPolicy::Always {
                let delay = t.backoff.delay(status.restarts, rng);
                Decision::Again {
                    kind: AttemptKind::Restart,
                    delay,
                    reason: format!(
                        "restarting as attempt {next} in {}: exited with code 0 and the restart policy is always",
                        secs(delay)
                    ),
                }
            } else {
                Decision::Finish(TaskState::Completed, "exited with code 0".into())
            }
        }
        Outcome::Exited(why) => restart(&spec, &status, why, t, rng),
        Outcome::NodeLostRunning => restart(&spec, &status, "node lost", t, rng),
        Outcome::Permanent(why) => Decision::Finish(TaskState::Failed, why.clone()),
        Outcome::Transient(why) => retry(&spec, &status, why, t, rng),
        Outcome::NodeLostBeforeStart => {
            retry(&spec, &status, "node lost before the task started", t, rng)
        }
    }
}

/// After a drained node's agent stopped the attempt (or the node was lost
/// meanwhile): a started task with restart policy never ends, every other
/// task runs again elsewhere at once.
fn moved(policy: RestartPolicy, status: &pb::TaskStatus) -> Decision {
    let node = &status.node_name;
    let started = status.state() == TaskState::Running;
    if started && matches!(policy, RestartPolicy::Never | RestartPolicy::Unspecified) {
        return Decision::Finish(
            TaskState::Completed,
            format!("stopped: node {node} was drained and the restart policy is never"),
        );
    }
    Decision::Again {
        kind: AttemptKind::Move,
        delay: Duration::ZERO,
        reason: format!(
            "moving as attempt {}: node {node} was drained",
            status.attempt.saturating_add(1)
        ),
    }
}

fn restart(
    spec: &pb::TaskSpec,
    status: &pb::TaskStatus,
    why: &str,
    t: &RetryTimings,
    rng: &mut impl rand::Rng,
) -> Decision {
    let policy = spec.restart_policy();
    let next = status.attempt.saturating_add(1);
    let limit = or_default(spec.max_restarts, DEFAULT_MAX_RESTARTS);
    let allowed = match policy {
        RestartPolicy::Always => true,
        RestartPolicy::OnFailure => status.restarts < limit,
        RestartPolicy::Never | RestartPolicy::Unspecified => false,
    };
    if !allowed {
        return Decision::Finish(TaskState::Failed, why.to_string());
    }
    let delay = t.backoff.delay(status.restarts, rng);
    let bound = if policy == RestartPolicy::Always {
        String::new()
    } else {
        format!(" (restart {}/{limit})", status.restarts + 1)
    };
    Decision::Again {
        kind: AttemptKind::Restart,
        delay,
        reason: format!(
            "restarting as attempt {next}{bound} in {}: {why}",
            secs(delay)
        ),
    }
}

fn retry(
    spec: &pb::TaskSpec,
    status: &pb::TaskStatus,
    why: &str,
    t: &RetryTimings,
    rng: &mut impl rand::Rng,
) -> Decision {
    let max = or_default(spec.max_attempts, DEFAULT_MAX_ATTEMPTS);
    let failures = status.transient_failures.saturating_add(1);
    if failures >= max {
        return Decision::Finish(
            TaskState::Failed,
            format!("gave up after {failures} attempts: {why}"),
        );
    }
    let delay = t.backoff.delay(status.transient_failures, rng);
    Decision::Again {
        kind: AttemptKind::Retry,
        delay,
        reason: format!("attempt {}/{max} in {}: {why}", failures + 1, secs(delay)),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn timings() -> RetryTimings {
        RetryTimings {
            backoff: Backoff {
                initial: Duration::from_secs(1),
                max: Duration::from_secs(60),
                multiplier: 2.0,
            },
        }
    }

    fn task(policy: RestartPolicy, restarts: u32, transient: u32) -> pb::Task {
        pb::Task {
            spec: Some(pb::TaskSpec {
                restart_policy: policy as i32,
                ..Default::default()
            }),
            desired_state: DesiredState::Running as i32,
            status: Some(pb::TaskStatus {
                attempt: 1 + restarts + transient,
                restarts,
                transient_failures: transient,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn decide_(t: &pb::Task, o: Outcome) -> Decision {
        decide(t, &o, &timings(), &mut rand::rng())
    }

    #[test]
    fn never_finishes() {
        let t = task(RestartPolicy::Never, 0, 0);
        assert_eq!(
            decide_(&t, Outcome::Succeeded),
            Decision::Finish(TaskState::Completed, "exited with code 0".into())
        );
        assert_eq!(
            decide_(&t, Outcome::Exited("exited with code 3".into())),
            Decision::Finish(TaskState::Failed, "exited with code 3".into())
        );
        assert_eq!(
            decide_(&t, Outcome::NodeLostRunning),
            Decision::Finish(TaskState::Failed, "node lost".into())
        );
    }

    #[test]
    fn on_failure_restarts_up_to_its_limit() {
        let t = task(RestartPolicy::OnFailure, 2, 0);
        let Decision::Again { kind, reason, .. } =
            decide_(&t, Outcome::Exited("exited with code 3".into()))
        else {
            panic!("expected a restart");
        };
        assert_eq!(kind, AttemptKind::Restart);
        assert!(
            reason.contains("restart 3/3") && reason.contains("code 3"),
            "{reason}"
        );
        let t = task(RestartPolicy::OnFailure, 3, 0);
        assert!(matches!(
            decide_(&t, Outcome::Exited("x".into())),
            Decision::Finish(TaskState::Failed, _)
        ));
        assert!(matches!(
            decide_(&t, Outcome::Succeeded),
            Decision::Finish(TaskState::Completed, _)
        ));
    }

    #[test]
    fn always_restarts_even_after_success_and_node_loss() {
        let t = task(RestartPolicy::Always, 50, 0);
        assert!(matches!(
            decide_(&t, Outcome::Succeeded),
            Decision::Again {
                kind: AttemptKind::Restart,
                ..
            }
        ));
        assert!(matches!(
            decide_(&t, Outcome::NodeLostRunning),
            Decision::Again {
                kind: AttemptKind::Restart,
                ..
            }
        ));
        // Permanent errors beat the restart policy.
        assert!(matches!(
            decide_(&t, Outcome::Permanent("image gone".into())),
            Decision::Finish(TaskState::Failed, _)
        ));
    }

    #[test]
    fn transient_errors_retry_with_growing_delay_then_give_up() {
        let mut delays = Vec::new();
        for failures in 0..2 {
            let t = task(RestartPolicy::Never, 0, failures);
            let Decision::Again {
                kind,
                delay,
                reason,
            } = decide_(&t, Outcome::Transient("docker unavailable".into()))
            else {
                panic!("expected a retry");
            };
            assert_eq!(kind, AttemptKind::Retry);
            assert!(
                reason.starts_with(&format!("attempt {}/3 in", failures + 2)),
                "{reason}"
            );
            delays.push(delay);
        }
        assert!(delays[0] <= Duration::from_secs(1) && delays[1] >= Duration::from_secs(1));
        let t = task(RestartPolicy::Always, 0, 2);
        assert_eq!(
            decide_(&t, Outcome::Transient("docker unavailable".into())),
            Decision::Finish(
                TaskState::Failed,
                "gave up after 3 attempts: docker unavailable".into()
            )
        );
        let t = task(RestartPolicy::Never, 0, 0);
        assert!(matches!(
            decide_(&t, Outcome::NodeLostBeforeStart),
            Decision::Again {
                kind: AttemptKind::Retry,
                ..
            }
        ));
    }

    #[test]
    fn tasks_of_a_drained_node_move_unless_started_with_policy_never() {
        let moving = |policy, state| {
            let mut t = task(policy, 0, 0);
            t.set_desired_state(DesiredState::Moving);
            let s = t.status.get_or_insert_with(Default::default);
            s.set_state(state);
            s.node_name = "w1".into();
            s.attempt = 1;
            t
        };
        let ended = decide_(
            &moving(RestartPolicy::Never, TaskState::Running),
            Outcome::Succeeded,
        );
        assert_eq!(
            ended,
            Decision::Finish(
                TaskState::Completed,
                "stopped: node w1 was drained and the restart policy is never".into()
            )
        );
        for (policy, state) in [
            (RestartPolicy::Never, TaskState::Scheduled),
            (RestartPolicy::OnFailure, TaskState::Running),
            (RestartPolicy::Always, TaskState::Running),
        ] {
            assert_eq!(
                decide_(&moving(policy, state), Outcome::Exited("x".into())),
                Decision::Again {
                    kind: AttemptKind::Move,
                    delay: Duration::ZERO,
                    reason: "moving as attempt 2: node w1 was drained".into()
                },
                "{policy:?} {state:?}"
            );
        }
    }

    #[test]
    fn stopped_tasks_never_come_back() {
        let mut t = task(RestartPolicy::Always, 0, 0);
        t.set_desired_state(DesiredState::Stopped);
        assert_eq!(
            decide_(&t, Outcome::Exited("x".into())),
            Decision::Finish(TaskState::Completed, "stopped by user".into())
        );
    }
}
