//! Pausing a process with SIGSTOP, through the `kill` command (the crate
//! forbids unsafe code, so no libc).
use std::process::Command;

/// Sends `signal` (e.g. "TERM") to `pid`, a process the test started.
pub fn send(signal: &str, pid: u32) -> bool {
    Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .is_ok_and(|s| s.success())
}

/// A process paused with SIGSTOP; SIGCONT is sent when this is resumed or
/// dropped, so a failing test never leaves a stopped process behind.
pub struct Paused {
    pid: u32,
    resumed: bool,
}

impl Paused {
    /// Sends SIGSTOP to `pid` (a process the test started).
    pub fn stop(pid: u32) -> Self {
        assert!(send("STOP", pid), "kill -STOP {pid} failed");
        Self {
            pid,
            resumed: false,
        }
    }

    /// Sends SIGCONT.
    pub fn resume(mut self) {
        self.cont();
    }

    fn cont(&mut self) {
        if !self.resumed {
            self.resumed = true;
            assert!(send("CONT", self.pid), "kill -CONT {} failed", self.pid);
        }
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        if !self.resumed {
            self.resumed = true;
            // No panic while unwinding: just try.
            let _ = send("CONT", self.pid);
        }
    }
}
