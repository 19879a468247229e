//! Scenarios on the real Docker Engine: 100 short tasks through minkube
//! next to the same 100 containers run directly, and an idle real agent.
use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ListContainersOptionsBuilder, RemoveContainerOptionsBuilder,
    RemoveImageOptionsBuilder,
};
use bollard::Docker;
use futures::StreamExt;

use super::{within, Ctx};
use crate::load;
use crate::manager::Manager;
use crate::procstat::{self, mib};
use crate::report::Section;
use crate::stats::Latencies;
use crate::watcher::Watcher;

/// Label on everything this bench run makes in Docker.
const RUN_LABEL: &str = "minkube-bench.run";
/// How long one burst of 100 containers may take, either way (~20 s on a
/// slow 2-core VM).
const BURST_LIMIT: Duration = Duration::from_secs(120);
/// How long the clean-up may take: a wedged engine does not answer.
const CLEAN_LIMIT: Duration = Duration::from_secs(60);
/// How long building the test image may take.
const BUILD_LIMIT: Duration = Duration::from_secs(120);
/// How long the rounds may take: they are given up early enough for the
/// clean-up to run inside the scenario's own limit, so that a run given up
/// still removes its containers.
const ROUNDS_LIMIT: Duration = super::SCENARIO_LIMIT
    .saturating_sub(BUILD_LIMIT)
    .saturating_sub(CLEAN_LIMIT)
    .saturating_sub(CLEAN_LIMIT);

/// A real `minkube-agent` process; stopped (SIGTERM) on drop.
struct Agent(Child);

impl Agent {
    fn start(
        bin_dir: &Path,
        manager: &str,
        data_dir: &Path,
        log: &Path,
        name: &str,
        label: &str,
    ) -> anyhow::Result<Self> {
        let log = std::fs::File::create(log)?;
        let child = Command::new(bin_dir.join("minkube-agent"))
            .args([
                "--insecure",
                "--manager",
                manager,
                "--name",
                name,
                "--admin-port",
                "0",
            ])
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--label", label])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("cannot start minkube-agent")?;
        Ok(Self(child))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // The agent leaves containers running and stops within seconds;
        // the bound is for one stuck on a wedged engine.
        let _ = crate::process::stop(&mut self.0, Duration::from_secs(30));
    }
}

/// Builds the busybox test image, labelled with this run; the build is
/// stopped after [`BUILD_LIMIT`] (a wedged engine does not answer).
async fn build_image(repo: &Path, tag: &str, run: &str) -> anyhow::Result<()> {
    let build = tokio::process::Command::new("bash")
        .arg(repo.join("scripts/test-image.sh"))
        .arg(tag)
        .arg(format!("{RUN_LABEL}={run}"))
        .kill_on_drop(true)
        .output();
    let out = within(BUILD_LIMIT, build, |s| {
        format!(
            "building the test image did not finish within {s} s: is the Docker engine \
             answering (`docker info`)?"
        )
    })
    .await?
    .context("cannot run scripts/test-image.sh")?;
    if !out.status.success() {
        bail!(
            "building the test image failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Removes the containers and the image of this run, and nothing else;
/// gives up with a warning after [`CLEAN_LIMIT`].
async fn clean(docker: &Docker, run: &str, tag: &str) {
    let cleaned = within(CLEAN_LIMIT, clean_now(docker, run, tag), |s| {
        format!(
            "the engine did not remove this run's containers and image within {s} s; they \
             carry the label {RUN_LABEL}={run}"
        )
    });
    if let Err(e) = cleaned.await {
        eprintln!("warning: {e}");
    }
}

async fn clean_now(docker: &Docker, run: &str, tag: &str) {
    let filters: HashMap<String, Vec<String>> =
        [("label".to_string(), vec![format!("{RUN_LABEL}={run}")])].into();
    let opts = ListContainersOptionsBuilder::default()
        .all(true)
        .filters(&filters)
        .build();
    if let Ok(list) = docker.list_containers(Some(opts)).await {
        let rm = RemoveContainerOptionsBuilder::default().force(true).build();
        let removals = list.into_iter().filter_map(|c| c.id).map(|id| {
            let rm = rm.clone();
            async move { docker.remove_container(&id, Some(rm)).await }
        });
        futures::future::join_all(removals).await;
    }
    let rmi = RemoveImageOptionsBuilder::default().force(true).build();
    let _ = docker.remove_image(tag, Some(rmi), None).await;
}

/// The rounds' result, or an error after [`ROUNDS_LIMIT`] (the rounds are
/// then dropped, which stops the processes they started).
async fn rounds_within<T>(
    f: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    within(ROUNDS_LIMIT, f, |s| {
        format!(
            "the rounds did not finish within {s} s; given up, and the run's containers removed"
        )
    })
    .await
    .and_then(|r| r)
}

/// One direct run: create, start, wait for the exit (what `docker run` does).
async fn direct_run(docker: &Docker, image: &str, run: &str, i: String) -> anyhow::Result<String> {
    let body = ContainerCreateBody {
        image: Some(image.to_string()),
        cmd: Some(vec!["true".to_string()]),
        labels: Some([(RUN_LABEL.to_string(), run.to_string())].into()),
        ..Default::default()
    };
    let opts = CreateContainerOptionsBuilder::default()
        .name(&format!("bench-direct-{run}-{i}"))
        .build();
    let id = docker.create_container(Some(opts), body).await?.id;
    docker.start_container(&id, None).await?;
    let mut wait = docker.wait_container(&id, None);
    while let Some(r) = wait.next().await {
        r?;
    }
    Ok(id)
}

/// `n` `true` tasks through minkube, all submitted at once: from the first
/// submission to the watcher seeing the last one finished, and each task's
/// container exit -> watcher.
async fn minkube_burst(
    addr: &str,
    image: &str,
    run: &str,
    round: usize,
    n: usize,
) -> anyhow::Result<(Duration, Vec<Duration>)> {
    let mut watcher = Watcher::start(addr).await?;
    let (image, label) = (image.to_string(), run.to_string());
    let load = load::closed_loop(addr, n, 1, n, move |i| {
        let mut s = load::spec(&format!("d{round}-{i}"), &image, &["true"]);
        s.labels.insert(RUN_LABEL.to_string(), label.clone());
        s
    })
    .await?;
    ensure!(
        load.errors == 0,
        "CreateTask failed: {}",
        load.first_error.clone().unwrap_or_default()
    );
    watcher
        .wait(BURST_LIMIT, "every task finished", |p| p.finished >= n)
        .await?;
    let seen = watcher.finish().await?;
    let first = load.ok.iter().map(|s| s.sent).min().context("no task")?;
    let last = seen
        .values()
        .filter_map(|s| s.finished)
        .max()
        .context("none finished")?;
    let exits = seen.values().filter_map(|s| s.exit_to_watcher).collect();
    Ok((last.saturating_duration_since(first), exits))
}

/// The same `n` containers run directly, all at once; removed afterwards,
/// so each round starts with the engine as the previous one left it.
async fn direct_burst(
    docker: &Docker,
    image: &str,
    run: &str,
    round: usize,
    n: usize,
) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let runs = (0..n).map(|i| direct_run(docker, image, run, format!("{round}-{i}")));
    // As long as minkube's side is given. An engine can wedge a start
    // (seen: `runc create` hung, and every later call on that container
    // with it); the bench then says so instead of waiting for ever.
    let results = within(BURST_LIMIT, futures::future::join_all(runs), |s| {
        format!(
            "the engine did not finish {n} direct runs within {s} s: some are stuck \
             starting or exiting (`docker ps --filter label={RUN_LABEL}={run}` lists them; \
             a wedged engine needs a restart)"
        )
    })
    .await?;
    let mut ids = Vec::new();
    for r in results {
        ids.push(r.context("direct run")?);
    }
    let elapsed = t.elapsed();
    let rm = RemoveContainerOptionsBuilder::default().force(true).build();
    let removals = ids
        .iter()
        .map(|id| docker.remove_container(id, Some(rm.clone())));
    futures::future::join_all(removals).await;
    Ok(elapsed)
}

/// Rounds of `n` `true` tasks through minkube and the same `n` containers
/// run directly, the two taking turns at going first. The engine's own
/// pace drifts from minute to minute on a shared machine (the same build
/// measured 0.97 and 1.17 in one pair of single-round runs), so the check
/// is on the median round.
pub async fn real_docker(ctx: &Ctx) -> anyhow::Result<Section> {
    let n = 100;
    let rounds = ctx.size(3, 1);
    let run = format!("{}", std::process::id());
    let tag = format!("minkube-bench:{run}");
    let mut sec = Section::new(
        "Real Docker: 100 short tasks",
        "minkube-bench docker",
        format!(
            "{rounds} rounds of: {n} tasks running `true` in a local busybox image, all submitted \
             at once, one real agent, and the same {n} containers run directly through the \
             Docker API (create, start, wait) all at once, as the agent does (it does not cap \
             parallel starts), and removed; minkube goes first in the odd rounds, direct in the \
             even ones. The check is on the median round. Then 10 \
             tasks running `sleep 2`, submitted 300 ms apart, for the exit latency of tasks that \
             end one by one."
        ),
    );
    let docker = Docker::connect_with_defaults().context("cannot reach Docker")?;
    let built = build_image(&ctx.repo, &tag, &run).await;
    if built.is_err() {
        // The build may have got as far as tagging the image.
        clean(&docker, &run, &tag).await;
    }
    built?;
    let rounds_run = async {
        let dir = ctx.dir("docker")?;
        let mut manager = Manager::start(&ctx.bin_dir, &dir.join("data"), &dir, &[]).await?;
        let _agent = Agent::start(
            &ctx.bin_dir,
            &manager.addr(),
            &dir.join("agent"),
            &dir.join("agent.log"),
            "docker-node",
            "bench=docker",
        )?;
        let mut control = manager.client().await?;
        crate::hollow::wait_ready(&mut control, 1, Duration::from_secs(60)).await?;
        let mut results = Vec::new();
        let mut burst_exits = Vec::new();
        for round in 0..rounds {
            // Each side goes first in every other round: the engine's pace
            // drifts within a round too (the second of a pair often ran
            // faster, round after round), and a fixed order would lend that
            // drift to one side.
            let direct_first = round % 2 == 1;
            let mut direct = None;
            if direct_first {
                direct = Some(direct_burst(&docker, &tag, &run, round, n).await?);
            }
            let (minkube, exits) = minkube_burst(&manager.addr(), &tag, &run, round, n).await?;
            burst_exits.extend(exits);
            let direct = match direct {
                Some(d) => d,
                None => direct_burst(&docker, &tag, &run, round, n).await?,
            };
            results.push((minkube, direct));
        }
        let burst_exits = Latencies::new(burst_exits);

        // Exit latency outside a burst: tasks that end one by one.
        let mut watcher = Watcher::start(&manager.addr()).await?;
        let staggered = 10;
        for i in 0..staggered {
            let mut s = load::spec(&format!("s{i}"), &tag, &["sleep", "2"]);
            s.labels.insert(RUN_LABEL.to_string(), run.clone());
            control
                .create_task(minkube::pb::CreateTaskRequest { spec: Some(s) })
                .await?;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        watcher
            .wait(
                Duration::from_secs(60),
                "the staggered tasks to finish",
                |p| p.finished >= staggered,
            )
            .await?;
        let seen = watcher.finish().await?;
        let exits = Latencies::new(seen.values().filter_map(|s| s.exit_to_watcher).collect());
        manager.stop()?;
        anyhow::Ok((results, burst_exits, exits))
    };
    let result = rounds_within(rounds_run).await;
    clean(&docker, &run, &tag).await;
    let (results, burst_exits, exits) = result?;
    let secs = |d: Duration| format!("{:.2} s", d.as_secs_f64());
    let list = |f: &dyn Fn(&(Duration, Duration)) -> String| {
        results.iter().map(f).collect::<Vec<_>>().join(", ")
    };
    sec.info(
        "through minkube, submit -> all COMPLETED (each round)",
        list(&|(m, _)| secs(*m)),
    );
    sec.info(
        "direct Docker API, same containers (each round)",
        list(&|(_, d)| secs(*d)),
    );
    let mut ratios: Vec<f64> = results
        .iter()
        .map(|(m, d)| m.as_secs_f64() / d.as_secs_f64())
        .collect();
    ratios.sort_by(f64::total_cmp);
    let median = ratios.get(ratios.len() / 2).copied().unwrap_or(f64::NAN);
    let each = ratios
        .iter()
        .map(|r| format!("{r:.2}"))
        .collect::<Vec<_>>()
        .join(", ");
    sec.check(
        "ratio minkube / direct, median of the rounds",
        format!("{median:.2} (rounds, sorted: {each})"),
        "<= 1.15",
        median <= 1.15,
    );
    sec.check_p99(
        "container exit -> watcher (10 tasks ending 300 ms apart)",
        &exits,
        100,
    );
    sec.info(
        "container exit -> watcher (during the 100-task burst)",
        burst_exits.summary(),
    );
    Ok(sec)
}

/// A real agent, connected and idle: its own memory and CPU.
pub async fn agent_idle(ctx: &Ctx) -> anyhow::Result<Section> {
    let window = Duration::from_secs(ctx.size(30, 10) as u64);
    let mut sec = Section::new(
        "Idle agent (real Docker runtime)",
        "minkube-bench agent-idle",
        format!(
            "one minkube-agent process connected to a manager, no tasks, Docker events \
             subscribed, heartbeats every 5 s; measured over {} s after 5 s to settle.",
            window.as_secs()
        ),
    );
    let dir = ctx.dir("agent-idle")?;
    let mut manager = Manager::start(&ctx.bin_dir, &dir.join("data"), &dir, &[]).await?;
    let agent = Agent::start(
        &ctx.bin_dir,
        &manager.addr(),
        &dir.join("agent"),
        &dir.join("agent.log"),
        "idle-node",
        "bench=idle",
    )?;
    let mut control = manager.client().await?;
    crate::hollow::wait_ready(&mut control, 1, Duration::from_secs(60)).await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let pid = agent.0.id();
    let before = procstat::sample(pid)?;
    let t = Instant::now();
    tokio::time::sleep(window).await;
    let after = procstat::sample(pid)?;
    let cpu_pct = 100.0 * (after.cpu - before.cpu).as_secs_f64() / t.elapsed().as_secs_f64();
    sec.check(
        "agent RSS",
        format!("{} (peak {})", mib(after.rss), mib(after.peak_rss)),
        "< 15 MiB",
        after.peak_rss < 15 * 1024 * 1024,
    );
    sec.check(
        "agent CPU",
        format!("{cpu_pct:.2} %"),
        "< 0.5 %",
        cpu_pct < 0.5,
    );
    drop(agent);
    manager.stop()?;
    Ok(sec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn rounds_that_hang_are_given_up_in_time_to_clean_up() {
        let start = tokio::time::Instant::now();
        let hung = std::future::pending::<anyhow::Result<()>>();
        let err = match rounds_within(hung).await {
            Ok(()) => panic!("a hung future cannot finish"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("containers removed"), "{err}");
        // The build before, and the clean-up after, still fit in the
        // scenario's limit, so the run's own timeout never cuts them off.
        let used = start.elapsed() + BUILD_LIMIT + CLEAN_LIMIT;
        assert!(used < super::super::SCENARIO_LIMIT, "{used:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn rounds_that_end_in_time_keep_their_result() {
        let quick = async { anyhow::Ok(7) };
        let got = rounds_within(quick).await;
        assert_eq!(got.ok(), Some(7));
    }
}
