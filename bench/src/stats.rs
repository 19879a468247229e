//! Latency percentiles.
use std::time::Duration;

/// Sorted latencies.
#[derive(Debug, Clone, Default)]
pub struct Latencies(Vec<Duration>);

impl Latencies {
    /// Sorts `v`.
    pub fn new(mut v: Vec<Duration>) -> Self {
        v.sort_unstable();
        Self(v)
    }

    /// Nearest-rank percentile (`p` in 0..=100); zero when empty.
    pub fn pct(&self, p: f64) -> Duration {
        if self.0.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((p / 100.0) * self.0.len() as f64).ceil() as usize;
        self.0[rank.clamp(1, self.0.len()) - 1]
    }

    /// Largest sample.
    pub fn max(&self) -> Duration {
        self.0.last().copied().unwrap_or_default()
    }

    /// "p50 a / p99 b / max c" in milliseconds.
    pub fn summary(&self) -> String {
        format!(
            "p50 {} / p99 {} / max {}",
            ms(self.pct(50.0)),
            ms(self.pct(99.0)),
            ms(self.max())
        )
    }
}

/// A duration in milliseconds with two decimals.
pub fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// Cumulative histogram buckets as a Prometheus scrape gives them: (upper
/// bound in seconds, observations up to it), ascending, `+Inf` last.
#[derive(Debug, Default)]
pub struct Buckets(pub Vec<(f64, f64)>);

impl Buckets {
    /// The bound of the first bucket holding at least `p` percent of the
    /// observations (the percentile lies at or below it); `None` if empty.
    pub fn pct_bound(&self, p: f64) -> Option<f64> {
        let total = self.0.last()?.1;
        if total <= 0.0 {
            return None;
        }
        self.0
            .iter()
            .find(|(_, count)| *count >= total * p / 100.0)
            .map(|(le, _)| *le)
    }

    /// Percent of the observations above `bound` seconds (a bucket bound).
    pub fn pct_over(&self, bound: f64) -> f64 {
        let total = self.0.last().map_or(0.0, |b| b.1);
        let within = self
            .0
            .iter()
            .find(|(le, _)| (*le - bound).abs() < 1e-12)
            .map_or(total, |b| b.1);
        if total > 0.0 {
            100.0 * (total - within) / total
        } else {
            0.0
        }
    }

    /// "p99 <= 5 ms; 0.12% over 10 ms", from the buckets.
    pub fn summary(&self) -> String {
        let bound = |p| match self.pct_bound(p) {
            Some(b) if b.is_finite() => format!("<= {} ms", b * 1000.0),
            Some(_) => "above the largest bucket".to_string(),
            None => "no data".to_string(),
        };
        format!(
            "p50 {} / p99 {}; {:.2}% over 10 ms",
            bound(50.0),
            bound(99.0),
            self.pct_over(0.01)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let l = Latencies::new((1..=100).rev().map(Duration::from_millis).collect());
        assert_eq!(l.pct(50.0), Duration::from_millis(50));
        assert_eq!(l.pct(99.0), Duration::from_millis(99));
        assert_eq!(l.max(), Duration::from_millis(100));
        assert_eq!(Latencies::default().pct(99.0), Duration::ZERO);
    }

    #[test]
    fn buckets_give_percentile_bounds_and_the_share_over_a_bound() {
        let b = Buckets(vec![
            (0.001, 50.0),
            (0.005, 98.0),
            (0.01, 99.0),
            (0.025, 100.0),
            (f64::INFINITY, 100.0),
        ]);
        assert_eq!(b.pct_bound(50.0), Some(0.001));
        assert_eq!(b.pct_bound(99.0), Some(0.01));
        assert!((b.pct_over(0.01) - 1.0).abs() < 1e-9);
        assert!((b.pct_over(0.001) - 50.0).abs() < 1e-9);
        assert_eq!(b.summary(), "p50 <= 1 ms / p99 <= 10 ms; 1.00% over 10 ms");
        assert_eq!(Buckets::default().pct_bound(99.0), None);
    }
}
