//! Command-line flags and their environment variables.
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use minkube_common::duration::parse_duration;
use minkube_common::telemetry::LogFormat;

/// minkube worker agent: holds one stream to the manager and runs the tasks
/// placed on this node as Docker containers.
#[derive(Debug, Clone, Parser)]
#[command(name = "minkube-agent", version, about)]
pub struct Args {
    /// TOML file with any of these settings (keys named like the flags);
    /// a flag or MINKUBE_* variable overrides it.
    #[arg(long, env = "MINKUBE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// One-off commands instead of running.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Manager address, host:port or http://host:port.
    #[arg(long, env = "MINKUBE_MANAGER", default_value = "127.0.0.1:7070")]
    pub manager: String,

    /// CA certificate (PEM) of the cluster: the manager is verified against
    /// it (pki/ca.pem from `minkube-manager init`).
    #[arg(long, env = "MINKUBE_CA_CERT")]
    pub ca_cert: Option<PathBuf>,

    /// Join token, needed on the first start only (the node certificate it
    /// earns is kept in the data dir).
    #[arg(long, env = "MINKUBE_JOIN_TOKEN", hide_env_values = true)]
    pub join_token: Option<String>,

    /// Talk plaintext to a manager started with --insecure (no certificates).
    #[arg(long, env = "MINKUBE_INSECURE")]
    pub insecure: bool,

    /// Unique node name [default: the host name].
    #[arg(long, env = "MINKUBE_NODE_NAME")]
    pub name: Option<String>,

    /// Where the agent keeps its node id and task records.
    #[arg(
        long,
        env = "MINKUBE_DATA_DIR",
        default_value = "/var/lib/minkube/agent"
    )]
    pub data_dir: PathBuf,

    /// Node label KEY=VALUE; repeat the flag, or comma-separate in the variable.
    #[arg(
        long = "label",
        env = "MINKUBE_NODE_LABELS",
        value_name = "KEY=VALUE",
        value_delimiter = ',',
        value_parser = parse_label
    )]
    pub labels: Vec<(String, String)>,

    /// Address the agent advertises to the manager (informational).
    #[arg(long, env = "MINKUBE_ADVERTISE_ADDRESS", default_value = "")]
    pub advertise_address: String,

    /// How often to re-list Docker as a safety net; events are the normal path.
    #[arg(long, env = "MINKUBE_RESYNC_INTERVAL", default_value = "10m", value_parser = parse_positive_duration)]
    pub resync_interval: Duration,

    /// Grace period between SIGTERM and SIGKILL when stopping a container.
    #[arg(long, env = "MINKUBE_STOP_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub stop_timeout: Duration,

    /// Address of the HTTP admin endpoint (/metrics, /healthz, /readyz).
    #[arg(long, env = "MINKUBE_ADMIN_HOST", default_value = "127.0.0.1")]
    pub admin_host: String,

    /// Port of the HTTP admin endpoint (0 picks a free port; it is printed).
    #[arg(long, env = "MINKUBE_ADMIN_PORT", default_value_t = 7072)]
    pub admin_port: u16,

    /// Log line format: text or json.
    #[arg(long, env = "MINKUBE_LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,

    /// Container runtime: docker, or simulated (a benchmark tool: no
    /// containers, tasks run for --simulated-exit-after; never for real work).
    #[arg(long, env = "MINKUBE_RUNTIME", default_value = "docker")]
    pub runtime: RuntimeKind,

    /// With --runtime simulated: how long a task "runs" before it exits
    /// with code 0; "never" keeps it running until stopped.
    #[arg(long, env = "MINKUBE_SIMULATED_EXIT_AFTER", default_value = "1s", value_parser = parse_exit_after)]
    pub simulated_exit_after: ExitAfter,
}

/// `minkube-agent <command>`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Inspect the configuration.
    Config {
        #[command(subcommand)]
        what: minkube_common::config_file::ConfigCommand,
    },
}

/// Which container runtime the agent drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RuntimeKind {
    /// The local Docker Engine (the only runtime for real work).
    Docker,
    /// No containers: tasks start at once and exit after a set time.
    /// For benchmarks of the control plane ("hollow" agents).
    Simulated,
}

/// How long a simulated task runs; `None` until stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitAfter(pub Option<Duration>);

fn parse_exit_after(s: &str) -> Result<ExitAfter, String> {
    if s.trim() == "never" {
        return Ok(ExitAfter(None));
    }
    parse_duration(s).map(|d| ExitAfter(Some(d)))
}

impl Args {
    /// The node name: `--name`, else the host name.
    pub fn node_name(&self) -> Option<String> {
        self.name.clone().or_else(crate::identity::hostname)
    }
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("label {s:?} is not KEY=VALUE"))?;
    let k = k.trim();
    if k.is_empty() {
        return Err(format!("label {s:?} has an empty key: use KEY=VALUE"));
    }
    Ok((k.to_string(), v.trim().to_string()))
}

fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() {
        return Err(format!("{s:?} must be greater than zero"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn every_setting_is_in_the_example_files() {
        let missing = minkube_common::config_file::undocumented::<Args>(
            include_str!("../../deploy/config/agent.env"),
            include_str!("../../deploy/config/agent.toml"),
        );
        assert!(
            missing.is_empty(),
            "not documented in deploy/config: {missing:?}"
        );
    }

    #[test]
    fn defaults() {
        let a = Args::try_parse_from(["minkube-agent"]).unwrap();
        assert_eq!(a.manager, "127.0.0.1:7070");
        assert_eq!(a.data_dir, PathBuf::from("/var/lib/minkube/agent"));
        assert_eq!(a.resync_interval, Duration::from_secs(600));
        assert_eq!(a.stop_timeout, Duration::from_secs(10));
        assert_eq!(a.advertise_address, "");
        assert!(a.labels.is_empty());
        assert_eq!(a.log_format, LogFormat::Text);
        assert_eq!(a.runtime, RuntimeKind::Docker);
    }

    #[test]
    fn simulated_runtime_flags() {
        let a = Args::try_parse_from([
            "minkube-agent",
            "--runtime",
            "simulated",
            "--simulated-exit-after",
            "250ms",
        ])
        .unwrap();
        assert_eq!(a.runtime, RuntimeKind::Simulated);
        assert_eq!(
            a.simulated_exit_after,
            ExitAfter(Some(Duration::from_millis(250)))
        );
        let a = Args::try_parse_from(["minkube-agent", "--simulated-exit-after", "never"]).unwrap();
        assert_eq!(a.simulated_exit_after, ExitAfter(None));
        assert!(Args::try_parse_from(["minkube-agent", "--runtime", "podman"]).is_err());
    }

    #[test]
    fn flags() {
        let a = Args::try_parse_from([
            "minkube-agent",
            "--manager",
            "10.0.0.1:9",
            "--name",
            "w1",
            "--label",
            "zone=a",
            "--label",
            "disk=ssd,gpu=no",
            "--resync-interval",
            "30s",
            "--stop-timeout",
            "500ms",
            "--log-format",
            "json",
        ])
        .unwrap();
        assert_eq!(a.node_name().as_deref(), Some("w1"));
        assert_eq!(
            a.labels,
            vec![
                ("zone".into(), "a".into()),
                ("disk".into(), "ssd".into()),
                ("gpu".into(), "no".into())
            ]
        );
        assert_eq!(a.resync_interval, Duration::from_secs(30));
        assert_eq!(a.stop_timeout, Duration::from_millis(500));
        assert_eq!(a.log_format, LogFormat::Json);
    }

    #[test]
    fn bad_values_are_refused() {
        for args in [
            ["minkube-agent", "--label", "novalue"],
            ["minkube-agent", "--label", "=x"],
            ["minkube-agent", "--resync-interval", "0s"],
            ["minkube-agent", "--stop-timeout", "5w"],
        ] {
            assert!(Args::try_parse_from(args).is_err(), "{args:?}");
        }
    }
}
