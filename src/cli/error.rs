//! Errors the CLI reports, and how a gRPC status is shown to the user.
use std::time::Duration;

use tonic::{Code, Status};

/// Something that stopped a command.
#[derive(Debug)]
pub enum CliError {
    /// The manager address does not parse.
    BadAddress(minkube::client::ConnectError),
    /// The manager could not be dialled.
    Connect(minkube::client::ConnectError),
    /// The manager answered with an error.
    Status {
        /// The manager address, for hints.
        manager: String,
        /// The status.
        status: Status,
    },
    /// The manager did not answer in time.
    Timeout {
        /// The manager address.
        manager: String,
        /// How long we waited.
        after: Duration,
    },
    /// The manager answered without a field it must set.
    Malformed(&'static str),
    /// Writing the output failed.
    Output(String),
    /// `node drain` gave up waiting; the drain goes on.
    DrainTimeout {
        /// The node's name.
        node: String,
        /// Tasks still on it.
        left: u64,
        /// How long we waited.
        after: Duration,
    },
    /// A file named by a flag could not be read.
    File {
        /// The flag.
        flag: &'static str,
        /// The path.
        path: String,
        /// Why.
        error: String,
    },
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CliError::BadAddress(e) => write!(
                f,
                "invalid manager address {:?}: {} (expected host:port, e.g. 127.0.0.1:7070)",
                e.address,
                cause_chain(&e.source)
            ),
            CliError::Connect(e) => write!(
                f,
                "cannot reach the manager at {}: {} (is minkube-manager running? set --manager or MINKUBE_MANAGER)",
                e.address,
                cause_chain(&e.source)
            ),
            CliError::Status { manager, status } => {
                write!(f, "{}", status_text(status))?;
                if status.code() == Code::Unauthenticated {
                    write!(f, "; pass a token with --token or MINKUBE_TOKEN")?;
                }
                // An offline node is not a manager problem: its message says so.
                if status.code() == Code::Unavailable && !status.message().starts_with("node ") {
                    write!(f, "; is minkube-manager running at {manager}?")?;
                }
                Ok(())
            }
            CliError::Timeout { manager, after } => write!(
                f,
                "the manager at {manager} did not answer within {}s; check that it is running and not overloaded",
                after.as_secs()
            ),
            CliError::Malformed(what) => write!(
                f,
                "the manager's answer has no {what}; is the manager the same version as this CLI?"
            ),
            CliError::Output(e) => write!(f, "cannot write output: {e}"),
            CliError::DrainTimeout { node, left, after } => write!(
                f,
                "node {node} still has {left} tasks after {}s; the drain goes on: see `minkube ps --node {node}`, or wait longer with `minkube node drain {node} --timeout 10m`",
                after.as_secs()
            ),
            CliError::File { flag, path, error } => {
                write!(f, "cannot read {path} (given by {flag}): {error}")
            }
        }
    }
}

impl std::error::Error for CliError {}

/// "outer: inner: root" for an error and its sources, skipping repeats
/// (transport errors often wrap an identical message).
pub fn cause_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        let text = err.to_string();
        if parts.last() != Some(&text) {
            parts.push(text);
        }
        cur = err.source();
    }
    parts.join(": ")
}

/// `<message> (<CODE_NAME>)`, e.g. `task abc not found (NOT_FOUND)`.
pub fn status_text(s: &Status) -> String {
    let msg = if s.message().is_empty() {
        s.code().description()
    } else {
        s.message()
    };
    format!("{msg} ({})", code_name(s.code()))
}

/// The canonical gRPC name of a status code.
pub fn code_name(c: Code) -> &'static str {
    match c {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        assert_eq!(
            status_text(&Status::not_found("task abc not found")),
            "task abc not found (NOT_FOUND)"
        );
        assert_eq!(
            status_text(&Status::invalid_argument(
                "spec.memory_mb: must be at least 6"
            )),
            "spec.memory_mb: must be at least 6 (INVALID_ARGUMENT)"
        );
        assert_eq!(
            status_text(&Status::new(Code::Internal, "")),
            format!("{} (INTERNAL)", Code::Internal.description())
        );
    }

    #[derive(Debug)]
    struct Wrap(&'static str, Option<Box<Wrap>>);
    impl std::fmt::Display for Wrap {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }
    impl std::error::Error for Wrap {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|w| w as _)
        }
    }

    #[test]
    fn causes_are_joined() {
        let e = Wrap(
            "transport error",
            Some(Box::new(Wrap(
                "refused",
                Some(Box::new(Wrap("refused", None))),
            ))),
        );
        assert_eq!(cause_chain(&e), "transport error: refused");
    }

    #[test]
    fn unavailable_gets_a_hint() {
        let e = CliError::Status {
            manager: "127.0.0.1:7070".into(),
            status: Status::unavailable("connection reset"),
        };
        assert_eq!(
            e.to_string(),
            "connection reset (UNAVAILABLE); is minkube-manager running at 127.0.0.1:7070?"
        );
    }
}
