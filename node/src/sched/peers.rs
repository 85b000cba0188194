//! The scheduler's peer table: sorted keys beside their states, not a
//! `BTreeMap`.
//!
//! A device knows a few dozen peers and every poll walks all of them, so
//! walking must be cheap: contiguous arrays are, a tree of boxed nodes is
//! not (it was a large cost of a 100,000-device virtual run). Keys stay
//! in order, so every walk visits peers in the same order as the map did
//! and runs replay exactly as before.

use super::state::PeerState;

pub(super) struct PeerTable<P> {
    /// Sorted; `vals[i]` belongs to `keys[i]`. Apart, so a lookup's
    /// binary search reads only keys.
    keys: Vec<P>,
    vals: Vec<PeerState>,
}

impl<P: Ord> PeerTable<P> {
    pub fn new() -> Self {
        Self {
            keys: Vec::new(),
            vals: Vec::new(),
        }
    }

    fn find(&self, k: &P) -> Result<usize, usize> {
        self.keys.binary_search(k)
    }

    pub fn get(&self, k: &P) -> Option<&PeerState> {
        self.find(k).ok().map(|i| &self.vals[i])
    }

    pub fn get_mut(&mut self, k: &P) -> Option<&mut PeerState> {
        let i = self.find(k).ok()?;
        Some(&mut self.vals[i])
    }

    pub fn contains_key(&self, k: &P) -> bool {
        self.find(k).is_ok()
    }

    pub fn remove(&mut self, k: &P) -> Option<PeerState> {
        let i = self.find(k).ok()?;
        self.keys.remove(i);
        Some(self.vals.remove(i))
    }

    /// The entry for `k`, made by `make` if absent.
    pub fn get_or_insert_with(&mut self, k: P, make: impl FnOnce() -> PeerState) -> &mut PeerState {
        let i = match self.find(&k) {
            Ok(i) => i,
            Err(i) => {
                self.keys.insert(i, k);
                self.vals.insert(i, make());
                i
            }
        };
        &mut self.vals[i]
    }

    pub fn iter(&self) -> impl Iterator<Item = (&P, &PeerState)> {
        self.keys.iter().zip(&self.vals)
    }

    pub fn values(&self) -> impl Iterator<Item = &PeerState> {
        self.vals.iter()
    }

    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut PeerState> {
        self.vals.iter_mut()
    }
}
