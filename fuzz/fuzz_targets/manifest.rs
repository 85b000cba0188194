//! A manifest from a peer or a bundle: decode, validate, and walk it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshota_protocol::Manifest;

fuzz_target!(|data: &[u8]| {
    if let Ok((_, m)) = Manifest::decode(data) {
        let _ = m.offsets().count();
        let _ = m.unique_chunks();
        let _ = m.encode();
    }
});
