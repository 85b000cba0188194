//! The real device agent, run in process for broker tests.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use meshota_node::agent::driver::{Fetcher, PreloadedFetcher};
use meshota_node::agent::mqtt;
use meshota_node::p2p::{Node, P2pConfig, P2pFetcher};
use meshota_node::store::MemStore;

/// The data directory `start_device` gives device `id` under `dir`.
pub fn device_data_dir(dir: &Path, id: &str) -> PathBuf {
    dir.join(id).join("data")
}

/// The device's `dir` backend slot root, as `start_device` configures it.
pub fn device_slots(dir: &Path, id: &str) -> PathBuf {
    dir.join(id).join("slots")
}

/// How a test device differs from the plain one.
#[derive(Default)]
pub struct AgentOptions {
    /// Its chunk store; chunks preloaded here need no network.
    pub store: MemStore,
    /// Fetch through a real libp2p node on loopback (from the announced
    /// origin and neighbours) instead of only from the preloaded store.
    pub p2p: bool,
    /// The device's rollout groups.
    pub groups: Vec<String>,
    /// A `/bin/sh -c` health script, given the new slot as `$1`.
    pub health_script: Option<String>,
    /// The `[mqtt]` section's body instead of `url = "mqtt://<addr>"`.
    pub mqtt: Option<String>,
}

/// A running agent: stopped and joined when dropped.
pub struct Device {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<(), mqtt::DaemonError>>>,
}

impl Device {
    /// Stops the agent and returns how its daemon ended.
    pub fn stop(mut self) -> Result<(), mqtt::DaemonError> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(r)) => r,
            Some(Err(p)) => std::panic::resume_unwind(p),
            None => Ok(()),
        }
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Runs `meshota-node`'s daemon for device `id` against `mqtt` on its own
/// thread, with an empty chunk store and no network fetcher.
pub fn start_device(dir: &Path, id: &str, mqtt: SocketAddr, trust: &Path) -> Device {
    start_device_with(dir, id, mqtt, trust, AgentOptions::default())
}

/// As [`start_device`], shaped by `opts`.
pub fn start_device_with(
    dir: &Path,
    id: &str,
    mqtt: SocketAddr,
    trust: &Path,
    opts: AgentOptions,
) -> Device {
    let groups: Vec<String> = opts.groups.iter().map(|g| format!("{g:?}")).collect();
    let health = match &opts.health_script {
        Some(script) => format!(
            "[health]\ncommand = \"/bin/sh\"\nargs = [\"-c\", {script:?}, \"sh\"]\ntimeout_secs = 20\n"
        ),
        None => String::new(),
    };
    let cfg = meshota_node::config::Config::parse(&format!(
        r#"
data_dir = "{data}"
[device]
id = "{id}"
fleet = "default"
site = "site-1"
compatible = "rpi4"
groups = [{groups}]
[mqtt]
{mqtt_section}
[trust]
root = "{trust}"
[install.dir]
root = "{slots}"
# A fetch that fails on a loaded CI machine is retried in seconds, not
# the production default's 10 s doubling, which could outlast a test.
[fetch]
retry_min_secs = 1
retry_max_secs = 4
{health}"#,
        data = device_data_dir(dir, id).display(),
        trust = trust.display(),
        slots = device_slots(dir, id).display(),
        groups = groups.join(", "),
        mqtt_section = opts
            .mqtt
            .clone()
            .unwrap_or_else(|| format!("url = \"mqtt://{mqtt}\"")),
    ))
    .unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        // The p2p fetcher blocks on its node from the agent's side, so the
        // node needs a worker thread of its own.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let store = Arc::new(opts.store);
        let node = if opts.p2p {
            let keypair = libp2p::identity::Keypair::generate_ed25519();
            Some(
                rt.block_on(async { Node::spawn(P2pConfig::loopback(), store.clone(), keypair) })
                    .unwrap(),
            )
        } else {
            None
        };
        let fetcher: Box<dyn Fetcher> = match &node {
            Some(n) => Box::new(P2pFetcher::new(n.clone(), rt.handle().clone(), None)),
            None => Box::new(PreloadedFetcher),
        };
        let r = rt.block_on(mqtt::run_until(cfg, store, fetcher, async {
            let _ = stop_rx.await;
        }));
        if let Some(n) = node {
            rt.block_on(n.shutdown());
        }
        r
    });
    Device {
        stop: Some(stop_tx),
        thread: Some(thread),
    }
}
