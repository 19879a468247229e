//! The cluster's certificate authority, kept in `<data dir>/pki/`: created
//! by `minkube-manager init`, it signs the manager's server certificate and
//! each agent's client certificate (subject `O=minkube-agent, CN=<node>`,
//! from a CSR, so an agent's key never leaves its host).
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use minkube_common::tls::AGENT_ORGANIZATION;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};
use tonic::transport::ServerTlsConfig;

/// Directory under the data dir.
pub const PKI_DIR: &str = "pki";
/// The CA certificate agents and clients need (`--ca-cert`).
pub const CA_CERT: &str = "ca.pem";
const CA_KEY: &str = "ca.key";
const SERVER_CERT: &str = "server.pem";
const SERVER_KEY: &str = "server.key";

/// How long a node certificate is valid unless configured
/// (`--node-cert-ttl`).
pub const NODE_CERT_TTL: std::time::Duration = std::time::Duration::from_secs(365 * 86_400);
/// How long the CA and the server certificate are valid.
const CA_DAYS: i64 = 10 * 365;
const SERVER_DAYS: i64 = 2 * 365;

/// A failure to create, load or use the CA.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// `init` found an existing CA.
    #[error("{} already holds a cluster CA: this data dir is initialised (delete pki/ to start over; every agent must then join again)", .0.display())]
    Exists(PathBuf),
    /// The manager was started without one.
    #[error("no cluster CA in {}: run `minkube-manager init --data-dir <same dir>` first, or pass --insecure to serve plaintext without authentication", .0.display())]
    Missing(PathBuf),
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Certificate generation or parsing failed.
    #[error("certificate error: {0}")]
    Cert(#[from] rcgen::Error),
    /// A join request's CSR is unusable.
    #[error("the certificate signing request is not usable: {0}")]
    BadCsr(String),
}

/// The loaded CA and server certificate.
pub struct Pki {
    ca_pem: String,
    ca_key: KeyPair,
    server_cert_pem: String,
    server_key_pem: String,
    node_cert_ttl: std::time::Duration,
}

fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join(PKI_DIR)
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn read(path: &Path) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(io(path))
}

/// Writes a file readable by the owner only (keys), or by all (certificates).
fn write(path: &Path, contents: &str, private: bool) -> Result<(), PkiError> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(path)
        .map_err(io(path))?;
    f.write_all(contents.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(io(path))
}

fn validity(params: &mut CertificateParams, days: i64) {
    validity_for(params, Duration::days(days));
}

/// Slack before `notBefore` for clocks a little behind the manager's: a
/// tenth of the lifetime, at most this many seconds.
const MAX_SLACK_SECS: i64 = 300;
/// The slack is the lifetime divided by this.
const SLACK_DIVISOR: i32 = 10;

fn validity_for(params: &mut CertificateParams, lifetime: Duration) {
    let now = OffsetDateTime::now_utc();
    let slack: Duration = (lifetime / SLACK_DIVISOR).min(Duration::seconds(MAX_SLACK_SECS));
    params.not_before = now.saturating_sub(slack);
    params.not_after = now.saturating_add(lifetime);
}

/// When a certificate made with [`validity_for`] was issued (Unix
/// seconds, within a second), from its validity alone: its span is the
/// lifetime plus its slack. So a node removal can revoke the certificates
/// issued before it whatever lifetime they were given.
pub fn issued_at(not_before: i64, not_after: i64) -> i64 {
    let d = i64::from(SLACK_DIVISOR);
    let span = not_after.saturating_sub(not_before);
    // Below (d + 1) * MAX_SLACK_SECS the slack is lifetime / d.
    let lifetime = if span <= (d + 1) * MAX_SLACK_SECS {
        span * d / (d + 1)
    } else {
        span - MAX_SLACK_SECS
    };
    not_after - lifetime
}

fn serial(params: &mut CertificateParams) {
    params.serial_number = Some(rand::random::<u64>().into());
}

impl Pki {
    /// Whether `data_dir` holds a CA.
    pub fn exists(data_dir: &Path) -> bool {
        dir(data_dir).join(CA_CERT).exists()
    }

    /// Creates a CA and a server certificate valid for `localhost`,
    /// `127.0.0.1`, `::1`, this host's name and `extra_names`.
    pub fn create(data_dir: &Path, extra_names: &[String]) -> Result<Self, PkiError> {
        let d = dir(data_dir);
        if Self::exists(data_dir) {
            return Err(PkiError::Exists(d));
        }
        std::fs::create_dir_all(&d).map_err(io(&d))?;

        let ca_key = KeyPair::generate()?;
        let mut ca = CertificateParams::default();
        ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca.distinguished_name = DistinguishedName::new();
        ca.distinguished_name
            .push(DnType::CommonName, "minkube cluster CA");
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        validity(&mut ca, CA_DAYS);
        serial(&mut ca);
        let ca_cert = ca.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca, &ca_key);

        let mut names = vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()];
        if let Ok(host) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
            let host = host.trim();
            if !host.is_empty() {
                names.push(host.to_string());
            }
        }
        names.extend(extra_names.iter().cloned());
        names.dedup();
        let server_key = KeyPair::generate()?;
        let mut server = CertificateParams::new(names)?;
        server
            .distinguished_name
            .push(DnType::CommonName, "minkube-manager");
        server.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        validity(&mut server, SERVER_DAYS);
        serial(&mut server);
        let server_cert = server.signed_by(&server_key, &issuer)?;

        let pki = Self {
            ca_pem: ca_cert.pem(),
            ca_key,
            server_cert_pem: server_cert.pem(),
            server_key_pem: server_key.serialize_pem(),
            node_cert_ttl: NODE_CERT_TTL,
        };
        write(&d.join(CA_KEY), &pki.ca_key.serialize_pem(), true)?;
        write(&d.join(SERVER_KEY), &pki.server_key_pem, true)?;
        write(&d.join(SERVER_CERT), &pki.server_cert_pem, false)?;
        // Last: its presence marks the CA as complete.
        write(&d.join(CA_CERT), &pki.ca_pem, false)?;
        Ok(pki)
    }

    /// Loads the CA of `data_dir`.
    pub fn load(data_dir: &Path) -> Result<Self, PkiError> {
        let d = dir(data_dir);
        if !Self::exists(data_dir) {
            return Err(PkiError::Missing(data_dir.to_path_buf()));
        }
        Ok(Self {
            ca_pem: read(&d.join(CA_CERT))?,
            ca_key: KeyPair::from_pem(&read(&d.join(CA_KEY))?)?,
            server_cert_pem: read(&d.join(SERVER_CERT))?,
            server_key_pem: read(&d.join(SERVER_KEY))?,
            node_cert_ttl: NODE_CERT_TTL,
        })
    }

    /// Node certificates signed from now on are valid for `ttl`.
    #[must_use]
    pub fn with_node_cert_ttl(mut self, ttl: std::time::Duration) -> Self {
        self.node_cert_ttl = ttl;
        self
    }

    /// Path of the CA certificate, for `init`'s instructions.
    pub fn ca_path(data_dir: &Path) -> PathBuf {
        dir(data_dir).join(CA_CERT)
    }

    /// The CA certificate (PEM).
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// TLS settings of the gRPC server.
    pub fn server_tls(&self) -> ServerTlsConfig {
        minkube_common::tls::server_config(
            &self.ca_pem,
            &self.server_cert_pem,
            &self.server_key_pem,
        )
    }

    /// Signs a node certificate for `node` over the CSR's public key. The
    /// subject is set here, whatever the CSR asked for.
    pub fn sign_node(&self, csr_pem: &str, node: &str) -> Result<String, PkiError> {
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| PkiError::BadCsr(e.to_string()))?;
        let p = &mut csr.params;
        p.distinguished_name = DistinguishedName::new();
        p.distinguished_name
            .push(DnType::OrganizationName, AGENT_ORGANIZATION);
        p.distinguished_name.push(DnType::CommonName, node);
        p.subject_alt_names = Vec::new();
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        p.custom_extensions = Vec::new();
        let lifetime = Duration::try_from(self.node_cert_ttl).unwrap_or(Duration::MAX);
        validity_for(p, lifetime);
        serial(p);
        let issuer = Issuer::from_ca_cert_pem(&self.ca_pem, &self.ca_key)?;
        Ok(csr.signed_by(&issuer)?.pem())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn csr(cn: &str) -> String {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::default();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.serialize_request(&key).unwrap().pem().unwrap()
    }

    #[test]
    fn create_then_load_and_sign_a_node() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::create(dir.path(), &["manager.example".into()]).unwrap();
        assert!(matches!(
            Pki::create(dir.path(), &[]),
            Err(PkiError::Exists(_))
        ));
        let loaded = Pki::load(dir.path()).unwrap();
        assert_eq!(loaded.ca_pem(), pki.ca_pem());
        // The CSR asks for another name: the certificate names the node.
        let cert = loaded.sign_node(&csr("someone-else"), "node-a").unwrap();
        assert_eq!(
            minkube_common::tls::node_name_of_pem(&cert).as_deref(),
            Some("node-a")
        );
        let key = std::fs::metadata(dir.path().join("pki/ca.key")).unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(key.permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn missing_ca_and_bad_csr_say_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let e = Pki::load(dir.path()).err().unwrap().to_string();
        assert!(
            e.contains("minkube-manager init") && e.contains("--insecure"),
            "{e}"
        );
        let pki = Pki::create(dir.path(), &[]).unwrap();
        assert!(matches!(
            pki.sign_node("not a csr", "n"),
            Err(PkiError::BadCsr(_))
        ));
    }

    #[test]
    fn node_certificates_last_the_configured_lifetime() {
        let dir = tempfile::tempdir().unwrap();
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let pki = Pki::create(dir.path(), &[]).unwrap();
        let (nb, na) =
            minkube_common::tls::validity_of_pem(&pki.sign_node(&csr("x"), "a").unwrap()).unwrap();
        assert!((na - now - 365 * 86_400).abs() < 60, "a year by default");
        assert!((now - nb - 300).abs() < 60, "five minutes of slack");

        let pki = pki.with_node_cert_ttl(std::time::Duration::from_secs(30));
        let (nb, na) =
            minkube_common::tls::validity_of_pem(&pki.sign_node(&csr("x"), "a").unwrap()).unwrap();
        assert!((na - now - 30).abs() <= 2, "{na} - {now}");
        assert!((now - nb - 3).abs() <= 2, "a tenth as slack: {nb} - {now}");
    }

    #[test]
    fn the_issue_time_is_read_back_from_any_lifetime() {
        let dir = tempfile::tempdir().unwrap();
        let mut pki = Pki::create(dir.path(), &[]).unwrap();
        for secs in [5, 30, 2_999, 3_000, 3_001, 86_400, 365 * 86_400] {
            let before = OffsetDateTime::now_utc().unix_timestamp();
            pki = pki.with_node_cert_ttl(std::time::Duration::from_secs(secs));
            let pem = pki.sign_node(&csr("x"), "a").unwrap();
            let after = OffsetDateTime::now_utc().unix_timestamp();
            let (nb, na) = minkube_common::tls::validity_of_pem(&pem).unwrap();
            let at = issued_at(nb, na);
            assert!(
                (before - 1..=after + 1).contains(&at),
                "lifetime {secs} s: issued {at}, signed within {before}..={after}"
            );
        }
    }
}
