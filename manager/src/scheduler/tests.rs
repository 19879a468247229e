#![allow(clippy::unwrap_used)]
use super::*;
use crate::state::{NodeEntry, Session};

fn ring_of(nodes: &[(&str, u64)]) -> State {
    let mut st = State::default();
    for (name, mb) in nodes {
        ready_node(&mut st, name, *mb);
    }
    st.refresh_ring();
    st
}

fn picked(st: &State, need: u64) -> Option<String> {
    pick(st, need, &[]).map(|(_, name)| name)
}

#[test]
fn round_robin_wraps_in_name_order() {
    let mut st = ring_of(&[("b", 100), ("a", 100), ("c", 100)]);
    let mut got = Vec::new();
    for _ in 0..7 {
        let name = picked(&st, 10).unwrap();
        st.rr_cursor = Some(name.clone());
        got.push(name);
    }
    assert_eq!(got, ["a", "b", "c", "a", "b", "c", "a"]);
}

#[test]
fn skips_nodes_without_memory_or_session_and_handles_vanished_cursor() {
    let mut st = ring_of(&[("a", 100), ("b", 5), ("c", 100)]);
    st.rr_cursor = Some("a".into());
    assert_eq!(picked(&st, 10).as_deref(), Some("c"));
    // Cursor names a node that left: continue with the next name after it.
    st.rr_cursor = Some("bb".into());
    assert_eq!(picked(&st, 10).as_deref(), Some("c"));
    st.rr_cursor = Some("z".into());
    assert_eq!(picked(&st, 10).as_deref(), Some("a"));
    assert_eq!(picked(&st, 1000), None);
    st.nodes_mut().get_mut("id-a").unwrap().session = None;
    assert_eq!(picked(&st, 10).as_deref(), Some("c"));
    assert_eq!(picked(&State::default(), 1), None);
}

pub(super) fn ready_node(st: &mut State, name: &str, mb: u64) {
    let (tx, _rx) = tokio::sync::mpsc::channel(1);
    connected_node(st, name, mb, tx);
}

/// A READY node whose stream is `tx`.
pub(super) fn connected_node(
    st: &mut State,
    name: &str,
    mb: u64,
    tx: tokio::sync::mpsc::Sender<Result<pb::ManagerMessage, tonic::Status>>,
) {
    st.nodes_mut().insert(
        format!("id-{name}"),
        NodeEntry {
            node: pb::Node {
                id: format!("id-{name}"),
                name: name.into(),
                state: NodeState::Ready as i32,
                capacity: Some(pb::Resources {
                    cpu_cores: 1.0,
                    memory_mb: mb,
                }),
                ..Default::default()
            },
            session: Some(Session {
                id: 1,
                tx,
                cancel: Default::default(),
            }),
            last_seen: tokio::time::Instant::now(),
        },
    );
}

pub(super) fn pending(st: &mut State, id: &str, mb: u64, out: &mut Vec<Mutation>) {
    constrained(st, id, mb, &[], out);
}

pub(super) fn constrained(st: &mut State, id: &str, mb: u64, cs: &[&str], out: &mut Vec<Mutation>) {
    st.insert_task(new_task(id, mb, cs), out);
}

/// A new PENDING task of `mb` with constraints `cs`.
pub(super) fn new_task(id: &str, mb: u64, cs: &[&str]) -> pb::Task {
    pb::Task {
        id: id.into(),
        spec: Some(pb::TaskSpec {
            memory_mb: mb,
            constraints: cs.iter().map(|c| c.to_string()).collect(),
            ..Default::default()
        }),
        status: Some(pb::TaskStatus {
            state: TaskState::Pending as i32,
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[test]
fn places_in_order_and_explains_what_waits() {
    let mut st = State::default();
    let mut out = Vec::new();
    ready_node(&mut st, "b", 100);
    ready_node(&mut st, "a", 100);
    for (i, mb) in [60, 60, 60].iter().enumerate() {
        pending(&mut st, &format!("t{i}"), *mb, &mut out);
    }
    let placed = schedule(&mut st, SystemTime::now(), &mut out).placements;
    let nodes: Vec<_> = placed.iter().map(|p| p.node_id.as_str()).collect();
    assert_eq!(nodes, ["id-a", "id-b"]);
    assert_eq!(placed[0].assignment.attempt, 1);
    assert!(st.unplaced.contains_key("t2"));
    assert_eq!(
        st.tasks.get("t2").unwrap().status().reason,
        "no ready node with 60 MB free"
    );
    assert_eq!(st.tasks.get("t0").unwrap().status().node_name, "a");
}

/// Why a new task would wait, as admission tells it.
fn reason_to_wait(st: &mut State, spec: &pb::TaskSpec) -> Option<String> {
    match admit(st, spec, true) {
        Admission::Waits(reason) => Some(reason),
        Admission::Place { .. } | Admission::Queue => None,
    }
}

#[test]
fn a_reason_given_at_creation_is_what_the_pass_would_write() {
    let mut st = State::default();
    let mut out = Vec::new();
    let spec = |mb, cs: &[&str]| pb::TaskSpec {
        memory_mb: mb,
        constraints: cs.iter().map(|c| c.to_string()).collect(),
        ..Default::default()
    };
    assert_eq!(
        reason_to_wait(&mut st, &spec(8, &[])).as_deref(),
        Some("no ready node with 8 MB free")
    );
    // A node that joined since the last pass counts (the ring is refreshed).
    ready_node(&mut st, "a", 100);
    assert_eq!(reason_to_wait(&mut st, &spec(8, &[])), None);
    assert_eq!(
        reason_to_wait(&mut st, &spec(200, &[])).as_deref(),
        Some("no ready node with 200 MB free")
    );
    assert_eq!(
        reason_to_wait(&mut st, &spec(8, &["node.label.zone==z"])).as_deref(),
        Some("no ready node meets node.label.zone==z")
    );
    // Stored with that reason, the task costs the pass no second write.
    let reason = reason_to_wait(&mut st, &spec(200, &[])).unwrap();
    st.insert_task(
        pb::Task {
            id: "big".into(),
            spec: Some(spec(200, &[])),
            status: Some(pb::TaskStatus {
                state: TaskState::Pending as i32,
                reason: reason.clone(),
                ..Default::default()
            }),
            ..Default::default()
        },
        &mut out,
    );
    out.clear();
    assert!(schedule(&mut st, SystemTime::now(), &mut out)
        .placements
        .is_empty());
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(st.tasks.get("big").unwrap().status().reason, reason);
}

#[test]
fn without_room_a_pass_looks_only_at_new_tasks_and_a_node_places_them_all() {
    let mut st = State::default();
    let mut out = Vec::new();
    pending(&mut st, "t0", 8, &mut out);
    schedule(&mut st, SystemTime::now(), &mut out);
    assert_eq!(
        st.tasks.get("t0").unwrap().status().reason,
        "no ready node with 8 MB free"
    );
    // A pass with no room and nothing new writes nothing.
    out.clear();
    assert!(schedule(&mut st, SystemTime::now(), &mut out)
        .placements
        .is_empty());
    assert!(out.is_empty(), "{out:?}");
    pending(&mut st, "t1", 8, &mut out);
    schedule(&mut st, SystemTime::now(), &mut out);
    assert_eq!(
        st.tasks.get("t1").unwrap().status().reason,
        "no ready node with 8 MB free"
    );
    // Room appears: the full queue is looked at, oldest first; a large
    // task that does not fit does not stop smaller ones behind it.
    pending(&mut st, "t2", 500, &mut out);
    pending(&mut st, "t3", 8, &mut out);
    ready_node(&mut st, "a", 100);
    let placed = schedule(&mut st, SystemTime::now(), &mut out).placements;
    let ids: Vec<_> = placed
        .iter()
        .map(|p| p.assignment.task_id.as_str())
        .collect();
    assert_eq!(ids, ["t0", "t1", "t3"]);
    assert_eq!(st.unplaced.keys().collect::<Vec<_>>(), ["t2"]);
}

fn placed_on(st: &State, id: &str) -> String {
    st.tasks.get(id).unwrap().status().node_name.clone()
}

#[test]
fn cordoned_and_drained_nodes_take_no_new_tasks() {
    let mut st = State::default();
    let mut out = Vec::new();
    ready_node(&mut st, "a", 100);
    ready_node(&mut st, "b", 100);
    st.nodes_mut()
        .get_mut("id-a")
        .unwrap()
        .node
        .set_availability(NodeAvailability::Cordoned);
    for i in 0..3 {
        pending(&mut st, &format!("t{i}"), 10, &mut out);
    }
    schedule(&mut st, SystemTime::now(), &mut out);
    for i in 0..3 {
        assert_eq!(placed_on(&st, &format!("t{i}")), "b");
    }
    st.nodes_mut()
        .get_mut("id-b")
        .unwrap()
        .node
        .set_availability(NodeAvailability::Drained);
    pending(&mut st, "t3", 10, &mut out);
    schedule(&mut st, SystemTime::now(), &mut out);
    assert_eq!(
        st.tasks.get("t3").unwrap().status().reason,
        "no ready node with 10 MB free (2 ready nodes are cordoned or drained)"
    );
    st.nodes_mut()
        .get_mut("id-a")
        .unwrap()
        .node
        .set_availability(NodeAvailability::Active);
    schedule(&mut st, SystemTime::now(), &mut out);
    assert_eq!(placed_on(&st, "t3"), "a");
}

#[test]
fn constraints_pick_matching_nodes_and_say_why_none_does() {
    let mut st = State::default();
    let mut out = Vec::new();
    for (name, zone) in [("a", "x"), ("b", "y"), ("c", "y")] {
        ready_node(&mut st, name, 100);
        let n = &mut st.nodes_mut().get_mut(&format!("id-{name}")).unwrap().node;
        n.labels.insert("zone".into(), zone.into());
    }
    for i in 0..4 {
        constrained(
            &mut st,
            &format!("y{i}"),
            10,
            &["node.label.zone==y"],
            &mut out,
        );
    }
    constrained(
        &mut st,
        "not-b",
        10,
        &["node.label.zone==y", "node.name!=b"],
        &mut out,
    );
    constrained(&mut st, "nowhere", 10, &["node.label.zone==z"], &mut out);
    constrained(&mut st, "too-big", 200, &["node.label.zone==y"], &mut out);
    schedule(&mut st, SystemTime::now(), &mut out);
    let ys: Vec<String> = (0..4).map(|i| placed_on(&st, &format!("y{i}"))).collect();
    assert_eq!(ys, ["b", "c", "b", "c"]);
    assert_eq!(placed_on(&st, "not-b"), "c");
    assert_eq!(
        st.tasks.get("nowhere").unwrap().status().reason,
        "no ready node meets node.label.zone==z"
    );
    assert_eq!(
        st.tasks.get("too-big").unwrap().status().reason,
        "no ready node meeting node.label.zone==y has 200 MB free"
    );
    // (ids are queued in order: not-b went first, to c.)
    // A label appears: the waiting task is placed by the next pass.
    let n = &mut st.nodes_mut().get_mut("id-a").unwrap().node;
    n.labels.insert("zone".into(), "z".into());
    schedule(&mut st, SystemTime::now(), &mut out);
    assert_eq!(placed_on(&st, "nowhere"), "a");
}

fn reason_of(st: &State, id: &str) -> String {
    st.tasks.get(id).unwrap().status().reason.clone()
}

fn status_of<'a>(st: &'a mut State, id: &str) -> &'a mut pb::TaskStatus {
    st.tasks.get_mut(id).unwrap().task.status.as_mut().unwrap()
}

fn set_availability(st: &mut State, names: &[&str], a: NodeAvailability) {
    for n in names {
        st.nodes_mut()
            .get_mut(&format!("id-{n}"))
            .unwrap()
            .node
            .availability = a as i32;
    }
}

/// Tasks of sizes all their own queued ahead of a backlog: too many shapes
/// for a pass to stop early, so it walks the backlog.
const ODD_SIZES: usize = 100;

/// A backlog of 200 MB tasks no node can take, on nodes with some room:
/// the case where a pass passes over tasks that already say why they wait
/// (after its first chunk) and, with `odd_sizes` false, stops early.
fn backlog(n: usize, odd_sizes: bool) -> (State, Vec<String>) {
    let mut st = State::default();
    let mut out = Vec::new();
    ready_node(&mut st, "a", 100);
    ready_node(&mut st, "b", 100);
    if odd_sizes {
        for i in 0..ODD_SIZES {
            pending(&mut st, &format!("s{i:03}"), 1000 + i as u64, &mut out);
        }
    }
    let ids: Vec<String> = (0..n).map(|i| format!("t{i:04}")).collect();
    for id in &ids {
        pending(&mut st, id, 200, &mut out);
    }
    (st, ids)
}

#[test]
fn a_backlog_that_already_says_why_it_waits_costs_a_pass_no_write() {
    for odd_sizes in [false, true] {
        let (mut st, ids) = backlog(3000, odd_sizes);
        let mut out = Vec::new();
        schedule(&mut st, SystemTime::now(), &mut out);
        for id in &ids {
            assert_eq!(reason_of(&st, id), "no ready node with 200 MB free");
        }
        out.clear();
        assert!(schedule(&mut st, SystemTime::now(), &mut out)
            .placements
            .is_empty());
        assert!(out.is_empty(), "{out:?}");
    }
}

#[test]
fn when_the_reason_changes_every_waiting_task_is_told() {
    for odd_sizes in [false, true] {
        let (mut st, ids) = backlog(3000, odd_sizes);
        let mut out = Vec::new();
        schedule(&mut st, SystemTime::now(), &mut out);
        set_availability(&mut st, &["b"], NodeAvailability::Cordoned);
        out.clear();
        schedule(&mut st, SystemTime::now(), &mut out);
        for id in &ids {
            assert_eq!(
                reason_of(&st, id),
                "no ready node with 200 MB free (1 ready node is cordoned or drained)"
            );
        }
        let odd = if odd_sizes { ODD_SIZES } else { 0 };
        assert_eq!(out.len(), ids.len() + odd, "one write per task");
    }
}

#[test]
fn a_new_task_among_a_settled_backlog_is_told_why_it_waits() {
    for odd_sizes in [false, true] {
        let (mut st, _) = backlog(3000, odd_sizes);
        let mut out = Vec::new();
        schedule(&mut st, SystemTime::now(), &mut out);
        // Stored with another reason (as by a CreateTask that saw other nodes).
        pending(&mut st, "t9999", 200, &mut out);
        status_of(&mut st, "t9999").reason =
            "no ready node with 200 MB free (3 ready nodes are cordoned or drained)".into();
        schedule(&mut st, SystemTime::now(), &mut out);
        assert_eq!(reason_of(&st, "t9999"), "no ready node with 200 MB free");
    }
}

#[test]
fn a_pass_without_room_that_tells_new_tasks_otherwise_unsettles_the_backlog() {
    let (mut st, ids) = backlog(3000, false);
    let mut out = Vec::new();
    schedule(&mut st, SystemTime::now(), &mut out);
    // No room at all: a pass looks at new tasks only, and says so for them.
    set_availability(&mut st, &["a", "b"], NodeAvailability::Cordoned);
    pending(&mut st, "t9999", 200, &mut out);
    schedule(&mut st, SystemTime::now(), &mut out);
    let cordoned = "no ready node with 200 MB free (2 ready nodes are cordoned or drained)";
    assert_eq!(reason_of(&st, "t9999"), cordoned);
    assert_eq!(reason_of(&st, &ids[0]), "no ready node with 200 MB free");
    // Back to the first conditions: the new task's reason is stale, so the
    // pass may not pass the backlog over.
    set_availability(&mut st, &["a", "b"], NodeAvailability::Active);
    schedule(&mut st, SystemTime::now(), &mut out);
    assert_eq!(reason_of(&st, "t9999"), "no ready node with 200 MB free");
}

#[test]
fn tasks_behind_a_backlog_are_placed_and_backoffs_still_wake_the_scheduler() {
    let (mut st, _) = backlog(3000, false);
    let mut out = Vec::new();
    schedule(&mut st, SystemTime::now(), &mut out);
    // Small tasks behind the backlog, only some of which fit, and a new
    // attempt in its backoff.
    for id in ["zsmall", "zsmall2", "zsmall3"] {
        pending(&mut st, id, 60, &mut out);
    }
    let later = SystemTime::now() + std::time::Duration::from_secs(60);
    pending(&mut st, "zretry", 10, &mut out);
    status_of(&mut st, "zretry").next_attempt_at = Some(minkube::convert::to_timestamp(later));
    let waiting = queue::Waiting::of(st.tasks.live("zretry").unwrap());
    st.unplaced.insert("zretry".into(), waiting);
    let pass = schedule(&mut st, SystemTime::now(), &mut out);
    let ids: Vec<_> = pass
        .placements
        .iter()
        .map(|p| p.assignment.task_id.as_str())
        .collect();
    assert_eq!(ids, ["zsmall", "zsmall2"], "oldest first");
    assert_eq!(pass.wake_at, Some(later));
}
