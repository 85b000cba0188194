//! An announcement as it arrives from MQTT: envelope, release, gate.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshota_protocol::{codec, Announcement};

fuzz_target!(|data: &[u8]| {
    if let Ok(a) = codec::decode::<Announcement>(data) {
        let _ = a.release.decode_unverified();
        let _ = a.gate.decode_unverified();
        let _ = a.release.id();
    }
});
