//! Group commit: callers queue their mutations (in the order they changed the
//! in-memory state) and wait; one writer thread commits everything queued so
//! far in a single transaction, then answers every waiter. Under load many
//! requests share one fsync; idle, a request pays exactly one.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

use super::{Mutation, Store, StoreError};

/// Most requests merged into one transaction; bounds a transaction's size.
const MAX_REQUESTS_PER_COMMIT: usize = 4096;

/// Requests per second above which a commit waits (the manager's
/// `--commit-delay`, 1 ms by default) for more requests to join it: at
/// this rate ten or more join in a millisecond. A sync costs the same CPU
/// however many requests share it (on a VM mostly the exit to the host),
/// so under heavy load fewer, larger groups leave more CPU for the
/// requests themselves, at the price of the delay. Below this rate
/// nothing waits.
const BUSY_RATE: f64 = 10_000.0;

/// How often the arrival rate is re-measured.
const RATE_WINDOW: Duration = Duration::from_millis(10);

/// Measures the rate at which requests reach the writer, over windows of
/// [`RATE_WINDOW`], to tell whether the next commit should wait.
struct Load {
    window_start: Instant,
    requests: usize,
    busy: bool,
}

impl Load {
    fn new(now: Instant) -> Self {
        Self {
            window_start: now,
            requests: 0,
            busy: false,
        }
    }

    /// Counts `n` requests taken at `now`; whether the next commit waits.
    fn note(&mut self, n: usize, now: Instant) -> bool {
        self.requests += n;
        let elapsed = now.saturating_duration_since(self.window_start);
        if elapsed >= RATE_WINDOW {
            #[allow(clippy::cast_precision_loss)] // a count of requests
            let rate = self.requests as f64 / elapsed.as_secs_f64();
            self.busy = rate >= BUSY_RATE;
            self.window_start = now;
            self.requests = 0;
        }
        self.busy
    }
}

/// A reserved place in the commit queue (see [`Committer::reserve`]).
pub struct CommitPermit(OwnedSemaphorePermit);

/// What a waiter gets back: its own mutations once they are durable, so
/// that whatever follows (the watch changes) moves them instead of cloning
/// each task record, and they are freed where they were made.
pub type Durable = Result<Vec<Mutation>, StoreError>;

struct Pending {
    mutations: Vec<Mutation>,
    done: oneshot::Sender<Durable>,
    _permit: OwnedSemaphorePermit,
}

#[derive(Default)]
struct Queue {
    items: Vec<Pending>,
    closed: bool,
    /// The writer waits on the condvar: only then does a submission wake it
    /// (a wake is a system call, and under load the writer is busy).
    writer_waiting: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    /// Whether requests arrive at [`BUSY_RATE`] or faster (as last measured).
    busy: AtomicBool,
}

/// Owner of the writer thread.
pub struct Committer {
    shared: Arc<Shared>,
    permits: Arc<Semaphore>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Committer {
    /// Starts the writer thread. At most `max_in_flight` requests wait at once;
    /// further writers wait in [`Committer::reserve`] (back-pressure, bounded memory).
    /// Under heavy load a commit first waits `delay` for company (see
    /// [`BUSY_RATE`]); zero never waits.
    pub fn start(
        store: Arc<dyn Store>,
        max_in_flight: usize,
        delay: Duration,
    ) -> Result<Self, StoreError> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            busy: AtomicBool::new(false),
        });
        let worker = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("minkube-store".into())
            .spawn(move || run(&worker, store.as_ref(), delay))
            .map_err(|e| StoreError::Backend {
                op: "start writer thread",
                message: e.to_string(),
            })?;
        Ok(Self {
            shared,
            permits: Arc::new(Semaphore::new(max_in_flight.max(1))),
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Whether writes arrive at [`BUSY_RATE`] or faster, as last measured:
    /// then commits wait for company, and work that can be batched is
    /// better left to be batched.
    pub fn is_busy(&self) -> bool {
        self.shared.busy.load(Ordering::Relaxed)
    }

    /// Waits for room in the queue. Take the permit BEFORE locking the state
    /// whose changes you will submit, so the lock is never held while waiting.
    pub async fn reserve(&self) -> Result<CommitPermit, StoreError> {
        Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map(CommitPermit)
            .map_err(|_| StoreError::Closed)
    }

    /// Queues mutations; cheap and non-blocking, so it can be called while
    /// holding the state lock (which keeps queue order = state-change order).
    /// The receiver gets the mutations back once they are durable.
    pub fn submit(
        &self,
        permit: CommitPermit,
        mutations: Vec<Mutation>,
    ) -> oneshot::Receiver<Durable> {
        let (done, rx) = oneshot::channel();
        if mutations.is_empty() {
            let _ = done.send(Ok(mutations));
            return rx;
        }
        self.enqueue(permit, mutations, done);
        rx
    }

    /// Waits until everything submitted before this call is durable (a
    /// barrier: reads of the store then see every change memory has seen).
    pub async fn flushed(&self) -> Result<(), StoreError> {
        let permit = self.reserve().await?;
        let (done, rx) = oneshot::channel();
        self.enqueue(permit, Vec::new(), done);
        durable(rx).await.map(drop)
    }

    fn enqueue(
        &self,
        permit: CommitPermit,
        mutations: Vec<Mutation>,
        done: oneshot::Sender<Durable>,
    ) {
        let mut q = self
            .shared
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if q.closed {
            let _ = done.send(Err(StoreError::Closed));
            return;
        }
        q.items.push(Pending {
            mutations,
            done,
            _permit: permit.0,
        });
        let wake = q.writer_waiting;
        drop(q);
        if wake {
            self.shared.wake.notify_one();
        }
    }

    /// Commits what is queued, then stops the writer thread. Idempotent.
    pub fn shutdown(&self) {
        self.permits.close();
        self.shared
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .closed = true;
        self.shared.wake.notify_all();
        let handle = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(h) = handle {
            if h.join().is_err() {
                tracing::error!("store writer thread panicked");
            }
        }
    }
}

impl Drop for Committer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Waits for a submitted write to be durable; returns its mutations.
pub async fn durable(rx: oneshot::Receiver<Durable>) -> Durable {
    rx.await.unwrap_or(Err(StoreError::Closed))
}

fn run(shared: &Shared, store: &dyn Store, delay: Duration) {
    let mut load = Load::new(Instant::now());
    let mut busy = false;
    loop {
        let mut batch: Vec<Pending> = {
            let mut q = shared.queue.lock().unwrap_or_else(PoisonError::into_inner);
            while q.items.is_empty() && !q.closed {
                q.writer_waiting = true;
                q = shared.wake.wait(q).unwrap_or_else(PoisonError::into_inner);
                q.writer_waiting = false;
            }
            if q.items.is_empty() {
                return; // closed and drained
            }
            if busy && !delay.is_zero() && !q.closed && q.items.len() < MAX_REQUESTS_PER_COMMIT {
                drop(q);
                std::thread::sleep(delay);
                q = shared.queue.lock().unwrap_or_else(PoisonError::into_inner);
            }
            let n = q.items.len().min(MAX_REQUESTS_PER_COMMIT);
            q.items.drain(..n).collect()
        };
        busy = load.note(batch.len(), Instant::now());
        shared.busy.store(busy, Ordering::Relaxed);
        // Moved, not cloned: each mutation holds a whole task record.
        let lens: Vec<usize> = batch.iter().map(|p| p.mutations.len()).collect();
        let mut all: Vec<Mutation> = Vec::with_capacity(lens.iter().sum());
        for p in &mut batch {
            all.append(&mut p.mutations);
        }
        if all.is_empty() {
            // Only barriers: everything before them is already durable.
            for p in batch {
                let _ = p.done.send(Ok(Vec::new()));
            }
            continue;
        }
        let started = Instant::now();
        let result = store.commit(&all);
        metrics::histogram!("minkube_manager_store_commit_seconds")
            .record(started.elapsed().as_secs_f64());
        metrics::counter!("minkube_manager_store_commits_total").increment(1);
        // Requests per commit = how much group commit saves.
        metrics::counter!("minkube_manager_store_committed_requests_total")
            .increment(u64::try_from(batch.len()).unwrap_or(u64::MAX));
        if let Err(e) = &result {
            tracing::error!(error = %e, requests = batch.len(), "store commit failed");
        }
        // Each waiter gets its own mutations back, in queue order.
        let mut all = all.into_iter();
        for (p, len) in batch.into_iter().zip(lens) {
            let mine: Vec<Mutation> = all.by_ref().take(len).collect();
            let _ = p.done.send(result.clone().map(|()| mine));
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::store::{Snapshot, StoredTask};

    /// Counts transactions, to show that queued requests share one.
    #[derive(Default)]
    struct CountingStore {
        commits: Mutex<Vec<usize>>,
    }

    impl Store for CountingStore {
        fn load(&self) -> Result<Snapshot, StoreError> {
            Ok(Snapshot::default())
        }
        fn load_tasks(
            &self,
            _: &mut dyn FnMut(StoredTask, Vec<minkube::pb::TaskEvent>),
        ) -> Result<(), StoreError> {
            Ok(())
        }
        fn task_events(&self, _: &str) -> Result<Vec<minkube::pb::TaskEvent>, StoreError> {
            Ok(Vec::new())
        }
        fn commit(&self, batch: &[Mutation]) -> Result<(), StoreError> {
            // Slow enough that later requests queue up behind the first.
            std::thread::sleep(std::time::Duration::from_millis(20));
            self.commits.lock().unwrap().push(batch.len());
            Ok(())
        }
    }

    fn put(id: &str) -> Mutation {
        Mutation::PutTask(Box::new(StoredTask {
            task: Some(minkube::pb::Task {
                id: id.into(),
                ..Default::default()
            }),
            ..Default::default()
        }))
    }

    #[test]
    fn commits_wait_for_company_only_while_requests_arrive_fast() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut load = Load::new(t0);
        // 60 requests in 10 ms: 6,000/s, below the busy rate.
        assert!(!load.note(30, at(5)));
        assert!(!load.note(30, at(10)));
        // 150 in the next 10 ms: 15,000/s. The verdict holds for a window.
        assert!(!load.note(50, at(15)), "decided only at the window's end");
        assert!(load.note(100, at(20)));
        assert!(load.note(1, at(25)));
        // A quiet window (1 + 10 in 10 ms) ends the waiting.
        assert!(!load.note(10, at(30)));
        // A long pause counts as one slow window, however large the group.
        assert!(!load.note(500, at(1_000)));
    }

    #[tokio::test]
    async fn concurrent_requests_share_transactions() {
        let store = Arc::new(CountingStore::default());
        let c = Committer::start(store.clone(), 1000, Duration::from_millis(1)).unwrap();
        let mut waits = Vec::new();
        for i in 0..50 {
            let p = c.reserve().await.unwrap();
            waits.push(c.submit(p, vec![put(&i.to_string())]));
        }
        for w in waits {
            durable(w).await.unwrap();
        }
        let commits = store.commits.lock().unwrap().clone();
        assert_eq!(commits.iter().sum::<usize>(), 50);
        assert!(commits.len() < 50, "expected grouping, got {commits:?}");
        c.shutdown();
    }

    #[tokio::test]
    async fn each_waiter_gets_its_own_mutations_back() {
        let store = Arc::new(CountingStore::default());
        let c = Committer::start(store.clone(), 1000, Duration::from_millis(1)).unwrap();
        let mut waits = Vec::new();
        for i in 0..20 {
            let p = c.reserve().await.unwrap();
            let mutations = (0..i % 3 + 1).map(|j| put(&format!("{i}.{j}"))).collect();
            waits.push((i, c.submit(p, mutations)));
        }
        for (i, w) in waits {
            let back = durable(w).await.unwrap();
            let want: Vec<Mutation> = (0..i % 3 + 1).map(|j| put(&format!("{i}.{j}"))).collect();
            assert_eq!(back, want, "request {i}");
        }
        c.shutdown();
    }

    #[tokio::test]
    async fn shutdown_drains_then_refuses() {
        let store = Arc::new(CountingStore::default());
        let c = Committer::start(store.clone(), 10, Duration::from_millis(1)).unwrap();
        let p = c.reserve().await.unwrap();
        let w = c.submit(p, vec![put("a")]);
        c.shutdown();
        durable(w).await.unwrap();
        assert!(c.reserve().await.is_err());
        assert!(c.flushed().await.is_err());
    }

    #[tokio::test]
    async fn flushed_waits_for_earlier_writes() {
        let store = Arc::new(CountingStore::default());
        let c = Committer::start(store.clone(), 10, Duration::from_millis(1)).unwrap();
        let p = c.reserve().await.unwrap();
        let w = c.submit(p, vec![put("a")]);
        c.flushed().await.unwrap();
        assert_eq!(store.commits.lock().unwrap().as_slice(), [1]);
        durable(w).await.unwrap();
        c.flushed().await.unwrap();
        assert_eq!(
            store.commits.lock().unwrap().len(),
            1,
            "a barrier alone commits nothing"
        );
        c.shutdown();
    }
}
