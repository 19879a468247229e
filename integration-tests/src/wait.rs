//! Bounded polling for the tests. The product pushes state; the tests only
//! look at it from outside, so they poll with a deadline.
use std::time::{Duration, Instant};

/// The longest any single wait in these tests lasts.
pub const WAIT: Duration = Duration::from_secs(60);
/// How often waits look again.
pub const POLL: Duration = Duration::from_millis(200);

/// Calls `check` every `interval` until it returns `Ok`, and returns that
/// value. `Err` carries what was observed; on timeout the test panics with
/// the last observation.
pub async fn wait_for<T>(
    what: &str,
    timeout: Duration,
    interval: Duration,
    mut check: impl AsyncFnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match check().await {
            Ok(v) => return v,
            Err(last) => {
                if Instant::now() >= deadline {
                    panic!("timed out after {timeout:?} waiting for {what}; last observed: {last}");
                }
            }
        }
        tokio::time::sleep(interval).await;
    }
}
