//! A loopback TCP proxy, e.g. between an agent and the manager.
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use super::{dropped, pump, Switch};

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
        let accept = tokio::spawn(accept_loop(
            listener,
            target.to_string(),
            switch.subscribe(),
        ));
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

async fn accept_loop(
    listener: TcpListener,
    target: String,
    mut rx: tokio::sync::watch::Receiver<super::LinkState>,
) {
    let mut owner = rx.clone();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = dropped(&mut owner) => return,
        };
        let client = match accepted {
            Ok((client, _)) => client,
            Err(_) => {
                // e.g. too many open files: try again shortly.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let state = *rx.borrow_and_update();
        if !state.open {
            drop(client);
            continue;
        }
        let conn_rx = rx.clone();
        let target = target.clone();
        tokio::spawn(async move {
            // Nothing listening upstream: close the client, as a dead host would.
            if let Ok(upstream) = TcpStream::connect(&target).await {
                let _ = client.set_nodelay(true);
                let _ = upstream.set_nodelay(true);
                pump(client, upstream, conn_rx, state.epoch).await;
            }
        });
    }
}
