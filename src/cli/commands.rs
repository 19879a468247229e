//! One function per subcommand: build the request, call the manager, and
//! return the text to print.
use std::future::Future;
use std::time::Duration;

use minkube::client::{AccessClient, CallMetadata, TracedControlClient};
use minkube::pb::{
    CreateTaskRequest, GetNodeRequest, GetTaskRequest, ListNodesRequest, ListNodesResponse,
    ListTasksRequest, ListTasksResponse, PortSpec, StopTaskRequest, Task, TaskSpec,
};
use tonic::transport::ClientTlsConfig;

use super::args::{Output, PsArgs, RunArgs};
use super::error::CliError;
use super::{detail, json, table};

/// How long one call may take before the CLI gives up.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A connected client plus what is needed to explain its failures.
pub struct Session {
    client: TracedControlClient,
    access: AccessClient,
    manager: String,
}

impl Session {
    /// Dials the manager (over TLS when `tls` is given); every call carries
    /// `metadata` (token, the command's span).
    pub async fn connect(
        manager: &str,
        tls: Option<&ClientTlsConfig>,
        metadata: CallMetadata,
    ) -> Result<Self, CliError> {
        minkube::client::endpoint(manager).map_err(CliError::BadAddress)?;
        let channel = minkube::client::channel_with(manager, tls)
            .await
            .map_err(CliError::Connect)?;
        let client = minkube::pb::control_service_client::ControlServiceClient::with_interceptor(
            channel.clone(),
            metadata.clone(),
        );
        let access = minkube::pb::access_service_client::AccessServiceClient::with_interceptor(
            channel, metadata,
        );
        Ok(Session {
            client,
            access,
            manager: manager.to_string(),
        })
    }

    /// A client of the manager (clones share the connection).
    pub fn client(&self) -> TracedControlClient {
        self.client.clone()
    }

    /// A client of the access API (clones share the connection).
    pub fn access(&self) -> AccessClient {
        self.access.clone()
    }

    /// The status error of a call to this manager.
    pub fn status_error(&self, status: tonic::Status) -> CliError {
        CliError::Status {
            manager: self.manager.clone(),
            status,
        }
    }

    /// Runs one call with the CLI's deadline and maps its errors.
    pub async fn call<T, F>(&self, fut: F) -> Result<T, CliError>
    where
        F: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        match tokio::time::timeout(CALL_TIMEOUT, fut).await {
            Err(_) => Err(CliError::Timeout {
                manager: self.manager.clone(),
                after: CALL_TIMEOUT,
            }),
            Ok(Err(status)) => Err(self.status_error(status)),
            Ok(Ok(resp)) => Ok(resp.into_inner()),
        }
    }
}

/// The spec `minkube run` sends.
pub fn build_spec(a: &RunArgs) -> TaskSpec {
    let mut spec = TaskSpec {
        name: a.name.clone(),
        image: a.image.clone(),
        command: a.command.clone(),
        env: a.env.iter().cloned().collect(),
        memory_mb: a.memory,
        cpu: a.cpu.unwrap_or(0.0),
        ports: a
            .ports
            .iter()
            .map(|(p, proto)| PortSpec {
                container_port: *p,
                protocol: *proto as i32,
            })
            .collect(),
        labels: a.labels.iter().cloned().collect(),
        constraints: a.constraints.clone(),
        ..Default::default()
    };
    spec.set_pull_policy(a.pull_policy.into());
    spec.set_restart_policy(a.restart.into());
    spec.max_restarts = a.max_restarts.unwrap_or(0);
    spec.max_attempts = a.max_attempts.unwrap_or(0);
    spec.privileged = a.privileged;
    spec.host_network = a.host_network;
    spec.host_mounts = a.mounts.clone();
    spec
}

fn pretty(v: &serde_json::Value) -> String {
    // Serializing a Value cannot fail; fall back to compact form regardless.
    let mut s = serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string());
    s.push('\n');
    s
}

fn task_or_malformed(t: Option<Task>) -> Result<Task, CliError> {
    t.ok_or(CliError::Malformed("task"))
}

/// `minkube run`: table mode prints the id alone.
pub async fn run(s: &Session, a: &RunArgs, out: Output) -> Result<String, CliError> {
    let req = CreateTaskRequest {
        spec: Some(build_spec(a)),
    };
    let mut client = s.client.clone();
    let resp = s.call(client.create_task(req)).await?;
    let task = task_or_malformed(resp.task)?;
    Ok(match out {
        Output::Table => format!("{}\n", task.id),
        Output::Json => pretty(&json::task(&task)),
    })
}

/// `minkube stop`: table mode prints the id alone, like `run`.
pub async fn stop(s: &Session, id: &str, out: Output) -> Result<String, CliError> {
    let mut client = s.client.clone();
    let resp = s
        .call(client.stop_task(StopTaskRequest { id: id.to_string() }))
        .await?;
    let task = task_or_malformed(resp.task)?;
    Ok(match out {
        Output::Table => format!("{}\n", task.id),
        Output::Json => pretty(&json::task(&task)),
    })
}

/// `minkube get`.
pub async fn get(s: &Session, id: &str, out: Output) -> Result<String, CliError> {
    let mut client = s.client.clone();
    let resp = s
        .call(client.get_task(GetTaskRequest { id: id.to_string() }))
        .await?;
    Ok(match out {
        Output::Table => detail::task(&task_or_malformed(resp.task)?, &resp.events),
        Output::Json => pretty(&json::task_with_events(resp.task.as_ref(), &resp.events)),
    })
}

/// Puts the pages of a paged listing together; whether more follow is the
/// last page's word.
fn merge_task_pages(pages: Vec<ListTasksResponse>) -> ListTasksResponse {
    let Some(last) = pages.last() else {
        return ListTasksResponse::default();
    };
    let (total_count, has_next) = (last.total_count, last.has_next);
    let next_page_token = last.next_page_token.clone();
    ListTasksResponse {
        tasks: pages.into_iter().flat_map(|p| p.tasks).collect(),
        next_page_token,
        total_count,
        has_next,
    }
}

/// `minkube ps`: the first `--limit` tasks, or every one with --all. Pages
/// are fetched until that many are in (a page of a selective filter can be
/// short: the manager looks at a bounded number of tasks per call).
pub async fn ps(s: &Session, a: &PsArgs, out: Output) -> Result<String, CliError> {
    let limit = usize::try_from(a.limit).unwrap_or(usize::MAX);
    let mut req = ListTasksRequest {
        page_size: a.limit,
        page_token: String::new(),
        states: a.states.iter().map(|st| *st as i32).collect(),
        node: a.node.clone().unwrap_or_default(),
    };
    let mut client = s.client.clone();
    let mut pages = vec![s.call(client.list_tasks(req.clone())).await?];
    let mut have = pages[0].tasks.len();
    while let Some(last) = pages
        .last()
        .filter(|p| p.has_next && !p.next_page_token.is_empty())
    {
        if !a.all && have >= limit {
            break;
        }
        if last.next_page_token == req.page_token {
            return Err(CliError::Malformed(
                "new page token (the same page was returned twice)",
            ));
        }
        req.page_token = last.next_page_token.clone();
        if !a.all {
            req.page_size = u32::try_from(limit - have).unwrap_or(a.limit);
        }
        let page = s.call(client.list_tasks(req.clone())).await?;
        have += page.tasks.len();
        pages.push(page);
    }
    let resp = merge_task_pages(pages);
    Ok(match out {
        Output::Json => pretty(&json::task_list(&resp)),
        Output::Table => {
            let mut text = table::tasks(&resp.tasks, &minkube::convert::now());
            if let Some(f) = table::ps_footer(resp.tasks.len(), resp.total_count, resp.has_next) {
                text.push_str(&f);
                text.push('\n');
            }
            text
        }
    })
}

/// `minkube nodes`: every node (all pages).
pub async fn nodes(s: &Session, out: Output) -> Result<String, CliError> {
    let mut client = s.client.clone();
    let mut req = ListNodesRequest::default();
    let mut all = ListNodesResponse::default();
    loop {
        let page = s.call(client.list_nodes(req.clone())).await?;
        all.nodes.extend(page.nodes);
        all.total_count = page.total_count;
        if !page.has_next || page.next_page_token.is_empty() {
            break;
        }
        if page.next_page_token == req.page_token {
            return Err(CliError::Malformed(
                "new page token (the same page was returned twice)",
            ));
        }
        req.page_token = page.next_page_token;
    }
    Ok(match out {
        Output::Json => pretty(&json::node_list(&all)),
        Output::Table => table::nodes(&all.nodes, &minkube::convert::now()),
    })
}

/// `minkube node get`.
pub async fn node_get(s: &Session, node: &str, out: Output) -> Result<String, CliError> {
    let mut client = s.client.clone();
    let resp = s
        .call(client.get_node(GetNodeRequest {
            node: node.to_string(),
        }))
        .await?;
    let n = resp.node.ok_or(CliError::Malformed("node"))?;
    Ok(match out {
        Output::Table => detail::node(&n),
        Output::Json => pretty(&json::node(&n)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::args::PullPolicyArg;
    use minkube::pb::{Protocol, PullPolicy};

    #[test]
    fn spec_from_args() {
        let a = RunArgs {
            name: "web".into(),
            image: "busybox".into(),
            memory: 32,
            cpu: None,
            env: vec![("A".into(), "1".into()), ("A".into(), "2".into())],
            ports: vec![(8080, Protocol::Tcp), (53, Protocol::Udp)],
            labels: vec![("team".into(), "x".into())],
            pull_policy: PullPolicyArg::Never,
            restart: crate::cli::args::RestartArg::OnFailure,
            max_restarts: Some(5),
            max_attempts: None,
            privileged: false,
            host_network: false,
            mounts: Vec::new(),
            constraints: vec!["node.label.zone==a".into()],
            command: vec!["sleep".into(), "1".into()],
        };
        let s = build_spec(&a);
        assert_eq!(s.name, "web");
        assert_eq!(s.restart_policy(), minkube::pb::RestartPolicy::OnFailure);
        assert_eq!((s.max_restarts, s.max_attempts), (5, 0));
        assert_eq!(s.memory_mb, 32);
        assert_eq!(s.cpu, 0.0);
        // A repeated key keeps its last value.
        assert_eq!(s.env.get("A").map(String::as_str), Some("2"));
        assert_eq!(s.ports.len(), 2);
        assert_eq!(s.ports[1].protocol(), Protocol::Udp);
        assert_eq!(s.labels.get("team").map(String::as_str), Some("x"));
        assert_eq!(s.pull_policy(), PullPolicy::Never);
        assert_eq!(s.command, vec!["sleep", "1"]);
        assert_eq!(s.constraints, vec!["node.label.zone==a"]);
    }

    #[test]
    fn pages_merge() {
        let t = |id: &str| Task {
            id: id.into(),
            ..Default::default()
        };
        let merged = merge_task_pages(vec![
            ListTasksResponse {
                tasks: vec![t("a"), t("b")],
                next_page_token: "x".into(),
                total_count: 3,
                has_next: true,
            },
            ListTasksResponse {
                tasks: vec![t("c")],
                next_page_token: String::new(),
                total_count: 3,
                has_next: false,
            },
        ]);
        let ids: Vec<&str> = merged.tasks.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(ids, vec!["a", "b", "c"]);
        assert_eq!(merged.total_count, 3);
        assert!(!merged.has_next);
        assert!(merged.next_page_token.is_empty());
        let first_only = merge_task_pages(vec![ListTasksResponse {
            tasks: vec![t("a")],
            next_page_token: "a".into(),
            total_count: 9,
            has_next: true,
        }]);
        assert!(first_only.has_next && first_only.next_page_token == "a");
        assert_eq!(merge_task_pages(Vec::new()), ListTasksResponse::default());
    }
}
