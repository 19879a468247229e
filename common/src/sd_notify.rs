//! systemd's notify protocol (sd_notify(3)) for `Type=notify` units:
//! `READY=1` once the process serves, `STOPPING=1` on shutdown, `STATUS=`
//! lines for `systemctl status`, and `WATCHDOG=1` pings at half of
//! `WatchdogSec`. Everything is a no-op when systemd did not ask for it (no
//! `NOTIFY_SOCKET`), so the binaries behave the same outside a unit.
use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::Arc;
use std::time::Duration;

/// Where notifications go; cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Notifier {
    target: Option<Arc<Target>>,
    watchdog: Option<Duration>,
}

#[derive(Debug)]
struct Target {
    socket: UnixDatagram,
    addr: SocketAddr,
}

impl Notifier {
    /// From `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` as systemd
    /// sets them. A socket that cannot be used is logged and ignored: the
    /// service still runs (systemd then reports the start as timed out).
    pub fn from_env() -> Self {
        let watchdog = watchdog_from(
            std::env::var("WATCHDOG_USEC").ok().as_deref(),
            std::env::var("WATCHDOG_PID").ok().as_deref(),
            std::process::id(),
        );
        match std::env::var("NOTIFY_SOCKET") {
            Ok(path) if !path.is_empty() => match Self::to_socket(&path) {
                Ok(mut n) => {
                    n.watchdog = watchdog;
                    n
                }
                Err(e) => {
                    tracing::warn!(socket = %path, error = %e, "cannot use NOTIFY_SOCKET; systemd will not hear that the service is ready");
                    Self::default()
                }
            },
            _ => Self::default(),
        }
    }

    /// Notifications to the datagram socket at `path` (`@name` for an
    /// abstract socket), without a watchdog.
    pub fn to_socket(path: &str) -> io::Result<Self> {
        let addr = match path.strip_prefix('@') {
            Some(name) => abstract_addr(name.as_bytes())?,
            None => SocketAddr::from_pathname(path)?,
        };
        let socket = UnixDatagram::unbound()?;
        // Never stall the async runtime on a full socket buffer: a lost
        // status line is harmless, the next one follows.
        socket.set_nonblocking(true)?;
        Ok(Self {
            target: Some(Arc::new(Target { socket, addr })),
            watchdog: None,
        })
    }

    /// Whether anything listens (started as a notify unit).
    pub fn is_enabled(&self) -> bool {
        self.target.is_some()
    }

    /// Sends raw `KEY=VALUE` lines.
    pub fn notify(&self, state: &str) {
        let Some(t) = &self.target else { return };
        if let Err(e) = t.socket.send_to_addr(state.as_bytes(), &t.addr) {
            tracing::debug!(error = %e, "sd_notify message not sent");
        }
    }

    /// The service is up; `status` shows in `systemctl status`.
    pub fn ready(&self, status: &str) {
        self.notify(&format!("READY=1\nSTATUS={}", one_line(status)));
    }

    /// A new status line.
    pub fn status(&self, status: &str) {
        self.notify(&format!("STATUS={}", one_line(status)));
    }

    /// Shutdown has begun.
    pub fn stopping(&self, status: &str) {
        self.notify(&format!("STOPPING=1\nSTATUS={}", one_line(status)));
    }

    /// How often to ping the watchdog: half of `WatchdogSec`, if set for us.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog.map(|w| w / 2)
    }

    /// Pings the watchdog from the async runtime while the returned guard
    /// lives, so a stalled runtime stops the pings and systemd restarts the
    /// service. `None` when no watchdog is configured. Needs a Tokio runtime.
    pub fn spawn_watchdog(&self) -> Option<WatchdogGuard> {
        let every = self.watchdog_interval()?;
        self.target.as_ref()?;
        let me = self.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                me.notify("WATCHDOG=1");
            }
        });
        Some(WatchdogGuard(task))
    }

    #[cfg(test)]
    fn with_watchdog(mut self, every: Duration) -> Self {
        self.watchdog = Some(every);
        self
    }
}

/// Stops the watchdog pings when dropped.
#[derive(Debug)]
pub struct WatchdogGuard(tokio::task::JoinHandle<()>);

impl Drop for WatchdogGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(target_os = "linux")]
fn abstract_addr(name: &[u8]) -> io::Result<SocketAddr> {
    use std::os::linux::net::SocketAddrExt;
    SocketAddr::from_abstract_name(name)
}

#[cfg(not(target_os = "linux"))]
fn abstract_addr(_name: &[u8]) -> io::Result<SocketAddr> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "abstract sockets exist on Linux only",
    ))
}

/// `WATCHDOG_USEC` applies when `WATCHDOG_PID` is unset or names us.
fn watchdog_from(usec: Option<&str>, pid: Option<&str>, me: u32) -> Option<Duration> {
    if let Some(pid) = pid {
        if pid.trim().parse::<u32>().ok() != Some(me) {
            return None;
        }
    }
    let usec: u64 = usec?.trim().parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec))
}

fn one_line(s: &str) -> String {
    s.replace('\n', " ")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn listener() -> (tempfile::TempDir, UnixDatagram, String) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        (dir, sock, path.to_string_lossy().into_owned())
    }

    fn recv(sock: &UnixDatagram) -> String {
        let mut buf = [0u8; 512];
        let n = sock.recv(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[test]
    fn ready_status_and_stopping_reach_the_socket() {
        let (_dir, sock, path) = listener();
        let n = Notifier::to_socket(&path).unwrap();
        assert!(n.is_enabled());
        n.ready("serving on\n127.0.0.1:7070");
        assert_eq!(recv(&sock), "READY=1\nSTATUS=serving on 127.0.0.1:7070");
        n.status("3 nodes");
        assert_eq!(recv(&sock), "STATUS=3 nodes");
        n.stopping("draining");
        assert_eq!(recv(&sock), "STOPPING=1\nSTATUS=draining");
    }

    #[test]
    fn abstract_socket_names_work() {
        let name = format!("minkube-notify-test-{}", std::process::id());
        let sock = UnixDatagram::bind_addr(&abstract_addr(name.as_bytes()).unwrap()).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        Notifier::to_socket(&format!("@{name}"))
            .unwrap()
            .ready("up");
        assert_eq!(recv(&sock), "READY=1\nSTATUS=up");
    }

    #[test]
    fn without_a_socket_nothing_happens() {
        let n = Notifier::default();
        assert!(!n.is_enabled());
        n.ready("x");
        assert!(n.watchdog_interval().is_none());
    }

    #[test]
    fn watchdog_applies_to_the_named_pid_only() {
        assert_eq!(
            watchdog_from(Some("30000000"), None, 7),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            watchdog_from(Some("30000000"), Some("7"), 7),
            Some(Duration::from_secs(30))
        );
        assert_eq!(watchdog_from(Some("30000000"), Some("8"), 7), None);
        assert_eq!(watchdog_from(Some("0"), None, 7), None);
        assert_eq!(watchdog_from(Some("x"), None, 7), None);
        assert_eq!(watchdog_from(None, None, 7), None);
    }

    #[tokio::test(start_paused = true)]
    async fn watchdog_pings_at_half_the_timeout_until_dropped() {
        let (_dir, sock, path) = listener();
        sock.set_nonblocking(true).unwrap();
        let n = Notifier::to_socket(&path)
            .unwrap()
            .with_watchdog(Duration::from_secs(10));
        assert_eq!(n.watchdog_interval(), Some(Duration::from_secs(5)));
        let guard = n.spawn_watchdog().unwrap();
        // Ticks at 0 s, 5 s and 10 s.
        tokio::time::sleep(Duration::from_millis(10_500)).await;
        let mut buf = [0u8; 64];
        let mut pings = 0;
        while let Ok(k) = sock.recv(&mut buf) {
            assert_eq!(&buf[..k], b"WATCHDOG=1");
            pings += 1;
        }
        assert_eq!(pings, 3);
        drop(guard);
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert!(
            sock.recv(&mut buf).is_err(),
            "no ping after the guard is dropped"
        );
    }
}
