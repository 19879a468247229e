//! A unix socket in front of the Docker daemon's, so a test can make Docker
//! unreachable for one agent only.
use std::path::{Path, PathBuf};

use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinHandle;

use super::{accept_loop, Switch};

/// The daemon's socket.
pub const DOCKER_SOCKET: &str = "/var/run/docker.sock";

/// Forwards a unix socket byte for byte to [`DOCKER_SOCKET`] until failed.
pub struct DockerSocketProxy {
    path: PathBuf,
    switch: Switch,
    accept: JoinHandle<()>,
}

impl DockerSocketProxy {
    /// Listens on `path` (e.g. in the test's temp dir).
    pub async fn start(path: &Path) -> Self {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path)
            .unwrap_or_else(|e| panic!("bind the Docker proxy at {}: {e}", path.display()));
        let switch = Switch::new();
        let connect = || UnixStream::connect(DOCKER_SOCKET);
        let accept = tokio::spawn(accept_loop(listener, connect, switch.subscribe()));
        Self {
            path: path.to_path_buf(),
            switch,
            accept,
        }
    }

    /// The value of `DOCKER_HOST` that reaches Docker through this proxy.
    pub fn docker_host(&self) -> String {
        format!("unix://{}", self.path.display())
    }

    /// Closes every open connection, and closes new ones at once, until
    /// [`DockerSocketProxy::restore`]: Docker looks unreachable.
    pub fn fail(&self) {
        self.switch.cut();
    }

    /// Forwards to Docker again.
    pub fn restore(&self) {
        self.switch.heal();
    }
}

impl Drop for DockerSocketProxy {
    fn drop(&mut self) {
        self.accept.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}
