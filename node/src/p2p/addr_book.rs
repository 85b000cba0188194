//! An origin's address book: where each peer said it listens (identify),
//! so that a refusal can name where a withheld chunk went. Bounded: past
//! its capacity the peer noted longest ago is forgotten. Starting the
//! book over instead, as it once did, left every hint `NotFound` until
//! the fleet's identify exchanges came round again, just when a fleet
//! that large needs them most.

use hashlink::LinkedHashMap;
use libp2p::{Multiaddr, PeerId};

pub(crate) struct AddrBook {
    cap: usize,
    /// Oldest note first: noting a peer again moves it to the back.
    entries: LinkedHashMap<PeerId, Vec<Multiaddr>>,
}

impl AddrBook {
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            cap: cap.max(1),
            entries: LinkedHashMap::new(),
        }
    }

    /// `peer` listens at `addrs` (replacing what it said before).
    pub(crate) fn note(&mut self, peer: PeerId, addrs: Vec<Multiaddr>) {
        self.entries.insert(peer, addrs);
        while self.entries.len() > self.cap {
            self.entries.pop_front();
        }
    }

    /// Where `peer` last said it listens.
    pub(crate) fn get(&self, peer: &PeerId) -> Option<&[Multiaddr]> {
        self.entries.get(peer).map(Vec::as_slice)
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(n: u16) -> Vec<Multiaddr> {
        vec![format!("/ip4/10.0.0.1/tcp/{n}").parse().unwrap()]
    }

    #[test]
    fn a_full_book_forgets_the_peer_noted_longest_ago() {
        let mut book = AddrBook::new(3);
        let p: Vec<PeerId> = (0..4).map(|_| PeerId::random()).collect();
        book.note(p[0], addr(1));
        book.note(p[1], addr(2));
        book.note(p[2], addr(3));
        // Noted again: now the newest, so the next to go is p[1].
        book.note(p[0], addr(4));
        book.note(p[3], addr(5));
        assert_eq!(book.len(), 3);
        assert!(book.get(&p[1]).is_none());
        assert_eq!(book.get(&p[0]), Some(addr(4).as_slice()));
        assert_eq!(book.get(&p[2]), Some(addr(3).as_slice()));
        assert_eq!(book.get(&p[3]), Some(addr(5).as_slice()));
    }

    #[test]
    fn a_peer_noted_over_and_over_takes_one_place_in_the_book() {
        let mut book = AddrBook::new(4);
        let me = PeerId::random();
        for n in 0..1000 {
            book.note(me, addr(n));
            assert_eq!(book.len(), 1);
        }
        assert_eq!(book.len(), 1);
        assert_eq!(book.get(&me), Some(addr(999).as_slice()));
    }
}
