//! The compose test cluster of `deploy/compose/` (a manager and three agent
//! hosts, each a container with its own address on a private network), under
//! a project name, image tag and label unique to the test run. Dropping it
//! runs `cluster.sh down` (the cluster, its volumes, its task containers) and
//! removes the image: only what this run created.
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use crate::binaries::{binary, profile_dir, CLI};
use crate::docker::{docker, docker_ok};

/// How long one CLI call against the cluster may take.
const CALL: Duration = Duration::from_secs(30);

/// A running compose cluster.
pub struct ComposeCluster {
    project: String,
    image: String,
    addr: String,
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace holds integration-tests/")
        .to_path_buf()
}

fn compose_dir() -> PathBuf {
    workspace().join("deploy/compose")
}

/// Whether docker-compose can be run here.
pub fn available() -> bool {
    Command::new("docker-compose")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn checked(what: &str, out: std::io::Result<Output>) -> String {
    let out = out.unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{what} failed: {text}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl ComposeCluster {
    /// Builds the node image from the binaries the tests were built with,
    /// starts the cluster and waits until its 3 nodes are READY.
    pub fn up(run_id: &str) -> Self {
        let image = format!("minkube-node:{run_id}");
        let bins = profile_dir();
        checked(
            "build-image.sh",
            Command::new(compose_dir().join("build-image.sh"))
                .arg(&bins)
                .arg(&image)
                .arg(format!("{}={run_id}", crate::image::IMAGE_RUN_LABEL))
                .output(),
        );
        let mut cluster = Self {
            project: format!("mkc-{run_id}"),
            image,
            addr: String::new(),
        };
        cluster.script("up");
        cluster.addr = cluster.script("addr").trim().to_string();
        cluster
    }

    /// `cluster.sh WHAT` with this cluster's project, image and binaries.
    fn script_command(&self, what: &str) -> Command {
        let mut cmd = Command::new(compose_dir().join("cluster.sh"));
        cmd.arg(what)
            .env("MINKUBE_CLUSTER_PROJECT", &self.project)
            .env("MINKUBE_CLUSTER_IMAGE", &self.image)
            .env("MINKUBE_CLUSTER_RUN", &self.project)
            .env("BIN_DIR", profile_dir())
            .env("MINKUBE_CLI", binary(CLI));
        cmd
    }

    fn script(&self, what: &str) -> String {
        checked(
            &format!("cluster.sh {what}"),
            self.script_command(what).output(),
        )
    }

    /// The manager's address on this host.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// `docker-compose <args>` on this cluster.
    pub fn compose(&self, args: &[&str]) -> String {
        checked(
            &format!("docker-compose {}", args.join(" ")),
            Command::new("docker-compose")
                .arg("-f")
                .arg(compose_dir().join("docker-compose.yml"))
                .arg("-p")
                .arg(&self.project)
                .args(args)
                .env("MINKUBE_CLUSTER_IMAGE", &self.image)
                .env("MINKUBE_CLUSTER_RUN", &self.project)
                .output(),
        )
    }

    /// The container id of a service (`manager`, `host-1`, ...).
    pub fn container(&self, service: &str) -> String {
        self.compose(&["ps", "-q", service]).trim().to_string()
    }

    /// The cluster's private network.
    pub fn network(&self) -> String {
        format!("{}_cluster", self.project)
    }

    /// Cuts a host off the cluster's network.
    pub fn disconnect(&self, service: &str) {
        docker_ok(&[
            "network",
            "disconnect",
            &self.network(),
            &self.container(service),
        ]);
    }

    /// Puts a host back on the cluster's network.
    pub fn reconnect(&self, service: &str) {
        docker_ok(&[
            "network",
            "connect",
            &self.network(),
            &self.container(service),
        ]);
    }

    /// Runs the CLI against the cluster with `-o json`; the parsed output.
    pub async fn cli_json(&self, args: &[&str]) -> serde_json::Value {
        let mut cmd = tokio::process::Command::new(binary(CLI));
        cmd.args(["--manager", &self.addr, "-o", "json"])
            .args(args)
            .kill_on_drop(true);
        let out = tokio::time::timeout(CALL, cmd.output())
            .await
            .unwrap_or_else(|_| panic!("minkube {} hung", args.join(" ")))
            .unwrap_or_else(|e| panic!("cannot run minkube: {e}"));
        assert!(
            out.status.success(),
            "minkube {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "minkube {} did not print JSON ({e}): {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// The last lines of every service's log, for failure messages.
    pub fn logs(&self) -> String {
        self.compose(&["logs", "--tail", "40"])
    }
}

impl Drop for ComposeCluster {
    fn drop(&mut self) {
        let _ = self.script_command("down").output();
        let _ = docker(&["rmi", "-f", &self.image]);
    }
}
