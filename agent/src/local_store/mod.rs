//! The agent's durable memory under `--data-dir`:
//!
//! ```text
//! <data-dir>/node-id         node id from the first Register (see identity)
//! <data-dir>/tasks.journal   every change to the task records (see journal)
//! <data-dir>/agent.lock      held (flock) while an agent uses the data dir
//! ```
//!
//! Small files are replaced atomically (temp file, fsync, rename, fsync of
//! the directory), so a crash leaves either the old or the new version. Task
//! records change with every state a task reaches, so they go to an
//! append-only journal: one write and one `fdatasync` per change.
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use minkube::pb;
use minkube_common::state_machine;
use tracing::{error, warn};

mod journal;

use journal::{Journal, Live};

/// Where records were kept one file each before the journal; read once at
/// start-up and folded into it.
const TASKS_DIR: &str = "tasks";
/// Locked while an agent uses the data dir.
const LOCK_FILE: &str = "agent.lock";
const RECORD_EXT: &str = "pb";
const TMP_SUFFIX: &str = ".tmp";

/// What the agent remembers about one assigned task.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TaskRecord {
    /// The assignment as received (task id, attempt, spec).
    #[prost(message, optional, tag = "1")]
    pub assignment: Option<pb::Assignment>,
    /// The last status update sent (or queued) for the task.
    #[prost(message, optional, tag = "2")]
    pub last_update: Option<pb::TaskStatusUpdate>,
    /// Sequence of `last_update`; the next update uses `sequence + 1`. Kept
    /// across attempts and restarts so the manager never sees it go back.
    #[prost(uint64, tag = "3")]
    pub sequence: u64,
    /// A stop was ordered: whatever happens next ends COMPLETED with `stop_reason`.
    #[prost(bool, tag = "4")]
    pub stop_requested: bool,
    /// Why the stop was ordered (the manager's reason, or why the agent
    /// decided it); empty means "stopped by user".
    #[prost(string, tag = "5")]
    pub stop_reason: String,
    /// W3C trace context of the stop order, the parent of the stop's spans.
    #[prost(map = "string, string", tag = "6")]
    pub stop_trace_context: std::collections::HashMap<String, String>,
}

impl TaskRecord {
    /// A record for a fresh assignment.
    pub fn new(assignment: pb::Assignment) -> Self {
        Self {
            assignment: Some(assignment),
            ..Default::default()
        }
    }

    /// Task id.
    pub fn task_id(&self) -> &str {
        self.assignment.as_ref().map_or("", |a| a.task_id.as_str())
    }

    /// Attempt.
    pub fn attempt(&self) -> u32 {
        self.assignment.as_ref().map_or(0, |a| a.attempt)
    }

    /// Observed state as last reported; Pending before the first report.
    pub fn state(&self) -> pb::TaskState {
        self.last_update
            .as_ref()
            .map_or(pb::TaskState::Pending, |u| u.state())
    }

    /// The reason a stop of this task is reported with.
    pub fn stop_reason(&self) -> String {
        if self.stop_reason.is_empty() {
            "stopped by user".to_string()
        } else {
            self.stop_reason.clone()
        }
    }

    /// Completed or failed.
    pub fn is_terminal(&self) -> bool {
        state_machine::is_terminal(self.state())
    }

    /// Container id, once one was reported.
    pub fn container_id(&self) -> Option<&str> {
        self.last_update
            .as_ref()
            .map(|u| u.container_id.as_str())
            .filter(|id| !id.is_empty())
    }
}

/// A data dir operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The filesystem refused.
    #[error("cannot {action} {}: {source} (check that the data dir exists and is writable, or set --data-dir / MINKUBE_DATA_DIR)", path.display())]
    Io {
        /// What was attempted.
        action: &'static str,
        /// On which path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A task id that would not be a safe file name.
    #[error("task id {0:?} is not usable as a file name (expected letters, digits, '-' or '_')")]
    InvalidTaskId(String),
    #[error("another minkube-agent is using the data dir {} (its {LOCK_FILE} is locked); stop it, or give this one its own --data-dir", .0.display())]
    Locked(PathBuf),
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Whether a task id can name a file: ids come from the network.
pub fn valid_task_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Writes `name` in `dir` atomically and durably.
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
    let tmp = dir.join(format!(".{name}{TMP_SUFFIX}"));
    let target = dir.join(name);
    {
        let mut f = File::create(&tmp).map_err(io_err("create", &tmp))?;
        f.write_all(bytes).map_err(io_err("write", &tmp))?;
        f.sync_all().map_err(io_err("sync", &tmp))?;
    }
    fs::rename(&tmp, &target).map_err(io_err("rename into place", &target))?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("sync directory", dir))
}

/// The task records of the data dir.
/// The task records and the node's files under the data dir. Clones share
/// one journal.
#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug)]
struct Inner {
    /// Holds the data dir's lock for as long as the store lives.
    _lock: File,
    journal: Journal,
    /// Every live record, encoded: what a rewrite of the journal writes.
    live: Live,
    /// An append failed: the file may end in a partial record, or an
    /// unsynced one. The next change first rewrites it from `live`.
    rewrite: bool,
    /// `fdatasync`s of appended changes so far.
    syncs: u64,
}

impl Inner {
    fn synced(&mut self) {
        self.syncs += 1;
        metrics::counter!("minkube_agent_store_syncs_total").increment(1);
    }
}

/// Superseded entries tolerated before the journal is rewritten.
const REWRITE_SLACK: usize = 256;

impl LocalStore {
    /// Opens the store in `root`: reads the journal (and records left one
    /// file each by an older agent), then rewrites it with the live records.
    pub fn open(root: &Path) -> Result<Self, StoreError> {
        fs::create_dir_all(root).map_err(io_err("create directory", root))?;
        let lock = lock_data_dir(root)?;
        remove_temp_files(root)?;
        let path = journal::path(root);
        let mut live = match journal::read(&path).map_err(io_err("read", &path))? {
            Some(loaded) => {
                if loaded.torn_tail {
                    warn!(path = %path.display(), "the task journal ends in a change cut short by a crash; it was never reported and is dropped");
                }
                if let Some(damage) = &loaded.damage {
                    let aside = path.with_extension("journal.corrupt");
                    error!(path = %path.display(), damage, moved_to = %aside.display(), "task journal damaged; keeping the records before the damage and setting the file aside");
                    fs::rename(&path, &aside).map_err(io_err("rename", &path))?;
                }
                loaded.live
            }
            None => Live::new(),
        };
        let legacy = root.join(TASKS_DIR);
        let legacy_files = read_legacy(&legacy, &mut live)?;
        let journal = Journal::write_fresh(root, &live)?;
        // Only once the journal holds them durably.
        for file in &legacy_files {
            fs::remove_file(file).map_err(io_err("remove", file))?;
        }
        if !legacy_files.is_empty() {
            let _ = fs::remove_dir(&legacy); // kept if anything else is in it
        }
        Ok(Self {
            root: root.to_path_buf(),
            inner: Arc::new(Mutex::new(Inner {
                _lock: lock,
                journal,
                live,
                rewrite: false,
                syncs: 0,
            })),
        })
    }

    /// The data dir.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn check_id(task_id: &str) -> Result<(), StoreError> {
        if valid_task_id(task_id) {
            Ok(())
        } else {
            Err(StoreError::InvalidTaskId(task_id.to_string()))
        }
    }

    /// Every record, by task id.
    pub fn load_tasks(&self) -> Result<Vec<TaskRecord>, StoreError> {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let path = journal::path(&self.root);
        inner
            .live
            .values()
            .map(|b| {
                <TaskRecord as prost::Message>::decode(b.as_slice()).map_err(|e| StoreError::Io {
                    action: "decode a record of",
                    path: path.clone(),
                    source: io::Error::new(io::ErrorKind::InvalidData, e),
                })
            })
            .collect()
    }

    /// Keeps `rec` durably (replacing the task's earlier record); earlier
    /// staged records are durable too once it returns.
    pub fn save_task(&self, rec: &TaskRecord) -> Result<(), StoreError> {
        self.put_task(rec, true)
    }

    /// Writes `rec` like [`LocalStore::save_task`], but durable only after
    /// the next [`LocalStore::sync`]: records staged one after another (a
    /// burst of containers ending) share one `fdatasync`. For a change that
    /// nothing outside the agent sees before that sync.
    pub fn stage_task(&self, rec: &TaskRecord) -> Result<(), StoreError> {
        self.put_task(rec, false)
    }

    /// `fdatasync`s of appended changes since the store was opened.
    pub fn syncs(&self) -> u64 {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .syncs
    }

    /// Makes every staged record durable (nothing to do if none is).
    pub fn sync(&self) -> Result<(), StoreError> {
        self.change(|inner| {
            if inner.journal.sync()? {
                inner.synced();
            }
            Ok(())
        })
    }

    fn put_task(&self, rec: &TaskRecord, durable: bool) -> Result<(), StoreError> {
        Self::check_id(rec.task_id())?;
        let bytes = prost::Message::encode_to_vec(rec);
        self.change(|inner| {
            if durable {
                inner.journal.put(&bytes)?;
                inner.synced();
            } else {
                inner.journal.stage(&bytes);
            }
            // In place when the task has a record: no new key, no new node.
            match inner.live.get_mut(rec.task_id()) {
                Some(old) => *old = bytes,
                None => {
                    inner.live.insert(rec.task_id().to_string(), bytes);
                }
            }
            Ok(())
        })
    }

    /// Forgets a task's record like [`LocalStore::delete_task`], durably only
    /// after the next [`LocalStore::sync`]: for records whose loss in a
    /// crash does no harm (the manager already has what they hold).
    pub fn stage_delete(&self, task_id: &str) -> Result<(), StoreError> {
        self.remove_task(task_id, false)
    }

    /// Forgets a task's record (nothing to do for an unknown task).
    pub fn delete_task(&self, task_id: &str) -> Result<(), StoreError> {
        self.remove_task(task_id, true)
    }

    fn remove_task(&self, task_id: &str, durable: bool) -> Result<(), StoreError> {
        Self::check_id(task_id)?;
        self.change(|inner| {
            if inner.live.contains_key(task_id) {
                if durable {
                    inner.journal.delete(task_id)?;
                    inner.synced();
                } else {
                    inner.journal.stage_delete(task_id);
                }
                inner.live.remove(task_id);
            }
            Ok(())
        })
    }

    fn change(&self, apply: impl FnOnce(&mut Inner) -> io::Result<()>) -> Result<(), StoreError> {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if inner.rewrite {
            inner.journal = Journal::write_fresh(&self.root, &inner.live)?;
            inner.rewrite = false;
        }
        if let Err(e) = apply(&mut inner) {
            inner.rewrite = true;
            return Err(io_err("append to", &journal::path(&self.root))(e));
        }
        if inner.journal.entries() > 2 * inner.live.len() + REWRITE_SLACK {
            match Journal::write_fresh(&self.root, &inner.live) {
                Ok(j) => inner.journal = j,
                // The current file is still whole: keep appending to it.
                Err(e) => {
                    let path = journal::path(&self.root);
                    warn!(path = %path.display(), error = %e, "cannot compact the task journal");
                }
            }
        }
        Ok(())
    }
}

/// Takes the data dir's lock: two agents appending to one journal would
/// lose records.
fn lock_data_dir(root: &Path) -> Result<File, StoreError> {
    let path = root.join(LOCK_FILE);
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_err("open", &path))?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(file),
        Err(rustix::io::Errno::WOULDBLOCK) => Err(StoreError::Locked(root.to_path_buf())),
        Err(e) => Err(io_err("lock", &path)(e.into())),
    }
}

/// Removes temp files a crash left (from `write_atomic` and rewrites).
fn remove_temp_files(dir: &Path) -> Result<(), StoreError> {
    for entry in fs::read_dir(dir).map_err(io_err("read directory", dir))? {
        let entry = entry.map_err(io_err("read directory", dir))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') && name.ends_with(TMP_SUFFIX) {
            let path = entry.path();
            fs::remove_file(&path).map_err(io_err("remove", &path))?;
        }
    }
    Ok(())
}

/// Adds the records an older agent kept one file each (unless the journal
/// has the task already: it is newer) and returns those files. Undecodable
/// ones are moved aside.
fn read_legacy(dir: &Path, live: &mut Live) -> Result<Vec<PathBuf>, StoreError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err("read directory", dir)(e)),
    };
    remove_temp_files(dir)?;
    let mut files = Vec::new();
    for entry in entries {
        let path = entry.map_err(io_err("read directory", dir))?.path();
        if path.extension().and_then(|e| e.to_str()) != Some(RECORD_EXT) {
            continue;
        }
        let bytes = fs::read(&path).map_err(io_err("read", &path))?;
        let expected_id = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
        match <TaskRecord as prost::Message>::decode(bytes.as_slice()) {
            Ok(rec) if rec.task_id() == expected_id => {
                live.entry(expected_id.to_string()).or_insert(bytes);
                files.push(path);
            }
            Ok(rec) => {
                warn!(path = %path.display(), task_id = rec.task_id(), "task record names another task; ignoring it");
            }
            Err(e) => {
                let aside = path.with_extension("corrupt");
                error!(path = %path.display(), error = %e, moved_to = %aside.display(), "cannot decode task record; moving it aside");
                fs::rename(&path, &aside).map_err(io_err("rename", &path))?;
            }
        }
    }
    Ok(files)
}

/// Ids of the records a store opened afresh on `dir` holds: what reached
/// the disk.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) fn stored_ids(dir: &Path) -> Vec<String> {
    LocalStore::open(dir)
        .unwrap()
        .load_tasks()
        .unwrap()
        .iter()
        .map(|r| r.task_id().to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn record(id: &str, seq: u64) -> TaskRecord {
        TaskRecord {
            assignment: Some(pb::Assignment {
                task_id: id.into(),
                attempt: 2,
                spec: Some(pb::TaskSpec {
                    name: "web".into(),
                    image: "busybox".into(),
                    memory_mb: 64,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            last_update: Some(pb::TaskStatusUpdate {
                task_id: id.into(),
                attempt: 2,
                sequence: seq,
                state: pb::TaskState::Running as i32,
                container_id: "abc".into(),
                ..Default::default()
            }),
            sequence: seq,
            stop_requested: true,
            stop_reason: "stopped by user".into(),
            stop_trace_context: [(
                "traceparent".to_string(),
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_string(),
            )]
            .into(),
        }
    }

    #[test]
    fn records_round_trip_and_delete() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).unwrap();
        assert!(store.load_tasks().unwrap().is_empty());
        store.save_task(&record("t-2", 5)).unwrap();
        store.save_task(&record("t-1", 3)).unwrap();
        store.save_task(&record("t-1", 4)).unwrap();
        drop(store);

        let reopened = LocalStore::open(dir.path()).unwrap();
        let loaded = reopened.load_tasks().unwrap();
        assert_eq!(loaded, vec![record("t-1", 4), record("t-2", 5)]);
        assert_eq!(loaded[0].state(), pb::TaskState::Running);
        assert_eq!(loaded[0].container_id(), Some("abc"));
        assert!(!loaded[0].is_terminal());

        reopened.delete_task("t-1").unwrap();
        reopened.delete_task("t-1").unwrap();
        assert_eq!(reopened.load_tasks().unwrap(), vec![record("t-2", 5)]);
    }

    #[test]
    fn staged_records_share_one_sync_and_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).unwrap();
        store.save_task(&record("t-1", 1)).unwrap();
        assert_eq!(store.syncs(), 1, "a save is durable on its own");
        for (id, seq) in [("t-1", 2), ("t-2", 1), ("t-3", 1)] {
            store.stage_task(&record(id, seq)).unwrap();
        }
        assert_eq!(store.syncs(), 1, "staging waits for the sync");
        store.sync().unwrap();
        assert_eq!(store.syncs(), 2, "three staged records, one sync");
        store.sync().unwrap();
        assert_eq!(store.syncs(), 2, "nothing staged, nothing to sync");
        // A durable save also makes what was staged before it durable.
        store.stage_task(&record("t-2", 2)).unwrap();
        store.save_task(&record("t-3", 2)).unwrap();
        store.sync().unwrap();
        assert_eq!(store.syncs(), 3);
        drop(store);
        let loaded = LocalStore::open(dir.path()).unwrap().load_tasks().unwrap();
        assert_eq!(
            loaded,
            vec![record("t-1", 2), record("t-2", 2), record("t-3", 2)]
        );
    }

    #[test]
    fn records_of_an_older_agent_are_folded_into_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let tasks = dir.path().join("tasks");
        fs::create_dir_all(&tasks).unwrap();
        fs::write(tasks.join(".t-1.pb.tmp"), b"half").unwrap();
        fs::write(dir.path().join(".node-id.tmp"), b"half").unwrap();
        fs::write(tasks.join("bad.pb"), b"\xff\xff\xff").unwrap();
        fs::write(
            tasks.join("t-3.pb"),
            prost::Message::encode_to_vec(&record("t-3", 9)),
        )
        .unwrap();
        let store = LocalStore::open(dir.path()).unwrap();
        assert!(!tasks.join(".t-1.pb.tmp").exists());
        assert!(!dir.path().join(".node-id.tmp").exists());
        assert_eq!(store.load_tasks().unwrap(), vec![record("t-3", 9)]);
        assert!(tasks.join("bad.corrupt").exists(), "set aside, not lost");
        assert!(!tasks.join("t-3.pb").exists(), "now in the journal");
        drop(store);
        let again = LocalStore::open(dir.path()).unwrap();
        assert_eq!(again.load_tasks().unwrap(), vec![record("t-3", 9)]);
    }

    #[test]
    fn a_damaged_journal_is_set_aside_keeping_what_precedes_the_damage() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).unwrap();
        store.save_task(&record("t-1", 1)).unwrap();
        let keep = fs::metadata(journal::path(dir.path())).unwrap().len();
        store.save_task(&record("t-2", 1)).unwrap();
        store.save_task(&record("t-3", 1)).unwrap();
        drop(store);
        let p = journal::path(dir.path());
        let mut bytes = fs::read(&p).unwrap();
        bytes[usize::try_from(keep).unwrap() + 10] ^= 0xff;
        fs::write(&p, &bytes).unwrap();
        let store = LocalStore::open(dir.path()).unwrap();
        assert_eq!(store.load_tasks().unwrap(), vec![record("t-1", 1)]);
        assert!(dir.path().join("tasks.journal.corrupt").exists());
        store.save_task(&record("t-4", 1)).unwrap();
        drop(store);
        assert_eq!(stored_ids(dir.path()), ["t-1", "t-4"]);
    }

    #[test]
    fn the_journal_is_compacted_as_records_are_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).unwrap();
        for seq in 0..2000 {
            store.save_task(&record("t-1", seq)).unwrap();
        }
        store.delete_task("t-1").unwrap();
        store.save_task(&record("t-2", 1)).unwrap();
        let size = fs::metadata(journal::path(dir.path())).unwrap().len();
        let one = u64::try_from(prost::Message::encoded_len(&record("t-1", 1))).unwrap();
        assert!(
            size < (REWRITE_SLACK as u64 + 8) * (one + 16),
            "{size} bytes"
        );
        drop(store);
        let store = LocalStore::open(dir.path()).unwrap();
        assert_eq!(store.load_tasks().unwrap(), vec![record("t-2", 1)]);
    }

    #[test]
    fn a_second_store_on_the_same_dir_is_refused_until_the_first_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let first = LocalStore::open(dir.path()).unwrap();
        let clone = first.clone();
        drop(first);
        let e = LocalStore::open(dir.path()).unwrap_err();
        assert!(matches!(e, StoreError::Locked(_)), "{e}");
        assert!(e.to_string().contains("--data-dir"), "{e}");
        drop(clone);
        LocalStore::open(dir.path()).unwrap();
    }

    #[test]
    fn unsafe_task_ids_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).unwrap();
        for bad in ["", "../x", "a/b", "a.b", &"x".repeat(129)] {
            assert!(
                matches!(
                    store.save_task(&record(bad, 1)),
                    Err(StoreError::InvalidTaskId(_))
                ),
                "{bad:?}"
            );
        }
        assert!(valid_task_id("0190b6c2-1d2e-7abc-8def-0123456789ab"));
    }

    #[test]
    fn a_fresh_record_is_pending() {
        let rec = TaskRecord::new(pb::Assignment {
            task_id: "t".into(),
            attempt: 1,
            ..Default::default()
        });
        assert_eq!(rec.state(), pb::TaskState::Pending);
        assert_eq!(rec.container_id(), None);
        assert_eq!(rec.attempt(), 1);
    }
}
