//! Child processes started by a test: killed (by their own pid only) when
//! dropped, with their output in a log file the test can print on failure.
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};

/// Lines of each log printed when a test fails.
pub const LOG_TAIL: usize = 80;

/// A process this test started.
pub struct ManagedProcess {
    label: String,
    child: Option<Child>,
    log: PathBuf,
}

impl ManagedProcess {
    /// Starts `program args` with `env` added to the test's environment,
    /// stderr appended to `log` (and stdout too unless `pipe_stdout`, in
    /// which case the pipe is returned).
    pub fn spawn(
        label: &str,
        program: &Path,
        args: &[String],
        env: &[(String, String)],
        log: &Path,
        pipe_stdout: bool,
    ) -> (Self, Option<ChildStdout>) {
        let mut file = open_append(log);
        // A marker so restarts of the same process are easy to tell apart.
        let env_shown: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v} ")).collect();
        writeln!(
            file,
            "--- starting {label}: {}{} {}",
            env_shown.concat(),
            program.display(),
            args.join(" ")
        )
        .expect("write to the log file");
        let stderr = file.try_clone().expect("clone the log file handle");
        let stdout = if pipe_stdout {
            Stdio::piped()
        } else {
            Stdio::from(file)
        };
        let mut child = Command::new(program)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(Stdio::from(stderr))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
        let out = child.stdout.take();
        (
            Self {
                label: label.to_string(),
                child: Some(child),
                log: log.to_path_buf(),
            },
            out,
        )
    }

    /// What the process is, for messages.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Where its output goes.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Its pid while it has not been killed by the harness.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether it already exited, and how.
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Sends SIGTERM and waits up to `timeout` for the exit; `None` if it
    /// is still running then (the caller's drop kills it).
    pub fn terminate(&mut self, timeout: std::time::Duration) -> Option<std::process::ExitStatus> {
        let pid = self.pid()?;
        assert!(crate::signal::send("TERM", pid), "kill -TERM {pid} failed");
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Some(status) = self.exit_status() {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        None
    }

    /// SIGKILL and reap. Only this child's pid is signalled.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for ManagedProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Opens a log file for appending, creating it if needed.
pub fn open_append(path: &Path) -> File {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("cannot open log file {}: {e}", path.display()))
}

/// The last `lines` lines of a text file (empty if unreadable).
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    let start = all.len().saturating_sub(lines);
    all[start..].join("\n")
}
