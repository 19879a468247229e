//! The agent's durable memory under `--data-dir`:
//!
//! ```text
//! <data-dir>/node-id              node id from the first Register (see identity)
//! <data-dir>/tasks/<task-id>.pb   one TaskRecord per assigned task
//! ```
//!
//! Every file is replaced atomically (temp file, fsync, rename, fsync of the
//! directory), so a crash leaves either the old or the new version.
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use minkube::pb;
use minkube_common::state_machine;
use tracing::{error, warn};

const TASKS_DIR: &str = "tasks";
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
#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
    tasks: PathBuf,
}

impl LocalStore {
    /// Opens (creating if needed) the data dir and removes temp files a crash left.
    pub fn open(root: &Path) -> Result<Self, StoreError> {
        let tasks = root.join(TASKS_DIR);
        fs::create_dir_all(&tasks).map_err(io_err("create directory", &tasks))?;
        let store = Self {
            root: root.to_path_buf(),
            tasks,
        };
        for dir in [&store.root, &store.tasks] {
            for entry in fs::read_dir(dir).map_err(io_err("read directory", dir))? {
                let entry = entry.map_err(io_err("read directory", dir))?;
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if name.starts_with('.') && name.ends_with(TMP_SUFFIX) {
                    let path = entry.path();
                    fs::remove_file(&path).map_err(io_err("remove", &path))?;
                }
            }
        }
        Ok(store)
    }

    /// The data dir.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn record_path(&self, task_id: &str) -> Result<(PathBuf, String), StoreError> {
        if !valid_task_id(task_id) {
            return Err(StoreError::InvalidTaskId(task_id.to_string()));
        }
        let name = format!("{task_id}.{RECORD_EXT}");
        Ok((self.tasks.join(&name), name))
    }

    /// Every readable record. A record that cannot be decoded is moved aside
    /// (`.corrupt`) and skipped rather than stopping the agent.
    pub fn load_tasks(&self) -> Result<Vec<TaskRecord>, StoreError> {
        let mut out = Vec::new();
        let dir = &self.tasks;
        for entry in fs::read_dir(dir).map_err(io_err("read directory", dir))? {
            let path = entry.map_err(io_err("read directory", dir))?.path();
            if path.extension().and_then(|e| e.to_str()) != Some(RECORD_EXT) {
                continue;
            }
            let bytes = fs::read(&path).map_err(io_err("read", &path))?;
            let expected_id = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
            match <TaskRecord as prost::Message>::decode(bytes.as_slice()) {
                Ok(rec) if rec.task_id() == expected_id => out.push(rec),
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
        out.sort_by(|a, b| a.task_id().cmp(b.task_id()));
        Ok(out)
    }

    /// Writes a record (atomically and durably).
    pub fn save_task(&self, rec: &TaskRecord) -> Result<(), StoreError> {
        let (_, name) = self.record_path(rec.task_id())?;
        write_atomic(&self.tasks, &name, &prost::Message::encode_to_vec(rec))
    }

    /// Deletes a record; deleting a missing one is fine.
    pub fn delete_task(&self, task_id: &str) -> Result<(), StoreError> {
        let (path, _) = self.record_path(task_id)?;
        match fs::remove_file(&path) {
            Ok(()) => sync_dir(&self.tasks),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("remove", &path)(e)),
        }
    }
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
    fn leftover_temp_files_are_cleaned_and_corrupt_records_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let tasks = dir.path().join("tasks");
        fs::create_dir_all(&tasks).unwrap();
        fs::write(tasks.join(".t-1.pb.tmp"), b"half").unwrap();
        fs::write(tasks.join("bad.pb"), b"\xff\xff\xff").unwrap();
        let store = LocalStore::open(dir.path()).unwrap();
        assert!(!tasks.join(".t-1.pb.tmp").exists());
        assert!(store.load_tasks().unwrap().is_empty());
        assert!(tasks.join("bad.corrupt").exists());
        assert!(!tasks.join("bad.pb").exists());
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
