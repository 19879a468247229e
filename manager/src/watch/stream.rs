//! One watcher: subscribe, send the snapshot page by page, the marker, then
//! the live changes that match its filter.
use std::sync::Arc;

use minkube::pb::{self, watch_tasks_response::Kind};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use super::{Published, WatchFilter, PAGE_SIZE, SCAN_PER_LOCK, WATCHER_BUFFER};
use crate::cluster::Cluster;

/// The stream handed to tonic.
pub type WatchStream = ReceiverStream<Result<pb::WatchTasksResponse, Status>>;

/// The snapshot as sent: for each page, the last task id it covered (`None`:
/// to the end) and the last sequence the state reflected when it was read.
/// A change at or below that sequence for a task in the page's range is
/// already in the snapshot, so it is skipped rather than sent out of order.
#[derive(Debug, Default)]
struct Covered(Vec<(Option<String>, u64)>);

impl Covered {
    fn already_sent(&self, task_id: &str, seq: u64) -> bool {
        let i = self
            .0
            .partition_point(|(last, _)| last.as_deref().is_some_and(|l| l < task_id));
        self.0.get(i).is_some_and(|(_, covered)| seq <= *covered)
    }
}

/// One snapshot page read under the state lock.
struct Page {
    tasks: Vec<pb::Task>,
    /// Last id looked at, if the scan stopped before the end.
    last: Option<String>,
    seq: u64,
}

fn response(kind: Kind) -> pb::WatchTasksResponse {
    pb::WatchTasksResponse { kind: Some(kind) }
}

impl Cluster {
    /// Opens a watch: subscribes first (so nothing is missed), then a task
    /// owned by the cluster sends the snapshot and the live changes.
    pub fn watch_tasks(self: &Arc<Self>, filter: WatchFilter) -> WatchStream {
        let rx = self.watch.subscribe();
        let (tx, out) = mpsc::channel(WATCHER_BUFFER);
        let c = Arc::clone(self);
        self.tasks
            .spawn(async move { c.run_watcher(filter, rx, tx).await });
        ReceiverStream::new(out)
    }

    fn snapshot_page(&self, filter: &WatchFilter, after: Option<&str>) -> Page {
        let st = self.lock();
        let seq = self.watch.last_seq();
        if let Some(id) = &filter.task_id {
            let tasks = st
                .tasks
                .get(id)
                .filter(|e| filter.matches_task(&e.task))
                .map(|e| vec![e.task.clone()])
                .unwrap_or_default();
            return Page {
                tasks,
                last: None,
                seq,
            };
        }
        let mut tasks = Vec::new();
        let mut last = None;
        let mut more = false;
        for (scanned, (id, t)) in st.tasks.after(after).enumerate() {
            if scanned == SCAN_PER_LOCK || tasks.len() == PAGE_SIZE {
                more = true;
                break;
            }
            last = Some(id.clone());
            if filter.matches_parts(id, t.state(), t.node_id()) {
                tasks.extend(t.to_task());
            }
        }
        Page {
            tasks,
            // A scan that reached the end covers everything after too.
            last: if more { last } else { None },
            seq,
        }
    }

    /// Queues one message, waiting for room; false once the client or the
    /// manager is gone.
    async fn deliver(
        &self,
        tx: &mpsc::Sender<Result<pb::WatchTasksResponse, Status>>,
        kind: Kind,
    ) -> bool {
        // Usually there is room: no waiting, so nothing to set up for it.
        match tx.try_send(Ok(response(kind))) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Closed(_)) => false,
            Err(mpsc::error::TrySendError::Full(msg)) => tokio::select! {
                () = self.shutdown.cancelled() => false,
                r = tx.send(msg) => r.is_ok(),
            },
        }
    }

    async fn run_watcher(
        self: Arc<Self>,
        filter: WatchFilter,
        mut rx: broadcast::Receiver<Arc<Published>>,
        tx: mpsc::Sender<Result<pb::WatchTasksResponse, Status>>,
    ) {
        let mut covered = Covered::default();
        let mut after: Option<String> = None;
        loop {
            let page = self.snapshot_page(&filter, after.as_deref());
            for task in page.tasks {
                let change = pb::TaskChange {
                    task: Some(task),
                    event: None,
                    deleted: false,
                };
                if !self.deliver(&tx, Kind::Change(change)).await {
                    return;
                }
            }
            covered.0.push((page.last.clone(), page.seq));
            match page.last {
                Some(last) => after = Some(last),
                None => break,
            }
        }
        if !self
            .deliver(&tx, Kind::SnapshotDone(pb::SnapshotDone {}))
            .await
        {
            return;
        }
        // Made once, not per change: each would join a waiter list.
        let shutdown = self.shutdown.clone();
        let cancelled = shutdown.cancelled();
        tokio::pin!(cancelled);
        let closed = tx.closed();
        tokio::pin!(closed);
        loop {
            let next = tokio::select! {
                () = &mut cancelled => {
                    let _ = tx.try_send(Err(Status::unavailable("the manager is shutting down")));
                    return;
                }
                () = &mut closed => return,
                r = rx.recv() => r,
            };
            match next {
                Ok(p) => {
                    let id = p.change.task.as_ref().map_or("", |t| t.id.as_str());
                    if covered.already_sent(id, p.seq) || !filter.matches(&p.change) {
                        continue;
                    }
                    if !self.deliver(&tx, Kind::Change(p.change.clone())).await {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::info!(missed, "task watcher fell behind; ending its stream");
                    self.deliver(&tx, Kind::Lagged(pb::Lagged { missed })).await;
                    return;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use minkube::pb::TaskState;

    #[test]
    fn covered_ranges_skip_changes_the_snapshot_already_has() {
        let c = Covered(vec![
            (Some("c".into()), 5),
            (Some("f".into()), 7),
            (None, 9),
        ]);
        assert!(c.already_sent("a", 5));
        assert!(!c.already_sent("a", 6));
        assert!(c.already_sent("c", 5));
        assert!(c.already_sent("d", 7));
        assert!(!c.already_sent("d", 8));
        assert!(c.already_sent("z", 9));
        assert!(!c.already_sent("z", 10));
        assert!(!Covered::default().already_sent("a", 1));
    }

    #[tokio::test]
    async fn a_watch_sends_the_snapshot_then_the_marker_then_live_changes() {
        use crate::cluster::ClusterConfig;
        use crate::store::RedbStore;
        use tokio_stream::StreamExt;
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(RedbStore::open(dir.path()).unwrap());
        let c = Cluster::start(store, ClusterConfig::default()).unwrap();
        let spec = |name: &str| pb::TaskSpec {
            name: name.into(),
            image: "busybox".into(),
            memory_mb: 16,
            ..Default::default()
        };
        let old = c.create_task(Some(spec("old"))).await.unwrap();
        let mut all = c.watch_tasks(WatchFilter::default());
        let pending_only = WatchFilter {
            states: vec![TaskState::Pending],
            ..Default::default()
        };
        let mut pending = c.watch_tasks(pending_only);
        let next = async |s: &mut WatchStream| {
            let m = tokio::time::timeout(std::time::Duration::from_secs(5), s.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            m.kind.unwrap()
        };
        for s in [&mut all, &mut pending] {
            let Kind::Change(first) = next(s).await else {
                panic!("snapshot first")
            };
            assert_eq!(first.task.unwrap().id, old.id);
            assert!(first.event.is_none());
            assert!(matches!(next(s).await, Kind::SnapshotDone(_)));
        }
        let new = c.create_task(Some(spec("new"))).await.unwrap();
        c.stop_task(&old.id).await.unwrap();
        // Changes with an event, in order (the scheduler also rewrites the
        // reason of tasks it cannot place: changes without event).
        let mut events = Vec::new();
        while events.len() < 2 {
            if let Kind::Change(ch) = next(&mut all).await {
                if let Some(e) = ch.event {
                    events.push((ch.task.unwrap().id, e.state()));
                }
            }
        }
        assert_eq!(
            events,
            [
                (new.id.clone(), TaskState::Pending),
                (old.id.clone(), TaskState::Completed)
            ]
        );
        // The pending-only watcher never sees the completion.
        let Kind::Change(created) = next(&mut pending).await else {
            panic!("a change")
        };
        assert_eq!(created.task.unwrap().id, new.id);
        while let Ok(Some(Ok(m))) =
            tokio::time::timeout(std::time::Duration::from_millis(200), pending.next()).await
        {
            let Some(Kind::Change(ch)) = m.kind else {
                panic!("only changes: {m:?}")
            };
            assert_eq!(ch.task.unwrap().id, new.id);
        }
        c.shutdown(std::time::Duration::from_secs(1)).await;
        // Shutdown ends the streams.
        let ended = tokio::time::timeout(std::time::Duration::from_secs(5), async {
            while all.next().await.is_some() {}
        });
        assert!(ended.await.is_ok(), "the stream ends on shutdown");
    }
}
