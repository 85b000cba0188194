//! The event queue of virtual time: a monotone radix heap.
//!
//! A discrete-event run never schedules into the past, so the queue can
//! exploit it: an event sits in the bucket of the highest bit in which its
//! time differs from the last time popped, and only the lowest non-empty
//! bucket is ever re-sorted. Push is O(1), pop amortised O(log of the time
//! span), and the buckets are flat arrays. A binary heap of millions of
//! events spent most of its time on cache misses along its sift paths.
//!
//! Equal times pop in push order, exactly as a heap ordered by (time,
//! sequence number) would: a bucket only ever receives pushes (in order)
//! or the whole content of a higher bucket while it is empty, so every
//! bucket stays in push order.

use std::collections::VecDeque;

use super::net::Micros;

/// Events ordered by time, then by push order.
pub struct EventQueue<T> {
    /// The time last popped; nothing earlier can be pushed.
    last: Micros,
    /// Events at exactly `last`, in push order.
    now: VecDeque<(Micros, T)>,
    /// `buckets[b]`: events whose time first differs from `last` in bit `b`.
    buckets: Vec<Vec<(Micros, T)>>,
    len: usize,
}

impl<T> Default for EventQueue<T> {
    fn default() -> Self {
        Self {
            last: 0,
            now: VecDeque::new(),
            buckets: (0..64).map(|_| Vec::new()).collect(),
            len: 0,
        }
    }
}

impl<T> EventQueue<T> {
    /// Queues `item` at `at`. A time before the last one popped is taken
    /// as "now" (it still pops next, after what is already due now).
    pub fn push(&mut self, at: Micros, item: T) {
        let at = at.max(self.last);
        self.len += 1;
        if at == self.last {
            self.now.push_back((at, item));
        } else {
            let b = 63 - (at ^ self.last).leading_zeros() as usize;
            self.buckets[b].push((at, item));
        }
    }

    /// The earliest event and its time.
    pub fn pop(&mut self) -> Option<(Micros, T)> {
        if self.now.is_empty() {
            let b = self.buckets.iter().position(|v| !v.is_empty())?;
            let mut spill = std::mem::take(&mut self.buckets[b]);
            self.last = spill.iter().map(|(t, _)| *t).min().unwrap_or(self.last);
            for (t, item) in spill.drain(..) {
                if t == self.last {
                    self.now.push_back((t, item));
                } else {
                    let nb = 63 - (t ^ self.last).leading_zeros() as usize;
                    self.buckets[nb].push((t, item));
                }
            }
            // Keep the allocation: this bucket fills again.
            self.buckets[b] = spill;
        }
        let out = self.now.pop_front()?;
        self.len -= 1;
        Some(out)
    }

    /// Events queued.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;

    #[test]
    fn pops_in_time_then_push_order_like_a_heap_of_time_and_sequence() {
        let mut q = EventQueue::default();
        let mut heap = BinaryHeap::new();
        let mut seq = 0u64;
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut now = 0;
        let mut popped = 0;
        for _ in 0..20_000 {
            // Pushes at now, a little later, or much later, many ties.
            for _ in 0..(rnd() % 3) {
                let at = now
                    + match rnd() % 4 {
                        0 => 0,
                        1 => rnd() % 8,
                        2 => rnd() % 5_000,
                        _ => rnd() % 50_000_000,
                    };
                seq += 1;
                q.push(at, seq);
                heap.push(Reverse((at, seq)));
            }
            let a = q.pop();
            let b = heap.pop().map(|Reverse(e)| e);
            assert_eq!(a, b);
            if let Some((t, _)) = a {
                assert!(t >= now, "time never goes back");
                now = t;
                popped += 1;
            }
            assert_eq!(q.len(), heap.len());
        }
        while let Some(Reverse(e)) = heap.pop() {
            assert_eq!(q.pop(), Some(e));
        }
        assert_eq!(q.pop(), None);
        assert!(popped > 10_000, "the test exercised the queue");
    }

    #[test]
    fn an_event_pushed_into_the_past_pops_next_after_those_already_due() {
        let mut q = EventQueue::default();
        q.push(10, 'a');
        q.push(10, 'b');
        assert_eq!(q.pop(), Some((10, 'a')));
        q.push(3, 'c');
        q.push(20, 'd');
        assert_eq!(q.pop(), Some((10, 'b')));
        assert_eq!(q.pop(), Some((10, 'c')));
        assert_eq!(q.pop(), Some((20, 'd')));
    }
}
