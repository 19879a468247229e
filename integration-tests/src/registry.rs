//! A registry that has no images: plain HTTP on 127.0.0.1, `GET /v2/`
//! answers 200 and every other request (manifests included) 404
//! MANIFEST_UNKNOWN. Docker treats 127.0.0.0/8 registries as insecure, so it
//! falls back to plain HTTP and an image `127.0.0.1:PORT/x:1` fails to pull
//! with "manifest unknown": a permanent failure, without any real registry.
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Largest request head read; anything longer is not a registry client.
const MAX_HEAD: usize = 16 * 1024;
const MANIFEST_UNKNOWN: &str =
    r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#;

/// The fake registry; its tasks end when it is dropped.
pub struct FakeRegistry {
    addr: SocketAddr,
    accept: JoinHandle<()>,
}

impl FakeRegistry {
    /// Listens on 127.0.0.1 (any free port).
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake registry on 127.0.0.1");
        let addr = listener.local_addr().expect("the fake registry's address");
        let accept = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        if let Ok((stream, _)) = accepted {
                            connections.spawn(serve(stream));
                        }
                    }
                    // Reap finished connections so the set stays small.
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        });
        Self { addr, accept }
    }

    /// `127.0.0.1:PORT`, the registry part of an image reference.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// An image reference this registry does not have.
    pub fn missing_image(&self) -> String {
        format!("{}/nope:1", self.host())
    }
}

impl Drop for FakeRegistry {
    fn drop(&mut self) {
        // Aborting the accept task drops its JoinSet, which aborts every
        // connection task.
        self.accept.abort();
    }
}

/// Answers requests on one connection until the client closes it or sends
/// something that is not HTTP (Docker first tries TLS).
async fn serve(mut stream: TcpStream) {
    let mut buf = Vec::new();
    loop {
        let Some(head_len) = read_head(&mut stream, &mut buf).await else {
            return;
        };
        let head = String::from_utf8_lossy(&buf[..head_len]).into_owned();
        buf.drain(..head_len);
        let mut parts = head.split_whitespace();
        let (Some(method), Some(path)) = (parts.next(), parts.next()) else {
            return;
        };
        if !matches!(method, "GET" | "HEAD") {
            return;
        }
        let (status, body) = if path == "/v2/" || path == "/v2" {
            ("200 OK", "{}")
        } else {
            ("404 Not Found", MANIFEST_UNKNOWN)
        };
        let mut response = format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\n\
             Docker-Distribution-API-Version: registry/2.0\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        if method == "GET" {
            response.push_str(body);
        }
        if stream.write_all(response.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// Reads until `buf` holds a full request head (GET/HEAD carry no body);
/// returns its length, or None if the client closed or is not speaking HTTP.
async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<usize> {
    loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Some(pos + 4);
        }
        if buf.len() > MAX_HEAD || buf.first().is_some_and(|b| !b.is_ascii_uppercase()) {
            return None;
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}
