//! Command-line flags, each with a MINKUBE_* environment variable.
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use minkube_common::duration::parse_duration;
use minkube_common::telemetry::LogFormat;

fn parse_log_format(s: &str) -> Result<LogFormat, String> {
    s.parse()
}

/// Longest commit delay accepted: beyond it every write would feel slow.
const MAX_COMMIT_DELAY: Duration = Duration::from_millis(100);

fn parse_commit_delay(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d > MAX_COMMIT_DELAY {
        return Err(format!(
            "{s:?} is too long a commit delay: use at most 100ms (e.g. 1ms), or 0 to commit at once"
        ));
    }
    Ok(d)
}

/// Bounds of `--node-cert-ttl`: below them agents would do little but renew,
/// above them a stolen key stays good for too long.
const NODE_CERT_TTL_BOUNDS: (Duration, Duration) =
    (Duration::from_secs(10), Duration::from_secs(3650 * 86_400));

fn parse_cert_ttl(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    let (min, max) = NODE_CERT_TTL_BOUNDS;
    if d < min || d > max {
        return Err(format!(
            "{s:?} is not a usable certificate lifetime: use 10s to 3650d (default 365d)"
        ));
    }
    Ok(d)
}

/// minkube-manager: the control plane.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "minkube-manager",
    version,
    about = "minkube control plane: gRPC API, scheduler, dispatcher, embedded store"
)]
pub struct Args {
    /// TOML file with any of these settings (keys named like the flags);
    /// a flag or MINKUBE_* variable overrides it.
    #[arg(long, env = "MINKUBE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, env = "MINKUBE_HOST", default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0 picks a free port; the chosen one is printed).
    #[arg(long, env = "MINKUBE_PORT", default_value_t = 7070)]
    pub port: u16,
    /// Address of the HTTP admin endpoint (/metrics, /healthz, /readyz).
    #[arg(long, env = "MINKUBE_ADMIN_HOST", default_value = "127.0.0.1")]
    pub admin_host: String,
    /// Port of the HTTP admin endpoint (0 picks a free port; it is printed).
    #[arg(long, env = "MINKUBE_ADMIN_PORT", default_value_t = 7071)]
    pub admin_port: u16,
    /// Directory of the embedded store (and of the cluster CA, pki/).
    #[arg(
        long,
        global = true,
        env = "MINKUBE_DATA_DIR",
        default_value = "/var/lib/minkube/manager"
    )]
    pub data_dir: PathBuf,
    /// Serve plaintext gRPC without authentication: anyone who reaches the
    /// port is admin. For loopback demos and tests only.
    #[arg(long, env = "MINKUBE_INSECURE")]
    pub insecure: bool,
    /// Let admins run privileged containers (off: refused for everyone).
    #[arg(long, env = "MINKUBE_ALLOW_PRIVILEGED")]
    pub allow_privileged: bool,
    /// Let admins run containers on the host's network.
    #[arg(long, env = "MINKUBE_ALLOW_HOST_NETWORK")]
    pub allow_host_network: bool,
    /// Let admins bind-mount host paths into containers.
    #[arg(long, env = "MINKUBE_ALLOW_HOST_MOUNTS")]
    pub allow_host_mounts: bool,
    /// One-off commands instead of serving.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Heartbeat interval agents are told to use.
    #[arg(long, env = "MINKUBE_HEARTBEAT_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub heartbeat_interval: Duration,
    /// A node silent this long (no heartbeat or other message) is DOWN.
    #[arg(long, env = "MINKUBE_NODE_TIMEOUT", default_value = "15s", value_parser = parse_duration)]
    pub node_timeout: Duration,
    /// A node away (disconnected or down) this long is lost: its tasks get a
    /// new attempt elsewhere or fail with "node lost", by their restart policy.
    #[arg(long, env = "MINKUBE_RECONNECT_GRACE", default_value = "60s", value_parser = parse_duration)]
    pub reconnect_grace: Duration,
    /// First delay before a retry or restart; doubles per attempt.
    #[arg(long, env = "MINKUBE_RETRY_BACKOFF", default_value = "1s", value_parser = parse_duration)]
    pub retry_backoff: Duration,
    /// Longest delay before a retry or restart.
    #[arg(long, env = "MINKUBE_RETRY_BACKOFF_MAX", default_value = "60s", value_parser = parse_duration)]
    pub retry_backoff_max: Duration,
    /// How long a join token admits new nodes after `init` or `minkube
    /// token rotate-join` made it; 0 means until rotated. Joined nodes keep
    /// their certificates either way.
    #[arg(long, env = "MINKUBE_JOIN_TOKEN_TTL", default_value = "24h", value_parser = parse_duration)]
    pub join_token_ttl: Duration,
    /// How long the node certificates this manager signs (on join and on
    /// renewal) are valid, 10s to 3650d. Agents renew theirs when two thirds
    /// of it have passed, so keep it well above how long a node may be off.
    #[arg(long, env = "MINKUBE_NODE_CERT_TTL", default_value = "365d", value_parser = parse_cert_ttl)]
    pub node_cert_ttl: Duration,
    /// Finished tasks older than this are deleted with their events.
    #[arg(long, env = "MINKUBE_RETENTION", default_value = "24h", value_parser = parse_duration)]
    pub retention: Duration,
    /// Most finished tasks kept; past it the oldest finished are deleted first.
    #[arg(long, env = "MINKUBE_MAX_FINISHED_TASKS", default_value_t = 100_000)]
    pub max_finished_tasks: usize,
    /// Largest accepted request message, in bytes.
    #[arg(long, env = "MINKUBE_MAX_REQUEST_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_request_bytes: usize,
    /// Requests per second one client (by IP address) may make on average;
    /// more get RESOURCE_EXHAUSTED. 0 turns the limit off.
    #[arg(long, env = "MINKUBE_RATE_LIMIT", default_value_t = 2000)]
    pub rate_limit: u32,
    /// Requests a client may make at once above its rate.
    #[arg(long, env = "MINKUBE_RATE_BURST", default_value_t = 4000)]
    pub rate_burst: u32,
    /// Unary calls served at once over all clients; more get
    /// RESOURCE_EXHAUSTED at once instead of waiting.
    #[arg(long, env = "MINKUBE_MAX_IN_FLIGHT", default_value_t = 1024)]
    pub max_in_flight: usize,
    /// Longest a unary call may run before it ends with DEADLINE_EXCEEDED.
    #[arg(long, env = "MINKUBE_REQUEST_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub request_timeout: Duration,
    /// Concurrent HTTP/2 streams (calls) per client connection.
    #[arg(
        long,
        env = "MINKUBE_MAX_STREAMS_PER_CONNECTION",
        default_value_t = 256
    )]
    pub max_streams_per_connection: u32,
    /// How long a store commit waits for more writes to join it while they
    /// arrive faster than 10,000 a second (0: never wait). Fewer syncs
    /// under heavy load leave more CPU for requests; each write then takes
    /// up to this much longer. At most 100ms.
    #[arg(long, env = "MINKUBE_COMMIT_DELAY", default_value = "1ms", value_parser = parse_commit_delay)]
    pub commit_delay: Duration,
    /// How long shutdown waits for streams and writes to finish.
    #[arg(long, env = "MINKUBE_SHUTDOWN_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
    /// Log format: text or json (level from RUST_LOG).
    #[arg(long, env = "MINKUBE_LOG_FORMAT", default_value = "text", value_parser = parse_log_format)]
    pub log_format: LogFormat,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_setting_is_in_the_example_files() {
        let missing = minkube_common::config_file::undocumented::<Args>(
            include_str!("../../deploy/config/manager.env"),
            include_str!("../../deploy/config/manager.toml"),
        );
        assert!(
            missing.is_empty(),
            "not documented in deploy/config: {missing:?}"
        );
    }

    #[test]
    fn defaults_and_flags() {
        let a = Args::try_parse_from(["m"]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a.port, 7070);
        assert_eq!(a.heartbeat_interval, Duration::from_secs(5));
        let a = Args::try_parse_from([
            "m",
            "--port",
            "0",
            "--heartbeat-interval",
            "500ms",
            "--log-format",
            "json",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a.port, 0);
        assert_eq!(a.heartbeat_interval, Duration::from_millis(500));
        assert_eq!(a.log_format, LogFormat::Json);
        assert!(Args::try_parse_from(["m", "--log-format", "xml"]).is_err());
    }

    #[test]
    fn commit_delay_is_bounded() {
        let delay =
            |v: &str| Args::try_parse_from(["m", "--commit-delay", v]).map(|a| a.commit_delay);
        assert_eq!(
            Args::try_parse_from(["m"])
                .unwrap_or_else(|e| panic!("{e}"))
                .commit_delay,
            Duration::from_millis(1)
        );
        assert_eq!(delay("0").unwrap_or_else(|e| panic!("{e}")), Duration::ZERO);
        assert_eq!(
            delay("100ms").unwrap_or_else(|e| panic!("{e}")),
            Duration::from_millis(100)
        );
        let err = delay("1s").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("at most 100ms"), "{err}");
    }
}

impl Args {
    /// The kinds of host access admins may ask for.
    pub fn allowed_host_access(&self) -> Vec<minkube_common::host_access::HostAccess> {
        use minkube_common::host_access::HostAccess;
        [
            (self.allow_privileged, HostAccess::Privileged),
            (self.allow_host_network, HostAccess::HostNetwork),
            (self.allow_host_mounts, HostAccess::HostMounts),
        ]
        .into_iter()
        .filter_map(|(on, kind)| on.then_some(kind))
        .collect()
    }
}

/// `minkube-manager <command>`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Create the cluster CA and server certificate in <data dir>/pki, an
    /// admin token and a join token; print what to copy where.
    Init {
        /// Another name or address the manager is reached by (repeat);
        /// localhost, 127.0.0.1, ::1 and the host name are always included.
        #[arg(long = "san", value_name = "NAME_OR_IP")]
        san: Vec<String>,
    },
    /// Inspect the configuration.
    Config {
        #[command(subcommand)]
        what: minkube_common::config_file::ConfigCommand,
    },
}
