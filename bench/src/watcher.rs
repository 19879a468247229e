//! A WatchTasks client that notes when each task was first seen RUNNING
//! and finished, as a user's watcher would see it.
use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context};
use minkube::pb::{self, watch_tasks_response::Kind};
use tokio::sync::{oneshot, watch};

/// What the watcher saw of one task.
#[derive(Debug, Clone, Copy, Default)]
pub struct Seen {
    /// First change showing RUNNING.
    pub running: Option<Instant>,
    /// First change showing COMPLETED or FAILED.
    pub finished: Option<Instant>,
    /// From the container's end (the runtime's `finished_at`) to that
    /// change reaching the watcher, by the wall clock.
    pub exit_to_watcher: Option<Duration>,
}

/// Counts of what the watcher has seen so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// Tasks seen RUNNING.
    pub running: usize,
    /// Tasks seen finished.
    pub finished: usize,
}

/// A running watch.
pub struct Watcher {
    progress: watch::Receiver<Progress>,
    stop: watch::Sender<bool>,
    handle: oneshot::Receiver<anyhow::Result<HashMap<String, Seen>>>,
}

fn since_wall(ts: &prost_types::Timestamp) -> Option<Duration> {
    let at = SystemTime::UNIX_EPOCH
        + Duration::new(
            u64::try_from(ts.seconds).ok()?,
            u32::try_from(ts.nanos).ok()?,
        );
    SystemTime::now().duration_since(at).ok()
}

impl Watcher {
    /// Opens a watch on every task and waits for its snapshot to end. The
    /// watch runs on its own thread, so the hollow agents sharing this
    /// process cannot starve it (a starved watcher would lag and be cut off).
    pub async fn start(addr: &str) -> anyhow::Result<Self> {
        let (progress_tx, progress) = watch::channel(Progress::default());
        let (stop, stop_rx) = watch::channel(false);
        let (ready_tx, ready_rx) = oneshot::channel();
        let (done_tx, done_rx) = oneshot::channel();
        let addr = addr.to_string();
        std::thread::Builder::new()
            .name("bench-watcher".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(anyhow::anyhow!("watcher runtime: {e}")));
                        return;
                    }
                };
                let result = rt.block_on(watch_loop(addr, ready_tx, progress_tx, stop_rx));
                let _ = done_tx.send(result);
            })
            .context("cannot start the watcher thread")?;
        ready_rx.await.context("the watcher thread ended")??;
        Ok(Self {
            progress,
            stop,
            handle: done_rx,
        })
    }

    /// Waits until `done(progress)` holds, or fails after `within`.
    pub async fn wait(
        &mut self,
        within: Duration,
        what: &str,
        done: impl Fn(Progress) -> bool,
    ) -> anyhow::Result<()> {
        let waited = tokio::time::timeout(within, self.progress.wait_for(|p| done(*p)))
            .await
            .map(|r| r.map(|_| ()));
        match waited {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => {
                // The watch task ended: report its error.
                self.stop.send_replace(true);
                match (&mut self.handle).await {
                    Ok(Err(e)) => Err(e),
                    _ => bail!("the watcher stopped while waiting for {what}"),
                }
            }
            Err(_) => bail!(
                "timed out after {within:?} waiting for {what} (seen: {:?})",
                *self.progress.borrow()
            ),
        }
    }

    /// Ends the watch and returns what it saw.
    pub async fn finish(self) -> anyhow::Result<HashMap<String, Seen>> {
        self.stop.send_replace(true);
        self.handle.await.context("the watcher thread ended")?
    }
}

/// The watch itself: snapshot, then live changes until `stop_rx` turns true.
async fn watch_loop(
    addr: String,
    ready: oneshot::Sender<anyhow::Result<()>>,
    progress_tx: watch::Sender<Progress>,
    mut stop_rx: watch::Receiver<bool>,
) -> anyhow::Result<HashMap<String, Seen>> {
    let opened = async {
        let mut client = crate::manager::client(&addr).await?;
        let mut stream = client
            .watch_tasks(pb::WatchTasksRequest {
                states: vec![
                    pb::TaskState::Running as i32,
                    pb::TaskState::Completed as i32,
                    pb::TaskState::Failed as i32,
                ],
                ..Default::default()
            })
            .await
            .context("WatchTasks")?
            .into_inner();
        loop {
            match stream.message().await?.and_then(|m| m.kind) {
                Some(Kind::SnapshotDone(_)) => return anyhow::Ok(stream),
                Some(_) => {}
                None => bail!("the watch ended before its snapshot did"),
            }
        }
    }
    .await;
    let mut stream = match opened {
        Ok(s) => {
            let _ = ready.send(Ok(()));
            s
        }
        Err(e) => {
            let text = format!("{e:#}");
            let _ = ready.send(Err(e));
            bail!("{text}");
        }
    };
    let mut seen: HashMap<String, Seen> = HashMap::new();
    let mut p = Progress::default();
    loop {
        let msg = tokio::select! {
            m = stream.message() => m?,
            _ = stop_rx.wait_for(|s| *s) => return Ok(seen),
        };
        let now = Instant::now();
        let Some(kind) = msg.and_then(|m| m.kind) else {
            bail!("the manager ended the watch");
        };
        let task = match kind {
            Kind::Change(c) => c.task,
            Kind::Lagged(l) => bail!(
                "the watcher fell behind and missed {} changes; figures would be wrong",
                l.missed
            ),
            Kind::SnapshotDone(_) => continue,
        };
        let Some(task) = task else { continue };
        let Some(status) = task.status else { continue };
        let entry = seen.entry(task.id).or_default();
        match status.state() {
            pb::TaskState::Running if entry.running.is_none() => {
                entry.running = Some(now);
                p.running += 1;
            }
            pb::TaskState::Completed | pb::TaskState::Failed if entry.finished.is_none() => {
                entry.finished = Some(now);
                entry.exit_to_watcher = status.finished_at.as_ref().and_then(since_wall);
                p.finished += 1;
            }
            _ => continue,
        }
        progress_tx.send_replace(p);
    }
}
