//! A simulated container runtime, for benchmarks only (`--runtime
//! simulated`): containers "start" at once and "exit" with code 0 after a
//! configured time, without any process. Everything around it (reconciler,
//! local records, the stream to the manager, batching, heartbeats) is the
//! agent's real code, so a process full of these "hollow" agents loads the
//! manager exactly as real nodes would.
//!
//! No timer task is spawned per container: exits are kept in a heap and
//! fired by the event stream itself, which the reconciler always reads.
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::StreamExt;
use minkube::pb;
use minkube_common::labels;
use prost_types::Timestamp;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::{
    ContainerFilter, ContainerInfo, ContainerRef, ContainerSpec, ContainerStatus, EventKind,
    LogOptions, Runtime, RuntimeError, RuntimeEvent,
};

/// Exit code of a simulated container stopped by the agent (SIGTERM).
const STOPPED_EXIT_CODE: i32 = 143;

struct Container {
    info: ContainerInfo,
    node_id: String,
}

#[derive(Default)]
struct Sim {
    containers: HashMap<String, Container>,
    /// Container ids by task: the agent lists a task's containers before
    /// each start, and a hollow agent keeps every finished one.
    by_task: HashMap<String, Vec<String>>,
    /// Due exits, earliest first: (when, container id).
    exits: BinaryHeap<Reverse<(Instant, String)>>,
    /// Events not yet read by the event stream.
    events: VecDeque<RuntimeEvent>,
    next_id: u64,
}

/// The simulated runtime. Cheap to clone; clones share the containers.
#[derive(Clone)]
pub struct SimulatedRuntime {
    sim: Arc<Mutex<Sim>>,
    wake: Arc<Notify>,
    exit_after: Option<Duration>,
}

fn now_ts() -> Timestamp {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    Timestamp {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        // Below one second, so it always fits.
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

impl SimulatedRuntime {
    /// Containers exit with code 0 `exit_after` their start; `None` keeps
    /// them running until stopped.
    pub fn new(exit_after: Option<Duration>) -> Self {
        Self {
            sim: Arc::new(Mutex::new(Sim::default())),
            wake: Arc::new(Notify::new()),
            exit_after,
        }
    }

    fn sim(&self) -> MutexGuard<'_, Sim> {
        // A panic while holding the lock cannot leave the maps half-updated
        // in a way that matters to a benchmark; keep going.
        self.sim.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks a container running now, queues its start event and its exit.
    fn start(&self, sim: &mut Sim, id: &str) -> Option<ContainerInfo> {
        let c = sim.containers.get_mut(id)?;
        let at = now_ts();
        c.info.status = ContainerStatus::Running;
        c.info.started_at = Some(at);
        let info = c.info.clone();
        sim.events.push_back(RuntimeEvent {
            container_id: id.to_string(),
            task_id: info.task_id.clone(),
            attempt: info.attempt,
            kind: EventKind::Started,
            at,
        });
        if let Some(after) = self.exit_after {
            sim.exits
                .push(Reverse((Instant::now() + after, id.to_string())));
        }
        self.wake.notify_one();
        Some(info)
    }

    /// Ends every container whose time is up; the earliest exit still
    /// ahead, if any.
    fn fire_due_exits(sim: &mut Sim) -> Option<Instant> {
        let now = Instant::now();
        while let Some(Reverse((when, _))) = sim.exits.peek() {
            if *when > now {
                return Some(*when);
            }
            let Some(Reverse((_, id))) = sim.exits.pop() else {
                break;
            };
            let Some(c) = sim.containers.get_mut(&id) else {
                continue; // removed before its time
            };
            if !c.info.status.is_live() {
                continue;
            }
            let at = now_ts();
            c.info.status = ContainerStatus::Exited;
            c.info.exit_code = Some(0);
            c.info.finished_at = Some(at);
            let ev = RuntimeEvent {
                container_id: id,
                task_id: c.info.task_id.clone(),
                attempt: c.info.attempt,
                kind: EventKind::Died {
                    exit_code: 0,
                    oom_killed: false,
                },
                at,
            };
            sim.events.push_back(ev);
        }
        None
    }

    /// Waits for the next event: a queued one, or an exit coming due.
    async fn next_event(&self) -> RuntimeEvent {
        loop {
            // Registered before looking, so a start in between is not missed.
            let woken = self.wake.notified();
            let next_exit = {
                let mut sim = self.sim();
                let next_exit = Self::fire_due_exits(&mut sim);
                if let Some(ev) = sim.events.pop_front() {
                    return ev;
                }
                next_exit
            };
            match next_exit {
                Some(when) => {
                    tokio::select! {
                        () = woken => {}
                        () = tokio::time::sleep_until(when) => {}
                    }
                }
                None => woken.await,
            }
        }
    }
}

#[async_trait]
impl Runtime for SimulatedRuntime {
    async fn ping(&self) -> Result<(), RuntimeError> {
        Ok(())
    }

    async fn image_present(&self, _image: &str) -> Result<bool, RuntimeError> {
        Ok(true)
    }

    async fn pull_image(&self, _image: &str) -> Result<(), RuntimeError> {
        Ok(())
    }

    async fn create_and_start(&self, spec: &ContainerSpec) -> Result<ContainerInfo, RuntimeError> {
        let label = |key: &str| {
            spec.labels.get(key).cloned().ok_or_else(|| {
                RuntimeError::InvalidSpec(format!("the container has no {key} label"))
            })
        };
        let task_id = label(labels::TASK_ID)?;
        let node_id = label(labels::NODE_ID)?;
        let attempt = label(labels::ATTEMPT)?.parse().map_err(|_| {
            RuntimeError::InvalidSpec(format!("the {} label is not a number", labels::ATTEMPT))
        })?;
        let mut sim = self.sim();
        sim.next_id += 1;
        let id = format!("sim-{:012x}", sim.next_id);
        let info = ContainerInfo {
            id: id.clone(),
            task_id,
            attempt,
            status: ContainerStatus::Created,
            exit_code: None,
            oom_killed: false,
            ports: Vec::new(),
            started_at: None,
            finished_at: None,
        };
        sim.by_task
            .entry(info.task_id.clone())
            .or_default()
            .push(id.clone());
        sim.containers
            .insert(id.clone(), Container { info, node_id });
        self.start(&mut sim, &id)
            .ok_or_else(|| RuntimeError::NotFound(id))
    }

    async fn start_existing(&self, container_id: &str) -> Result<ContainerInfo, RuntimeError> {
        let mut sim = self.sim();
        self.start(&mut sim, container_id)
            .ok_or_else(|| RuntimeError::NotFound(format!("no such container: {container_id}")))
    }

    async fn stop_and_remove(
        &self,
        container_id: &str,
        _timeout: Duration,
    ) -> Result<Option<i32>, RuntimeError> {
        let mut sim = self.sim();
        let Some(mut c) = sim.containers.remove(container_id) else {
            return Ok(None);
        };
        if let Some(ids) = sim.by_task.get_mut(&c.info.task_id) {
            ids.retain(|id| id != container_id);
            if ids.is_empty() {
                sim.by_task.remove(&c.info.task_id);
            }
        }
        if c.info.status.is_live() {
            c.info.exit_code = Some(STOPPED_EXIT_CODE);
            sim.events.push_back(RuntimeEvent {
                container_id: container_id.to_string(),
                task_id: c.info.task_id.clone(),
                attempt: c.info.attempt,
                kind: EventKind::Died {
                    exit_code: STOPPED_EXIT_CODE,
                    oom_killed: false,
                },
                at: now_ts(),
            });
            self.wake.notify_one();
        }
        Ok(c.info.exit_code)
    }

    async fn list(&self, filter: &ContainerFilter) -> Result<Vec<ContainerRef>, RuntimeError> {
        let mut sim = self.sim();
        Self::fire_due_exits(&mut sim);
        let of_task: Box<dyn Iterator<Item = &Container>> = match &filter.task_id {
            Some(task) => Box::new(
                sim.by_task
                    .get(task)
                    .into_iter()
                    .flatten()
                    .filter_map(|id| sim.containers.get(id)),
            ),
            None => Box::new(sim.containers.values()),
        };
        Ok(of_task
            .filter(|c| c.node_id == filter.node_id)
            .filter(|c| filter.task_id.as_ref().is_none_or(|t| *t == c.info.task_id))
            .filter(|c| filter.attempt.is_none_or(|a| a == c.info.attempt))
            .map(|c| ContainerRef {
                id: c.info.id.clone(),
                task_id: c.info.task_id.clone(),
                attempt: c.info.attempt,
                status: c.info.status,
            })
            .collect())
    }

    async fn inspect(&self, container_id: &str) -> Result<Option<ContainerInfo>, RuntimeError> {
        let mut sim = self.sim();
        Self::fire_due_exits(&mut sim);
        Ok(sim.containers.get(container_id).map(|c| c.info.clone()))
    }

    fn events(
        &self,
        _node_id: &str,
        _since_secs: i64,
    ) -> BoxStream<'static, Result<RuntimeEvent, RuntimeError>> {
        // One agent per runtime, so every event is this node's.
        futures::stream::unfold(self.clone(), |rt| async move {
            let ev = rt.next_event().await;
            Some((Ok(ev), rt))
        })
        .boxed()
    }

    fn logs(
        &self,
        container_id: &str,
        _options: LogOptions,
    ) -> BoxStream<'static, Result<pb::LogChunk, RuntimeError>> {
        let item = if self.sim().containers.contains_key(container_id) {
            Ok(pb::LogChunk {
                stream: pb::LogStream::Stdout as i32,
                data: format!("simulated container {container_id}: no output\n").into_bytes(),
                timestamp: None,
            })
        } else {
            Err(RuntimeError::NotFound(format!(
                "no such container: {container_id}"
            )))
        };
        futures::stream::iter([item]).boxed()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn spec(task: &str) -> ContainerSpec {
        ContainerSpec {
            name: task.into(),
            image: "any:1".into(),
            command: Vec::new(),
            env: Vec::new(),
            memory_bytes: 0,
            nano_cpus: 0,
            ports: Vec::new(),
            labels: [
                (labels::TASK_ID.to_string(), task.to_string()),
                (labels::NODE_ID.to_string(), "n1".to_string()),
                (labels::ATTEMPT.to_string(), "2".to_string()),
            ]
            .into(),
            privileged: false,
            host_network: false,
            binds: Vec::new(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn containers_start_at_once_and_exit_after_the_configured_time() {
        let rt = SimulatedRuntime::new(Some(Duration::from_secs(3)));
        let mut events = rt.events("n1", 0);
        let info = rt.create_and_start(&spec("t1")).await.unwrap();
        assert_eq!(info.status, ContainerStatus::Running);
        assert_eq!((info.task_id.as_str(), info.attempt), ("t1", 2));
        let started = events.next().await.unwrap().unwrap();
        assert_eq!(started.kind, EventKind::Started);
        let before = Instant::now();
        let died = events.next().await.unwrap().unwrap();
        assert_eq!(
            died.kind,
            EventKind::Died {
                exit_code: 0,
                oom_killed: false
            }
        );
        assert_eq!(before.elapsed(), Duration::from_secs(3));
        let after = rt.inspect(&info.id).await.unwrap().unwrap();
        assert_eq!(after.status, ContainerStatus::Exited);
        assert_eq!(after.exit_code, Some(0));
        let listed = rt.list(&ContainerFilter::task("n1", "t1")).await.unwrap();
        assert_eq!(listed.len(), 1);
        assert!(rt
            .list(&ContainerFilter::node("other"))
            .await
            .unwrap()
            .is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn stopping_a_running_container_reports_sigterm_and_removes_it() {
        let rt = SimulatedRuntime::new(None);
        let mut events = rt.events("n1", 0);
        let info = rt.create_and_start(&spec("t1")).await.unwrap();
        assert_eq!(
            events.next().await.unwrap().unwrap().kind,
            EventKind::Started
        );
        let code = rt
            .stop_and_remove(&info.id, Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(code, Some(STOPPED_EXIT_CODE));
        assert_eq!(
            events.next().await.unwrap().unwrap().kind,
            EventKind::Died {
                exit_code: STOPPED_EXIT_CODE,
                oom_killed: false
            }
        );
        assert_eq!(rt.inspect(&info.id).await.unwrap(), None);
        assert_eq!(
            rt.stop_and_remove(&info.id, Duration::from_secs(1))
                .await
                .unwrap(),
            None
        );
    }

    #[tokio::test]
    async fn a_task_lists_its_own_containers_until_they_are_removed() {
        let rt = SimulatedRuntime::new(None);
        let first = rt.create_and_start(&spec("t1")).await.unwrap();
        let mut next = spec("t1");
        next.labels
            .insert(labels::ATTEMPT.to_string(), "3".to_string());
        let second = rt.create_and_start(&next).await.unwrap();
        let other = rt.create_and_start(&spec("t2")).await.unwrap();
        let ids = |filter: ContainerFilter| {
            let rt = rt.clone();
            async move {
                let mut ids: Vec<String> = rt
                    .list(&filter)
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|c| c.id)
                    .collect();
                ids.sort();
                ids
            }
        };
        assert_eq!(
            ids(ContainerFilter::task("n1", "t1")).await,
            vec![first.id.clone(), second.id.clone()]
        );
        assert_eq!(
            ids(ContainerFilter::attempt("n1", "t1", 3)).await,
            vec![second.id.clone()]
        );
        assert!(ids(ContainerFilter::task("n2", "t1")).await.is_empty());
        assert_eq!(ids(ContainerFilter::node("n1")).await.len(), 3);
        rt.stop_and_remove(&first.id, Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(
            ids(ContainerFilter::task("n1", "t1")).await,
            vec![second.id.clone()]
        );
        rt.stop_and_remove(&second.id, Duration::from_secs(1))
            .await
            .unwrap();
        assert!(ids(ContainerFilter::task("n1", "t1")).await.is_empty());
        assert_eq!(ids(ContainerFilter::task("n1", "t2")).await, vec![other.id]);
    }

    #[tokio::test]
    async fn a_spec_without_minkube_labels_is_refused() {
        let rt = SimulatedRuntime::new(None);
        let mut s = spec("t1");
        s.labels.clear();
        let err = rt.create_and_start(&s).await.unwrap_err();
        assert!(err.to_string().contains("label"), "{err}");
    }
}
