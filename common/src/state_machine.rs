//! THE task state machine. Every change of a task's observed state, in the
//! manager and in the agent, goes through [`check`]; the table below is the
//! only place the legal edges are written down.
use minkube::convert::task_state_name;
use minkube::pb::TaskState;

use TaskState::{Completed, Failed, Pending, Running, Scheduled};

/// Every legal `(from, to)` pair. Anything else is refused.
///
/// Beyond the core lifecycle there are three extra edges, each for one real case:
/// - `Pending -> Completed`: stopped by the user before it was placed on a node
///   (a task that never started cannot complete any other way).
/// - `Scheduled -> Completed`: stopped after placement but before its container ran.
/// - `Running -> Scheduled`: a new attempt. The container ended or its node was
///   lost, and the restart policy asks to run the task again; the new attempt
///   starts from Scheduled like the first one.
pub const TRANSITIONS: &[(TaskState, TaskState)] = &[
    (Pending, Scheduled),
    (Pending, Completed),
    (Scheduled, Scheduled),
    (Scheduled, Running),
    (Scheduled, Failed),
    (Scheduled, Completed),
    (Running, Running),
    (Running, Completed),
    (Running, Failed),
    (Running, Scheduled),
];

/// A transition the table does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("illegal task state transition {} -> {}", task_state_name(*.from), task_state_name(*.to))]
pub struct IllegalTransition {
    /// State the task is in.
    pub from: TaskState,
    /// State that was asked for.
    pub to: TaskState,
}

/// Whether `from -> to` is in the table.
pub fn can_transition(from: TaskState, to: TaskState) -> bool {
    TRANSITIONS.iter().any(|&(f, t)| f == from && t == to)
}

/// `Ok` if `from -> to` is legal.
pub fn check(from: TaskState, to: TaskState) -> Result<(), IllegalTransition> {
    if can_transition(from, to) {
        Ok(())
    } else {
        Err(IllegalTransition { from, to })
    }
}

/// Completed and Failed: no edge leaves them.
pub fn is_terminal(s: TaskState) -> bool {
    matches!(s, Completed | Failed)
}

/// Placed on a node and not finished: the node's resources are reserved for it.
pub fn is_active_on_node(s: TaskState) -> bool {
    matches!(s, Scheduled | Running)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const ALL: [TaskState; 6] = [
        TaskState::Unspecified,
        Pending,
        Scheduled,
        Running,
        Completed,
        Failed,
    ];

    #[test]
    fn every_pair_matches_the_table() {
        let legal = [
            (Pending, Scheduled),
            (Pending, Completed),
            (Scheduled, Scheduled),
            (Scheduled, Running),
            (Scheduled, Failed),
            (Scheduled, Completed),
            (Running, Running),
            (Running, Completed),
            (Running, Failed),
            (Running, Scheduled),
        ];
        for from in ALL {
            for to in ALL {
                let expected = legal.contains(&(from, to));
                assert_eq!(can_transition(from, to), expected, "{from:?} -> {to:?}");
                assert_eq!(check(from, to).is_ok(), expected);
            }
        }
    }

    #[test]
    fn terminal_states_have_no_exit() {
        for from in [Completed, Failed] {
            assert!(is_terminal(from));
            assert!(ALL.iter().all(|&to| !can_transition(from, to)));
        }
        assert!(!is_terminal(Running));
    }

    #[test]
    fn nothing_enters_pending_or_unspecified() {
        for from in ALL {
            assert!(!can_transition(from, Pending));
            assert!(!can_transition(from, TaskState::Unspecified));
        }
    }

    #[test]
    fn error_names_both_states() {
        let e = check(Completed, Running).unwrap_err();
        assert_eq!(
            e.to_string(),
            "illegal task state transition completed -> running"
        );
    }
}
