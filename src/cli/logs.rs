//! `minkube logs`: a task's container output, relayed by the manager from
//! the task's node. Stdout chunks go to stdout and stderr chunks to stderr,
//! each written and flushed as it arrives.
use std::io::Write;

use minkube::pb::{LogChunk, LogStream, TaskLogsRequest};
use serde_json::json;

use super::args::{LogsArgs, Output};
use super::commands::Session;
use super::error::CliError;
use super::timefmt::rfc3339;

/// Streams the logs until they end (with `--follow`: until the container
/// exits). A closed stdout ends the command quietly.
pub async fn logs(session: &Session, a: &LogsArgs, out: Output) -> Result<(), CliError> {
    let request = TaskLogsRequest {
        task_id: a.id.clone(),
        follow: a.follow,
        tail: a.tail.unwrap_or(0),
        timestamps: a.timestamps,
    };
    let mut client = session.client();
    let mut stream = session.call(client.task_logs(request)).await?;
    while let Some(response) = stream
        .message()
        .await
        .map_err(|s| session.status_error(s))?
    {
        let Some(chunk) = response.chunk else {
            continue;
        };
        if !write_chunk(&chunk, out)? {
            break;
        }
    }
    Ok(())
}

/// The bytes a chunk prints as: its data, after its time if it has one.
pub fn render(chunk: &LogChunk, out: Output) -> Vec<u8> {
    match out {
        Output::Table => {
            let mut bytes = Vec::with_capacity(chunk.data.len() + 32);
            if let Some(t) = &chunk.timestamp {
                bytes.extend_from_slice(rfc3339(t).as_bytes());
                bytes.push(b' ');
            }
            bytes.extend_from_slice(&chunk.data);
            bytes
        }
        Output::Json => {
            let stream = match chunk.stream() {
                LogStream::Stderr => "stderr",
                LogStream::Stdout => "stdout",
                LogStream::Unspecified => "unspecified",
            };
            let mut v = json!({
                "stream": stream,
                "data": String::from_utf8_lossy(&chunk.data),
            });
            if let Some(t) = &chunk.timestamp {
                v["timestamp"] = json!(rfc3339(t));
            }
            format!("{v}\n").into_bytes()
        }
    }
}

/// Writes one chunk where it belongs (JSON output: all to stdout, each line
/// naming its stream). False once stdout is closed.
fn write_chunk(chunk: &LogChunk, out: Output) -> Result<bool, CliError> {
    let bytes = render(chunk, out);
    let to_stderr = out == Output::Table && chunk.stream() == LogStream::Stderr;
    let written = if to_stderr {
        let mut w = std::io::stderr().lock();
        w.write_all(&bytes).and_then(|()| w.flush())
    } else {
        let mut w = std::io::stdout().lock();
        w.write_all(&bytes).and_then(|()| w.flush())
    };
    match written {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(CliError::Output(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost_types::Timestamp;

    fn chunk(stream: LogStream, data: &str, at: Option<i64>) -> LogChunk {
        LogChunk {
            stream: stream as i32,
            data: data.as_bytes().to_vec(),
            timestamp: at.map(|seconds| Timestamp { seconds, nanos: 0 }),
        }
    }

    #[test]
    fn text_is_the_data_after_its_time() {
        let c = chunk(LogStream::Stdout, "hello\n", None);
        assert_eq!(render(&c, Output::Table), b"hello\n");
        let c = chunk(LogStream::Stderr, "oops\n", Some(0));
        assert_eq!(render(&c, Output::Table), b"1970-01-01T00:00:00Z oops\n");
    }

    #[test]
    fn json_names_the_stream() {
        let c = chunk(LogStream::Stderr, "oops\n", Some(0));
        let line = String::from_utf8(render(&c, Output::Json)).unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(line.trim()).unwrap_or_default();
        assert_eq!(v["stream"], "stderr");
        assert_eq!(v["data"], "oops\n");
        assert_eq!(v["timestamp"], "1970-01-01T00:00:00Z");
    }
}
