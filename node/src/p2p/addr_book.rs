//! An origin's address book: where each peer said it listens (identify),
//! so that a refusal can name where a withheld chunk went. Bounded: past
//! its capacity the peer noted longest ago is forgotten. Starting the
//! book over instead, as it once did, left every hint `NotFound` until
//! the fleet's identify exchanges came round again, just when a fleet
//! that large needs them most.

use std::collections::{HashMap, VecDeque};

use libp2p::{Multiaddr, PeerId};

pub(crate) struct AddrBook {
    cap: usize,
    /// Counts notes, so `order` can tell a peer's latest note from stale ones.
    seq: u64,
    entries: HashMap<PeerId, (u64, Vec<Multiaddr>)>,
    /// Notes oldest first. A peer noted again leaves a stale entry behind,
    /// skipped on eviction and swept once the queue is twice the book.
    order: VecDeque<(u64, PeerId)>,
}

impl AddrBook {
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            cap: cap.max(1),
            seq: 0,
            entries: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// `peer` listens at `addrs` (replacing what it said before).
    pub(crate) fn note(&mut self, peer: PeerId, addrs: Vec<Multiaddr>) {
        self.seq += 1;
        self.entries.insert(peer, (self.seq, addrs));
        self.order.push_back((self.seq, peer));
        while self.entries.len() > self.cap {
            let Some((seq, old)) = self.order.pop_front() else {
                break;
            };
            if self.entries.get(&old).is_some_and(|(s, _)| *s == seq) {
                self.entries.remove(&old);
            }
        }
        if self.order.len() > 2 * self.cap {
            let entries = &self.entries;
            self.order
                .retain(|(seq, p)| entries.get(p).is_some_and(|(s, _)| s == seq));
        }
    }

    /// Where `peer` last said it listens.
    pub(crate) fn get(&self, peer: &PeerId) -> Option<&[Multiaddr]> {
        self.entries.get(peer).map(|(_, a)| a.as_slice())
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
    fn a_peer_noted_over_and_over_keeps_the_book_and_its_order_bounded() {
        let mut book = AddrBook::new(4);
        let me = PeerId::random();
        for n in 0..1000 {
            book.note(me, addr(n));
            assert!(book.order.len() <= 2 * 4 + 1, "{}", book.order.len());
        }
        assert_eq!(book.len(), 1);
        assert_eq!(book.get(&me), Some(addr(999).as_slice()));
    }
}
