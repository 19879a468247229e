//! Retry policy: capped exponential backoff with full jitter, so that many
//! agents reconnecting after a manager restart do not arrive in lockstep.
use std::time::Duration;

use rand::Rng;

/// Capped exponential backoff.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// Delay bound for the first retry.
    pub initial: Duration,
    /// No delay exceeds this.
    pub max: Duration,
    /// Growth per attempt.
    pub multiplier: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(200),
            max: Duration::from_secs(10),
            multiplier: 2.0,
        }
    }
}

impl Backoff {
    /// Upper bound of the delay before retry number `attempt` (0-based).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = self
            .multiplier
            .powi(i32::try_from(attempt.min(64)).unwrap_or(64));
        let secs = self.initial.as_secs_f64() * factor;
        if !secs.is_finite() || secs >= self.max.as_secs_f64() {
            self.max
        } else {
            Duration::from_secs_f64(secs)
        }
    }

    /// Delay before retry number `attempt`: uniform in [ceiling/2, ceiling],
    /// so it grows but never collapses to zero.
    pub fn delay(&self, attempt: u32, rng: &mut impl Rng) -> Duration {
        let ceiling = self.ceiling(attempt);
        let half = ceiling / 2;
        let span = u64::try_from((ceiling - half).as_millis()).unwrap_or(u64::MAX);
        half + Duration::from_millis(rng.random_range(0..=span))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceiling_grows_then_caps() {
        let b = Backoff::default();
        assert_eq!(b.ceiling(0), Duration::from_millis(200));
        assert_eq!(b.ceiling(1), Duration::from_millis(400));
        assert_eq!(b.ceiling(3), Duration::from_millis(1600));
        assert_eq!(b.ceiling(10), Duration::from_secs(10));
        assert_eq!(b.ceiling(u32::MAX), Duration::from_secs(10));
    }

    #[test]
    fn delay_is_jittered_within_bounds() {
        let b = Backoff::default();
        let mut rng = rand::rng();
        for attempt in 0..20 {
            let c = b.ceiling(attempt);
            let d = b.delay(attempt, &mut rng);
            assert!(d >= c / 2 && d <= c, "attempt {attempt}: {d:?} vs {c:?}");
        }
    }
}
