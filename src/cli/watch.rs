//! `minkube events` and `minkube get ID --watch`: WatchTasks streams printed
//! one line (or one JSON object) per change, flushed as they arrive.
use std::io::Write;

use prost_types::Timestamp;
use serde_json::{json, Value};
use tonic::{Status, Streaming};

use minkube::convert::{desired_state_name, task_state_name};
use minkube::pb::{
    watch_tasks_response::Kind, DesiredState, GetTaskRequest, Task, TaskChange, TaskState,
    WatchTasksRequest, WatchTasksResponse,
};

use super::args::{EventsArgs, Output};
use super::commands::Session;
use super::error::CliError;
use super::timefmt::rfc3339;
use super::{detail, json};

/// Whether the command goes on after writing: false once stdout is closed
/// (e.g. `minkube events | head`), which ends the command quietly.
type KeepGoing = bool;

fn emit(text: &str) -> Result<KeepGoing, CliError> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(CliError::Output(e.to_string())),
    }
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() {
        "-"
    } else {
        s
    }
}

fn is_terminal(t: &Task) -> bool {
    matches!(state_of(t), TaskState::Completed | TaskState::Failed)
}

fn state_of(t: &Task) -> TaskState {
    t.status
        .as_ref()
        .map_or(TaskState::Unspecified, |s| s.state())
}

/// One text line: time, task id, name, state, attempt, node, reason.
pub fn change_line(c: &TaskChange) -> String {
    let task = c.task.clone().unwrap_or_default();
    let status = task.status.clone().unwrap_or_default();
    let time: Option<&Timestamp> = c
        .event
        .as_ref()
        .and_then(|e| e.timestamp.as_ref())
        .or(task.updated_at.as_ref());
    let time = time.map_or_else(|| "-".to_string(), rfc3339);
    let name = task.spec.as_ref().map_or("", |s| s.name.as_str());
    if c.deleted {
        return format!("{time}  {}  {}  deleted", task.id, or_dash(name));
    }
    let node = if status.node_name.is_empty() {
        &status.node_id
    } else {
        &status.node_name
    };
    let mut reason = c
        .event
        .as_ref()
        .map_or(status.reason.clone(), |e| e.reason.clone());
    if c.event.is_none() && task.desired_state() == DesiredState::Stopped && !is_terminal(&task) {
        reason = format!(
            "desired state {}; {reason}",
            desired_state_name(DesiredState::Stopped)
        );
    }
    format!(
        "{time}  {}  {}  {}  attempt {}  node {}  {}",
        task.id,
        or_dash(name),
        task_state_name(status.state()),
        status.attempt,
        or_dash(node),
        or_dash(&reason)
    )
}

/// One JSON object; `kind` is "change" or "snapshot".
pub fn change_json(c: &TaskChange, kind: &str) -> Value {
    let mut v = json!({ "type": kind, "deleted": c.deleted });
    if let Some(t) = &c.task {
        v["task"] = json::task(t);
    }
    if let Some(e) = &c.event {
        v["event"] = json::event(e);
    }
    v
}

fn render(c: &TaskChange, kind: &str, out: Output) -> String {
    match out {
        Output::Table => format!("{}\n", change_line(c)),
        Output::Json => format!("{}\n", change_json(c, kind)),
    }
}

fn lagged(missed: u64, again: &str) -> Status {
    Status::aborted(format!(
        "fell {missed} changes behind, so the manager ended the watch; run `{again}` again \
         (add --snapshot to print the current state first)"
    ))
}

fn closed() -> Status {
    Status::unavailable("the manager ended the watch stream")
}

async fn open(
    s: &Session,
    req: WatchTasksRequest,
) -> Result<Streaming<WatchTasksResponse>, CliError> {
    let mut client = s.client();
    s.call(client.watch_tasks(req)).await
}

async fn next(
    s: &Session,
    stream: &mut Streaming<WatchTasksResponse>,
) -> Result<Option<Kind>, CliError> {
    match stream.message().await {
        Ok(Some(m)) => Ok(m.kind),
        Ok(None) => Err(s.status_error(closed())),
        Err(status) => Err(s.status_error(status)),
    }
}

/// `minkube events`: changes as they happen (with `--snapshot`, the current
/// state first). Falling behind ends the command with an error.
pub async fn events(s: &Session, a: &EventsArgs, out: Output) -> Result<(), CliError> {
    let req = WatchTasksRequest {
        task_id: a.task.clone().unwrap_or_default(),
        node: a.node.clone().unwrap_or_default(),
        states: a.states.iter().map(|st| *st as i32).collect(),
    };
    let mut stream = open(s, req).await?;
    let mut live = false;
    loop {
        let text = match next(s, &mut stream).await? {
            Some(Kind::Change(c)) if live => render(&c, "change", out),
            Some(Kind::Change(c)) if a.snapshot => render(&c, "snapshot", out),
            Some(Kind::SnapshotDone(_)) => {
                live = true;
                match out {
                    Output::Json if a.snapshot => format!("{}\n", json!({"type": "snapshot_done"})),
                    _ => continue,
                }
            }
            Some(Kind::Lagged(l)) => return Err(s.status_error(lagged(l.missed, "minkube events"))),
            Some(Kind::Change(_)) | None => continue,
        };
        if !emit(&text)? {
            return Ok(());
        }
    }
}

/// What was last printed of the watched task, to skip repeats when the
/// snapshot of a (re)opened watch shows what is already on screen.
#[derive(Debug, Default, PartialEq)]
struct Shown {
    state: i32,
    attempt: u32,
    desired: i32,
}

impl Shown {
    fn of(t: &Task) -> Self {
        let status = t.status.clone().unwrap_or_default();
        Shown {
            state: status.state,
            attempt: status.attempt,
            desired: t.desired_state,
        }
    }
}

/// `minkube get ID --watch`: the task, then one line per change until it
/// finishes (exit 0). A watch that falls behind is opened again.
pub async fn get(s: &Session, id: &str, out: Output) -> Result<(), CliError> {
    let mut client = s.client();
    let resp = s
        .call(client.get_task(GetTaskRequest { id: id.to_string() }))
        .await?;
    let task = resp.task.ok_or(CliError::Malformed("task"))?;
    let text = match out {
        Output::Table => detail::task(&task, &resp.events),
        Output::Json => format!("{}\n", json::task_with_events(Some(&task), &resp.events)),
    };
    if !emit(&text)? || is_terminal(&task) {
        return Ok(());
    }
    if out == Output::Table && !emit("\nWATCHING (Ctrl-C to stop)\n")? {
        return Ok(());
    }
    let mut shown = Shown::of(&task);
    loop {
        let req = WatchTasksRequest {
            task_id: id.to_string(),
            ..Default::default()
        };
        let mut stream = open(s, req).await?;
        let mut live = false;
        let mut seen = false;
        loop {
            let change = match next(s, &mut stream).await? {
                Some(Kind::Change(c)) => c,
                Some(Kind::SnapshotDone(_)) => {
                    if !seen {
                        return Err(s.status_error(Status::not_found(format!(
                            "task {id} no longer exists"
                        ))));
                    }
                    live = true;
                    continue;
                }
                Some(Kind::Lagged(_)) => {
                    eprintln!("note: the watch fell behind; watching again");
                    break;
                }
                None => continue,
            };
            seen = true;
            let Some(task) = change.task.as_ref() else {
                continue;
            };
            if change.deleted {
                emit(&render(&change, "change", out))?;
                return Err(s.status_error(Status::not_found(format!("task {id} was deleted"))));
            }
            let now = Shown::of(task);
            // A snapshot that shows what is on screen already is not news.
            if live || now != shown {
                if !emit(&render(&change, "change", out))? {
                    return Ok(());
                }
                shown = now;
            }
            if is_terminal(task) {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use minkube::pb::{TaskEvent, TaskSpec, TaskStatus};

    fn task(state: TaskState) -> Task {
        Task {
            id: "t1".into(),
            spec: Some(TaskSpec {
                name: "web".into(),
                ..Default::default()
            }),
            desired_state: DesiredState::Running as i32,
            status: Some(TaskStatus {
                state: state as i32,
                reason: "status reason".into(),
                node_id: "n1".into(),
                node_name: "a".into(),
                attempt: 1,
                ..Default::default()
            }),
            updated_at: Some(Timestamp {
                seconds: 1_700_000_000,
                nanos: 0,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn lines() {
        let event = TaskEvent {
            state: TaskState::Running as i32,
            timestamp: Some(Timestamp {
                seconds: 1_700_000_001,
                nanos: 0,
            }),
            reason: "started".into(),
            ..Default::default()
        };
        let c = TaskChange {
            task: Some(task(TaskState::Running)),
            event: Some(event),
            deleted: false,
        };
        assert_eq!(
            change_line(&c),
            "2023-11-14T22:13:21Z  t1  web  running  attempt 1  node a  started"
        );
        let mut stopping = task(TaskState::Running);
        stopping.desired_state = DesiredState::Stopped as i32;
        let c = TaskChange {
            task: Some(stopping),
            event: None,
            deleted: false,
        };
        assert_eq!(
            change_line(&c),
            "2023-11-14T22:13:20Z  t1  web  running  attempt 1  node a  desired state stopped; status reason"
        );
        let gone = TaskChange {
            task: Some(Task {
                id: "t1".into(),
                ..Default::default()
            }),
            event: None,
            deleted: true,
        };
        assert_eq!(change_line(&gone), "-  t1  -  deleted");
    }

    #[test]
    fn json_objects() {
        let c = TaskChange {
            task: Some(task(TaskState::Completed)),
            event: None,
            deleted: false,
        };
        let v = change_json(&c, "change");
        assert_eq!(v["type"], "change");
        assert_eq!(v["task"]["status"]["state"], "completed");
        assert_eq!(v["deleted"], false);
        assert!(v.get("event").is_none());
        assert!(!render(&c, "change", Output::Json).trim_end().contains('\n'));
    }

    #[test]
    fn repeats_are_recognised() {
        let a = task(TaskState::Running);
        let mut b = a.clone();
        assert_eq!(Shown::of(&a), Shown::of(&b));
        if let Some(s) = b.status.as_mut() {
            s.attempt = 2;
        }
        assert_ne!(Shown::of(&a), Shown::of(&b));
        assert!(is_terminal(&task(TaskState::Failed)));
        assert!(!is_terminal(&task(TaskState::Scheduled)));
    }
}
