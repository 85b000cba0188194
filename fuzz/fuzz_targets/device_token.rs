//! An MQTT password as the broker's auth handler receives it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshota_protocol::DeviceToken;

fuzz_target!(|data: &[u8]| {
    // The handler gets a UTF-8 string; the raw bytes also reach the codec
    // as hex of themselves, so both the hex and CBOR layers are exercised.
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = DeviceToken::verify(s, "d1", 1_000);
    }
    let _ = DeviceToken::verify(&hex::encode(data), "d1", 1_000);
});
