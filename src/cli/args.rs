//! Command-line shape of `minkube` and the parsers for its `K=V`, port and
//! state arguments. Parsers return plain `String` errors so clap prints them
//! next to the offending flag.
use clap::{Args, Parser, Subcommand, ValueEnum};

use minkube::convert::parse_task_state;
use minkube::pb::{Protocol, PullPolicy, RestartPolicy, TaskState};

/// `HOST:CONTAINER[:ro]`.
fn parse_mount(s: &str) -> Result<minkube::pb::HostMount, String> {
    let parts: Vec<&str> = s.split(':').collect();
    let (host, ctr, read_only) = match parts.as_slice() {
        [h, c] => (h, c, false),
        [h, c, "ro"] => (h, c, true),
        [h, c, "rw"] => (h, c, false),
        _ => return Err(format!("{s:?} is not HOST:CONTAINER or HOST:CONTAINER:ro")),
    };
    Ok(minkube::pb::HostMount {
        host_path: (*host).to_string(),
        container_path: (*ctr).to_string(),
        read_only,
    })
}

/// Prefix of label keys minkube keeps for itself.
const RESERVED_LABEL_PREFIX: &str = "minkube.";

/// `minkube`: run and inspect tasks on a minkube cluster.
#[derive(Debug, Parser)]
#[command(
    name = "minkube",
    version,
    about = "Run and inspect tasks on a minkube cluster"
)]
pub struct Cli {
    /// Address of the manager (host:port or http://host:port).
    #[arg(
        long,
        global = true,
        env = "MINKUBE_MANAGER",
        default_value = "127.0.0.1:7070"
    )]
    pub manager: String,
    /// Output format.
    #[arg(short = 'o', long = "output", global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// CA certificate (PEM) of the cluster: talk TLS to the manager and
    /// verify it against this CA. `minkube-manager init` wrote it as pki/ca.pem.
    #[arg(long, global = true, env = "MINKUBE_CA_CERT")]
    pub ca_cert: Option<std::path::PathBuf>,
    /// Bearer token (from `minkube-manager init` or `minkube token create`).
    #[arg(long, global = true, env = "MINKUBE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Trace this command: print its trace id on stderr and send the trace
    /// context with every call, so the manager's and the agent's spans (and
    /// the container's TRACEPARENT) join it. Spans are exported when
    /// OTEL_EXPORTER_OTLP_ENDPOINT is set, with or without this flag.
    #[arg(long, global = true)]
    pub trace: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned text for people.
    Table,
    /// JSON objects keyed by proto field names, for scripts.
    Json,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a task; prints its id.
    Run(RunArgs),
    /// List tasks, oldest first.
    Ps(PsArgs),
    /// Show one task with its events.
    Get {
        /// Task id.
        id: String,
        /// Then print one line per change until the task finishes.
        #[arg(long, short = 'w')]
        watch: bool,
    },
    /// Print task changes as they happen, one line each (Ctrl-C to stop).
    Events(EventsArgs),
    /// Print a task's container output: its stdout to stdout, its stderr to stderr.
    Logs(LogsArgs),
    /// Stop a task: its container is stopped and removed.
    Stop {
        /// Task id.
        id: String,
    },
    /// List nodes.
    Nodes,
    /// Inspect nodes.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Manage API tokens and the join token (admin).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Show who the manager takes this caller for, and its role.
    Whoami,
}

/// `minkube token ...`.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token; prints its secret once.
    Create {
        /// Unique name, e.g. ci or alice.
        name: String,
        /// What it may do.
        #[arg(long, value_enum)]
        role: RoleArg,
    },
    /// List tokens (never their secrets).
    List,
    /// Revoke a token: it stops working at once.
    Revoke {
        /// Token name.
        name: String,
    },
    /// Replace the join token; prints the new one. The old one stops working.
    RotateJoin,
}

/// A token's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RoleArg {
    /// Read, watch, logs.
    Viewer,
    /// Viewer plus run and stop.
    Operator,
    /// Operator plus tokens.
    Admin,
}

impl From<RoleArg> for minkube::pb::Role {
    fn from(r: RoleArg) -> Self {
        match r {
            RoleArg::Viewer => Self::Viewer,
            RoleArg::Operator => Self::Operator,
            RoleArg::Admin => Self::Admin,
        }
    }
}

impl Command {
    /// The command's name, for its span (`minkube run`, `minkube node get`).
    pub fn name(&self) -> &'static str {
        match self {
            Command::Run(_) => "run",
            Command::Ps(_) => "ps",
            Command::Get { .. } => "get",
            Command::Events(_) => "events",
            Command::Logs(_) => "logs",
            Command::Stop { .. } => "stop",
            Command::Nodes => "nodes",
            Command::Node(NodeCommand::Get { .. }) => "node get",
            Command::Node(NodeCommand::Cordon { .. }) => "node cordon",
            Command::Node(NodeCommand::Uncordon { .. }) => "node uncordon",
            Command::Node(NodeCommand::Drain { .. }) => "node drain",
            Command::Node(NodeCommand::Label { .. }) => "node label",
            Command::Node(NodeCommand::Rm { .. }) => "node rm",
            Command::Token(TokenCommand::Create { .. }) => "token create",
            Command::Token(TokenCommand::List) => "token list",
            Command::Token(TokenCommand::Revoke { .. }) => "token revoke",
            Command::Token(TokenCommand::RotateJoin) => "token rotate-join",
            Command::Whoami => "whoami",
        }
    }
}

/// Arguments of `minkube logs`.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Task id.
    pub id: String,
    /// Keep printing new output until the container exits.
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Only the last N lines.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub tail: Option<u32>,
    /// Start every line with the time it was written (RFC 3339, UTC).
    #[arg(long, short = 't')]
    pub timestamps: bool,
}

/// `minkube node ...`.
#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Show one node.
    Get {
        /// Node name or id.
        node: String,
    },
    /// Place no new tasks on the node; its tasks keep running (admin).
    Cordon {
        /// Node name or id.
        node: String,
    },
    /// Let the scheduler use the node again after cordon or drain (admin).
    Uncordon {
        /// Node name or id.
        node: String,
    },
    /// Place no new tasks on the node and move or stop its tasks by their
    /// restart policy; waits until no task is left on it (admin).
    Drain {
        /// Node name or id.
        node: String,
        /// Give up waiting after this long (the drain itself goes on).
        #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_wait)]
        timeout: std::time::Duration,
        /// Start the drain and return at once.
        #[arg(long)]
        no_wait: bool,
    },
    /// Set (KEY=VALUE) or remove (KEY-) admin labels of the node; task
    /// constraints such as node.label.zone==a match them (admin).
    Label {
        /// Node name or id.
        node: String,
        /// KEY=VALUE to set, KEY- to remove.
        #[arg(required = true, value_name = "KEY=VALUE|KEY-", value_parser = parse_label_change)]
        changes: Vec<LabelChange>,
    },
    /// Remove the node from the cluster for good and revoke its
    /// certificates; refused while it is connected or has tasks, unless
    /// --force (admin).
    Rm {
        /// Node name or id.
        node: String,
        /// Remove it even while connected or with tasks: its stream is
        /// closed and its tasks move or end by their restart policy.
        #[arg(long)]
        force: bool,
    },
}

/// One change of `minkube node label`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabelChange {
    Set(String, String),
    Remove(String),
}

fn parse_label_change(s: &str) -> Result<LabelChange, String> {
    if let Some((k, v)) = s.split_once('=') {
        if k.is_empty() {
            return Err(format!("{s:?}: the key is empty; use KEY=VALUE or KEY-"));
        }
        return Ok(LabelChange::Set(k.to_string(), v.to_string()));
    }
    match s.strip_suffix('-') {
        Some(k) if !k.is_empty() => Ok(LabelChange::Remove(k.to_string())),
        _ => Err(format!(
            "{s:?}: use KEY=VALUE to set a label or KEY- to remove it"
        )),
    }
}

/// `90s`, `5m`, `1h` or plain seconds.
fn parse_wait(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration: use e.g. 90s, 5m or 1h"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        _ => return Err(format!("{s:?} is not a duration: use e.g. 90s, 5m or 1h")),
    };
    Ok(std::time::Duration::from_secs(secs))
}

/// Arguments of `minkube run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Task name: 1-63 chars of [a-z0-9-], starting and ending with a letter or digit.
    pub name: String,
    /// Image to run, e.g. busybox:latest.
    #[arg(long)]
    pub image: String,
    /// Memory limit in MiB (also what the scheduler reserves).
    #[arg(long, value_name = "MB", default_value_t = 64)]
    pub memory: u64,
    /// CPU limit in cores, e.g. 0.5 (default: no limit).
    #[arg(long, value_name = "N", value_parser = parse_cpu)]
    pub cpu: Option<f64>,
    /// Environment variable, repeatable.
    #[arg(long = "env", short = 'e', value_name = "K=V", value_parser = parse_env)]
    pub env: Vec<(String, String)>,
    /// Container port to publish on a host port Docker picks, repeatable.
    #[arg(long = "port", short = 'p', value_name = "P[/udp]", value_parser = parse_port)]
    pub ports: Vec<(u32, Protocol)>,
    /// Label copied onto the container, repeatable.
    #[arg(long = "label", short = 'l', value_name = "K=V", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// When the agent pulls the image.
    #[arg(long, value_enum, default_value_t = PullPolicyArg::IfNotPresent)]
    pub pull_policy: PullPolicyArg,
    /// Whether the task runs again after its container ends or its node is lost.
    #[arg(long = "restart", value_enum, default_value_t = RestartArg::Never)]
    pub restart: RestartArg,
    /// Most restarts with `--restart on-failure` (default 3).
    #[arg(long)]
    pub max_restarts: Option<u32>,
    /// Most attempts after transient errors such as Docker being unreachable (default 3).
    #[arg(long)]
    pub max_attempts: Option<u32>,
    /// Run privileged (the manager must allow it; admin only).
    #[arg(long)]
    pub privileged: bool,
    /// Use the host's network (the manager must allow it; admin only).
    #[arg(long)]
    pub host_network: bool,
    /// Placement constraint, repeatable: node.label.KEY==VALUE,
    /// node.label.KEY!=VALUE, node.name==NAME or node.name!=NAME.
    #[arg(long = "constraint", value_name = "EXPR")]
    pub constraints: Vec<String>,
    /// Bind-mount a host path (the manager must allow it; admin only).
    #[arg(long = "mount", value_name = "HOST:CONTAINER[:ro]", value_parser = parse_mount)]
    pub mounts: Vec<minkube::pb::HostMount>,
    /// Command and arguments, after `--`; empty keeps the image's default.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// `--pull-policy` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PullPolicyArg {
    /// Pull only when the image is missing on the node.
    IfNotPresent,
    /// Pull before every start.
    Always,
    /// Never pull; a missing image fails the task.
    Never,
}

/// `--restart` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RestartArg {
    /// The task ends with its container.
    Never,
    /// Run again after a failure (non-zero exit, OOM, lost node), up to --max-restarts.
    OnFailure,
    /// Run again whenever the container ends, until stopped.
    Always,
}

impl From<RestartArg> for RestartPolicy {
    fn from(p: RestartArg) -> Self {
        match p {
            RestartArg::Never => RestartPolicy::Never,
            RestartArg::OnFailure => RestartPolicy::OnFailure,
            RestartArg::Always => RestartPolicy::Always,
        }
    }
}

impl From<PullPolicyArg> for PullPolicy {
    fn from(p: PullPolicyArg) -> Self {
        match p {
            PullPolicyArg::IfNotPresent => PullPolicy::IfNotPresent,
            PullPolicyArg::Always => PullPolicy::Always,
            PullPolicyArg::Never => PullPolicy::Never,
        }
    }
}

/// Arguments of `minkube ps`.
#[derive(Debug, Args)]
pub struct PsArgs {
    /// Only tasks in this state (pending, scheduled, running, completed, failed), repeatable.
    #[arg(long = "state", short = 's', value_name = "S", value_parser = parse_state)]
    pub states: Vec<TaskState>,
    /// Only tasks placed on this node (name or id).
    #[arg(long, value_name = "N")]
    pub node: Option<String>,
    /// Tasks per page (1-1000).
    #[arg(long, value_name = "N", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub limit: u32,
    /// Fetch every page instead of the first one.
    #[arg(long)]
    pub all: bool,
}

/// Arguments of `minkube events`.
#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Only this task.
    #[arg(long, value_name = "ID")]
    pub task: Option<String>,
    /// Only tasks placed on this node (name or id).
    #[arg(long, value_name = "N")]
    pub node: Option<String>,
    /// Only tasks in this state after the change, repeatable.
    #[arg(long = "state", short = 's', value_name = "S", value_parser = parse_state)]
    pub states: Vec<TaskState>,
    /// First print the current state of every matching task.
    #[arg(long)]
    pub snapshot: bool,
}

/// Parses `KEY=VALUE` for `--env`: the key must be non-empty; the value may
/// be empty and may itself contain '='.
pub fn parse_env(s: &str) -> Result<(String, String), String> {
    let (k, v) = split_key_value(s, "--env")?;
    Ok((k.to_string(), v.to_string()))
}

/// Parses `KEY=VALUE` for `--label`, rejecting keys reserved for minkube.
pub fn parse_label(s: &str) -> Result<(String, String), String> {
    let (k, v) = split_key_value(s, "--label")?;
    if k.starts_with(RESERVED_LABEL_PREFIX) {
        return Err(format!(
            "label key {k:?} starts with {RESERVED_LABEL_PREFIX:?}, which is reserved for minkube; pick another key"
        ));
    }
    Ok((k.to_string(), v.to_string()))
}

fn split_key_value<'a>(s: &'a str, flag: &str) -> Result<(&'a str, &'a str), String> {
    match s.split_once('=') {
        None => Err(format!(
            "expected KEY=VALUE, got {s:?} (e.g. {flag} MODE=fast)"
        )),
        Some(("", _)) => Err(format!("empty key in {s:?}: expected KEY=VALUE")),
        Some((k, v)) => Ok((k, v)),
    }
}

/// Parses `PORT`, `PORT/tcp` or `PORT/udp`; the port must be 1-65535.
pub fn parse_port(s: &str) -> Result<(u32, Protocol), String> {
    let (port, proto) = match s.split_once('/') {
        None => (s, Protocol::Tcp),
        Some((p, proto)) => match proto.to_ascii_lowercase().as_str() {
            "tcp" => (p, Protocol::Tcp),
            "udp" => (p, Protocol::Udp),
            _ => {
                return Err(format!(
                    "unknown protocol {proto:?} in {s:?}: use PORT, PORT/tcp or PORT/udp"
                ))
            }
        },
    };
    match port.parse::<u32>() {
        Ok(n) if (1..=65535).contains(&n) => Ok((n, proto)),
        _ => Err(format!(
            "invalid port {port:?} in {s:?}: expected a number from 1 to 65535, e.g. 8080 or 53/udp"
        )),
    }
}

/// Parses a task state name for `--state`.
pub fn parse_state(s: &str) -> Result<TaskState, String> {
    parse_task_state(s).ok_or_else(|| {
        format!("unknown state {s:?}: use one of pending, scheduled, running, completed, failed")
    })
}

/// Parses `--cpu`: a finite, non-negative number of cores.
pub fn parse_cpu(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(n) if n.is_finite() && n >= 0.0 => Ok(n),
        _ => Err(format!(
            "invalid CPU amount {s:?}: expected a non-negative number of cores, e.g. 0.5"
        )),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("minkube").chain(args.iter().copied()))
    }

    #[test]
    fn env_values() {
        assert_eq!(parse_env("A=1").unwrap(), ("A".into(), "1".into()));
        assert_eq!(parse_env("A=").unwrap(), ("A".into(), String::new()));
        assert_eq!(parse_env("A=b=c").unwrap(), ("A".into(), "b=c".into()));
        assert!(parse_env("A").unwrap_err().contains("expected KEY=VALUE"));
        assert!(parse_env("=1").unwrap_err().contains("empty key"));
    }

    #[test]
    fn label_values() {
        assert_eq!(
            parse_label("app=web").unwrap(),
            ("app".into(), "web".into())
        );
        assert!(parse_label("minkube.task-id=x")
            .unwrap_err()
            .contains("reserved"));
        assert!(parse_label("novalue").is_err());
    }

    #[test]
    fn ports() {
        assert_eq!(parse_port("8080").unwrap(), (8080, Protocol::Tcp));
        assert_eq!(parse_port("80/tcp").unwrap(), (80, Protocol::Tcp));
        assert_eq!(parse_port("53/UDP").unwrap(), (53, Protocol::Udp));
        assert!(parse_port("0").unwrap_err().contains("1 to 65535"));
        assert!(parse_port("70000").is_err());
        assert!(parse_port("http").is_err());
        assert!(parse_port("80/sctp")
            .unwrap_err()
            .contains("unknown protocol"));
    }

    #[test]
    fn states_and_cpu() {
        assert_eq!(parse_state("Running").unwrap(), TaskState::Running);
        assert!(parse_state("bogus").unwrap_err().contains("pending"));
        assert_eq!(parse_cpu("0.5").unwrap(), 0.5);
        assert!(parse_cpu("-1").is_err());
        assert!(parse_cpu("NaN").is_err());
    }

    #[test]
    fn run_command_line() {
        let cli = parse(&[
            "-o", "json", "run", "web", "--image", "busybox", "--env", "A=1", "--port", "53/udp",
            "--label", "team=x", "--memory", "128", "--cpu", "0.5", "--", "sh", "-c", "echo hi",
        ])
        .unwrap();
        assert_eq!(cli.output, Output::Json);
        let Command::Run(r) = cli.command else {
            panic!("expected run")
        };
        assert_eq!(r.name, "web");
        assert_eq!(r.image, "busybox");
        assert_eq!(r.memory, 128);
        assert_eq!(r.cpu, Some(0.5));
        assert_eq!(r.env, vec![("A".to_string(), "1".to_string())]);
        assert_eq!(r.ports, vec![(53, Protocol::Udp)]);
        assert_eq!(r.labels, vec![("team".to_string(), "x".to_string())]);
        assert_eq!(r.pull_policy, PullPolicyArg::IfNotPresent);
        assert_eq!(r.command, vec!["sh", "-c", "echo hi"]);
    }

    #[test]
    fn host_access_flags() {
        let cli = parse(&[
            "run",
            "t",
            "--image",
            "i",
            "--privileged",
            "--host-network",
            "--mount",
            "/srv:/data:ro",
            "--mount",
            "/a:/b",
        ])
        .unwrap();
        let Command::Run(r) = cli.command else {
            panic!("expected run")
        };
        assert!(r.privileged && r.host_network);
        assert_eq!(r.mounts.len(), 2);
        assert!(r.mounts[0].read_only && !r.mounts[1].read_only);
        assert_eq!(r.mounts[0].container_path, "/data");
        let Command::Run(r) = parse(&["run", "t", "--image", "i", "--host-network"])
            .unwrap()
            .command
        else {
            panic!("expected run")
        };
        assert!(r.host_network && !r.privileged);
        assert!(parse(&["run", "t", "--image", "i", "--mount", "/only"]).is_err());
        assert!(parse(&["run", "t", "--image", "i", "--mount", "/a:/b:rx"]).is_err());
    }

    #[test]
    fn run_defaults_and_errors() {
        let cli = parse(&["run", "a", "--image", "i"]).unwrap();
        let Command::Run(r) = cli.command else {
            panic!("expected run")
        };
        assert_eq!(r.memory, 64);
        assert_eq!(r.cpu, None);
        assert!(r.command.is_empty());
        assert!(parse(&["run", "a"]).is_err(), "--image is required");
        let err = parse(&["run", "a", "--image", "i", "--env", "NOEQ"]).unwrap_err();
        assert!(err.to_string().contains("expected KEY=VALUE"), "{err}");
        let err = parse(&["run", "a", "--image", "i", "--pull-policy", "sometimes"]).unwrap_err();
        assert!(err.to_string().contains("if-not-present"), "{err}");
    }

    #[test]
    fn ps_and_node_command_lines() {
        let cli = parse(&[
            "ps", "--state", "running", "--state", "failed", "--node", "n1", "--all",
        ])
        .unwrap();
        let Command::Ps(p) = cli.command else {
            panic!("expected ps")
        };
        assert_eq!(p.states, vec![TaskState::Running, TaskState::Failed]);
        assert_eq!(p.node.as_deref(), Some("n1"));
        assert_eq!(p.limit, 100);
        assert!(p.all);
        assert!(parse(&["ps", "--limit", "0"]).is_err());
        assert!(parse(&["ps", "--limit", "1001"]).is_err());
        let cli = parse(&["--manager", "h:1", "node", "get", "n1", "-o", "json"]).unwrap();
        assert_eq!(cli.manager, "h:1");
        assert_eq!(cli.output, Output::Json);
        assert!(matches!(cli.command, Command::Node(NodeCommand::Get { node }) if node == "n1"));
        let cli = parse(&["node", "label", "n1", "zone=a", "disk-"]).unwrap();
        let Command::Node(NodeCommand::Label { changes, .. }) = cli.command else {
            panic!("not node label");
        };
        assert_eq!(
            changes,
            vec![
                LabelChange::Set("zone".into(), "a".into()),
                LabelChange::Remove("disk".into())
            ]
        );
        assert!(parse(&["node", "label", "n1", "zone"]).is_err());
        assert!(parse(&["node", "label", "n1"]).is_err());
        let cli = parse(&["node", "drain", "n1", "--timeout", "90s"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Node(NodeCommand::Drain { timeout, no_wait: false, .. })
                if timeout == std::time::Duration::from_secs(90)
        ));
        assert!(parse(&["node", "drain", "n1", "--timeout", "soon"]).is_err());
        let cli = parse(&["node", "rm", "n1", "--force"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Node(NodeCommand::Rm { node, force: true }) if node == "n1"
        ));
        assert!(parse(&["node", "rm"]).is_err());
    }

    #[test]
    fn events_and_get_watch_command_lines() {
        let cli = parse(&[
            "events",
            "--task",
            "t1",
            "--node",
            "a",
            "-s",
            "running",
            "--state",
            "failed",
            "--snapshot",
        ])
        .unwrap();
        let Command::Events(e) = cli.command else {
            panic!("expected events")
        };
        assert_eq!(e.task.as_deref(), Some("t1"));
        assert_eq!(e.node.as_deref(), Some("a"));
        assert_eq!(e.states, vec![TaskState::Running, TaskState::Failed]);
        assert!(e.snapshot);
        let Command::Events(e) = parse(&["events"]).unwrap().command else {
            panic!("expected events")
        };
        assert!(!e.snapshot && e.states.is_empty() && e.task.is_none());
        assert!(parse(&["events", "--state", "bogus"]).is_err());
        let cli = parse(&["get", "t1", "--watch"]).unwrap();
        assert!(matches!(cli.command, Command::Get { id, watch: true } if id == "t1"));
        let cli = parse(&["get", "t1"]).unwrap();
        assert!(matches!(cli.command, Command::Get { watch: false, .. }));
    }

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
