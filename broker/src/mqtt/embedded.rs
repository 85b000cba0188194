//! The embedded MQTT broker: rumqttd on its own thread, behind our own
//! listeners.
//!
//! rumqttd binds its listeners itself and never tells us the port, its
//! `start()` blocks forever, and it cannot be stopped. So we bind the
//! public listener ourselves (port 0 works, and we know the real port at
//! once), run rumqttd on an internal loopback port, and forward each
//! accepted connection to it byte for byte (TLS, when configured, is still
//! terminated by rumqttd). That also gives us:
//! - a connection cap enforced before rumqttd's `max_connections`, which
//!   panics in some versions;
//! - a guard on what clients send (see [`crate::mqtt::guard`]), in
//!   plaintext only: packets only a server may send crash rumqttd's MQTT 5
//!   decoder;
//! - a real shutdown: dropping the forwarders closes every client
//!   connection, and the [`crate::auth::Authenticator`] refuses every
//!   login once the control plane is gone, so the leftover rumqttd thread
//!   is inert until the process exits.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, Semaphore};
use tokio::task::JoinSet;

use crate::auth::Authenticator;
use crate::config::TlsFiles;
use crate::mqtt::guard;

/// Largest MQTT packet, either way: an announcement (256 KiB of body) and
/// its topic fit; a device report (32 KiB) fits many times over.
pub const MAX_PACKET: usize = 320 * 1024;

/// Why the embedded broker did not start.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// rumqttd did not come up on its internal port in time.
    #[error("the embedded MQTT broker did not start: {0}")]
    Start(String),
}

/// What to embed.
#[derive(Debug, Clone)]
pub struct EmbeddedSettings {
    /// Public MQTT 3.1.1 listener.
    pub v4: SocketAddr,
    /// Public MQTT 5 listener.
    pub v5: Option<SocketAddr>,
    /// TLS, terminated by rumqttd.
    pub tls: Option<TlsFiles>,
    /// Connection cap across all listeners.
    pub max_connections: usize,
}

/// The running embedded broker's public addresses.
#[derive(Debug, Clone, Copy)]
pub struct EmbeddedAddrs {
    /// MQTT 3.1.1, as bound.
    pub v4: SocketAddr,
    /// MQTT 5, as bound.
    pub v5: Option<SocketAddr>,
}

fn free_loopback_port() -> Result<SocketAddr, EmbeddedError> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    // Bind-then-release: the port could in principle be taken before
    // rumqttd binds it; on loopback this race is harmless in practice and
    // shows as a start error rather than a silent misroute.
    let l =
        std::net::TcpListener::bind(addr).map_err(|source| EmbeddedError::Bind { addr, source })?;
    l.local_addr()
        .map_err(|source| EmbeddedError::Bind { addr, source })
}

fn server_settings(
    name: &str,
    listen: SocketAddr,
    tls: Option<&TlsFiles>,
    auth: &Authenticator,
) -> rumqttd::ServerSettings {
    let mut connections = rumqttd::ConnectionSettings {
        connection_timeout_ms: 10_000,
        max_payload_size: MAX_PACKET,
        max_inflight_count: 100,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    auth.install(&mut connections);
    rumqttd::ServerSettings {
        name: name.to_string(),
        listen,
        tls: tls.map(|t| rumqttd::TlsConfig::Rustls {
            capath: None,
            certpath: t.cert.display().to_string(),
            keypath: t.key.display().to_string(),
        }),
        next_connection_delay_ms: 0,
        connections,
    }
}

/// Starts rumqttd and the forwarding listeners. Tasks go into `tasks`
/// (the server's supervisor); each returns only if it failed. `died` is
/// completed if rumqttd's thread ever returns.
///
/// # Errors
/// [`EmbeddedError`] when a listener cannot be bound or rumqttd does not
/// come up within five seconds.
pub async fn start(
    settings: &EmbeddedSettings,
    auth: &Authenticator,
    tasks: &mut JoinSet<Result<(), String>>,
) -> Result<EmbeddedAddrs, EmbeddedError> {
    let bind = |addr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| EmbeddedError::Bind { addr, source })
    };
    let v4_public = bind(settings.v4).await?;
    let v5_public = match settings.v5 {
        Some(a) => Some(bind(a).await?),
        None => None,
    };
    let v4_internal = free_loopback_port()?;
    let v5_internal = match v5_public {
        Some(_) => Some(free_loopback_port()?),
        None => None,
    };
    let mut config = rumqttd::Config {
        id: 0,
        router: rumqttd::RouterConfig {
            // Above our own cap, so rumqttd's limit is never the one hit.
            max_connections: settings.max_connections + 16,
            max_outgoing_packet_count: 200,
            // Per-filter in-memory commit log: our messages are small and
            // consumed at once, so keep it far below rumqttd's 100 MiB x 10.
            max_segment_size: 16 * 1024 * 1024,
            max_segment_count: 4,
            ..Default::default()
        },
        ..Default::default()
    };
    let tls = settings.tls.as_ref();
    config.v4 = Some(HashMap::from([(
        "v4".to_string(),
        server_settings("meshota-v4", v4_internal, tls, auth),
    )]));
    if let Some(v5) = v5_internal {
        config.v5 = Some(HashMap::from([(
            "v5".to_string(),
            server_settings("meshota-v5", v5, tls, auth),
        )]));
    }
    let (died_tx, died_rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("rumqttd".into())
        .spawn(move || {
            let mut broker = rumqttd::Broker::new(config);
            let result = broker.start();
            let _ = died_tx.send(format!("rumqttd stopped: {result:?}"));
        })
        .map_err(|e| EmbeddedError::Start(e.to_string()))?;
    tasks.spawn(async move {
        match died_rx.await {
            Ok(why) => Err(why),
            Err(_) => Err("rumqttd thread ended".to_string()),
        }
    });
    wait_until_listening(v4_internal).await?;
    if let Some(v5) = v5_internal {
        wait_until_listening(v5).await?;
    }
    let local = |l: &TcpListener, a| {
        l.local_addr()
            .map_err(|source| EmbeddedError::Bind { addr: a, source })
    };
    let addrs = EmbeddedAddrs {
        v4: local(&v4_public, settings.v4)?,
        v5: match (&v5_public, settings.v5) {
            (Some(l), Some(a)) => Some(local(l, a)?),
            _ => None,
        },
    };
    let permits = Arc::new(Semaphore::new(connection_budget(
        settings.max_connections,
        open_files_limit(),
    )));
    // Under TLS we forward ciphertext and cannot look at packets.
    let guard = settings.tls.is_none();
    tasks.spawn(forward(v4_public, v4_internal, permits.clone(), guard));
    if let (Some(l), Some(internal)) = (v5_public, v5_internal) {
        tasks.spawn(forward(l, internal, permits, guard));
    }
    Ok(addrs)
}

/// Descriptors kept for everything but client connections: sled, the
/// HTTP API, the libp2p seeder, logs.
const RESERVED_FDS: u64 = 512;

/// How many client connections fit in the process's open-files limit.
/// Each costs three descriptors (our socket to the client, ours to
/// rumqttd, rumqttd's own), and when rumqttd runs out its accept loop
/// spins on `EMFILE` instead of backing off, so we stop short of it.
fn connection_budget(wanted: usize, nofile: Option<u64>) -> usize {
    let Some(limit) = nofile else {
        return wanted;
    };
    let fits = usize::try_from(limit.saturating_sub(RESERVED_FDS) / 3).unwrap_or(usize::MAX);
    if fits < wanted {
        tracing::warn!(
            max_connections = wanted,
            open_files_limit = limit,
            "only {fits} MQTT connections fit in the open-files limit (3 descriptors each); \
             raise it (systemd LimitNOFILE=, ulimit -n) to allow {wanted}"
        );
    }
    wanted.min(fits.max(1))
}

/// The soft open-files limit, from `/proc/self/limits` (Linux); `None`
/// elsewhere or when unlimited.
fn open_files_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

async fn wait_until_listening(addr: SocketAddr) -> Result<(), EmbeddedError> {
    for _ in 0..100 {
        // Asking the kernel, not connecting: rumqttd logs a probe that
        // connects and hangs up as an ERROR, which every start showed.
        let up = match listening(addr.port()) {
            Some(up) => up,
            None => TcpStream::connect(addr).await.is_ok(),
        };
        if up {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(EmbeddedError::Start(format!(
        "nothing listening on internal port {addr} after 5 s"
    )))
}

/// Whether a socket is listening on TCP `port`, from `/proc/net/tcp` and
/// `/proc/net/tcp6` (this network namespace); `None` when neither can be
/// read.
fn listening(port: u16) -> Option<bool> {
    let mut readable = false;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        readable = true;
        let found = text.lines().skip(1).any(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st …; 0A is TCP_LISTEN.
            let local_port = cols
                .get(1)
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            cols.get(3) == Some(&"0A") && local_port == Some(port)
        });
        if found {
            return Some(true);
        }
    }
    readable.then_some(false)
}

/// Accepts on `public` and pipes each connection to rumqttd at `internal`,
/// through the packet guard when `guard` is set. Connections live in this
/// task's own `JoinSet`, so they all close when the task is aborted at
/// shutdown.
async fn forward(
    public: TcpListener,
    internal: SocketAddr,
    permits: Arc<Semaphore>,
    guard: bool,
) -> Result<(), String> {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = public.accept() => {
                let (mut client, peer) = match accepted {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of file descriptors and the like: back off
                        // rather than spin, and keep serving.
                        tracing::warn!(error = %e, "MQTT accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    tracing::warn!(%peer, "MQTT connection cap reached; closing");
                    continue;
                };
                conns.spawn(async move {
                    let _permit = permit;
                    let Ok(mut upstream) = TcpStream::connect(internal).await else {
                        tracing::warn!("embedded broker unreachable on {internal}");
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = upstream.set_nodelay(true);
                    if !guard {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                        return;
                    }
                    let (client_rx, mut client_tx) = client.split();
                    let (mut upstream_rx, upstream_tx) = upstream.split();
                    // Whichever way ends first ends the connection: a
                    // stopped guard closes both sockets, so rumqttd sees
                    // an ordinary disconnect.
                    tokio::select! {
                        r = guard::copy_guarded(client_rx, upstream_tx) => {
                            if let Err(e) = r {
                                tracing::info!(%peer, error = %e, "MQTT client dropped");
                            }
                        }
                        _ = tokio::io::copy(&mut upstream_rx, &mut client_tx) => {}
                    }
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listening_port_is_seen_without_connecting_to_it() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        assert_eq!(listening(port), Some(true));
        drop(l);
        assert_eq!(listening(port), Some(false));
    }

    #[test]
    fn the_connection_cap_fits_three_descriptors_per_client_in_the_open_files_limit() {
        assert_eq!(connection_budget(10_000, Some(20_000)), 6_496);
        assert_eq!(connection_budget(100, Some(20_000)), 100);
        assert_eq!(connection_budget(100, None), 100);
        assert_eq!(connection_budget(100, Some(10)), 1);
        assert!(open_files_limit().is_some_and(|n| n > 0));
    }
}
