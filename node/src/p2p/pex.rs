//! Peer exchange: naming same-site neighbours in `Have` answers (see
//! [`PeerResponse::Have`](meshota_protocol::PeerResponse::Have)).
//!
//! The event loop keeps the listen addresses identify reports for each
//! connected peer ([`PeerAddrs`]); the fetch loop says which of them are
//! same-site neighbours of a download; [`PeerAddrs::hints`] joins the two.
//! A received hint is only a dial target, so [`parse_hints`] drops what
//! does not parse rather than failing the answer it came in.

use std::collections::HashMap;

use libp2p::{Multiaddr, PeerId};
use meshota_protocol::peer::{MAX_HINTS, MAX_HINT_ADDRS};
use meshota_protocol::PeerHint;

/// Listen addresses of connected peers, as identify reported them.
#[derive(Debug, Default)]
pub(crate) struct PeerAddrs {
    addrs: HashMap<PeerId, Vec<Multiaddr>>,
}

impl PeerAddrs {
    /// Records what identify said `peer` listens on (the first few).
    pub(crate) fn insert(&mut self, peer: PeerId, addrs: Vec<Multiaddr>) {
        let addrs: Vec<Multiaddr> = addrs.into_iter().take(MAX_HINT_ADDRS).collect();
        if addrs.is_empty() {
            self.addrs.remove(&peer);
        } else {
            self.addrs.insert(peer, addrs);
        }
    }

    /// Forgets a peer whose last connection closed.
    pub(crate) fn remove(&mut self, peer: &PeerId) {
        self.addrs.remove(peer);
    }

    /// Hints for up to [`MAX_HINTS`] of `peers`, those with addresses.
    pub(crate) fn hints(&self, peers: impl IntoIterator<Item = PeerId>) -> Vec<PeerHint> {
        peers
            .into_iter()
            .filter_map(|p| {
                let addrs = self.addrs.get(&p)?;
                Some(PeerHint {
                    peer: p.to_bytes(),
                    addrs: addrs
                        .iter()
                        .map(|a| serde_bytes::ByteBuf::from(a.to_vec()))
                        .collect(),
                })
            })
            .take(MAX_HINTS)
            .collect()
    }
}

/// The usable hints of an answer: at most [`MAX_HINTS`], each with at
/// most [`MAX_HINT_ADDRS`] addresses that parse; a hint with a bad peer
/// id or no usable address is dropped.
pub(crate) fn parse_hints(hints: Vec<PeerHint>) -> Vec<(PeerId, Vec<Multiaddr>)> {
    hints
        .into_iter()
        .take(MAX_HINTS)
        .filter_map(|h| {
            let peer = PeerId::from_bytes(&h.peer).ok()?;
            let addrs: Vec<Multiaddr> = h
                .addrs
                .into_iter()
                .take(MAX_HINT_ADDRS)
                .filter_map(|a| Multiaddr::try_from(a.into_vec()).ok())
                .collect();
            (!addrs.is_empty()).then_some((peer, addrs))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_round_trip_and_bad_ones_are_dropped_not_fatal() {
        let mut book = PeerAddrs::default();
        let a = PeerId::random();
        let b = PeerId::random();
        let addr: Multiaddr = "/ip4/127.0.0.1/tcp/4001".parse().unwrap();
        book.insert(a, vec![addr.clone()]);
        // `b` has no known address: it cannot be named.
        let mut hints = book.hints([a, b]);
        assert_eq!(hints.len(), 1);
        hints.push(PeerHint {
            peer: vec![1, 2, 3],
            addrs: vec![serde_bytes::ByteBuf::from(addr.to_vec())],
        });
        hints.push(PeerHint {
            peer: b.to_bytes(),
            addrs: vec![serde_bytes::ByteBuf::from(vec![0xff; 5])],
        });
        assert_eq!(parse_hints(hints), vec![(a, vec![addr])]);
    }

    #[test]
    fn at_most_the_hint_cap_is_named_or_taken() {
        let mut book = PeerAddrs::default();
        let addr: Multiaddr = "/ip4/127.0.0.1/tcp/4001".parse().unwrap();
        let peers: Vec<PeerId> = (0..MAX_HINTS + 5).map(|_| PeerId::random()).collect();
        for p in &peers {
            book.insert(*p, vec![addr.clone(); MAX_HINT_ADDRS + 2]);
        }
        let hints = book.hints(peers.iter().copied());
        assert_eq!(hints.len(), MAX_HINTS);
        assert!(hints.iter().all(|h| h.addrs.len() == MAX_HINT_ADDRS));
        let mut many = hints.clone();
        many.extend(hints);
        assert_eq!(parse_hints(many).len(), MAX_HINTS);
    }
}
