//! A `Signed<TrustRoot>` (trust.cbor, or a rotation from the control plane).
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshota_protocol::{codec, Signed, TrustRoot};

fuzz_target!(|data: &[u8]| {
    if let Ok(signed) = codec::decode::<Signed<TrustRoot>>(data) {
        if let Ok(root) = TrustRoot::from_self_signed(&signed, 0) {
            let _ = root.rotate(&signed);
        }
    }
});
