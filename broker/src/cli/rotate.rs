//! `meshota keys rotate`: the next trust root, signed by the current root
//! keys (and the new ones, when the root keys themselves change), and the
//! chain of every root since the first, which the control plane publishes
//! so devices rotate over the air.
//!
//! Nothing is replaced until the new root has been checked as a device
//! would check it ([`TrustRoot::rotate`]). Replaced secret keys are kept
//! beside the new ones as `<name>.v<old version>` (mode 0600): destroy them
//! once the fleet reports the new trust version, and at once if the reason
//! for rotating is that they leaked.

use std::path::{Path, PathBuf};

use meshota_protocol::codec;
use meshota_protocol::{Role, RoleKeys, SecretKey, Signed, TrustChain, TrustRoot};
use serde::Serialize;

use super::atomic::AtomicFile;
use super::keys::{
    io_err, key_file_name, load_role_keys, write_secret, KeysError, WrittenKey, TRUST_FILE,
};
use super::DAY_SECS;

/// File name of the trust chain inside a key directory.
pub const CHAIN_FILE: &str = "trust-chain.cbor";

/// What `meshota keys rotate` should do.
#[derive(Debug, Clone)]
pub struct RotateOptions {
    /// The key directory `keys init` made.
    pub dir: PathBuf,
    /// Roles whose keys are replaced by fresh ones (same count and
    /// threshold). Empty: only the version and expiry move, which is how
    /// a root is renewed before it expires.
    pub replace: Vec<Role>,
    /// Days until the new root expires.
    pub expires_days: u64,
    /// The current time, seconds since the Unix epoch.
    pub now: u64,
}

/// What `keys rotate` did.
#[derive(Debug, Clone, Serialize)]
pub struct RotateReport {
    /// The root version before.
    pub from_version: u64,
    /// The new root's version.
    pub to_version: u64,
    /// When the new root expires (seconds since the epoch).
    pub expires_at: u64,
    /// Fresh keys written.
    pub keys: Vec<WrittenKey>,
    /// Where each replaced key was moved.
    pub retired: Vec<PathBuf>,
    /// The new trust root file (ship it in new images).
    pub trust_file: PathBuf,
    /// The chain the control plane publishes (`--trust-chain`).
    pub chain_file: PathBuf,
    /// Roots in the chain.
    pub chain_len: usize,
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), KeysError> {
    let mut f = AtomicFile::create(path).map_err(io_err(path))?;
    std::io::Write::write_all(&mut f, bytes).map_err(io_err(path))?;
    f.commit().map_err(io_err(path))
}

/// Reads the chain file, or starts one from the current root.
fn current_chain(dir: &Path, current: &Signed<TrustRoot>) -> Result<TrustChain, KeysError> {
    let path = dir.join(CHAIN_FILE);
    let chain = match std::fs::read(&path) {
        Ok(bytes) => {
            codec::decode::<TrustChain>(&bytes).map_err(|source| KeysError::TrustDecode {
                path: path.clone(),
                source,
            })?
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => TrustChain {
            roots: vec![current.clone()],
        },
        Err(e) => return Err(io_err(&path)(e)),
    };
    if chain.roots.last() != Some(current) {
        return Err(KeysError::ChainMismatch { path });
    }
    Ok(chain)
}

/// Builds, checks and writes the next trust root and chain.
///
/// # Errors
/// [`KeysError`] naming the file at fault; nothing is written unless the
/// new root verifies as a rotation of the current one.
pub fn rotate(opts: &RotateOptions) -> Result<RotateReport, KeysError> {
    let dir = &opts.dir;
    let trust_path = dir.join(TRUST_FILE);
    let bytes = std::fs::read(&trust_path).map_err(io_err(&trust_path))?;
    let current_signed: Signed<TrustRoot> =
        codec::decode(&bytes).map_err(|source| KeysError::TrustDecode {
            path: trust_path.clone(),
            source,
        })?;
    // An expired root can still be rotated away from: devices check only
    // the final root's expiry.
    let current = TrustRoot::from_self_signed_any_time(&current_signed).map_err(|source| {
        KeysError::TrustRejected {
            path: trust_path.clone(),
            source,
        }
    })?;
    let mut chain = current_chain(dir, &current_signed)?;
    let old_root_keys = load_role_keys(dir, Role::Root)?;

    let mut next = current.clone();
    next.version = current.version.saturating_add(1);
    next.expires_at = opts
        .now
        .saturating_add(opts.expires_days.saturating_mul(DAY_SECS));
    let mut fresh: Vec<(Role, u32, SecretKey)> = Vec::new();
    for &role in &opts.replace {
        let old = current.role(role);
        let mut keys = Vec::new();
        for n in 1..=old.keys.len() as u32 {
            let key = SecretKey::generate().map_err(KeysError::Random)?;
            keys.push(key.public());
            fresh.push((role, n, key));
        }
        let replaced = RoleKeys {
            keys,
            threshold: old.threshold,
        };
        match role {
            Role::Root => next.root = replaced,
            Role::Release => next.release = replaced,
            Role::Rollout => next.rollout = replaced,
        }
    }
    let mut signers: Vec<&SecretKey> = old_root_keys.iter().collect();
    signers.extend(
        fresh
            .iter()
            .filter(|(r, _, _)| *r == Role::Root)
            .map(|(_, _, k)| k),
    );
    let signed = Signed::sign(&next, &signers)?;
    // Checked exactly as a device will check it before anything is written.
    current
        .rotate(&signed)
        .and_then(|r| r.check_expiry(opts.now).map(|()| r))
        .map_err(|source| KeysError::TrustRejected {
            path: trust_path.clone(),
            source,
        })?;
    chain.roots.push(signed.clone());
    let chain_bytes = codec::encode(&chain)?;
    let trust_bytes = codec::encode(&signed)?;

    let mut retired = Vec::new();
    let mut written = Vec::new();
    for (role, n, key) in &fresh {
        let path = dir.join(key_file_name(*role, *n));
        if path.exists() {
            let old = dir.join(format!("{}.v{}", key_file_name(*role, *n), current.version));
            std::fs::rename(&path, &old).map_err(io_err(&path))?;
            retired.push(old);
        }
        write_secret(&path, &key.to_file(&role.to_string()))?;
        written.push(WrittenKey {
            role: *role,
            id: key.public().id(),
            path,
        });
    }
    let archived = dir.join(format!("trust-v{}.cbor", current.version));
    write_atomic(&archived, &bytes)?;
    let chain_file = dir.join(CHAIN_FILE);
    write_atomic(&chain_file, &chain_bytes)?;
    write_atomic(&trust_path, &trust_bytes)?;
    Ok(RotateReport {
        from_version: current.version,
        to_version: next.version,
        expires_at: next.expires_at,
        keys: written,
        retired,
        trust_file: trust_path,
        chain_file,
        chain_len: chain.roots.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::keys::{init, load_trust, InitOptions, RoleSpec};

    const NOW: u64 = 1_800_000_000;

    fn fresh_dir() -> tempfile::TempDir {
        let tmp = tempfile::tempdir().unwrap();
        init(&InitOptions {
            dir: tmp.path().to_path_buf(),
            root: RoleSpec {
                keys: 2,
                threshold: 2,
            },
            release: RoleSpec::default(),
            rollout: RoleSpec::default(),
            expires_days: 30,
            force: false,
            now: NOW,
        })
        .unwrap();
        tmp
    }

    fn opts(dir: &Path, replace: Vec<Role>, now: u64) -> RotateOptions {
        RotateOptions {
            dir: dir.to_path_buf(),
            replace,
            expires_days: 365,
            now,
        }
    }

    #[test]
    fn rotating_the_rollout_key_gives_a_chain_a_device_with_the_first_root_accepts() {
        let tmp = fresh_dir();
        let first = load_trust(&tmp.path().join(TRUST_FILE), NOW).unwrap();
        let old_rollout = load_role_keys(tmp.path(), Role::Rollout).unwrap();
        let r = rotate(&opts(tmp.path(), vec![Role::Rollout], NOW)).unwrap();
        assert_eq!((r.from_version, r.to_version, r.chain_len), (1, 2, 2));
        let new_rollout = load_role_keys(tmp.path(), Role::Rollout).unwrap();
        assert_ne!(old_rollout[0].public(), new_rollout[0].public());
        assert!(r.retired[0].exists(), "the replaced key is kept aside");

        let chain: TrustChain = codec::decode(&std::fs::read(&r.chain_file).unwrap()).unwrap();
        let adopted = chain.advance(&first).unwrap().unwrap();
        assert_eq!(adopted.rollout.keys, vec![new_rollout[0].public()]);
        assert_eq!(adopted.root, first.root, "root keys unchanged");
        assert_eq!(load_trust(&r.trust_file, NOW).unwrap(), adopted);
    }

    #[test]
    fn rotating_the_root_keys_twice_still_chains_from_the_first_root() {
        let tmp = fresh_dir();
        let first = load_trust(&tmp.path().join(TRUST_FILE), NOW).unwrap();
        rotate(&opts(tmp.path(), vec![Role::Root], NOW)).unwrap();
        // The first root has expired by the second rotation: still fine.
        let later = NOW + 60 * DAY_SECS;
        let r = rotate(&opts(tmp.path(), vec![Role::Root, Role::Release], later)).unwrap();
        assert_eq!((r.to_version, r.chain_len), (3, 3));
        let chain: TrustChain = codec::decode(&std::fs::read(&r.chain_file).unwrap()).unwrap();
        let adopted = chain.advance(&first).unwrap().unwrap();
        assert_eq!(adopted.version, 3);
        assert_ne!(adopted.root, first.root);
        adopted.check_expiry(later).unwrap();
    }

    #[test]
    fn a_chain_that_does_not_end_at_the_trust_file_is_refused_and_nothing_is_written() {
        let tmp = fresh_dir();
        rotate(&opts(tmp.path(), vec![], NOW)).unwrap();
        // Someone restores an old trust.cbor beside the newer chain.
        std::fs::copy(
            tmp.path().join("trust-v1.cbor"),
            tmp.path().join(TRUST_FILE),
        )
        .unwrap();
        let before = std::fs::read(tmp.path().join(CHAIN_FILE)).unwrap();
        let err = rotate(&opts(tmp.path(), vec![Role::Rollout], NOW)).unwrap_err();
        assert!(matches!(err, KeysError::ChainMismatch { .. }), "{err}");
        assert_eq!(std::fs::read(tmp.path().join(CHAIN_FILE)).unwrap(), before);
    }
}
