//! A device report as the control plane receives it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshota_protocol::{codec, SecretKey, SignedReport};

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = codec::decode::<SignedReport>(data) {
        let _ = r.claimed();
        let _ = r.verify(&SecretKey::from_seed([7; 32]).public());
    }
});
