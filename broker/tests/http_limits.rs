//! Slow or stalled HTTP clients are cut off: a client trickling its
//! headers is disconnected after the header timeout, plain or TLS, and an
//! upload that stalls mid-body is answered 408.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Generous against the 1 s header timeout of these tests: only an
/// unbounded connection fails.
const CUT_OFF_WITHIN: Duration = Duration::from_secs(15);

fn limited(dir: &std::path::Path) -> meshota_broker::config::Config {
    let mut cfg = config(dir);
    cfg.http_header_timeout_ms = 1_000;
    cfg.http_body_timeout_ms = 1_000;
    cfg
}

/// Sends an endless header one byte every 100 ms; returns once the server
/// has closed the connection (a write fails or a read ends), or panics
/// after [`CUT_OFF_WITHIN`].
async fn trickle_until_closed<S: AsyncRead + AsyncWrite + Unpin>(mut s: S) {
    let request = b"GET /v1/health HTTP/1.1\r\nHost: localhost\r\n";
    let filler = b"X-Slow: a\r\n";
    let bytes = request.iter().chain(filler.iter().cycle());
    let start = Instant::now();
    let mut buf = [0u8; 512];
    for &b in bytes {
        assert!(
            start.elapsed() < CUT_OFF_WITHIN,
            "a slowloris client was not disconnected"
        );
        if s.write_all(&[b]).await.is_err() || s.flush().await.is_err() {
            return;
        }
        // Reading doubles as the pause between bytes.
        // An answer (hyper may send 408 first) is read past; only the end
        // of the stream, or an error, means we were cut off.
        let read = tokio::time::timeout(Duration::from_millis(100), s.read(&mut buf)).await;
        if let Ok(Ok(0) | Err(_)) = read {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_trickling_its_headers_is_disconnected_and_others_are_still_served() {
    let dir = tempfile::tempdir().unwrap();
    let server = spawn(limited(dir.path())).await;
    let tcp = tokio::net::TcpStream::connect(server.http_addr())
        .await
        .unwrap();
    trickle_until_closed(tcp).await;
    let client = http(&server, false);
    let (code, _) = blocking(move || client.get_raw("/v1/health"))
        .await
        .unwrap();
    assert_eq!(code, 200);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_client_that_never_finishes_its_handshake_or_headers_is_disconnected() {
    let dir = tempfile::tempdir().unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let files = meshota_broker::config::TlsFiles {
        cert: dir.path().join("cert.pem"),
        key: dir.path().join("key.pem"),
    };
    std::fs::write(&files.cert, ck.cert.pem()).unwrap();
    std::fs::write(&files.key, ck.key_pair.serialize_pem()).unwrap();
    let mut cfg = limited(&dir.path().join("data"));
    cfg.http_tls = Some(files);
    let server = spawn(cfg).await;
    // Half a ClientHello, then nothing: the handshake timeout applies.
    let mut tcp = tokio::net::TcpStream::connect(server.http_addr())
        .await
        .unwrap();
    tcp.write_all(&[0x16, 0x03, 0x01, 0x00, 0x80])
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(CUT_OFF_WITHIN, tcp.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0) | Err(_))),
        "a stalled TLS handshake was not cut off: {read:?}"
    );
    server.shutdown().await.unwrap();
}

/// Sends an upload's head declaring `length` bytes, then `body`, to a
/// server with a trust root and a `max_bundle_bytes` limit; returns what
/// the server answered before closing (bounded).
async fn upload(max_bundle_bytes: u64, length: u64, body: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = limited(&dir.path().join("data"));
    cfg.trust = Some(write_trust(dir.path(), &keys()));
    cfg.max_bundle_bytes = max_bundle_bytes;
    let server = spawn(cfg).await;
    let mut tcp = tokio::net::TcpStream::connect(server.http_addr())
        .await
        .unwrap();
    let head = format!(
        "POST /v1/releases HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: {length}\r\n\r\n",
        server.operator_token()
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp.write_all(body).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(CUT_OFF_WITHIN, tcp.read_to_end(&mut answer)).await;
    server.shutdown().await.unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_that_stalls_mid_body_is_answered_408() {
    let answer = upload(1 << 20, 100_000, &[0u8; 10]).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("body-timeout"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_declaring_more_than_the_limit_is_refused_before_its_body() {
    let answer = upload(1000, 1001, &[]).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
}
