//! Property tests of the agent-message handler: whatever an agent sends
//! (any task id, attempt, sequence, state, text, in any order, or bytes that
//! merely decode), applying it never panics, never touches a task placed on
//! another node, never takes a state change the state machine forbids,
//! never revives a finished task, and keeps stored text within bounds.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::time::Duration;

use minkube::pb::{self, TaskState};
use minkube_common::retry::Backoff;
use minkube_common::state_machine;
use proptest::prelude::*;
use prost::Message as _;

use crate::policy::RetryTimings;
use crate::state::{fixtures, State};
use crate::status::{apply_update, MAX_REASON_BYTES};

const TIMINGS: RetryTimings = RetryTimings {
    backoff: Backoff {
        initial: Duration::from_millis(100),
        max: Duration::from_secs(1),
        multiplier: 2.0,
    },
};

const IDS: &[&str] = &["a1", "a2", "a3", "b1", "b2", "unknown"];

fn cluster(policies: &[i32]) -> State {
    let mut st = State::default();
    for (i, id) in IDS.iter().take(5).enumerate() {
        let node = if id.starts_with('a') { "n1" } else { "n2" };
        let policy =
            pb::RestartPolicy::try_from(policies[i] % 3 + 1).unwrap_or(pb::RestartPolicy::Never);
        fixtures::placed(&mut st, id, node, policy);
    }
    st
}

fn update() -> impl Strategy<Value = pb::TaskStatusUpdate> {
    (
        0..IDS.len(),
        0u32..4,
        0u64..12,
        -1i32..8,
        prop_oneof![3 => "[a-z ]{0,20}", 1 => Just("r".repeat(5000)), 1 => Just("é".repeat(700))],
        prop_oneof![3 => "[0-9a-f]{0,64}", 1 => Just("c".repeat(300))],
        proptest::option::of(any::<i32>()),
        0usize..300,
    )
        .prop_map(
            |(i, attempt, sequence, state, reason, container_id, exit_code, ports)| {
                pb::TaskStatusUpdate {
                    task_id: IDS[i].to_string(),
                    attempt,
                    sequence,
                    state,
                    reason,
                    container_id,
                    exit_code,
                    ports: vec![pb::PortBinding::default(); ports],
                    ..Default::default()
                }
            },
        )
}

fn snapshot(st: &State) -> HashMap<String, (pb::Task, usize)> {
    st.tasks
        .iter()
        .filter_map(|(id, t)| {
            t.entry()
                .map(|e| (id.clone(), (e.task.clone(), e.events.len())))
        })
        .collect()
}

fn check_after(
    before: &HashMap<String, (pb::Task, usize)>,
    st: &State,
) -> Result<(), TestCaseError> {
    for (id, t) in st.tasks.iter() {
        let e = t.entry().unwrap();
        let (old, _) = &before[id];
        let old_state = old.status.as_ref().unwrap().state();
        if old.status.as_ref().unwrap().node_id == "n2" {
            prop_assert_eq!(&e.task, old, "a task of another node changed");
        }
        if state_machine::is_terminal(old_state) {
            prop_assert_eq!(e.state(), old_state, "a finished task changed state");
        }
        // Every recorded step is a legal transition.
        for w in e.events.windows(2) {
            let (from, to) = (w[0].state(), w[1].state());
            prop_assert!(
                from == to || state_machine::can_transition(from, to),
                "illegal step {:?} -> {:?}",
                from,
                to
            );
        }
        let status = e.status();
        // The policy may wrap an agent's reason ("... ; restarting"): bounded.
        prop_assert!(
            status.reason.len() <= MAX_REASON_BYTES + 256,
            "reason of {} bytes",
            status.reason.len()
        );
        prop_assert!(status.container_id.len() <= 128);
        prop_assert!(status.ports.len() <= 128);
    }
    prop_assert!(
        crate::task_table::tests::live_index_is_right(&st.tasks),
        "the index of unfinished tasks disagrees with their states"
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn any_sequence_of_updates_keeps_the_state_consistent(
        policies in proptest::collection::vec(0i32..3, 5),
        updates in proptest::collection::vec(update(), 1..40),
    ) {
        let mut st = cluster(&policies);
        let mut out = Vec::new();
        for u in &updates {
            let before = snapshot(&st);
            let _ = apply_update(&mut st, "n1", &TIMINGS, u, &mut out);
            check_after(&before, &st)?;
        }
        // Every change was written out for the store.
        prop_assert!(out.iter().all(|m| !matches!(m, crate::store::Mutation::DeleteTask(_))));
        // The histories written (finished tasks keep theirs only there) are
        // legal step by step.
        let mut last: HashMap<&str, TaskState> = HashMap::new();
        for m in &out {
            if let crate::store::Mutation::PutEvent { task_id, event, .. } = m {
                if let Some(prev) = last.insert(task_id, event.state()) {
                    prop_assert!(
                        prev == event.state() || state_machine::can_transition(prev, event.state()),
                        "illegal step {:?} -> {:?}",
                        prev,
                        event.state()
                    );
                }
            }
        }
    }

    #[test]
    fn bytes_that_decode_as_agent_messages_apply_safely(
        bytes in proptest::collection::vec(any::<u8>(), 0..1024),
    ) {
        let mut st = cluster(&[0, 1, 2, 0, 1]);
        let mut out = Vec::new();
        if let Ok(pb::AgentMessage { msg: Some(pb::agent_message::Msg::Status(batch)) }) =
            pb::AgentMessage::decode(bytes.as_slice())
        {
            for u in &batch.updates {
                let before = snapshot(&st);
                let _ = apply_update(&mut st, "n1", &TIMINGS, u, &mut out);
                check_after(&before, &st)?;
            }
        }
    }
}

#[test]
fn a_huge_reason_is_cut_and_an_absurd_container_id_refused() {
    let mut st = cluster(&[0; 5]);
    let mut out = Vec::new();
    let long = pb::TaskStatusUpdate {
        task_id: "a1".into(),
        attempt: 1,
        sequence: 1,
        state: TaskState::Running as i32,
        reason: "x".repeat(1_000_000),
        container_id: "c1".into(),
        ..Default::default()
    };
    apply_update(&mut st, "n1", &TIMINGS, &long, &mut out);
    let a1 = st.tasks.get("a1").unwrap();
    let reason = &a1.status().reason;
    assert_eq!(reason.len(), MAX_REASON_BYTES + 3, "cut with an ellipsis");
    let absurd = pb::TaskStatusUpdate {
        sequence: 2,
        state: TaskState::Completed as i32,
        container_id: "c".repeat(10_000),
        ..long
    };
    let applied = apply_update(&mut st, "n1", &TIMINGS, &absurd, &mut out);
    assert_eq!(
        applied,
        crate::status::Applied::Ignored("container id too long")
    );
    assert_eq!(st.tasks.get("a1").unwrap().state(), TaskState::Running);
}
