//! A signed operator command from a device's cmd topic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshota_protocol::{codec, Command, Role, RoleKeys, SecretKey, Signed};

fuzz_target!(|data: &[u8]| {
    let _ = codec::decode::<Command>(data);
    if let Ok(signed) = codec::decode::<Signed<Command>>(data) {
        let keys = RoleKeys {
            keys: vec![SecretKey::from_seed([3; 32]).public()],
            threshold: 1,
        };
        let _ = signed.decode_unverified();
        let _ = signed.verify(Role::Rollout, &keys);
    }
});
