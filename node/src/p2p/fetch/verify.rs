//! Arriving chunks: verified (BLAKE3, capped zstd) and stored on the
//! blocking pool, then handed back to their scheduler.

use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::Bytes;
use libp2p::PeerId;
use meshota_protocol::chunking::open_chunk;
use meshota_protocol::{ChunkId, Encoding, ManifestId, PeerResponse};

use super::{Fetch, FetchProgress, Fetches, Net, Phase};
use crate::sched::Failure;
use crate::store::StoredChunk;

/// A chunk after verification and storing on the blocking pool.
pub(crate) struct Verified {
    manifest: ManifestId,
    peer: PeerId,
    index: usize,
    wire_bytes: u64,
    result: Result<(), VerifyFailure>,
}

enum VerifyFailure {
    /// The peer sent bad data: ban it.
    Bad(String),
    /// Our store failed.
    Store(String),
}

impl Fetches {
    pub(super) fn count_unused(&self, response: &PeerResponse) {
        if let PeerResponse::Chunk { data, .. } = response {
            self.counters
                .unused_chunk_bytes
                .fetch_add(data.len() as u64, Ordering::Relaxed);
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn spawn_verify(
        &self,
        manifest: ManifestId,
        peer: PeerId,
        index: usize,
        chunk: ChunkId,
        len: u32,
        encoding: Encoding,
        data: Bytes,
    ) {
        let store = self.store.clone();
        let tx = self.verified_tx.clone();
        let wire_bytes = data.len() as u64;
        tokio::task::spawn_blocking(move || {
            let result = match open_chunk(encoding, &data, &chunk, len) {
                Err(e) => Err(VerifyFailure::Bad(e.to_string())),
                Ok(_) => store
                    .put_chunk(
                        &chunk,
                        &StoredChunk {
                            encoding,
                            raw_len: len,
                            data,
                        },
                    )
                    .map_err(|e| VerifyFailure::Store(e.to_string())),
            };
            if result.is_ok() {
                // One line per chunk fetched and durably stored: the
                // observable behind "no chunk is fetched twice, even
                // across a kill -9" (tests/tests/kill9.rs counts them).
                tracing::debug!(target: "meshota::chunk_stored", chunk = %chunk, wire_bytes, "chunk stored");
            }
            // The loop is gone on shutdown; the chunk is stored anyway.
            let _ = tx.send(Verified {
                manifest,
                peer,
                index,
                wire_bytes,
                result,
            });
        });
    }

    /// A chunk came back from verification.
    pub(crate) fn on_verified(&mut self, v: Verified, now: Instant, net: &mut dyn Net) {
        let Some(Fetch {
            phase: Phase::Download(dl),
            progress,
            ..
        }) = self.fetches.get_mut(&v.manifest)
        else {
            self.counters
                .unused_chunk_bytes
                .fetch_add(v.wire_bytes, Ordering::Relaxed);
            return;
        };
        match v.result {
            Ok(()) => {
                if dl.held.get(v.index) {
                    self.counters
                        .unused_chunk_bytes
                        .fetch_add(v.wire_bytes, Ordering::Relaxed);
                }
                self.counters
                    .downloaded_bytes
                    .fetch_add(v.wire_bytes, Ordering::Relaxed);
                self.counters
                    .downloaded_chunks
                    .fetch_add(1, Ordering::Relaxed);
                dl.sched
                    .handle_chunk_arrived(v.peer, v.index, v.wire_bytes, now);
                if !dl.held.get(v.index) {
                    dl.held.set(v.index);
                    dl.held_count += 1;
                }
                if let Some(tx) = progress {
                    let _ = tx.send(FetchProgress {
                        held: dl.held_count,
                        total: dl.manifest.chunks.len(),
                        bytes: dl.sched.stats().bytes,
                    });
                }
            }
            Err(VerifyFailure::Bad(reason)) => {
                tracing::warn!(peer = %v.peer, %reason, "peer sent a bad chunk");
                dl.sched.handle_chunk_failed(
                    v.peer,
                    v.index,
                    Failure::Misbehaved(reason.clone()),
                    now,
                );
                net.ban(v.peer, reason);
            }
            Err(VerifyFailure::Store(reason)) => {
                tracing::error!(%reason, "store failed while saving a verified chunk");
                dl.sched.handle_chunk_failed(
                    v.peer,
                    v.index,
                    Failure::Unresponsive(format!("local store failed: {reason}")),
                    now,
                );
            }
        }
    }
}
