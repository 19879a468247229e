//! A loopback TCP proxy, e.g. between an agent and the manager.
use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use super::{accept_loop, Switch};

/// Forwards 127.0.0.1:PORT to a target address until cut.
pub struct TcpProxy {
    addr: SocketAddr,
    switch: Switch,
    accept: JoinHandle<()>,
}

impl TcpProxy {
    /// Listens on 127.0.0.1 (any free port) and forwards to `target`
    /// (`host:port`), connecting anew for every accepted connection.
    pub async fn start(target: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the TCP proxy on 127.0.0.1");
        let addr = listener.local_addr().expect("the TCP proxy's address");
        let switch = Switch::new();
        let target = target.to_string();
        let connect = move || {
            let target = target.clone();
            async move {
                let upstream = TcpStream::connect(&target).await?;
                let _ = upstream.set_nodelay(true);
                Ok(upstream)
            }
        };
        let accept = tokio::spawn(accept_loop(listener, connect, switch.subscribe()));
        Self {
            addr,
            switch,
            accept,
        }
    }

    /// The address to dial, `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// Closes every open connection at once; new connections are closed as
    /// soon as they are accepted, until [`TcpProxy::heal`].
    pub fn cut(&self) {
        self.switch.cut();
    }

    /// Forwards new connections again.
    pub fn heal(&self) {
        self.switch.heal();
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        // Connection tasks end because the switch (their sender) is dropped.
        self.accept.abort();
    }
}
