//! Messages of the peer-to-peer chunk protocol `/meshota/chunks/1`, and the
//! compact bitfield peers use to say which chunks of a manifest they hold.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::chunking::Encoding;
use crate::codec::{Kind, Message};
use crate::ids::{ChunkId, ManifestId, SiteId};
use crate::manifest::MAX_CHUNKS;

/// The libp2p protocol name.
pub const CHUNK_PROTOCOL: &str = "/meshota/chunks/1";

/// A request from one peer to another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PeerRequest {
    /// Which chunks of this manifest do you hold? Also carries our site so
    /// the answer can come back with the peer's.
    Have {
        /// The manifest.
        manifest: ManifestId,
        /// The asker's site.
        site: Option<SiteId>,
        /// Chunks the asker awaits from the WAN or is about to ask of it
        /// (its `importing`, as in the answer), sent to same-site peers
        /// only. A device about to pull a chunk over the WAN asks its
        /// neighbours at once, so its claim reaches them (and, relayed,
        /// their neighbours) in one round trip rather than at their next
        /// poll. `None`: not said (an older node, or a peer of another
        /// site); an empty field: nothing.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        importing: Option<Bitfield>,
    },
    /// Send this chunk.
    Get {
        /// The chunk.
        chunk: ChunkId,
        /// The asker takes [`PeerResponse::Elsewhere`] for an answer. An
        /// older node neither sends nor reads it, so it is only ever
        /// told `NotFound`.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        hints: bool,
    },
    /// Send the encoded manifest with this id.
    Manifest {
        /// The manifest.
        id: ManifestId,
    },
}

impl Message for PeerRequest {
    const KIND: Kind = Kind::PeerRequest;
}

/// A response to a [`PeerRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PeerResponse {
    /// The chunks held, by manifest position, and the responder's site.
    Have {
        /// Held chunks, indexed like the manifest's chunk list.
        bitfield: Bitfield,
        /// The responder's site.
        site: Option<SiteId>,
        /// True for a seed-only origin, so schedulers keep it as a last resort.
        origin: bool,
        /// True while the responder is itself fetching this manifest. Site
        /// neighbours use it to agree on who pulls which chunk over the WAN;
        /// a neighbour that is not updating must not be waited for.
        #[serde(default)]
        fetching: bool,
        /// Chunks the responder has asked of other sites or the origin and
        /// awaits (or was refused `Busy` for moments ago, or is checking
        /// before it asks), indexed like
        /// `bitfield`; given to same-site askers only. A neighbour waits
        /// for them rather than pulling them over the WAN too.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        importing: Option<Bitfield>,
        /// Chunks the responder's other same-site neighbours said they
        /// import (their own `importing`, never relayed further), so a
        /// claim reaches two hops of the site. Given to same-site askers
        /// only, and without the asker's own claims.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        relayed: Option<Bitfield>,
        /// The rendezvous keys of the responder's same-site neighbours
        /// that fetch this manifest, so that the asker ranks itself
        /// against the members it does not know directly. Given to
        /// same-site askers only; at most 256.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        roster: Vec<u64>,
        /// Chunks beyond `bitfield` that the responder's same-site
        /// neighbours said they hold (first-hand, from their bitfields).
        /// The asker does not pull them over the WAN while it still gains
        /// chunks. Given to same-site askers only.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        site_holds: Option<Bitfield>,
        /// Chunks beyond `bitfield` and `site_holds` that the responder's
        /// other same-site neighbours said in their `site_holds` (never
        /// relayed further, so word of a holder that left or was banned
        /// ends within two answers). Same use as `site_holds`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        site_holds_relayed: Option<Bitfield>,
    },
    /// A chunk, stored form.
    Chunk {
        /// How `data` is encoded.
        encoding: Encoding,
        /// The bytes: shared with the store that served them, so a
        /// response costs no copy before it is encoded.
        data: Bytes,
    },
    /// An encoded manifest.
    Manifest {
        /// The bytes; the receiver checks their BLAKE3 against the id.
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// I do not have it.
    NotFound,
    /// I have it, but my upload slots are full: try elsewhere or later.
    Busy,
    /// I will not send it (an origin that served the chunk moments ago),
    /// but this peer got it from me. Only to a `Get` with `hints` set.
    /// It saves the asker a search of the fleet for the one device that
    /// holds a new chunk, which took a site a median of 67 s on
    /// `throttled-1000`.
    Elsewhere {
        /// Who got the chunk.
        holder: PeerHint,
    },
}

/// A peer and where to dial it, as libp2p writes them (a peer id's
/// bytes, multiaddrs' bytes). The protocol crate parses neither; the
/// node does, and drops a hint it cannot parse.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerHint {
    /// The peer id.
    #[serde(with = "serde_bytes")]
    pub peer: Vec<u8>,
    /// Its listen addresses, at most [`MAX_HINT_ADDRS`] of them used.
    pub addrs: Vec<serde_bytes::ByteBuf>,
}

impl PeerHint {
    /// A hint from a peer id's bytes and multiaddrs' bytes.
    pub fn new(peer: Vec<u8>, addrs: impl IntoIterator<Item = Vec<u8>>) -> Self {
        Self {
            peer,
            addrs: addrs.into_iter().map(serde_bytes::ByteBuf::from).collect(),
        }
    }

    /// The addresses' bytes, at most [`MAX_HINT_ADDRS`] of them.
    pub fn addrs(&self) -> impl Iterator<Item = &[u8]> {
        self.addrs.iter().take(MAX_HINT_ADDRS).map(|a| a.as_slice())
    }
}

/// Most addresses of a [`PeerHint`] a node dials.
pub const MAX_HINT_ADDRS: usize = 4;

impl Message for PeerResponse {
    const KIND: Kind = Kind::PeerResponse;
}

/// One bit per manifest chunk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bitfield {
    len: u32,
    #[serde(with = "serde_bytes")]
    bits: Vec<u8>,
}

/// Why a received bitfield is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BitfieldError {
    /// Its length does not match the manifest or its byte count.
    #[error(
        "bitfield of {len} bits with {bytes} bytes does not fit a manifest of {expected} chunks"
    )]
    BadLength {
        /// Declared bits.
        len: u32,
        /// Bytes carried.
        bytes: usize,
        /// Chunks in the manifest.
        expected: usize,
    },
}

impl Bitfield {
    /// An empty field for `len` chunks (capped at [`MAX_CHUNKS`]).
    pub fn new(len: usize) -> Self {
        let len = len.min(MAX_CHUNKS);
        Self {
            len: len as u32,
            bits: vec![0; len.div_ceil(8)],
        }
    }
    /// A field with every bit set.
    pub fn full(len: usize) -> Self {
        let mut b = Self::new(len);
        for i in 0..b.len() {
            b.set(i);
        }
        b
    }
    /// Number of bits.
    pub fn len(&self) -> usize {
        self.len as usize
    }
    /// True when it has no bits.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Sets bit `i` (ignored out of range).
    pub fn set(&mut self, i: usize) {
        if i < self.len() {
            self.bits[i / 8] |= 1 << (i % 8);
        }
    }
    /// Reads bit `i` (false out of range).
    pub fn get(&self, i: usize) -> bool {
        i < self.len()
            && self
                .bits
                .get(i / 8)
                .is_some_and(|b| b & (1 << (i % 8)) != 0)
    }
    /// Number of set bits.
    pub fn count(&self) -> usize {
        self.bits.iter().map(|b| b.count_ones() as usize).sum()
    }
    /// Checks a field received from a peer against the manifest.
    ///
    /// # Errors
    /// [`BitfieldError::BadLength`].
    pub fn check(&self, expected: usize) -> Result<(), BitfieldError> {
        if self.len() != expected || self.bits.len() != expected.div_ceil(8) {
            return Err(BitfieldError::BadLength {
                len: self.len,
                bytes: self.bits.len(),
                expected,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitfield_sets_gets_and_counts() {
        let mut b = Bitfield::new(13);
        b.set(0);
        b.set(12);
        b.set(99);
        assert!(b.get(0) && b.get(12) && !b.get(5) && !b.get(99));
        assert_eq!(b.count(), 2);
        assert!(b.check(13).is_ok());
        assert!(b.check(14).is_err());
        assert_eq!(Bitfield::full(9).count(), 9);
    }

    /// The `Have` answer of a node from before import claims.
    #[derive(Serialize, Deserialize)]
    #[serde(rename_all = "kebab-case")]
    enum OldPeerMessage {
        Have {
            bitfield: Bitfield,
            site: Option<SiteId>,
            origin: bool,
            fetching: bool,
        },
    }

    impl Message for OldPeerMessage {
        const KIND: Kind = Kind::PeerResponse;
    }

    #[test]
    fn a_have_answer_from_a_node_without_import_claims_decodes_with_none() {
        let old = OldPeerMessage::Have {
            bitfield: Bitfield::full(3),
            site: None,
            origin: false,
            fetching: true,
        };
        let bytes = crate::codec::encode(&old).unwrap();
        match crate::codec::decode::<PeerResponse>(&bytes).unwrap() {
            PeerResponse::Have {
                fetching,
                importing,
                relayed,
                roster,
                site_holds,
                site_holds_relayed,
                ..
            } => assert!(
                fetching
                    && importing.is_none()
                    && relayed.is_none()
                    && roster.is_empty()
                    && site_holds.is_none()
                    && site_holds_relayed.is_none()
            ),
            other => panic!("decoded {other:?}"),
        }
    }

    /// The `Have` request of a node from before claims rode on requests.
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(rename_all = "kebab-case")]
    enum OldPeerRequest {
        Have {
            manifest: ManifestId,
            site: Option<SiteId>,
        },
    }

    impl Message for OldPeerRequest {
        const KIND: Kind = Kind::PeerRequest;
    }

    #[test]
    fn have_requests_with_and_without_claims_decode_on_old_and_new_nodes() {
        let manifest = ManifestId::from_bytes([7; 32]);
        let site = SiteId::new("s").ok();
        let old = OldPeerRequest::Have {
            manifest,
            site: site.clone(),
        };
        let bytes = crate::codec::encode(&old).unwrap();
        assert_eq!(
            crate::codec::decode::<PeerRequest>(&bytes).unwrap(),
            PeerRequest::Have {
                manifest,
                site: site.clone(),
                importing: None
            }
        );
        let mut claims = Bitfield::new(4);
        claims.set(2);
        let new = PeerRequest::Have {
            manifest,
            site,
            importing: Some(claims),
        };
        let bytes = crate::codec::encode(&new).unwrap();
        assert_eq!(crate::codec::decode::<OldPeerRequest>(&bytes).unwrap(), old);
    }

    /// The `Get` request of a node from before hints.
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(rename_all = "kebab-case")]
    enum OldGet {
        Get { chunk: ChunkId },
    }

    impl Message for OldGet {
        const KIND: Kind = Kind::PeerRequest;
    }

    #[test]
    fn get_requests_with_and_without_hints_decode_on_old_and_new_nodes() {
        let chunk = ChunkId::digest(b"c");
        let old = OldGet::Get { chunk };
        let bytes = crate::codec::encode(&old).unwrap();
        assert_eq!(
            crate::codec::decode::<PeerRequest>(&bytes).unwrap(),
            PeerRequest::Get {
                chunk,
                hints: false
            }
        );
        let new = PeerRequest::Get { chunk, hints: true };
        let bytes = crate::codec::encode(&new).unwrap();
        assert_eq!(crate::codec::decode::<OldGet>(&bytes).unwrap(), old);
        // Without hints, the request is byte for byte the old one.
        let plain = PeerRequest::Get {
            chunk,
            hints: false,
        };
        assert_eq!(
            crate::codec::encode(&plain).unwrap(),
            crate::codec::encode(&old).unwrap()
        );
    }

    #[test]
    fn an_elsewhere_answer_round_trips() {
        let r = PeerResponse::Elsewhere {
            holder: PeerHint {
                peer: vec![0, 36, 8, 1],
                addrs: vec![serde_bytes::ByteBuf::from(vec![4, 127, 0, 0, 1])],
            },
        };
        let bytes = crate::codec::encode(&r).unwrap();
        assert_eq!(crate::codec::decode::<PeerResponse>(&bytes).unwrap(), r);
    }

    #[test]
    fn a_peer_cannot_claim_a_bitfield_larger_than_it_carries() {
        let b = Bitfield {
            len: 1000,
            bits: vec![0xff; 2],
        };
        assert!(b.check(1000).is_err());
        assert!(!b.get(500));
    }
}
