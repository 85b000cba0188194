//! The real device agent, run in process for broker tests.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use meshota_node::agent::driver::PreloadedFetcher;
use meshota_node::agent::mqtt;
use meshota_node::store::MemStore;

/// The data directory `start_device` gives device `id` under `dir`.
pub fn device_data_dir(dir: &Path, id: &str) -> PathBuf {
    dir.join(id).join("data")
}

/// Runs `meshota-node`'s daemon for device `id` against `mqtt` on its own
/// thread, with an empty chunk store; it stops when the returned sender is
/// dropped or fires.
pub fn start_device(
    dir: &Path,
    id: &str,
    mqtt: SocketAddr,
    trust: &Path,
) -> (
    tokio::sync::oneshot::Sender<()>,
    std::thread::JoinHandle<Result<(), mqtt::DaemonError>>,
) {
    start_device_with(dir, id, mqtt, trust, MemStore::new())
}

/// The device's `dir` backend slot root, as `start_device` configures it.
pub fn device_slots(dir: &Path, id: &str) -> PathBuf {
    dir.join(id).join("slots")
}

/// As [`start_device`], with `store` as its chunk store (preloaded chunks
/// make the agent's `PreloadedFetcher` succeed without any network).
pub fn start_device_with(
    dir: &Path,
    id: &str,
    mqtt: SocketAddr,
    trust: &Path,
    store: MemStore,
) -> (
    tokio::sync::oneshot::Sender<()>,
    std::thread::JoinHandle<Result<(), mqtt::DaemonError>>,
) {
    let cfg = meshota_node::config::Config::parse(&format!(
        r#"
data_dir = "{data}"
[device]
id = "{id}"
fleet = "default"
site = "site-1"
compatible = "rpi4"
[mqtt]
url = "mqtt://{mqtt}"
[trust]
root = "{trust}"
[install.dir]
root = "{slots}"
"#,
        data = device_data_dir(dir, id).display(),
        trust = trust.display(),
        slots = device_slots(dir, id).display(),
    ))
    .unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let daemon = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(mqtt::run_until(
            cfg,
            Arc::new(store),
            Box::new(PreloadedFetcher),
            async {
                let _ = stop_rx.await;
            },
        ))
    });
    (stop_tx, daemon)
}
