//! `minkube-bench`: starts a real manager, hollow agents (the agent's code
//! with the simulated runtime) or a real agent on Docker, drives load, and
//! prints the figures next to their targets. `make bench` runs every
//! scenario and writes `bench/results.md`.
mod hollow;
mod load;
mod manager;
mod process;
mod procstat;
mod report;
mod scenarios;
mod stats;
mod watcher;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};
use procfs::Current;

use report::Section;
use scenarios::Ctx;

/// One benchmark scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// 1,000 hollow agents, 100,000 tasks, closed loop: tasks/s, CPU, RSS.
    Throughput,
    /// 2,000 tasks/s offered: submit->RUNNING and exit->watcher latency.
    OfferedLoad,
    /// 100,000 tasks no node can take, while small tasks run: their latency.
    Backlog,
    /// CreateTask from 1,000 concurrent callers, no agents.
    CreateLoad,
    /// 1,000,000 finished tasks stored: RSS, ListTasks, restart.
    Storage,
    /// 5,000 idle hollow agents with 5 s heartbeats: manager CPU and RSS.
    IdleAgents,
    /// One idle real agent: its RSS and CPU.
    AgentIdle,
    /// 100 real containers through minkube vs. directly.
    Docker,
}

/// minkube benchmarks (a measuring tool; never part of a cluster).
#[derive(Debug, Parser)]
#[command(name = "minkube-bench", version, about)]
struct Args {
    /// Scenarios to run [default: all].
    #[arg(value_enum)]
    scenarios: Vec<Scenario>,
    /// Smaller sizes (a few minutes less; the targets are for full sizes).
    #[arg(long)]
    quick: bool,
    /// Write the results as Markdown here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Directory holding minkube-manager and minkube-agent [default: this
    /// program's directory].
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Scratch directory for data dirs and logs (on a real disk: the
    /// manager's fsyncs are part of what is measured) [default: a new
    /// directory under /var/tmp].
    #[arg(long)]
    work_dir: Option<PathBuf>,
}

fn command_output(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// What the figures were measured on.
/// What was measured: the commit of this tree (which `make bench` builds
/// the binaries from right before), or the directory given.
fn source(repo: &std::path::Path, bin_dir: Option<&std::path::Path>) -> String {
    if let Some(dir) = bin_dir {
        return format!("binaries in {} (`--bin-dir`)", dir.display());
    }
    let repo = repo.to_string_lossy();
    let commit = command_output("git", &["-C", &repo, "rev-parse", "--short", "HEAD"]);
    // The results file itself is rewritten by every run.
    let changes = command_output(
        "git",
        &[
            "-C",
            &repo,
            "status",
            "--porcelain",
            "--",
            ".",
            ":!bench/results.md",
        ],
    );
    source_line(&commit, &changes)
}

fn source_line(commit: &str, changes: &str) -> String {
    match (commit, changes.is_empty()) {
        ("unknown", _) => "unknown (not a git checkout)".into(),
        (c, true) => format!("commit {c}"),
        (c, false) => format!("commit {c} with uncommitted changes"),
    }
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = procfs::Meminfo::current()
        .map(|m| format!("{:.1} GiB", m.mem_total as f64 / (1u64 << 30) as f64))
        .unwrap_or_else(|_| "unknown".into());
    format!(
        "- CPU: {cpu}, {cores} cores available\n- Memory: {mem}\n- Kernel: {}\n- Docker Engine: {}\n- Build: release profile ({})\n",
        command_output("uname", &["-sr"]),
        command_output("docker", &["version", "--format", "{{.Server.Version}} (API {{.Server.APIVersion}})"]),
        command_output("rustc", &["--version"]),
    )
}

fn markdown(sections: &[Section], argv: &str, quick: bool, source: &str) -> String {
    let mut s = String::from("# minkube benchmark results\n\n");
    s.push_str("Written by `make bench` (`minkube-bench`); every figure below was measured in that run.\n\n");
    let _ = writeln!(
        s,
        "Date: {}\n",
        command_output("date", &["-u", "+%Y-%m-%d %H:%M UTC"])
    );
    let _ = writeln!(
        s,
        "Command: `{argv}`{}\n",
        if quick {
            " (quick sizes: the targets are for full sizes)"
        } else {
            ""
        }
    );
    let _ = writeln!(s, "Source: {source}\n");
    s.push_str("Machine:\n\n");
    s.push_str(&machine());
    s.push('\n');
    let missed: usize = sections.iter().map(Section::missed).sum();
    let failed = sections.iter().filter(|s| s.error.is_some()).count();
    let _ = writeln!(
        s,
        "Summary: {} targets met, {missed} missed, {failed} scenarios did not finish.\n",
        sections
            .iter()
            .flat_map(|s| &s.rows)
            .filter(|r| r.met == Some(true))
            .count()
    );
    for sec in sections {
        s.push_str(&sec.markdown());
    }
    s
}

/// Starts a scenario on a quiet disk: the earlier scenarios' files are
/// removed (their unwritten pages dropped) and everything else is written
/// back, so one scenario's writeback does not land in the next one's
/// latencies.
fn quiet_disk(work: &std::path::Path) {
    if let Ok(entries) = std::fs::read_dir(work) {
        for e in entries.flatten() {
            let path = e.path();
            let removed = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            if let Err(err) = removed {
                eprintln!("warning: cannot remove {}: {err}", path.display());
            }
        }
    }
    rustix::fs::sync();
}

async fn run(args: Args) -> anyhow::Result<bool> {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let source = source(&repo, args.bin_dir.as_deref());
    let bin_dir = match args.bin_dir {
        Some(d) => d,
        None => std::env::current_exe()?
            .parent()
            .context("no directory for this program")?
            .to_path_buf(),
    };
    let work_root = args.work_dir.unwrap_or_else(|| PathBuf::from("/var/tmp"));
    std::fs::create_dir_all(&work_root)?;
    let work = tempfile::Builder::new()
        .prefix("minkube-bench.")
        .tempdir_in(&work_root)
        .context("cannot make the scratch directory")?;
    let ctx = Ctx {
        bin_dir,
        repo,
        work: work.path().to_path_buf(),
        quick: args.quick,
    };
    let all = Scenario::value_variants().to_vec();
    let chosen = if args.scenarios.is_empty() {
        all
    } else {
        args.scenarios
    };
    let limit = scenarios::SCENARIO_LIMIT;
    let mut sections = Vec::new();
    for sc in chosen {
        let name = sc
            .to_possible_value()
            .map(|v| v.get_name().to_string())
            .unwrap_or_default();
        let cmd = format!("minkube-bench {name}");
        quiet_disk(&ctx.work);
        let sec = match sc {
            Scenario::Throughput => {
                scenarios::guarded(&name, &cmd, limit, scenarios::fleet::throughput(&ctx)).await
            }
            Scenario::OfferedLoad => {
                scenarios::guarded(&name, &cmd, limit, scenarios::fleet::offered_load(&ctx)).await
            }
            Scenario::Backlog => {
                scenarios::guarded(&name, &cmd, limit, scenarios::fleet::backlog(&ctx)).await
            }
            Scenario::CreateLoad => {
                scenarios::guarded(&name, &cmd, limit, scenarios::api::create_load(&ctx)).await
            }
            Scenario::Storage => {
                scenarios::guarded(&name, &cmd, limit, scenarios::api::storage(&ctx)).await
            }
            Scenario::IdleAgents => {
                scenarios::guarded(&name, &cmd, limit, scenarios::fleet::idle_agents(&ctx)).await
            }
            Scenario::AgentIdle => {
                scenarios::guarded(&name, &cmd, limit, scenarios::docker::agent_idle(&ctx)).await
            }
            Scenario::Docker => {
                scenarios::guarded(&name, &cmd, limit, scenarios::docker::real_docker(&ctx)).await
            }
        };
        sections.push(sec);
    }
    let missed: usize = sections.iter().map(Section::missed).sum();
    let failed: Vec<_> = sections
        .iter()
        .filter(|s| s.error.is_some())
        .map(|s| s.title.clone())
        .collect();
    println!(
        "\n{missed} target(s) missed; {} scenario(s) did not finish{}",
        failed.len(),
        if failed.is_empty() {
            String::new()
        } else {
            format!(": {}", failed.join(", "))
        }
    );
    if let Some(out) = args.out {
        let argv: Vec<String> = std::env::args().collect();
        std::fs::write(
            &out,
            markdown(&sections, &argv.join(" "), args.quick, &source),
        )
        .with_context(|| format!("cannot write {}", out.display()))?;
        println!("results written to {}", out.display());
    }
    Ok(failed.is_empty())
}

/// Runs `f` until it ends or the bench is told to stop (SIGINT, SIGTERM).
/// On a signal `f` is dropped, which stops every process it started (the
/// manager and agents stop on drop), so none is left behind.
async fn until_stopped(
    f: impl std::future::Future<Output = anyhow::Result<bool>>,
) -> anyhow::Result<bool> {
    use minkube_common::signals::StopSignals;
    let mut signals = StopSignals::install().context("cannot watch for SIGINT and SIGTERM")?;
    tokio::select! {
        r = f => r,
        s = signals.recv() => bail!("{s} received; the processes this run started are stopped"),
    }
}

/// mimalloc instead of glibc malloc: many small, short-lived allocations
/// per message, from several threads.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let args = Args::parse();
    let result = minkube_common::runtime::multi_thread("minkube-bench")
        .context("cannot start the async runtime")
        .and_then(|rt| rt.block_on(until_stopped(run(args))));
    match result {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(2);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_source_line_names_the_commit_and_says_when_the_tree_differs() {
        assert_eq!(source_line("2d7f122", ""), "commit 2d7f122");
        assert_eq!(
            source_line("2d7f122", " M manager/src/api.rs"),
            "commit 2d7f122 with uncommitted changes"
        );
        assert_eq!(source_line("unknown", ""), "unknown (not a git checkout)");
    }

    #[test]
    fn binaries_given_by_directory_are_named_as_such() {
        let s = source(
            std::path::Path::new("."),
            Some(std::path::Path::new("/tmp/b")),
        );
        assert_eq!(s, "binaries in /tmp/b (`--bin-dir`)");
    }
}
