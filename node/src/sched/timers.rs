//! The scheduler's clock: what expires when, and when to wake next.

use std::cell::OnceCell;
use std::fmt::Debug;
use std::hash::Hash;
use std::time::Instant;

use super::{SchedEvent, Scheduler};

impl<P: Copy + Eq + Hash + Ord + Debug> Scheduler<P> {
    /// Expires requests, queries and slow peers whose time has come.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.touch(now);
        let expired: Vec<(u32, P, bool)> = self
            .in_flight
            .iter()
            .flat_map(|u| {
                self.chunks[u as usize]
                    .in_flight
                    .iter()
                    .filter(|f| f.deadline <= now)
                    .map(move |f| (u, f.peer, f.late))
            })
            .collect();
        let wait_more = self
            .cfg
            .answer_timeout
            .saturating_sub(self.cfg.request_timeout);
        for (u, peer, late) in expired {
            // A peer dropped since has shown it cannot deliver: what it
            // owes is given up at `request_timeout`, not awaited longer.
            if late || wait_more.is_zero() || !self.peers.contains_key(&peer) {
                // The transport has given up on it too: no answer comes.
                self.finish_request(&peer, u, now, false, 0);
                if !late {
                    self.stats.retries += 1;
                }
                continue;
            }
            if let Some(f) = self.chunks[u as usize]
                .in_flight
                .iter_mut()
                .find(|f| f.peer == peer)
            {
                f.late = true;
                f.deadline += wait_more;
            }
            self.refresh_open(u);
            self.stats.retries += 1;
            let strikes = self.peers.get_mut(&peer).map_or(0, |p| {
                p.timeouts_in_row += 1;
                p.timeouts_in_row
            });
            if strikes >= 2 {
                self.drop_peer(peer, "requests timed out twice in a row".into(), now);
            }
        }
        // One walk finds both the silent and the slow: it runs on every
        // timer, over every peer.
        let min_rate = self.cfg.min_rate_bps;
        let mut silent: Vec<P> = Vec::new();
        let mut slow: Vec<(P, u64)> = Vec::new();
        for (k, p) in self.peers.iter() {
            if p.have_pending.is_some_and(|d| d <= now) {
                silent.push(*k);
            } else if let Some(r) = p.slow_rate(now, min_rate) {
                slow.push((*k, r));
            }
        }
        self.site_cooling.retain(|_, (until, _)| *until > now);
        for peer in silent {
            self.drop_peer(peer, "did not answer a Have query in time".into(), now);
        }
        for (peer, rate) in slow {
            // Dropping a silent peer cannot have removed a slow one: they
            // are distinct; `drop_peer` ignores peers already gone.
            self.drop_peer(
                peer,
                format!("delivering {rate} B/s, below the {min_rate} B/s minimum"),
                now,
            );
        }
        if !self.completed
            && !self.stalled_reported
            && now >= self.last_progress + self.cfg.stall_timeout
        {
            self.stalled_reported = true;
            self.events.push_back(SchedEvent::Stalled);
        }
    }

    /// When to call [`Self::handle_timeout`] (and poll again) at the latest.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.completed {
            return None;
        }
        let after = self.now_hint;
        let mut best: Option<Instant> = None;
        let consider = |best: &mut Option<Instant>, t: Instant| {
            if t > after && best.is_none_or(|b| t < b) {
                *best = Some(t);
            }
        };
        let endgame = self.missing.len() <= self.cfg.endgame_chunks;
        for u in self.in_flight.iter() {
            let flights = &self.chunks[u as usize].in_flight;
            for f in flights {
                consider(&mut best, f.deadline);
            }
            if let [f] = flights.as_slice() {
                if endgame {
                    // When it may be duplicated (see `endgame_after`).
                    consider(&mut best, f.sent + self.cfg.endgame_after);
                }
            }
        }
        let lacks = OnceCell::new();
        for p in self.peers.values() {
            match p.have_pending {
                Some(d) => consider(&mut best, d),
                // `wants_refresh` may scan the missing chunks, so ask it
                // only when the refresh would be the earliest deadline so
                // far.
                None if p.have_due > after
                    && best.is_none_or(|b| p.have_due < b)
                    && self.wants_refresh(p, &lacks) =>
                {
                    consider(&mut best, p.have_due);
                }
                None => {}
            }
            consider(&mut best, p.busy_until);
        }
        for (until, _) in self.site_cooling.values() {
            consider(&mut best, *until);
        }
        for &u in &self.missing {
            let c = &self.chunks[u as usize];
            for since in c.deferred.iter().flatten() {
                consider(&mut best, *since + self.cfg.site_patience);
            }
            if let Some(since) = c.claimed_since {
                consider(&mut best, since + self.cfg.claim_patience);
            }
        }
        if let Some(t) = self.next_check_end(after) {
            consider(&mut best, t);
        }
        if let Some(t) = self.starving_at() {
            consider(&mut best, t);
        }
        if !self.stalled_reported {
            consider(&mut best, self.last_progress + self.cfg.stall_timeout);
        }
        best
    }
}
