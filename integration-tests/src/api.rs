//! The cluster's gRPC helpers: a cached client, task and node calls that
//! panic with the status on error, and bounded waits on their state.
use std::collections::HashMap;
use std::time::Duration;

use minkube::client::{CallMetadata, TracedControlClient};
use minkube::pb::{
    CreateTaskRequest, GetTaskRequest, GetTaskResponse, ListNodesRequest, ListTasksRequest,
    ListTasksResponse, Node, NodeState, StopTaskRequest, Task, TaskSpec, TaskState, TaskStatus,
};

use crate::cluster::Cluster;
use crate::describe;
use crate::image::RUN_LABEL;
use crate::wait::{wait_for, POLL};

impl Cluster {
    /// A gRPC client of the manager (cached until the manager restarts).
    pub async fn control(&self) -> TracedControlClient {
        if let Some(c) = self.client.lock().unwrap().clone() {
            return c;
        }
        let (tls, metadata) = self.credentials(
            &self
                .security
                .as_ref()
                .map_or(String::new(), |s| s.admin_token.clone()),
        );
        let channel = minkube::client::channel_with(&self.addr(), tls.as_ref())
            .await
            .unwrap_or_else(|e| panic!("cannot connect to the manager: {e}"));
        let c = minkube::pb::control_service_client::ControlServiceClient::with_interceptor(
            channel, metadata,
        );
        *self.client.lock().unwrap() = Some(c.clone());
        c
    }

    /// TLS settings (secured cluster) and call metadata carrying `token`
    /// (if not empty), for clients a test builds itself.
    pub fn credentials(
        &self,
        token: &str,
    ) -> (Option<tonic::transport::ClientTlsConfig>, CallMetadata) {
        let tls = self.security.as_ref().map(|s| {
            let ca = std::fs::read_to_string(&s.ca_path).expect("the cluster CA is readable");
            minkube_common::tls::client_config(&ca, None)
        });
        let metadata = if token.is_empty() {
            CallMetadata::default()
        } else {
            CallMetadata::default().with_bearer(token)
        };
        (tls, metadata)
    }

    /// A spec running `cmd` in the test image with 16 MB and the run label.
    pub fn spec(&self, name: &str, cmd: &[&str]) -> TaskSpec {
        TaskSpec {
            name: name.to_string(),
            image: self.image.tag().to_string(),
            command: cmd.iter().map(|s| s.to_string()).collect(),
            memory_mb: 16,
            labels: HashMap::from([(RUN_LABEL.to_string(), self.run_id.clone())]),
            ..Default::default()
        }
    }

    /// Creates a task; panics if the manager refuses it.
    pub async fn create(&self, spec: TaskSpec) -> Task {
        let name = spec.name.clone();
        self.control()
            .await
            .create_task(CreateTaskRequest { spec: Some(spec) })
            .await
            .unwrap_or_else(|s| panic!("CreateTask {name} failed: {s:?}"))
            .into_inner()
            .task
            .unwrap_or_else(|| panic!("CreateTask {name} returned no task"))
    }

    /// One task with its events; panics on error.
    pub async fn get(&self, id: &str) -> GetTaskResponse {
        self.try_get(id)
            .await
            .unwrap_or_else(|s| panic!("GetTask {id} failed: {s:?}"))
    }

    /// One task with its events.
    pub async fn try_get(&self, id: &str) -> Result<GetTaskResponse, tonic::Status> {
        self.control()
            .await
            .get_task(GetTaskRequest { id: id.to_string() })
            .await
            .map(tonic::Response::into_inner)
    }

    /// One page of tasks; panics on error.
    pub async fn list(&self, req: ListTasksRequest) -> ListTasksResponse {
        self.control()
            .await
            .list_tasks(req)
            .await
            .unwrap_or_else(|s| panic!("ListTasks failed: {s:?}"))
            .into_inner()
    }

    /// Every task (all pages) in one of `states` (empty: all); panics on error.
    pub async fn list_all(&self, states: &[TaskState]) -> Vec<Task> {
        let mut tasks = Vec::new();
        let mut page_token = String::new();
        loop {
            let page = self
                .list(ListTasksRequest {
                    page_size: 1000,
                    page_token,
                    states: states.iter().map(|s| *s as i32).collect(),
                    node: String::new(),
                })
                .await;
            tasks.extend(page.tasks);
            if !page.has_next || page.next_page_token.is_empty() {
                return tasks;
            }
            page_token = page.next_page_token;
        }
    }

    /// Waits until GetTask of `id` satisfies `check` (described by `what`)
    /// and returns that response. Unlike [`Cluster::wait_task_state`] it
    /// does not stop early at terminal states.
    pub async fn wait_task(
        &self,
        id: &str,
        what: &str,
        timeout: Duration,
        check: impl Fn(&GetTaskResponse) -> bool,
    ) -> GetTaskResponse {
        wait_for(&format!("task {id}: {what}"), timeout, POLL, async || {
            self.assert_alive();
            let resp = self.try_get(id).await.map_err(|s| format!("{s:?}"))?;
            if check(&resp) {
                Ok(resp)
            } else {
                Err(describe::task_with_events(&resp))
            }
        })
        .await
    }

    /// Asks the manager to stop a task; panics on error.
    pub async fn stop(&self, id: &str) -> Task {
        self.control()
            .await
            .stop_task(StopTaskRequest { id: id.to_string() })
            .await
            .unwrap_or_else(|s| panic!("StopTask {id} failed: {s:?}"))
            .into_inner()
            .task
            .unwrap_or_else(|| panic!("StopTask {id} returned no task"))
    }

    /// Every node the manager knows.
    pub async fn nodes(&self) -> Result<Vec<Node>, tonic::Status> {
        self.control()
            .await
            .list_nodes(ListNodesRequest::default())
            .await
            .map(|r| r.into_inner().nodes)
    }

    /// Waits until exactly `n` nodes are READY.
    pub async fn wait_nodes_ready(&self, n: usize) {
        wait_for(&format!("{n} READY nodes"), crate::WAIT, POLL, async || {
            let nodes = self.nodes().await.map_err(|s| format!("{s:?}"))?;
            let ready = nodes
                .iter()
                .filter(|n| describe::node_state(n) == NodeState::Ready)
                .count();
            if ready == n {
                Ok(())
            } else {
                Err(nodes
                    .iter()
                    .map(describe::node)
                    .collect::<Vec<_>>()
                    .join("; "))
            }
        })
        .await;
    }

    /// Creates `n` tasks running `sleep 300`, named `{prefix}-{i}`, and waits
    /// until each runs; returns each id with its running status.
    pub async fn run_sleepers(&self, prefix: &str, n: usize) -> Vec<(String, TaskStatus)> {
        let mut ids = Vec::with_capacity(n);
        for i in 0..n {
            let spec = self.spec(&format!("{prefix}-{i}"), &["sleep", "300"]);
            ids.push(self.create(spec).await.id);
        }
        let mut running = Vec::with_capacity(n);
        for id in ids {
            let resp = self
                .wait_task_state(&id, &[TaskState::Running], crate::WAIT)
                .await;
            running.push((id, describe::status(resp.task.as_ref().unwrap())));
        }
        running
    }

    /// Asserts the task still RUNNING as the same attempt in the same
    /// container as `before` (nothing restarted or replaced it); returns the
    /// task for further checks.
    pub async fn assert_same_running_attempt(
        &self,
        id: &str,
        before: &TaskStatus,
    ) -> GetTaskResponse {
        let after = self.get(id).await;
        let task = after.task.as_ref().unwrap();
        let status = describe::status(task);
        let shown = describe::task_with_events(&after);
        assert_eq!(describe::state(task), TaskState::Running, "{shown}");
        assert_eq!(status.attempt, before.attempt, "no new attempt: {shown}");
        assert_eq!(status.node_id, before.node_id, "same node: {shown}");
        assert_eq!(
            status.container_id, before.container_id,
            "same container: {shown}"
        );
        after
    }

    /// Waits until the task is in one of `states`. Panics at once if it
    /// reaches a terminal state not in the list.
    pub async fn wait_task_state(
        &self,
        id: &str,
        states: &[TaskState],
        timeout: Duration,
    ) -> GetTaskResponse {
        let names: Vec<&str> = states
            .iter()
            .map(|s| minkube::convert::task_state_name(*s))
            .collect();
        wait_for(
            &format!("task {id} to be {}", names.join(" or ")),
            timeout,
            POLL,
            async || {
                self.assert_alive();
                let resp = self.try_get(id).await.map_err(|s| format!("{s:?}"))?;
                let task = resp.task.as_ref().ok_or("no task in GetTask response")?;
                let state = describe::state(task);
                if states.contains(&state) {
                    return Ok(resp);
                }
                if matches!(state, TaskState::Completed | TaskState::Failed) {
                    panic!(
                        "task {id} ended {} while waiting for {}: {}",
                        minkube::convert::task_state_name(state),
                        names.join(" or "),
                        describe::task_with_events(&resp)
                    );
                }
                Err(describe::task_with_events(&resp))
            },
        )
        .await
    }
}
