//! The `meshota-broker` binary as a process: it prints where it listens,
//! serves, and shuts down cleanly on SIGTERM.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[cfg(unix)]
#[test]
fn the_binary_prints_its_ephemeral_ports_serves_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_meshota-broker"))
        .args(["--data-dir"])
        .arg(dir.path())
        .args([
            "--mqtt-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .args(["--p2p-listen", "/ip4/127.0.0.1/tcp/0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let line = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("a listening line");
    assert!(line.starts_with("meshota-broker listening "), "{line}");
    let field = |name: &str| -> String {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{name}=")))
            .unwrap()
            .to_string()
    };
    let http = field("http");
    let mqtt: std::net::SocketAddr = field("mqtt").parse().unwrap();
    assert_ne!(mqtt.port(), 0);
    let client = meshota_broker::client::Client::new(&format!("http://{http}"), None);
    let (code, body) = client.get_raw("/v1/health").unwrap();
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    // The secrets exist, owner-only.
    let token = std::fs::read_to_string(dir.path().join("operator-token")).unwrap();
    let authed = meshota_broker::client::Client::new(&format!("http://{http}"), Some(token));
    assert!(authed.fleet().is_ok());

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            assert!(st.success(), "exit status {st:?}");
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("meshota-broker did not stop on SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
