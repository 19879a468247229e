//! Byte-for-byte forwarders the tests can break on purpose: a TCP proxy in
//! front of the manager (network partitions) and a unix-socket proxy in
//! front of Docker (daemon unreachable). Both close every open connection
//! at once when cut, close new ones while cut, and end all their tasks
//! when dropped.
mod docker_socket;
mod tcp;

pub use docker_socket::DockerSocketProxy;
pub use tcp::TcpProxy;

use std::future::Future;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::watch;

/// Whether a proxy forwards. `epoch` grows on every cut, so a connection
/// opened before a cut closes even if the proxy is healed before its task
/// looks at the state again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct LinkState {
    open: bool,
    epoch: u64,
}

/// The owner's end of a proxy's state; dropping it ends every task of the
/// proxy (their receivers see the channel closed).
struct Switch {
    tx: watch::Sender<LinkState>,
}

impl Switch {
    fn new() -> Self {
        let (tx, _) = watch::channel(LinkState {
            open: true,
            epoch: 0,
        });
        Self { tx }
    }

    fn subscribe(&self) -> watch::Receiver<LinkState> {
        self.tx.subscribe()
    }

    /// Closes every connection and refuses new ones until [`Switch::heal`].
    fn cut(&self) {
        self.tx.send_modify(|s| {
            s.open = false;
            s.epoch += 1;
        });
    }

    /// Forwards new connections again.
    fn heal(&self) {
        self.tx.send_modify(|s| s.open = true);
    }
}

/// Returns once the proxy is cut after `epoch`, or dropped.
async fn cut_or_dropped(rx: &mut watch::Receiver<LinkState>, epoch: u64) {
    loop {
        let state = *rx.borrow_and_update();
        if state.epoch != epoch || !state.open {
            return;
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// Returns once the proxy's owner is gone.
async fn dropped(rx: &mut watch::Receiver<LinkState>) {
    while rx.changed().await.is_ok() {}
}

/// Copies both ways between `client` and `upstream` until either side
/// closes, the proxy is cut, or the proxy is dropped; then closes both.
async fn pump<A, B>(mut client: A, mut upstream: B, mut rx: watch::Receiver<LinkState>, epoch: u64)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
        _ = cut_or_dropped(&mut rx, epoch) => {}
    }
}

/// A listener a proxy accepts clients on.
trait Accept: Send + 'static {
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn accept_one(&self) -> impl Future<Output = std::io::Result<Self::Stream>> + Send;
}

impl Accept for TcpListener {
    type Stream = TcpStream;
    async fn accept_one(&self) -> std::io::Result<TcpStream> {
        let (s, _) = self.accept().await?;
        let _ = s.set_nodelay(true);
        Ok(s)
    }
}

impl Accept for UnixListener {
    type Stream = UnixStream;
    async fn accept_one(&self) -> std::io::Result<UnixStream> {
        Ok(self.accept().await?.0)
    }
}

/// Accepts clients until the proxy is dropped; while the link is open each
/// gets a fresh upstream connection from `connect` and is pumped; while cut,
/// clients are closed at once. A failed upstream connect closes the client,
/// as a dead host would.
async fn accept_loop<L, U, C, F>(listener: L, connect: C, mut rx: watch::Receiver<LinkState>)
where
    L: Accept,
    U: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    C: Fn() -> F + Clone + Send + 'static,
    F: Future<Output = std::io::Result<U>> + Send,
{
    let mut owner = rx.clone();
    loop {
        let accepted = tokio::select! {
            a = listener.accept_one() => a,
            () = dropped(&mut owner) => return,
        };
        let Ok(client) = accepted else {
            // e.g. too many open files: try again shortly.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let state = *rx.borrow_and_update();
        if !state.open {
            drop(client);
            continue;
        }
        let conn_rx = rx.clone();
        let connect = connect.clone();
        tokio::spawn(async move {
            if let Ok(upstream) = connect().await {
                pump(client, upstream, conn_rx, state.epoch).await;
            }
        });
    }
}
