//! Liveness checks and log tails of a cluster's processes, for failures.
use std::path::Path;

use crate::cluster::{Cluster, Processes};
use crate::process::{tail, ManagedProcess, LOG_TAIL};

impl Cluster {
    /// Panics if a process this cluster started (and did not kill) exited.
    pub fn assert_alive(&self) {
        let mut procs = self.processes.lock().unwrap();
        let Processes { manager, agents } = &mut *procs;
        let all = manager
            .iter_mut()
            .chain(agents.iter_mut().map(|a| &mut a.process));
        for p in all {
            if let Some(status) = p.exit_status() {
                panic!(
                    "{} exited unexpectedly ({status}); its log:\n{}",
                    p.label(),
                    tail(p.log_path(), LOG_TAIL)
                );
            }
        }
    }

    /// The tail of every log, with the exit status of processes that died.
    pub fn logs_report(&self) -> String {
        let mut report = format!("=== cluster {} (run {}) ===\n", self.addr(), self.run_id);
        let mut section = |label: &str, status: Option<String>, path: &Path| {
            report.push_str(&format!(
                "--- {label} ({}){} ---\n{}\n",
                path.display(),
                status.map(|s| format!(", exited: {s}")).unwrap_or_default(),
                tail(path, LOG_TAIL)
            ));
        };
        // A panic while the lock was held must not hide the logs.
        let mut procs = self
            .processes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let manager_status = procs
            .manager
            .as_mut()
            .and_then(ManagedProcess::exit_status)
            .map(|s| s.to_string());
        section("manager", manager_status, &self.dir().join("manager.log"));
        // Every agent ever added, including killed ones: their logs stay.
        let mut names: Vec<&String> = self.agent_options.keys().collect();
        names.sort();
        for name in names {
            let running = procs.agents.iter_mut().find(|a| &a.name == name);
            let (label, status) = match running {
                Some(a) => (
                    a.process.label().to_string(),
                    a.process.exit_status().map(|s| s.to_string()),
                ),
                None => (format!("agent {name} (not running)"), None),
            };
            section(
                &label,
                status,
                &self.dir().join(format!("agent-{name}.log")),
            );
        }
        report
    }
}
