//! Keys, signed documents and the trust root (TUF/Uptane roles).
//!
//! A signed document keeps the exact bytes that were signed. Verification
//! runs over those bytes and only then decodes them, so there is no
//! re-canonicalisation step an attacker could play with, and a document's
//! id is simply the BLAKE3 of its signed bytes.

use std::collections::BTreeSet;
use std::fmt;
use std::marker::PhantomData;

use ed25519_dalek::{Signer, Verifier};
use serde::{Deserialize, Serialize};

use crate::codec::{self, CodecError, Kind, Message};
use crate::ids::KeyId;
use crate::verify::{DocKind, VerifyError};

/// Signatures are over this prefix and the signed bytes, so a meshota
/// signature can never be replayed as a signature in another protocol.
const SIG_CONTEXT: &[u8] = b"meshota-sig-v1\0";

/// A role in the trust root.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Signs trust roots, including their own rotation. Offline.
    Root,
    /// Signs releases on the build machine. Offline.
    Release,
    /// Signs rollout gates and commands. Online, on the control plane.
    Rollout,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Root => "root",
            Role::Release => "release",
            Role::Rollout => "rollout",
        })
    }
}

/// An ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey([u8; 32]);

impl PublicKey {
    /// Wraps raw key bytes. The bytes are checked when used to verify.
    pub const fn from_bytes(b: [u8; 32]) -> Self {
        Self(b)
    }
    /// Raw key bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
    /// The key's id: BLAKE3 of its bytes.
    pub fn id(&self) -> KeyId {
        KeyId::digest(&self.0)
    }
    /// Verifies `sig` over `SIG_CONTEXT || msg`.
    pub fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        let Ok(vk) = ed25519_dalek::VerifyingKey::from_bytes(&self.0) else {
            return false;
        };
        let Ok(sig) = ed25519_dalek::Signature::from_slice(sig) else {
            return false;
        };
        let mut full = Vec::with_capacity(SIG_CONTEXT.len() + msg.len());
        full.extend_from_slice(SIG_CONTEXT);
        full.extend_from_slice(msg);
        vk.verify(&full, &sig).is_ok()
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.id().short())
    }
}

impl std::str::FromStr for PublicKey {
    type Err = crate::ids::IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| crate::ids::IdError::BadHex {
            kind: "PublicKey",
            got: s.chars().take(80).collect(),
        })?;
        Ok(Self(out))
    }
}

impl Serialize for PublicKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(self)
        } else {
            s.serialize_bytes(&self.0)
        }
    }
}

impl<'de> Deserialize<'de> for PublicKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let s = String::deserialize(d)?;
            s.parse().map_err(serde::de::Error::custom)
        } else {
            let b: serde_bytes::ByteBuf = Deserialize::deserialize(d)?;
            let arr: [u8; 32] = b
                .as_slice()
                .try_into()
                .map_err(|_| serde::de::Error::invalid_length(b.len(), &"32 bytes"))?;
            Ok(Self(arr))
        }
    }
}

/// An ed25519 secret key. Never serialised by serde; see [`Self::to_file`].
pub struct SecretKey(ed25519_dalek::SigningKey);

/// Why a secret key file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// The text is not `meshota-secret-key-v1 <role> <64 hex>`.
    #[error(
        "not a meshota secret key file (expected `meshota-secret-key-v1 <role> <64 hex chars>`)"
    )]
    Format,
    /// The OS random source failed.
    #[error("no randomness available: {0}")]
    Random(String),
}

impl SecretKey {
    /// A fresh key from the OS random source.
    ///
    /// # Errors
    /// [`KeyFileError::Random`] if the OS has no randomness to give.
    pub fn generate() -> Result<Self, KeyFileError> {
        let mut seed = [0u8; 32];
        getrandom::getrandom(&mut seed).map_err(|e| KeyFileError::Random(e.to_string()))?;
        Ok(Self::from_seed(seed))
    }
    /// A key from a 32-byte seed (tests, simulators, derived device keys).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self(ed25519_dalek::SigningKey::from_bytes(&seed))
    }
    /// The matching public key.
    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key().to_bytes())
    }
    /// Signs `SIG_CONTEXT || msg`.
    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        let mut full = Vec::with_capacity(SIG_CONTEXT.len() + msg.len());
        full.extend_from_slice(SIG_CONTEXT);
        full.extend_from_slice(msg);
        self.0.sign(&full).to_bytes()
    }
    /// The key file text for `label` (a role name or `device`).
    pub fn to_file(&self, label: &str) -> String {
        format!(
            "meshota-secret-key-v1 {label} {}\n",
            hex::encode(self.0.to_bytes())
        )
    }
    /// Parses key file text, returning the label and the key.
    ///
    /// # Errors
    /// [`KeyFileError::Format`].
    pub fn from_file(text: &str) -> Result<(String, Self), KeyFileError> {
        let mut parts = text.split_whitespace();
        let (Some("meshota-secret-key-v1"), Some(label), Some(hexkey), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(KeyFileError::Format);
        };
        let mut seed = [0u8; 32];
        hex::decode_to_slice(hexkey, &mut seed).map_err(|_| KeyFileError::Format)?;
        Ok((label.to_string(), Self::from_seed(seed)))
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey(public {})", self.public().id().short())
    }
}

/// One signature in a [`Signed`] document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeySignature {
    /// Which key signed.
    pub key: KeyId,
    /// The 64-byte ed25519 signature.
    #[serde(with = "serde_bytes")]
    pub sig: Vec<u8>,
}

/// A document of type `T` with the exact bytes that were signed.
#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
pub struct Signed<T> {
    #[serde(with = "serde_bytes")]
    body: Vec<u8>,
    signatures: Vec<KeySignature>,
    #[serde(skip)]
    _t: PhantomData<fn() -> T>,
}

impl<T> Clone for Signed<T> {
    fn clone(&self) -> Self {
        Self {
            body: self.body.clone(),
            signatures: self.signatures.clone(),
            _t: PhantomData,
        }
    }
}

impl<T> PartialEq for Signed<T> {
    fn eq(&self, other: &Self) -> bool {
        self.body == other.body && self.signatures == other.signatures
    }
}

impl<T> fmt::Debug for Signed<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signed")
            .field("body_len", &self.body.len())
            .field("signatures", &self.signatures.len())
            .finish()
    }
}

impl<T: Message> Message for Signed<T> {
    const KIND: Kind = Kind::Signed;
}

impl<T: Message> Signed<T> {
    /// Encodes `doc` and signs it with every key given.
    ///
    /// # Errors
    /// [`CodecError`] if the document is too large for its kind.
    pub fn sign(doc: &T, keys: &[&SecretKey]) -> Result<Self, CodecError> {
        let body = codec::encode(doc)?;
        let signatures = keys
            .iter()
            .map(|k| KeySignature {
                key: k.public().id(),
                sig: k.sign(&body).to_vec(),
            })
            .collect();
        Ok(Self {
            body,
            signatures,
            _t: PhantomData,
        })
    }

    /// The signed bytes.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// The signatures.
    pub fn signatures(&self) -> &[KeySignature] {
        &self.signatures
    }

    /// Adds a signature (for tests of tampering, and multi-party signing).
    pub fn push_signature(&mut self, sig: KeySignature) {
        self.signatures.push(sig);
    }

    /// Replaces the body while keeping the signatures (only tamper tests
    /// have a reason to do this).
    pub fn with_body(mut self, body: Vec<u8>) -> Self {
        self.body = body;
        self
    }

    /// BLAKE3 of the signed bytes: the document's id.
    pub fn digest(&self) -> [u8; 32] {
        *blake3::hash(&self.body).as_bytes()
    }

    /// Decodes the body without checking signatures (for display only).
    ///
    /// # Errors
    /// [`CodecError`].
    pub fn decode_unverified(&self) -> Result<T, CodecError> {
        codec::decode(&self.body)
    }

    /// Checks the signatures against a role's keys and threshold, then
    /// decodes the body.
    ///
    /// A known key with an invalid signature fails at once: that is
    /// evidence of tampering, not of a missing signer.
    ///
    /// # Errors
    /// [`VerifyError::BadSignature`], [`VerifyError::UnknownKey`] (no
    /// signature from any key of the role), [`VerifyError::BelowThreshold`],
    /// or a decode error.
    pub fn verify(&self, role: Role, keys: &RoleKeys) -> Result<T, VerifyError> {
        let mut valid = BTreeSet::new();
        let mut unknown = None;
        for s in &self.signatures {
            match keys.keys.iter().find(|k| k.id() == s.key) {
                None => unknown = unknown.or(Some(s.key)),
                Some(k) => {
                    if !k.verify(&self.body, &s.sig) {
                        return Err(VerifyError::BadSignature { role, key: s.key });
                    }
                    valid.insert(s.key);
                }
            }
        }
        if valid.len() < keys.threshold as usize {
            return Err(match (valid.len(), unknown) {
                (0, Some(key)) => VerifyError::UnknownKey { role, key },
                (n, _) => VerifyError::BelowThreshold {
                    role,
                    valid: n,
                    needed: keys.threshold,
                },
            });
        }
        codec::decode(&self.body).map_err(VerifyError::from)
    }
}

/// The keys of one role and how many of them must sign.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleKeys {
    /// The role's public keys.
    pub keys: Vec<PublicKey>,
    /// Distinct valid signatures needed.
    pub threshold: u32,
}

/// The keys and thresholds a device trusts. Self-signed by the root role;
/// replaced only by a newer root signed by the current one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustRoot {
    /// Monotonic; a rotation must raise it.
    pub version: u64,
    /// Seconds since the Unix epoch after which this root is not trusted.
    pub expires_at: u64,
    /// Keys of the `root` role.
    pub root: RoleKeys,
    /// Keys of the `release` role.
    pub release: RoleKeys,
    /// Keys of the `rollout` role.
    pub rollout: RoleKeys,
}

impl Message for TrustRoot {
    const KIND: Kind = Kind::TrustRoot;
}

impl TrustRoot {
    /// The keys for `role`.
    pub fn role(&self, role: Role) -> &RoleKeys {
        match role {
            Role::Root => &self.root,
            Role::Release => &self.release,
            Role::Rollout => &self.rollout,
        }
    }

    /// Checks thresholds are reachable and no key is listed twice.
    ///
    /// # Errors
    /// [`VerifyError::InvalidRoot`].
    pub fn validate(&self) -> Result<(), VerifyError> {
        for role in [Role::Root, Role::Release, Role::Rollout] {
            let rk = self.role(role);
            let distinct: BTreeSet<_> = rk.keys.iter().collect();
            if distinct.len() != rk.keys.len() {
                return Err(VerifyError::InvalidRoot(format!(
                    "role {role} lists a key twice"
                )));
            }
            if rk.threshold == 0 || rk.threshold as usize > rk.keys.len() {
                return Err(VerifyError::InvalidRoot(format!(
                    "role {role} has threshold {} with {} keys",
                    rk.threshold,
                    rk.keys.len()
                )));
            }
        }
        Ok(())
    }

    /// Accepts an initial, self-signed root (the one shipped on a device).
    ///
    /// # Errors
    /// Signature, threshold, validity or expiry errors.
    pub fn from_self_signed(signed: &Signed<TrustRoot>, now: u64) -> Result<Self, VerifyError> {
        let root = Self::from_self_signed_any_time(signed)?;
        root.check_expiry(now)?;
        Ok(root)
    }

    /// As [`Self::from_self_signed`] without the expiry check: a device
    /// whose shipped root lapsed while it was offline can still rotate to
    /// a newer root, as rotation checks only the final root's expiry.
    ///
    /// # Errors
    /// Signature, threshold or validity errors.
    pub fn from_self_signed_any_time(signed: &Signed<TrustRoot>) -> Result<Self, VerifyError> {
        let claimed = signed.decode_unverified()?;
        claimed.validate()?;
        signed.verify(Role::Root, &claimed.root)
    }

    /// Accepts `next` as the new root only if a threshold of this root's
    /// root keys signed it, a threshold of its own root keys signed it, and
    /// its version is higher. Expiry is not checked here: an intermediate
    /// root in a chain may have lapsed; check the final one with
    /// [`Self::check_expiry`].
    ///
    /// # Errors
    /// Signature, threshold, validity or [`VerifyError::Replayed`].
    pub fn rotate(&self, next: &Signed<TrustRoot>) -> Result<TrustRoot, VerifyError> {
        let by_old = next.verify(Role::Root, &self.root)?;
        by_old.validate()?;
        next.verify(Role::Root, &by_old.root)?;
        if by_old.version <= self.version {
            return Err(VerifyError::Replayed {
                document: DocKind::TrustRoot,
                sequence: by_old.version,
                last: self.version,
            });
        }
        Ok(by_old)
    }

    /// # Errors
    /// [`VerifyError::Expired`] when `now` is past `expires_at`.
    pub fn check_expiry(&self, now: u64) -> Result<(), VerifyError> {
        if now >= self.expires_at {
            return Err(VerifyError::Expired {
                document: DocKind::TrustRoot,
                expires_at: self.expires_at,
                now,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) struct Keys {
        pub root: Vec<SecretKey>,
        pub release: Vec<SecretKey>,
        pub rollout: Vec<SecretKey>,
    }

    pub(crate) fn keys(n: usize, salt: u8) -> Vec<SecretKey> {
        (0..n)
            .map(|i| SecretKey::from_seed([salt.wrapping_add(i as u8); 32]))
            .collect()
    }

    pub(crate) fn role(keys: &[SecretKey], threshold: u32) -> RoleKeys {
        RoleKeys {
            keys: keys.iter().map(SecretKey::public).collect(),
            threshold,
        }
    }

    pub(crate) fn fixture() -> (Keys, TrustRoot) {
        let k = Keys {
            root: keys(3, 10),
            release: keys(2, 20),
            rollout: keys(1, 30),
        };
        let root = TrustRoot {
            version: 1,
            expires_at: 2_000_000_000,
            root: role(&k.root, 2),
            release: role(&k.release, 2),
            rollout: role(&k.rollout, 1),
        };
        (k, root)
    }

    #[test]
    fn a_self_signed_root_verifies_at_threshold_and_not_below() {
        let (k, root) = fixture();
        let ok = Signed::sign(&root, &[&k.root[0], &k.root[2]]).unwrap();
        assert_eq!(TrustRoot::from_self_signed(&ok, 1_000).unwrap(), root);
        let one = Signed::sign(&root, &[&k.root[0]]).unwrap();
        assert!(matches!(
            TrustRoot::from_self_signed(&one, 1_000),
            Err(VerifyError::BelowThreshold {
                valid: 1,
                needed: 2,
                ..
            })
        ));
    }

    #[test]
    fn duplicate_signatures_by_one_key_count_once() {
        let (k, root) = fixture();
        let mut s = Signed::sign(&root, &[&k.root[0]]).unwrap();
        let again = s.signatures()[0].clone();
        s.push_signature(again);
        assert!(matches!(
            TrustRoot::from_self_signed(&s, 0),
            Err(VerifyError::BelowThreshold { valid: 1, .. })
        ));
    }

    #[test]
    fn a_tampered_body_is_a_bad_signature() {
        let (k, root) = fixture();
        let s = Signed::sign(&root, &[&k.root[0], &k.root[1]]).unwrap();
        let mut body = s.body().to_vec();
        let last = body.len() - 1;
        body[last] ^= 1;
        let s = s.with_body(body);
        assert!(matches!(
            s.verify(Role::Root, &root.root),
            Err(VerifyError::BadSignature { .. })
        ));
    }

    #[test]
    fn signatures_only_from_foreign_keys_are_an_unknown_key() {
        let (_, root) = fixture();
        let stranger = SecretKey::from_seed([99; 32]);
        let s = Signed::sign(&root, &[&stranger]).unwrap();
        assert!(matches!(
            s.verify(Role::Root, &root.root),
            Err(VerifyError::UnknownKey { .. })
        ));
    }

    #[test]
    fn root_rotation_needs_the_old_threshold_and_a_higher_version() {
        let (k, root) = fixture();
        let new_keys = keys(2, 50);
        let mut next = root.clone();
        next.version = 2;
        next.root = role(&new_keys, 1);
        // Signed by old threshold and by the new root key: accepted.
        let good = Signed::sign(&next, &[&k.root[0], &k.root[1], &new_keys[0]]).unwrap();
        assert_eq!(root.rotate(&good).unwrap(), next);
        // Only one old key: refused.
        let weak = Signed::sign(&next, &[&k.root[0], &new_keys[0]]).unwrap();
        assert!(matches!(
            root.rotate(&weak),
            Err(VerifyError::BelowThreshold { .. })
        ));
        // Not signed by the new root itself: refused.
        let unowned = Signed::sign(&next, &[&k.root[0], &k.root[1]]).unwrap();
        assert!(root.rotate(&unowned).is_err());
        // Same version: a rollback of the root.
        let mut same = next.clone();
        same.version = 1;
        let s = Signed::sign(&same, &[&k.root[0], &k.root[1], &new_keys[0]]).unwrap();
        assert!(matches!(root.rotate(&s), Err(VerifyError::Replayed { .. })));
        // A chain: v1 -> v2 -> v3, each signed by its predecessor.
        let v2 = root.rotate(&good).unwrap();
        let mut v3 = v2.clone();
        v3.version = 3;
        let s3 = Signed::sign(&v3, &[&new_keys[0]]).unwrap();
        assert_eq!(v2.rotate(&s3).unwrap().version, 3);
    }

    #[test]
    fn an_expired_root_is_refused() {
        let (k, root) = fixture();
        let s = Signed::sign(&root, &[&k.root[0], &k.root[1]]).unwrap();
        assert!(matches!(
            TrustRoot::from_self_signed(&s, root.expires_at),
            Err(VerifyError::Expired { .. })
        ));
    }

    #[test]
    fn unreachable_thresholds_are_an_invalid_root() {
        let (k, mut root) = fixture();
        root.release.threshold = 3;
        let s = Signed::sign(&root, &[&k.root[0], &k.root[1]]).unwrap();
        assert!(matches!(
            TrustRoot::from_self_signed(&s, 0),
            Err(VerifyError::InvalidRoot(_))
        ));
    }

    #[test]
    fn secret_key_files_round_trip_and_reject_garbage() {
        let k = SecretKey::from_seed([5; 32]);
        let (label, back) = SecretKey::from_file(&k.to_file("release")).unwrap();
        assert_eq!(label, "release");
        assert_eq!(back.public(), k.public());
        assert!(SecretKey::from_file("nope").is_err());
        assert!(SecretKey::from_file("meshota-secret-key-v1 x abc").is_err());
    }
}
