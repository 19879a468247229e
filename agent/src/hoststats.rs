//! The host: what the node offers (CPU cores and memory, read from /proc,
//! sent at registration) and how busy it is ([`HostSampler`]: CPU, memory,
//! disk and load, sampled for every heartbeat).
pub mod cpu;
pub mod live;

use minkube::pb;
use procfs::{CpuInfo, Current, FromBufRead, Meminfo};

pub use live::{disk_path, HostSampler};

const MIB: u64 = 1024 * 1024;

/// Capacity of the host. A value that cannot be read is reported as 0 (and
/// logged), which keeps the node from being given work it may not fit.
pub fn capacity() -> pb::Resources {
    let cpu_cores = match CpuInfo::current() {
        Ok(info) if info.num_cores() > 0 => info.num_cores(),
        other => {
            if let Err(e) = other {
                tracing::warn!(error = %e, "cannot read /proc/cpuinfo; using the parallelism available to the agent");
            }
            std::thread::available_parallelism().map_or(1, usize::from)
        }
    };
    let memory_mb = match Meminfo::current() {
        Ok(m) => m.mem_total / MIB,
        Err(e) => {
            tracing::error!(error = %e, "cannot read /proc/meminfo; reporting 0 MB of memory, so no task will be placed here");
            0
        }
    };
    pb::Resources {
        cpu_cores: cores_f64(cpu_cores),
        memory_mb,
    }
}

fn cores_f64(n: usize) -> f64 {
    // Core counts are far below 2^32.
    f64::from(u32::try_from(n).unwrap_or(u32::MAX))
}

/// Total memory in MiB from the text of /proc/meminfo.
pub fn parse_meminfo_mb(text: &str) -> Result<u64, String> {
    Meminfo::from_buf_read(text.as_bytes())
        .map(|m| m.mem_total / MIB)
        .map_err(|e| format!("cannot parse /proc/meminfo: {e}"))
}

/// Number of CPUs listed in the text of /proc/cpuinfo.
pub fn parse_cpuinfo_cores(text: &str) -> Result<usize, String> {
    CpuInfo::from_buf_read(text.as_bytes())
        .map(|c| c.num_cores())
        .map_err(|e| format!("cannot parse /proc/cpuinfo: {e}"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Shared with the tests of the live statistics.
    pub(crate) const MEMINFO: &str = "MemTotal:        8038196 kB
MemFree:         1234567 kB
MemAvailable:    4567890 kB
Buffers:          123456 kB
Cached:          2345678 kB
SwapCached:            0 kB
Active:          3456789 kB
Inactive:        1234567 kB
SwapTotal:             0 kB
SwapFree:              0 kB
Dirty:               100 kB
Writeback:             0 kB
AnonPages:       1000000 kB
Mapped:           200000 kB
Shmem:             10000 kB
Slab:             300000 kB
SReclaimable:     200000 kB
SUnreclaim:       100000 kB
KernelStack:       10000 kB
PageTables:        20000 kB
NFS_Unstable:          0 kB
Bounce:                0 kB
WritebackTmp:          0 kB
CommitLimit:     4019096 kB
Committed_AS:    5000000 kB
VmallocTotal:   34359738367 kB
VmallocUsed:       30000 kB
VmallocChunk:          0 kB
";

    const CPUINFO: &str = "processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Example CPU

processor\t: 1
vendor_id\t: GenuineIntel
model name\t: Example CPU

";

    #[test]
    fn memory_is_mem_total_in_mib() {
        assert_eq!(parse_meminfo_mb(MEMINFO).unwrap(), 8_038_196 / 1024);
        assert!(parse_meminfo_mb("garbage").is_err());
    }

    #[test]
    fn cores_are_counted_per_processor_entry() {
        assert_eq!(parse_cpuinfo_cores(CPUINFO).unwrap(), 2);
    }

    #[test]
    fn this_host_has_capacity() {
        let c = capacity();
        assert!(c.cpu_cores >= 1.0);
        assert!(c.memory_mb > 0);
    }
}
