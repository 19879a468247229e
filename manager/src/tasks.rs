//! Task operations of the user API: create, get, list, stop.

use minkube::convert::now;
use minkube::pb::{self, DesiredState, TaskState};
use minkube_common::{paging, trace_context, validate};

use crate::cluster::Cluster;
use crate::error::ManagerError;
use crate::scheduler;
use crate::task_table::Slot;

/// Most tasks one ListTasks call looks at, ~1 ms under the state lock with a
/// million stored: a filter that few tasks match is served a part of the
/// table at a time instead of stopping every other request for a full walk.
const LIST_SCAN_BUDGET: usize = 16 * 1024;

/// Filters of a task listing.
#[derive(Debug, Default, Clone)]
pub struct TaskFilter {
    /// Keep tasks in any of these states; empty keeps all.
    pub states: Vec<TaskState>,
    /// Keep tasks on this node id.
    pub node_id: Option<String>,
}

impl TaskFilter {
    /// Only unfinished states asked for: no finished task can match.
    fn unfinished_only(&self) -> bool {
        !self.states.is_empty()
            && self
                .states
                .iter()
                .all(|s| !minkube_common::state_machine::is_terminal(*s))
    }

    fn matches(&self, t: &Slot) -> bool {
        (self.states.is_empty() || self.states.contains(&t.state()))
            && self.node_id.as_ref().is_none_or(|n| t.node_id() == n)
    }
}

impl Cluster {
    /// Validates, stores durably, then lets the scheduler place the task.
    pub async fn create_task(&self, spec: Option<pb::TaskSpec>) -> Result<pb::Task, ManagerError> {
        let spec = spec.ok_or_else(|| ManagerError::BadRequest("spec: is required".into()))?;
        validate::validate_spec(&spec)?;
        let created = now();
        // The request's span (a child of the caller's, if it sent one) is the
        // parent of everything done for this task.
        let trace_context = trace_context::current();
        let trace_id = trace_context
            .get(minkube::trace::TRACEPARENT)
            .and_then(|tp| minkube::trace::trace_id_of_traceparent(tp))
            .unwrap_or_default()
            .to_string();
        let task = pb::Task {
            id: uuid::Uuid::now_v7().to_string(),
            spec: Some(spec),
            desired_state: DesiredState::Running as i32,
            status: Some(pb::TaskStatus {
                state: TaskState::Pending as i32,
                reason: "waiting to be scheduled".into(),
                ..Default::default()
            }),
            created_at: Some(created),
            updated_at: Some(created),
            trace_id,
        };
        // Under heavy load scheduler passes place many tasks in one go.
        let place_now = !self.committer_busy();
        let (task, placed) = self
            .write(move |st, out| {
                Ok(scheduler::admit_task(
                    st,
                    task,
                    trace_context,
                    place_now,
                    out,
                ))
            })
            .await?;
        match placed {
            Some((p, slot)) => self.send_reserved(slot, &p.node_id, p.assignment),
            None => self.kick_scheduler(),
        }
        tracing::info!(task_id = %task.id, trace_id = %task.trace_id, "task created");
        Ok(task)
    }

    /// A task and its events. A finished task's events are read from the
    /// store (memory keeps only unfinished tasks' histories).
    pub async fn get_task(&self, id: &str) -> Result<(pb::Task, Vec<pb::TaskEvent>), ManagerError> {
        let (task, events) = {
            let st = self.lock();
            let e = st
                .tasks
                .get(id)
                .ok_or_else(|| ManagerError::TaskNotFound(id.to_string()))?;
            (e.task.clone(), e.events.clone())
        };
        if !events.is_empty() {
            return Ok((task, events));
        }
        // Its last events may still be queued: wait until they are durable.
        self.flushed().await?;
        let events = self.read_events(id).await?;
        Ok((task, events))
    }

    /// Resolves a node given by id or name, for filters.
    pub fn resolve_node_id(&self, id_or_name: &str) -> Result<String, ManagerError> {
        self.lock()
            .find_node(id_or_name)
            .map(|n| n.node.id.clone())
            .ok_or_else(|| ManagerError::NodeNotFound(id_or_name.to_string()))
    }

    /// One page of tasks in creation order. The page token is the id of the
    /// last task the previous page looked at.
    pub fn list_tasks(
        &self,
        filter: &TaskFilter,
        page_size: u32,
        page_token: &str,
    ) -> Result<pb::ListTasksResponse, ManagerError> {
        self.list_tasks_looking_at(filter, page_size, page_token, LIST_SCAN_BUDGET)
    }

    /// [`Cluster::list_tasks`] looking at no more than `budget` tasks: a
    /// filter that few of them match gets a short page, or an empty one,
    /// with `has_next` set and a token to go on from there.
    fn list_tasks_looking_at(
        &self,
        filter: &TaskFilter,
        page_size: u32,
        page_token: &str,
        budget: usize,
    ) -> Result<pb::ListTasksResponse, ManagerError> {
        let size = paging::page_size(page_size);
        if !page_token.is_empty() && uuid::Uuid::parse_str(page_token).is_err() {
            return Err(ManagerError::BadRequest(format!(
                "page_token {page_token:?} is not a token this server issued: pass next_page_token unchanged"
            )));
        }
        let st = self.lock();
        let after = (!page_token.is_empty()).then_some(page_token);
        let mut tasks = Vec::with_capacity(size);
        let mut has_next = false;
        // Each task looked at, with its slot unless it was ruled out
        // without a lookup.
        let candidates: Box<dyn Iterator<Item = (&String, Option<&Slot>)>> =
            match (&filter.node_id, filter.unfinished_only()) {
                (Some(node_id), true) => Box::new(
                    st.unfinished_on(node_id, after)
                        .map(|(id, t)| (id, Some(t))),
                ),
                (None, true) => Box::new(st.tasks.live_after(after, &filter.states)),
                (_, false) => Box::new(st.tasks.after(after).map(|(id, t)| (id, Some(t)))),
            };
        let mut looked = 0;
        let mut stopped_at = None;
        for (id, t) in candidates {
            if let Some(t) = t.filter(|t| filter.matches(t)) {
                if tasks.len() == size {
                    has_next = true;
                    break;
                }
                tasks.extend(t.to_task());
            }
            looked += 1;
            if looked == budget {
                // Enough for one hold of the lock; the next call goes on.
                has_next = true;
                stopped_at = Some(id.clone());
                break;
            }
        }
        let total_count = match &filter.node_id {
            None if filter.states.is_empty() => st.tasks.len(),
            None => {
                let mut states = filter.states.clone();
                states.sort_unstable();
                states.dedup();
                let n: u64 = states.iter().map(|s| st.count_in(*s)).sum();
                usize::try_from(n).unwrap_or(usize::MAX)
            }
            // Finished tasks are counted per node; only the node's
            // unfinished ones are walked.
            Some(node_id) => {
                let finished: u64 = [TaskState::Completed, TaskState::Failed]
                    .into_iter()
                    .filter(|s| filter.states.is_empty() || filter.states.contains(s))
                    .map(|s| st.tasks.finished_on(node_id, s))
                    .sum();
                let live = st
                    .unfinished_on(node_id, None)
                    .filter(|(_, t)| filter.matches(t))
                    .count();
                usize::try_from(finished)
                    .unwrap_or(usize::MAX)
                    .saturating_add(live)
            }
        };
        let next_page_token = if has_next {
            stopped_at
                .or_else(|| tasks.last().map(|t| t.id.clone()))
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(pb::ListTasksResponse {
            tasks,
            next_page_token,
            total_count: u64::try_from(total_count).unwrap_or(u64::MAX),
            has_next,
        })
    }

    /// Records the wish to stop. A task not yet placed ends at once; a placed
    /// one gets a stop order, and its agent's report ends it.
    pub async fn stop_task(&self, id: &str) -> Result<pb::Task, ManagerError> {
        let (task, order) = self
            .write(|st, out| {
                if let Some(slot @ Slot::Finished(_)) = st.tasks.slot(id) {
                    // Already over: nothing to stop, nothing to write.
                    return slot
                        .to_task()
                        .map(|t| (t, None))
                        .ok_or_else(|| ManagerError::TaskNotFound(id.to_string()));
                }
                let e = st
                    .tasks
                    .get_mut(id)
                    .ok_or_else(|| ManagerError::TaskNotFound(id.to_string()))?;
                let state = e.state();
                e.task.set_desired_state(DesiredState::Stopped);
                e.task.updated_at = Some(now());
                // Not on any node (never placed, or a new attempt waiting out
                // its backoff): nothing runs, so it ends here.
                let unplaced = st.unplaced.contains_key(id);
                if unplaced {
                    let reason = if state == TaskState::Pending {
                        "stopped by user before it was scheduled"
                    } else {
                        "stopped by user before its next attempt"
                    };
                    st.transition(id, TaskState::Completed, reason, |_| {}, out)
                        .map_err(|e| ManagerError::BadRequest(e.to_string()))?;
                } else {
                    st.put_task(id, out);
                }
                let Some(e) = st.tasks.get(id) else {
                    return Err(ManagerError::TaskNotFound(id.to_string()));
                };
                let status = e.status();
                let order = (!unplaced).then(|| {
                    (
                        status.node_id.clone(),
                        pb::StopOrder {
                            task_id: id.to_string(),
                            attempt: status.attempt,
                            reason: crate::status::stop_reason(&e.task),
                            trace_context: trace_context::current(),
                        },
                    )
                });
                Ok((e.task.clone(), order))
            })
            .await?;
        if let Some((node_id, order)) = order {
            // If the agent is away, its next session's reconciliation stops it.
            self.send(&node_id, pb::manager_message::Msg::Stop(order))
                .await;
        }
        tracing::info!(task_id = id, "stop requested");
        Ok(task)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::Arc;

    use super::*;
    use crate::cluster::ClusterConfig;
    use crate::store::RedbStore;

    use crate::state::fixtures::spec;

    async fn cluster(dir: &std::path::Path) -> Arc<Cluster> {
        let store = Arc::new(RedbStore::open(dir).unwrap());
        Cluster::start(store, ClusterConfig::default()).unwrap()
    }

    #[tokio::test]
    async fn invalid_specs_store_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let c = cluster(dir.path()).await;
        let mut bad = spec("x");
        bad.memory_mb = 4;
        let err = c.create_task(Some(bad)).await.unwrap_err();
        assert!(err.to_string().contains("spec.memory_mb"), "{err}");
        assert!(c.create_task(None).await.is_err());
        let page = c.list_tasks(&TaskFilter::default(), 0, "").unwrap();
        assert_eq!(page.total_count, 0);
        c.shutdown(std::time::Duration::from_secs(1)).await;
    }

    #[tokio::test]
    async fn a_task_a_node_has_room_for_is_placed_by_the_create_call() {
        let dir = tempfile::tempdir().unwrap();
        let c = cluster(dir.path()).await;
        let (node_id, mut rx) = crate::cluster::test_node(&c, "a", 1000, 4).await;
        let task = c.create_task(Some(spec("t"))).await.unwrap();
        let status = task.status.clone().unwrap();
        assert_eq!(status.state(), TaskState::Scheduled);
        assert_eq!(status.node_id, node_id);
        assert_eq!(status.reason, "placed on node a");
        let sent = tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(
            matches!(&sent.msg, Some(pb::manager_message::Msg::Assignment(a)) if a.task_id == task.id),
            "{sent:?}"
        );
        // Stored as placed: a restart finds it on the node.
        c.shutdown(std::time::Duration::from_secs(1)).await;
        drop(c);
        let c = cluster(dir.path()).await;
        let (task, events) = c.get_task(&task.id).await.unwrap();
        assert_eq!(task.status.unwrap().state(), TaskState::Scheduled);
        let states: Vec<_> = events.iter().map(pb::TaskEvent::state).collect();
        assert_eq!(states, [TaskState::Pending, TaskState::Scheduled]);
        c.shutdown(std::time::Duration::from_secs(1)).await;
    }

    #[tokio::test]
    async fn pages_filters_and_survives_restart() {
        let dir = tempfile::tempdir().unwrap();
        let c = cluster(dir.path()).await;
        let mut ids = Vec::new();
        for i in 0..5 {
            ids.push(
                c.create_task(Some(spec(&format!("t{i}"))))
                    .await
                    .unwrap()
                    .id,
            );
        }
        let stopped = c.stop_task(&ids[1]).await.unwrap();
        assert_eq!(stopped.status.unwrap().state(), TaskState::Completed);

        let mut seen = Vec::new();
        let mut token = String::new();
        let mut pages = 0;
        loop {
            let p = c.list_tasks(&TaskFilter::default(), 2, &token).unwrap();
            assert_eq!(p.total_count, 5);
            pages += 1;
            seen.extend(p.tasks.iter().map(|t| t.id.clone()));
            if !p.has_next {
                break;
            }
            token = p.next_page_token;
        }
        assert_eq!(pages, 3);
        assert_eq!(seen, ids, "creation order, each once");

        let pending = TaskFilter {
            states: vec![TaskState::Pending],
            node_id: None,
        };
        assert_eq!(c.list_tasks(&pending, 0, "").unwrap().total_count, 4);
        assert!(c.list_tasks(&pending, 0, "garbage").is_err());
        let (_, events) = c.get_task(&ids[1]).await.unwrap();
        assert_eq!(
            events.len(),
            2,
            "a finished task's history comes from the store"
        );
        c.shutdown(std::time::Duration::from_secs(1)).await;
        drop(c);

        let c = cluster(dir.path()).await;
        let (task, events) = c.get_task(&ids[1]).await.unwrap();
        assert_eq!(task.desired_state(), DesiredState::Stopped);
        let states: Vec<_> = events.iter().map(|e| e.state()).collect();
        assert_eq!(states, [TaskState::Pending, TaskState::Completed]);
        assert_eq!(c.list_tasks(&pending, 0, "").unwrap().total_count, 4);
        let (_, events) = c.get_task(&ids[0]).await.unwrap();
        assert_eq!(events.len(), 1);
        assert!(c.get_task("nope").await.is_err());
        c.shutdown(std::time::Duration::from_secs(1)).await;
    }

    /// A task loaded as if from the store, in `state` on `node`.
    fn stored(state: TaskState, node: &str) -> crate::store::StoredTask {
        crate::store::StoredTask {
            task: Some(pb::Task {
                id: uuid::Uuid::now_v7().to_string(),
                spec: Some(spec("t")),
                status: Some(pb::TaskStatus {
                    state: state as i32,
                    node_id: node.into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn lists_served_from_indexes_match_a_walk_of_every_task() {
        use TaskState::{Completed, Failed, Pending, Running, Scheduled};
        let dir = tempfile::tempdir().unwrap();
        let c = cluster(dir.path()).await;
        {
            let mut st = c.lock();
            for i in 0..300usize {
                let state = [Completed, Running, Failed, Completed, Scheduled, Pending][i % 6];
                // Every state on both nodes, n1 twice as often.
                let node = match state {
                    Pending => "",
                    _ => ["n1", "n2", "n1"][i / 6 % 3],
                };
                st.load_task(stored(state, node), Vec::new());
            }
            // Waiting for their next placement: on no node.
            for _ in 0..10 {
                st.load_task(stored(Scheduled, ""), Vec::new());
            }
        }
        let state_sets: [&[TaskState]; 7] = [
            &[],
            &[Running],
            &[Scheduled, Running],
            &[Pending],
            &[Completed],
            &[Failed, Running],
            &[Completed, Failed, Completed],
        ];
        for states in state_sets {
            for node in [None, Some("n1"), Some("n2"), Some("elsewhere")] {
                let filter = TaskFilter {
                    states: states.to_vec(),
                    node_id: node.map(str::to_string),
                };
                let want: Vec<String> = c
                    .lock()
                    .tasks
                    .iter()
                    .filter(|(_, t)| filter.matches(t))
                    .map(|(id, _)| id.clone())
                    .collect();
                for budget in [LIST_SCAN_BUDGET, 5, 1] {
                    let mut got = Vec::new();
                    let mut token = String::new();
                    loop {
                        let p = c.list_tasks_looking_at(&filter, 7, &token, budget).unwrap();
                        assert_eq!(p.total_count, want.len() as u64, "{filter:?}");
                        assert!(p.tasks.len() <= 7);
                        got.extend(p.tasks.into_iter().map(|t| t.id));
                        if !p.has_next {
                            break;
                        }
                        assert_ne!(p.next_page_token, token, "{filter:?}: no progress");
                        token = p.next_page_token;
                    }
                    assert_eq!(got, want, "{filter:?}, looking at {budget} at a time");
                }
            }
        }
        c.shutdown(std::time::Duration::from_secs(1)).await;
    }
}
