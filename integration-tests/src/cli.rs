//! The cluster's CLI helpers: the `minkube` binary pointed at its manager.
use std::process::{Output, Stdio};
use std::time::Duration;

use crate::binaries::{binary, CLI};
use crate::cluster::Cluster;

/// How long one CLI invocation may take.
const CLI_TIMEOUT: Duration = Duration::from_secs(30);

impl Cluster {
    /// Runs the CLI with `--manager` pointing at this cluster.
    pub async fn cli(&self, args: &[&str]) -> Output {
        self.cli_env(&[], args).await
    }

    /// Runs the CLI with extra environment variables.
    pub async fn cli_env(&self, env: &[(&str, &str)], args: &[&str]) -> Output {
        let mut cmd = tokio::process::Command::new(binary(CLI));
        if let Some(s) = &self.security {
            cmd.env("MINKUBE_CA_CERT", &s.ca_path)
                .env("MINKUBE_TOKEN", &s.admin_token);
        }
        cmd.envs(env.iter().copied())
            .arg("--manager")
            .arg(self.addr())
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        match tokio::time::timeout(CLI_TIMEOUT, cmd.output()).await {
            Ok(Ok(out)) => out,
            Ok(Err(e)) => panic!("cannot run minkube {}: {e}", args.join(" ")),
            Err(_) => panic!(
                "minkube {} did not finish within {CLI_TIMEOUT:?}",
                args.join(" ")
            ),
        }
    }

    /// Runs the CLI, asserts it succeeded and returns its stdout.
    pub async fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args).await;
        assert!(
            out.status.success(),
            "minkube {} failed ({}): stdout: {} stderr: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs the CLI with `-o json` and parses its stdout.
    pub async fn cli_json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["-o", "json"];
        all.extend_from_slice(args);
        let out = self.cli_ok(&all).await;
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("minkube {} did not print JSON ({e}): {out}", all.join(" ")))
    }
}
