//! One sample of the host's utilisation, taken for every heartbeat: CPU
//! since the previous sample, memory, disk of Docker's data root, load.
use std::path::{Path, PathBuf};

use minkube::pb;
use procfs::{Current, LoadAverage, Meminfo};
use tracing::{debug, info};

use super::cpu::CpuSampler;
use super::MIB;

/// Measured when Docker does not tell its data root or it is not visible here.
const FALLBACK_DISK_PATH: &str = "/";

/// Samples the host. One per agent process, kept across sessions, so the CPU
/// figure always spans the time since the previous heartbeat.
#[derive(Debug)]
pub struct HostSampler {
    cpu: CpuSampler,
    disk_path: PathBuf,
}

impl HostSampler {
    /// A sampler measuring the filesystem that holds `disk_path`.
    pub fn new(disk_path: PathBuf) -> Self {
        Self {
            cpu: CpuSampler::new(),
            disk_path,
        }
    }

    /// The directory whose filesystem is measured.
    pub fn disk_path(&self) -> &Path {
        &self.disk_path
    }

    /// Reads everything once. Never fails: a part that cannot be read stays
    /// 0 (logged at debug, as it would repeat at every heartbeat) and the
    /// rest is still reported.
    pub fn sample(&mut self) -> pb::HostStats {
        let mut s = pb::HostStats {
            disk_path: self.disk_path.display().to_string(),
            sampled_at: Some(minkube::convert::now()),
            ..Default::default()
        };
        match self.cpu.sample() {
            Ok(p) => s.cpu_percent = p,
            Err(e) => debug!(error = %e, "cannot read /proc/stat; CPU utilisation left at 0"),
        }
        match Meminfo::current() {
            Ok(m) => (s.memory_total_mb, s.memory_available_mb) = memory_mb(&m),
            Err(e) => debug!(error = %e, "cannot read /proc/meminfo; memory left at 0"),
        }
        match rustix::fs::statvfs(&self.disk_path) {
            Ok(v) => {
                (s.disk_total_mb, s.disk_available_mb) = disk_mb(v.f_blocks, v.f_bavail, v.f_frsize)
            }
            Err(e) => {
                debug!(error = %e, path = %self.disk_path.display(), "cannot statvfs the Docker data root; disk left at 0")
            }
        }
        match LoadAverage::current() {
            Ok(l) => (s.load1, s.load5, s.load15) = load(&l),
            Err(e) => debug!(error = %e, "cannot read /proc/loadavg; load left at 0"),
        }
        publish(&s);
        s
    }
}

/// The directory to measure for disk space: Docker's data root as `docker
/// info` reports it, if the agent can see it, else "/".
pub fn disk_path(docker_root: Option<&str>) -> PathBuf {
    match docker_root.filter(|d| !d.is_empty()) {
        Some(root) if Path::new(root).is_dir() => PathBuf::from(root),
        Some(root) => {
            info!(
                docker_root = root,
                "Docker's data root is not visible to the agent; disk statistics are of /"
            );
            PathBuf::from(FALLBACK_DISK_PATH)
        }
        None => {
            info!("Docker did not report its data root; disk statistics are of /");
            PathBuf::from(FALLBACK_DISK_PATH)
        }
    }
}

/// (total, available) memory in MiB. MemAvailable is missing before Linux
/// 3.14; MemFree, a lower bound of it, stands in then.
pub fn memory_mb(m: &Meminfo) -> (u64, u64) {
    let available = m.mem_available.unwrap_or(m.mem_free);
    (m.mem_total / MIB, available / MIB)
}

/// (total, available) MiB of a filesystem of `blocks` blocks, `available` of
/// them usable by unprivileged users, each `fragment_size` bytes (statvfs's
/// f_blocks, f_bavail, f_frsize).
pub fn disk_mb(blocks: u64, available: u64, fragment_size: u64) -> (u64, u64) {
    // In u128: blocks times block size can exceed u64 on huge filesystems.
    let mb = |n: u64| {
        let bytes = u128::from(n) * u128::from(fragment_size);
        u64::try_from(bytes / u128::from(MIB)).unwrap_or(u64::MAX)
    };
    (mb(blocks), mb(available.min(blocks)))
}

/// The three load averages. /proc/loadavg has two decimals; they are kept
/// as such instead of the f32 noise (0.52 rather than 0.5199999809).
pub fn load(l: &LoadAverage) -> (f64, f64, f64) {
    let two_decimals = |x: f32| (f64::from(x) * 100.0).round() / 100.0;
    (
        two_decimals(l.one),
        two_decimals(l.five),
        two_decimals(l.fifteen),
    )
}

/// The latest sample as gauges on /metrics.
#[allow(clippy::cast_precision_loss)] // MB counts are far below 2^52
fn publish(s: &pb::HostStats) {
    metrics::gauge!("minkube_agent_host_cpu_percent").set(s.cpu_percent);
    metrics::gauge!("minkube_agent_host_memory_total_mb").set(s.memory_total_mb as f64);
    metrics::gauge!("minkube_agent_host_memory_available_mb").set(s.memory_available_mb as f64);
    metrics::gauge!("minkube_agent_host_disk_total_mb").set(s.disk_total_mb as f64);
    metrics::gauge!("minkube_agent_host_disk_available_mb").set(s.disk_available_mb as f64);
    metrics::gauge!("minkube_agent_host_load", "window" => "1m").set(s.load1);
    metrics::gauge!("minkube_agent_host_load", "window" => "5m").set(s.load5);
    metrics::gauge!("minkube_agent_host_load", "window" => "15m").set(s.load15);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::hoststats::tests::MEMINFO;
    use procfs::{FromBufRead, FromRead};

    fn meminfo(text: &str) -> Meminfo {
        Meminfo::from_buf_read(text.as_bytes()).unwrap()
    }

    #[test]
    fn memory_is_total_and_available_in_mib() {
        let m = meminfo(MEMINFO);
        assert_eq!(memory_mb(&m), (8_038_196 / 1024, 4_567_890 / 1024));
    }

    #[test]
    fn memory_free_stands_in_without_mem_available() {
        let old_kernel: String = MEMINFO
            .lines()
            .filter(|l| !l.starts_with("MemAvailable:"))
            .map(|l| format!("{l}\n"))
            .collect();
        let m = meminfo(&old_kernel);
        assert_eq!(m.mem_available, None);
        assert_eq!(memory_mb(&m), (8_038_196 / 1024, 1_234_567 / 1024));
    }

    #[test]
    fn disk_is_blocks_times_fragment_size_in_mib() {
        // 4 KiB fragments: 256 per MiB.
        assert_eq!(disk_mb(256 * 1000, 256 * 250, 4096), (1000, 250));
        // Partial MiB round down.
        assert_eq!(disk_mb(255, 100, 4096), (0, 0));
        assert_eq!(disk_mb(0, 0, 0), (0, 0));
        // Available never exceeds the total.
        assert_eq!(disk_mb(256, 512, 4096), (1, 1));
        // No overflow on absurd sizes.
        assert_eq!(disk_mb(u64::MAX, u64::MAX, u64::MAX).0, u64::MAX);
    }

    #[test]
    fn load_keeps_two_decimals() {
        let l = LoadAverage::from_read("0.52 1.05 12.75 2/345 6789\n".as_bytes()).unwrap();
        assert_eq!(load(&l), (0.52, 1.05, 12.75));
    }

    #[test]
    fn disk_path_falls_back_to_root() {
        let dir = tempfile::tempdir().unwrap();
        let here = dir.path().to_str().unwrap();
        assert_eq!(disk_path(Some(here)), dir.path());
        assert_eq!(disk_path(Some("/no/such/docker/root")), Path::new("/"));
        assert_eq!(disk_path(Some("")), Path::new("/"));
        assert_eq!(disk_path(None), Path::new("/"));
    }

    #[test]
    fn a_sample_of_this_host_is_complete() {
        let mut s = HostSampler::new(PathBuf::from("/"));
        let first = s.sample();
        let second = s.sample();
        for x in [&first, &second] {
            assert!(x.memory_total_mb > 0, "{x:?}");
            assert!(x.memory_available_mb <= x.memory_total_mb, "{x:?}");
            assert!(x.disk_total_mb > 0, "{x:?}");
            assert!(x.disk_available_mb <= x.disk_total_mb, "{x:?}");
            assert!((0.0..=100.0).contains(&x.cpu_percent), "{x:?}");
            assert!(x.load1 >= 0.0, "{x:?}");
            assert_eq!(x.disk_path, "/");
            assert!(x.sampled_at.is_some());
        }
    }

    #[test]
    fn an_unreadable_disk_path_leaves_only_disk_at_zero() {
        let mut s = HostSampler::new(PathBuf::from("/no/such/docker/root"));
        let x = s.sample();
        assert_eq!((x.disk_total_mb, x.disk_available_mb), (0, 0));
        assert!(x.memory_total_mb > 0, "{x:?}");
    }
}
