//! A bundle must refuse every tampering and say where it is.

use super::*;
use crate::bundle::{BundleError, BundleReader};
use crate::chunking::tests::noise;
use crate::trust::tests::{keys, role};

fn read_all(bytes: &[u8], root: &TrustRoot) -> Result<Vec<u8>, BundleError> {
    let mut r = BundleReader::open(bytes)?;
    r.verify_release(root)?;
    let mut out = Vec::new();
    while let Some(c) = r.next_chunk()? {
        out.extend_from_slice(&c.raw);
    }
    Ok(out)
}

fn sample() -> (World, Vec<u8>, Manifest, Vec<u8>) {
    let w = world();
    // Half compressible, half noise, so both encodings appear.
    let mut payload = vec![0u8; 400_000];
    payload.extend(noise(600_000, 11));
    let (m, bytes) = bundle_bytes(&w, &payload);
    (w, payload, m, bytes)
}

#[test]
fn an_intact_bundle_extracts_byte_identical() {
    let (w, payload, m, bytes) = sample();
    assert!(m.chunks.len() > 3);
    assert_eq!(read_all(&bytes, &w.root).unwrap(), payload);
}

#[test]
fn a_flipped_payload_byte_names_the_chunk_and_offsets() {
    let (w, _, _, bytes) = sample();
    let mut bad = bytes.clone();
    let at = bad.len() - 1000;
    bad[at] ^= 0x01;
    let err = read_all(&bad, &w.root).unwrap_err();
    let BundleError::ChunkCorrupt {
        bundle_offset,
        payload_offset,
        ..
    } = &err
    else {
        panic!("{err}")
    };
    assert!(*bundle_offset <= at as u64 && *payload_offset > 0, "{err}");
    assert!(err.to_string().contains("tampered"));
}

#[test]
fn a_flipped_manifest_byte_is_refused() {
    let (w, _, m, bytes) = sample();
    let enc = m.encode().unwrap();
    // Find the manifest inside the header and flip a byte of a chunk id.
    let pos = bytes
        .windows(enc.len())
        .position(|win| win == enc.as_slice())
        .unwrap();
    let mut bad = bytes.clone();
    bad[pos + enc.len() - 40] ^= 0x01;
    let err = read_all(&bad, &w.root).unwrap_err();
    assert!(
        matches!(
            err,
            BundleError::ReleaseMismatch(_) | BundleError::Manifest(_) | BundleError::Header(_)
        ),
        "{err}"
    );
}

#[test]
fn a_flipped_signature_byte_is_refused() {
    let (w, _, _, bytes) = sample();
    let mut r = BundleReader::open(bytes.as_slice()).unwrap();
    let sig = r.signed_release().signatures()[0].sig.clone();
    drop(r.next_chunk());
    let pos = bytes
        .windows(sig.len())
        .position(|win| win == sig.as_slice())
        .unwrap();
    let mut bad = bytes.clone();
    bad[pos + 3] ^= 0x01;
    let err = read_all(&bad, &w.root).unwrap_err();
    assert!(
        matches!(
            err,
            BundleError::Release(crate::VerifyError::BadSignature { .. })
        ),
        "{err}"
    );
}

#[test]
fn a_truncated_bundle_says_which_chunk_is_missing() {
    let (w, _, m, bytes) = sample();
    for cut in [bytes.len() - 1, bytes.len() - 200_000, 30] {
        let err = read_all(&bytes[..cut], &w.root).unwrap_err();
        match err {
            BundleError::Truncated { index, total, .. } => {
                assert!(index < total && total == m.chunks.len())
            }
            BundleError::Header(_) => assert_eq!(cut, 30),
            other => panic!("cut {cut}: {other}"),
        }
    }
}

#[test]
fn trailing_bytes_are_refused() {
    let (w, _, _, mut bytes) = sample();
    bytes.push(0);
    assert!(matches!(
        read_all(&bytes, &w.root),
        Err(BundleError::TrailingData { .. })
    ));
}

#[test]
fn a_bundle_checked_against_another_trust_root_is_refused() {
    let (mut w, _, _, bytes) = sample();
    w.root.release = role(&keys(2, 200), 1);
    let err = read_all(&bytes, &w.root).unwrap_err();
    assert!(
        matches!(
            err,
            BundleError::Release(crate::VerifyError::UnknownKey { .. })
        ),
        "{err}"
    );
}

#[test]
fn a_file_that_is_not_a_bundle_has_bad_magic() {
    let w = world();
    assert!(matches!(
        read_all(b"hello world, not a bundle", &w.root),
        Err(BundleError::BadMagic)
    ));
    assert!(matches!(read_all(b"", &w.root), Err(BundleError::BadMagic)));
}
