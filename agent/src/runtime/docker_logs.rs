//! A container's output through Docker's logs endpoint: stdout and stderr
//! frames become [`pb::LogChunk`]s marked with their stream.
use std::str::FromStr;

use bollard::container::LogOutput;
use bollard::query_parameters::LogsOptionsBuilder;
use bollard::Docker;
use futures::stream::BoxStream;
use futures::StreamExt;
use minkube::pb;
use prost_types::Timestamp;

use super::docker_convert::classify;
use super::{LogOptions, RuntimeError};

/// Streams the output of a container (running or exited).
pub(super) fn logs(
    docker: &Docker,
    container_id: &str,
    options: LogOptions,
) -> BoxStream<'static, Result<pb::LogChunk, RuntimeError>> {
    let tail = match options.tail {
        0 => "all".to_string(),
        n => n.to_string(),
    };
    let query = LogsOptionsBuilder::default()
        .stdout(true)
        .stderr(true)
        .follow(options.follow)
        .timestamps(options.timestamps)
        .tail(&tail)
        .build();
    let timestamps = options.timestamps;
    docker
        .logs(container_id, Some(query))
        .filter_map(move |item| {
            futures::future::ready(match item {
                Ok(out) => to_chunk(out, timestamps).map(Ok),
                Err(e) => Some(Err(classify("read the container's logs", e))),
            })
        })
        .boxed()
}

/// One Docker frame as a chunk; `None` for stdin echoes.
fn to_chunk(out: LogOutput, timestamps: bool) -> Option<pb::LogChunk> {
    let (stream, message) = match out {
        LogOutput::StdOut { message } | LogOutput::Console { message } => {
            (pb::LogStream::Stdout, message)
        }
        LogOutput::StdErr { message } => (pb::LogStream::Stderr, message),
        LogOutput::StdIn { .. } => return None,
    };
    let (timestamp, data) = if timestamps {
        split_timestamp(&message)
    } else {
        (None, &message[..])
    };
    Some(pb::LogChunk {
        stream: stream as i32,
        data: data.to_vec(),
        timestamp,
    })
}

/// With timestamps Docker starts every line with an RFC 3339 time and a
/// space; the time moves into the chunk's field. A line that does not start
/// so is left whole.
fn split_timestamp(line: &[u8]) -> (Option<Timestamp>, &[u8]) {
    let Some(space) = line.iter().take(64).position(|b| *b == b' ') else {
        return (None, line);
    };
    let parsed = std::str::from_utf8(&line[..space])
        .ok()
        .and_then(|s| Timestamp::from_str(s).ok());
    match parsed {
        Some(t) => (Some(t), &line[space + 1..]),
        None => (None, line),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn frames_keep_their_stream() {
        let out = to_chunk(
            LogOutput::StdErr {
                message: b"oops\n".to_vec().into(),
            },
            false,
        )
        .unwrap();
        assert_eq!(out.stream(), pb::LogStream::Stderr);
        assert_eq!(out.data, b"oops\n");
        assert!(out.timestamp.is_none());
        let out = to_chunk(
            LogOutput::StdOut {
                message: b"fine\n".to_vec().into(),
            },
            false,
        )
        .unwrap();
        assert_eq!(out.stream(), pb::LogStream::Stdout);
        assert!(to_chunk(
            LogOutput::StdIn {
                message: Vec::new().into()
            },
            false
        )
        .is_none());
    }

    #[test]
    fn timestamps_move_into_the_chunk() {
        let (t, rest) = split_timestamp(b"2024-05-01T10:00:00.123456789Z hello world\n");
        let t = t.unwrap();
        assert_eq!(t.nanos, 123_456_789);
        assert_eq!(rest, b"hello world\n");
        let (t, rest) = split_timestamp(b"no time here\n");
        assert!(t.is_none());
        assert_eq!(rest, b"no time here\n");
    }
}
