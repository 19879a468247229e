//! Answers the manager's log requests. Each request is read by its own task,
//! owned by the session (a `JoinSet`): a `LogsCancel` aborts it, and the end
//! of the session aborts them all. Reading logs never goes through the
//! reconciler, so a long `--follow` cannot hold up task state.
use std::collections::HashMap;
use std::sync::Arc;

use futures::{FutureExt, StreamExt};
use minkube::pb::{self, agent_message, manager_message};
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinSet};
use tracing::debug;

use crate::runtime::{ContainerFilter, LogOptions, Runtime};

/// Most log bytes in one `LogsData` message.
pub(crate) const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// Log requests served at once; the manager keeps fewer open per node.
const MAX_READERS: usize = 64;

/// The log readers of one session.
pub(crate) struct LogReaders {
    runtime: Arc<dyn Runtime>,
    node_id: String,
    tx: mpsc::Sender<pb::AgentMessage>,
    tasks: JoinSet<u64>,
    open: HashMap<u64, AbortHandle>,
}

impl LogReaders {
    /// Readers of the node `node_id`'s containers, answering on `tx`.
    pub(crate) fn new(
        runtime: Arc<dyn Runtime>,
        node_id: &str,
        tx: mpsc::Sender<pb::AgentMessage>,
    ) -> Self {
        Self {
            runtime,
            node_id: node_id.to_string(),
            tx,
            tasks: JoinSet::new(),
            open: HashMap::new(),
        }
    }

    /// Starts answering a request.
    pub(crate) fn start(&mut self, req: pb::LogsRequest) {
        let id = req.request_id;
        if self.open.contains_key(&id) {
            debug!(request_id = id, "repeated log request ignored");
            return;
        }
        let runtime = Arc::clone(&self.runtime);
        let node_id = self.node_id.clone();
        let tx = self.tx.clone();
        let busy = self.open.len() >= MAX_READERS;
        let handle = self.tasks.spawn(async move {
            if busy {
                let error = format!("the node already serves {MAX_READERS} log streams");
                let _ = tx.send(answer(id, Vec::new(), false, error)).await;
            } else {
                read(runtime.as_ref(), &node_id, req, &tx).await;
            }
            id
        });
        self.open.insert(id, handle);
    }

    /// Takes the log messages (`logs_request`, `logs_cancel`) out of the
    /// manager's stream; every other message is handed back.
    pub(crate) fn take(&mut self, m: pb::ManagerMessage) -> Option<pb::ManagerMessage> {
        match m.msg {
            Some(manager_message::Msg::LogsRequest(r)) => {
                self.start(r);
                None
            }
            Some(manager_message::Msg::LogsCancel(c)) => {
                self.cancel(c.request_id);
                None
            }
            msg => Some(pb::ManagerMessage { msg }),
        }
    }

    /// Stops answering a request (its reader at the manager is gone).
    pub(crate) fn cancel(&mut self, request_id: u64) {
        if let Some(h) = self.open.remove(&request_id) {
            h.abort();
        }
    }

    /// Completes when a reader ends (never while none runs), forgetting it.
    pub(crate) async fn reap(&mut self) {
        if self.tasks.is_empty() {
            return std::future::pending().await;
        }
        if let Some(Ok(id)) = self.tasks.join_next().await {
            self.open.remove(&id);
        }
    }

    /// Readers running.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.open.len()
    }
}

fn answer(
    request_id: u64,
    chunks: Vec<pb::LogChunk>,
    end: bool,
    error: String,
) -> pb::AgentMessage {
    pb::AgentMessage {
        msg: Some(agent_message::Msg::Logs(pb::LogsData {
            request_id,
            chunks,
            end,
            error,
        })),
    }
}

/// Splits data too large for one message.
fn split(chunk: pb::LogChunk) -> Vec<pb::LogChunk> {
    if chunk.data.len() <= MAX_MESSAGE_BYTES {
        return vec![chunk];
    }
    chunk
        .data
        .chunks(MAX_MESSAGE_BYTES)
        .map(|part| pb::LogChunk {
            data: part.to_vec(),
            ..chunk.clone()
        })
        .collect()
}

/// Reads one request's logs and sends them, then `end` or `error`. Returns
/// early if the session's stream is gone.
async fn read(
    runtime: &dyn Runtime,
    node_id: &str,
    req: pb::LogsRequest,
    tx: &mpsc::Sender<pb::AgentMessage>,
) {
    let id = req.request_id;
    let filter = ContainerFilter::attempt(node_id, &req.task_id, req.attempt);
    let container = match runtime.list(&filter).await {
        Ok(found) => found.into_iter().next(),
        Err(e) => {
            let _ = tx.send(answer(id, Vec::new(), false, e.to_string())).await;
            return;
        }
    };
    let Some(container) = container else {
        let error = format!(
            "task {} (attempt {}) has no container on this node any more: it was removed (stopped tasks lose their container)",
            req.task_id, req.attempt
        );
        let _ = tx.send(answer(id, Vec::new(), false, error)).await;
        return;
    };
    // The first answer says the request was taken: a follow of a quiet
    // container may send nothing else for a long time, and the manager ends a
    // request that goes unanswered.
    if tx
        .send(answer(id, Vec::new(), false, String::new()))
        .await
        .is_err()
    {
        return;
    }
    let options = LogOptions {
        follow: req.follow,
        tail: req.tail,
        timestamps: req.timestamps,
    };
    let mut stream = runtime.logs(&container.id, options);
    let mut error = String::new();
    let mut done = false;
    while !done {
        // Wait for output, then take whatever else is ready, up to the size bound.
        let mut batch = Vec::new();
        let mut size = 0;
        let mut next = stream.next().await;
        loop {
            match next {
                Some(Ok(chunk)) => {
                    for part in split(chunk) {
                        size += part.data.len();
                        batch.push(part);
                    }
                }
                Some(Err(e)) => {
                    error = e.to_string();
                    done = true;
                    break;
                }
                None => {
                    done = true;
                    break;
                }
            }
            if size >= MAX_MESSAGE_BYTES {
                break;
            }
            match stream.next().now_or_never() {
                Some(item) => next = item,
                None => break,
            }
        }
        if done {
            // The last batch carries the end (or error) itself.
            let _ = tx.send(answer(id, batch, error.is_empty(), error)).await;
            return;
        }
        if tx
            .send(answer(id, batch, false, String::new()))
            .await
            .is_err()
        {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::runtime::fake::FakeRuntime;
    use crate::runtime::ContainerStatus;

    fn container(rt: &FakeRuntime) -> String {
        // An exited container: its logs stay readable.
        rt.insert_container("n1", "t1", 1, ContainerStatus::Exited, Some(0))
    }

    fn request(id: u64, tail: u32) -> pb::LogsRequest {
        pb::LogsRequest {
            request_id: id,
            task_id: "t1".into(),
            attempt: 1,
            follow: false,
            tail,
            timestamps: false,
        }
    }

    fn data(m: pb::AgentMessage) -> pb::LogsData {
        match m.msg {
            Some(agent_message::Msg::Logs(d)) => d,
            other => panic!("not logs: {other:?}"),
        }
    }

    /// The answer that says a request was taken: no chunks, no end, no error.
    async fn taken(rx: &mut mpsc::Receiver<pb::AgentMessage>, request_id: u64) {
        let d = data(rx.recv().await.unwrap());
        assert_eq!(d.request_id, request_id);
        assert!(
            d.chunks.is_empty() && !d.end && d.error.is_empty(),
            "first answer: {d:?}"
        );
    }

    #[tokio::test]
    async fn both_streams_are_sent_marked_then_the_end() {
        let rt = FakeRuntime::new();
        let id = container(&rt);
        let (tx, mut rx) = mpsc::channel(8);
        let mut readers = LogReaders::new(Arc::new(rt), "n1", tx);
        readers.start(request(7, 0));
        taken(&mut rx, 7).await;
        let d = data(rx.recv().await.unwrap());
        assert_eq!(d.request_id, 7);
        assert!(d.end && d.error.is_empty(), "{d:?}");
        assert_eq!(d.chunks.len(), 2);
        assert_eq!(d.chunks[0].stream(), pb::LogStream::Stdout);
        assert_eq!(d.chunks[0].data, format!("out of {id}\n").into_bytes());
        assert_eq!(d.chunks[1].stream(), pb::LogStream::Stderr);
        readers.reap().await;
        assert_eq!(readers.len(), 0);
        readers.start(request(8, 1));
        taken(&mut rx, 8).await;
        let d = data(rx.recv().await.unwrap());
        assert_eq!(d.chunks.len(), 1, "tail 1");
        assert_eq!(d.chunks[0].stream(), pb::LogStream::Stderr);
    }

    #[tokio::test]
    async fn a_missing_container_is_an_error() {
        let rt = FakeRuntime::new();
        let (tx, mut rx) = mpsc::channel(8);
        let mut readers = LogReaders::new(Arc::new(rt), "n1", tx);
        readers.start(request(1, 0));
        let d = data(rx.recv().await.unwrap());
        assert!(!d.end);
        assert!(d.error.contains("no container"), "{d:?}");
    }

    #[tokio::test]
    async fn cancel_aborts_the_reader() {
        let rt = FakeRuntime::new();
        container(&rt);
        // No room upstream: the reader waits to send until aborted.
        let (tx, _rx) = mpsc::channel(1);
        tx.send(answer(0, Vec::new(), false, String::new()))
            .await
            .unwrap();
        let mut readers = LogReaders::new(Arc::new(rt), "n1", tx);
        readers.start(request(3, 0));
        assert_eq!(readers.len(), 1);
        readers.cancel(3);
        assert_eq!(readers.len(), 0);
        tokio::time::timeout(std::time::Duration::from_secs(5), readers.reap())
            .await
            .unwrap();
    }

    #[test]
    fn large_chunks_are_split() {
        let big = pb::LogChunk {
            stream: pb::LogStream::Stdout as i32,
            data: vec![b'x'; MAX_MESSAGE_BYTES * 2 + 1],
            timestamp: None,
        };
        let parts = split(big);
        assert_eq!(parts.len(), 3);
        assert!(parts.iter().all(|p| p.data.len() <= MAX_MESSAGE_BYTES));
    }
}
