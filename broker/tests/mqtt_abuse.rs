//! The embedded broker under protocol abuse, and third-party clients
//! against it.
//!
//! Known killers of rumqttd (see `threat-model.md`): a client sending a
//! CONNACK (an `unreachable!()` in its v5 decoder), malformed packets, and
//! more connections than its limit. Each abuse here runs over raw TCP on
//! loopback, and afterwards a legitimate client must still log in and
//! the server's supervisor must still be running.
//!
//! `mosquitto_sub`/`mosquitto_pub` (Debian `mosquitto-clients`) must work
//! against the embedded broker: operators debug with them.
// Test scaffolding outside #[test] functions may unwrap, as in `common`.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use common::*;
use meshota_broker::config::CONTROL_USER;
use meshota_broker::server::Server;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// MQTT's variable-length "remaining length" (at most 4 bytes by spec;
/// callers wanting a malformed one build it by hand).
fn remaining_len(mut n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            return out;
        }
    }
}

fn mqtt_str(s: &[u8]) -> Vec<u8> {
    let mut out = (s.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(s);
    out
}

/// A CONNECT with username and password, MQTT 3.1.1 (`level` 4) or 5.
fn connect_packet(level: u8, client_id: &str, user: &str, password: &str) -> Vec<u8> {
    let mut body = mqtt_str(b"MQTT");
    // Flags: username, password, clean session. Keep-alive 60 s.
    body.extend_from_slice(&[level, 0xC2, 0, 60]);
    if level == 5 {
        body.push(0); // no properties
    }
    for s in [client_id, user, password] {
        body.extend(mqtt_str(s.as_bytes()));
    }
    let mut p = vec![0x10];
    p.extend(remaining_len(body.len()));
    p.extend(body);
    p
}

/// A CONNACK as a server would send it: clients must never send one.
fn connack(level: u8) -> Vec<u8> {
    if level == 5 {
        vec![0x20, 3, 0, 0, 0]
    } else {
        vec![0x20, 2, 0, 0]
    }
}

/// Sends `bytes` on a raw connection, then reads until the server closes
/// it (or two seconds pass: a broker that keeps a garbage connection open
/// is not a failure, only one that dies is).
async fn abuse(addr: SocketAddr, chunks: &[Vec<u8>]) {
    let Ok(mut s) = TcpStream::connect(addr).await else {
        return;
    };
    for c in chunks {
        if s.write_all(c).await.is_err() {
            return;
        }
    }
    let mut buf = [0u8; 512];
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
    })
    .await;
}

/// The server is fine: the supervisor has not stopped it, and a real
/// client logs in (and gets its CONNACK) on `addr`, speaking MQTT
/// `level` (4 for 3.1.1, else 5).
async fn still_serving(server: &mut Server, level: u8, addr: SocketAddr, after: &str) {
    let pw = server.control_password().to_string();
    let r = if level == 4 {
        mqtt_connect(addr, "legit", CONTROL_USER, &pw)
            .await
            .map(drop)
    } else {
        v5_connect(addr, "legit", CONTROL_USER, &pw).await
    };
    assert!(
        r.is_ok(),
        "after {after}, a legitimate client cannot log in: {:?}",
        r.err()
    );
    // `wait` returns only once the supervisor has stopped everything.
    let stopped = tokio::time::timeout(Duration::from_millis(200), server.wait()).await;
    assert!(
        stopped.is_err(),
        "after {after}, the server stopped: {stopped:?}"
    );
}

fn v5_config(dir: &std::path::Path) -> meshota_broker::config::Config {
    let mut cfg = config(dir);
    cfg.mqtt5_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_sending_a_connack_is_dropped_and_the_broker_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = spawn(v5_config(dir.path())).await;
    let pw = server.control_password().to_string();
    let listeners = [
        (4, server.mqtt_addr().unwrap()),
        (5, server.mqtt5_addr().unwrap()),
    ];
    for (level, addr) in listeners {
        // As the first packet, instead of a CONNECT.
        abuse(addr, &[connack(level)]).await;
        still_serving(
            &mut server,
            level,
            addr,
            &format!("a v{level} CONNACK first"),
        )
        .await;
        // After a successful login: rumqttd's v5 decoder reaches an
        // `unreachable!()` here; our packet guard must stop it first.
        let login = connect_packet(level, "rogue", CONTROL_USER, &pw);
        abuse(addr, &[login, connack(level)]).await;
        still_serving(
            &mut server,
            level,
            addr,
            &format!("a v{level} CONNACK after login"),
        )
        .await;
    }
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_connacks_from_logged_in_clients_do_not_use_up_the_brokers_connections() {
    // Without the packet guard each of these panics in rumqttd and leaves
    // its slot taken in rumqttd's router: 19 of them (plus the control
    // plane) filled its 20 and locked every client out.
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = v5_config(dir.path());
    cfg.max_connections = 4;
    let mut server = spawn(cfg).await;
    let pw = server.control_password().to_string();
    let v5 = server.mqtt5_addr().unwrap();
    // rumqttd's own limit is ours + 16 (see `embedded.rs`).
    for i in 0..(4 + 16 + 4) {
        let login = connect_packet(5, &format!("rogue-{i}"), CONTROL_USER, &pw);
        abuse(v5, &[login, connack(5)]).await;
    }
    still_serving(&mut server, 5, v5, "24 v5 CONNACKs from distinct sessions").await;
    let v4 = server.mqtt_addr().unwrap();
    still_serving(&mut server, 4, v4, "24 v5 CONNACKs (v4 listener)").await;
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_packets_and_absurd_lengths_do_not_take_the_broker_down() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = spawn(v5_config(dir.path())).await;
    let pw = server.control_password().to_string();
    let mut pseudo = payload(4096, 7);
    pseudo[0] = 0x10; // looks like a CONNECT, then noise
    let cases: Vec<(&str, Vec<Vec<u8>>)> = vec![
        ("random bytes", vec![payload(4096, 3)]),
        ("a CONNECT header followed by noise", vec![pseudo]),
        ("all ones", vec![vec![0xFF; 1024]]),
        ("packet type 0", vec![vec![0x00, 0x00]]),
        ("packet type 15", vec![vec![0xF0, 0x00]]),
        (
            "a five-byte remaining length",
            vec![vec![0x10, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F]],
        ),
        (
            // 256 MiB announced, a few bytes sent: must not be allocated.
            "a CONNECT announcing the largest remaining length",
            vec![vec![0x10, 0xFF, 0xFF, 0xFF, 0x7F, 0, 4, b'M', b'Q']],
        ),
        ("a CONNECT whose strings overrun it", {
            let mut p = connect_packet(4, "x", CONTROL_USER, &pw);
            // The client id claims 65535 bytes inside a short packet.
            let at = 2 + 10;
            p[at] = 0xFF;
            p[at + 1] = 0xFF;
            vec![p]
        }),
        ("a CONNECT with an unknown protocol level", {
            let mut p = connect_packet(4, "x", CONTROL_USER, &pw);
            p[2 + 6] = 77;
            vec![p]
        }),
        (
            "a CONNECT with zero remaining length",
            vec![vec![0x10, 0x00]],
        ),
        ("two CONNECTs", {
            let p = connect_packet(4, "twice", CONTROL_USER, &pw);
            vec![p.clone(), p]
        }),
        (
            "a PUBLISH before CONNECT",
            vec![{
                let mut body = mqtt_str(b"meshota/v1/default/announce/rpi4/stable");
                body.extend_from_slice(b"garbage");
                let mut p = vec![0x31];
                p.extend(remaining_len(body.len()));
                p.extend(body);
                p
            }],
        ),
        ("a SUBSCRIBE with an overrunning filter after login", {
            let login = connect_packet(4, "sub", CONTROL_USER, &pw);
            // packet id 1, filter length 65535, 3 bytes of it.
            vec![login, vec![0x82, 7, 0, 1, 0xFF, 0xFF, b'a', b'/', b'#']]
        }),
    ];
    for level in [4u8, 5] {
        let addr = if level == 4 {
            server.mqtt_addr().unwrap()
        } else {
            server.mqtt5_addr().unwrap()
        };
        for (what, chunks) in &cases {
            abuse(addr, chunks).await;
            still_serving(
                &mut server,
                level,
                addr,
                &format!("{what} (v{level} listener)"),
            )
            .await;
        }
    }
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_are_closed_and_service_returns_when_they_go() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.max_connections = 4;
    let mut server = spawn(cfg).await;
    let addr = server.mqtt_addr().unwrap();
    let pw = server.control_password().to_string();

    // Fill the cap with logged-in sessions (the control plane holds one),
    // then flood past both caps.
    let mut held = Vec::new();
    for i in 0..3 {
        held.push(
            mqtt_connect(addr, &format!("hold-{i}"), CONTROL_USER, &pw)
                .await
                .unwrap(),
        );
    }
    let mut flood = Vec::new();
    for _ in 0..40 {
        if let Ok(s) = TcpStream::connect(addr).await {
            flood.push(s);
        }
    }
    // Every connection past the cap is closed by us at accept; none is
    // left hanging for rumqttd to count.
    for s in &mut flood {
        let mut b = [0u8; 8];
        let n = tokio::time::timeout(WAIT, s.read(&mut b)).await;
        assert!(
            matches!(n, Ok(Ok(0)) | Ok(Err(_))),
            "a connection past the cap was not closed: {n:?}"
        );
    }
    assert!(
        mqtt_connect(addr, "one-too-many", CONTROL_USER, &pw)
            .await
            .is_err(),
        "a fifth session got in past a cap of four"
    );
    drop(flood);
    drop(held);
    // Slots free up as the held sessions close.
    let deadline = tokio::time::Instant::now() + WAIT;
    while mqtt_connect(addr, "probe", CONTROL_USER, &pw)
        .await
        .is_err()
    {
        assert!(tokio::time::Instant::now() < deadline, "no slot was freed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    still_serving(&mut server, 4, addr, "a connection flood").await;
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_sub_and_mosquitto_pub_work_against_the_embedded_broker() {
    // Missing tools fail the test rather than skip it, so no run (CI or
    // not) passes without exercising them.
    let (Some(sub_bin), Some(pub_bin)) = (on_path("mosquitto_sub"), on_path("mosquitto_pub"))
    else {
        panic!("mosquitto_sub/mosquitto_pub not found: apt-get install -y mosquitto-clients");
    };
    let dir = tempfile::tempdir().unwrap();
    let server = spawn(config(dir.path())).await;
    let addr = server.mqtt_addr().unwrap();
    let pw = server.control_password().to_string();
    let topic = "meshota/v1/default/devices/d1/cmd";
    let common_args = |bin: &std::path::Path, id: &str| {
        let mut c = Command::new(bin);
        c.args(["-h", "127.0.0.1", "-p", &addr.port().to_string()])
            .args(["-u", CONTROL_USER, "-P", &pw, "-i", id, "-V", "mqttv311"]);
        c
    };
    // Retained, so the subscriber gets it whenever it subscribes.
    let published = common_args(&pub_bin, "mosq-pub")
        .args([
            "-t",
            topic,
            "-m",
            "hello from mosquitto_pub",
            "-q",
            "1",
            "-r",
        ])
        .output()
        .unwrap();
    succeeded("mosquitto_pub", published);
    // `-C 1` exits after one message, `-W` bounds the wait in seconds.
    let mut sub = common_args(&sub_bin, "mosq-sub");
    sub.args(["-t", "meshota/v1/default/#", "-C", "1", "-W", "10", "-v"]);
    let got = succeeded(
        "mosquitto_sub",
        blocking(move || sub.output().unwrap()).await,
    );
    assert_eq!(
        String::from_utf8_lossy(&got.stdout).trim(),
        format!("{topic} hello from mosquitto_pub")
    );
    // A wrong password is refused, with mosquitto's own error.
    let refused = Command::new(&pub_bin)
        .args(["-h", "127.0.0.1", "-p", &addr.port().to_string()])
        .args(["-u", CONTROL_USER, "-P", "wrong", "-i", "mosq-bad"])
        .args(["-t", topic, "-m", "x"])
        .output()
        .unwrap();
    assert!(!refused.status.success(), "a wrong password was accepted");
    server.shutdown().await.unwrap();
}
