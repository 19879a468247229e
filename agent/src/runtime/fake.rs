//! In-memory runtime for unit tests: records every call and behaves like a
//! tiny, instant Docker (including the events Docker would emit).
#![allow(clippy::unwrap_used)]
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::StreamExt;
use minkube::pb;
use prost_types::Timestamp;
use tokio::sync::mpsc;

use super::{
    ContainerFilter, ContainerInfo, ContainerRef, ContainerSpec, ContainerStatus, EventKind,
    LogOptions, Runtime, RuntimeError, RuntimeEvent,
};

/// A fake container: its details plus the node it belongs to.
#[derive(Debug, Clone)]
pub struct FakeContainer {
    pub info: ContainerInfo,
    pub node_id: String,
    pub spec: Option<ContainerSpec>,
}

#[derive(Default)]
struct State {
    images: HashSet<String>,
    pullable: HashSet<String>,
    containers: HashMap<String, FakeContainer>,
    calls: Vec<String>,
    next_id: u32,
    create_error: Option<RuntimeError>,
    pull_error: Option<RuntimeError>,
    pull_delay: Duration,
    exit_at_once: Option<i32>,
    start_return_delay: Duration,
}

type EventQueue = Arc<tokio::sync::Mutex<mpsc::Receiver<Result<RuntimeEvent, RuntimeError>>>>;

/// The fake. Cheap to clone; clones share state.
#[derive(Clone)]
pub struct FakeRuntime {
    state: Arc<Mutex<State>>,
    events_tx: mpsc::Sender<Result<RuntimeEvent, RuntimeError>>,
    events_rx: EventQueue,
}

pub fn ts(seconds: i64) -> Timestamp {
    Timestamp { seconds, nanos: 0 }
}

impl FakeRuntime {
    pub fn new() -> Self {
        let (events_tx, events_rx) = mpsc::channel(256);
        let state = State {
            next_id: 1,
            ..Default::default()
        };
        Self {
            state: Arc::new(Mutex::new(state)),
            events_tx,
            events_rx: Arc::new(tokio::sync::Mutex::new(events_rx)),
        }
    }

    fn st(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    pub fn add_image(&self, image: &str) {
        self.st().images.insert(image.to_string());
    }

    pub fn set_pullable(&self, image: &str) {
        self.st().pullable.insert(image.to_string());
    }

    pub fn set_pull_delay(&self, d: Duration) {
        self.st().pull_delay = d;
    }

    /// New containers exit with `code` right after starting, before the
    /// start call returns (their die event is already queued).
    pub fn exit_at_once(&self, code: i32) {
        self.st().exit_at_once = Some(code);
    }

    /// The start call returns `d` after the container started (as Docker's
    /// does when the inspect that follows the start waits behind other
    /// requests).
    pub fn set_start_return_delay(&self, d: Duration) {
        self.st().start_return_delay = d;
    }

    /// Every create fails with `e` until [`Self::heal`].
    pub fn fail_create(&self, e: RuntimeError) {
        self.st().create_error = Some(e);
    }

    /// Every pull fails with `e` until [`Self::heal`] (pullable or not).
    pub fn fail_pull(&self, e: RuntimeError) {
        self.st().pull_error = Some(e);
    }

    /// Creates and pulls work again.
    pub fn heal(&self) {
        let mut st = self.st();
        st.create_error = None;
        st.pull_error = None;
    }

    pub fn calls(&self) -> Vec<String> {
        self.st().calls.clone()
    }

    pub fn calls_starting(&self, prefix: &str) -> Vec<String> {
        self.calls()
            .into_iter()
            .filter(|c| c.starts_with(prefix))
            .collect()
    }

    pub fn pulls(&self) -> Vec<String> {
        self.calls_starting("pull ")
            .into_iter()
            .map(|c| c["pull ".len()..].to_string())
            .collect()
    }

    pub fn containers(&self) -> Vec<FakeContainer> {
        let mut v: Vec<_> = self.st().containers.values().cloned().collect();
        v.sort_by(|a, b| a.info.id.cmp(&b.info.id));
        v
    }

    pub fn container(&self, id: &str) -> Option<FakeContainer> {
        self.st().containers.get(id).cloned()
    }

    /// Puts a container in place as if an earlier agent run had created it.
    pub fn insert_container(
        &self,
        node_id: &str,
        task_id: &str,
        attempt: u32,
        status: ContainerStatus,
        exit_code: Option<i32>,
    ) -> String {
        let mut st = self.st();
        let id = format!("c{}", st.next_id);
        st.next_id += 1;
        let info = ContainerInfo {
            id: id.clone(),
            task_id: task_id.to_string(),
            attempt,
            status,
            exit_code,
            oom_killed: false,
            ports: Vec::new(),
            started_at: (status != ContainerStatus::Created).then(|| ts(100)),
            finished_at: status.is_exited().then(|| ts(200)),
        };
        st.containers.insert(
            id.clone(),
            FakeContainer {
                info,
                node_id: node_id.to_string(),
                spec: None,
            },
        );
        id
    }

    /// The container's process ends; Docker would emit `die`.
    pub async fn exit(&self, id: &str, exit_code: i32, oom_killed: bool) {
        let ev = {
            let mut st = self.st();
            let c = st.containers.get_mut(id).unwrap();
            c.info.status = ContainerStatus::Exited;
            c.info.exit_code = Some(exit_code);
            c.info.oom_killed = oom_killed;
            c.info.finished_at = Some(ts(300));
            RuntimeEvent {
                container_id: id.to_string(),
                task_id: c.info.task_id.clone(),
                attempt: c.info.attempt,
                kind: EventKind::Died {
                    exit_code,
                    oom_killed,
                },
                at: ts(300),
            }
        };
        self.events_tx.send(Ok(ev)).await.unwrap();
    }

    /// Removes a container behind the agent's back, without events.
    pub fn vanish(&self, id: &str) {
        self.st().containers.remove(id);
    }

    /// Breaks the event stream, as a daemon restart would.
    pub async fn break_events(&self) {
        self.events_tx
            .send(Err(RuntimeError::Unavailable("connection reset".into())))
            .await
            .unwrap();
    }

    fn emit(&self, ev: RuntimeEvent) {
        // Tests read events promptly; a full buffer would be a test bug.
        self.events_tx.try_send(Ok(ev)).unwrap();
    }

    fn started(&self, id: &str) -> ContainerInfo {
        let info = {
            let mut st = self.st();
            let c = st.containers.get_mut(id).unwrap();
            c.info.status = ContainerStatus::Running;
            c.info.started_at = Some(ts(100));
            c.info.clone()
        };
        self.emit(RuntimeEvent {
            container_id: id.to_string(),
            task_id: info.task_id.clone(),
            attempt: info.attempt,
            kind: EventKind::Started,
            at: ts(100),
        });
        info
    }
}

#[async_trait]
impl Runtime for FakeRuntime {
    async fn ping(&self) -> Result<(), RuntimeError> {
        Ok(())
    }

    async fn image_present(&self, image: &str) -> Result<bool, RuntimeError> {
        Ok(self.st().images.contains(image))
    }

    async fn pull_image(&self, image: &str) -> Result<(), RuntimeError> {
        let delay = {
            let mut st = self.st();
            st.calls.push(format!("pull {image}"));
            st.pull_delay
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let mut st = self.st();
        if let Some(e) = st.pull_error.clone() {
            return Err(e);
        }
        if st.pullable.contains(image) {
            st.images.insert(image.to_string());
            Ok(())
        } else {
            // What Docker answers (HTTP 404) for an image no registry has.
            Err(RuntimeError::NotFound(format!(
                "pull access denied for {image}, repository does not exist or may require 'docker login'"
            )))
        }
    }

    async fn create_and_start(&self, spec: &ContainerSpec) -> Result<ContainerInfo, RuntimeError> {
        let id = {
            let mut st = self.st();
            let task_id = spec.labels["minkube.task-id"].clone();
            let attempt: u32 = spec.labels["minkube.attempt"].parse().unwrap();
            st.calls.push(format!("create {task_id}/{attempt}"));
            if let Some(e) = st.create_error.clone() {
                return Err(e);
            }
            if !st.images.contains(&spec.image) {
                return Err(RuntimeError::PullFailed {
                    image: spec.image.clone(),
                    status: Some(404),
                    message: "No such image".into(),
                });
            }
            let n = st.next_id;
            st.next_id += 1;
            let id = format!("c{n}");
            let ports = spec
                .ports
                .iter()
                .enumerate()
                .map(|(i, p)| pb::PortBinding {
                    container_port: p.port,
                    protocol: p.protocol as i32,
                    host_ip: "0.0.0.0".into(),
                    host_port: 40000 + n * 10 + u32::try_from(i).unwrap(),
                })
                .collect();
            let info = ContainerInfo {
                id: id.clone(),
                task_id,
                attempt,
                status: ContainerStatus::Created,
                exit_code: None,
                oom_killed: false,
                ports,
                started_at: None,
                finished_at: None,
            };
            st.containers.insert(
                id.clone(),
                FakeContainer {
                    info,
                    node_id: spec.labels["minkube.node-id"].clone(),
                    spec: Some(spec.clone()),
                },
            );
            id
        };
        let info = self.started(&id);
        let exit_at_once = self.st().exit_at_once;
        if let Some(code) = exit_at_once {
            self.exit(&id, code, false).await;
        }
        let delay = self.st().start_return_delay;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        Ok(info)
    }

    async fn start_existing(&self, container_id: &str) -> Result<ContainerInfo, RuntimeError> {
        self.st().calls.push(format!("start {container_id}"));
        if !self.st().containers.contains_key(container_id) {
            return Err(RuntimeError::NotFound(container_id.into()));
        }
        Ok(self.started(container_id))
    }

    async fn stop_and_remove(
        &self,
        container_id: &str,
        _timeout: Duration,
    ) -> Result<Option<i32>, RuntimeError> {
        let (exit_code, died) = {
            let mut st = self.st();
            st.calls.push(format!("stop {container_id}"));
            let Some(mut c) = st.containers.remove(container_id) else {
                return Ok(None);
            };
            let died = c.info.status.is_live().then(|| RuntimeEvent {
                container_id: container_id.to_string(),
                task_id: c.info.task_id.clone(),
                attempt: c.info.attempt,
                kind: EventKind::Died {
                    exit_code: 143,
                    oom_killed: false,
                },
                at: ts(400),
            });
            if died.is_some() {
                c.info.exit_code = Some(143);
            }
            (c.info.exit_code, died)
        };
        if let Some(ev) = died {
            self.emit(ev);
        }
        Ok(exit_code)
    }

    async fn list(&self, filter: &ContainerFilter) -> Result<Vec<ContainerRef>, RuntimeError> {
        let mut st = self.st();
        st.calls.push("list".into());
        let mut out: Vec<ContainerRef> = st
            .containers
            .values()
            .filter(|c| c.node_id == filter.node_id)
            .filter(|c| filter.task_id.as_ref().is_none_or(|t| *t == c.info.task_id))
            .filter(|c| filter.attempt.is_none_or(|a| a == c.info.attempt))
            .map(|c| ContainerRef {
                id: c.info.id.clone(),
                task_id: c.info.task_id.clone(),
                attempt: c.info.attempt,
                status: c.info.status,
            })
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    async fn inspect(&self, container_id: &str) -> Result<Option<ContainerInfo>, RuntimeError> {
        Ok(self
            .st()
            .containers
            .get(container_id)
            .map(|c| c.info.clone()))
    }

    fn events(
        &self,
        _node_id: &str,
        _since_secs: i64,
    ) -> BoxStream<'static, Result<RuntimeEvent, RuntimeError>> {
        self.st().calls.push("subscribe".into());
        // Every subscription reads the same queue, like reconnecting to one daemon.
        let rx = Arc::clone(&self.events_rx);
        futures::stream::unfold(rx, |rx| async move {
            let item = rx.lock().await.recv().await?;
            Some((item, rx))
        })
        .boxed()
    }

    fn logs(
        &self,
        container_id: &str,
        options: LogOptions,
    ) -> BoxStream<'static, Result<pb::LogChunk, RuntimeError>> {
        // Every container wrote one line to stdout, then one to stderr.
        let items: Vec<_> = if self.st().containers.contains_key(container_id) {
            let line = |stream: pb::LogStream, text: &str| pb::LogChunk {
                stream: stream as i32,
                data: format!("{text} of {container_id}\n").into_bytes(),
                timestamp: options.timestamps.then(|| ts(1)),
            };
            let all = [
                line(pb::LogStream::Stdout, "out"),
                line(pb::LogStream::Stderr, "err"),
            ];
            let skip = match options.tail {
                0 => 0,
                n => all.len().saturating_sub(n as usize),
            };
            all.into_iter().skip(skip).map(Ok).collect()
        } else {
            vec![Err(RuntimeError::NotFound(container_id.into()))]
        };
        futures::stream::iter(items).boxed()
    }
}
