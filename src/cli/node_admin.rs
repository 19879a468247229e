//! `minkube node cordon|uncordon|drain|label`: UpdateNode calls, and for a
//! drain the progress until the node has no task left; `minkube node rm`:
//! RemoveNode. Progress is pushed:
//! a WatchTasks stream on the node says when to count again.
use std::time::Duration;

use minkube::pb::{
    watch_tasks_response, ListTasksRequest, Node, NodeAvailability, RemoveNodeRequest, TaskState,
    UpdateNodeRequest, WatchTasksRequest,
};

use super::args::{LabelChange, NodeCommand, Output};
use super::commands::Session;
use super::error::CliError;
use super::{detail, json};

/// Runs one of the node-changing commands.
pub async fn run(s: &Session, c: &NodeCommand, out: Output) -> Result<String, CliError> {
    let mut req = UpdateNodeRequest::default();
    let node = match c {
        NodeCommand::Get { node } => return super::commands::node_get(s, node, out).await,
        NodeCommand::Rm { node, force } => return remove(s, node, *force, out).await,
        NodeCommand::Cordon { node } => {
            req.set_availability(NodeAvailability::Cordoned);
            node
        }
        NodeCommand::Uncordon { node } => {
            req.set_availability(NodeAvailability::Active);
            node
        }
        NodeCommand::Drain { node, .. } => {
            req.set_availability(NodeAvailability::Drained);
            node
        }
        NodeCommand::Label { node, changes } => {
            for change in changes {
                match change {
                    LabelChange::Set(k, v) => {
                        req.set_labels.insert(k.clone(), v.clone());
                    }
                    LabelChange::Remove(k) => req.remove_labels.push(k.clone()),
                }
            }
            node
        }
    };
    req.node = node.clone();
    let mut client = s.client();
    let resp = s.call(client.update_node(req)).await?;
    let updated = resp.node.ok_or(CliError::Malformed("node"))?;
    match c {
        NodeCommand::Drain {
            timeout,
            no_wait: false,
            ..
        } => {
            let left = wait_drained(s, &updated, resp.tasks_draining, *timeout, out).await?;
            if left > 0 {
                return Err(CliError::DrainTimeout {
                    node: updated.name.clone(),
                    left,
                    after: *timeout,
                });
            }
            let after = super::commands::node_get(s, &updated.id, out).await;
            match out {
                Output::Json => after,
                Output::Table => Ok(format!(
                    "node {} drained: no task left on it\n",
                    updated.name
                )),
            }
        }
        _ => Ok(match out {
            Output::Json => format!("{:#}\n", json::node(&updated)),
            Output::Table => summary(c, &updated, resp.tasks_draining),
        }),
    }
}

fn summary(c: &NodeCommand, n: &Node, draining: u32) -> String {
    match c {
        NodeCommand::Cordon { .. } => format!("node {} cordoned: no new tasks go to it\n", n.name),
        NodeCommand::Uncordon { .. } => format!("node {} active: new tasks may go to it\n", n.name),
        NodeCommand::Drain { .. } => format!(
            "node {} draining: {draining} tasks being moved or stopped\n",
            n.name
        ),
        _ => detail::node(n),
    }
}

/// `minkube node rm`.
async fn remove(s: &Session, node: &str, force: bool, out: Output) -> Result<String, CliError> {
    let mut client = s.client();
    let resp = s
        .call(client.remove_node(RemoveNodeRequest {
            node: node.to_string(),
            force,
        }))
        .await?;
    let removed = resp.node.ok_or(CliError::Malformed("node"))?;
    Ok(match out {
        Output::Json => format!("{:#}\n", json::node(&removed)),
        Output::Table if resp.tasks_moved > 0 => format!(
            "node {} removed (its id and certificates are refused from now on); {} of its tasks handed to their restart policy\n",
            removed.name, resp.tasks_moved
        ),
        Output::Table => format!(
            "node {} removed (its id and certificates are refused from now on)\n",
            removed.name
        ),
    })
}

/// Tasks still on the node (SCHEDULED or RUNNING there).
async fn left_on(s: &Session, node_id: &str) -> Result<u64, CliError> {
    let mut client = s.client();
    let page = s
        .call(client.list_tasks(ListTasksRequest {
            page_size: 1,
            node: node_id.to_string(),
            states: vec![TaskState::Scheduled as i32, TaskState::Running as i32],
            ..Default::default()
        }))
        .await?;
    Ok(page.total_count)
}

/// The two watches that see every way a task leaves the node: changes of
/// tasks on it (one ending there), and tasks becoming SCHEDULED (one moved
/// off it has no node any more, so the first watch does not see that).
async fn watches(
    s: &Session,
    node_id: &str,
) -> Option<[tonic::Streaming<minkube::pb::WatchTasksResponse>; 2]> {
    let mut client = s.client();
    let on_node = s
        .call(client.watch_tasks(WatchTasksRequest {
            node: node_id.to_string(),
            ..Default::default()
        }))
        .await
        .ok()?;
    let scheduled = s
        .call(client.watch_tasks(WatchTasksRequest {
            states: vec![TaskState::Scheduled as i32],
            ..Default::default()
        }))
        .await
        .ok()?;
    Some([on_node, scheduled])
}

/// Prints a line whenever the count of tasks on the node changes, until it
/// is 0 or `timeout` passes; returns what is left.
async fn wait_drained(
    s: &Session,
    node: &Node,
    started: u32,
    timeout: Duration,
    out: Output,
) -> Result<u64, CliError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last = u64::MAX;
    let mut report = |left: u64| {
        if left != last && out == Output::Table {
            println!("node {}: {left} tasks left", node.name);
        }
        last = left;
    };
    if out == Output::Table {
        println!(
            "draining node {}: {started} tasks being moved or stopped",
            node.name
        );
    }
    loop {
        // Watch first, then count: a change between the two still wakes us.
        let streams = watches(s, &node.id).await;
        let left = left_on(s, &node.id).await?;
        report(left);
        if left == 0 {
            return Ok(0);
        }
        let Some([mut a, mut b]) = streams else {
            // No watch (refused, or an older manager): count again shortly.
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(500)) => continue,
                () = tokio::time::sleep_until(deadline) => return Ok(left),
            }
        };
        loop {
            let msg = tokio::select! {
                m = a.message() => m,
                m = b.message() => m,
                () = tokio::time::sleep_until(deadline) => return left_on(s, &node.id).await,
            };
            match msg {
                Ok(Some(m)) if !matches!(m.kind, Some(watch_tasks_response::Kind::Lagged(_))) => {
                    let left = left_on(s, &node.id).await?;
                    report(left);
                    if left == 0 {
                        return Ok(0);
                    }
                }
                // Lagged, ended or broken: watch again.
                _ => break,
            }
        }
    }
}
