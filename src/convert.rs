//! Small conversions shared by every user of the protocol: timestamps and
//! the display names of enum values.
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prost_types::Timestamp;

use crate::pb::{DesiredState, NodeAvailability, NodeState, TaskState};

/// The current time as a protobuf timestamp.
pub fn now() -> Timestamp {
    to_timestamp(SystemTime::now())
}

/// Converts a system time (clamped at the epoch) into a protobuf timestamp.
pub fn to_timestamp(t: SystemTime) -> Timestamp {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    Timestamp {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

/// Converts a protobuf timestamp into a system time; negative values clamp to the epoch.
pub fn from_timestamp(t: &Timestamp) -> SystemTime {
    let secs = u64::try_from(t.seconds).unwrap_or(0);
    let nanos = u32::try_from(t.nanos).unwrap_or(0);
    UNIX_EPOCH + Duration::new(secs, nanos.min(999_999_999))
}

/// Milliseconds since the epoch, for ordering and display.
pub fn millis(t: &Timestamp) -> i64 {
    t.seconds
        .saturating_mul(1000)
        .saturating_add(i64::from(t.nanos / 1_000_000))
}

/// Every state a task can be in, in lifecycle order (no UNSPECIFIED).
pub const TASK_STATES: [TaskState; 5] = [
    TaskState::Pending,
    TaskState::Scheduled,
    TaskState::Running,
    TaskState::Completed,
    TaskState::Failed,
];

/// Lower-case short name of a task state ("pending", "running", ...).
pub fn task_state_name(s: TaskState) -> &'static str {
    match s {
        TaskState::Unspecified => "unspecified",
        TaskState::Pending => "pending",
        TaskState::Scheduled => "scheduled",
        TaskState::Running => "running",
        TaskState::Completed => "completed",
        TaskState::Failed => "failed",
    }
}

/// Parses a short task state name (case-insensitive).
pub fn parse_task_state(s: &str) -> Option<TaskState> {
    match s.to_ascii_lowercase().as_str() {
        "pending" => Some(TaskState::Pending),
        "scheduled" => Some(TaskState::Scheduled),
        "running" => Some(TaskState::Running),
        "completed" => Some(TaskState::Completed),
        "failed" => Some(TaskState::Failed),
        _ => None,
    }
}

/// Lower-case short name of a desired state.
pub fn desired_state_name(s: DesiredState) -> &'static str {
    match s {
        DesiredState::Unspecified => "unspecified",
        DesiredState::Running => "running",
        DesiredState::Stopped => "stopped",
        DesiredState::Moving => "moving",
    }
}

/// Lower-case short name of a node's availability (unset reads as active).
pub fn availability_name(a: NodeAvailability) -> &'static str {
    match a {
        NodeAvailability::Unspecified | NodeAvailability::Active => "active",
        NodeAvailability::Cordoned => "cordoned",
        NodeAvailability::Drained => "drained",
    }
}

/// Lower-case short name of a node state.
pub fn node_state_name(s: NodeState) -> &'static str {
    match s {
        NodeState::Unspecified => "unspecified",
        NodeState::Ready => "ready",
        NodeState::Disconnected => "disconnected",
        NodeState::Down => "down",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_round_trips() {
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 123_000_000);
        assert_eq!(from_timestamp(&to_timestamp(t)), t);
        assert_eq!(millis(&to_timestamp(t)), 1_700_000_000_123);
    }

    #[test]
    fn state_names_round_trip() {
        for s in TASK_STATES {
            assert_eq!(parse_task_state(task_state_name(s)), Some(s));
        }
        assert_eq!(parse_task_state("bogus"), None);
    }
}
