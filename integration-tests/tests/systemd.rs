//! The systemd side: `make install` lays out what the units name, both units
//! pass `systemd-analyze verify`, and the binaries started the way the units
//! start them (same command line, same environment file) tell a notify
//! socket READY=1 only once they serve, ping the watchdog and say STOPPING=1.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use minkube_integration_tests::binaries::{binary, profile_dir, CLI, MANAGER};
use minkube_integration_tests::process::{tail, ManagedProcess, LOG_TAIL};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// `make install` with the binaries these tests were built with.
fn make_install(vars: &[String]) -> String {
    make_install_target("install", vars)
}

/// `make TARGET` (install or deb) with the binaries these tests were built with.
fn make_install_target(target: &str, vars: &[String]) -> String {
    let profile = match profile_dir().file_name().and_then(|n| n.to_str()) {
        Some("debug") => "dev".to_string(),
        Some(other) => other.to_string(),
        None => panic!(
            "cannot tell the cargo profile of {}",
            profile_dir().display()
        ),
    };
    let out = Command::new("make")
        .arg("--no-print-directory")
        .arg(target)
        .arg(format!("PROFILE={profile}"))
        .arg("INSTALL_BUILD=no")
        .args(vars)
        .current_dir(workspace())
        .output()
        .expect("make runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "make {target} failed: {text}");
    text
}

/// `Key=value` settings of a unit file's sections, in order.
fn unit_settings(path: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

fn setting(settings: &[(String, String)], key: &str) -> String {
    settings
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| panic!("no {key}= in the unit"))
}

const UNITS: [&str; 2] = ["minkube-manager", "minkube-agent"];

#[test]
fn make_install_lays_out_what_the_units_expect() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    make_install(&[format!("DESTDIR={}", root.display())]);
    let under = |p: &str| root.join(p.trim_start_matches('/'));
    let sysusers =
        std::fs::read_to_string(under("/usr/local/lib/sysusers.d/minkube.conf")).unwrap();
    for unit in UNITS {
        let path = under(&format!("/usr/local/lib/systemd/system/{unit}.service"));
        let s = unit_settings(&path);
        let exec = setting(&s, "ExecStart");
        let program = exec.split_whitespace().next().unwrap();
        assert_eq!(program, format!("/usr/local/bin/{unit}"), "{unit}");
        let installed = under(program);
        let mode = std::fs::metadata(&installed)
            .unwrap_or_else(|e| panic!("{unit}: ExecStart names {program}, not installed: {e}"))
            .permissions()
            .mode();
        assert_eq!(mode & 0o111, 0o111, "{program} is executable");
        let env_file = setting(&s, "EnvironmentFile");
        let env_mode = std::fs::metadata(under(&env_file))
            .unwrap_or_else(|e| panic!("{unit}: EnvironmentFile {env_file} not installed: {e}"))
            .permissions()
            .mode();
        assert_eq!(
            env_mode & 0o077,
            0,
            "{env_file} (may hold a join token) is private"
        );
        let user = setting(&s, "User");
        assert!(
            sysusers
                .lines()
                .any(|l| l.split_whitespace().nth(1) == Some(&user)),
            "{unit} runs as {user}, which the sysusers entry creates: {sysusers}"
        );
        let docs = setting(&s, "Documentation");
        let doc = docs.strip_prefix("file:").unwrap();
        assert!(
            under(doc).is_file(),
            "{unit}: Documentation {doc} installed"
        );
    }
    for example in ["manager.toml", "agent.toml", "manager.env", "agent.env"] {
        assert!(under(&format!("/usr/local/share/doc/minkube/examples/{example}")).is_file());
    }
    assert!(
        under("/usr/local/bin/minkube").is_file(),
        "the CLI is installed"
    );

    // A second install keeps the admin's edited settings.
    let env = under("/etc/minkube/agent.env");
    std::fs::write(&env, "MINKUBE_MANAGER=10.0.0.1:7070\n").unwrap();
    let out = make_install(&[format!("DESTDIR={}", root.display())]);
    assert!(out.contains("keeping"), "{out}");
    assert_eq!(
        std::fs::read_to_string(&env).unwrap(),
        "MINKUBE_MANAGER=10.0.0.1:7070\n"
    );
}

#[test]
fn systemd_analyze_verify_passes_on_both_units() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(
            std::env::var_os("CI").is_none(),
            "systemd-analyze is missing: .ci/run installs Debian's systemd package"
        );
        eprintln!("systemd-analyze not installed: install the systemd package to run this test");
        return;
    }
    // Installed under a temporary prefix, so that ExecStart= names binaries
    // that exist (verify checks them).
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("usr");
    make_install(&[
        format!("PREFIX={}", prefix.display()),
        format!("SYSCONFDIR={}", dir.path().join("etc").display()),
    ]);
    let units: Vec<PathBuf> = UNITS
        .iter()
        .map(|u| prefix.join(format!("lib/systemd/system/{u}.service")))
        .collect();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(&units)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify: {stderr}");
    assert!(stderr.trim().is_empty(), "verify warned: {stderr}");
}

/// What a unit starts: its ExecStart and the variables of its environment file.
struct UnitCommand {
    program: PathBuf,
    args: Vec<String>,
    env: BTreeMap<String, String>,
}

impl UnitCommand {
    /// The env file's variables with `overrides` (as a drop-in would set them).
    fn env_with<const N: usize>(&self, overrides: [(&str, String); N]) -> Vec<(String, String)> {
        let mut env = self.env.clone();
        env.extend(overrides.into_iter().map(|(k, v)| (k.to_string(), v)));
        env.into_iter().collect()
    }
}

fn unit_command(unit: &str) -> UnitCommand {
    let s = unit_settings(&workspace().join(format!("deploy/systemd/{unit}.service")));
    let exec = setting(&s, "ExecStart");
    let mut words = exec.split_whitespace();
    let program = words.next().unwrap();
    let name = Path::new(program).file_name().unwrap().to_str().unwrap();
    let env_file = setting(&s, "EnvironmentFile");
    let name_of_file = Path::new(&env_file).file_name().unwrap();
    let text =
        std::fs::read_to_string(workspace().join("deploy/config").join(name_of_file)).unwrap();
    let env = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    UnitCommand {
        program: binary(name),
        args: words.map(str::to_string).collect(),
        env,
    }
}

/// The notify socket systemd would listen on.
struct NotifySocket {
    path: PathBuf,
    socket: UnixDatagram,
}

impl NotifySocket {
    fn bind(dir: &Path, name: &str) -> Self {
        let path = dir.join(name);
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        Self { path, socket }
    }

    /// Reads what is queued. The senders do not block: past the socket's
    /// queue limit (10 by default) a message is dropped, and systemd reads
    /// at once where this test reads only when it looks.
    fn drain(&self) {
        let mut buf = [0u8; 4096];
        self.socket.set_nonblocking(true).unwrap();
        while self.socket.recv(&mut buf).is_ok() {}
        self.socket.set_nonblocking(false).unwrap();
    }

    /// Messages until one contains `want` (all of them returned), or panic.
    fn until(&self, want: &str, within: Duration, log: &Path) -> Vec<String> {
        let deadline = Instant::now() + within;
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            if let Ok(n) = self.socket.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                let done = msg.contains(want);
                seen.push(msg);
                if done {
                    return seen;
                }
            }
        }
        panic!(
            "no {want:?} on the notify socket within {within:?}; got {seen:?}\n{}",
            tail(log, LOG_TAIL)
        );
    }
}

/// Lines of a child's stdout, read on a thread.
fn lines_of(stdout: std::process::ChildStdout) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn printed(rx: &mpsc::Receiver<String>, prefix: &str, log: &Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(line) => {
                if let Some(rest) = line.strip_prefix(prefix) {
                    return rest.trim().to_string();
                }
            }
            Err(_) => break,
        }
    }
    panic!("{prefix:?} never printed\n{}", tail(log, LOG_TAIL));
}

fn http_status(addr: &str, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.split_whitespace().nth(1)?.parse().ok()
}

/// The value after `label`'s line in `init`'s output.
fn value_after(text: &str, label: &str) -> String {
    let mut lines = text.lines().skip_while(|l| !l.starts_with(label));
    lines.next();
    lines.next().unwrap_or_default().trim().to_string()
}

#[test]
fn binaries_started_like_the_units_notify_ready_watchdog_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    // StateDirectory= in the units is the default --data-dir; here a temp
    // dir stands in for it, as a drop-in setting MINKUBE_DATA_DIR would.
    let manager_data = dir.path().join("state/manager");
    let agent_data = dir.path().join("state/agent");
    std::fs::create_dir_all(&manager_data).unwrap();

    // First start, as the unit's header says: init as the service user.
    let init = Command::new(binary(MANAGER))
        .arg("--data-dir")
        .arg(&manager_data)
        .arg("init")
        .output()
        .unwrap();
    let init_text = String::from_utf8_lossy(&init.stdout).into_owned();
    assert!(init.status.success(), "init: {init_text}");
    let admin_token = value_after(&init_text, "admin token");
    let join_token = value_after(&init_text, "join token");
    let ca = manager_data.join("pki/ca.pem");

    let notify_m = NotifySocket::bind(dir.path(), "manager.notify");
    let unit = unit_command("minkube-manager");
    let env_m = unit.env_with([
        ("MINKUBE_DATA_DIR", manager_data.display().to_string()),
        ("MINKUBE_PORT", "0".to_string()),
        ("MINKUBE_ADMIN_PORT", "0".to_string()),
        ("NOTIFY_SOCKET", notify_m.path.display().to_string()),
        ("WATCHDOG_USEC", "2000000".to_string()),
    ]);
    let log_m = dir.path().join("manager.log");
    let (mut manager, out) =
        ManagedProcess::spawn("manager", &unit.program, &unit.args, &env_m, &log_m, true);
    let lines = lines_of(out.unwrap());
    let addr = printed(&lines, "minkube-manager listening on", &log_m);

    let seen = notify_m.until("READY=1", Duration::from_secs(30), &log_m);
    assert!(
        seen.last().unwrap().contains("STATUS=serving gRPC on"),
        "{seen:?}"
    );
    // READY=1 means serving: a call answers right away.
    let nodes = Command::new(binary(CLI))
        .args(["--manager", &addr, "nodes"])
        .env("MINKUBE_CA_CERT", &ca)
        .env("MINKUBE_TOKEN", &admin_token)
        .output()
        .unwrap();
    assert!(
        nodes.status.success(),
        "minkube nodes right after READY=1: {}",
        String::from_utf8_lossy(&nodes.stderr)
    );
    // WatchdogSec=2s here: pings every second.
    notify_m.until("WATCHDOG=1", Duration::from_secs(5), &log_m);
    notify_m.until("WATCHDOG=1", Duration::from_secs(5), &log_m);

    let notify_a = NotifySocket::bind(dir.path(), "agent.notify");
    let unit = unit_command("minkube-agent");
    assert!(
        unit.env.contains_key("MINKUBE_CA_CERT"),
        "the agent's env file names the CA"
    );
    let env_a = unit.env_with([
        ("MINKUBE_DATA_DIR", agent_data.display().to_string()),
        ("MINKUBE_MANAGER", addr.clone()),
        ("MINKUBE_CA_CERT", ca.display().to_string()),
        ("MINKUBE_JOIN_TOKEN", join_token),
        ("MINKUBE_NODE_NAME", "unit-agent".to_string()),
        ("MINKUBE_ADMIN_PORT", "0".to_string()),
        ("NOTIFY_SOCKET", notify_a.path.display().to_string()),
        ("WATCHDOG_USEC", "2000000".to_string()),
    ]);
    let log_a = dir.path().join("agent.log");
    let (mut agent, out) =
        ManagedProcess::spawn("agent", &unit.program, &unit.args, &env_a, &log_a, true);
    let lines = lines_of(out.unwrap());
    let agent_admin = printed(&lines, "minkube-agent admin on", &log_a);
    let seen = notify_a.until("READY=1", Duration::from_secs(30), &log_a);
    assert!(
        seen.last()
            .unwrap()
            .contains(&format!("STATUS=connected to the manager at {addr}")),
        "{seen:?}"
    );
    // READY=1 means the stream is up: the agent's /readyz agrees.
    assert_eq!(http_status(&agent_admin, "/readyz"), Some(200));
    notify_a.until("WATCHDOG=1", Duration::from_secs(5), &log_a);

    notify_a.drain();
    let status = agent
        .terminate(Duration::from_secs(30))
        .expect("agent exits on SIGTERM");
    assert!(status.success(), "agent: {status}");
    notify_a.until("STOPPING=1", Duration::from_secs(1), &log_a);
    notify_m.drain();
    let status = manager
        .terminate(Duration::from_secs(30))
        .expect("manager exits on SIGTERM");
    assert!(status.success(), "manager: {status}");
    notify_m.until("STOPPING=1", Duration::from_secs(1), &log_m);
}

#[test]
fn make_deb_packages_the_install_tree_with_its_config_as_conffiles() {
    if Command::new("dpkg-deb").arg("--version").output().is_err() {
        eprintln!("dpkg-deb not installed: not a Debian system");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = make_install_target(
        "deb",
        &[
            format!("DEB_DIR={}", dir.path().display()),
            "DEB_COMPRESS=none".to_string(),
        ],
    );
    let deb = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .unwrap_or_else(|| panic!("no .deb built: {out}"));
    let info = checked_output(Command::new("dpkg-deb").arg("--info").arg(&deb));
    assert!(info.contains("Package: minkube"), "{info}");
    assert!(info.contains("conffiles"), "{info}");
    let contents = checked_output(Command::new("dpkg-deb").arg("--contents").arg(&deb));
    for path in [
        "./usr/bin/minkube-manager",
        "./usr/bin/minkube-agent",
        "./usr/bin/minkube",
        "./usr/lib/systemd/system/minkube-manager.service",
        "./usr/lib/systemd/system/minkube-agent.service",
        "./usr/lib/sysusers.d/minkube.conf",
        "./etc/minkube/agent.env",
        "./usr/share/doc/minkube/operations.md",
    ] {
        assert!(
            contents.contains(path),
            "{path} missing from the package: {contents}"
        );
    }
    // The packaged units point at the packaged binaries.
    let unpacked = dir.path().join("unpacked");
    checked_output(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked));
    let s = unit_settings(&unpacked.join("usr/lib/systemd/system/minkube-agent.service"));
    assert_eq!(setting(&s, "ExecStart"), "/usr/bin/minkube-agent");
    assert_eq!(setting(&s, "EnvironmentFile"), "/etc/minkube/agent.env");
}

fn checked_output(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
