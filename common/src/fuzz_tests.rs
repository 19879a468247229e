//! Property tests over input that comes from the network: task specs of any
//! shape are accepted or refused with a field-naming error, never a panic,
//! and what is accepted keeps every documented bound; arbitrary bytes never
//! crash the decoders; the state machine's table is closed and final states
//! stay final. Bounded: `PROPTEST_CASES` (default below) cases per property.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;

use minkube::pb::{self, PortSpec, TaskSpec, TaskState};
use proptest::prelude::*;
use prost::Message as _;

use crate::state_machine;
use crate::validate::{self, validate_spec};

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Mostly plausible, sometimes hostile text.
fn text(max: usize) -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-z0-9-]{0,20}",
        1 => proptest::string::string_regex(&format!(".{{0,{max}}}")).unwrap(),
        1 => Just(String::new()),
        1 => (0..4usize).prop_map(move |k| "x".repeat(max.saturating_mul(k + 1) / 2)),
    ]
}

fn spec() -> impl Strategy<Value = TaskSpec> {
    let ports = proptest::collection::vec((any::<u32>(), -2i32..4), 0..80);
    let env = proptest::collection::hash_map(text(300), text(100), 0..20);
    let labels = proptest::collection::hash_map(text(200), text(100), 0..20);
    (
        (
            text(80),
            text(600),
            proptest::collection::vec(text(50), 0..300),
        ),
        (any::<u64>(), prop_oneof![any::<f64>(), 0.0f64..2000.0]),
        (env, ports, labels),
        (-1i32..5, -1i32..5, any::<u32>(), any::<u32>()),
        (
            any::<bool>(),
            any::<bool>(),
            proptest::collection::vec(
                (
                    prop_oneof![Just("/srv/x".to_string()), text(40)],
                    prop_oneof![Just("/data".to_string()), text(40)],
                    any::<bool>(),
                ),
                0..20,
            ),
        ),
    )
        .prop_map(
            |(
                (name, image, command),
                (memory, cpu),
                (env, ports, labels),
                (pull, restart, mr, ma),
                (privileged, host_network, mounts),
            )| {
                let constraints = labels_as_constraints(&name);
                TaskSpec {
                    name,
                    image,
                    command,
                    memory_mb: memory % (validate::MAX_MEMORY_MB * 2),
                    cpu,
                    env,
                    ports: ports
                        .into_iter()
                        .map(|(p, proto)| PortSpec {
                            container_port: p % 70_000,
                            protocol: proto,
                        })
                        .collect(),
                    labels,
                    pull_policy: pull,
                    restart_policy: restart,
                    max_restarts: mr % 2000,
                    max_attempts: ma % 200,
                    privileged,
                    host_network,
                    host_mounts: mounts
                        .into_iter()
                        .map(|(host_path, container_path, read_only)| pb::HostMount {
                            host_path,
                            container_path,
                            read_only,
                        })
                        .collect(),
                    // Arbitrary strings: most are refused, none may panic.
                    constraints,
                }
            },
        )
}

fn labels_as_constraints(seed: &str) -> Vec<String> {
    vec![
        format!("node.label.{seed}=={seed}"),
        seed.to_string(),
        format!("node.name!={seed}"),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_spec_is_accepted_within_bounds_or_refused_naming_a_field(s in spec()) {
        match validate_spec(&s) {
            Ok(()) => {
                prop_assert!(!s.name.is_empty() && s.name.len() <= validate::MAX_NAME_LEN);
                prop_assert!(!s.image.is_empty() && s.image.len() <= validate::MAX_IMAGE_LEN);
                prop_assert!((validate::MIN_MEMORY_MB..=validate::MAX_MEMORY_MB).contains(&s.memory_mb));
                prop_assert!(s.cpu.is_finite() && (0.0..=validate::MAX_CPU).contains(&s.cpu));
                prop_assert!(s.command.len() <= validate::MAX_COMMAND_ARGS);
                prop_assert!(s.env.len() <= validate::MAX_ENV_VARS);
                prop_assert!(s.ports.len() <= validate::MAX_PORTS);
                prop_assert!(s.ports.iter().all(|p| (1..=65_535).contains(&p.container_port)));
                prop_assert!(s.labels.len() <= validate::MAX_LABELS);
                prop_assert!(s.max_restarts <= validate::MAX_RESTARTS);
                prop_assert!(s.max_attempts <= validate::MAX_ATTEMPTS);
                prop_assert!(s.host_mounts.len() <= crate::host_access::MAX_HOST_MOUNTS);
                prop_assert!(s.host_mounts.iter().all(|m| m.host_path.starts_with('/')
                    && m.container_path.starts_with('/')
                    && !m.host_path.contains("/../")));
                prop_assert!(!s.host_network || s.ports.is_empty());
            }
            Err(e) => {
                let msg = e.to_string();
                prop_assert!(msg.contains("spec."), "error names no field: {msg}");
            }
        }
    }

    #[test]
    fn arbitrary_bytes_never_crash_the_decoders(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        // Decoding may fail; it must not panic, and what decodes validates
        // without panicking too.
        if let Ok(spec) = TaskSpec::decode(bytes.as_slice()) {
            let _ = validate_spec(&spec);
        }
        let _ = pb::AgentMessage::decode(bytes.as_slice());
        let _ = pb::CreateTaskRequest::decode(bytes.as_slice());
    }

    #[test]
    fn final_states_stay_final(from in 0i32..8, to in 0i32..8) {
        let from = TaskState::try_from(from).unwrap_or(TaskState::Unspecified);
        let to = TaskState::try_from(to).unwrap_or(TaskState::Unspecified);
        prop_assert_eq!(state_machine::can_transition(from, to), state_machine::check(from, to).is_ok());
        if state_machine::is_terminal(from) {
            prop_assert!(!state_machine::can_transition(from, to));
        }
    }
}

#[test]
fn the_table_names_only_known_states() {
    let known: HashMap<i32, ()> = [
        TaskState::Pending,
        TaskState::Scheduled,
        TaskState::Running,
        TaskState::Completed,
        TaskState::Failed,
    ]
    .iter()
    .map(|s| (*s as i32, ()))
    .collect();
    for (from, to) in state_machine::TRANSITIONS {
        assert!(known.contains_key(&(*from as i32)) && known.contains_key(&(*to as i32)));
    }
}
