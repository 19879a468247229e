//! The `TaskLogs` call: checks, the request down the agent stream, and the
//! client's end of the route.
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use minkube::pb::{self, manager_message::Msg};
use tokio::time::Sleep;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::Status;

use super::{Item, FIRST_ANSWER_TIMEOUT};
use crate::cluster::Cluster;
use crate::error::ManagerError;

/// The client's end of a `TaskLogs` call. Dropping it (the client went
/// away) ends the route and tells the agent to stop reading.
pub struct TaskLogStream {
    rx: ReceiverStream<Item>,
    pending: std::vec::IntoIter<pb::LogChunk>,
    /// Until the node's first answer: when it must have come.
    first_answer: Option<Pin<Box<Sleep>>>,
    /// Name of the node, for the error of a request it left unanswered.
    node_name: String,
    guard: RouteGuard,
}

struct RouteGuard {
    cluster: Arc<Cluster>,
    node_id: String,
    request_id: u64,
}

impl Drop for RouteGuard {
    fn drop(&mut self) {
        if !self.cluster.logs.close(self.request_id) {
            return;
        }
        let cluster = Arc::clone(&self.cluster);
        let node_id = std::mem::take(&mut self.node_id);
        let request_id = self.request_id;
        self.cluster.tasks.spawn(async move {
            let cancel = Msg::LogsCancel(pb::LogsCancel { request_id });
            cluster.send(&node_id, cancel).await;
        });
    }
}

impl Stream for TaskLogStream {
    type Item = Result<pb::TaskLogsResponse, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if let Some(chunk) = self.pending.next() {
                return Poll::Ready(Some(Ok(pb::TaskLogsResponse { chunk: Some(chunk) })));
            }
            match Pin::new(&mut self.rx).poll_next(cx) {
                Poll::Ready(Some(item)) => {
                    self.first_answer = None;
                    match item {
                        Ok(chunks) => self.pending = chunks.into_iter(),
                        Err(status) => return Poll::Ready(Some(Err(status))),
                    }
                }
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return self.poll_first_answer(cx),
            }
        }
    }
}

impl TaskLogStream {
    /// The request id this stream is routed by.
    pub fn request_id(&self) -> u64 {
        self.guard.request_id
    }

    /// Nothing queued: ends the stream if the node let the time for its first
    /// answer pass (its agent or Docker is stuck, or it lost the request).
    /// The route's guard tells the agent to stop when the stream is dropped.
    fn poll_first_answer(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<pb::TaskLogsResponse, Status>>> {
        let Some(deadline) = self.first_answer.as_mut() else {
            return Poll::Pending;
        };
        if deadline.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        self.first_answer = None;
        // Nothing is queued: the stream ends after this error.
        self.rx.close();
        Poll::Ready(Some(Err(Status::deadline_exceeded(format!(
            "node {} did not answer the log request within {} s: its agent or Docker may be stuck; check `minkube nodes` and the agent's log, then try again",
            self.node_name,
            FIRST_ANSWER_TIMEOUT.as_secs()
        )))))
    }
}

impl Cluster {
    /// Starts relaying a task's logs from its node.
    pub async fn task_logs(
        self: &Arc<Self>,
        req: pb::TaskLogsRequest,
    ) -> Result<TaskLogStream, ManagerError> {
        let (node_id, node_name, session, attempt) = {
            let st = self.lock();
            let task = st
                .tasks
                .get(&req.task_id)
                .ok_or_else(|| ManagerError::TaskNotFound(req.task_id.clone()))?;
            let status = task.status();
            if status.node_id.is_empty() || status.container_id.is_empty() {
                return Err(ManagerError::NoContainer(req.task_id.clone()));
            }
            let node = st.nodes().get(&status.node_id);
            let name = node.map_or(status.node_id.as_str(), |n| n.node.name.as_str());
            match node.and_then(|n| n.session.as_ref()) {
                Some(s) => (
                    status.node_id.clone(),
                    name.to_string(),
                    s.id,
                    status.attempt,
                ),
                None => {
                    return Err(ManagerError::NodeOffline {
                        node: name.to_string(),
                        silent_secs: node.map_or(0, |n| n.last_seen.elapsed().as_secs()),
                    })
                }
            }
        };
        let (request_id, rx) = self.logs.open(&node_id, session)?;
        let stream = TaskLogStream {
            rx: ReceiverStream::new(rx),
            pending: Vec::new().into_iter(),
            first_answer: Some(Box::pin(tokio::time::sleep(FIRST_ANSWER_TIMEOUT))),
            node_name,
            guard: RouteGuard {
                cluster: Arc::clone(self),
                node_id: node_id.clone(),
                request_id,
            },
        };
        let ask = Msg::LogsRequest(pb::LogsRequest {
            request_id,
            task_id: req.task_id.clone(),
            attempt,
            follow: req.follow,
            tail: req.tail,
            timestamps: req.timestamps,
        });
        if !self.send(&node_id, ask).await {
            self.logs.close(request_id);
            let name = self
                .get_node(&node_id)
                .map_or(node_id.clone(), |n| n.name.clone());
            return Err(ManagerError::NodeOffline {
                node: name,
                silent_secs: 0,
            });
        }
        tracing::debug!(task_id = %req.task_id, node_id = %node_id, request_id, "log stream open");
        Ok(stream)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::time::Duration;

    use minkube::pb::manager_message;
    use tokio::sync::mpsc;
    use tokio_stream::StreamExt;
    use tonic::Code;

    use super::*;
    use crate::cluster::ClusterConfig;
    use crate::store::RedbStore;

    type Down = mpsc::Receiver<Result<pb::ManagerMessage, Status>>;

    async fn next_down(rx: &mut Down) -> manager_message::Msg {
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
            .msg
            .unwrap()
    }

    /// A cluster with node "a" connected (its stream is `rx`) running one
    /// task with container "c1".
    async fn running_task(dir: &std::path::Path) -> (Arc<Cluster>, String, String, Down) {
        let store = Arc::new(RedbStore::open(dir).unwrap());
        let c = Cluster::start(store, ClusterConfig::default()).unwrap();
        let (node_id, mut rx) = crate::cluster::test_node(&c, "a", 10_000, 16).await;
        let spec = pb::TaskSpec {
            name: "t".into(),
            image: "busybox".into(),
            memory_mb: 16,
            ..Default::default()
        };
        let task = c.create_task(Some(spec)).await.unwrap();
        loop {
            if let manager_message::Msg::Assignment(_) = next_down(&mut rx).await {
                break;
            }
        }
        let update = pb::TaskStatusUpdate {
            task_id: task.id.clone(),
            attempt: 1,
            sequence: 1,
            state: pb::TaskState::Running as i32,
            container_id: "c1".into(),
            ..Default::default()
        };
        c.apply_status(
            &node_id,
            pb::StatusBatch {
                updates: vec![update],
                full_sync: false,
            },
        )
        .await
        .unwrap();
        (c, node_id, task.id, rx)
    }

    fn request(task_id: &str) -> pb::TaskLogsRequest {
        pb::TaskLogsRequest {
            task_id: task_id.into(),
            follow: true,
            tail: 5,
            timestamps: false,
        }
    }

    #[tokio::test]
    async fn logs_are_asked_of_the_node_and_relayed_to_the_client() {
        let dir = tempfile::tempdir().unwrap();
        let (c, node_id, task_id, mut rx) = running_task(dir.path()).await;
        let mut stream = c.task_logs(request(&task_id)).await.unwrap();
        let manager_message::Msg::LogsRequest(ask) = next_down(&mut rx).await else {
            panic!("expected a LogsRequest");
        };
        assert_eq!(ask.request_id, stream.request_id());
        assert_eq!((ask.task_id.as_str(), ask.attempt), (task_id.as_str(), 1));
        assert!(ask.follow);
        assert_eq!(ask.tail, 5);
        let chunk = |text: &str, stream: pb::LogStream| pb::LogChunk {
            stream: stream as i32,
            data: text.as_bytes().to_vec(),
            timestamp: None,
        };
        let data = pb::LogsData {
            request_id: ask.request_id,
            chunks: vec![
                chunk("out\n", pb::LogStream::Stdout),
                chunk("err\n", pb::LogStream::Stderr),
            ],
            end: true,
            error: String::new(),
        };
        assert!(!c.logs.deliver(&node_id, data));
        let got: Vec<_> = (&mut stream).collect().await;
        assert_eq!(got.len(), 2);
        let second = got[1].as_ref().unwrap().chunk.clone().unwrap();
        assert_eq!(second.stream(), pb::LogStream::Stderr);
        drop(stream);

        // A client that goes away before the end: the agent is told to stop.
        let stream = c.task_logs(request(&task_id)).await.unwrap();
        let id = stream.request_id();
        let _ = next_down(&mut rx).await;
        drop(stream);
        match next_down(&mut rx).await {
            manager_message::Msg::LogsCancel(x) => assert_eq!(x.request_id, id),
            other => panic!("expected a LogsCancel, got {other:?}"),
        }
        assert_eq!(c.logs.open_on(&node_id), 0);
        c.shutdown(Duration::from_secs(1)).await;
    }

    #[tokio::test]
    async fn a_node_that_never_answers_ends_the_stream_and_is_told_to_stop() {
        let dir = tempfile::tempdir().unwrap();
        let (c, node_id, task_id, mut rx) = running_task(dir.path()).await;
        tokio::time::pause();
        let mut stream = c.task_logs(request(&task_id)).await.unwrap();
        let id = stream.request_id();
        let manager_message::Msg::LogsRequest(_) = next_down(&mut rx).await else {
            panic!("expected a LogsRequest");
        };
        let asked = tokio::time::Instant::now();
        let status = stream.next().await.unwrap().unwrap_err();
        assert!(asked.elapsed() >= FIRST_ANSWER_TIMEOUT);
        assert_eq!(status.code(), Code::DeadlineExceeded);
        assert!(
            status.message().contains("node a did not answer"),
            "{status:?}"
        );
        assert!(stream.next().await.is_none(), "the stream ends after it");
        drop(stream);
        match next_down(&mut rx).await {
            manager_message::Msg::LogsCancel(x) => assert_eq!(x.request_id, id),
            other => panic!("expected a LogsCancel, got {other:?}"),
        }
        assert_eq!(c.logs.open_on(&node_id), 0);
        tokio::time::resume();
        c.shutdown(Duration::from_secs(1)).await;
    }

    #[tokio::test]
    async fn a_request_the_node_took_stays_open_while_the_container_is_quiet() {
        let dir = tempfile::tempdir().unwrap();
        let (c, node_id, task_id, mut rx) = running_task(dir.path()).await;
        tokio::time::pause();
        let mut stream = c.task_logs(request(&task_id)).await.unwrap();
        let manager_message::Msg::LogsRequest(ask) = next_down(&mut rx).await else {
            panic!("expected a LogsRequest");
        };
        // The agent's first answer: it took the request.
        let taken = pb::LogsData {
            request_id: ask.request_id,
            ..Default::default()
        };
        assert!(!c.logs.deliver(&node_id, taken));
        let quiet = tokio::time::timeout(FIRST_ANSWER_TIMEOUT * 4, stream.next()).await;
        assert!(quiet.is_err(), "a quiet follow stays open: {quiet:?}");
        let output = pb::LogsData {
            request_id: ask.request_id,
            chunks: vec![pb::LogChunk {
                stream: pb::LogStream::Stdout as i32,
                data: b"late\n".to_vec(),
                timestamp: None,
            }],
            end: true,
            error: String::new(),
        };
        assert!(!c.logs.deliver(&node_id, output));
        let chunk = stream.next().await.unwrap().unwrap().chunk.unwrap();
        assert_eq!(chunk.data, b"late\n");
        assert!(stream.next().await.is_none());
        tokio::time::resume();
        c.shutdown(Duration::from_secs(1)).await;
    }

    #[tokio::test]
    async fn unknown_tasks_tasks_without_container_and_offline_nodes_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (c, node_id, task_id, _rx) = running_task(dir.path()).await;
        let err = c.task_logs(request("nope")).await.err().unwrap();
        assert_eq!(Status::from(err).code(), Code::NotFound);

        let too_big = pb::TaskSpec {
            name: "big".into(),
            image: "busybox".into(),
            memory_mb: 1_000_000,
            ..Default::default()
        };
        let pending = c.create_task(Some(too_big)).await.unwrap();
        let err = Status::from(c.task_logs(request(&pending.id)).await.err().unwrap());
        assert_eq!(err.code(), Code::FailedPrecondition);
        assert!(err.message().contains("no container"), "{err:?}");

        c.detach_session(&node_id, 1);
        let err = Status::from(c.task_logs(request(&task_id)).await.err().unwrap());
        assert_eq!(err.code(), Code::Unavailable);
        assert!(err.message().contains("node a is offline"), "{err:?}");
        c.shutdown(Duration::from_secs(1)).await;
    }
}
