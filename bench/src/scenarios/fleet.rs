//! Scenarios with hollow agents: throughput, latency at an offered load,
//! and many idle agents.
use std::time::{Duration, Instant};

use anyhow::ensure;
use minkube::pb;

use super::{join, settle_time, Ctx, Joined};
use crate::hollow::Fleet;
use crate::load::{self, LoadResult};
use crate::manager::Manager;
use crate::procstat::mib;
use crate::report::Section;
use crate::watcher::Watcher;

/// Image name the hollow tasks carry (the simulated runtime runs nothing).
const SIM_IMAGE: &str = "bench/simulated:1";
/// A task's memory (MB) that no hollow node can give.
const ONE_TIB_MB: u64 = 1024 * 1024;
const STREAM_MESSAGES: &str = "minkube_manager_stream_messages_total";

fn check_load(load: &LoadResult, wanted: usize) -> anyhow::Result<()> {
    ensure!(
        load.ok.len() == wanted,
        "{} of {wanted} CreateTask calls failed; first error: {}",
        load.errors,
        load.first_error.as_deref().unwrap_or("-")
    );
    Ok(())
}

/// N hollow agents, M tasks from C concurrent callers, as fast as the
/// manager acknowledges them.
pub async fn throughput(ctx: &Ctx) -> anyhow::Result<Section> {
    let agents = ctx.size(1000, 200);
    let tasks = ctx.size(100_000, 20_000);
    let (callers, connections) = (256, 8);
    let mut sec = Section::new(
        "Throughput: hollow agents, closed-loop submission",
        "minkube-bench throughput",
        format!(
            "{agents} hollow agents (simulated runtime, tasks exit 100 ms after start), \
             {tasks} tasks from {callers} concurrent callers on {connections} connections; \
             every CreateTask answered only once durable (group commit)."
        ),
    );
    let dir = ctx.dir("throughput")?;
    let (mut manager, fleet) = cluster(
        ctx,
        &dir,
        &["--max-finished-tasks", "10000000"],
        agents,
        100,
    )
    .await?;
    sec.info(
        "agents connected and READY in",
        format!("{:.2} s", fleet.connect_time.as_secs_f64()),
    );
    let mut watcher = Watcher::start(&manager.addr()).await?;
    let before = manager.sample()?;
    let bench_before = crate::procstat::sample(std::process::id())?;
    let msgs_before = stream_messages(&manager).await?;
    let commits_before = manager.store_commits().await?;

    let load = load::closed_loop(&manager.addr(), callers, connections, tasks, |i| {
        load::spec(&format!("t{i}"), SIM_IMAGE, &[])
    })
    .await?;
    check_load(&load, tasks)?;
    watcher
        .wait(settle_time(tasks), "every task RUNNING", |p| {
            p.running >= tasks
        })
        .await?;
    watcher
        .wait(settle_time(tasks), "every task finished", |p| {
            p.finished >= tasks
        })
        .await?;
    let after = manager.sample()?;
    let bench_after = crate::procstat::sample(std::process::id())?;
    let msgs_after = stream_messages(&manager).await?;
    let commits_after = manager.store_commits().await?;
    let seen = watcher.finish().await?;
    let j = join(&load.ok, &seen);
    ensure!(
        j.missing == 0,
        "{} tasks were never seen RUNNING",
        j.missing
    );

    let acked_rate = tasks as f64 / load.elapsed.as_secs_f64();
    sec.info(
        "CreateTask acknowledged (durable)",
        format!("{acked_rate:.0} tasks/s"),
    );
    sec.check(
        "submit -> RUNNING",
        format!("{:.0} tasks/s", j.running_rate),
        ">= 10,000 tasks/s",
        j.running_rate >= 10_000.0,
    );
    sec.info(
        "submit -> COMPLETED",
        format!("{:.0} tasks/s", j.completed_rate),
    );
    sec.info(
        "submit -> RUNNING latency (saturated)",
        j.to_running.summary(),
    );
    let acks = crate::stats::Latencies::new(load.ok.iter().map(|s| s.ack).collect());
    sec.info("CreateTask latency (saturated)", acks.summary());
    let cpu = (after.cpu - before.cpu).as_secs_f64();
    sec.info(
        "manager CPU per 1,000 tasks",
        format!("{:.3} s", cpu / (tasks as f64 / 1000.0)),
    );
    sec.info("manager peak RSS", mib(after.peak_rss));
    sec.info(
        "bench process CPU per 1,000 tasks (hollow agents, clients, watcher; same 2 cores)",
        format!(
            "{:.3} s",
            (bench_after.cpu - bench_before.cpu).as_secs_f64() / (tasks as f64 / 1000.0)
        ),
    );
    let per_task = |i: usize| (msgs_after[i] - msgs_before[i]) / tasks as f64;
    sec.info(
        "stream messages per task (both directions)",
        format!(
            "{:.2} (down {:.2}, up {:.2})",
            per_task(0) + per_task(1),
            per_task(0),
            per_task(1)
        ),
    );
    sec.info(
        "store writes per task; requests per commit (group commit)",
        commits_per_task(commits_before, commits_after, tasks),
    );
    fleet.stop().await;
    manager.stop()?;
    Ok(sec)
}

/// The same cluster at a fixed offered load: latency when not saturated,
/// and container exit -> watcher.
pub async fn offered_load(ctx: &Ctx) -> anyhow::Result<Section> {
    let agents = ctx.size(1000, 200);
    let rate = 2000u32;
    let tasks = ctx.size(20_000, 6_000);
    let mut sec = Section::new(
        "Latency at an offered load of 2,000 tasks/s (hollow agents)",
        "minkube-bench offered-load",
        format!(
            "{agents} hollow agents, {tasks} tasks offered at {rate}/s by 200 clients on 8 \
             connections (open loop: latency counts from when each request was due), tasks exit 50 ms after start; a WatchTasks client \
             records when each task is seen RUNNING and finished."
        ),
    );
    let dir = ctx.dir("offered-load")?;
    let (mut manager, fleet) = cluster(ctx, &dir, &[], agents, 50).await?;
    let watcher = Watcher::start(&manager.addr()).await?;
    let commits_before = manager.store_commits().await?;
    let (_, j) = offer(&manager, watcher, rate, 200, tasks).await?;
    sec.check_p99("submit -> RUNNING latency", &j.to_running, 50);
    sec.check_p99("container exit -> watcher", &j.exit_to_watcher, 10);
    // Where the tail comes from: the durable write every change waits for,
    // or the CPU queueing around it.
    let commits = manager
        .histogram("minkube_manager_store_commit_seconds")
        .await?;
    sec.info(
        "manager store commit time (group commit, from /metrics)",
        commits.summary(),
    );
    sec.info(
        "store writes per task; requests per commit (group commit)",
        commits_per_task(commits_before, manager.store_commits().await?, tasks),
    );
    fleet.stop().await;
    manager.stop()?;
    Ok(sec)
}

/// A backlog no node can take while other tasks come and go: every task
/// that ends kicks a scheduling pass, which must not cost the tasks that
/// do fit (or anyone else waiting for the state lock) a look at every
/// waiting task.
pub async fn backlog(ctx: &Ctx) -> anyhow::Result<Section> {
    let agents = ctx.size(1000, 200);
    let waiting = ctx.size(100_000, 20_000);
    let rate = 500u32;
    let tasks = ctx.size(5_000, 2_000);
    let mut sec = Section::new(
        "A backlog no node can take, while other tasks run (hollow agents)",
        "minkube-bench backlog",
        format!(
            "{agents} hollow agents; {waiting} tasks asking more memory than any node has, then \
             {tasks} small tasks offered at {rate}/s (open loop, 100 clients on 8 connections) \
             that exit 50 ms after start: each one that ends kicks a scheduling pass with the \
             backlog in the queue."
        ),
    );
    let dir = ctx.dir("backlog")?;
    let (mut manager, fleet) = cluster(ctx, &dir, &[], agents, 50).await?;
    let queued = load::closed_loop(&manager.addr(), 256, 8, waiting, |i| {
        let mut spec = load::spec(&format!("w{i}"), SIM_IMAGE, &[]);
        spec.memory_mb = ONE_TIB_MB; // more than any node here has
        spec
    })
    .await?;
    check_load(&queued, waiting)?;
    sec.info(
        "backlog submitted in",
        format!("{:.1} s", queued.elapsed.as_secs_f64()),
    );
    let watcher = Watcher::start(&manager.addr()).await?;
    let before = manager.sample()?;
    let (load, j) = offer(&manager, watcher, rate, 100, tasks).await?;
    let after = manager.sample()?;
    sec.info(
        "submit -> RUNNING latency (small tasks)",
        j.to_running.summary(),
    );
    let acks = crate::stats::Latencies::new(load.ok.iter().map(|s| s.ack).collect());
    sec.info("CreateTask latency (small tasks)", acks.summary());
    sec.info(
        "manager CPU per 1,000 small tasks",
        format!(
            "{:.3} s",
            (after.cpu - before.cpu).as_secs_f64() / (tasks as f64 / 1000.0)
        ),
    );
    let mut control = manager.client().await?;
    let page = control
        .list_tasks(pb::ListTasksRequest {
            page_size: 1,
            states: vec![pb::TaskState::Pending as i32],
            ..Default::default()
        })
        .await?
        .into_inner();
    ensure!(
        page.total_count == waiting as u64,
        "{} tasks wait, not {waiting}",
        page.total_count
    );
    let reason = page
        .tasks
        .first()
        .and_then(|t| t.status.as_ref())
        .map(|s| s.reason.clone())
        .unwrap_or_default();
    sec.info("a waiting task says", reason);
    fleet.stop().await;
    manager.stop()?;
    Ok(sec)
}

/// A manager on a fresh data dir in `dir` with `args`, and `agents` hollow
/// agents whose tasks exit `exit_after_ms` after they start.
async fn cluster(
    ctx: &Ctx,
    dir: &std::path::Path,
    args: &[&str],
    agents: usize,
    exit_after_ms: u64,
) -> anyhow::Result<(Manager, Fleet)> {
    let manager = Manager::start(&ctx.bin_dir, &dir.join("data"), dir, args).await?;
    let fleet = Fleet::start(
        agents,
        &manager.addr(),
        "hollow",
        Some(Duration::from_millis(exit_after_ms)),
    )
    .await?;
    Ok((manager, fleet))
}

/// Offers `tasks` simulated tasks at `rate` from `callers` clients on 8
/// connections and waits until `watcher` saw each one finish; every one
/// must have been seen RUNNING.
async fn offer(
    manager: &Manager,
    mut watcher: Watcher,
    rate: u32,
    callers: usize,
    tasks: usize,
) -> anyhow::Result<(LoadResult, Joined)> {
    let load = load::open_loop(&manager.addr(), rate, callers, 8, tasks, |i| {
        load::spec(&format!("t{i}"), SIM_IMAGE, &[])
    })
    .await?;
    check_load(&load, tasks)?;
    watcher
        .wait(settle_time(tasks), "every task finished", |p| {
            p.finished >= tasks
        })
        .await?;
    let seen = watcher.finish().await?;
    let j = join(&load.ok, &seen);
    ensure!(
        j.missing == 0,
        "{} tasks were never seen RUNNING",
        j.missing
    );
    Ok((load, j))
}

/// Many connected agents doing nothing but heartbeats.
pub async fn idle_agents(ctx: &Ctx) -> anyhow::Result<Section> {
    let agents = ctx.size(5000, 1000);
    let window = Duration::from_secs(ctx.size(30, 10) as u64);
    let mut sec = Section::new(
        "Idle cluster: hollow agents with 5 s heartbeats",
        "minkube-bench idle-agents",
        format!(
            "{agents} hollow agents connected (one gRPC connection and stream each, heartbeat \
             every 5 s), no tasks; manager CPU measured over {} s once all are READY.",
            window.as_secs()
        ),
    );
    let dir = ctx.dir("idle-agents")?;
    let mut manager = Manager::start(
        &ctx.bin_dir,
        &dir.join("data"),
        &dir,
        &["--heartbeat-interval", "5s"],
    )
    .await?;
    let fleet = Fleet::start(agents, &manager.addr(), "idle", None).await?;
    sec.info(
        "agents connected and READY in",
        format!("{:.2} s", fleet.connect_time.as_secs_f64()),
    );
    // Let the connection burst settle before measuring the steady state.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let before = manager.sample()?;
    let t0 = Instant::now();
    tokio::time::sleep(window).await;
    let after = manager.sample()?;
    let cpu_pct = 100.0 * (after.cpu - before.cpu).as_secs_f64() / t0.elapsed().as_secs_f64();
    sec.check(
        "manager CPU",
        format!("{cpu_pct:.1} % of one core"),
        "< 25 %",
        cpu_pct < 25.0,
    );
    sec.check(
        "manager RSS",
        format!("{} (peak {})", mib(after.rss), mib(after.peak_rss)),
        "< 512 MiB",
        after.peak_rss < 512 * 1024 * 1024,
    );
    let mut control = manager.client().await?;
    let ready = crate::hollow::ready_nodes(&mut control).await?;
    sec.info("nodes READY at the end", format!("{ready} of {agents}"));
    fleet.stop().await;
    manager.stop()?;
    Ok(sec)
}

/// Messages on the agent streams so far: down (to agents), up (from them).
/// Durable writes per task, and how many of them shared a commit.
fn commits_per_task(before: (f64, f64), after: (f64, f64), tasks: usize) -> String {
    let commits = after.0 - before.0;
    let requests = after.1 - before.1;
    if commits <= 0.0 || tasks == 0 {
        return "no commits counted".to_string();
    }
    format!("{:.2}; {:.1}", requests / tasks as f64, requests / commits)
}

async fn stream_messages(manager: &Manager) -> anyhow::Result<[f64; 2]> {
    Ok([
        manager
            .metric_sum_with(STREAM_MESSAGES, "direction=\"out\"")
            .await?,
        manager
            .metric_sum_with(STREAM_MESSAGES, "direction=\"in\"")
            .await?,
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_per_task_and_per_commit_come_from_the_counter_deltas() {
        assert_eq!(
            commits_per_task((10.0, 40.0), (20.0, 100.0), 20),
            "3.00; 6.0"
        );
        assert_eq!(
            commits_per_task((5.0, 5.0), (5.0, 5.0), 20),
            "no commits counted"
        );
    }
}
