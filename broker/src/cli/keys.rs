//! Key directories and trust files: `meshota keys init`, and loading the
//! keys and trust roots other commands sign and verify with.
//!
//! A key directory holds one file per secret key, named after its role:
//! `root.key`, then `root-2.key`, `root-3.key` … for extra keys, and the
//! same for `release` and `rollout`. Beside them, `trust.cbor` is the
//! self-signed [`TrustRoot`] that devices ship with.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use meshota_protocol::codec::{self, CodecError};
use meshota_protocol::ids::KeyId;
use meshota_protocol::trust::KeyFileError;
use meshota_protocol::{Role, RoleKeys, SecretKey, Signed, TrustRoot, VerifyError};
use serde::Serialize;

use super::{Hint, DAY_SECS};

/// File name of the trust root inside a key directory.
pub const TRUST_FILE: &str = "trust.cbor";

/// Every role, in the order files are written and listed.
pub const ROLES: [Role; 3] = [Role::Root, Role::Release, Role::Rollout];

/// Why keys or a trust file could not be created or loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    /// A key file would be overwritten.
    #[error("{path} already exists; refusing to overwrite a secret key")]
    Exists {
        /// The existing file.
        path: PathBuf,
    },
    /// A threshold cannot be met by the role's keys.
    #[error("{role} threshold {threshold} is impossible with {keys} {role} key(s): need 1 <= threshold <= keys")]
    BadThreshold {
        /// The role.
        role: Role,
        /// The threshold asked for.
        threshold: u32,
        /// How many keys the role gets.
        keys: u32,
    },
    /// A file could not be read, written or listed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A key file's text is not a meshota key.
    #[error("{path}: {source}")]
    KeyFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: KeyFileError,
    },
    /// A key file is labelled with another role than its name says.
    #[error("{path} holds a {found:?} key, but its name says {expected}")]
    WrongLabel {
        /// The file.
        path: PathBuf,
        /// The role its name implies.
        expected: Role,
        /// The label inside.
        found: String,
    },
    /// No key of the role is in the directory.
    #[error("no {role} key in {dir} (looked for {role}.key and {role}-N.key)")]
    NoKeys {
        /// The role.
        role: Role,
        /// The directory searched.
        dir: PathBuf,
    },
    /// The trust file is not a signed trust root.
    #[error("trust file {path} is unreadable: {source}")]
    TrustDecode {
        /// The file.
        path: PathBuf,
        /// The decode error.
        #[source]
        source: CodecError,
    },
    /// The trust file decodes but does not check out.
    #[error("trust file {path} is not acceptable: {source}")]
    TrustRejected {
        /// The file.
        path: PathBuf,
        /// Why it was refused.
        #[source]
        source: VerifyError,
    },
    /// The chain file's newest root is not the current trust file.
    #[error("{path} does not end at the current trust.cbor")]
    ChainMismatch {
        /// The chain file.
        path: PathBuf,
    },
    /// The new trust root could not be signed or encoded.
    #[error("cannot encode the trust root: {0}")]
    Encode(#[from] CodecError),
    /// The OS random source failed.
    #[error("cannot generate a key: {0}")]
    Random(KeyFileError),
}

impl Hint for KeysError {
    fn hint(&self) -> Option<String> {
        match self {
            Self::Exists { .. } => Some(
                "pass --force to replace the keys (devices trusting the old trust.cbor will refuse bundles signed by the new keys), or choose another --dir".into(),
            ),
            Self::BadThreshold { role, .. } => Some(format!(
                "raise --{role}-keys or lower --{role}-threshold"
            )),
            Self::NoKeys { dir, .. } => Some(format!(
                "pass the directory written by `meshota keys init` as --keys, or run `meshota keys init --dir {}`",
                dir.display()
            )),
            Self::WrongLabel { .. } | Self::KeyFile { .. } => Some(
                "restore the key file from your backup, or remove it if it does not belong in this directory".into(),
            ),
            Self::TrustDecode { .. } => Some(
                "pass the trust.cbor written by `meshota keys init`".into(),
            ),
            Self::TrustRejected { source: VerifyError::Expired { .. }, .. } => Some(
                "the trust root has expired: create a new one with `meshota keys init --force --expires-days N`".into(),
            ),
            Self::ChainMismatch { .. } => Some(
                "trust.cbor and trust-chain.cbor are from different rotations: restore the pair from the same backup (trust-vN.cbor files are the older roots)".into(),
            ),
            Self::TrustRejected { .. } => Some(
                "the trust file was altered or is not self-signed by its root keys: use the original trust.cbor".into(),
            ),
            _ => None,
        }
    }
}

/// How many keys a role gets and how many must sign.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoleSpec {
    /// Number of keys to generate (at least 1).
    pub keys: u32,
    /// Distinct signatures required.
    pub threshold: u32,
}

impl Default for RoleSpec {
    fn default() -> Self {
        Self {
            keys: 1,
            threshold: 1,
        }
    }
}

/// What `meshota keys init` should create.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// Directory to write into (created if missing).
    pub dir: PathBuf,
    /// `root` role keys.
    pub root: RoleSpec,
    /// `release` role keys.
    pub release: RoleSpec,
    /// `rollout` role keys.
    pub rollout: RoleSpec,
    /// Days until the trust root expires.
    pub expires_days: u64,
    /// Replace existing key files.
    pub force: bool,
    /// The current time, seconds since the Unix epoch.
    pub now: u64,
}

/// One key written by `keys init`.
#[derive(Debug, Clone, Serialize)]
pub struct WrittenKey {
    /// The key's role.
    pub role: Role,
    /// Its id (BLAKE3 of the public key).
    pub id: KeyId,
    /// Where the secret key was written.
    pub path: PathBuf,
}

/// What `keys init` did.
#[derive(Debug, Clone, Serialize)]
pub struct InitReport {
    /// Every key written, by role.
    pub keys: Vec<WrittenKey>,
    /// The trust root file.
    pub trust_file: PathBuf,
    /// When the trust root expires (seconds since the epoch).
    pub expires_at: u64,
}

/// The file name of the `n`th key (1-based) of a role.
pub fn key_file_name(role: Role, n: u32) -> String {
    if n <= 1 {
        format!("{role}.key")
    } else {
        format!("{role}-{n}.key")
    }
}

/// Which key of `role` a file name is, if it is one: `Some(1)` for
/// `release.key`, `Some(3)` for `release-3.key`.
fn key_index(role: Role, file_name: &str) -> Option<u32> {
    let stem = file_name.strip_suffix(".key")?;
    let rest = stem.strip_prefix(&role.to_string())?;
    if rest.is_empty() {
        return Some(1);
    }
    let n: u32 = rest.strip_prefix('-')?.parse().ok()?;
    (n >= 2).then_some(n)
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> KeysError + '_ {
    move |source| KeysError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Existing key files of `role` in `dir`, sorted by index.
fn key_files(dir: &Path, role: Role) -> Result<Vec<(u32, PathBuf)>, KeysError> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        if let Some(n) = entry.file_name().to_str().and_then(|f| key_index(role, f)) {
            found.push((n, entry.path()));
        }
    }
    found.sort();
    Ok(found)
}

/// Generates the keys and the self-signed trust root of a new fleet.
///
/// Checks every target first, so it either writes all files or (when a
/// key exists and `force` is off) none.
///
/// # Errors
/// [`KeysError`] naming the file or flag at fault.
pub fn init(opts: &InitOptions) -> Result<InitReport, KeysError> {
    let specs = [
        (Role::Root, opts.root),
        (Role::Release, opts.release),
        (Role::Rollout, opts.rollout),
    ];
    for (role, spec) in specs {
        if spec.threshold == 0 || spec.threshold > spec.keys {
            return Err(KeysError::BadThreshold {
                role,
                threshold: spec.threshold,
                keys: spec.keys,
            });
        }
    }
    std::fs::create_dir_all(&opts.dir).map_err(io_err(&opts.dir))?;
    let mut stale = Vec::new();
    for (role, _) in specs {
        for (_, path) in key_files(&opts.dir, role)? {
            if !opts.force {
                return Err(KeysError::Exists { path });
            }
            stale.push(path);
        }
    }
    // Old extra keys (say release-3.key from an earlier 3-key init) would
    // otherwise be picked up by `bundle create` and sign with a key the
    // new trust root does not list.
    for path in stale {
        std::fs::remove_file(&path).map_err(io_err(&path))?;
    }

    let mut written = Vec::new();
    let mut secrets: Vec<(Role, SecretKey)> = Vec::new();
    for (role, spec) in specs {
        for n in 1..=spec.keys {
            let key = SecretKey::generate().map_err(KeysError::Random)?;
            let path = opts.dir.join(key_file_name(role, n));
            write_secret(&path, &key.to_file(&role.to_string()))?;
            written.push(WrittenKey {
                role,
                id: key.public().id(),
                path,
            });
            secrets.push((role, key));
        }
    }
    let role_keys = |role: Role, spec: RoleSpec| RoleKeys {
        keys: secrets
            .iter()
            .filter(|(r, _)| *r == role)
            .map(|(_, k)| k.public())
            .collect(),
        threshold: spec.threshold,
    };
    let expires_at = opts
        .now
        .saturating_add(opts.expires_days.saturating_mul(DAY_SECS));
    let root = TrustRoot {
        version: 1,
        expires_at,
        root: role_keys(Role::Root, opts.root),
        release: role_keys(Role::Release, opts.release),
        rollout: role_keys(Role::Rollout, opts.rollout),
    };
    let signers: Vec<&SecretKey> = secrets
        .iter()
        .filter(|(r, _)| *r == Role::Root)
        .map(|(_, k)| k)
        .collect();
    let signed = Signed::sign(&root, &signers)?;
    let bytes = codec::encode(&signed)?;
    let trust_file = opts.dir.join(TRUST_FILE);
    std::fs::write(&trust_file, bytes).map_err(io_err(&trust_file))?;
    Ok(InitReport {
        keys: written,
        trust_file,
        expires_at,
    })
}

/// Writes a secret key readable by its owner only. The mode is set on
/// open (no window where the key is world-readable) and again afterwards,
/// since `--force` may reuse a file created with a wider mode.
pub(crate) fn write_secret(path: &Path, text: &str) -> Result<(), KeysError> {
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err(path))?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(io_err(path))?;
    f.write_all(text.as_bytes()).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
}

/// Loads every key of `role` in `dir` (`role.key`, `role-2.key` …).
///
/// # Errors
/// [`KeysError::NoKeys`] when there is none, or the first unreadable or
/// mislabelled file.
pub fn load_role_keys(dir: &Path, role: Role) -> Result<Vec<SecretKey>, KeysError> {
    let files = key_files(dir, role)?;
    if files.is_empty() {
        return Err(KeysError::NoKeys {
            role,
            dir: dir.to_path_buf(),
        });
    }
    files
        .into_iter()
        .map(|(_, path)| {
            let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
            let (label, key) =
                SecretKey::from_file(&text).map_err(|source| KeysError::KeyFile {
                    path: path.clone(),
                    source,
                })?;
            if label != role.to_string() {
                return Err(KeysError::WrongLabel {
                    path,
                    expected: role,
                    found: label,
                });
            }
            Ok(key)
        })
        .collect()
}

/// Reads a `trust.cbor` and accepts it as an initial, self-signed root.
///
/// # Errors
/// [`KeysError::Io`], [`KeysError::TrustDecode`] or
/// [`KeysError::TrustRejected`] (bad signature, expired …).
pub fn load_trust(path: &Path, now: u64) -> Result<TrustRoot, KeysError> {
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    let signed: Signed<TrustRoot> =
        codec::decode(&bytes).map_err(|source| KeysError::TrustDecode {
            path: path.to_path_buf(),
            source,
        })?;
    TrustRoot::from_self_signed(&signed, now).map_err(|source| KeysError::TrustRejected {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(dir: &Path) -> InitOptions {
        InitOptions {
            dir: dir.to_path_buf(),
            root: RoleSpec::default(),
            release: RoleSpec {
                keys: 3,
                threshold: 2,
            },
            rollout: RoleSpec::default(),
            expires_days: 1,
            force: false,
            now: 1_000,
        }
    }

    #[test]
    fn key_file_names_map_back_to_their_index() {
        assert_eq!(key_index(Role::Release, "release.key"), Some(1));
        assert_eq!(key_index(Role::Release, "release-3.key"), Some(3));
        assert_eq!(key_index(Role::Release, "release-1.key"), None);
        assert_eq!(key_index(Role::Release, "release-x.key"), None);
        assert_eq!(key_index(Role::Release, "rollout.key"), None);
        assert_eq!(key_file_name(Role::Root, 2), "root-2.key");
    }

    #[test]
    fn init_writes_a_trust_root_that_lists_every_key_it_wrote() {
        let dir = tempfile::tempdir().unwrap();
        let report = init(&opts(dir.path())).unwrap();
        assert_eq!(report.keys.len(), 5);
        let root = load_trust(&report.trust_file, 1_001).unwrap();
        assert_eq!(root.release.threshold, 2);
        let release = load_role_keys(dir.path(), Role::Release).unwrap();
        let ids: Vec<_> = release.iter().map(|k| k.public()).collect();
        assert_eq!(ids, root.release.keys);
        assert!(load_trust(&report.trust_file, 1_000 + DAY_SECS).is_err());
    }

    #[test]
    fn force_removes_extra_keys_the_new_root_does_not_list() {
        let dir = tempfile::tempdir().unwrap();
        init(&opts(dir.path())).unwrap();
        assert!(matches!(
            init(&opts(dir.path())),
            Err(KeysError::Exists { .. })
        ));
        let mut again = opts(dir.path());
        again.force = true;
        again.release = RoleSpec::default();
        init(&again).unwrap();
        assert_eq!(load_role_keys(dir.path(), Role::Release).unwrap().len(), 1);
    }

    #[test]
    fn an_unreachable_threshold_is_refused_before_writing_anything() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = opts(dir.path());
        o.rollout.threshold = 2;
        assert!(matches!(init(&o), Err(KeysError::BadThreshold { .. })));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
