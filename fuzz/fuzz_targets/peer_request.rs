//! A request from a peer on `/meshota/chunks/1`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshota_protocol::{codec, PeerRequest};

fuzz_target!(|data: &[u8]| {
    let _ = codec::decode::<PeerRequest>(data);
});
