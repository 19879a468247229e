//! The harness's own fault injectors behave as the failure tests assume:
//! the TCP proxy cuts and heals, the Docker socket proxy fails and
//! restores, the fake registry makes Docker report "manifest unknown".
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use minkube_integration_tests::docker::docker;
use minkube_integration_tests::proxy::{DockerSocketProxy, TcpProxy};
use minkube_integration_tests::registry::FakeRegistry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const IO_WAIT: Duration = Duration::from_secs(10);

/// An echo server on 127.0.0.1; its task ends with the test's runtime.
async fn echo_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

/// Sends a line and reads it back; None if the connection was closed.
async fn echo(stream: &mut TcpStream, text: &[u8]) -> Option<Vec<u8>> {
    stream.write_all(text).await.ok()?;
    let mut buf = vec![0u8; text.len()];
    match tokio::time::timeout(IO_WAIT, stream.read_exact(&mut buf)).await {
        Ok(Ok(_)) => Some(buf),
        Ok(Err(_)) => None,
        Err(_) => panic!("no echo and no close within {IO_WAIT:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn tcp_proxy_cuts_and_heals() {
    let target = echo_server().await;
    let proxy = TcpProxy::start(&target).await;
    let mut before = TcpStream::connect(proxy.addr()).await.unwrap();
    assert_eq!(
        echo(&mut before, b"one").await.as_deref(),
        Some(&b"one"[..])
    );

    proxy.cut();
    let mut buf = [0u8; 8];
    let read = tokio::time::timeout(IO_WAIT, before.read(&mut buf))
        .await
        .expect("an open connection is closed at once by cut()");
    assert!(matches!(read, Ok(0) | Err(_)), "read {read:?} after cut");
    // New connections are accepted by the kernel but closed at once.
    let mut during = TcpStream::connect(proxy.addr()).await.unwrap();
    assert_eq!(echo(&mut during, b"two").await, None, "forwarded while cut");

    proxy.heal();
    let mut after = TcpStream::connect(proxy.addr()).await.unwrap();
    assert_eq!(
        echo(&mut after, b"three").await.as_deref(),
        Some(&b"three"[..])
    );
}

fn docker_version_via(host: &str) -> std::process::Output {
    docker(&["-H", host, "version", "--format", "{{.Server.Version}}"])
}

#[tokio::test(flavor = "multi_thread")]
async fn docker_socket_proxy_fails_and_restores() {
    let dir = tempfile::tempdir().unwrap();
    let proxy = DockerSocketProxy::start(&dir.path().join("docker.sock")).await;
    let host = proxy.docker_host();
    let ok = tokio::task::block_in_place(|| docker_version_via(&host));
    assert!(ok.status.success(), "{ok:?}");

    proxy.fail();
    let failed = tokio::task::block_in_place(|| docker_version_via(&host));
    assert!(!failed.status.success(), "Docker reachable while failed");

    proxy.restore();
    let again = tokio::task::block_in_place(|| docker_version_via(&host));
    assert!(again.status.success(), "{again:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn fake_registry_answers_manifest_unknown() {
    let registry = FakeRegistry::start().await;
    let image = registry.missing_image();
    let out = tokio::task::block_in_place(|| docker(&["pull", &image]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "pulled {image}?");
    assert!(
        stderr.contains("manifest unknown"),
        "Docker did not reach the fake registry on 127.0.0.1 (it must run on this host): {stderr}"
    );
}
