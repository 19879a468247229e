//! Clients that submit tasks: closed loop (C callers, each sending its next
//! request when the last is answered) and open loop (a fixed offered rate,
//! whatever the answers do).
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use minkube::client::ControlClient;
use minkube::pb;
use tokio::task::JoinSet;

/// One acknowledged CreateTask.
#[derive(Debug, Clone)]
pub struct Submitted {
    /// The task id the manager gave.
    pub id: String,
    /// When the request was sent (open loop: when it was due).
    pub sent: Instant,
    /// Until the answer (the task is durable by then).
    pub ack: Duration,
}

/// What a load run produced.
#[derive(Debug, Default)]
pub struct LoadResult {
    /// Acknowledged requests.
    pub ok: Vec<Submitted>,
    /// Refused or failed requests, with the first error seen.
    pub errors: usize,
    /// First error message.
    pub first_error: Option<String>,
    /// First send to last answer.
    pub elapsed: Duration,
}

/// The spec every benchmark task uses.
pub fn spec(name: &str, image: &str, command: &[&str]) -> pb::TaskSpec {
    pb::TaskSpec {
        name: name.to_string(),
        image: image.to_string(),
        command: command.iter().map(|s| s.to_string()).collect(),
        memory_mb: 8,
        pull_policy: pb::PullPolicy::Never as i32,
        restart_policy: pb::RestartPolicy::Never as i32,
        ..Default::default()
    }
}

async fn clients(addr: &str, connections: usize) -> anyhow::Result<Vec<ControlClient>> {
    let mut v = Vec::with_capacity(connections);
    for _ in 0..connections.max(1) {
        v.push(crate::manager::client(addr).await.context("connect")?);
    }
    Ok(v)
}

fn record(
    out: &Mutex<LoadResult>,
    sent: Instant,
    r: Result<tonic::Response<pb::CreateTaskResponse>, tonic::Status>,
) {
    let ack = sent.elapsed();
    let mut out = out.lock().unwrap_or_else(|e| e.into_inner());
    match r.map(|r| r.into_inner().task) {
        Ok(Some(task)) => out.ok.push(Submitted {
            id: task.id,
            sent,
            ack,
        }),
        Ok(None) => {
            out.errors += 1;
            out.first_error
                .get_or_insert_with(|| "answer without a task".into());
        }
        Err(s) => {
            out.errors += 1;
            out.first_error
                .get_or_insert_with(|| format!("{:?}: {}", s.code(), s.message()));
        }
    }
}

/// `total` CreateTasks from `callers` concurrent callers sharing
/// `connections` HTTP/2 connections.
pub async fn closed_loop(
    addr: &str,
    callers: usize,
    connections: usize,
    total: usize,
    make: impl Fn(usize) -> pb::TaskSpec + Send + Sync + 'static,
) -> anyhow::Result<LoadResult> {
    let conns = clients(addr, connections).await?;
    let next = Arc::new(AtomicUsize::new(0));
    let out = Arc::new(Mutex::new(LoadResult::default()));
    let make = Arc::new(make);
    let started = Instant::now();
    let mut set = JoinSet::new();
    for c in 0..callers {
        let mut client = conns[c % conns.len()].clone();
        let (next, out, make) = (Arc::clone(&next), Arc::clone(&out), Arc::clone(&make));
        set.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return;
                }
                let req = pb::CreateTaskRequest {
                    spec: Some(make(i)),
                };
                let sent = Instant::now();
                let r = client.create_task(req).await;
                record(&out, sent, r);
            }
        });
    }
    while set.join_next().await.is_some() {}
    let elapsed = started.elapsed();
    let mut result = std::mem::take(&mut *out.lock().unwrap_or_else(|e| e.into_inner()));
    result.elapsed = elapsed;
    Ok(result)
}

/// `total` CreateTasks offered at `rate` per second in all by `clients`
/// concurrent clients (client k sends requests k, k + clients, ...), over
/// `connections` connections. Each request's latency counts from when it
/// was due, so a slow answer cannot hide the queueing it causes.
pub async fn open_loop(
    addr: &str,
    rate: u32,
    clients: usize,
    connections: usize,
    total: usize,
    make: impl Fn(usize) -> pb::TaskSpec + Send + Sync + 'static,
) -> anyhow::Result<LoadResult> {
    let conns = self::clients(addr, connections).await?;
    let out = Arc::new(Mutex::new(LoadResult::default()));
    let make = Arc::new(make);
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let started = Instant::now() + Duration::from_millis(20);
    let mut set = JoinSet::new();
    let clients = clients.max(1);
    for k in 0..clients {
        let mut client = conns[k % conns.len()].clone();
        let (out, make) = (Arc::clone(&out), Arc::clone(&make));
        set.spawn(async move {
            for i in (k..total).step_by(clients) {
                let due = started + interval.mul_f64(i as f64);
                tokio::time::sleep_until(due.into()).await;
                let req = pb::CreateTaskRequest {
                    spec: Some(make(i)),
                };
                let r = client.create_task(req).await;
                record(&out, due, r);
            }
        });
    }
    while set.join_next().await.is_some() {}
    let elapsed = started.elapsed();
    let mut result = std::mem::take(&mut *out.lock().unwrap_or_else(|e| e.into_inner()));
    result.elapsed = elapsed;
    Ok(result)
}
