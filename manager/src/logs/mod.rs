//! Task logs (`TaskLogs`). Logs live on the node, so the manager only relays:
//! a request goes down the node's agent stream as a `LogsRequest` with a
//! fresh request id, and the agent's `LogsData` answers come back up the same
//! stream and are routed by that id to the waiting client. Every queue is
//! bounded; a client that falls behind is ended rather than buffered for.
mod handler;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use minkube::pb;
use tokio::sync::mpsc;
use tonic::Status;

use crate::error::ManagerError;

pub use handler::TaskLogStream;

/// `LogsData` messages queued per client (each carries at most 64 KiB).
pub const CLIENT_BUFFER: usize = 32;
/// Log streams one node serves at once.
pub const MAX_STREAMS_PER_NODE: usize = 32;
/// How long a node has to give its first answer to a log request (data, an
/// error, or that it took the request) before the client's stream ends.
pub const FIRST_ANSWER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// What a route carries: a batch of chunks, or the error that ends it.
pub(crate) type Item = Result<Vec<pb::LogChunk>, Status>;

struct Route {
    node_id: String,
    session: u64,
    tx: mpsc::Sender<Item>,
}

/// Open log requests by request id.
pub struct LogRouter {
    next_id: AtomicU64,
    routes: Mutex<HashMap<u64, Route>>,
    per_node: usize,
}

impl Default for LogRouter {
    fn default() -> Self {
        Self::new(MAX_STREAMS_PER_NODE)
    }
}

impl LogRouter {
    /// A router allowing `per_node` open streams per node.
    pub fn new(per_node: usize) -> Self {
        Self {
            next_id: AtomicU64::new(1),
            routes: Mutex::new(HashMap::new()),
            per_node,
        }
    }

    fn routes(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Route>> {
        self.routes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Opens a route for a request to `node_id` (served by its session
    /// `session`): the request id and the client's end.
    pub fn open(
        &self,
        node_id: &str,
        session: u64,
    ) -> Result<(u64, mpsc::Receiver<Item>), ManagerError> {
        let mut routes = self.routes();
        let open = routes.values().filter(|r| r.node_id == node_id).count();
        if open >= self.per_node {
            return Err(ManagerError::TooManyLogStreams {
                node: node_id.to_string(),
                limit: self.per_node,
            });
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        // One slot more than data may use: room for the status that ends it.
        let (tx, rx) = mpsc::channel(CLIENT_BUFFER + 1);
        routes.insert(
            id,
            Route {
                node_id: node_id.to_string(),
                session,
                tx,
            },
        );
        Ok((id, rx))
    }

    /// Routes one `LogsData` from `node_id`. Returns true if the agent must be
    /// told to stop (the client is gone or fell behind).
    pub fn deliver(&self, node_id: &str, data: pb::LogsData) -> bool {
        let mut routes = self.routes();
        let Some(route) = routes.get(&data.request_id) else {
            // Already ended here (client gone); the agent was told to stop.
            return false;
        };
        if route.node_id != node_id {
            tracing::warn!(
                node_id,
                request_id = data.request_id,
                "logs for another node's request ignored"
            );
            return false;
        }
        let last = data.end || !data.error.is_empty();
        let mut cut = false;
        if route.tx.is_closed() {
            cut = true;
        } else if !data.chunks.is_empty() || !last {
            // An empty message that does not end the stream is the agent's
            // first answer (the request was taken): the client's stream
            // stops waiting for one.
            if route.tx.capacity() <= 1 {
                let _ = route.tx.try_send(Err(Status::resource_exhausted(format!(
                    "the log reader fell behind ({CLIENT_BUFFER} messages queued) and was ended: read faster, or ask for less with --tail"
                ))));
                cut = true;
            } else {
                let _ = route.tx.try_send(Ok(data.chunks));
            }
        }
        let cancel = cut && !last;
        let finished = cut || last;
        if !cut && !data.error.is_empty() {
            let _ = route.tx.try_send(Err(Status::failed_precondition(format!(
                "the task's node could not read its logs: {}",
                data.error
            ))));
        }
        if finished {
            // Dropping the sender ends the client's stream after what it holds.
            routes.remove(&data.request_id);
        }
        cancel
    }

    /// Ends a route from the client's side. True if it was still open (the
    /// agent must be told to stop).
    pub fn close(&self, request_id: u64) -> bool {
        self.routes().remove(&request_id).is_some()
    }

    /// The session `session` of `node_id` ended: every route it served ends
    /// with UNAVAILABLE.
    pub fn session_ended(&self, node_id: &str, session: u64) {
        self.routes().retain(|_, r| {
            if r.node_id != node_id || r.session != session {
                return true;
            }
            let _ = r.tx.try_send(Err(Status::unavailable(format!(
                "node {node_id} disconnected while sending logs: run the command again once it is back (see `minkube nodes`)"
            ))));
            false
        });
    }

    /// Open routes of a node.
    pub fn open_on(&self, node_id: &str) -> usize {
        self.routes()
            .values()
            .filter(|r| r.node_id == node_id)
            .count()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tonic::Code;

    fn chunk(text: &str) -> pb::LogChunk {
        pb::LogChunk {
            stream: pb::LogStream::Stdout as i32,
            data: text.as_bytes().to_vec(),
            timestamp: None,
        }
    }

    fn data(request_id: u64, chunks: Vec<pb::LogChunk>) -> pb::LogsData {
        pb::LogsData {
            request_id,
            chunks,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn data_is_routed_by_request_id_and_end_closes_the_stream() {
        let r = LogRouter::default();
        let (a, mut rx_a) = r.open("n1", 1).unwrap();
        let (b, mut rx_b) = r.open("n1", 1).unwrap();
        assert_ne!(a, b);
        assert!(!r.deliver("n1", data(b, vec![chunk("to-b")])));
        assert!(!r.deliver("n1", data(a, vec![chunk("to-a")])));
        let got = rx_a.recv().await.unwrap().unwrap();
        assert_eq!(got[0].data, b"to-a");
        let got = rx_b.recv().await.unwrap().unwrap();
        assert_eq!(got[0].data, b"to-b");
        let mut end = data(a, vec![chunk("last")]);
        end.end = true;
        assert!(!r.deliver("n1", end));
        assert_eq!(rx_a.recv().await.unwrap().unwrap()[0].data, b"last");
        assert!(rx_a.recv().await.is_none(), "end closes the stream");
        assert_eq!(r.open_on("n1"), 1);
        // Late data for an ended request is dropped quietly.
        assert!(!r.deliver("n1", data(a, vec![chunk("late")])));
    }

    #[tokio::test]
    async fn the_agents_first_answer_reaches_the_stream_without_ending_it() {
        let r = LogRouter::default();
        let (a, mut rx) = r.open("n1", 1).unwrap();
        assert!(!r.deliver("n1", data(a, Vec::new())));
        assert!(rx.recv().await.unwrap().unwrap().is_empty());
        assert_eq!(r.open_on("n1"), 1);
        assert!(!r.deliver("n1", data(a, vec![chunk("x")])));
        assert_eq!(rx.recv().await.unwrap().unwrap()[0].data, b"x");
    }

    #[tokio::test]
    async fn an_agent_error_ends_the_stream_with_it() {
        let r = LogRouter::default();
        let (a, mut rx) = r.open("n1", 1).unwrap();
        let mut failed = data(a, Vec::new());
        failed.error = "no container".into();
        assert!(!r.deliver("n1", failed));
        let status = rx.recv().await.unwrap().unwrap_err();
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert!(status.message().contains("no container"), "{status:?}");
        assert!(rx.recv().await.is_none());
        assert_eq!(r.open_on("n1"), 0);
    }

    #[tokio::test]
    async fn data_from_another_node_is_not_delivered() {
        let r = LogRouter::default();
        let (a, mut rx) = r.open("n1", 1).unwrap();
        assert!(!r.deliver("n2", data(a, vec![chunk("x")])));
        assert!(rx.try_recv().is_err());
        assert_eq!(r.open_on("n1"), 1);
    }

    #[tokio::test]
    async fn a_closed_route_asks_for_a_cancel_once() {
        let r = LogRouter::default();
        let (a, rx) = r.open("n1", 1).unwrap();
        assert!(r.close(a));
        assert!(!r.close(a));
        drop(rx);
        let (b, rx) = r.open("n1", 1).unwrap();
        drop(rx);
        // The client went away without the route being closed yet.
        assert!(r.deliver("n1", data(b, vec![chunk("x")])));
        assert_eq!(r.open_on("n1"), 0);
    }

    #[tokio::test]
    async fn a_reader_that_falls_behind_is_ended() {
        let r = LogRouter::default();
        let (a, mut rx) = r.open("n1", 1).unwrap();
        let mut cancelled = false;
        for _ in 0..=CLIENT_BUFFER {
            cancelled |= r.deliver("n1", data(a, vec![chunk("x")]));
        }
        assert!(cancelled);
        let mut last = None;
        while let Some(item) = rx.recv().await {
            last = Some(item);
        }
        let status = last.unwrap().unwrap_err();
        assert_eq!(status.code(), Code::ResourceExhausted);
    }

    #[tokio::test]
    async fn the_end_of_a_session_ends_its_routes_only() {
        let r = LogRouter::default();
        let (_, mut old) = r.open("n1", 1).unwrap();
        let (_, mut new) = r.open("n1", 2).unwrap();
        let (_, mut other) = r.open("n2", 1).unwrap();
        r.session_ended("n1", 1);
        let status = old.recv().await.unwrap().unwrap_err();
        assert_eq!(status.code(), Code::Unavailable);
        assert!(old.recv().await.is_none());
        assert!(new.try_recv().is_err());
        assert!(other.try_recv().is_err());
        assert_eq!(r.open_on("n1"), 1);
        assert_eq!(r.open_on("n2"), 1);
    }

    #[test]
    fn streams_per_node_are_bounded() {
        let r = LogRouter::new(2);
        let _a = r.open("n1", 1).unwrap();
        let (b, _rb) = r.open("n1", 1).unwrap();
        let err = r.open("n1", 1).unwrap_err();
        assert_eq!(Status::from(err).code(), Code::ResourceExhausted);
        // Other nodes have their own budget; a closed route frees a slot.
        assert!(r.open("n2", 1).is_ok());
        r.close(b);
        assert!(r.open("n1", 1).is_ok());
    }
}
