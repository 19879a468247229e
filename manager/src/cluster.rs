//! The manager's core object: the in-memory state, the durable write path,
//! the scheduler loop and the agent sessions. The gRPC services are thin
//! wrappers over its methods (see `tasks.rs`, `nodes.rs`, `status.rs`).
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use minkube::pb;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::error::ManagerError;
use crate::policy::RetryTimings;
use crate::scheduler;
use crate::state::State;
use crate::store::{committer, Committer, Mutation, Store};
use crate::watch::{WatchHub, HUB_CAPACITY};
use minkube_common::retry::Backoff;

/// How long a message waits for room in an agent's stream before the agent
/// counts as gone.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// `kind` labels of messages sent to agents, as [`Cluster::send`] numbers them.
const OUTBOUND_KINDS: [&str; 7] = [
    "welcome",
    "assignment",
    "stop",
    "desired_set",
    "logs_request",
    "logs_cancel",
    "release",
];

/// Counts a message sent to an agent. Each handle is looked up once: the
/// macro would hash the labels and search the registry per message.
fn count_outbound(kind: usize) {
    static COUNTERS: [OnceLock<metrics::Counter>; OUTBOUND_KINDS.len()] =
        [const { OnceLock::new() }; OUTBOUND_KINDS.len()];
    COUNTERS[kind]
        .get_or_init(|| {
            metrics::counter!("minkube_manager_stream_messages_total", "direction" => "out", "kind" => OUTBOUND_KINDS[kind])
        })
        .increment(1);
}

/// Tunables of the core.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// Interval agents are told to heartbeat at.
    pub heartbeat_interval: Duration,
    /// Messages buffered per agent stream before the agent counts as gone.
    pub session_buffer: usize,
    /// Writes that may wait for the store at once.
    pub max_pending_writes: usize,
    /// How long a commit waits for company under heavy load (see
    /// [`crate::store::committer`]); zero commits at once.
    pub commit_delay: Duration,
    /// A READY node silent this long becomes DOWN.
    pub node_timeout: Duration,
    /// A node not READY this long since its last message is lost: its tasks
    /// are rescheduled or failed.
    pub reconnect_grace: Duration,
    /// Backoff of retries and restarts.
    pub retry: RetryTimings,
    /// Finished tasks older than this are deleted.
    pub retention: Duration,
    /// At most this many finished tasks are kept; the oldest go first.
    pub max_finished_tasks: usize,
    /// Host access (privileged, host network, host mounts) admins may ask for.
    pub allowed_host_access: Vec<minkube_common::host_access::HostAccess>,
    /// How long a join token admits new nodes after it is made (None: until
    /// rotated).
    pub join_token_ttl: Option<Duration>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_secs(5),
            session_buffer: 1024,
            max_pending_writes: 16 * 1024,
            commit_delay: Duration::from_millis(1),
            node_timeout: Duration::from_secs(15),
            reconnect_grace: Duration::from_secs(60),
            retry: RetryTimings {
                backoff: Backoff {
                    initial: Duration::from_secs(1),
                    max: Duration::from_secs(60),
                    multiplier: 2.0,
                },
            },
            retention: Duration::from_secs(24 * 3600),
            max_finished_tasks: 100_000,
            allowed_host_access: Vec::new(),
            join_token_ttl: Some(Duration::from_secs(24 * 3600)),
        }
    }
}

/// Shared by every request handler and background task.
pub struct Cluster {
    pub(crate) config: ClusterConfig,
    state: Mutex<State>,
    /// For reads of what memory does not keep (finished tasks' events).
    store: Arc<dyn Store>,
    committer: Committer,
    schedule: Notify,
    /// Durable task changes for `WatchTasks`.
    pub(crate) watch: WatchHub,
    /// Cancelled on shutdown; every background task watches it.
    pub(crate) shutdown: CancellationToken,
    /// Every task the cluster spawns, so shutdown can wait for them.
    pub(crate) tasks: TaskTracker,
    /// Open `TaskLogs` requests, routed by request id.
    pub(crate) logs: crate::logs::LogRouter,
    /// Finished attempts to release on their agents.
    pub(crate) releases: crate::release::Releases,
}

impl Cluster {
    /// Loads the store and starts the scheduler loop.
    pub fn start(store: Arc<dyn Store>, config: ClusterConfig) -> Result<Arc<Self>, ManagerError> {
        let started = std::time::Instant::now();
        let mut state = State::from_snapshot(store.load()?);
        // Streamed: the tasks never sit in a second copy while loading.
        store.load_tasks(&mut |task, events| state.load_task(task, events))?;
        tracing::info!(
            elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            tasks = state.tasks.len(),
            nodes = state.nodes().len(),
            waiting = state.unplaced.len(),
            "state loaded"
        );
        let committer = Committer::start(
            Arc::clone(&store),
            config.max_pending_writes,
            config.commit_delay,
        )?;
        let cluster = Arc::new(Self {
            config,
            store,
            state: Mutex::new(state),
            committer,
            schedule: Notify::new(),
            watch: WatchHub::new(HUB_CAPACITY),
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            logs: crate::logs::LogRouter::default(),
            releases: crate::release::Releases::default(),
        });
        let c = Arc::clone(&cluster);
        cluster.tasks.spawn(async move { c.run_scheduler().await });
        let c = Arc::clone(&cluster);
        cluster.tasks.spawn(async move { c.run_liveness().await });
        let c = Arc::clone(&cluster);
        cluster.tasks.spawn(async move { c.run_retention().await });
        cluster.kick_scheduler();
        Ok(cluster)
    }

    /// Locks the state. Never held across an await.
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` on the state and waits until the mutations it emitted are
    /// durable. If `f` fails, it must not have changed anything.
    pub(crate) async fn write<T>(
        &self,
        f: impl FnOnce(&mut State, &mut Vec<Mutation>) -> Result<T, ManagerError>,
    ) -> Result<T, ManagerError> {
        let permit = self.committer.reserve().await?;
        let (value, done, watched) = {
            let mut st = self.lock();
            let mut out = Vec::new();
            let value = f(&mut st, &mut out)?;
            // Both under the lock: store order and watch order = state-change order.
            let watched = self.watch.prepare(&out);
            (value, self.committer.submit(permit, out), watched)
        };
        match watched {
            Some(ticket) => ticket.publish_when_durable(done, &self.tasks).await?,
            None => drop(committer::durable(done).await?),
        }
        Ok(value)
    }

    /// Waits until every change made so far is durable.
    pub(crate) async fn flushed(&self) -> Result<(), ManagerError> {
        Ok(self.committer.flushed().await?)
    }

    /// A task's events as stored (a blocking read, off the async threads).
    pub(crate) async fn read_events(&self, id: &str) -> Result<Vec<pb::TaskEvent>, ManagerError> {
        let store = Arc::clone(&self.store);
        let id = id.to_string();
        let events = tokio::task::spawn_blocking(move || store.task_events(&id))
            .await
            .map_err(|e| crate::store::StoreError::Backend {
                op: "read events",
                message: e.to_string(),
            })??;
        Ok(events)
    }

    /// Whether the store's writes arrive fast enough to be batched.
    pub(crate) fn committer_busy(&self) -> bool {
        self.committer.is_busy()
    }

    /// Asks the scheduler to look at the pending queue.
    pub(crate) fn kick_scheduler(&self) {
        self.schedule.notify_one();
    }

    async fn run_scheduler(self: Arc<Self>) {
        let mut wake_at: Option<std::time::SystemTime> = None;
        loop {
            // Sleep until kicked, or until a task's backoff ends.
            let backoff_ends = async {
                match wake_at {
                    Some(t) => {
                        let d = t
                            .duration_since(std::time::SystemTime::now())
                            .unwrap_or(Duration::ZERO);
                        tokio::time::sleep(d).await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                () = self.schedule.notified() => {}
                () = backoff_ends => {}
            }
            let now = std::time::SystemTime::now();
            match self
                .write(|st, out| Ok(scheduler::schedule(st, now, out)))
                .await
            {
                Ok(pass) => {
                    wake_at = pass.wake_at;
                    for p in pass.placements {
                        let msg = pb::manager_message::Msg::Assignment(p.assignment);
                        self.send(&p.node_id, msg).await;
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "scheduling pass failed; retrying in 1s");
                    wake_at = Some(now + Duration::from_secs(1));
                }
            }
        }
    }

    /// Sends a message down a node's stream, if it has one, waiting up to
    /// [`SEND_TIMEOUT`] for room (a burst of assignments is fine). A channel
    /// still full after that, or closed, means the agent is gone or hopelessly
    /// behind: the session is dropped, and the agent's next session
    /// resynchronises everything.
    pub(crate) async fn send(&self, node_id: &str, msg: pb::manager_message::Msg) -> bool {
        let session = {
            let st = self.lock();
            match st.nodes().get(node_id).and_then(|n| n.session.as_ref()) {
                Some(s) => (s.id, s.tx.clone()),
                None => return false,
            }
        };
        let (session_id, tx) = session;
        let kind = match &msg {
            pb::manager_message::Msg::Welcome(_) => 0,
            pb::manager_message::Msg::Assignment(_) => 1,
            pb::manager_message::Msg::Stop(_) => 2,
            pb::manager_message::Msg::DesiredSet(_) => 3,
            pb::manager_message::Msg::LogsRequest(_) => 4,
            pb::manager_message::Msg::LogsCancel(_) => 5,
            pb::manager_message::Msg::Release(_) => 6,
        };
        let message = pb::ManagerMessage { msg: Some(msg) };
        match tx.send_timeout(Ok(message), SEND_TIMEOUT).await {
            Ok(()) => {
                count_outbound(kind);
                true
            }
            Err(e) => {
                tracing::warn!(node_id, error = %e, "agent stream full or closed; dropping the session");
                self.detach_session(node_id, session_id);
                false
            }
        }
    }

    /// Sends an assignment through a slot held in a node's stream (see
    /// [`crate::scheduler::admit`]): never waits. A session that ended
    /// meanwhile drops it; the node's next session gets its desired set.
    pub(crate) fn send_reserved(
        &self,
        slot: crate::scheduler::StreamSlot,
        node_id: &str,
        assignment: pb::Assignment,
    ) {
        let msg = pb::manager_message::Msg::Assignment(assignment);
        tracing::trace!(node_id, "assignment placed at creation");
        slot.send(Ok(pb::ManagerMessage { msg: Some(msg) }));
        count_outbound(1);
    }

    /// Sets the gauges that describe live state (run before each scrape):
    /// tasks by state, nodes by state, connected agents.
    pub fn collect_gauges(&self) {
        use minkube::convert::{node_state_name, task_state_name};
        use minkube::pb::NodeState;
        let (tasks, nodes, connected) = {
            let st = self.lock();
            // Kept per state by State: a scrape never walks every task.
            let mut tasks = [0u64; 6];
            for s in minkube::convert::TASK_STATES {
                if let Some(n) = tasks.get_mut(s as usize) {
                    *n = st.count_in(s);
                }
            }
            let mut nodes = [0u64; 4];
            for n in st.nodes().values() {
                if let Some(c) = nodes.get_mut(n.node.state() as usize) {
                    *c += 1;
                }
            }
            let connected = st.nodes().values().filter(|n| n.session.is_some()).count();
            (tasks, nodes, connected)
        };
        for s in minkube::convert::TASK_STATES {
            metrics::gauge!("minkube_manager_tasks", "state" => task_state_name(s))
                .set(tasks[s as usize] as f64);
        }
        for s in [NodeState::Ready, NodeState::Disconnected, NodeState::Down] {
            metrics::gauge!("minkube_manager_nodes", "state" => node_state_name(s))
                .set(nodes[s as usize] as f64);
        }
        metrics::gauge!("minkube_manager_connected_agents").set(connected as f64);
    }

    /// Stops background work and flushes the store. Streams end because
    /// their sessions are cancelled.
    pub async fn shutdown(&self, grace: Duration) {
        self.shutdown.cancel();
        {
            let mut st = self.lock();
            for n in st.nodes_mut().values_mut() {
                if let Some(s) = n.session.take() {
                    s.cancel.cancel();
                }
            }
        }
        self.tasks.close();
        if tokio::time::timeout(grace, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("background tasks did not stop within {grace:?}");
        }
        self.committer.shutdown();
    }
}

/// A cluster on a fresh store in `dir`, for unit tests.
#[cfg(test)]
pub(crate) async fn test_cluster(dir: &std::path::Path) -> Arc<Cluster> {
    #[allow(clippy::unwrap_used)]
    let store = Arc::new(crate::store::RedbStore::open(dir).unwrap());
    #[allow(clippy::unwrap_used)]
    Cluster::start(store, ClusterConfig::default()).unwrap()
}

/// The stream of a node as a unit test sees it.
#[cfg(test)]
pub(crate) type TestStream = tokio::sync::mpsc::Receiver<Result<pb::ManagerMessage, tonic::Status>>;

/// Registers node `name` (1 core, `memory_mb`) and attaches a session whose
/// messages arrive on the returned stream (`buffer` deep), for unit tests.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) async fn test_node(
    c: &Cluster,
    name: &str,
    memory_mb: u64,
    buffer: usize,
) -> (String, TestStream) {
    let node_id = c
        .register(
            pb::RegisterRequest {
                name: name.into(),
                capacity: Some(pb::Resources {
                    cpu_cores: 1.0,
                    memory_mb,
                }),
                ..Default::default()
            },
            None,
        )
        .await
        .unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(buffer);
    c.attach_session(&node_id, tx).unwrap();
    (node_id, rx)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::store::RedbStore;

    #[tokio::test]
    async fn a_burst_larger_than_the_stream_buffer_waits_instead_of_dropping_the_agent() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(RedbStore::open(dir.path()).unwrap());
        let config = ClusterConfig {
            session_buffer: 2,
            ..ClusterConfig::default()
        };
        let c = Cluster::start(store, config).unwrap();
        let (_, mut rx) = test_node(&c, "a", 10_000, 2).await;
        for i in 0..10 {
            let spec = pb::TaskSpec {
                name: format!("t{i}"),
                image: "busybox".into(),
                memory_mb: 16,
                ..Default::default()
            };
            c.create_task(Some(spec)).await.unwrap();
        }
        let mut assigned = 0;
        while assigned < 10 {
            let msg = tokio::time::timeout(Duration::from_secs(5), rx.recv())
                .await
                .expect("assignments keep coming")
                .expect("stream open")
                .unwrap();
            if let Some(pb::manager_message::Msg::Assignment(_)) = msg.msg {
                assigned += 1;
            }
            // A slow agent.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let node = c.get_node("a").unwrap();
        assert_eq!(node.state(), pb::NodeState::Ready);
        assert_eq!(node.active_tasks, 10);
        c.shutdown(Duration::from_secs(1)).await;
    }
}
