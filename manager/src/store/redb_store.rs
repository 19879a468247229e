//! The embedded store: a journal in front of a redb B-tree, in the data dir.
//!
//! A commit appends its mutations to the journal's current segment and waits
//! for one `fdatasync` of those few KiB: that is the durability CreateTask's
//! answer promises. When the segment is full, a
//! checkpointer thread applies it to the B-tree in one transaction — the four
//! puts of a task's life become one — records the segment's number in the
//! same transaction, and keeps the file as a spare for a later segment (or
//! deletes it). At start-up, segments the tree
//! does not hold yet are applied first; a clean shutdown applies everything,
//! so a stopped manager's data dir holds only `state.redb`.
//!
//! Reads go to the tree, except the events of tasks whose latest changes are
//! still only in the journal: those are kept in memory until checkpointed.
use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use minkube::pb;

use super::btree::BTree;
use super::journal::{self, SegmentWriter, SEGMENT_BYTES};
use super::pending::{brings_events, Lookup, Pending};
use super::{with_headroom, Mutation, Snapshot, Store, StoreError, StoredTask};

/// Sealed segments waiting for the checkpointer before commits wait for it
/// (bounds the journal on disk, the events kept in memory and replay time:
/// 16 MiB of segments).
const MAX_SEALED: usize = 8;
/// Pause before retrying a checkpoint that failed.
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// Nice value of the checkpoint thread: a checkpoint is a burst of work
/// nobody waits for (commits wait only when it falls [`MAX_SEALED`] behind),
/// so under load it yields the CPU to requests instead of adding to their
/// latency.
const CHECKPOINT_NICE: i32 = 10;
/// Spare segment files kept ready: two, so a seal finds one even while the
/// checkpointer is busy with the segment before.
const SPARES: usize = 2;

/// The embedded [`Store`].
pub struct RedbStore {
    inner: Arc<Inner>,
    checkpointer: Mutex<Option<JoinHandle<()>>>,
}

struct Inner {
    tree: BTree,
    dir: PathBuf,
    writer: Mutex<Writer>,
    shared: Mutex<Shared>,
    changed: Condvar,
    /// Held while a segment is applied (one at a time, oldest first); holds
    /// the read buffer, kept so each segment's read does not fault in fresh
    /// memory.
    checkpointing: Mutex<Scratch>,
}

struct Writer {
    /// `None` once closed for shutdown.
    segment: Option<SegmentWriter>,
    /// Set when a write's outcome is unknown: no further commit is accepted.
    failed: Option<String>,
}

#[derive(Default)]
struct Shared {
    /// Segments waiting to be applied to the tree, oldest first.
    sealed: VecDeque<u64>,
    /// Events (and deletions) of tasks changed in segments not yet applied,
    /// one generation per segment: a checkpoint drops its segment's
    /// generation whole, outside the lock, instead of walking every pending
    /// task while commits wait for the lock.
    pending: Pending,
    stopping: bool,
    /// Why the last checkpoint failed (cleared by a success).
    checkpoint_error: Option<String>,
    /// Full-size files ready to become the next segments, so a seal never
    /// waits for one to be written: applied segments recycled, or (at
    /// start, or when none was left) new ones the checkpointer wrote.
    spares: Vec<PathBuf>,
    /// Number for the next spare's file name.
    spares_made: u64,
}

/// What one checkpoint leaves for the next: the segment read buffer and how
/// many changes the segment held (to size the next list).
#[derive(Default)]
struct Scratch {
    buf: Vec<u8>,
    ops: usize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn io_error(op: &'static str) -> impl Fn(std::io::Error) -> StoreError {
    move |e| StoreError::Backend {
        op,
        message: e.to_string(),
    }
}

impl RedbStore {
    /// Opens (or creates) the store in `dir`: `state.redb` and `journal/`.
    /// Segments left by a crash are applied before this returns.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        // The tree first: its lock keeps a second manager off the journal.
        let tree = BTree::open(dir)?;
        let jdir = dir.join(journal::DIR);
        std::fs::create_dir_all(&jdir).map_err(io_error("create journal dir"))?;
        journal::remove_spares(&jdir).map_err(io_error("remove spare journal segments"))?;
        let next = recover(&tree, &jdir)?;
        let segment =
            SegmentWriter::create(&jdir, next, None).map_err(io_error("create journal segment"))?;
        let inner = Arc::new(Inner {
            tree,
            dir: jdir,
            writer: Mutex::new(Writer {
                segment: Some(segment),
                failed: None,
            }),
            shared: Mutex::new(Shared::default()),
            changed: Condvar::new(),
            checkpointing: Mutex::new(Scratch::default()),
        });
        let worker = Arc::clone(&inner);
        let handle = std::thread::Builder::new()
            .name("minkube-checkpoint".into())
            .spawn(move || worker.run_checkpointer())
            .map_err(io_error("start checkpoint thread"))?;
        Ok(Self {
            inner,
            checkpointer: Mutex::new(Some(handle)),
        })
    }
}

/// Applies the segments the tree does not hold yet, removes every segment
/// file, and returns the number for the next one.
fn recover(tree: &BTree, dir: &Path) -> Result<u64, StoreError> {
    let done = tree.checkpointed_segment()?;
    let segments = journal::list_segments(dir).map_err(io_error("list journal"))?;
    let last = segments.last().map_or(0, |(seq, _)| *seq);
    let mut read = Vec::new();
    let mut applied = Vec::new();
    for (seq, path) in &segments {
        if *seq <= done {
            applied.push(path);
            continue;
        }
        let segment = journal::read_segment(path, *seq).map_err(|message| StoreError::Corrupt {
            key: path.display().to_string(),
            message: format!(
                "{message}; to start without its changes and those of later segments, \
                 move this file and every later one out of {}",
                dir.display()
            ),
        })?;
        if let Some(tail) = &segment.torn_tail {
            if *seq != last {
                return Err(StoreError::Corrupt {
                    key: path.display().to_string(),
                    message: format!(
                        "ends in an incomplete record ({tail}) but is not the newest segment; \
                         move it and every later one out of {} to start without their changes",
                        dir.display()
                    ),
                });
            }
            tracing::warn!(
                segment = %path.display(),
                %tail,
                "the journal ends in a record cut short by a crash; it was never acknowledged and is ignored"
            );
        }
        read.push((path, segment));
        applied.push(path);
    }
    if last > done {
        let mut all = Vec::new();
        for (path, segment) in &read {
            all.extend(segment.ops(0).map_err(|message| StoreError::Corrupt {
                key: path.display().to_string(),
                message,
            })?);
        }
        tracing::info!(
            segments = read.len(),
            changes = all.len(),
            "applying the journal left by the last run"
        );
        tree.apply(&all, Some(last))?;
    }
    for path in applied {
        std::fs::remove_file(path).map_err(io_error("remove journal segment"))?;
    }
    journal::sync_dir(dir).map_err(io_error("sync journal dir"))?;
    Ok(last.max(done) + 1)
}

impl Inner {
    fn commit(&self, batch: &[Mutation]) -> Result<(), StoreError> {
        let mut w = lock(&self.writer);
        if let Some(f) = &w.failed {
            return Err(StoreError::Backend {
                op: "commit",
                message: format!(
                    "an earlier journal write failed ({f}); restart the manager: it keeps every change that was acknowledged"
                ),
            });
        }
        let Some(segment) = w.segment.as_mut() else {
            return Err(StoreError::Closed);
        };
        if let Err(e) = segment.append(batch) {
            let message = format!("journal write to {}: {}", self.dir.display(), e.error);
            if e.fatal {
                w.failed = Some(message.clone());
            }
            return Err(StoreError::Backend {
                op: "commit",
                message,
            });
        }
        let seq = segment.seq();
        let full = segment.len() >= SEGMENT_BYTES;
        self.note_events(batch, seq);
        if full {
            self.seal(&mut w, true);
        }
        Ok(())
    }

    /// Remembers the events `batch` adds, for reads before the checkpoint.
    fn note_events(&self, batch: &[Mutation], seq: u64) {
        if brings_events(batch) {
            lock(&self.shared).pending.note(batch, seq);
        }
    }

    /// Hands the current segment to the checkpointer; with `reopen`, starts
    /// the next one (else the writer is closed). Waits while the
    /// checkpointer is [`MAX_SEALED`] segments behind and not failing.
    fn seal(&self, w: &mut Writer, reopen: bool) {
        let Some(current) = w.segment.as_ref() else {
            return;
        };
        let seq = current.seq();
        if reopen {
            let spare = lock(&self.shared).spares.pop();
            match SegmentWriter::create(&self.dir, seq + 1, spare.as_deref()) {
                Ok(next) => w.segment = Some(next),
                Err(e) => {
                    // The batch is durable in the current segment: keep
                    // appending to it and try again at the next commit.
                    tracing::error!(error = %e, dir = %self.dir.display(), "cannot start a new journal segment");
                    return;
                }
            }
        } else {
            w.segment = None;
        }
        let mut shared = lock(&self.shared);
        while shared.sealed.len() >= MAX_SEALED
            && shared.checkpoint_error.is_none()
            && !shared.stopping
        {
            shared = self
                .changed
                .wait(shared)
                .unwrap_or_else(PoisonError::into_inner);
        }
        shared.sealed.push_back(seq);
        drop(shared);
        self.changed.notify_all();
    }

    /// Applies the oldest sealed segment; `None` when there is none.
    fn checkpoint_next(&self) -> Option<Result<(), StoreError>> {
        let mut scratch = lock(&self.checkpointing);
        let seq = *lock(&self.shared).sealed.front()?;
        let started = Instant::now();
        let result = self.checkpoint(seq, &mut scratch);
        let mut shared = lock(&self.shared);
        let mut applied = Vec::new();
        match &result {
            Ok(()) => {
                shared.sealed.pop_front();
                shared.checkpoint_error = None;
                applied = shared.pending.take_through(seq);
                metrics::histogram!("minkube_manager_store_checkpoint_seconds")
                    .record(started.elapsed().as_secs_f64());
            }
            Err(e) => shared.checkpoint_error = Some(e.to_string()),
        }
        drop(shared);
        self.changed.notify_all();
        // Freed here, after the lock: thousands of tasks' entries.
        drop(applied);
        Some(result)
    }

    fn checkpoint(&self, seq: u64, scratch: &mut Scratch) -> Result<(), StoreError> {
        let path = journal::segment_path(&self.dir, seq);
        let segment = journal::read_segment_into(&path, seq, std::mem::take(&mut scratch.buf))
            .map_err(|message| StoreError::Corrupt {
                key: path.display().to_string(),
                message,
            })?;
        let result = self.apply_segment(seq, &path, &segment, &mut scratch.ops);
        scratch.buf = segment.into_bytes();
        result
    }

    fn apply_segment(
        &self,
        seq: u64,
        path: &Path,
        segment: &journal::Segment,
        expected_ops: &mut usize,
    ) -> Result<(), StoreError> {
        // A sealed segment was written whole by this process; a torn tail
        // here means the file changed under us.
        if let Some(tail) = &segment.torn_tail {
            return Err(StoreError::Corrupt {
                key: path.display().to_string(),
                message: format!("ends in an incomplete record ({tail})"),
            });
        }
        let ops = segment
            .ops(with_headroom(*expected_ops))
            .map_err(|message| StoreError::Corrupt {
                key: path.display().to_string(),
                message,
            })?;
        *expected_ops = ops.len();
        self.tree.apply(&ops, Some(seq))?;
        // The tree records the segment as applied: a file that outlives a
        // crash here is skipped at start-up.
        self.recycle(path);
        Ok(())
    }

    /// A new name for a spare.
    fn next_spare_path(&self, shared: &mut Shared) -> PathBuf {
        shared.spares_made += 1;
        journal::spare_path(&self.dir, shared.spares_made)
    }

    /// Keeps an applied segment's file as a spare while fewer than
    /// [`SPARES`] are ready, else removes it. Reused, it spares writing and
    /// syncing a new file full of zeros (on the disk the commits wait on),
    /// and its pages are in the cache from the read just done. Not synced:
    /// after a crash the file is either the applied segment (skipped and
    /// removed at start-up) or a spare (removed).
    fn recycle(&self, path: &Path) {
        let spare = {
            let mut shared = lock(&self.shared);
            (shared.spares.len() < SPARES && !shared.stopping)
                .then(|| self.next_spare_path(&mut shared))
        };
        if let Some(spare) = spare {
            match std::fs::rename(path, &spare) {
                Ok(()) => {
                    lock(&self.shared).spares.push(spare);
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, segment = %path.display(), "cannot keep an applied journal segment as a spare");
                }
            }
        }
        if let Err(e) = std::fs::remove_file(path) {
            tracing::warn!(error = %e, segment = %path.display(), "cannot remove an applied journal segment");
        }
    }

    fn run_checkpointer(&self) {
        let tid = rustix::thread::gettid();
        if let Err(e) = rustix::process::setpriority_process(Some(tid), CHECKPOINT_NICE) {
            tracing::debug!(error = %e, "cannot lower the checkpoint thread's priority");
        }
        loop {
            let make_spare = {
                let mut shared = lock(&self.shared);
                while shared.sealed.is_empty() && shared.spares.len() >= SPARES && !shared.stopping
                {
                    shared = self
                        .changed
                        .wait(shared)
                        .unwrap_or_else(PoisonError::into_inner);
                }
                if shared.sealed.is_empty() && shared.stopping {
                    return; // nothing left
                }
                // A sealed segment first: applying it also recycles its
                // file as a spare, which is quicker and cheaper than
                // writing one.
                (shared.sealed.is_empty() && !shared.stopping)
                    .then(|| self.next_spare_path(&mut shared))
            };
            if let Some(path) = make_spare {
                match journal::prepare(&path, true) {
                    Ok(()) => lock(&self.shared).spares.push(path),
                    Err(e) => {
                        // Seals then write the next segment themselves.
                        tracing::warn!(error = %e, spare = %path.display(), "cannot make a spare journal segment");
                        let _ = std::fs::remove_file(&path);
                        let shared = lock(&self.shared);
                        if !shared.stopping {
                            let _ = self.changed.wait_timeout(shared, RETRY_AFTER);
                        }
                    }
                }
            }
            if let Some(Err(e)) = self.checkpoint_next() {
                tracing::error!(error = %e, "journal checkpoint failed; the journal keeps the changes, retrying");
                let shared = lock(&self.shared);
                if shared.stopping {
                    return; // the next start applies what is left
                }
                let _ = self.changed.wait_timeout(shared, RETRY_AFTER);
            }
        }
    }

    /// Seals the current segment and applies every sealed one, here.
    fn checkpoint_all(&self, reopen: bool) -> Result<(), StoreError> {
        {
            let mut w = lock(&self.writer);
            let has_records = w.segment.as_ref().is_some_and(|s| !s.is_empty());
            if w.failed.is_none() && (has_records || !reopen) {
                self.seal(&mut w, reopen);
            }
        }
        while let Some(result) = self.checkpoint_next() {
            result?;
        }
        Ok(())
    }

    fn task_events(&self, task_id: &str) -> Result<Vec<pb::TaskEvent>, StoreError> {
        // Pending first: a checkpoint between the two reads moves events
        // from pending to the tree, and both reads then see them.
        let pending = lock(&self.shared).pending.lookup(task_id)?;
        match pending {
            Lookup::Nothing => self.tree.task_events(task_id),
            Lookup::Deleted => Ok(Vec::new()),
            Lookup::Events(newer) => {
                let mut all: BTreeMap<u32, pb::TaskEvent> =
                    (0..).zip(self.tree.task_events(task_id)?).collect();
                all.extend(newer);
                Ok(all.into_values().collect())
            }
        }
    }
}

impl Store for RedbStore {
    fn load(&self) -> Result<Snapshot, StoreError> {
        // Start-up only; anything committed before is applied first.
        self.inner.checkpoint_all(true)?;
        self.inner.tree.load()
    }

    fn load_tasks(
        &self,
        on_task: &mut dyn FnMut(StoredTask, Vec<pb::TaskEvent>),
    ) -> Result<(), StoreError> {
        self.inner.checkpoint_all(true)?;
        self.inner.tree.load_tasks(on_task)
    }

    fn task_events(&self, task_id: &str) -> Result<Vec<pb::TaskEvent>, StoreError> {
        self.inner.task_events(task_id)
    }

    fn commit(&self, batch: &[Mutation]) -> Result<(), StoreError> {
        self.inner.commit(batch)
    }
}

impl Drop for RedbStore {
    fn drop(&mut self) {
        lock(&self.inner.shared).stopping = true;
        self.inner.changed.notify_all();
        if let Some(handle) = lock(&self.checkpointer).take() {
            if handle.join().is_err() {
                tracing::error!("journal checkpoint thread panicked");
            }
        }
        // Leave only the tree behind; on failure the next start applies the journal.
        if let Err(e) = self.inner.checkpoint_all(false) {
            tracing::error!(error = %e, "final journal checkpoint failed; the next start applies the journal");
        }
        for spare in std::mem::take(&mut lock(&self.inner.shared).spares) {
            let _ = std::fs::remove_file(spare);
        }
    }
}

#[cfg(test)]
mod tests;
