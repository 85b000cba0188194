//! A response from a peer on `/meshota/chunks/1`, including the bitfield
//! check and chunk decoding a node applies to it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshota_protocol::chunking::decode_chunk;
use meshota_protocol::ids::ChunkId;
use meshota_protocol::{codec, PeerResponse};

fuzz_target!(|data: &[u8]| {
    match codec::decode::<PeerResponse>(data) {
        Ok(PeerResponse::Have { bitfield, .. }) => {
            let _ = bitfield.check(bitfield.len());
            let _ = bitfield.count();
        }
        Ok(PeerResponse::Chunk { encoding, data }) => {
            let _ = decode_chunk(encoding, &data, &ChunkId::digest(b""), 64 * 1024);
        }
        _ => {}
    }
});
