//! CPU time and memory of a process, read from procfs.
use std::time::Duration;

use anyhow::Context;

/// One reading of a process's counters.
#[derive(Debug, Clone, Copy)]
pub struct ProcSample {
    /// User + system CPU time so far.
    pub cpu: Duration,
    /// Resident set size now, bytes.
    pub rss: u64,
    /// Peak resident set size so far (VmHWM), bytes.
    pub peak_rss: u64,
}

/// Reads `pid`'s counters.
pub fn sample(pid: u32) -> anyhow::Result<ProcSample> {
    let p = procfs::process::Process::new(i32::try_from(pid).context("pid out of range")?)
        .with_context(|| format!("process {pid} is gone"))?;
    let stat = p.stat().context("cannot read /proc/PID/stat")?;
    let status = p.status().context("cannot read /proc/PID/status")?;
    let ticks = procfs::ticks_per_second().max(1);
    let cpu_ticks = stat.utime + stat.stime;
    Ok(ProcSample {
        cpu: Duration::from_secs_f64(cpu_ticks as f64 / ticks as f64),
        rss: status.vmrss.unwrap_or(0) * 1024,
        peak_rss: status.vmhwm.unwrap_or(0) * 1024,
    })
}

/// Bytes as MiB with one decimal.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}
