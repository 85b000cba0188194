//! The simulated release's payload, and the chunks it cuts into.
//!
//! Live runs write this payload to disk and build a real bundle from it;
//! virtual runs cut the same bytes with the same chunker and keep only
//! the lengths. Content-defined chunks of random data range from a
//! quarter to four times the average, and a chunk four times the size
//! takes four times as long to cross each link and so spreads through
//! the fleet more slowly. Virtual runs once used equal chunks, and on
//! slow links they finished well ahead of live runs of the same scenario
//! (BENCHMARKS.md, "2026-12-05 (afternoon)").

use std::io::Read;

use meshota_protocol::chunking::{ChunkError, Chunker};
use meshota_protocol::{ChunkId, ChunkerParams};

use crate::scenario::Scenario;

/// Seeded random bytes (incompressible, so a chunk's wire size is its
/// raw size), as a reader.
#[derive(Debug, Clone)]
pub struct Payload {
    state: u64,
    left: u64,
    word: [u8; 8],
    /// Bytes of `word` already handed out.
    used: usize,
}

impl Payload {
    /// `bytes` of the payload of seed `seed`.
    pub fn new(bytes: u64, seed: u64) -> Self {
        Self {
            // The seed mixing that live runs have always used, so their
            // payloads (and bundle ids) are what they were.
            state: seed ^ 0xB0D7 ^ 0x11FE_5EED,
            left: bytes,
            word: [0; 8],
            used: 8,
        }
    }

    fn next_word(&mut self) -> [u8; 8] {
        // SplitMix64.
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)).to_le_bytes()
    }
}

impl Read for Payload {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let mut n = 0;
        while n < want {
            if self.used == 8 {
                self.word = self.next_word();
                self.used = 0;
            }
            let take = (8 - self.used).min(want - n);
            buf[n..n + take].copy_from_slice(&self.word[self.used..self.used + take]);
            self.used += take;
            n += take;
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// The chunker parameters a scenario's bundle is built with (those of
/// `meshota bundle create --chunk-avg-kib`).
pub fn chunker_params(s: &Scenario) -> ChunkerParams {
    let avg = s.chunk_avg;
    ChunkerParams {
        min: avg / 4,
        avg,
        max: avg.saturating_mul(4),
    }
}

/// The chunks of the scenario's payload: ids and lengths, in order.
///
/// # Errors
/// [`ChunkError::BadParams`] for a `chunk_avg` the chunker refuses.
pub fn chunks(s: &Scenario) -> Result<Vec<(ChunkId, u32)>, ChunkError> {
    let mut c = Chunker::new(Payload::new(s.bundle_bytes, s.seed), chunker_params(s))?;
    let mut out = Vec::new();
    while let Some(chunk) = c.next_chunk()? {
        out.push((chunk.id, chunk.data.len() as u32));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_payload_is_the_seeded_stream_however_it_is_read() {
        let mut whole = Vec::new();
        Payload::new(10_007, 3).read_to_end(&mut whole).unwrap();
        assert_eq!(whole.len(), 10_007);
        // Read in odd pieces, the bytes are the same.
        let mut p = Payload::new(10_007, 3);
        let mut pieces = Vec::new();
        let mut buf = [0u8; 13];
        loop {
            let n = p.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            pieces.extend_from_slice(&buf[..n]);
        }
        assert_eq!(pieces, whole);
        let mut other = Vec::new();
        Payload::new(10_007, 4).read_to_end(&mut other).unwrap();
        assert_ne!(other, whole);
    }

    #[test]
    fn the_chunks_cover_the_payload_with_sizes_around_the_average() {
        let s = Scenario {
            bundle_bytes: 8 << 20,
            chunk_avg: 64 * 1024,
            ..Scenario::default()
        };
        let c = chunks(&s).unwrap();
        let total: u64 = c.iter().map(|(_, l)| u64::from(*l)).sum();
        assert_eq!(total, s.bundle_bytes);
        let p = chunker_params(&s);
        let (min, max) = (
            c.iter().map(|(_, l)| *l).min().unwrap(),
            c.iter().map(|(_, l)| *l).max().unwrap(),
        );
        // Content-defined: not all one size, and inside the bounds (the
        // last chunk may be short).
        assert!(min < max, "{min} {max}");
        assert!(max <= p.max);
        assert!(c[..c.len() - 1].iter().all(|(_, l)| *l >= p.min));
    }
}
