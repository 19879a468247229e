//! Reading the manager's start-up line from its stdout.
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::ChildStdout;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::process::{open_append, tail, ManagedProcess, LOG_TAIL};

/// How long the manager may take to print its listening line.
const MANAGER_START: Duration = Duration::from_secs(30);
/// The line the manager prints once it serves, followed by its address.
const LISTENING: &str = "minkube-manager listening on ";
/// The line with the address of its HTTP admin endpoint (printed first).
const ADMIN: &str = "minkube-manager admin on ";

/// Forwards each stdout line to a log file and a channel.
pub fn forward_lines(stdout: ChildStdout, log: PathBuf) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    // Ends when the process closes its stdout (it exits or is killed).
    std::thread::spawn(move || {
        let mut file = open_append(&log);
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = writeln!(file, "{line}");
            let _ = tx.send(line);
        }
    });
    rx
}

/// Addresses a manager printed on start.
#[derive(Debug, Clone, Default)]
pub struct ManagerAddrs {
    /// gRPC address.
    pub grpc: String,
    /// HTTP admin address (/metrics, /healthz, /readyz), if printed.
    pub admin: Option<String>,
}

/// Waits for the manager's `listening on ADDR` line and returns the
/// addresses it printed.
pub fn wait_listening(
    lines: &mpsc::Receiver<String>,
    process: &mut ManagedProcess,
) -> ManagerAddrs {
    let deadline = Instant::now() + MANAGER_START;
    let mut admin = None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => {
                if let Some(addr) = line.trim().strip_prefix(ADMIN) {
                    admin = Some(addr.trim().to_string());
                }
                if let Some(addr) = line.trim().strip_prefix(LISTENING) {
                    return ManagerAddrs {
                        grpc: addr.trim().to_string(),
                        admin,
                    };
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => panic!(
                "the manager printed no `{LISTENING}ADDR` line within {MANAGER_START:?}; log:\n{}",
                tail(process.log_path(), LOG_TAIL)
            ),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                // Give the exit status a moment to be observable.
                std::thread::sleep(Duration::from_millis(200));
                panic!(
                    "the manager closed its stdout before listening (exit: {:?}); log:\n{}",
                    process.exit_status(),
                    tail(process.log_path(), LOG_TAIL)
                )
            }
        }
    }
}
