//! How the agent talks to a secured manager: on its first start it joins
//! (join token + a CSR for a key made here, over TLS verified against the
//! cluster CA) and keeps the node certificate it gets in its data dir; from
//! then on every session uses mutual TLS with that certificate.
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

use minkube::pb::{agent_service_client::AgentServiceClient, JoinRequest};
use minkube_common::retry::Backoff;
use minkube_common::tls;
use rcgen::{CertificateParams, DnType, KeyPair};
use tokio::sync::watch;
use tonic::transport::ClientTlsConfig;
use tracing::{info, warn};

use crate::config::Args;
use crate::AgentError;

/// The node certificate in the data dir.
pub(crate) const NODE_CERT: &str = "node.pem";
/// Its private key (mode 0600; never leaves the host).
pub(crate) const NODE_KEY: &str = "node.key";

/// How sessions reach the manager.
pub enum Transport {
    /// Plaintext (`--insecure`).
    Plaintext,
    /// Mutual TLS with the node certificate.
    Tls {
        /// The settings sessions connect with.
        config: Box<ClientTlsConfig>,
        /// The cluster CA (PEM), for the settings of a renewed certificate.
        ca_pem: String,
    },
    /// Shutdown was requested while joining.
    Stopped,
}

fn config_error(msg: impl Into<String>) -> AgentError {
    AgentError::Config(msg.into())
}

fn read(path: &Path, what: &str) -> Result<String, AgentError> {
    std::fs::read_to_string(path)
        .map_err(|e| config_error(format!("cannot read {what} {}: {e}", path.display())))
}

/// Writes `contents` to `path` atomically (temp file + rename), `mode` bits.
pub(crate) fn write_atomic(path: &Path, contents: &str, mode: u32) -> Result<(), AgentError> {
    let tmp = path.with_extension("tmp");
    let fail = |e: std::io::Error| config_error(format!("cannot write {}: {e}", path.display()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(fail)?;
    f.write_all(contents.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(fail)?;
    std::fs::rename(&tmp, path).map_err(fail)
}

/// Works out the transport, joining first if this node has no certificate.
pub async fn transport(
    args: &Args,
    name: &str,
    stop: &mut watch::Receiver<bool>,
) -> Result<Transport, AgentError> {
    if args.insecure {
        warn!("--insecure: talking plaintext to the manager, without a node certificate");
        return Ok(Transport::Plaintext);
    }
    let Some(ca_path) = &args.ca_cert else {
        return Err(config_error(
            "no --ca-cert: give the cluster CA (pki/ca.pem from `minkube-manager init`) and, on the first start, --join-token; or --insecure for a manager started with --insecure",
        ));
    };
    let ca = read(ca_path, "the CA certificate (--ca-cert)")?;
    let (cert_path, key_path) = (args.data_dir.join(NODE_CERT), args.data_dir.join(NODE_KEY));
    crate::renew::finish_interrupted(&args.data_dir)?;
    if !cert_path.exists() {
        let Some(token) = args.join_token.as_deref() else {
            return Err(config_error(format!(
                "{} holds no node certificate: pass --join-token (MINKUBE_JOIN_TOKEN) once to join the cluster",
                args.data_dir.display()
            )));
        };
        let key =
            KeyPair::generate().map_err(|e| config_error(format!("cannot make a key: {e}")))?;
        let Some(cert) = join(args, name, token, &ca, &key, stop).await? else {
            return Ok(Transport::Stopped);
        };
        std::fs::create_dir_all(&args.data_dir)
            .map_err(|e| config_error(format!("cannot create {}: {e}", args.data_dir.display())))?;
        write_atomic(&key_path, &key.serialize_pem(), 0o600)?;
        // Last: its presence means the pair is complete.
        write_atomic(&cert_path, &cert, 0o644)?;
        info!(node = name, "joined the cluster; node certificate saved");
    }
    let cert = read(&cert_path, "the node certificate")?;
    let key = read(&key_path, "the node key")?;
    match tls::node_name_of_pem(&cert) {
        Some(n) if n == name => {}
        Some(n) => {
            return Err(config_error(format!(
                "the certificate in {} is for node {n:?}, but this agent is named {name:?}: use --name {n}, or another --data-dir to join as {name}",
                args.data_dir.display()
            )))
        }
        None => {
            return Err(config_error(format!(
                "{} is not a node certificate of this cluster: remove it and join again with --join-token",
                cert_path.display()
            )))
        }
    }
    Ok(Transport::Tls {
        config: Box::new(tls::client_config(&ca, Some((&cert, &key)))),
        ca_pem: ca,
    })
}

/// Asks the manager for a node certificate; retries while it is
/// unreachable. None when shutdown was requested.
async fn join(
    args: &Args,
    name: &str,
    token: &str,
    ca: &str,
    key: &KeyPair,
    stop: &mut watch::Receiver<bool>,
) -> Result<Option<String>, AgentError> {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, name);
    let csr = params
        .serialize_request(key)
        .and_then(|c| c.pem())
        .map_err(|e| config_error(format!("cannot make a certificate request: {e}")))?;
    let server_only = tls::client_config(ca, None);
    let mut failures = 0u32;
    loop {
        let attempt = async {
            let channel = minkube::client::channel_with(&args.manager, Some(&server_only))
                .await
                .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
            AgentServiceClient::new(channel)
                .join(JoinRequest {
                    join_token: token.trim().to_string(),
                    name: name.to_string(),
                    csr_pem: csr.clone(),
                })
                .await
        };
        let result = tokio::select! {
            r = attempt => r,
            () = crate::stopped(stop) => return Ok(None),
        };
        match result {
            Ok(resp) => return Ok(Some(resp.into_inner().certificate_pem)),
            Err(s)
                if matches!(
                    s.code(),
                    tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
                ) =>
            {
                warn!(error = %s.message(), "cannot reach the manager to join; retrying");
            }
            Err(s) => {
                return Err(config_error(format!(
                    "the manager refused to let this node join: {} ({:?})",
                    s.message(),
                    s.code()
                )))
            }
        }
        let delay = Backoff::default().delay(failures, &mut rand::rng());
        failures = failures.saturating_add(1);
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = crate::stopped(stop) => return Ok(None),
        }
    }
}
