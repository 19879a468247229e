//! The agent's core: one actor that owns the local task records and turns
//! manager messages, container events and the results of its background work
//! into container operations and status updates.
//!
//! Nothing here knows about gRPC: the session feeds [`Input`]s in and sends
//! the [`Outbound`] messages on. Every update bumps the task's sequence and is
//! written to the local store before it leaves, so a restart never reuses a
//! sequence and the next full sync carries whatever the manager missed.
mod apply;
mod observe;
mod report;
mod watcher;
mod work;

#[cfg(test)]
mod test_harness;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_attempts;
#[cfg(test)]
mod tests_failures;
#[cfg(test)]
mod tests_sync;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use minkube::pb;
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{debug, error, info, warn};

use crate::local_store::{LocalStore, StoreError, TaskRecord};
use crate::runtime::{Runtime, RuntimeEvent};

pub use report::{exit_outcome, ExitOutcome};
use work::{JobResult, ListPurpose};

/// Capacity of the reconciler's internal channel (events, progress).
const INTERNAL_CAPACITY: usize = 256;

/// Most queued events handled in one round before its records are synced
/// and its messages sent; bounds how long other inputs wait.
const MAX_EVENTS_PER_ROUND: usize = 64;

/// Attempts to list containers at startup before going on without.
const STARTUP_LIST_TRIES: u32 = 3;

/// What the session hands the reconciler.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// Run a task (idempotent by task id and attempt).
    Assignment(Box<pb::Assignment>),
    /// Stop a task and remove its container.
    Stop(pb::StopOrder),
    /// Every task the node should run.
    DesiredSet(pb::DesiredSet),
    /// Emit the full-sync snapshot for session number `session`.
    FullSync {
        /// Tag echoed in [`Outbound::FullSync`].
        session: u64,
    },
    /// The manager assigned a different node id.
    NodeId(String),
    /// Finished attempts the manager has stored: their records can go.
    Release(pb::Release),
}

/// What the reconciler hands the session, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Outbound {
    /// One observed-state change.
    Update(pb::TaskStatusUpdate),
    /// An assignment was recorded.
    Ack(pb::Ack),
    /// The latest update of every record, answering [`Input::FullSync`].
    /// Updates queued before it are older than it.
    FullSync {
        /// The session that asked.
        session: u64,
        /// One update per record.
        updates: Vec<pb::TaskStatusUpdate>,
    },
}

/// Tunables of the reconciler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Grace period of a container stop.
    pub stop_timeout: Duration,
    /// Period of the safety-net re-list.
    pub resync_interval: Duration,
}

/// Messages from the reconciler's own helpers.
#[derive(Debug)]
pub(crate) enum Internal {
    /// A container event of this node.
    Event(RuntimeEvent),
    /// The event stream broke and the daemon answers again: re-list.
    EventsResumed,
    /// A start job reached a step worth reporting (e.g. pulling).
    Progress {
        task_id: String,
        attempt: u32,
        reason: String,
    },
}

/// Background work a task has in flight.
#[derive(Debug)]
enum Job {
    Idle,
    /// Preparing/creating/starting; `cancel` asks it to give up.
    Starting {
        cancel: watch::Sender<bool>,
    },
    /// Stopping and removing.
    Stopping,
}

/// A container exit seen while its start job was still finishing.
#[derive(Debug, Clone, PartialEq)]
struct Exit {
    container_id: String,
    exit_code: Option<i32>,
    oom_killed: bool,
    at: Option<prost_types::Timestamp>,
}

#[derive(Debug)]
struct Entry {
    rec: TaskRecord,
    job: Job,
    /// An exit seen while the start job ran with a stop requested: applied
    /// once the job's result is in (the stop decides how it is reported).
    pending_exit: Option<Exit>,
    /// When the engine said the container started while its start job was
    /// still running.
    started_seen: Option<prost_types::Timestamp>,
    /// A Release that came while an overtaken start job still ran (see
    /// [`Entry::start_overtaken`]): the record is dropped when the job ends.
    release_held: bool,
    /// Was terminal when the last full sync was taken, so the manager has it.
    synced_terminal: bool,
    /// Reconciler generation of the last change, to spot stale listings.
    generation: u64,
}

impl Entry {
    fn new(rec: TaskRecord, generation: u64) -> Self {
        Self {
            rec,
            job: Job::Idle,
            pending_exit: None,
            started_seen: None,
            release_held: false,
            synced_terminal: false,
            generation,
        }
    }

    /// Whether the container's start and exit were reported while its start
    /// job still runs (the only way a record ends during a start): the
    /// job's result then only ends the job.
    fn start_overtaken(&self) -> bool {
        matches!(self.job, Job::Starting { .. }) && self.rec.is_terminal()
    }
}

/// The actor. Build it with [`Reconciler::new`], then drive it with [`Reconciler::run`].
pub struct Reconciler {
    node_id: String,
    rt: Arc<dyn Runtime>,
    store: LocalStore,
    settings: Settings,
    tasks: HashMap<String, Entry>,
    jobs: JoinSet<JobResult>,
    out: mpsc::Sender<Outbound>,
    internal_tx: mpsc::Sender<Internal>,
    internal_rx: Option<mpsc::Receiver<Internal>>,
    watcher: Option<JoinHandle<()>>,
    running: Arc<AtomicU32>,
    generation: u64,
    listing_in_flight: bool,
    listing_again: Option<ListPurpose>,
    desired_seen: bool,
    /// Messages for the session, sent once the records they report on are
    /// durable ([`Reconciler::flush`]).
    outbox: Vec<Outbound>,
}

impl Reconciler {
    /// Loads the task records. `running` is kept equal to the number of tasks
    /// reported RUNNING, for heartbeats.
    pub fn new(
        node_id: String,
        rt: Arc<dyn Runtime>,
        store: LocalStore,
        settings: Settings,
        out: mpsc::Sender<Outbound>,
        running: Arc<AtomicU32>,
    ) -> Result<Self, StoreError> {
        let tasks: HashMap<String, Entry> = store
            .load_tasks()?
            .into_iter()
            .map(|rec| (rec.task_id().to_string(), Entry::new(rec, 0)))
            .collect();
        info!(node_id = %node_id, tasks = tasks.len(), "loaded local task records");
        let (internal_tx, internal_rx) = mpsc::channel(INTERNAL_CAPACITY);
        let me = Self {
            node_id,
            rt,
            store,
            settings,
            tasks,
            jobs: JoinSet::new(),
            out,
            internal_tx,
            internal_rx: Some(internal_rx),
            watcher: None,
            running,
            generation: 0,
            listing_in_flight: false,
            listing_again: None,
            desired_seen: false,
            outbox: Vec::new(),
        };
        me.recount_running();
        Ok(me)
    }

    /// Reconciles with Docker, then serves inputs until `shutdown` turns true
    /// or the input channel closes. Containers are left running on exit.
    pub async fn run(
        mut self,
        mut inbox: mpsc::Receiver<Input>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let Some(mut internal_rx) = self.internal_rx.take() else {
            error!("reconciler started twice");
            return;
        };
        self.start_watcher();
        self.startup().await;
        self.flush().await;

        let period = self.settings.resync_interval;
        let mut resync = tokio::time::interval_at(Instant::now() + period, period);
        resync.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // Made once, not per round: each would register a waker.
        let stop = crate::stopped(&mut shutdown);
        tokio::pin!(stop);
        loop {
            tokio::select! {
                // Events and progress before job results: what a job reported
                // (or Docker saw) before finishing is applied before its result.
                biased;
                () = &mut stop => break,
                Some(msg) = internal_rx.recv() => {
                    self.on_internal(msg).await;
                    // What is already queued (a burst of containers ending)
                    // joins this round: one sync and one batch for all.
                    for _ in 1..MAX_EVENTS_PER_ROUND {
                        match internal_rx.try_recv() {
                            Ok(msg) => self.on_internal(msg).await,
                            Err(_) => break,
                        }
                    }
                }
                Some(done) = self.jobs.join_next(), if !self.jobs.is_empty() => match done {
                    Ok(result) => self.on_job(result).await,
                    Err(e) if e.is_panic() => error!(error = %e, "a background job panicked"),
                    Err(_) => {}
                },
                input = inbox.recv() => match input {
                    Some(input) => self.on_input(input).await,
                    None => break,
                },
                _ = resync.tick() => self.request_listing(ListPurpose::Resync),
            }
            self.flush().await;
        }
        self.flush().await;
        self.stop().await;
    }

    /// Ends background work. Records are written on every change, so there
    /// is nothing left to flush; containers keep running.
    async fn stop(&mut self) {
        if let Some(w) = self.watcher.take() {
            w.abort();
        }
        self.jobs.shutdown().await;
        info!(
            tasks = self.tasks.len(),
            "reconciler stopped; containers left running"
        );
    }

    fn start_watcher(&mut self) {
        if let Some(w) = self.watcher.take() {
            w.abort();
        }
        let since = minkube::convert::now().seconds;
        self.watcher = Some(tokio::spawn(watcher::watch(
            Arc::clone(&self.rt),
            self.node_id.clone(),
            since,
            self.internal_tx.clone(),
        )));
    }

    /// Brings the records in line with Docker before anything is reported.
    async fn startup(&mut self) {
        let generation = self.bump();
        for attempt in 1..=STARTUP_LIST_TRIES {
            let wanted = self.wanted();
            match work::list(Arc::clone(&self.rt), self.node_id.clone(), wanted).await {
                Ok(listing) => {
                    self.apply_listing(ListPurpose::Startup, generation, listing)
                        .await;
                    return;
                }
                Err(e) => {
                    warn!(error = %e, attempt, "cannot list containers at startup");
                    tokio::time::sleep(Duration::from_secs(u64::from(attempt))).await;
                }
            }
        }
        warn!("going on without a startup re-list; the next re-list will catch up");
    }

    fn bump(&mut self) -> u64 {
        self.generation += 1;
        self.generation
    }

    fn touch(&mut self, task_id: &str) {
        let g = self.bump();
        if let Some(e) = self.tasks.get_mut(task_id) {
            e.generation = g;
        }
    }

    /// Counts the RUNNING records once, at load; from then on each change
    /// adjusts the count ([`Reconciler::note_running`]), so an update costs
    /// the same however many records the agent holds.
    fn recount_running(&self) {
        let n = self
            .tasks
            .values()
            .filter(|e| e.rec.state() == pb::TaskState::Running)
            .count();
        self.running
            .store(u32::try_from(n).unwrap_or(u32::MAX), Ordering::Relaxed);
    }

    /// Adjusts the RUNNING count for a record that went from `was` to `now`
    /// (or appeared, or went away: not running).
    fn note_running(&self, was: pb::TaskState, now: pb::TaskState) {
        let (was, now) = (was == pb::TaskState::Running, now == pb::TaskState::Running);
        if was && !now {
            // Saturating: the count never wraps, whatever the order of events.
            let _ = self
                .running
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                    Some(n.saturating_sub(1))
                });
        } else if now && !was {
            self.running.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Holds `entry` as the task's record, in place of any older attempt's.
    fn hold(&mut self, task_id: String, entry: Entry) {
        let now = entry.rec.state();
        if let Some(old) = self.tasks.insert(task_id, entry) {
            self.note_running(old.rec.state(), now);
        } else {
            self.note_running(pb::TaskState::Unspecified, now);
        }
    }

    fn persist(&self, task_id: &str) {
        if let Some(e) = self.tasks.get(task_id) {
            if let Err(err) = self.store.save_task(&e.rec) {
                error!(task_id = %task_id, attempt = e.rec.attempt(), error = %err, "cannot write task record");
            }
        }
    }

    /// Like [`Reconciler::persist`], durable at the next [`Reconciler::sync`]
    /// (at the latest when the round's messages are sent).
    fn stage(&self, task_id: &str) {
        if let Some(e) = self.tasks.get(task_id) {
            if let Err(err) = self.store.stage_task(&e.rec) {
                error!(task_id = %task_id, attempt = e.rec.attempt(), error = %err, "cannot write task record");
            }
        }
    }

    /// Makes the staged records durable.
    fn sync(&self) {
        if let Err(err) = self.store.sync() {
            error!(error = %err, "cannot sync the task records");
        }
    }

    fn forget(&mut self, task_id: &str) {
        if let Err(err) = self.store.delete_task(task_id) {
            error!(task_id = %task_id, error = %err, "cannot delete task record");
            return;
        }
        self.forget_entry(task_id);
        debug!(task_id = %task_id, "task record deleted");
    }

    /// Drops the task's entry (its record is already gone from the store).
    fn forget_entry(&mut self, task_id: &str) {
        if let Some(old) = self.tasks.remove(task_id) {
            self.note_running(old.rec.state(), pb::TaskState::Unspecified);
        }
    }

    /// Queues a message for the session; [`Reconciler::flush`] sends it.
    fn queue(&mut self, msg: Outbound) {
        self.outbox.push(msg);
    }

    /// Ends a round: the records staged in it become durable with one sync,
    /// then its messages go to the session, in order.
    async fn flush(&mut self) {
        self.sync();
        static RECORDS: OnceLock<metrics::Gauge> = OnceLock::new();
        RECORDS
            .get_or_init(|| metrics::gauge!("minkube_agent_task_records"))
            .set(self.tasks.len() as f64);
        let mut outbox = std::mem::take(&mut self.outbox);
        for msg in outbox.drain(..) {
            // Fails only while the agent shuts down; the record has the update.
            if self.out.send(msg).await.is_err() {
                debug!("session channel closed; update kept in the local record");
                break;
            }
        }
        // Kept for the next round: its capacity is reused.
        self.outbox = outbox;
    }

    async fn on_job(&mut self, result: JobResult) {
        match result {
            JobResult::Start {
                task_id,
                attempt,
                outcome,
            } => self.on_start_done(&task_id, attempt, outcome).await,
            JobResult::Stop {
                task_id,
                attempt,
                outcome,
            } => self.on_stop_done(&task_id, attempt, outcome).await,
            JobResult::Cleanup { container_ids } => {
                debug!(?container_ids, "cleanup finished");
            }
            JobResult::List {
                purpose,
                generation,
                result,
            } => {
                self.listing_in_flight = false;
                match result {
                    Ok(listing) => self.apply_listing(purpose, generation, listing).await,
                    Err(e) => {
                        warn!(error = %e, "cannot re-list containers; will retry on the next resync")
                    }
                }
                if let Some(next) = self.listing_again.take() {
                    self.request_listing(next);
                }
            }
        }
    }
}
