//! The manager under test: the real `minkube-manager` binary in its own
//! process, so its CPU time and memory are its own.
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use minkube::client::ControlClient;
use minkube::pb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::procstat::{self, ProcSample};

/// Flags every benchmark manager gets: plaintext on loopback, and the
/// per-client admission limits off (one bench process is "one client"
/// sending the load of thousands).
const BASE_FLAGS: &[&str] = &[
    "--insecure",
    "--host",
    "127.0.0.1",
    "--admin-host",
    "127.0.0.1",
    "--rate-limit",
    "0",
    "--max-in-flight",
    "4096",
];

/// A running manager process.
pub struct Manager {
    child: Option<Child>,
    bin: PathBuf,
    data_dir: PathBuf,
    log: PathBuf,
    port: u16,
    admin_port: u16,
    extra: Vec<String>,
    /// Spawn to first successful API call.
    pub startup: Duration,
}

/// A free loopback port (bound, read, released).
fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("cannot bind a loopback port")?;
    Ok(l.local_addr()?.port())
}

impl Manager {
    /// Starts `minkube-manager` from `bin_dir` on fresh ports with `data_dir`
    /// and `extra` flags, and waits until it serves.
    pub async fn start(
        bin_dir: &Path,
        data_dir: &Path,
        log_dir: &Path,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        let bin = bin_dir.join("minkube-manager");
        if !bin.is_file() {
            bail!(
                "{} not found: build first (cargo build --release --workspace --bins)",
                bin.display()
            );
        }
        let mut m = Self {
            child: None,
            bin,
            data_dir: data_dir.to_path_buf(),
            log: log_dir.join("manager.log"),
            port: free_port()?,
            admin_port: free_port()?,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            startup: Duration::ZERO,
        };
        m.spawn().await?;
        Ok(m)
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("cannot open {}", self.log.display()))?;
        let started = Instant::now();
        let child = Command::new(&self.bin)
            .args(BASE_FLAGS)
            .arg("--port")
            .arg(self.port.to_string())
            .arg("--admin-port")
            .arg(self.admin_port.to_string())
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(&self.extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", self.bin.display()))?;
        let addr = self.addr();
        let child = self.child.insert(child);
        let deadline = started + Duration::from_secs(120);
        loop {
            if let Some(status) = child.try_wait()? {
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                bail!(
                    "the manager exited at start ({status}); its log ends: {}",
                    tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
                );
            }
            if let Ok(mut c) = client(&addr).await {
                if c.list_nodes(pb::ListNodesRequest::default()).await.is_ok() {
                    self.startup = started.elapsed();
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "the manager did not serve within 120 s; see {}",
                    self.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// `127.0.0.1:PORT` of the gRPC API.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Process id (0 once stopped).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// A new connection to the API.
    pub async fn client(&self) -> anyhow::Result<ControlClient> {
        client(&self.addr()).await
    }

    /// CPU and memory counters now.
    pub fn sample(&self) -> anyhow::Result<ProcSample> {
        procstat::sample(self.pid())
    }

    /// Sum of a counter (all label sets) on /metrics.
    pub async fn metric_sum(&self, name: &str) -> anyhow::Result<f64> {
        self.metric_sum_with(name, "").await
    }

    /// Sum of a counter over the label sets that hold `label` (written as
    /// on /metrics: `direction="in"`); an empty `label` holds for all.
    pub async fn metric_sum_with(&self, name: &str, label: &str) -> anyhow::Result<f64> {
        Ok(sum_of(&self.scrape().await?, name, label))
    }

    /// (store commits, requests committed) so far, from one scrape.
    pub async fn store_commits(&self) -> anyhow::Result<(f64, f64)> {
        let text = self.scrape().await?;
        Ok((
            sum_of(&text, "minkube_manager_store_commits_total", ""),
            sum_of(&text, "minkube_manager_store_committed_requests_total", ""),
        ))
    }

    /// A histogram's cumulative buckets from `/metrics`: (upper bound in
    /// seconds, observations up to it), ascending, `+Inf` last.
    pub async fn histogram(&self, name: &str) -> anyhow::Result<crate::stats::Buckets> {
        let prefix = format!("{name}_bucket{{le=\"");
        let mut buckets: Vec<(f64, f64)> = self
            .scrape()
            .await?
            .lines()
            .filter_map(|l| {
                let (le, count) = l.strip_prefix(&prefix)?.split_once("\"} ")?;
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                Some((le, count.trim().parse().ok()?))
            })
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        Ok(crate::stats::Buckets(buckets))
    }

    async fn scrape(&self) -> anyhow::Result<String> {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", self.admin_port)).await?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: bench\r\n\r\n")
            .await?;
        let mut body = String::new();
        s.read_to_string(&mut body).await?;
        Ok(body)
    }

    /// Stops the manager (SIGTERM, then SIGKILL after 30 s).
    pub fn stop(&mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        crate::process::stop(&mut child, Duration::from_secs(30))?;
        Ok(())
    }

    /// Stops and starts the manager on the same data dir and ports;
    /// `startup` then holds the time to serving again.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop()?;
        self.spawn().await
    }
}

/// A new connection to the API at `addr`.
pub async fn client(addr: &str) -> anyhow::Result<ControlClient> {
    let ch = minkube::client::channel(addr).await?;
    Ok(ControlClient::new(ch).max_decoding_message_size(64 * 1024 * 1024))
}

impl Drop for Manager {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// Sum of the samples of counter `name` in a /metrics text whose label set
/// holds `label` (all of them for an empty `label`).
fn sum_of(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let labels = match rest.strip_prefix('{') {
                Some(r) => r.split_once('}')?.0,
                None if rest.starts_with(' ') => "",
                None => return None,
            };
            let held = label.is_empty() || labels.split(',').any(|kv| kv == label);
            held.then(|| l.rsplit(' ').next()?.parse::<f64>().ok())?
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::sum_of;

    #[test]
    fn counters_are_summed_over_the_label_sets_asked_for() {
        let text = "\
# TYPE m counter
m{direction=\"in\",kind=\"status\"} 5
m{direction=\"in\",kind=\"ack\"} 2
m{direction=\"out\",kind=\"assignment\"} 3
m_other 100
m 1
";
        assert_eq!(sum_of(text, "m", ""), 11.0);
        assert_eq!(sum_of(text, "m", "direction=\"in\""), 7.0);
        assert_eq!(sum_of(text, "m", "kind=\"assignment\""), 3.0);
        assert_eq!(sum_of(text, "m", "kind=\"none\""), 0.0);
    }
}
