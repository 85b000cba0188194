//! `meshota-broker`: the broker deployment (embedded MQTT broker, control
//! plane, HTTP API and origin). Parses flags and the TOML config, then
//! hands over to [`meshota_broker::server::Server`].

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use meshota_broker::config::{Config, TlsFiles};
use meshota_broker::server::Server;
use meshota_protocol::FleetId;

/// Flags override the same keys of `--config` (see examples/broker.toml).
#[derive(Debug, Parser)]
#[command(name = "meshota-broker", version, about)]
struct Args {
    /// TOML configuration file.
    #[arg(long, env = "MESHOTA_BROKER_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory (registry, origin store, secrets).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Fleet name (first MQTT topic level).
    #[arg(long)]
    fleet: Option<FleetId>,
    /// Self-signed trust root file that releases must verify against.
    #[arg(long)]
    trust: Option<PathBuf>,
    /// Trust chain from `meshota keys rotate` (trust-chain.cbor), published
    /// so devices rotate to the --trust root over the air.
    #[arg(long)]
    trust_chain: Option<PathBuf>,
    /// Rollout-role secret key file.
    #[arg(long)]
    rollout_key: Option<PathBuf>,
    /// MQTT 3.1.1 listen address of the embedded broker (port 0: any).
    #[arg(long)]
    mqtt_listen: Option<SocketAddr>,
    /// MQTT 5 listen address of the embedded broker.
    #[arg(long)]
    mqtt5_listen: Option<SocketAddr>,
    /// PEM certificate chain for MQTT TLS (with --mqtt-tls-key).
    #[arg(long, requires = "mqtt_tls_key")]
    mqtt_tls_cert: Option<PathBuf>,
    /// PEM private key for MQTT TLS (with --mqtt-tls-cert).
    #[arg(long, requires = "mqtt_tls_cert")]
    mqtt_tls_key: Option<PathBuf>,
    /// Use this external broker (mqtt://[user:pass@]host:port) instead.
    #[arg(long)]
    mqtt_url: Option<String>,
    /// HTTP listen address (port 0: any).
    #[arg(long)]
    http_listen: Option<SocketAddr>,
    /// PEM certificate chain: serve the API over HTTPS (with --http-tls-key).
    #[arg(long, requires = "http_tls_key")]
    http_tls_cert: Option<PathBuf>,
    /// PEM private key for HTTPS (with --http-tls-cert).
    #[arg(long, requires = "http_tls_cert")]
    http_tls_key: Option<PathBuf>,
    /// Milliseconds an HTTP client has to send its request headers (and to
    /// finish the TLS handshake); idle connections close after it too.
    #[arg(long)]
    http_header_timeout_ms: Option<u64>,
    /// Milliseconds an upload may pause between pieces of its body.
    #[arg(long)]
    http_body_timeout_ms: Option<u64>,
    /// libp2p listen address of the origin seeder (repeatable).
    #[arg(long)]
    p2p_listen: Vec<String>,
    /// Accept every new device key on first sight (labs, simulator).
    #[arg(long)]
    auto_accept: bool,
    /// Serve /metrics without the operator token.
    #[arg(long)]
    open_metrics: bool,
    /// Serve the read-only API without the operator token.
    #[arg(long)]
    open_reads: bool,
}

fn config(args: Args) -> anyhow::Result<Config> {
    let mut c = match &args.config {
        Some(p) => Config::from_file(p)?,
        None => Config::default(),
    };
    if let Some(v) = args.data_dir {
        c.data_dir = v;
    }
    if let Some(v) = args.fleet {
        c.fleet = v;
    }
    if args.trust.is_some() {
        c.trust = args.trust;
    }
    if args.trust_chain.is_some() {
        c.trust_chain = args.trust_chain;
    }
    if args.rollout_key.is_some() {
        c.rollout_key = args.rollout_key;
    }
    if let Some(v) = args.mqtt_listen {
        c.mqtt_listen = v;
    }
    if args.mqtt5_listen.is_some() {
        c.mqtt5_listen = args.mqtt5_listen;
    }
    if let (Some(cert), Some(key)) = (args.mqtt_tls_cert, args.mqtt_tls_key) {
        c.mqtt_tls = Some(TlsFiles { cert, key });
    }
    if args.mqtt_url.is_some() {
        c.mqtt_url = args.mqtt_url;
    }
    if let Some(v) = args.http_listen {
        c.http_listen = v;
    }
    if let Some(v) = args.http_header_timeout_ms {
        c.http_header_timeout_ms = v;
    }
    if let Some(v) = args.http_body_timeout_ms {
        c.http_body_timeout_ms = v;
    }
    if let (Some(cert), Some(key)) = (args.http_tls_cert, args.http_tls_key) {
        c.http_tls = Some(TlsFiles { cert, key });
    }
    if !args.p2p_listen.is_empty() {
        c.p2p_listen = args.p2p_listen;
    }
    c.auto_accept |= args.auto_accept;
    c.open_metrics |= args.open_metrics;
    c.open_reads |= args.open_reads;
    Ok(c)
}

async fn terminated() -> anyhow::Result<&'static str> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).context("install SIGTERM handler")?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => { r.context("wait for Ctrl-C")?; Ok("SIGINT") }
            _ = term.recv() => Ok("SIGTERM"),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await.context("wait for Ctrl-C")?;
        Ok("Ctrl-C")
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,rumqttd=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let config = config(Args::parse())?;
    let data_dir = config.data_dir.clone();
    let mut server = Server::spawn(config)
        .await
        .context("starting meshota-broker")?;
    // Humans read stderr; tests and scripts parse this one stdout line.
    println!("{}", server.listening_line());
    if let Some(seeder) = server.seeder() {
        for addr in seeder.addrs().await {
            tracing::info!("origin seeder (libp2p) on {addr}");
        }
    }
    match server.mqtt_addr() {
        Some(a) => tracing::info!("embedded MQTT 3.1.1 broker on {a}"),
        None => tracing::info!("using the external MQTT broker"),
    }
    if let Some(a) = server.mqtt5_addr() {
        tracing::info!("embedded MQTT 5 broker on {a}");
    }
    tracing::info!("HTTP API and origin on {}", server.http_url());
    eprintln!(
        "operator token in {}",
        data_dir
            .join(meshota_broker::config::OPERATOR_TOKEN_FILE)
            .display()
    );
    let signal = tokio::select! {
        sig = terminated() => sig?,
        r = server.wait() => {
            r.context("meshota-broker stopped")?;
            return Ok(());
        }
    };
    tracing::info!(signal, "shutting down");
    server.shutdown().await.context("shutdown")?;
    Ok(())
}
