//! Host statistics: the agent samples CPU, memory, disk and load at every
//! heartbeat; the manager keeps the latest on the node; the CLI shows them.
#![allow(clippy::unwrap_used)]

use minkube::pb::{HostStats, Node};
use minkube_integration_tests::{describe, wait_for, Cluster, POLL, WAIT};

/// Plausible statistics of a real host.
fn plausible(s: &HostStats) -> bool {
    s.memory_total_mb > 0
        && s.memory_available_mb <= s.memory_total_mb
        && s.disk_total_mb > 0
        && s.disk_available_mb <= s.disk_total_mb
        && (0.0..=100.0).contains(&s.cpu_percent)
        && s.load1 >= 0.0
        && s.load5 >= 0.0
        && s.load15 >= 0.0
        && !s.disk_path.is_empty()
        && s.sampled_at.is_some()
}

/// True if `b` was sampled after `a`.
fn later(a: &HostStats, b: &HostStats) -> bool {
    match (&a.sampled_at, &b.sampled_at) {
        (Some(a), Some(b)) => (b.seconds, b.nanos) > (a.seconds, a.nanos),
        _ => false,
    }
}

fn stats_of(n: &Node) -> HostStats {
    n.stats
        .clone()
        .unwrap_or_else(|| panic!("no stats: {}", describe::node(n)))
}

#[tokio::test(flavor = "multi_thread")]
async fn heartbeats_carry_host_stats_to_the_node_and_the_cli() {
    let cluster = Cluster::builder()
        .manager_flag("--heartbeat-interval", "300ms")
        .agents(&["a"])
        .start()
        .await;

    let first = cluster
        .wait_node("a", "to report plausible host stats", WAIT, |n| {
            n.stats.as_ref().is_some_and(plausible)
        })
        .await;
    let first = stats_of(&first);

    // Every heartbeat brings a new sample.
    let second = cluster
        .wait_node("a", "to report a newer sample", WAIT, |n| {
            n.stats
                .as_ref()
                .is_some_and(|s| plausible(s) && later(&first, s))
        })
        .await;
    let second = stats_of(&second);
    assert_eq!(second.memory_total_mb, first.memory_total_mb);
    assert_eq!(second.disk_path, first.disk_path);

    // `minkube node get a -o json` shows them with the proto field names.
    let shown = wait_for(
        "`minkube node get a -o json` to show host stats",
        WAIT,
        POLL,
        async || {
            let v = cluster.cli_json(&["node", "get", "a"]).await;
            let s = &v["stats"];
            let ok = s["memory_total_mb"].as_u64().is_some_and(|m| m > 0)
                && s["disk_total_mb"].as_u64().is_some_and(|d| d > 0)
                && s["memory_available_mb"].is_u64()
                && s["disk_available_mb"].is_u64()
                && s["cpu_percent"]
                    .as_f64()
                    .is_some_and(|c| (0.0..=100.0).contains(&c))
                && s["load1"].is_number()
                && s["load5"].is_number()
                && s["load15"].is_number()
                && s["disk_path"].is_string()
                && s["sampled_at"].is_string();
            if ok {
                Ok(s.clone())
            } else {
                Err(v.to_string())
            }
        },
    )
    .await;
    assert_eq!(shown["memory_total_mb"], first.memory_total_mb);

    // The table and the detail view show them too.
    let table = cluster.cli_ok(&["nodes"]).await;
    let header = table.lines().next().unwrap_or_default();
    for column in ["CPU%", "MEM-AVAIL", "DISK-AVAIL", "LOAD"] {
        assert!(header.contains(column), "{table}");
    }
    let row = table
        .lines()
        .find(|l| l.starts_with("a "))
        .unwrap_or_else(|| panic!("no row for node a: {table}"));
    assert!(row.contains('%'), "{table}");
    let detail = cluster.cli_ok(&["node", "get", "a"]).await;
    for key in [
        "CPU usage:",
        "Mem available:",
        "Disk available:",
        "Load average:",
        "Stats sampled:",
    ] {
        assert!(detail.contains(key), "{detail}");
    }
}
