//! TLS material: PEM files on disk, the server and client settings built
//! from them, and the node identity a client certificate carries.
use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// Subject organisation of node (agent) certificates.
pub const AGENT_ORGANIZATION: &str = "minkube-agent";

/// A file could not be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read {}: {source}", path.display())]
pub struct TlsError {
    /// The file.
    pub path: PathBuf,
    /// Why.
    pub source: std::io::Error,
}

/// Reads a PEM file.
pub fn read_pem(path: &Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|source| TlsError {
        path: path.to_path_buf(),
        source,
    })
}

/// Server settings: the server's certificate and key, and the CA that
/// client certificates must chain to. A client certificate is optional at
/// the TLS level: callers with bearer tokens present none, and the
/// manager decides per method what it requires.
pub fn server_config(ca_pem: &str, cert_pem: &str, key_pem: &str) -> ServerTlsConfig {
    ServerTlsConfig::new()
        .identity(Identity::from_pem(cert_pem, key_pem))
        .client_ca_root(Certificate::from_pem(ca_pem))
        .client_auth_optional(true)
}

/// Client settings that verify the server against `ca_pem` and, when given,
/// present `identity` = (certificate PEM, key PEM).
pub fn client_config(ca_pem: &str, identity: Option<(&str, &str)>) -> ClientTlsConfig {
    let config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem));
    match identity {
        Some((cert, key)) => config.identity(Identity::from_pem(cert, key)),
        None => config,
    }
}

/// The node name in a node certificate (DER): its subject common name, if
/// the subject's organisation is [`AGENT_ORGANIZATION`]. The chain itself is
/// verified by the TLS layer before this is asked.
pub fn node_name_of(cert_der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    name_in(&cert)
}

/// [`node_name_of`] and [`validity_of`] from one parse: the node name and
/// the certificate's `notBefore` and `notAfter` (Unix seconds).
pub fn node_certificate_of(cert_der: &[u8]) -> Option<(String, i64, i64)> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    let v = cert.validity();
    Some((
        name_in(&cert)?,
        v.not_before.timestamp(),
        v.not_after.timestamp(),
    ))
}

fn name_in(cert: &x509_parser::certificate::X509Certificate<'_>) -> Option<String> {
    let subject = cert.subject();
    let org = subject.iter_organization().next()?.as_str().ok()?;
    if org != AGENT_ORGANIZATION {
        return None;
    }
    let cn = subject.iter_common_name().next()?.as_str().ok()?;
    Some(cn.to_string())
}

/// The node name in the first PEM certificate of `pem`.
pub fn node_name_of_pem(pem: &str) -> Option<String> {
    let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).ok()?;
    node_name_of(&p.contents)
}

/// When the certificate `cert_der` becomes valid and when it expires (Unix
/// seconds).
pub fn validity_of(cert_der: &[u8]) -> Option<(i64, i64)> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    let v = cert.validity();
    Some((v.not_before.timestamp(), v.not_after.timestamp()))
}

/// [`validity_of`] the first PEM certificate of `pem`.
pub fn validity_of_pem(pem: &str) -> Option<(i64, i64)> {
    let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).ok()?;
    validity_of(&p.contents)
}
