//! The B-tree behind the embedded store: one redb file under the data dir.
//! Writes reach it at checkpoints, many commits at once, from the journal
//! (see `redb_store`); reads at start-up and for finished tasks' events.
use std::collections::HashMap;
use std::path::Path;

use minkube::pb;
use prost::Message;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use minkube_common::state_machine;

use super::journal::Op;
use super::{Snapshot, StoreError, StoredTask, StoredToken};

const TASKS: TableDefinition<&str, &[u8]> = TableDefinition::new("tasks");
/// Key: (task id, event index).
const EVENTS: TableDefinition<(&str, u32), &[u8]> = TableDefinition::new("events");
const NODES: TableDefinition<&str, &[u8]> = TableDefinition::new("nodes");
/// API tokens by name (hashed secrets only).
const TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new("tokens");
/// Removed nodes by name: when each was removed (Unix seconds); their
/// certificates issued until then are refused.
const REMOVED_NODES: TableDefinition<&str, u64> = TableDefinition::new("removed_nodes");
/// Removed nodes by id: when each was removed; an agent may not register
/// under one again.
const REMOVED_NODE_IDS: TableDefinition<&str, u64> = TableDefinition::new("removed_node_ids");
/// Single values: the join token's hash.
const SETTINGS: TableDefinition<&str, &str> = TableDefinition::new("settings");
const JOIN_TOKEN_KEY: &str = "join_token_sha256";
const JOIN_TOKEN_ISSUED_KEY: &str = "join_token_issued_at";
/// Number of the last journal segment whose changes the tree holds.
const CHECKPOINTED_KEY: &str = "journal_checkpointed_segment";

/// The redb file.
pub(super) struct BTree {
    db: Database,
}

fn backend(op: &'static str) -> impl Fn(redb::Error) -> StoreError {
    move |e| StoreError::Backend {
        op,
        message: e.to_string(),
    }
}

/// redb page cache.
const CACHE_BYTES: usize = 64 * 1024 * 1024;

fn decode<M: Message + Default>(key: &str, bytes: &[u8]) -> Result<M, StoreError> {
    M::decode(bytes).map_err(|e| StoreError::Corrupt {
        key: key.to_string(),
        message: e.to_string(),
    })
}

impl BTree {
    /// Opens (or creates) `<dir>/state.redb`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Backend {
            op: "create data dir",
            message: format!("{}: {e}", dir.display()),
        })?;
        let path = dir.join("state.redb");
        // The manager keeps its model in memory and reads the store only at
        // start-up, so redb's page cache (1 GiB by default) would mostly
        // hold pages read once. Writes append near the end of each tree.
        let db = redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create(&path)
            .map_err(|e| StoreError::Backend {
                op: "open",
                message: format!(
                    "{}: {e} (is another manager using this data dir?)",
                    path.display()
                ),
            })?;
        // Create the tables so a read of a fresh store finds them.
        let txn = db.begin_write().map_err(|e| backend("begin")(e.into()))?;
        txn.open_table(TASKS)
            .map_err(|e| backend("open table")(e.into()))?;
        txn.open_table(EVENTS)
            .map_err(|e| backend("open table")(e.into()))?;
        txn.open_table(NODES)
            .map_err(|e| backend("open table")(e.into()))?;
        txn.open_table(TOKENS)
            .map_err(|e| backend("open table")(e.into()))?;
        txn.open_table(REMOVED_NODES)
            .map_err(|e| backend("open table")(e.into()))?;
        txn.open_table(REMOVED_NODE_IDS)
            .map_err(|e| backend("open table")(e.into()))?;
        txn.open_table(SETTINGS)
            .map_err(|e| backend("open table")(e.into()))?;
        txn.commit().map_err(|e| backend("commit")(e.into()))?;
        Ok(Self { db })
    }

    /// Nodes, tokens and settings.
    pub(super) fn load(&self) -> Result<Snapshot, StoreError> {
        self.load_inner().map_err(backend("load"))
    }

    /// Every task in id order, unfinished ones with their events.
    pub(super) fn load_tasks(
        &self,
        on_task: &mut dyn FnMut(StoredTask, Vec<pb::TaskEvent>),
    ) -> Result<(), StoreError> {
        self.load_tasks_inner(on_task)
            .map_err(backend("load tasks"))
    }

    /// The events of one task, oldest first.
    pub(super) fn task_events(&self, task_id: &str) -> Result<Vec<pb::TaskEvent>, StoreError> {
        let read = || -> Result<_, redb::Error> {
            let txn = self.db.begin_read()?;
            read_events(&txn.open_table(EVENTS)?, task_id)
        };
        read().map_err(backend("read events"))
    }

    /// The last journal segment applied (0: none).
    pub(super) fn checkpointed_segment(&self) -> Result<u64, StoreError> {
        let read = || -> Result<u64, redb::Error> {
            let txn = self.db.begin_read()?;
            let settings = txn.open_table(SETTINGS)?;
            Ok(settings
                .get(CHECKPOINTED_KEY)?
                .and_then(|v| v.value().parse().ok())
                .unwrap_or(0))
        };
        read().map_err(backend("read checkpoint"))
    }

    /// Applies `batch` in one durable transaction (all or none), recording
    /// that the tree now holds journal segments up to `segment`. A task or
    /// node written several times is written once, with its last version.
    pub(super) fn apply(&self, batch: &[Op<'_>], segment: Option<u64>) -> Result<(), StoreError> {
        self.apply_inner(batch, segment).map_err(backend("commit"))
    }

    fn load_inner(&self) -> Result<Snapshot, redb::Error> {
        let txn = self.db.begin_read()?;
        let nodes = txn.open_table(NODES)?;
        let mut snap = Snapshot::default();
        for item in nodes.iter()? {
            let (k, v) = item?;
            let node = decode::<pb::Node>(&format!("nodes/{}", k.value()), v.value())
                .map_err(|e| redb::Error::Corrupted(e.to_string()))?;
            snap.nodes.push(node);
        }
        for item in txn.open_table(TOKENS)?.iter()? {
            let (k, v) = item?;
            let token = decode::<StoredToken>(&format!("tokens/{}", k.value()), v.value())
                .map_err(|e| redb::Error::Corrupted(e.to_string()))?;
            snap.tokens.push(token);
        }
        for item in txn.open_table(REMOVED_NODES)?.iter()? {
            let (k, v) = item?;
            snap.removed_nodes.push((k.value().to_string(), v.value()));
        }
        for item in txn.open_table(REMOVED_NODE_IDS)?.iter()? {
            let (k, v) = item?;
            snap.removed_node_ids
                .push((k.value().to_string(), v.value()));
        }
        let settings = txn.open_table(SETTINGS)?;
        snap.join_token_sha256 = settings.get(JOIN_TOKEN_KEY)?.map(|v| v.value().to_string());
        snap.join_token_issued_at = settings
            .get(JOIN_TOKEN_ISSUED_KEY)?
            .and_then(|v| v.value().parse().ok());
        Ok(snap)
    }

    fn load_tasks_inner(
        &self,
        on_task: &mut dyn FnMut(StoredTask, Vec<pb::TaskEvent>),
    ) -> Result<(), redb::Error> {
        let txn = self.db.begin_read()?;
        let tasks = txn.open_table(TASKS)?;
        let events = txn.open_table(EVENTS)?;
        for item in tasks.iter()? {
            let (k, v) = item?;
            let id = k.value();
            let stored = decode::<StoredTask>(&format!("tasks/{id}"), v.value())
                .map_err(|e| redb::Error::Corrupted(e.to_string()))?;
            let finished = stored
                .task
                .as_ref()
                .and_then(|t| t.status.as_ref())
                .is_some_and(|s| state_machine::is_terminal(s.state()));
            let evs = if finished {
                Vec::new()
            } else {
                read_events(&events, id)?
            };
            on_task(stored, evs);
        }
        Ok(())
    }

    fn apply_inner(&self, batch: &[Op<'_>], segment: Option<u64>) -> Result<(), redb::Error> {
        let last = last_versions(batch);
        let txn = self.db.begin_write()?;
        {
            let mut tasks = txn.open_table(TASKS)?;
            let mut events = txn.open_table(EVENTS)?;
            let mut nodes = txn.open_table(NODES)?;
            for (i, op) in batch.iter().enumerate() {
                if last.get(&record_key(op)).is_some_and(|&l| l != i) {
                    continue; // a later version of the same record follows
                }
                match *op {
                    Op::PutTask { id, record } => {
                        tasks.insert(id, record)?;
                    }
                    Op::DeleteTask(id) => {
                        tasks.remove(id)?;
                        events.retain_in((id, 0)..=(id, u32::MAX), |_, _| false)?;
                    }
                    Op::PutEvent {
                        task_id,
                        index,
                        event,
                    } => {
                        events.insert((task_id, index), event)?;
                    }
                    Op::PutNode { id, record } => {
                        nodes.insert(id, record)?;
                    }
                    // Rare: their tables are opened only when needed.
                    Op::PutToken { name, record } => {
                        txn.open_table(TOKENS)?.insert(name, record)?;
                    }
                    Op::DeleteToken(name) => {
                        txn.open_table(TOKENS)?.remove(name)?;
                    }
                    Op::PutJoinToken { sha256, issued_at } => {
                        let mut settings = txn.open_table(SETTINGS)?;
                        settings.insert(JOIN_TOKEN_KEY, sha256)?;
                        settings.insert(JOIN_TOKEN_ISSUED_KEY, issued_at.to_string().as_str())?;
                    }
                    Op::RemoveNode {
                        id,
                        name,
                        removed_at,
                    } => {
                        nodes.remove(id)?;
                        txn.open_table(REMOVED_NODES)?.insert(name, removed_at)?;
                        txn.open_table(REMOVED_NODE_IDS)?.insert(id, removed_at)?;
                    }
                }
            }
            if let Some(segment) = segment {
                txn.open_table(SETTINGS)?
                    .insert(CHECKPOINTED_KEY, segment.to_string().as_str())?;
            }
        }
        txn.commit()?;
        Ok(())
    }
}

/// Which record a whole-record put replaces; `None` for other mutations.
#[derive(PartialEq, Eq, Hash)]
enum RecordKey<'a> {
    Task(&'a str),
    Node(&'a str),
    None,
}

fn record_key<'a>(op: &Op<'a>) -> RecordKey<'a> {
    match *op {
        Op::PutTask { id, .. } => RecordKey::Task(id),
        Op::PutNode { id, .. } => RecordKey::Node(id),
        _ => RecordKey::None,
    }
}

/// Position of the last put of each task and node in `batch`: earlier puts
/// of the same record are skipped (a task is put about four times in its
/// life, usually within one checkpoint).
fn last_versions<'a>(batch: &[Op<'a>]) -> HashMap<RecordKey<'a>, usize> {
    // At most one entry per change: no rehashing on the way.
    let mut last = HashMap::with_capacity(batch.len());
    for (i, m) in batch.iter().enumerate() {
        let key = record_key(m);
        if key != RecordKey::None {
            last.insert(key, i);
        }
    }
    last
}

/// The events of one task, in index order.
fn read_events(
    events: &impl ReadableTable<(&'static str, u32), &'static [u8]>,
    task_id: &str,
) -> Result<Vec<pb::TaskEvent>, redb::Error> {
    let mut out = Vec::new();
    for item in events.range((task_id, 0)..=(task_id, u32::MAX))? {
        let (k, v) = item?;
        let (_, index) = k.value();
        let event = super::event_record::decode(task_id, v.value())
            .map_err(|e| StoreError::Corrupt {
                key: format!("events/{task_id}/{index}"),
                message: e.to_string(),
            })
            .map_err(|e| redb::Error::Corrupted(e.to_string()))?;
        out.push(event);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::store::{journal, Mutation};

    /// Applies mutations as a checkpoint would: through the journal's encoding.
    fn apply(s: &BTree, batch: &[Mutation], segment: Option<u64>) {
        let mut payload = Vec::new();
        journal::encode_payload(batch, &mut payload);
        s.apply(&journal::decode_payload(&payload).unwrap(), segment)
            .unwrap();
    }

    fn task(id: &str) -> StoredTask {
        StoredTask {
            task: Some(pb::Task {
                id: id.into(),
                ..Default::default()
            }),
            last_sequence: 7,
            trace_context: [(
                "traceparent".to_string(),
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_string(),
            )]
            .into_iter()
            .collect::<HashMap<_, _>>()
            .into(),
        }
    }

    fn node(id: &str, name: &str) -> Mutation {
        Mutation::PutNode(Box::new(pb::Node {
            id: id.into(),
            name: name.into(),
            ..Default::default()
        }))
    }

    fn event(task_id: &str, reason: &str) -> pb::TaskEvent {
        pb::TaskEvent {
            task_id: task_id.into(),
            reason: reason.into(),
            ..Default::default()
        }
    }

    #[test]
    fn survives_reopen_and_deletes_cascade() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = BTree::open(dir.path()).unwrap();
            let mut batch = vec![
                Mutation::PutTask(Box::new(task("t1"))),
                Mutation::PutTask(Box::new(task("t2"))),
            ];
            for (i, r) in ["a", "b"].iter().enumerate() {
                batch.push(Mutation::PutEvent {
                    task_id: "t1".into(),
                    index: u32::try_from(i).unwrap(),
                    event: Box::new(event("t1", r)),
                });
            }
            batch.push(Mutation::PutEvent {
                task_id: "t2".into(),
                index: 0,
                event: Box::new(event("t2", "c")),
            });
            batch.push(node("n1", "a"));
            apply(&s, &batch, None);
        }
        let s = BTree::open(dir.path()).unwrap();
        let snap = s.load().unwrap();
        let tasks = all_tasks(&s);
        assert_eq!(tasks.len(), 2);
        assert_eq!(tasks[0].0, task("t1"));
        let reasons: Vec<_> = tasks[0].1.iter().map(|e| e.reason.as_str()).collect();
        assert_eq!(reasons, ["a", "b"]);
        assert_eq!(s.task_events("t1").unwrap(), tasks[0].1);
        assert_eq!(snap.nodes[0].name, "a");

        apply(&s, &[Mutation::DeleteTask("t1".into())], None);
        let tasks = all_tasks(&s);
        assert_eq!(tasks.len(), 1);
        assert_eq!(tasks[0].1.len(), 1, "t2's events stay");
        assert!(s.task_events("t1").unwrap().is_empty());
    }

    fn all_tasks(s: &BTree) -> Vec<(StoredTask, Vec<pb::TaskEvent>)> {
        let mut all = Vec::new();
        s.load_tasks(&mut |t, evs| all.push((t, evs))).unwrap();
        all
    }

    #[test]
    fn finished_tasks_load_without_events_which_stay_readable() {
        let dir = tempfile::tempdir().unwrap();
        let s = BTree::open(dir.path()).unwrap();
        let mut done = task("done");
        if let Some(t) = done.task.as_mut() {
            t.status = Some(pb::TaskStatus {
                state: pb::TaskState::Completed as i32,
                ..Default::default()
            });
        }
        let mut batch = vec![
            Mutation::PutTask(Box::new(done)),
            Mutation::PutTask(Box::new(task("live"))),
        ];
        for id in ["done", "live"] {
            batch.push(Mutation::PutEvent {
                task_id: id.into(),
                index: 0,
                event: Box::new(event(id, "accepted")),
            });
        }
        apply(&s, &batch, None);
        let tasks = all_tasks(&s);
        let ids: Vec<_> = tasks
            .iter()
            .map(|(t, evs)| (t.task.as_ref().unwrap().id.as_str(), evs.len()))
            .collect();
        assert_eq!(ids, [("done", 0), ("live", 1)]);
        assert_eq!(s.task_events("done").unwrap()[0].reason, "accepted");
    }

    #[test]
    fn events_read_with_their_task_id_whether_stored_with_it_or_without() {
        let dir = tempfile::tempdir().unwrap();
        let s = BTree::open(dir.path()).unwrap();
        // Index 0 as this version stores it (without the task id), index 1
        // as earlier versions did (whole).
        apply(
            &s,
            &[Mutation::PutEvent {
                task_id: "t1".into(),
                index: 0,
                event: Box::new(event("t1", "accepted")),
            }],
            None,
        );
        let whole = event("t1", "started").encode_to_vec();
        s.apply(
            &[Op::PutEvent {
                task_id: "t1",
                index: 1,
                event: &whole,
            }],
            None,
        )
        .unwrap();
        assert_eq!(
            s.task_events("t1").unwrap(),
            [event("t1", "accepted"), event("t1", "started")]
        );
    }

    #[test]
    fn a_batch_keeps_the_last_version_of_each_record_and_its_segment() {
        let dir = tempfile::tempdir().unwrap();
        let s = BTree::open(dir.path()).unwrap();
        assert_eq!(s.checkpointed_segment().unwrap(), 0);
        let mut second = task("t1");
        second.last_sequence = 9;
        let batch = vec![
            Mutation::PutTask(Box::new(task("t1"))),
            Mutation::PutTask(Box::new(task("gone"))),
            Mutation::PutTask(Box::new(second.clone())),
            Mutation::DeleteTask("gone".into()),
            node("n1", "old"),
            node("n1", "new"),
        ];
        apply(&s, &batch, Some(7));
        let tasks = all_tasks(&s);
        assert_eq!(tasks.len(), 1);
        assert_eq!(tasks[0].0, second);
        let nodes = s.load().unwrap().nodes;
        assert_eq!(nodes.len(), 1);
        assert_eq!(nodes[0].name, "new");
        assert_eq!(s.checkpointed_segment().unwrap(), 7);
    }

    #[test]
    fn a_removed_node_is_gone_and_its_name_remembered_even_if_put_again() {
        let dir = tempfile::tempdir().unwrap();
        let s = BTree::open(dir.path()).unwrap();
        let remove = |id: &str, name: &str, at: u64| Mutation::RemoveNode {
            id: id.into(),
            name: name.into(),
            removed_at: at,
        };
        // Within one batch: put, remove, and (a plaintext agent registering
        // again under its old id) put once more; a second node put then removed.
        apply(
            &s,
            &[
                node("n1", "a"),
                remove("n1", "a", 100),
                node("n1", "a"),
                node("n2", "b"),
                remove("n2", "b", 101),
            ],
            None,
        );
        let snap = s.load().unwrap();
        assert_eq!(
            snap.nodes.iter().map(|n| n.id.as_str()).collect::<Vec<_>>(),
            ["n1"]
        );
        assert_eq!(
            snap.removed_nodes,
            [("a".to_string(), 100), ("b".to_string(), 101)]
        );
        assert_eq!(
            snap.removed_node_ids,
            [("n1".to_string(), 100), ("n2".to_string(), 101)]
        );
        // Removed again later: the newer time counts.
        apply(&s, &[remove("n1", "a", 200)], None);
        let snap = s.load().unwrap();
        assert!(snap.nodes.is_empty());
        assert_eq!(snap.removed_nodes[0], ("a".to_string(), 200));
    }
}
