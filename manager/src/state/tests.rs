#![allow(clippy::unwrap_used)]
use super::*;

fn task(id: &str, mb: u64) -> pb::Task {
    pb::Task {
        id: id.into(),
        spec: Some(pb::TaskSpec {
            name: "t".into(),
            memory_mb: mb,
            ..Default::default()
        }),
        status: Some(pb::TaskStatus {
            state: TaskState::Pending as i32,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn place(node: &str) -> impl FnOnce(&mut pb::TaskStatus) + '_ {
    move |s| {
        s.node_id = node.into();
        s.attempt = 1;
    }
}

#[test]
fn transitions_record_events_and_reservations() {
    let mut st = State::default();
    let mut out = Vec::new();
    st.insert_task(task("t1", 100), &mut out);
    assert!(st.unplaced.contains_key("t1"));
    assert_eq!(st.count_in(TaskState::Pending), 1);
    st.transition("t1", TaskState::Scheduled, "placed", place("n1"), &mut out)
        .unwrap();
    assert_eq!(st.count_in(TaskState::Pending), 0);
    assert_eq!(st.count_in(TaskState::Scheduled), 1);
    assert!(st.unplaced.is_empty());
    assert_eq!(st.usage("n1").memory_mb, 100);
    assert_eq!(st.active_on("n1").count(), 1);
    st.transition("t1", TaskState::Running, "started", |_| {}, &mut out)
        .unwrap();
    assert_eq!(st.usage("n1").tasks, 1);
    st.transition("t1", TaskState::Completed, "exit 0", |_| {}, &mut out)
        .unwrap();
    assert_eq!(st.usage("n1"), Usage::default());
    assert_eq!(
        st.active_on("n1").count(),
        0,
        "finished tasks leave the index"
    );
    assert_eq!(st.count_in(TaskState::Completed), 1);
    assert_eq!(st.count_in(TaskState::Running), 0);
    st.remove_task("t1", &mut Vec::new());
    assert_eq!(st.count_in(TaskState::Completed), 0);
    st.insert_task(task("t1", 100), &mut Vec::new());
    st.transition(
        "t1",
        TaskState::Scheduled,
        "placed",
        place("n1"),
        &mut Vec::new(),
    )
    .unwrap();
    st.transition("t1", TaskState::Running, "started", |_| {}, &mut Vec::new())
        .unwrap();
    st.transition(
        "t1",
        TaskState::Completed,
        "exit 0",
        |_| {},
        &mut Vec::new(),
    )
    .unwrap();
    let e = &st.tasks.get("t1").unwrap();
    assert!(
        e.events.is_empty(),
        "a finished task's history is in the store only"
    );
    assert!(e.status().finished_at.is_some());
    // 2 for insert + 2 per transition.
    assert_eq!(out.len(), 8);
}

#[test]
fn illegal_transitions_change_nothing() {
    let mut st = State::default();
    let mut out = Vec::new();
    st.insert_task(task("t1", 10), &mut out);
    out.clear();
    let err = st
        .transition("t1", TaskState::Running, "x", |_| {}, &mut out)
        .unwrap_err();
    assert!(matches!(err, TransitionError::Illegal(_)));
    assert!(out.is_empty());
    assert_eq!(st.tasks.get("t1").unwrap().events.len(), 1);
    assert!(matches!(
        st.transition("nope", TaskState::Running, "x", |_| {}, &mut out),
        Err(TransitionError::NotFound(_))
    ));
}

#[test]
fn snapshot_rebuilds_queue_and_reservations() {
    let mut st = State::default();
    let mut out = Vec::new();
    st.insert_task(task("a", 10), &mut out);
    st.insert_task(task("b", 20), &mut out);
    st.transition("b", TaskState::Scheduled, "placed", place("n1"), &mut out)
        .unwrap();
    let snap = Snapshot {
        nodes: vec![pb::Node {
            id: "n1".into(),
            state: pb::NodeState::Ready as i32,
            ..Default::default()
        }],
        ..Snapshot::default()
    };
    let mut re = State::from_snapshot(snap);
    for (_, t) in st.tasks.iter() {
        let e = t.entry().unwrap();
        re.load_task(e.stored(), e.events.clone());
    }
    assert!(re.unplaced.contains_key("a") && !re.unplaced.contains_key("b"));
    assert_eq!(re.usage("n1").memory_mb, 20);
    let active: Vec<_> = re.active_on("n1").map(|e| e.task.id.as_str()).collect();
    assert_eq!(active, ["b"]);
    assert_eq!(re.nodes["n1"].node.state(), pb::NodeState::Disconnected);
}

#[test]
fn a_task_keeps_its_trace_context_until_it_finishes() {
    let mut st = State::default();
    let mut out = Vec::new();
    let ctx: HashMap<String, String> = [(
        "traceparent".to_string(),
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_string(),
    )]
    .into();
    st.insert_traced_task(task("t1", 10), ctx.clone(), &mut out);
    for to in [
        TaskState::Scheduled,
        TaskState::Running,
        TaskState::Completed,
    ] {
        st.transition("t1", to, "step", place("n1"), &mut out)
            .unwrap();
    }
    let traces: Vec<_> = out
        .iter()
        .filter_map(|m| match m {
            Mutation::PutTask(t) => Some((
                t.task.as_ref().unwrap().status.as_ref().unwrap().state(),
                t.trace_context.len(),
            )),
            _ => None,
        })
        .collect();
    assert_eq!(
        traces,
        [
            (TaskState::Pending, 1),
            (TaskState::Scheduled, 1),
            (TaskState::Running, 1),
            (TaskState::Completed, 0),
        ]
    );
}
