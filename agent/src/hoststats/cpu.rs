//! CPU utilisation from the /proc/stat counters: the share of non-idle time
//! between two samples, over all cores.
use procfs::{CpuTime, CurrentSI, KernelStats};

/// The aggregate counters of the `cpu` line of /proc/stat, in ticks since boot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTotals {
    /// Every tick accounted for (busy or not).
    pub total: u64,
    /// Ticks idle or waiting for I/O: time no work ran.
    pub idle: u64,
}

impl CpuTotals {
    /// Sums the counters of one `cpu` line. `guest` and `guest_nice` are left
    /// out: the kernel already counts them in `user` and `nice`.
    pub fn from_cpu_time(t: &CpuTime) -> Self {
        let idle = t.idle.saturating_add(t.iowait.unwrap_or(0));
        let total = [
            t.user,
            t.nice,
            t.system,
            idle,
            t.irq.unwrap_or(0),
            t.softirq.unwrap_or(0),
            t.steal.unwrap_or(0),
        ]
        .into_iter()
        .fold(0u64, u64::saturating_add);
        Self { total, idle }
    }
}

/// Percent (0-100) of the ticks between `prev` and `now` that were not idle.
/// 0 when no tick passed or the counters went backwards (e.g. a CPU taken
/// offline), as nothing meaningful can be said then.
pub fn utilisation(prev: CpuTotals, now: CpuTotals) -> f64 {
    let Some(total) = now.total.checked_sub(prev.total).filter(|t| *t > 0) else {
        return 0.0;
    };
    // iowait may decrease (see proc(5)): an idle delta below 0 counts as 0.
    let idle = now.idle.saturating_sub(prev.idle).min(total);
    let busy = total - idle;
    // Tick counts stay far below 2^52, where f64 starts to round.
    let percent = busy as f64 / total as f64 * 100.0;
    percent.clamp(0.0, 100.0)
}

/// Keeps the previous /proc/stat totals, so that each sample reports the
/// utilisation since the one before. The first sample has no predecessor and
/// reports the average since boot (the counters start at boot).
#[derive(Debug, Default)]
pub struct CpuSampler {
    prev: CpuTotals,
}

impl CpuSampler {
    /// A sampler whose first sample covers the time since boot.
    pub fn new() -> Self {
        Self::default()
    }

    /// Utilisation since the previous sample, given the current totals.
    pub fn next(&mut self, now: CpuTotals) -> f64 {
        let percent = utilisation(self.prev, now);
        self.prev = now;
        percent
    }

    /// Reads /proc/stat and returns the utilisation since the previous
    /// sample. On a read error the previous totals are kept, so the next
    /// successful sample covers the whole gap.
    pub fn sample(&mut self) -> Result<f64, procfs::ProcError> {
        let stats = KernelStats::current()?;
        Ok(self.next(CpuTotals::from_cpu_time(&stats.total)))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use procfs::{ExplicitSystemInfo, FromBufReadSI};

    fn totals(text: &str) -> CpuTotals {
        let info = ExplicitSystemInfo {
            boot_time_secs: 0,
            ticks_per_second: 100,
            page_size: 4096,
            is_little_endian: true,
        };
        let stats = KernelStats::from_buf_read(text.as_bytes(), &info).unwrap();
        CpuTotals::from_cpu_time(&stats.total)
    }

    const STAT: &str = "cpu  100 20 30 800 50 5 5 10 40 0
cpu0 50 10 15 400 25 3 2 5 20 0
cpu1 50 10 15 400 25 2 3 5 20 0
ctxt 1000
btime 1700000000
processes 500
procs_running 1
procs_blocked 0
";

    #[test]
    fn totals_count_idle_and_iowait_as_idle_and_skip_guest_time() {
        // user+nice+system+idle+iowait+irq+softirq+steal; guest is in user.
        assert_eq!(
            totals(STAT),
            CpuTotals {
                total: 100 + 20 + 30 + 800 + 50 + 5 + 5 + 10,
                idle: 800 + 50,
            }
        );
    }

    #[test]
    fn old_kernels_without_optional_columns_still_count() {
        let t = totals("cpu  10 0 10 80\ncpu0 10 0 10 80\nctxt 1\nbtime 1\nprocesses 1\n");
        assert_eq!(
            t,
            CpuTotals {
                total: 100,
                idle: 80
            }
        );
    }

    #[test]
    fn utilisation_is_the_busy_share_of_the_delta() {
        let prev = CpuTotals {
            total: 1000,
            idle: 900,
        };
        let now = CpuTotals {
            total: 1400,
            idle: 1200,
        };
        // 400 ticks passed, 300 idle: 25% busy.
        assert!((utilisation(prev, now) - 25.0).abs() < 1e-9);
        assert!(
            (utilisation(
                prev,
                CpuTotals {
                    total: 1400,
                    idle: 900
                }
            ) - 100.0)
                .abs()
                < 1e-9
        );
        assert_eq!(
            utilisation(
                prev,
                CpuTotals {
                    total: 1400,
                    idle: 1300
                }
            ),
            0.0
        );
    }

    #[test]
    fn no_time_or_counters_going_backwards_give_zero() {
        let prev = CpuTotals {
            total: 1000,
            idle: 900,
        };
        assert_eq!(utilisation(prev, prev), 0.0);
        assert_eq!(
            utilisation(
                prev,
                CpuTotals {
                    total: 500,
                    idle: 100
                }
            ),
            0.0
        );
        // iowait decreased: idle delta negative, counted as 0 (all busy).
        let now = CpuTotals {
            total: 1100,
            idle: 850,
        };
        assert!((utilisation(prev, now) - 100.0).abs() < 1e-9);
    }

    #[test]
    fn sampler_reports_since_boot_first_then_since_the_previous_sample() {
        let mut s = CpuSampler::new();
        // Since boot: 100 of 1000 ticks busy.
        assert!(
            (s.next(CpuTotals {
                total: 1000,
                idle: 900
            }) - 10.0)
                .abs()
                < 1e-9
        );
        // Since the previous sample: 50 of 100 ticks busy.
        assert!(
            (s.next(CpuTotals {
                total: 1100,
                idle: 950
            }) - 50.0)
                .abs()
                < 1e-9
        );
        // Nothing passed.
        assert_eq!(
            s.next(CpuTotals {
                total: 1100,
                idle: 950
            }),
            0.0
        );
    }

    #[test]
    fn this_host_reads_within_bounds() {
        let mut s = CpuSampler::new();
        for _ in 0..2 {
            let p = s.sample().unwrap();
            assert!((0.0..=100.0).contains(&p), "{p}");
        }
    }
}
