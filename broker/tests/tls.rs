//! TLS on both faces of the deployment: the HTTPS API and the MQTT
//! listener, with a throwaway self-signed certificate.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use meshota_broker::config::TlsFiles;
use meshota_protocol::{DeviceToken, SecretKey};
use rumqttc::{Event, MqttOptions, Packet, TlsConfiguration, Transport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};

fn certificate(dir: &std::path::Path) -> (TlsFiles, rcgen::CertifiedKey) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let files = TlsFiles {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
    };
    std::fs::write(&files.cert, ck.cert.pem()).unwrap();
    std::fs::write(&files.key, ck.key_pair.serialize_pem()).unwrap();
    (files, ck)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_serves_https_and_mqtt_accepts_tls_when_given_a_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (files, ck) = certificate(dir.path());
    let mut cfg = config(&dir.path().join("data"));
    cfg.http_tls = Some(files.clone());
    cfg.mqtt_tls = Some(files);
    cfg.auto_accept = true;
    let server = spawn(cfg).await;
    assert!(server.http_url().starts_with("https://"));
    assert!(server.listening_line().ends_with(" tls=1"));

    // HTTPS: a TLS client that trusts only our certificate.
    let mut roots = RootCertStore::empty();
    roots.add(ck.cert.der().clone()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let client = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let tcp = tokio::net::TcpStream::connect(server.http_addr())
        .await
        .unwrap();
    let mut tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    tls.write_all(b"GET /v1/health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    tokio::time::timeout(WAIT, tls.read_to_string(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"status\":\"ok\""), "{answer}");
    // Plain HTTP on the HTTPS port gets nothing useful.
    let plain = http(&server, false);
    assert!(blocking(move || plain.get_raw("/v1/health")).await.is_err());

    // MQTT over TLS with a device token.
    let mqtt = server.mqtt_addr().unwrap();
    let key = SecretKey::from_seed([1; 32]);
    let pw = DeviceToken::issue(&dev("d1"), &key, meshota_broker::now(), 60).unwrap();
    let mut opts = MqttOptions::new("d1", "localhost", mqtt.port());
    opts.set_credentials("d1", pw);
    opts.set_transport(Transport::tls_with_config(TlsConfiguration::Simple {
        ca: ck.cert.pem().into_bytes(),
        alpn: None,
        client_auth: None,
    }));
    let (_c, mut el) = rumqttc::AsyncClient::new(opts, 8);
    let connected = tokio::time::timeout(WAIT, async {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    })
    .await
    .unwrap();
    connected.expect("device connects over MQTT TLS");
    tokio::time::sleep(Duration::from_millis(10)).await;
    server.shutdown().await.unwrap();
}

/// Runs the `meshota` binary with `args`: exit success, stdout, stderr.
fn meshota(args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_meshota"))
        .args(args)
        .env_remove(meshota_broker::client::ENV_CA_CERT)
        .env_remove(meshota_broker::client::ENV_SERVER)
        .env_remove(meshota_broker::client::ENV_TOKEN)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_talks_https_when_given_the_servers_certificate_and_says_why_not_without_it() {
    let dir = tempfile::tempdir().unwrap();
    let (files, _ck) = certificate(dir.path());
    let cert = files.cert.display().to_string();
    let mut cfg = config(&dir.path().join("data"));
    cfg.http_tls = Some(files);
    let server = spawn(cfg).await;
    // The certificate names `localhost`, not the IP address.
    let url = format!("https://localhost:{}", server.http_addr().port());
    let token = server.operator_token().to_string();

    let (u, t, c) = (url.clone(), token.clone(), cert.clone());
    let (ok, out, err) = blocking(move || {
        meshota(&[
            "release",
            "list",
            "--json",
            "--server",
            &u,
            "--token",
            &t,
            "--ca-cert",
            &c,
        ])
    })
    .await;
    assert!(ok, "stdout: {out}\nstderr: {err}");
    assert_eq!(out.trim(), "[]");

    let (u, t) = (url.clone(), token.clone());
    let (ok, _, err) =
        blocking(move || meshota(&["release", "list", "--server", &u, "--token", &t])).await;
    assert!(!ok);
    assert!(err.contains("TLS handshake with localhost failed"), "{err}");
    assert!(err.contains("--ca-cert"), "{err}");

    // The library client, as other tools use it.
    let client = meshota_broker::client::Client::with_ca_cert(
        &url,
        Some(token),
        std::path::Path::new(&cert),
    )
    .unwrap();
    let fleet = blocking(move || client.fleet()).await.unwrap();
    assert_eq!(fleet["devices"], 0);
    // A CA file that holds no certificate is refused up front.
    let err = meshota_broker::client::Client::with_ca_cert(&url, None, &dir.path().join("key.pem"))
        .unwrap_err();
    assert!(err.to_string().contains("no PEM certificate"), "{err}");
    server.shutdown().await.unwrap();
}
