//! Follows Docker's event stream for this node. When the stream breaks it
//! waits for the daemon to answer again, asks the reconciler to re-list (to
//! catch what was missed) and subscribes again from the last event seen.
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use minkube_common::retry::Backoff;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::Internal;
use crate::runtime::Runtime;

fn backoff() -> Backoff {
    Backoff {
        initial: Duration::from_millis(500),
        max: Duration::from_secs(30),
        multiplier: 2.0,
    }
}

/// Runs until the reconciler goes away (its channel closes) or is aborted.
pub(super) async fn watch(
    rt: Arc<dyn Runtime>,
    node_id: String,
    mut since_secs: i64,
    tx: mpsc::Sender<Internal>,
) {
    loop {
        debug!(node_id = %node_id, since_secs, "subscribing to Docker events");
        let mut events = rt.events(&node_id, since_secs);
        loop {
            match events.next().await {
                Some(Ok(ev)) => {
                    // Resubscribing from this second replays at worst a few
                    // events, which the reconciler handles idempotently.
                    since_secs = since_secs.max(ev.at.seconds);
                    if tx.send(Internal::Event(ev)).await.is_err() {
                        return;
                    }
                }
                Some(Err(e)) => {
                    warn!(error = %e, "Docker event stream broke");
                    break;
                }
                None => {
                    warn!("Docker event stream ended");
                    break;
                }
            }
        }
        drop(events);
        let mut attempt = 0;
        loop {
            let delay = backoff().delay(attempt, &mut rand::rng());
            tokio::time::sleep(delay).await;
            match rt.ping().await {
                Ok(()) => break,
                Err(e) => {
                    attempt = attempt.saturating_add(1);
                    warn!(error = %e, retry_in = ?backoff().ceiling(attempt), "Docker does not answer");
                }
            }
        }
        if tx.send(Internal::EventsResumed).await.is_err() {
            return;
        }
    }
}
