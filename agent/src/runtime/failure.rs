//! Which runtime failures are worth another attempt. The agent only
//! classifies; the manager decides (and records) whether to try again, so
//! this is the one place that maps an error onto a [`FailureKind`].
//!
//! | error                                                   | kind      |
//! |---------------------------------------------------------|-----------|
//! | Docker unreachable, request timeout (`Unavailable`)     | TRANSIENT |
//! | image absent under pull policy never, invalid spec      | PERMANENT |
//! | words naming a network failure (DNS, refused, timeouts, | TRANSIENT |
//! |   registry 5xx, rate limit)                             |           |
//! | words naming a missing or refused image, a missing      | PERMANENT |
//! |   executable                                            |           |
//! | otherwise: 404 (object vanished between two calls)      | TRANSIENT |
//! | otherwise: HTTP 408 / 429 / 5xx / no status             | TRANSIENT |
//! | otherwise: other HTTP 4xx (e.g. 400 on create)          | PERMANENT |
//!
//! A container that ran and ended is classified where exits are reported
//! (EXITED): see [`crate::reconciler::exit_outcome`].
use minkube::pb::FailureKind;

use super::RuntimeError;

/// Words of network failures (Go's net and net/http, registries). Checked
/// before [`PERMANENT_MARKERS`]: failing a task for good over a flaky
/// network costs more than one needless retry.
const TRANSIENT_MARKERS: &[&str] = &[
    "no such host",
    "temporary failure in name resolution",
    "server misbehaving",
    "connection refused",
    "connection reset",
    "broken pipe",
    "network is unreachable",
    "no route to host",
    "i/o timeout",
    "tls handshake timeout",
    "timeout exceeded",
    "deadline exceeded",
    "request canceled",
    "unexpected eof",
    "toomanyrequests",
    "too many requests",
    "internal server error",
    "bad gateway",
    "service unavailable",
    "gateway timeout",
];

/// Words of failures that the same request would meet again.
const PERMANENT_MARKERS: &[&str] = &[
    "manifest unknown",
    "no matching manifest",
    "not found",
    "pull access denied",
    "repository does not exist",
    "requested access to the resource is denied",
    "unauthorized",
    "invalid reference format",
    "no such file or directory",
    "permission denied",
];

/// Status words that introduce an HTTP status code in registry errors, e.g.
/// "received unexpected HTTP status: 503 Service Unavailable".
const STATUS_PREFIXES: &[&str] = &["status: ", "status code ", "status ", "http "];

impl RuntimeError {
    /// What kind of failure this is for an attempt that hit it.
    pub fn failure_kind(&self) -> FailureKind {
        match self {
            Self::Unavailable(_) => FailureKind::Transient,
            // Unless the words say the image does not exist anywhere, the
            // container or image went away between two calls (removed
            // outside minkube): a new attempt starts from scratch.
            Self::NotFound(message) => from_words(message).unwrap_or(FailureKind::Transient),
            Self::ImageNotFound { .. } | Self::InvalidSpec(_) => FailureKind::Permanent,
            Self::PullFailed {
                status, message, ..
            }
            | Self::RefreshFailed {
                status, message, ..
            }
            | Self::Daemon {
                status, message, ..
            } => from_words(message).unwrap_or_else(|| from_status(*status)),
        }
    }
}

/// The kind the daemon's (or registry's) words name, if they name one.
fn from_words(message: &str) -> Option<FailureKind> {
    let text = message.to_ascii_lowercase();
    if TRANSIENT_MARKERS.iter().any(|m| text.contains(m)) || names_server_error(&text) {
        return Some(FailureKind::Transient);
    }
    if PERMANENT_MARKERS.iter().any(|m| text.contains(m)) {
        return Some(FailureKind::Permanent);
    }
    None
}

/// Client errors are the request's fault and repeat; anything else (server
/// errors, errors inside a stream) may not.
fn from_status(status: Option<u16>) -> FailureKind {
    match status {
        Some(408 | 429) => FailureKind::Transient,
        Some(400..=499) => FailureKind::Permanent,
        _ => FailureKind::Transient,
    }
}

/// Whether lower-case `text` quotes an HTTP 5xx status (e.g. a registry's).
fn names_server_error(text: &str) -> bool {
    STATUS_PREFIXES.iter().any(|prefix| {
        text.match_indices(prefix).any(|(i, _)| {
            let code = &text.as_bytes()[i + prefix.len()..];
            code.len() >= 3
                && code[0] == b'5'
                && code[1..3].iter().all(u8::is_ascii_digit)
                && code.get(3).is_none_or(|b| !b.is_ascii_digit())
        })
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use minkube::pb::PullPolicy;

    use bollard::errors::Error as DockerError;

    use super::super::docker_convert::classify;
    use super::super::ensure_image;
    use super::super::fake::FakeRuntime;
    use super::*;

    fn daemon(status: Option<u16>, message: &str) -> RuntimeError {
        RuntimeError::Daemon {
            action: "create the container",
            status,
            message: message.into(),
        }
    }

    fn pull(status: Option<u16>, message: &str) -> RuntimeError {
        RuntimeError::PullFailed {
            image: "x:1".into(),
            status,
            message: message.into(),
        }
    }

    #[test]
    fn registry_unreachable_is_transient() {
        for message in [
            "Get \"https://registry-1.docker.io/v2/\": dial tcp: lookup registry-1.docker.io on 10.0.0.1:53: no such host",
            "dial tcp: lookup registry-1.docker.io: Temporary failure in name resolution",
            "Get \"https://registry-1.docker.io/v2/\": dial tcp 1.2.3.4:443: connect: connection refused",
            "Get \"https://registry-1.docker.io/v2/\": dial tcp 1.2.3.4:443: i/o timeout",
            "Get \"https://registry-1.docker.io/v2/\": net/http: TLS handshake timeout",
            "received unexpected HTTP status: 503 Service Unavailable",
            "error parsing HTTP 502 response body: invalid character '<'",
            "toomanyrequests: You have reached your pull rate limit",
        ] {
            assert_eq!(
                pull(Some(500), message).failure_kind(),
                FailureKind::Transient,
                "{message}"
            );
            assert_eq!(
                pull(None, message).failure_kind(),
                FailureKind::Transient,
                "{message}"
            );
        }
    }

    #[test]
    fn missing_or_refused_images_are_permanent() {
        for message in [
            "manifest for x:1 not found: manifest unknown: manifest unknown",
            "pull access denied for x, repository does not exist or may require 'docker login': denied: requested access to the resource is denied",
            "no matching manifest for linux/amd64 in the manifest list entries",
            "invalid reference format",
        ] {
            assert_eq!(
                pull(Some(404), message).failure_kind(),
                FailureKind::Permanent,
                "{message}"
            );
            // Words win over the status: a 500 naming a missing image is still missing.
            assert_eq!(
                pull(Some(500), message).failure_kind(),
                FailureKind::Permanent,
                "{message}"
            );
        }
        let refresh = RuntimeError::RefreshFailed {
            image: "x:1".into(),
            status: None,
            message: "pull access denied for x".into(),
        };
        assert_eq!(refresh.failure_kind(), FailureKind::Permanent);
    }

    #[test]
    fn pull_policy_never_and_invalid_specs_are_permanent() {
        let never = RuntimeError::ImageNotFound {
            image: "x:1".into(),
        };
        assert_eq!(never.failure_kind(), FailureKind::Permanent);
        let spec = RuntimeError::InvalidSpec("spec.memory_mb must be at least 4".into());
        assert_eq!(spec.failure_kind(), FailureKind::Permanent);
    }

    #[test]
    fn client_errors_on_create_are_permanent() {
        let bad = daemon(
            Some(400),
            "invalid CapAdd: unknown capability: \"CAP_NOPE\"",
        );
        assert_eq!(bad.failure_kind(), FailureKind::Permanent);
        let exec = daemon(
            Some(400),
            "OCI runtime create failed: exec: \"/no/such\": stat /no/such: no such file or directory: unknown",
        );
        assert_eq!(exec.failure_kind(), FailureKind::Permanent);
        assert_eq!(
            daemon(Some(409), "conflict").failure_kind(),
            FailureKind::Permanent
        );
    }

    #[test]
    fn unreachable_daemons_timeouts_and_server_errors_are_transient() {
        for e in [
            RuntimeError::Unavailable(
                "error trying to connect: Connection refused (os error 111)".into(),
            ),
            RuntimeError::Unavailable(
                "no answer in time while trying to create the container".into(),
            ),
            RuntimeError::NotFound("No such container: c1".into()),
            RuntimeError::NotFound("No such image: x:1".into()),
            daemon(Some(500), "devmapper: Thin Pool has 0 free data blocks"),
            daemon(Some(503), "the daemon is shutting down"),
            daemon(Some(408), "request timeout"),
            daemon(Some(429), "slow down"),
            daemon(None, "stream ended early"),
        ] {
            assert_eq!(e.failure_kind(), FailureKind::Transient, "{e}");
        }
    }

    #[test]
    fn server_error_codes_are_found_in_words() {
        assert!(names_server_error(
            "received unexpected http status: 500 internal"
        ));
        assert!(names_server_error("error parsing http 504 response body"));
        assert!(!names_server_error(
            "received unexpected http status: 404 not found"
        ));
        assert!(!names_server_error("status: 5000 items"));
        assert!(!names_server_error("status: 5"));
    }

    #[tokio::test]
    async fn image_preparation_failures_carry_their_kind() {
        let rt = FakeRuntime::new();
        let kind = |e: RuntimeError| (e.failure_kind(), e);

        let (k, e) = kind(
            ensure_image(&rt, "nope:1", PullPolicy::Never, || {})
                .await
                .unwrap_err(),
        );
        assert_eq!(k, FailureKind::Permanent, "{e}");

        let (k, e) = kind(
            ensure_image(&rt, "nope:1", PullPolicy::IfNotPresent, || {})
                .await
                .unwrap_err(),
        );
        assert!(
            matches!(
                e,
                RuntimeError::PullFailed {
                    status: Some(404),
                    ..
                }
            ),
            "{e:?}"
        );
        assert_eq!(k, FailureKind::Permanent, "{e}");

        rt.fail_pull(RuntimeError::Daemon {
            action: "pull the image",
            status: Some(500),
            message: "Get \"https://registry-1.docker.io/v2/\": dial tcp: lookup registry-1.docker.io on 10.0.0.1:53: no such host".into(),
        });
        let (k, e) = kind(
            ensure_image(&rt, "x:1", PullPolicy::IfNotPresent, || {})
                .await
                .unwrap_err(),
        );
        assert!(e.to_string().starts_with("image \"x:1\" "), "{e}");
        assert_eq!(k, FailureKind::Transient, "{e}");

        // An unreachable daemon is reported as such, not as a pull failure.
        rt.fail_pull(RuntimeError::Unavailable("connection refused".into()));
        let (k, e) = kind(
            ensure_image(&rt, "x:1", PullPolicy::Always, || {})
                .await
                .unwrap_err(),
        );
        assert!(e.is_unavailable(), "{e:?}");
        assert_eq!(k, FailureKind::Transient);
    }

    #[test]
    fn classified_errors_keep_what_decides_their_failure_kind() {
        let timeout = classify("create the container", DockerError::RequestTimeoutError);
        assert_eq!(timeout.failure_kind(), FailureKind::Transient);
        let bad = classify(
            "create the container",
            DockerError::DockerResponseServerError {
                status_code: 400,
                message: "invalid port specification".into(),
            },
        );
        assert_eq!(bad.status(), Some(400));
        assert_eq!(bad.failure_kind(), FailureKind::Permanent);
        let dns = classify(
            "pull the image",
            DockerError::DockerResponseServerError {
                status_code: 500,
                message: "Get \"https://registry-1.docker.io/v2/\": dial tcp: lookup registry-1.docker.io on 10.0.0.1:53: no such host".into(),
            },
        );
        assert_eq!(dns.failure_kind(), FailureKind::Transient);
        let missing = classify(
            "pull the image",
            DockerError::DockerResponseServerError {
                status_code: 404,
                message: "manifest for x:1 not found: manifest unknown: manifest unknown".into(),
            },
        );
        assert_eq!(missing.failure_kind(), FailureKind::Permanent);
        let streamed = classify(
            "pull the image",
            DockerError::DockerStreamError {
                error: "pull access denied for x, repository does not exist".into(),
            },
        );
        assert_eq!(streamed.status(), None);
        assert_eq!(streamed.failure_kind(), FailureKind::Permanent);
        let socket = classify(
            "answer a ping",
            DockerError::IOError {
                err: std::io::Error::new(
                    std::io::ErrorKind::ConnectionRefused,
                    "connection refused",
                ),
            },
        );
        assert!(socket.is_unavailable());
        assert_eq!(socket.failure_kind(), FailureKind::Transient);
    }
}
