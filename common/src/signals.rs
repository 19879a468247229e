//! SIGTERM and SIGINT for the binaries: the first asks for a graceful stop,
//! a second (for the daemons) exits at once.
use std::fmt;

use tokio::signal::unix::{signal, Signal, SignalKind};

/// Which stop signal arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopSignal {
    /// SIGTERM: systemd, `kill`, a supervisor.
    Terminate,
    /// SIGINT: Ctrl-C.
    Interrupt,
}

impl fmt::Display for StopSignal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StopSignal::Terminate => "SIGTERM",
            StopSignal::Interrupt => "SIGINT",
        })
    }
}

/// Listens for SIGTERM and SIGINT from the moment it is made: install it
/// before the work starts, so that an early signal is not the default
/// (immediate) exit.
#[derive(Debug)]
pub struct StopSignals {
    term: Signal,
    int: Signal,
}

impl StopSignals {
    /// Installs the handlers (needs a Tokio runtime).
    pub fn install() -> std::io::Result<Self> {
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// The next stop signal.
    pub async fn recv(&mut self) -> StopSignal {
        tokio::select! {
            _ = self.term.recv() => StopSignal::Terminate,
            _ = self.int.recv() => StopSignal::Interrupt,
        }
    }

    /// After the first signal: a second one ends the process at once with
    /// status 130, for an operator who does not want to wait for the
    /// graceful stop. The task lives until the process exits.
    pub fn exit_on_next(mut self) {
        tokio::spawn(async move {
            let second = self.recv().await;
            tracing::warn!(signal = %second, "second signal: exiting now");
            std::process::exit(130);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn send(sig: &str) {
        let status = std::process::Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(std::process::id().to_string())
            .status();
        assert!(status.is_ok_and(|s| s.success()), "kill -{sig} failed");
    }

    // One test for both signals: handlers are per process, and a second test
    // in the same process would see this one's signals.
    #[tokio::test]
    async fn each_signal_is_told_apart_and_does_not_end_the_process() {
        let mut signals = match StopSignals::install() {
            Ok(s) => s,
            Err(e) => panic!("cannot install the handlers: {e}"),
        };
        for (sig, want) in [
            ("TERM", StopSignal::Terminate),
            ("INT", StopSignal::Interrupt),
        ] {
            send(sig);
            let got = tokio::time::timeout(Duration::from_secs(10), signals.recv()).await;
            assert_eq!(got.ok(), Some(want), "after kill -{sig}");
        }
        assert_eq!(StopSignal::Interrupt.to_string(), "SIGINT");
    }
}
