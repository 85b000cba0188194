//! Test fixtures shared by the install and agent tests: payload helpers
//! over the in-memory store.

use std::collections::BTreeMap;

use meshota_protocol::chunking::encode_chunk;
use meshota_protocol::manifest::{build_manifest, ManifestError, ManifestTemplate};
use meshota_protocol::semver::Version;
use meshota_protocol::{ChunkerParams, Compatible, InstallKind, Manifest};

use crate::store::{Store, StoredChunk};

/// The tests' store: the `store` branch's in-memory store.
pub(crate) type TestStore = crate::store::MemStore;

/// Deterministic pseudo-random bytes.
pub(crate) fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Chunks `payload` into `store` and returns its manifest (also stored).
pub(crate) fn put_payload(
    store: &dyn Store,
    payload: &[u8],
    version: Version,
    kind: InstallKind,
) -> Manifest {
    put_payload_except(store, payload, version, kind, None)
}

/// As [`put_payload`], leaving out the chunk at position `skip`.
pub(crate) fn put_payload_except(
    store: &dyn Store,
    payload: &[u8],
    version: Version,
    kind: InstallKind,
    skip: Option<usize>,
) -> Manifest {
    let mut index = 0usize;
    let template = ManifestTemplate {
        name: "rootfs".into(),
        version,
        compatible: Compatible::new("rpi4").unwrap(),
        chunker: ChunkerParams::default(),
        kind,
        created_at: 1_700_000_000,
        meta: BTreeMap::new(),
    };
    let m = build_manifest::<_, ManifestError>(payload, template, |c| {
        index += 1;
        if skip == Some(index - 1) {
            return Ok(());
        }
        let (encoding, data) = encode_chunk(&c.data);
        store
            .put_chunk(
                &c.id,
                &StoredChunk {
                    encoding,
                    raw_len: c.data.len() as u32,
                    data: data.into(),
                },
            )
            .unwrap();
        Ok(())
    })
    .unwrap();
    store
        .put_manifest(&m.id().unwrap(), &m.encode().unwrap())
        .unwrap();
    m
}
