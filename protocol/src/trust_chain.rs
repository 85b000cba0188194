//! Trust-root rotations delivered over the air.
//!
//! The control plane publishes every root since the one devices shipped
//! with, oldest first, retained on the fleet's trust topic. A device walks
//! the chain from the root it holds: each newer root must be signed by a
//! threshold of the previous root's keys and of its own
//! ([`TrustRoot::rotate`]), so a broker or control plane that is not
//! holding the offline root keys cannot add a link. Roots at or below the
//! device's version are skipped, which makes the chain idempotent and lets
//! devices that are several rotations behind catch up in one step.

use serde::{Deserialize, Serialize};

use crate::codec::{Kind, Message};
use crate::trust::{Signed, TrustRoot};
use crate::verify::VerifyError;

/// Most roots a chain may list. Roots are rotated by hand, rarely, so this
/// bounds the work a hostile chain can cause without ever being reached.
pub const MAX_TRUST_CHAIN: usize = 64;

/// Signed roots, oldest first.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct TrustChain {
    /// Each root, as its root keys signed it.
    pub roots: Vec<Signed<TrustRoot>>,
}

impl Message for TrustChain {
    const KIND: Kind = Kind::TrustChain;
}

impl TrustChain {
    /// Applies every root newer than `current`, in order. `Ok(None)` when
    /// there is nothing newer. Expiry is not checked: an intermediate root
    /// may have lapsed, and the caller decides what an expired final root
    /// means ([`TrustRoot::check_expiry`]).
    ///
    /// # Errors
    /// [`VerifyError::InvalidRoot`] for an over-long chain, a decode error,
    /// or the first link that does not verify ([`TrustRoot::rotate`]).
    pub fn advance(&self, current: &TrustRoot) -> Result<Option<TrustRoot>, VerifyError> {
        if self.roots.len() > MAX_TRUST_CHAIN {
            return Err(VerifyError::InvalidRoot(format!(
                "trust chain lists {} roots; at most {MAX_TRUST_CHAIN} are accepted",
                self.roots.len()
            )));
        }
        let mut at = current.clone();
        let mut moved = false;
        for signed in &self.roots {
            if signed.decode_unverified()?.version <= at.version {
                continue;
            }
            at = at.rotate(signed)?;
            moved = true;
        }
        Ok(moved.then_some(at))
    }

    /// The newest root's version as listed (unverified; for display).
    pub fn newest_version(&self) -> Option<u64> {
        self.roots
            .last()
            .and_then(|s| s.decode_unverified().ok())
            .map(|r| r.version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec;
    use crate::trust::tests::{fixture, keys, role};
    use crate::trust::SecretKey;

    /// The fixture's root (v1) and two rotations: v2 replaces the rollout
    /// key, v3 replaces the root keys (signed by old and new root keys).
    fn chain() -> (Vec<Signed<TrustRoot>>, Vec<TrustRoot>, Vec<SecretKey>) {
        let (k, v1) = fixture();
        let mut v2 = v1.clone();
        v2.version = 2;
        v2.rollout = role(&keys(1, 40), 1);
        let new_root = keys(3, 50);
        let mut v3 = v2.clone();
        v3.version = 3;
        v3.root = role(&new_root, 2);
        let s1 = Signed::sign(&v1, &[&k.root[0], &k.root[1]]).unwrap();
        let s2 = Signed::sign(&v2, &[&k.root[0], &k.root[1]]).unwrap();
        let s3 = Signed::sign(&v3, &[&k.root[0], &k.root[1], &new_root[0], &new_root[1]]).unwrap();
        (vec![s1, s2, s3], vec![v1, v2, v3], new_root)
    }

    #[test]
    fn a_device_several_rotations_behind_walks_the_whole_chain() {
        let (signed, roots, _) = chain();
        let c = TrustChain { roots: signed };
        assert_eq!(c.advance(&roots[0]).unwrap(), Some(roots[2].clone()));
        assert_eq!(c.advance(&roots[1]).unwrap(), Some(roots[2].clone()));
        assert_eq!(c.newest_version(), Some(3));
    }

    #[test]
    fn a_chain_with_nothing_newer_changes_nothing() {
        let (signed, roots, _) = chain();
        let c = TrustChain { roots: signed };
        assert_eq!(c.advance(&roots[2]).unwrap(), None);
        assert_eq!(TrustChain::default().advance(&roots[0]).unwrap(), None);
    }

    #[test]
    fn a_link_signed_only_by_the_new_root_keys_is_refused() {
        let (mut signed, roots, _) = chain();
        let mut v4 = roots[2].clone();
        v4.version = 4;
        v4.rollout = role(&keys(1, 60), 1);
        // A control plane that stole the online rollout key cannot sign
        // with the offline root keys; one that forges a whole new root
        // can only sign with keys the device does not trust.
        let stranger = keys(2, 70);
        let mut forged = v4.clone();
        forged.root = role(&stranger, 2);
        signed.push(Signed::sign(&forged, &[&stranger[0], &stranger[1]]).unwrap());
        let c = TrustChain { roots: signed };
        assert!(matches!(
            c.advance(&roots[0]),
            Err(VerifyError::UnknownKey { .. })
        ));
    }

    #[test]
    fn a_new_root_the_old_keys_did_not_sign_is_refused_even_if_self_signed() {
        let (signed, roots, new_root) = chain();
        let v3_self_only = Signed::sign(&roots[2], &[&new_root[0], &new_root[1]]).unwrap();
        let c = TrustChain {
            roots: vec![signed[0].clone(), signed[1].clone(), v3_self_only],
        };
        assert!(c.advance(&roots[0]).is_err());
    }

    #[test]
    fn an_over_long_chain_is_refused_before_any_signature_is_checked() {
        let (signed, roots, _) = chain();
        let c = TrustChain {
            roots: vec![signed[0].clone(); MAX_TRUST_CHAIN + 1],
        };
        assert!(matches!(
            c.advance(&roots[0]),
            Err(VerifyError::InvalidRoot(_))
        ));
    }

    #[test]
    fn a_chain_round_trips_through_the_codec() {
        let (signed, _, _) = chain();
        let c = TrustChain { roots: signed };
        let bytes = codec::encode(&c).unwrap();
        assert_eq!(codec::decode::<TrustChain>(&bytes).unwrap(), c);
    }
}
