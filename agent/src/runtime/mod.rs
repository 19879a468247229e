//! The container runtime as the reconciler sees it: a few coarse operations
//! and a stream of container events. Docker is the real implementation
//! ([`docker::DockerRuntime`]); keeping the trait small lets the reconciler be
//! tested against an in-memory fake.
pub mod docker;
mod docker_convert;
mod docker_create;
mod docker_logs;
mod failure;
pub mod metered;
pub mod simulated;
pub mod spec;

#[cfg(test)]
pub(crate) mod fake;

use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use minkube::pb;
use prost_types::Timestamp;

pub use spec::{ContainerSpec, PortKey};

/// Why a runtime operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuntimeError {
    /// The image is absent and the pull policy forbids pulling it.
    #[error("image {image:?} is not on this node and the pull policy is never: load it on the node (docker load / docker import) or use pull policy if-not-present")]
    ImageNotFound {
        /// Image reference of the task.
        image: String,
    },
    /// The image is absent and pulling it failed.
    #[error("image {image:?} is not on this node and could not be pulled: {message}; check the image name, or load the image on the node (docker load / docker import)")]
    PullFailed {
        /// Image reference of the task.
        image: String,
        /// HTTP status of the daemon's answer, if it answered with one.
        status: Option<u16>,
        /// The daemon's words.
        message: String,
    },
    /// Pull policy "always" and the pull failed (a local copy is not used).
    #[error("image {image:?} could not be pulled (pull policy is always): {message}; use pull policy if-not-present to run the copy already on the node")]
    RefreshFailed {
        /// Image reference of the task.
        image: String,
        /// HTTP status of the daemon's answer, if it answered with one.
        status: Option<u16>,
        /// The daemon's words.
        message: String,
    },
    /// The task spec cannot be turned into a container.
    #[error("invalid task spec: {0}")]
    InvalidSpec(String),
    /// The container (or image) does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// The daemon answered but refused the request.
    #[error("Docker could not {action}: {message}")]
    Daemon {
        /// What was attempted, e.g. "start the container".
        action: &'static str,
        /// HTTP status of the answer; `None` for an error inside a response
        /// stream (e.g. a pull's progress) or a malformed answer.
        status: Option<u16>,
        /// The daemon's words.
        message: String,
    },
    /// The daemon could not be reached or did not answer in time.
    #[error("cannot reach Docker: {0} (is dockerd running? DOCKER_HOST selects its socket)")]
    Unavailable(String),
}

impl RuntimeError {
    /// The daemon itself could not be reached (it may come back).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }

    /// HTTP status of the daemon's answer, where there was one.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Daemon { status, .. }
            | Self::PullFailed { status, .. }
            | Self::RefreshFailed { status, .. } => *status,
            Self::NotFound(_) => Some(404),
            Self::ImageNotFound { .. } | Self::InvalidSpec(_) | Self::Unavailable(_) => None,
        }
    }

    /// The underlying message, without this error's own wording.
    pub fn detail(&self) -> String {
        match self {
            Self::Daemon { message, .. }
            | Self::PullFailed { message, .. }
            | Self::RefreshFailed { message, .. } => message.clone(),
            Self::NotFound(m) | Self::InvalidSpec(m) | Self::Unavailable(m) => m.clone(),
            Self::ImageNotFound { .. } => self.to_string(),
        }
    }
}

/// Lifecycle state of a container as Docker reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerStatus {
    /// Created, never started.
    Created,
    /// Running.
    Running,
    /// Paused (still counts as running for minkube).
    Paused,
    /// Being restarted by Docker.
    Restarting,
    /// Being removed.
    Removing,
    /// Exited.
    Exited,
    /// Dead (failed removal); treated as exited.
    Dead,
    /// Anything else.
    Unknown,
}

impl ContainerStatus {
    /// Its process has ended.
    pub fn is_exited(self) -> bool {
        matches!(self, Self::Exited | Self::Dead)
    }

    /// Its process is alive.
    pub fn is_live(self) -> bool {
        matches!(self, Self::Running | Self::Paused | Self::Restarting)
    }
}

/// Which managed containers to list. Every listing is scoped to one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerFilter {
    /// Node id label the containers carry.
    pub node_id: String,
    /// Only this task.
    pub task_id: Option<String>,
    /// Only this attempt (with `task_id`).
    pub attempt: Option<u32>,
}

impl ContainerFilter {
    /// Every container of the node.
    pub fn node(node_id: &str) -> Self {
        Self {
            node_id: node_id.to_string(),
            task_id: None,
            attempt: None,
        }
    }

    /// Containers of one task, any attempt.
    pub fn task(node_id: &str, task_id: &str) -> Self {
        Self {
            task_id: Some(task_id.to_string()),
            ..Self::node(node_id)
        }
    }

    /// Containers of one attempt of a task.
    pub fn attempt(node_id: &str, task_id: &str, attempt: u32) -> Self {
        Self {
            attempt: Some(attempt),
            ..Self::task(node_id, task_id)
        }
    }
}

/// A managed container as a listing shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerRef {
    /// Docker container id.
    pub id: String,
    /// From the task-id label.
    pub task_id: String,
    /// From the attempt label (0 if unreadable).
    pub attempt: u32,
    /// Lifecycle state.
    pub status: ContainerStatus,
}

/// Everything the agent reports about one container.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerInfo {
    /// Docker container id.
    pub id: String,
    /// From the task-id label.
    pub task_id: String,
    /// From the attempt label (0 if unreadable).
    pub attempt: u32,
    /// Lifecycle state.
    pub status: ContainerStatus,
    /// Exit code, once exited.
    pub exit_code: Option<i32>,
    /// Killed by the kernel's OOM killer.
    pub oom_killed: bool,
    /// Host ports Docker bound.
    pub ports: Vec<pb::PortBinding>,
    /// When the process started.
    pub started_at: Option<Timestamp>,
    /// When the process ended.
    pub finished_at: Option<Timestamp>,
}

/// What happened to a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// The process started.
    Started,
    /// The process ended.
    Died {
        /// Its exit code.
        exit_code: i32,
        /// It was killed for exceeding its memory limit.
        oom_killed: bool,
    },
}

/// One container event of this node.
#[derive(Debug, Clone, PartialEq)]
pub struct RuntimeEvent {
    /// Docker container id.
    pub container_id: String,
    /// From the task-id label.
    pub task_id: String,
    /// From the attempt label.
    pub attempt: u32,
    /// What happened.
    pub kind: EventKind,
    /// When, as the daemon saw it.
    pub at: Timestamp,
}

/// What to read of a container's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LogOptions {
    /// Keep reading until the container exits.
    pub follow: bool,
    /// Only the last lines; 0 means all.
    pub tail: u32,
    /// Stamp every chunk with the time it was written.
    pub timestamps: bool,
}

/// The operations the agent needs from a container runtime.
#[async_trait]
pub trait Runtime: Send + Sync + 'static {
    /// Succeeds when the daemon answers.
    async fn ping(&self) -> Result<(), RuntimeError>;
    /// Whether the image is on the node.
    async fn image_present(&self, image: &str) -> Result<bool, RuntimeError>;
    /// Pulls the image; the error carries the daemon's message.
    async fn pull_image(&self, image: &str) -> Result<(), RuntimeError>;
    /// Creates and starts a container, then reports it as running (with the
    /// host ports chosen). A container that was created but failed to start is
    /// removed again.
    async fn create_and_start(&self, spec: &ContainerSpec) -> Result<ContainerInfo, RuntimeError>;
    /// Starts a container that exists but was never started.
    async fn start_existing(&self, container_id: &str) -> Result<ContainerInfo, RuntimeError>;
    /// Stops (SIGTERM, then SIGKILL after `timeout`) and removes a container.
    /// Returns its exit code; `Ok(None)` if it was already gone.
    async fn stop_and_remove(
        &self,
        container_id: &str,
        timeout: Duration,
    ) -> Result<Option<i32>, RuntimeError>;
    /// Managed containers matching the filter, in any state.
    async fn list(&self, filter: &ContainerFilter) -> Result<Vec<ContainerRef>, RuntimeError>;
    /// Full details of one container; `Ok(None)` if it does not exist.
    async fn inspect(&self, container_id: &str) -> Result<Option<ContainerInfo>, RuntimeError>;
    /// Start/die events of the node's containers from `since_secs` (unix
    /// seconds) on. The stream ends or yields an error when the connection
    /// to the daemon breaks.
    fn events(
        &self,
        node_id: &str,
        since_secs: i64,
    ) -> BoxStream<'static, Result<RuntimeEvent, RuntimeError>>;
    /// A container's output (stdout and stderr, each chunk marked), also of
    /// an exited container. With `follow` the stream ends when the container
    /// exits.
    fn logs(
        &self,
        container_id: &str,
        options: LogOptions,
    ) -> BoxStream<'static, Result<pb::LogChunk, RuntimeError>>;
}

/// Makes sure the image is usable under the task's pull policy. `on_pull` is
/// called just before a pull starts, so the caller can report it.
pub async fn ensure_image(
    rt: &dyn Runtime,
    image: &str,
    policy: pb::PullPolicy,
    on_pull: impl FnOnce(),
) -> Result<(), RuntimeError> {
    let present = rt.image_present(image).await?;
    let must_pull = match policy {
        pb::PullPolicy::Never => {
            return if present {
                Ok(())
            } else {
                Err(RuntimeError::ImageNotFound {
                    image: image.to_string(),
                })
            };
        }
        pb::PullPolicy::Always => true,
        pb::PullPolicy::IfNotPresent | pb::PullPolicy::Unspecified => !present,
    };
    if !must_pull {
        return Ok(());
    }
    on_pull();
    match rt.pull_image(image).await {
        Ok(()) => Ok(()),
        Err(e) if e.is_unavailable() => Err(e),
        Err(e) if present => Err(RuntimeError::RefreshFailed {
            image: image.to_string(),
            status: e.status(),
            message: e.detail(),
        }),
        Err(e) => Err(RuntimeError::PullFailed {
            image: image.to_string(),
            status: e.status(),
            message: e.detail(),
        }),
    }
}

/// Formats an error with its whole source chain, for messages users read.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::fake::FakeRuntime;
    use super::*;

    #[tokio::test]
    async fn never_policy_fails_on_missing_image_without_pulling() {
        let rt = FakeRuntime::new();
        let err = ensure_image(&rt, "nope:1", pb::PullPolicy::Never, || {})
            .await
            .unwrap_err();
        assert!(matches!(err, RuntimeError::ImageNotFound { .. }));
        assert!(err.to_string().contains("\"nope:1\""), "{err}");
        assert_eq!(rt.pulls(), Vec::<String>::new());
    }

    #[tokio::test]
    async fn if_not_present_pulls_only_missing_images() {
        let rt = FakeRuntime::new();
        rt.add_image("have:1");
        let mut pulled = false;
        ensure_image(&rt, "have:1", pb::PullPolicy::IfNotPresent, || {
            pulled = true
        })
        .await
        .unwrap();
        assert!(!pulled);
        rt.set_pullable("get:1");
        ensure_image(&rt, "get:1", pb::PullPolicy::Unspecified, || pulled = true)
            .await
            .unwrap();
        assert!(pulled);
        assert_eq!(rt.pulls(), vec!["get:1".to_string()]);
    }

    #[tokio::test]
    async fn failed_pull_names_image_and_daemon_message() {
        let rt = FakeRuntime::new();
        let err = ensure_image(&rt, "nope:1", pb::PullPolicy::IfNotPresent, || {})
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("image \"nope:1\" is not on this node and could not be pulled: "),
            "{text}"
        );
        assert!(text.contains("pull access denied"), "{text}");
    }

    #[tokio::test]
    async fn always_policy_pulls_even_when_present() {
        let rt = FakeRuntime::new();
        rt.add_image("have:1");
        let err = ensure_image(&rt, "have:1", pb::PullPolicy::Always, || {})
            .await
            .unwrap_err();
        assert!(matches!(err, RuntimeError::RefreshFailed { .. }), "{err}");
        rt.set_pullable("have:1");
        ensure_image(&rt, "have:1", pb::PullPolicy::Always, || {})
            .await
            .unwrap();
    }
}
