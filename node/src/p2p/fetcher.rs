//! The bridge from the device agent to the data plane: the agent's
//! blocking [`Fetcher`] seam, fulfilled by a [`NodeHandle`].
//!
//! The agent runs on its own thread and calls `fetch` synchronously; this
//! blocks that thread on the node's async fetch through a runtime handle,
//! and forwards progress as chunks are verified.

use std::time::Duration;

use libp2p::Multiaddr;
use meshota_protocol::Manifest;
use tokio::sync::watch;

use super::{FetchOptions, FetchProgress as NodeProgress, NodeHandle};
use crate::agent::driver::{FetchRequest, Fetcher};
use crate::agent::FetchProgress;
use crate::store::Store;

/// Fetches releases peer-to-peer for the agent.
pub struct P2pFetcher {
    node: NodeHandle,
    rt: tokio::runtime::Handle,
    timeout: Option<Duration>,
}

impl P2pFetcher {
    /// A fetcher over `node`, whose futures run on `rt`. `timeout` bounds
    /// one fetch (`None`: until every chunk is held).
    pub fn new(node: NodeHandle, rt: tokio::runtime::Handle, timeout: Option<Duration>) -> Self {
        Self { node, rt, timeout }
    }
}

impl Fetcher for P2pFetcher {
    fn peer_id(&self) -> Option<String> {
        Some(self.node.peer_id().to_string())
    }

    fn fetch(
        &mut self,
        req: FetchRequest<'_>,
        store: &dyn Store,
        progress: &mut dyn FnMut(FetchProgress),
    ) -> Result<(), String> {
        let manifest_id = *req.manifest_id;
        // Announcements carry seeders as unsigned hints: a bad one costs a
        // failed dial, never trust.
        let seeders: Vec<Multiaddr> = req
            .bootstrap
            .iter()
            .filter_map(|a| match a.parse() {
                Ok(m) => Some(m),
                Err(e) => {
                    tracing::warn!("ignoring bootstrap address {a:?}: {e}");
                    None
                }
            })
            .collect();
        let node = self.node.clone();
        let timeout = self.timeout;
        self.rt.block_on(async move {
            for addr in seeders {
                if let Err(e) = node.dial(addr.clone()).await {
                    tracing::warn!("dialing seeder {addr}: {e}");
                }
            }
            let (tx, mut rx) = watch::channel(NodeProgress::default());
            let fetch = node.fetch(
                manifest_id,
                FetchOptions {
                    timeout,
                    progress: Some(tx),
                },
            );
            tokio::pin!(fetch);
            let mut total = None;
            loop {
                tokio::select! {
                    done = &mut fetch => {
                        // The last chunks' progress may not have been seen
                        // yet: hand over the report's exact split.
                        if let Ok(report) = &done {
                            progress(FetchProgress {
                                bytes: report.bytes,
                                total: payload_size(store, &manifest_id).unwrap_or(0),
                            });
                        }
                        return done.map(|_| ()).map_err(|e| e.to_string());
                    }
                    changed = rx.changed() => {
                        if changed.is_err() {
                            // No more progress will come: just finish.
                            return (&mut fetch).await.map(|_| ()).map_err(|e| e.to_string());
                        }
                        let p = *rx.borrow_and_update();
                        if total.is_none() {
                            total = payload_size(store, &manifest_id);
                        }
                        progress(FetchProgress {
                            bytes: p.bytes,
                            total: total.unwrap_or(0),
                        });
                    }
                }
            }
        })
    }
}

/// The payload size, once the manifest is in the store.
fn payload_size(store: &dyn Store, id: &meshota_protocol::ManifestId) -> Option<u64> {
    let bytes = store.get_manifest(id).ok()??;
    Manifest::decode(&bytes).ok().map(|(_, m)| m.payload_size)
}

/// Loads the node's libp2p identity from `path`, creating it (mode 0600)
/// on first start so the peer id stays stable across restarts.
///
/// # Errors
/// A message naming the file and what is wrong with it.
pub fn load_or_create_identity(
    path: &std::path::Path,
) -> Result<libp2p::identity::Keypair, String> {
    use std::io::Write;
    match std::fs::read(path) {
        Ok(bytes) => libp2p::identity::Keypair::from_protobuf_encoding(&bytes).map_err(|e| {
            format!(
                "{} is not a libp2p identity ({e}); remove it to create a new one",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = libp2p::identity::Keypair::generate_ed25519();
            let bytes = key
                .to_protobuf_encoding()
                .map_err(|e| format!("encoding a new identity: {e}"))?;
            let tmp = path.with_extension("tmp");
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create(true).truncate(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                opts.mode(0o600);
            }
            let write = |f: &mut std::fs::File| f.write_all(&bytes).and_then(|()| f.sync_all());
            opts.open(&tmp)
                .and_then(|mut f| write(&mut f))
                .and_then(|()| std::fs::rename(&tmp, path))
                .map_err(|e| format!("writing {}: {e}", path.display()))?;
            Ok(key)
        }
        Err(e) => Err(format!("reading {}: {e}", path.display())),
    }
}
