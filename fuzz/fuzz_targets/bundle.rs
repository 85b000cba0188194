//! A bundle file: header, manifest, release, then every chunk record.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshota_protocol::bundle::BundleReader;

fuzz_target!(|data: &[u8]| {
    let Ok(mut reader) = BundleReader::open(data) else {
        return;
    };
    let _ = reader.signed_release().decode_unverified();
    // Each chunk is bounded by the manifest and MAX_CHUNK_LEN, so this
    // loop ends on the first error or after the manifest's last chunk.
    while let Ok(Some(_)) = reader.next_chunk() {}
});
