//! End-to-end tests of the `meshota` binary: keys, then bundles, then
//! every way a bundle can be damaged.

// clippy.toml allows these inside #[test] functions only; the helpers
// here are test code too, and a failing helper should fail the test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_meshota");

fn meshota(dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run meshota")
}

fn ok(dir: &Path, args: &[&str]) -> String {
    let out = meshota(dir, args);
    assert!(
        out.status.success(),
        "meshota {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs a command that must fail and returns its stderr.
fn fails(dir: &Path, args: &[&str]) -> String {
    let out = meshota(dir, args);
    assert!(
        !out.status.success(),
        "meshota {args:?} unexpectedly succeeded"
    );
    String::from_utf8(out.stderr).unwrap()
}

/// About 3 MiB: incompressible noise, zeros, and repetitive text, so the
/// bundle holds both raw and zstd chunks.
fn payload() -> Vec<u8> {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut out: Vec<u8> = (0..2 * 1024 * 1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    out.extend(std::iter::repeat_n(0u8, 512 * 1024));
    while out.len() < 3 * 1024 * 1024 + 12_345 {
        out.extend_from_slice(b"meshota line of fairly repetitive log text 0123456789\n");
    }
    out
}

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    /// Keys in `keys/`, payload `payload.bin`, bundle `b.mota`.
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        ok(dir.path(), &["keys", "init", "--dir", "keys"]);
        std::fs::write(dir.path().join("payload.bin"), payload()).unwrap();
        ok(
            dir.path(),
            &[
                "bundle",
                "create",
                "payload.bin",
                "--name",
                "rootfs",
                "--version",
                "1.4.0",
                "--compatible",
                "rpi4",
                "--keys",
                "keys",
                "--out",
                "b.mota",
                "--sequence",
                "42",
                "--meta",
                "git=abc123",
            ],
        );
        Self { dir }
    }
    fn path(&self) -> &Path {
        self.dir.path()
    }
    fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    fn bundle(&self) -> Vec<u8> {
        std::fs::read(self.file("b.mota")).unwrap()
    }
    fn inspect(&self) -> serde_json::Value {
        serde_json::from_str(&ok(self.path(), &["bundle", "inspect", "b.mota", "--json"])).unwrap()
    }
    /// Writes `bytes` as `bad.mota` and returns `verify`'s stderr.
    fn verify_fails(&self, bytes: &[u8]) -> String {
        std::fs::write(self.file("bad.mota"), bytes).unwrap();
        let out = meshota(
            self.path(),
            &["bundle", "verify", "bad.mota", "--trust", "keys/trust.cbor"],
        );
        assert_eq!(
            out.status.code(),
            Some(3),
            "verify must report a bad bundle"
        );
        String::from_utf8(out.stderr).unwrap()
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("needle in bundle")
}

fn hex_bytes(s: &serde_json::Value) -> Vec<u8> {
    hex::decode(s.as_str().unwrap()).unwrap()
}

#[test]
fn a_bundle_round_trips_through_create_inspect_verify_and_extract() {
    let f = Fixture::new();
    let info = f.inspect();
    assert_eq!(info["name"], "rootfs");
    assert_eq!(info["version"], "1.4.0");
    assert_eq!(info["compatible"], "rpi4");
    assert_eq!(info["channel"], "stable");
    assert_eq!(info["kind"], "image");
    assert_eq!(info["sequence"], 42);
    assert_eq!(info["meta"]["git"], "abc123");
    assert_eq!(info["payload_size"], payload().len() as u64);
    assert_eq!(info["chunker"]["avg"], 65536);
    assert_eq!(info["release_id"].as_str().unwrap().len(), 64);
    assert_eq!(info["manifest_id"].as_str().unwrap().len(), 64);
    assert!(info["expires_at"].as_u64().unwrap() > info["created_at"].as_u64().unwrap());
    let chunks = info["chunks"].as_array().unwrap();
    assert!(chunks.len() > 10, "{} chunks", chunks.len());
    let total: u64 = chunks.iter().map(|c| c["len"].as_u64().unwrap()).sum();
    assert_eq!(total, payload().len() as u64);
    assert_eq!(chunks[0]["id"].as_str().unwrap().len(), 64);

    let verified = ok(
        f.path(),
        &["bundle", "verify", "b.mota", "--trust", "keys/trust.cbor"],
    );
    assert!(verified.contains(info["release_id"].as_str().unwrap()));

    ok(
        f.path(),
        &[
            "bundle",
            "extract",
            "b.mota",
            "--out",
            "out.bin",
            "--trust",
            "keys/trust.cbor",
        ],
    );
    assert!(std::fs::read(f.file("out.bin")).unwrap() == payload());
    assert!(!f.file("out.bin.tmp").exists());
    // Zeros and text compress: the bundle is smaller than the payload.
    assert!((f.bundle().len() as u64) < payload().len() as u64);
}

#[test]
fn create_prints_the_release_and_manifest_ids_as_json() {
    let f = Fixture::new();
    let out = ok(
        f.path(),
        &[
            "bundle",
            "create",
            "payload.bin",
            "--name",
            "rootfs",
            "--version",
            "1.4.1",
            "--compatible",
            "rpi4",
            "--keys",
            "keys",
            "--out",
            "c.mota",
            "--json",
        ],
    );
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    let info: serde_json::Value =
        serde_json::from_str(&ok(f.path(), &["bundle", "inspect", "c.mota", "--json"])).unwrap();
    assert_eq!(report["release_id"], info["release_id"]);
    assert_eq!(report["manifest_id"], info["manifest_id"]);
    // The default sequence is the current time, so later builds sort later.
    assert!(report["sequence"].as_u64().unwrap() > 1_700_000_000);
}

#[test]
fn verify_names_the_offset_of_a_tampered_chunk() {
    let f = Fixture::new();
    let mut b = f.bundle();
    let at = b.len() - 5_000;
    b[at] ^= 0x01;
    let err = f.verify_fails(&b);
    assert!(err.contains("tampered or corrupt"), "{err}");
    assert!(err.contains("payload offset"), "{err}");
    assert!(err.contains("bundle offset"), "{err}");
    assert!(err.contains("hint:"), "{err}");
}

#[test]
fn verify_refuses_a_bundle_whose_manifest_was_edited() {
    let f = Fixture::new();
    let info = f.inspect();
    let mut b = f.bundle();
    let id = hex_bytes(&info["chunks"][3]["id"]);
    let at = find(&b, &id);
    b[at] ^= 0x01;
    let err = f.verify_fails(&b);
    assert!(err.contains("another manifest id"), "{err}");
}

#[test]
fn verify_reports_a_bad_signature_when_a_signature_byte_flips() {
    let f = Fixture::new();
    let info = f.inspect();
    let mut b = f.bundle();
    let key = hex_bytes(&info["signed_by"][0]);
    let key_at = find(&b, &key);
    // The 64-byte signature follows the key id as CBOR bytes (0x58 0x40).
    let sig_at = key_at + find(&b[key_at..], &[0x58, 0x40]) + 2;
    b[sig_at + 10] ^= 0x80;
    let err = f.verify_fails(&b);
    assert!(err.contains("bad release signature"), "{err}");
    assert!(err.contains("altered after signing"), "{err}");
}

#[test]
fn verify_reports_truncation_with_the_byte_offset() {
    let f = Fixture::new();
    let b = f.bundle();
    let err = f.verify_fails(&b[..b.len() - 1_000]);
    assert!(err.contains("truncated at byte"), "{err}");
    let err = f.verify_fails(&b[..20]);
    assert!(err.contains("header"), "{err}");
}

#[test]
fn verify_reports_data_appended_after_the_last_chunk() {
    let f = Fixture::new();
    let mut b = f.bundle();
    let end = b.len();
    b.extend_from_slice(b"junk");
    let err = f.verify_fails(&b);
    assert!(
        err.contains(&format!("after the last chunk at bundle offset {end}")),
        "{err}"
    );
}

#[test]
fn verify_against_another_trust_root_names_the_unknown_key() {
    let f = Fixture::new();
    ok(f.path(), &["keys", "init", "--dir", "other"]);
    let out = meshota(
        f.path(),
        &["bundle", "verify", "b.mota", "--trust", "other/trust.cbor"],
    );
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("not a release key in the trust root"), "{err}");
    assert!(err.contains("hint:"), "{err}");
}

#[test]
fn a_file_that_is_not_a_bundle_is_named_as_such() {
    let f = Fixture::new();
    let err = f.verify_fails(b"hello, this is not a bundle at all");
    assert!(err.contains("not a meshota bundle"), "{err}");
}

#[test]
fn extract_of_a_tampered_bundle_leaves_no_output_file() {
    let f = Fixture::new();
    let mut b = f.bundle();
    let at = b.len() - 5_000;
    b[at] ^= 0x01;
    std::fs::write(f.file("bad.mota"), &b).unwrap();
    let err = fails(
        f.path(),
        &["bundle", "extract", "bad.mota", "--out", "out.bin"],
    );
    assert!(err.contains("tampered or corrupt"), "{err}");
    assert!(!f.file("out.bin").exists());
    assert!(!f.file("out.bin.tmp").exists());
}

#[test]
fn key_files_are_readable_by_their_owner_only() {
    let dir = tempfile::tempdir().unwrap();
    let out = ok(
        dir.path(),
        &[
            "keys",
            "init",
            "--dir",
            "k",
            "--root-keys",
            "3",
            "--root-threshold",
            "2",
        ],
    );
    for name in [
        "root.key",
        "root-2.key",
        "root-3.key",
        "release.key",
        "rollout.key",
    ] {
        let mode = std::fs::metadata(dir.path().join("k").join(name))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{name}");
    }
    assert!(out.contains("trust.cbor"), "{out}");
    assert!(!dir.path().join("k/root-4.key").exists());
}

#[test]
fn keys_init_refuses_to_overwrite_keys_without_force() {
    let dir = tempfile::tempdir().unwrap();
    ok(dir.path(), &["keys", "init", "--dir", "k"]);
    let before = std::fs::read(dir.path().join("k/release.key")).unwrap();
    let err = fails(dir.path(), &["keys", "init", "--dir", "k"]);
    assert!(
        err.contains("already exists") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(dir.path().join("k/release.key")).unwrap(),
        before
    );
    ok(dir.path(), &["keys", "init", "--dir", "k", "--force"]);
    assert_ne!(
        std::fs::read(dir.path().join("k/release.key")).unwrap(),
        before
    );
}

#[test]
fn keys_init_refuses_an_impossible_threshold() {
    let dir = tempfile::tempdir().unwrap();
    let err = fails(
        dir.path(),
        &[
            "keys",
            "init",
            "--dir",
            "k",
            "--release-keys",
            "2",
            "--release-threshold",
            "3",
        ],
    );
    assert!(err.contains("release threshold 3"), "{err}");
}

#[test]
fn a_two_of_three_release_signs_with_every_key_and_fails_early_below_threshold() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(
        d,
        &[
            "keys",
            "init",
            "--dir",
            "k",
            "--release-keys",
            "3",
            "--release-threshold",
            "2",
        ],
    );
    std::fs::write(d.join("p.bin"), b"small payload").unwrap();
    let create = |out: &str| {
        meshota(
            d,
            &[
                "bundle",
                "create",
                "p.bin",
                "--name",
                "app",
                "--version",
                "0.1.0",
                "--compatible",
                "x86",
                "--keys",
                "k",
                "--out",
                out,
                "--kind",
                "file",
            ],
        )
    };
    assert!(create("a.mota").status.success());
    let info: serde_json::Value =
        serde_json::from_str(&ok(d, &["bundle", "inspect", "a.mota", "--json"])).unwrap();
    assert_eq!(info["signed_by"].as_array().unwrap().len(), 3);
    assert_eq!(info["kind"], "file");
    ok(
        d,
        &["bundle", "verify", "a.mota", "--trust", "k/trust.cbor"],
    );

    std::fs::remove_file(d.join("k/release-2.key")).unwrap();
    std::fs::remove_file(d.join("k/release-3.key")).unwrap();
    let out = create("b.mota");
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("below threshold"), "{err}");
    assert!(!d.join("b.mota").exists());
}

#[test]
fn create_refuses_a_version_that_is_not_semver() {
    let f = Fixture::new();
    let err = fails(
        f.path(),
        &[
            "bundle",
            "create",
            "payload.bin",
            "--name",
            "rootfs",
            "--version",
            "1.4",
            "--compatible",
            "rpi4",
            "--keys",
            "keys",
            "--out",
            "v.mota",
        ],
    );
    assert!(err.contains("invalid --version \"1.4\""), "{err}");
    assert!(err.contains("hint:"), "{err}");
    assert!(!f.file("v.mota").exists());
}

#[test]
fn create_refuses_names_unsafe_in_topics_and_missing_keys() {
    let f = Fixture::new();
    let base = [
        "bundle",
        "create",
        "payload.bin",
        "--version",
        "1.0.0",
        "--out",
        "n.mota",
    ];
    let mut args = base.to_vec();
    args.extend([
        "--name",
        "root/fs",
        "--compatible",
        "rpi4",
        "--keys",
        "keys",
    ]);
    let err = fails(f.path(), &args);
    assert!(err.contains("invalid --name"), "{err}");
    let mut args = base.to_vec();
    args.extend([
        "--name",
        "rootfs",
        "--compatible",
        "rpi4",
        "--keys",
        "nokeys",
    ]);
    let err = fails(f.path(), &args);
    assert!(err.contains("nokeys"), "{err}");
}

#[test]
fn an_empty_payload_makes_a_valid_bundle() {
    let f = Fixture::new();
    std::fs::write(f.file("empty.bin"), b"").unwrap();
    ok(
        f.path(),
        &[
            "bundle",
            "create",
            "empty.bin",
            "--name",
            "e",
            "--version",
            "1.0.0",
            "--compatible",
            "rpi4",
            "--keys",
            "keys",
            "--out",
            "e.mota",
        ],
    );
    ok(
        f.path(),
        &["bundle", "verify", "e.mota", "--trust", "keys/trust.cbor"],
    );
    ok(f.path(), &["bundle", "extract", "e.mota", "--out", "e.out"]);
    assert_eq!(std::fs::read(f.file("e.out")).unwrap(), b"");
}
