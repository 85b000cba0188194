//! The broker deployment as one supervised unit: [`Server::spawn`] starts
//! the embedded MQTT broker (unless an external one is configured), the
//! control plane's MQTT client, and the HTTP API and origin; the address
//! accessors tell where they listen; [`Server::shutdown`] stops them.
//!
//! A supervisor task owns every long-running task in a `JoinSet`. If any
//! of them ends (a failure, or a panic, which `panic = "unwind"` confines
//! to its task), the supervisor stops all the others and
//! [`Server::wait`] returns the cause, so the process exits instead of
//! running half-alive.
//!
//! Data directory layout:
//!
//! ```text
//! registry/          sled: devices, events, counters, releases, announcements
//! origin/            sled: the SledStore of chunks and manifests
//! uploads/           bundles being received (temporary files)
//! control-password   MQTT password of the control plane (0600)
//! operator-token     HTTP bearer token of the operator (0600)
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use meshota_node::store::{SledStore, Store, StoreError};
use meshota_protocol::{SecretKey, TrustRoot};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};

use crate::auth::Authenticator;
use crate::config::{
    load_or_create_secret, Config, ConfigError, CONTROL_PASSWORD_FILE, CONTROL_USER,
    OPERATOR_TOKEN_FILE,
};
use crate::http::{AppState, HttpStats};
use crate::mqtt::control::{self, ControlHandle, ControlSettings};
use crate::mqtt::embedded::{self, EmbeddedError, EmbeddedSettings};
use crate::registry::{Registry, RegistryError};

/// Why the server did not start, or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Bad configuration or unreadable secrets.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The registry could not be opened.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The libp2p origin seeder could not start.
    #[error(transparent)]
    Seeder(#[from] crate::seeder::SeederError),
    /// Stored rollouts could not be restored.
    #[error(transparent)]
    Rollouts(#[from] crate::rollouts::RolloutsError),
    /// The origin store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The embedded broker did not start.
    #[error(transparent)]
    Embedded(#[from] EmbeddedError),
    /// A directory or listener failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The trust chain could not be stored or published.
    #[error("publishing the trust chain: {0}")]
    TrustChain(#[from] crate::mqtt::control::ControlError),
    /// A supervised task ended; everything else was stopped.
    #[error("server task failed: {0}")]
    TaskDied(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ServerError {
    let what = what.into();
    move |source| ServerError::Io { what, source }
}

/// A running broker deployment.
pub struct Server {
    mqtt: Option<SocketAddr>,
    mqtt5: Option<SocketAddr>,
    http: SocketAddr,
    https: bool,
    p2p_listen: Vec<String>,
    operator_token: String,
    control_password: String,
    control: ControlHandle,
    registry: Arc<Registry>,
    store: Arc<dyn Store>,
    trust: Option<Arc<TrustRoot>>,
    rollout_key: Option<Arc<SecretKey>>,
    rollouts: crate::rollouts::Rollouts,
    stats: Arc<HttpStats>,
    seeder: Option<crate::seeder::Seeder>,
    stop: Option<oneshot::Sender<()>>,
    supervisor: Option<JoinHandle<Result<(), ServerError>>>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("mqtt", &self.mqtt)
            .field("mqtt5", &self.mqtt5)
            .field("http", &self.http)
            .finish_non_exhaustive()
    }
}

/// Removes bundles a previous run was receiving when it stopped: an
/// interrupted upload is never resumed, only retried.
fn clear_uploads(dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if let Err(err) = std::fs::remove_file(e.path()) {
            tracing::warn!(file = %e.path().display(), error = %err, "cannot remove a stale upload");
        }
    }
}

/// Host, port and optional username and password of a broker.
type BrokerAddr = (String, u16, Option<(String, String)>);

/// Parses `mqtt://[user:pass@]host:port` (port defaults to 1883).
fn parse_mqtt_url(url: &str) -> Result<BrokerAddr, ConfigError> {
    let bad = || {
        ConfigError::Invalid(format!(
            "mqtt_url {url:?}: expected mqtt://[user:pass@]host[:port]"
        ))
    };
    let rest = url.strip_prefix("mqtt://").ok_or_else(bad)?;
    let (creds, hostport) = match rest.rsplit_once('@') {
        Some((c, h)) => {
            let (u, p) = c.split_once(':').ok_or_else(bad)?;
            (Some((u.to_string(), p.to_string())), h)
        }
        None => (None, rest),
    };
    let hostport = hostport.trim_end_matches('/');
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().map_err(|_| bad())?),
        None => (hostport, 1883),
    };
    if host.is_empty() {
        return Err(bad());
    }
    Ok((host.to_string(), port, creds))
}

impl Server {
    /// Starts everything and returns once every listener is bound.
    ///
    /// # Errors
    /// [`ServerError`] when configuration, storage or a listener fails.
    pub async fn spawn(config: Config) -> Result<Server, ServerError> {
        let dir = config.data_dir.clone();
        for sub in ["", "registry", "origin", "uploads"] {
            let d = dir.join(sub);
            std::fs::create_dir_all(&d).map_err(io(format!("create {}", d.display())))?;
        }
        clear_uploads(&dir.join("uploads"));
        let now = crate::now();
        let trust = config.load_trust(now)?.map(Arc::new);
        let trust_chain = config.load_trust_chain(trust.as_deref())?;
        // Loaded (and so checked) now, so a bad key fails at start; the
        // rollout planner takes it from [`Server::rollout_key`].
        let rollout_key = config.load_rollout_key()?.map(Arc::new);
        let control_password = load_or_create_secret(&dir, CONTROL_PASSWORD_FILE)?;
        let operator_token = load_or_create_secret(&dir, OPERATOR_TOKEN_FILE)?;
        let registry = Arc::new(Registry::open(&dir.join("registry"))?);
        let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.join("origin"))?);

        let mut tasks: JoinSet<Result<(), String>> = JoinSet::new();
        let seeder = if config.p2p_listen.is_empty() {
            None
        } else {
            let published: Vec<_> = registry
                .releases()?
                .into_iter()
                .map(|r| r.manifest_id)
                .collect();
            Some(
                crate::seeder::Seeder::start(
                    &config.p2p_listen,
                    store.clone(),
                    &dir.join("p2p.key"),
                    &published,
                    Duration::from_secs(config.p2p_origin_dedup_secs),
                    config.p2p_max_connections,
                    (config.p2p_max_upload_bps > 0).then_some(config.p2p_max_upload_bps),
                )
                .await?,
            )
        };

        let (mqtt, mqtt5, control_settings) = match &config.mqtt_url {
            Some(url) => {
                let (host, port, credentials) = parse_mqtt_url(url)?;
                (None, None, (host, port, credentials))
            }
            None => {
                let auth = Authenticator::new(&registry, &control_password, config.auto_accept);
                let settings = EmbeddedSettings {
                    v4: config.mqtt_listen,
                    v5: config.mqtt5_listen,
                    tls: config.mqtt_tls.clone(),
                    max_connections: config.max_connections,
                };
                let addrs = embedded::start(&settings, &auth, &mut tasks).await?;
                // The control plane reaches the embedded broker on loopback
                // even when it listens on every interface.
                let host = if addrs.v4.ip().is_unspecified() {
                    "127.0.0.1".to_string()
                } else {
                    addrs.v4.ip().to_string()
                };
                let creds = Some((CONTROL_USER.to_string(), control_password.clone()));
                (Some(addrs.v4), addrs.v5, (host, addrs.v4.port(), creds))
            }
        };
        let (host, port, credentials) = control_settings;
        let mut suffix = [0u8; 6];
        getrandom::getrandom(&mut suffix)
            .map_err(|e| ConfigError::Invalid(format!("no randomness: {e}")))?;
        let (control, eventloop) = control::connect(
            &ControlSettings {
                host,
                port,
                credentials,
                client_id: format!("meshota-control-{}", hex::encode(suffix)),
                fleet: config.fleet.clone(),
            },
            registry.clone(),
        );
        tasks.spawn(control::run(
            control.clone(),
            eventloop,
            config.fleet.clone(),
        ));
        if let Some((chain, bytes)) = trust_chain {
            // Owned and retained like an announcement: re-published after
            // every broker start and re-asserted if anyone overwrites it.
            let topic = meshota_protocol::Topic::Trust {
                fleet: config.fleet.clone(),
            };
            control.announce(&topic, bytes).await?;
            tracing::info!(
                roots = chain.roots.len(),
                newest = ?chain.newest_version(),
                "publishing the trust chain on {topic}"
            );
        }

        let rollouts = crate::rollouts::Rollouts::open(
            registry.clone(),
            config.fleet.clone(),
            rollout_key.is_some(),
            now,
        )?;
        let stats = Arc::new(HttpStats::default());
        let state = AppState {
            registry: registry.clone(),
            store: store.clone(),
            trust: trust.clone(),
            operator_token: operator_token.as_str().into(),
            open_reads: config.open_reads,
            open_metrics: config.open_metrics,
            upload_dir: dir.join("uploads"),
            max_bundle_bytes: config.max_bundle_bytes,
            body_timeout: Duration::from_millis(config.http_body_timeout_ms),
            max_request_bytes: config.max_request_bytes,
            control: control.stats().clone(),
            control_handle: Some(control.clone()),
            stats: stats.clone(),
            seeder: seeder.clone(),
            rollouts: rollouts.clone(),
        };
        if let Some(seeder) = &seeder {
            tasks.spawn(seeder.clone().report_into(stats.clone()));
        }
        let listener = TcpListener::bind(config.http_listen)
            .await
            .map_err(io(format!("listen on {}", config.http_listen)))?;
        let http = listener
            .local_addr()
            .map_err(io("read the HTTP listener address"))?;
        if let Some(key) = &rollout_key {
            let mut bootstrap = config.p2p_announce.clone();
            if let (Some(seeder), true) = (&seeder, bootstrap.is_empty()) {
                bootstrap = seeder
                    .addrs()
                    .await
                    .iter()
                    .map(ToString::to_string)
                    .collect();
            }
            let scheme = if config.http_tls.is_some() {
                "https"
            } else {
                "http"
            };
            let hints = crate::rollouts::Hints {
                bootstrap,
                http_origin: Some(
                    config
                        .public_url
                        .clone()
                        .unwrap_or_else(|| format!("{scheme}://{http}")),
                ),
            };
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            control.feed_reports(tx);
            tasks.spawn(crate::rollouts::run(
                rollouts.clone(),
                control.clone(),
                registry.clone(),
                key.clone(),
                hints,
                rx,
            ));
        }
        let (http_stop_tx, http_stop_rx) = oneshot::channel::<()>();
        let app = crate::http::router(state);
        let tls = match &config.http_tls {
            Some(files) => Some(crate::http::tls::acceptor(files)?),
            None => None,
        };
        let limits = crate::http::serve::Limits {
            header_timeout: Duration::from_millis(config.http_header_timeout_ms),
        };
        let http_task = tokio::spawn(crate::http::serve::serve(
            listener,
            tls,
            app,
            limits,
            http_stop_rx,
        ));
        let https = config.http_tls.is_some();

        let (stop_tx, stop_rx) = oneshot::channel();
        let sup_registry = registry.clone();
        let supervisor = tokio::spawn(supervise(
            tasks,
            http_task,
            http_stop_tx,
            stop_rx,
            sup_registry,
        ));
        Ok(Server {
            mqtt,
            mqtt5,
            http,
            https,
            p2p_listen: config.p2p_listen.clone(),
            seeder,
            operator_token,
            control_password,
            control,
            registry,
            store,
            trust,
            rollout_key,
            rollouts,
            stats,
            stop: Some(stop_tx),
            supervisor: Some(supervisor),
        })
    }

    /// The embedded broker's MQTT 3.1.1 address (`None` with an external broker).
    pub fn mqtt_addr(&self) -> Option<SocketAddr> {
        self.mqtt
    }
    /// The embedded broker's MQTT 5 address, if enabled.
    pub fn mqtt5_addr(&self) -> Option<SocketAddr> {
        self.mqtt5
    }
    /// The HTTP API and origin address.
    pub fn http_addr(&self) -> SocketAddr {
        self.http
    }
    /// The rollout service (what `/v1/rollouts` drives).
    pub fn rollouts(&self) -> &crate::rollouts::Rollouts {
        &self.rollouts
    }
    /// The API's base URL (`http://…` or `https://…`).
    pub fn http_url(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://{}", self.http)
    }
    /// The configured libp2p listen addresses (for the seeder).
    pub fn p2p_listen(&self) -> &[String] {
        &self.p2p_listen
    }

    /// The libp2p origin seeder, when `--p2p-listen` was given.
    pub fn seeder(&self) -> Option<&crate::seeder::Seeder> {
        self.seeder.as_ref()
    }
    /// The operator's HTTP bearer token.
    pub fn operator_token(&self) -> &str {
        &self.operator_token
    }
    /// The control plane's MQTT password (username [`CONTROL_USER`]).
    pub fn control_password(&self) -> &str {
        &self.control_password
    }
    /// Publishing handle of the control plane (announcements).
    pub fn control(&self) -> &ControlHandle {
        &self.control
    }
    /// The registry.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }
    /// The origin's chunk and manifest store, for the libp2p seeder.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }
    /// The trust root releases are verified against, if configured.
    pub fn trust(&self) -> Option<&Arc<TrustRoot>> {
        self.trust.as_ref()
    }
    /// The online rollout-role key, if configured (for the planner).
    pub fn rollout_key(&self) -> Option<&Arc<SecretKey>> {
        self.rollout_key.as_ref()
    }
    /// HTTP counters; the p2p seeder adds its served bytes here.
    pub fn stats(&self) -> &Arc<HttpStats> {
        &self.stats
    }

    /// The machine-readable start line:
    /// `meshota-broker listening mqtt=ADDR mqtt5=ADDR http=ADDR tls=1`
    /// (`mqtt=external` with an external broker; `mqtt5` only if enabled;
    /// `tls=1` only when the API is HTTPS).
    pub fn listening_line(&self) -> String {
        let mut s = String::from("meshota-broker listening");
        match self.mqtt {
            Some(a) => s.push_str(&format!(" mqtt={a}")),
            None => s.push_str(" mqtt=external"),
        }
        if let Some(a) = self.mqtt5 {
            s.push_str(&format!(" mqtt5={a}"));
        }
        s.push_str(&format!(" http={}", self.http));
        if self.https {
            s.push_str(" tls=1");
        }
        s
    }

    /// Waits until a supervised task dies (or the server is shut down).
    /// Only the first call reports the cause; later calls return at once.
    ///
    /// # Errors
    /// [`ServerError::TaskDied`] with the cause.
    pub async fn wait(&mut self) -> Result<(), ServerError> {
        let Some(sup) = self.supervisor.as_mut() else {
            return Ok(());
        };
        let r = match sup.await {
            Ok(r) => r,
            Err(e) => Err(ServerError::TaskDied(format!("supervisor: {e}"))),
        };
        self.supervisor = None;
        r
    }

    /// Stops everything: HTTP finishes in-flight requests (up to five
    /// seconds), client connections are closed, the registry is flushed.
    ///
    /// # Errors
    /// The cause, if a task had already died.
    pub async fn shutdown(mut self) -> Result<(), ServerError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let result = self.wait().await;
        if let Some(seeder) = &self.seeder {
            seeder.shutdown().await;
        }
        self.registry.flush()?;
        result
    }
}

async fn supervise(
    mut tasks: JoinSet<Result<(), String>>,
    mut http_task: JoinHandle<Result<(), String>>,
    http_stop: oneshot::Sender<()>,
    stop: oneshot::Receiver<()>,
    registry: Arc<Registry>,
) -> Result<(), ServerError> {
    let mut http_done = false;
    let died = tokio::select! {
        _ = stop => None,
        r = &mut http_task => Some({
            http_done = true;
            match r {
            Ok(Ok(())) => "HTTP server stopped".to_string(),
            Ok(Err(e)) => e,
            Err(e) => format!("HTTP server panicked: {e}"),
        }}),
        Some(r) = tasks.join_next() => Some(match r {
            Ok(Ok(())) => "a server task stopped".to_string(),
            Ok(Err(e)) => e,
            Err(e) => format!("a server task panicked: {e}"),
        }),
    };
    if let Some(why) = &died {
        tracing::error!(cause = %why, "stopping the broker deployment");
    }
    tasks.shutdown().await;
    let _ = http_stop.send(());
    if !http_done
        && tokio::time::timeout(Duration::from_secs(5), &mut http_task)
            .await
            .is_err()
    {
        http_task.abort();
        let _ = http_task.await;
    }
    let flushed = tokio::task::spawn_blocking(move || registry.flush()).await;
    match (died, flushed) {
        (Some(why), _) => Err(ServerError::TaskDied(why)),
        (None, Ok(r)) => r.map_err(ServerError::from),
        (None, Err(e)) => Err(ServerError::TaskDied(format!("final flush: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mqtt_urls_parse_with_and_without_credentials() {
        assert_eq!(
            parse_mqtt_url("mqtt://u:p@h.example:1999").unwrap(),
            ("h.example".into(), 1999, Some(("u".into(), "p".into())))
        );
        assert_eq!(
            parse_mqtt_url("mqtt://10.0.0.1").unwrap(),
            ("10.0.0.1".into(), 1883, None)
        );
        assert!(parse_mqtt_url("http://x").is_err());
        assert!(parse_mqtt_url("mqtt://:12").is_err());
    }

    struct SignalOnDrop(Option<oneshot::Sender<()>>);
    impl Drop for SignalOnDrop {
        fn drop(&mut self) {
            if let Some(tx) = self.0.take() {
                let _ = tx.send(());
            }
        }
    }

    #[tokio::test]
    async fn when_one_task_dies_the_supervisor_stops_the_others_and_reports_why() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Arc::new(Registry::open(dir.path()).unwrap());
        let mut tasks = JoinSet::new();
        let (dropped_tx, dropped_rx) = oneshot::channel();
        tasks.spawn(async move {
            let _guard = SignalOnDrop(Some(dropped_tx));
            std::future::pending::<()>().await;
            Ok(())
        });
        tasks.spawn(async { Err("boom".to_string()) });
        let (http_stop_tx, http_stop_rx) = oneshot::channel::<()>();
        let (http_done_tx, http_done_rx) = oneshot::channel();
        let http = tokio::spawn(async move {
            let _ = http_stop_rx.await;
            let _ = http_done_tx.send(());
            Ok(())
        });
        let (_stop, stop_rx) = oneshot::channel();
        let r = supervise(tasks, http, http_stop_tx, stop_rx, registry).await;
        assert!(
            matches!(r, Err(ServerError::TaskDied(ref why)) if why == "boom"),
            "{r:?}"
        );
        assert!(dropped_rx.await.is_ok(), "the healthy task was not stopped");
        assert!(
            http_done_rx.await.is_ok(),
            "the HTTP server was not stopped"
        );
    }
}
