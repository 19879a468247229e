//! Publication of durable changes in state-change order (see the module
//! docs of `watch`).
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use minkube::pb;
use tokio::sync::{broadcast, oneshot};
use tokio_util::task::TaskTracker;

use super::changes::{self, changes_from};
use crate::store::committer::Durable;
use crate::store::{Mutation, StoreError};

/// One change as broadcast: the write's sequence number and the change.
#[derive(Debug)]
pub struct Published {
    pub(super) seq: u64,
    pub(super) change: pb::TaskChange,
}

#[derive(Default)]
struct Order {
    /// Next sequence to broadcast.
    next: u64,
    /// Settled sequences waiting for an earlier one; `None`: nothing to send
    /// (the write failed).
    settled: BTreeMap<u64, Option<Vec<pb::TaskChange>>>,
}

struct Inner {
    tx: broadcast::Sender<Arc<Published>>,
    /// Sequences handed out; only changed under the state lock.
    assigned: AtomicU64,
    order: Mutex<Order>,
}

impl Inner {
    fn settle(&self, seq: u64, changes: Option<Vec<pb::TaskChange>>) {
        let mut order = self.order.lock().unwrap_or_else(PoisonError::into_inner);
        order.settled.insert(seq, changes);
        loop {
            let next = order.next;
            let Some(changes) = order.settled.remove(&next) else {
                break;
            };
            order.next = next + 1;
            for change in changes.into_iter().flatten() {
                // No receiver is fine: nobody watches any more.
                let _ = self.tx.send(Arc::new(Published { seq: next, change }));
            }
        }
    }
}

/// The publishing side, owned by the cluster.
pub struct WatchHub {
    inner: Arc<Inner>,
}

impl WatchHub {
    /// A hub buffering `capacity` changes.
    pub fn new(capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(capacity.max(1));
        Self {
            inner: Arc::new(Inner {
                tx,
                assigned: AtomicU64::new(0),
                order: Mutex::new(Order {
                    next: 1,
                    settled: BTreeMap::new(),
                }),
            }),
        }
    }

    /// Call under the state lock with a write's mutations: takes the write's
    /// place in the publication order. `None` (and no work at all) when
    /// nobody watches or nothing a watcher sees changed. The changes
    /// themselves are made once the write is durable, from the mutations the
    /// store gives back (moved, not cloned, and outside the state lock).
    pub(crate) fn prepare(&self, mutations: &[Mutation]) -> Option<Ticket> {
        if self.inner.tx.receiver_count() == 0 || !mutations.iter().any(changes::is_watched) {
            return None;
        }
        let seq = self.inner.assigned.fetch_add(1, Ordering::SeqCst) + 1;
        Some(Ticket {
            inner: Arc::clone(&self.inner),
            seq,
            changes: None,
        })
    }

    /// The last sequence handed out. Read under the state lock, it tells
    /// which changes the state already reflects.
    pub(super) fn last_seq(&self) -> u64 {
        self.inner.assigned.load(Ordering::SeqCst)
    }

    pub(super) fn subscribe(&self) -> broadcast::Receiver<Arc<Published>> {
        self.inner.tx.subscribe()
    }
}

/// A write's place in the publication order. Dropped without being made
/// durable, it publishes nothing but lets later writes through.
pub(crate) struct Ticket {
    inner: Arc<Inner>,
    seq: u64,
    /// Set once the write is durable.
    changes: Option<Vec<pb::TaskChange>>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.inner.settle(self.seq, self.changes.take());
    }
}

impl Ticket {
    /// Settles the ticket: publishes the write's changes if it is durable
    /// (the store gave its mutations back), nothing if it failed.
    fn finish(mut self, durable: Durable) {
        self.changes = durable.ok().map(changes_from);
        drop(self);
    }

    /// Waits for the write to be durable, then publishes it. If the caller
    /// goes away first (a cancelled request), the wait continues in the
    /// background so watchers still see the change.
    pub(crate) async fn publish_when_durable(
        self,
        done: oneshot::Receiver<Durable>,
        tracker: &TaskTracker,
    ) -> Result<(), StoreError> {
        let mut wait = Wait {
            ticket: Some(self),
            done: Some(done),
            tracker,
        };
        let result = match wait.done.as_mut() {
            Some(rx) => rx.await.unwrap_or(Err(StoreError::Closed)),
            None => Err(StoreError::Closed),
        };
        wait.done = None;
        let failed = result.as_ref().err().cloned();
        if let Some(t) = wait.ticket.take() {
            t.finish(result);
        }
        failed.map_or(Ok(()), Err)
    }
}

struct Wait<'a> {
    ticket: Option<Ticket>,
    done: Option<oneshot::Receiver<Durable>>,
    tracker: &'a TaskTracker,
}

impl Drop for Wait<'_> {
    fn drop(&mut self) {
        if let (Some(ticket), Some(done)) = (self.ticket.take(), self.done.take()) {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                self.tracker.spawn_on(
                    async move {
                        ticket.finish(done.await.unwrap_or(Err(StoreError::Closed)));
                    },
                    &rt,
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::state::State;

    fn task(id: &str) -> pb::Task {
        crate::state::fixtures::pending_task(id)
    }

    #[tokio::test]
    async fn publishes_in_sequence_order_only_once_durable() {
        let hub = WatchHub::new(16);
        let mut rx = hub.subscribe();
        let mut st = State::default();
        let mut out = Vec::new();
        st.insert_task(task("a"), &mut out);
        let first = hub.prepare(&out).unwrap();
        let second = hub.prepare(&out).unwrap();
        let failed = hub.prepare(&out).unwrap();
        let tracker = TaskTracker::new();
        let (tx2, rx2) = oneshot::channel();
        tx2.send(Ok(out.clone())).unwrap();
        second.publish_when_durable(rx2, &tracker).await.unwrap();
        assert!(rx.try_recv().is_err(), "waits for the first");
        let (tx3, rx3) = oneshot::channel();
        tx3.send(Err(StoreError::Closed)).unwrap();
        assert!(failed.publish_when_durable(rx3, &tracker).await.is_err());
        let (tx1, rx1) = oneshot::channel();
        tx1.send(Ok(out.clone())).unwrap();
        first.publish_when_durable(rx1, &tracker).await.unwrap();
        assert_eq!(rx.try_recv().unwrap().seq, 1);
        assert_eq!(rx.try_recv().unwrap().seq, 2);
        assert!(rx.try_recv().is_err(), "a failed write publishes nothing");
        // Later writes are not held up by the failed one.
        let fourth = hub.prepare(&out).unwrap();
        let (tx4, rx4) = oneshot::channel();
        tx4.send(Ok(out.clone())).unwrap();
        fourth.publish_when_durable(rx4, &tracker).await.unwrap();
        assert_eq!(rx.try_recv().unwrap().seq, 4);
        drop(rx);
        assert!(hub.prepare(&out).is_none(), "nobody watches: no work");
    }

    #[tokio::test]
    async fn a_cancelled_writer_still_publishes_once_durable() {
        let hub = WatchHub::new(16);
        let mut rx = hub.subscribe();
        let mut st = State::default();
        let mut out = Vec::new();
        st.insert_task(task("a"), &mut out);
        let ticket = hub.prepare(&out).unwrap();
        let tracker = TaskTracker::new();
        let (tx, done) = oneshot::channel();
        let wait = ticket.publish_when_durable(done, &tracker);
        // Polled once, then dropped: the request went away mid-write.
        let mut wait = Box::pin(wait);
        assert!(futures::poll!(wait.as_mut()).is_pending());
        drop(wait);
        tx.send(Ok(out.clone())).unwrap();
        tracker.close();
        tracker.wait().await;
        assert_eq!(rx.recv().await.unwrap().seq, 1);
    }
}
