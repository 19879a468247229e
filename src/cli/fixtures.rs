//! Values shared by the CLI's unit tests.
use minkube::pb::{HostStats, Node};
use prost_types::Timestamp;

/// A node named "node-a" with a full host-stats sample at `cpu_percent`.
pub fn node_with_stats(cpu_percent: f64) -> Node {
    Node {
        name: "node-a".into(),
        stats: Some(HostStats {
            cpu_percent,
            memory_total_mb: 3900,
            memory_available_mb: 2100,
            disk_total_mb: 100_000,
            disk_available_mb: 40_000,
            disk_path: "/var/lib/docker".into(),
            load1: 0.5,
            load5: 0.25,
            load15: 1.0,
            sampled_at: Some(Timestamp {
                seconds: 1_700_000_000,
                nanos: 0,
            }),
        }),
        ..Default::default()
    }
}
