//! Renews the node certificate before it expires: when two thirds of its
//! lifetime have passed, the agent makes a new key, asks the manager to sign
//! it (`RenewCertificate`, authenticated by the current certificate), saves
//! the pair and hands the new identity to the session loop; the next
//! connection uses it. The open session keeps its TLS connection.
//!
//! The pair is saved as `node.key.next` and `node.pem.next`, then renamed
//! over the old files, key first. A start after a crash in between finishes
//! the renames ([`finish_interrupted`]), so key and certificate always match.
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use minkube::pb::{agent_service_client::AgentServiceClient, RenewCertificateRequest};
use minkube_common::retry::Backoff;
use minkube_common::tls;
use rcgen::{CertificateParams, KeyPair};
use tokio::sync::watch;
use tonic::transport::ClientTlsConfig;
use tracing::{error, info, warn};

use crate::join::{write_atomic, NODE_CERT, NODE_KEY};
use crate::AgentError;

const NEXT_CERT: &str = "node.pem.next";
const NEXT_KEY: &str = "node.key.next";

/// How long to wait before renewing a certificate valid from `not_before`
/// to `not_after` (Unix seconds), at `now`: until two thirds of its lifetime
/// have passed.
pub(crate) fn renew_delay(not_before: i64, not_after: i64, now: i64) -> Duration {
    let lifetime = not_after.saturating_sub(not_before).max(0);
    let renew_at = not_after.saturating_sub(lifetime / 3);
    Duration::from_secs(u64::try_from(renew_at.saturating_sub(now)).unwrap_or(0))
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn rename(dir: &Path, from: &str, to: &str) -> Result<(), AgentError> {
    std::fs::rename(dir.join(from), dir.join(to)).map_err(|e| {
        AgentError::Config(format!(
            "cannot move {} into place: {e}",
            dir.join(from).display()
        ))
    })
}

/// Completes a renewal a crash interrupted: once the new certificate was
/// saved, the new pair goes into place; before that, the half-saved key is
/// dropped and the old pair stays.
pub fn finish_interrupted(data_dir: &Path) -> Result<(), AgentError> {
    if data_dir.join(NEXT_CERT).exists() {
        if data_dir.join(NEXT_KEY).exists() {
            rename(data_dir, NEXT_KEY, NODE_KEY)?;
        }
        rename(data_dir, NEXT_CERT, NODE_CERT)?;
        info!("finished saving the node certificate renewed before the last stop");
    } else if data_dir.join(NEXT_KEY).exists() {
        let _ = std::fs::remove_file(data_dir.join(NEXT_KEY));
    }
    Ok(())
}

/// Saves a renewed pair (see the module docs for the order).
pub(crate) fn save(data_dir: &Path, cert_pem: &str, key_pem: &str) -> Result<(), AgentError> {
    write_atomic(&data_dir.join(NEXT_KEY), key_pem, 0o600)?;
    write_atomic(&data_dir.join(NEXT_CERT), cert_pem, 0o644)?;
    rename(data_dir, NEXT_KEY, NODE_KEY)?;
    rename(data_dir, NEXT_CERT, NODE_CERT)
}

/// Waits the next retry delay; false if `stop` turned true first.
async fn backoff(failures: &mut u32, stop: &mut watch::Receiver<bool>) -> bool {
    let delay = Backoff::default().delay(*failures, &mut rand::rng());
    *failures = failures.saturating_add(1);
    tokio::select! {
        () = tokio::time::sleep(delay) => true,
        () = crate::stopped(stop) => false,
    }
}

/// What the renewal loop needs.
pub struct Renewer {
    /// Manager address.
    pub manager: String,
    /// The cluster CA (PEM).
    pub ca_pem: String,
    /// Where the node's pair is kept.
    pub data_dir: std::path::PathBuf,
    /// The identity the session loop connects with.
    pub tls: watch::Sender<ClientTlsConfig>,
}

impl Renewer {
    /// Renews the certificate each time it is due, until `stop` turns true.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut failures = 0u32;
        let mut renewed = false;
        loop {
            let wait = match self.due() {
                Ok(wait) => wait,
                Err(e) => {
                    error!(error = %e, "cannot read the node certificate to plan its renewal");
                    return;
                }
            };
            if wait.is_zero() && renewed {
                // A fresh certificate already due: clocks apart by a good
                // part of its lifetime. Back off instead of asking on and on.
                warn!("the renewed node certificate is already due for renewal: is this host's clock far ahead of the manager's?");
                if !backoff(&mut failures, &mut stop).await {
                    return;
                }
            } else if !wait.is_zero() {
                failures = 0;
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = crate::stopped(&mut stop) => return,
                }
            }
            match self.renew_once().await {
                Ok(not_after) => {
                    renewed = true;
                    info!(valid_until = not_after, "node certificate renewed");
                }
                Err(e) => {
                    renewed = false;
                    warn!(error = %e, "cannot renew the node certificate yet; retrying");
                    if !backoff(&mut failures, &mut stop).await {
                        return;
                    }
                }
            }
        }
    }

    /// How long until the saved certificate is due; its expiry goes to the
    /// metrics, and an expired one is reported.
    fn due(&self) -> Result<Duration, AgentError> {
        let path = self.data_dir.join(NODE_CERT);
        let pem = std::fs::read_to_string(&path)
            .map_err(|e| AgentError::Config(format!("cannot read {}: {e}", path.display())))?;
        let (not_before, not_after) = tls::validity_of_pem(&pem).ok_or_else(|| {
            AgentError::Config(format!("{} is not a certificate", path.display()))
        })?;
        #[allow(clippy::cast_precision_loss)]
        metrics::gauge!("minkube_agent_node_cert_expiry_timestamp_seconds").set(not_after as f64);
        let now = unix_now();
        if now >= not_after {
            error!(
                cert = %path.display(),
                "the node certificate expired: remove node.pem and node.key from the data dir and start the agent with a current --join-token"
            );
        }
        Ok(renew_delay(not_before, not_after, now))
    }

    /// One renewal: a new key, the manager's signature, the pair saved and
    /// handed to the session loop. Returns when the new one expires.
    async fn renew_once(&self) -> Result<i64, AgentError> {
        let key = KeyPair::generate()
            .map_err(|e| AgentError::Config(format!("cannot make a key: {e}")))?;
        let csr = CertificateParams::default()
            .serialize_request(&key)
            .and_then(|c| c.pem())
            .map_err(|e| AgentError::Config(format!("cannot make a certificate request: {e}")))?;
        let current = self.tls.borrow().clone();
        let channel = minkube::client::channel_with(&self.manager, Some(&current))
            .await
            .map_err(|e| AgentError::Config(format!("cannot reach the manager: {e}")))?;
        let cert = AgentServiceClient::new(channel)
            .renew_certificate(RenewCertificateRequest { csr_pem: csr })
            .await
            .map_err(|s| {
                AgentError::Config(format!(
                    "the manager did not renew the certificate: {} ({:?})",
                    s.message(),
                    s.code()
                ))
            })?
            .into_inner()
            .certificate_pem;
        let (_, not_after) = tls::validity_of_pem(&cert)
            .ok_or_else(|| AgentError::Config("the manager answered with no certificate".into()))?;
        let key_pem = key.serialize_pem();
        save(&self.data_dir, &cert, &key_pem)?;
        self.tls
            .send_replace(tls::client_config(&self.ca_pem, Some((&cert, &key_pem))));
        Ok(not_after)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn renewal_is_due_after_two_thirds_of_the_lifetime() {
        let day = 86_400;
        // A year from issue: due after 243 days and a third.
        let due = renew_delay(0, 365 * day, 0);
        assert_eq!(due.as_secs(), 365 * 86_400 - (365 * 86_400) / 3);
        // Halfway through: the rest of the first two thirds.
        assert_eq!(renew_delay(0, 300, 150).as_secs(), 50);
        // Overdue or expired: at once.
        assert_eq!(renew_delay(0, 300, 250), Duration::ZERO);
        assert_eq!(renew_delay(0, 300, 400), Duration::ZERO);
        // Nonsense validity: at once, never a panic.
        assert_eq!(renew_delay(300, 0, 0), Duration::ZERO);
    }

    fn pair(dir: &Path) -> (String, String) {
        (
            std::fs::read_to_string(dir.join(NODE_CERT)).unwrap(),
            std::fs::read_to_string(dir.join(NODE_KEY)).unwrap(),
        )
    }

    #[test]
    fn a_saved_pair_replaces_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join(NODE_CERT), "old cert").unwrap();
        std::fs::write(d.join(NODE_KEY), "old key").unwrap();
        save(d, "new cert", "new key").unwrap();
        assert_eq!(pair(d), ("new cert".into(), "new key".into()));
        assert!(!d.join(NEXT_CERT).exists() && !d.join(NEXT_KEY).exists());
    }

    #[test]
    fn an_interrupted_renewal_leaves_a_matching_pair() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let reset = || {
            for f in [NODE_CERT, NODE_KEY, NEXT_CERT, NEXT_KEY] {
                let _ = std::fs::remove_file(d.join(f));
            }
            std::fs::write(d.join(NODE_CERT), "old cert").unwrap();
            std::fs::write(d.join(NODE_KEY), "old key").unwrap();
        };
        // Stopped while saving the key: the old pair stays.
        reset();
        std::fs::write(d.join(NEXT_KEY), "new key").unwrap();
        finish_interrupted(d).unwrap();
        assert_eq!(pair(d), ("old cert".into(), "old key".into()));
        assert!(!d.join(NEXT_KEY).exists());
        // Both saved, none moved: the new pair goes into place.
        reset();
        std::fs::write(d.join(NEXT_KEY), "new key").unwrap();
        std::fs::write(d.join(NEXT_CERT), "new cert").unwrap();
        finish_interrupted(d).unwrap();
        assert_eq!(pair(d), ("new cert".into(), "new key".into()));
        // The key moved, the certificate not yet.
        reset();
        std::fs::write(d.join(NODE_KEY), "new key").unwrap();
        std::fs::write(d.join(NEXT_CERT), "new cert").unwrap();
        finish_interrupted(d).unwrap();
        assert_eq!(pair(d), ("new cert".into(), "new key".into()));
        // Nothing pending: nothing changes.
        reset();
        finish_interrupted(d).unwrap();
        assert_eq!(pair(d), ("old cert".into(), "old key".into()));
    }
}
