//! Drives a real reconciler against the fake runtime and a temp data dir.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use minkube::pb::{self, TaskState};
use minkube_common::state_machine;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::{Input, Outbound, Reconciler, Settings};
use crate::local_store::{LocalStore, TaskRecord};
use crate::runtime::fake::FakeRuntime;

pub const NODE: &str = "node-1";
pub const IMAGE: &str = "minkube-test:1";

pub fn settings() -> Settings {
    Settings {
        stop_timeout: Duration::from_secs(1),
        resync_interval: Duration::from_secs(600),
    }
}

pub fn spec(image: &str) -> pb::TaskSpec {
    pb::TaskSpec {
        name: "web".into(),
        image: image.into(),
        memory_mb: 64,
        ..Default::default()
    }
}

pub fn assignment(task_id: &str, attempt: u32) -> pb::Assignment {
    pb::Assignment {
        task_id: task_id.into(),
        attempt,
        spec: Some(spec(IMAGE)),
        ..Default::default()
    }
}

pub fn stop_order(task_id: &str, attempt: u32) -> pb::StopOrder {
    pb::StopOrder {
        task_id: task_id.into(),
        attempt,
        reason: "stopped by user".into(),
        ..Default::default()
    }
}

pub struct Harness {
    #[allow(dead_code)]
    pub rt: FakeRuntime,
    pub store: LocalStore,
    inputs: mpsc::Sender<Input>,
    out: mpsc::Receiver<Outbound>,
    stop: watch::Sender<bool>,
    handle: JoinHandle<()>,
    pub running: Arc<AtomicU32>,
    /// (attempt, state, sequence) of the last update of each task.
    last: HashMap<String, (u32, TaskState, u64)>,
}

/// What every update stream must obey: sequences only grow, attempts never
/// go back, and within an attempt states follow the common state machine (a
/// terminal state may only be repeated, when the manager asks again). A new
/// attempt starts where the manager put the task: SCHEDULED.
fn check_update(last: &mut HashMap<String, (u32, TaskState, u64)>, u: &pb::TaskStatusUpdate) {
    let state = u.state();
    if let Some(&(attempt, prev, sequence)) = last.get(&u.task_id) {
        assert!(
            u.sequence > sequence,
            "sequence went back: {u:?} after {sequence}"
        );
        assert!(
            u.attempt >= attempt,
            "attempt went back: {u:?} after {attempt}"
        );
        let from = if u.attempt > attempt {
            TaskState::Scheduled
        } else {
            prev
        };
        let repeat = state == prev && state_machine::is_terminal(state) && u.attempt == attempt;
        assert!(
            repeat || state_machine::check(from, state).is_ok(),
            "illegal {from:?} -> {state:?}: {u:?}"
        );
    }
    let failed = state == TaskState::Failed;
    assert_eq!(
        failed,
        u.failure() != pb::FailureKind::Unspecified,
        "a failure kind on exactly the FAILED updates: {u:?}"
    );
    last.insert(u.task_id.clone(), (u.attempt, state, u.sequence));
}

impl Harness {
    pub fn start(rt: &FakeRuntime, dir: &Path) -> Self {
        Self::start_with(rt, dir, settings())
    }

    pub fn start_with(rt: &FakeRuntime, dir: &Path, settings: Settings) -> Self {
        let store = LocalStore::open(dir).unwrap();
        let (out_tx, out) = mpsc::channel(256);
        let (inputs, in_rx) = mpsc::channel(256);
        let (stop, stop_rx) = watch::channel(false);
        let running = Arc::new(AtomicU32::new(0));
        let reconciler = Reconciler::new(
            NODE.into(),
            Arc::new(rt.clone()),
            store.clone(),
            settings,
            out_tx,
            Arc::clone(&running),
        )
        .unwrap();
        let handle = tokio::spawn(reconciler.run(in_rx, stop_rx));
        Self {
            rt: rt.clone(),
            store,
            inputs,
            out,
            stop,
            handle,
            running,
            last: HashMap::new(),
        }
    }

    pub async fn send(&self, input: Input) {
        self.inputs.send(input).await.unwrap();
    }

    pub async fn next(&mut self) -> Outbound {
        tokio::time::timeout(Duration::from_secs(60), self.out.recv())
            .await
            .expect("no reconciler output in time")
            .expect("reconciler output closed")
    }

    /// The next update, skipping acks.
    pub async fn update(&mut self) -> pb::TaskStatusUpdate {
        loop {
            match self.next().await {
                Outbound::Update(u) => {
                    check_update(&mut self.last, &u);
                    return u;
                }
                Outbound::Ack(_) => {}
                other => panic!("expected an update, got {other:?}"),
            }
        }
    }

    /// The next update, which must have this state (and return it).
    pub async fn expect(&mut self, task_id: &str, state: TaskState) -> pb::TaskStatusUpdate {
        let u = self.update().await;
        assert_eq!(
            (u.task_id.as_str(), u.state()),
            (task_id, state),
            "unexpected update {u:?}"
        );
        u
    }

    pub async fn expect_ack(&mut self, task_id: &str, attempt: u32) {
        match self.next().await {
            Outbound::Ack(a) => assert_eq!((a.task_id.as_str(), a.attempt), (task_id, attempt)),
            other => panic!("expected an ack, got {other:?}"),
        }
    }

    /// Nothing more comes out (virtual time runs ahead while waiting).
    pub async fn expect_quiet(&mut self) {
        if let Ok(Some(msg)) = tokio::time::timeout(Duration::from_secs(30), self.out.recv()).await
        {
            panic!("unexpected output {msg:?}");
        }
    }

    pub async fn full_sync(&mut self, session: u64) -> Vec<pb::TaskStatusUpdate> {
        self.send(Input::FullSync { session }).await;
        loop {
            match self.next().await {
                Outbound::FullSync {
                    session: s,
                    updates,
                } if s == session => return updates,
                _ => {}
            }
        }
    }

    /// Assigns a task and waits until it runs; returns the RUNNING update.
    pub async fn run_task(&mut self, task_id: &str) -> pb::TaskStatusUpdate {
        self.send(Input::Assignment(Box::new(assignment(task_id, 1))))
            .await;
        self.expect_ack(task_id, 1).await;
        self.expect(task_id, TaskState::Scheduled).await;
        self.expect(task_id, TaskState::Running).await
    }

    pub fn record(&self, task_id: &str) -> Option<TaskRecord> {
        self.store
            .load_tasks()
            .unwrap()
            .into_iter()
            .find(|r| r.task_id() == task_id)
    }

    pub fn running(&self) -> u32 {
        self.running.load(Ordering::Relaxed)
    }

    pub async fn shutdown(self) {
        self.stop.send(true).unwrap();
        self.handle.await.unwrap();
    }
}
