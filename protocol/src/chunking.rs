//! Content-defined chunking (FastCDC 2020) and per-chunk compression.
//!
//! Cut points depend on content, not offsets, so an insertion in the middle
//! of a payload moves only the chunks around it; every other chunk keeps its
//! BLAKE3 id and is already on the device. That is what makes deltas free.

use std::borrow::Cow;
use std::io::Read;

use serde::{Deserialize, Serialize};

use crate::ids::{ChunkId, PayloadHash};

/// The largest chunk length any manifest may declare. Bounds every buffer
/// sized from a manifest or a peer's claim.
pub const MAX_CHUNK_LEN: u32 = 4 * 1024 * 1024;

/// FastCDC parameters, recorded in each manifest so a later build cuts the
/// same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkerParams {
    /// Smallest chunk, except the last.
    pub min: u32,
    /// Target average chunk.
    pub avg: u32,
    /// Largest chunk.
    pub max: u32,
}

impl Default for ChunkerParams {
    /// casync's sizes: 16 KiB / 64 KiB / 256 KiB.
    fn default() -> Self {
        Self {
            min: 16 * 1024,
            avg: 64 * 1024,
            max: 256 * 1024,
        }
    }
}

/// Why chunker parameters or chunk bytes were refused.
#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    /// Parameters outside what FastCDC and our buffers accept.
    #[error("invalid chunker parameters min={min} avg={avg} max={max}: need even values with 64 <= min <= avg <= max <= {MAX_CHUNK_LEN}, avg >= 256, max >= 1024")]
    BadParams {
        /// Declared minimum.
        min: u32,
        /// Declared average.
        avg: u32,
        /// Declared maximum.
        max: u32,
    },
    /// Reading the payload failed.
    #[error("reading payload: {0}")]
    Io(#[from] std::io::Error),
    /// A stored chunk's encoding byte is unknown.
    #[error("unknown chunk encoding {0}")]
    UnknownEncoding(u8),
    /// A compressed chunk inflates past its declared length, or is corrupt.
    #[error("chunk does not decompress to its declared {declared} bytes: {reason}")]
    Decompress {
        /// The declared raw length.
        declared: u32,
        /// What went wrong.
        reason: String,
    },
    /// The raw bytes do not hash to the expected id.
    #[error("chunk hash mismatch: expected {expected}, got {actual}")]
    HashMismatch {
        /// The id the manifest (or request) named.
        expected: ChunkId,
        /// The BLAKE3 of what arrived.
        actual: ChunkId,
    },
    /// The raw bytes have another length than declared.
    #[error("chunk length mismatch: declared {declared}, got {actual}")]
    LengthMismatch {
        /// The length the manifest declared.
        declared: u32,
        /// The length that arrived.
        actual: usize,
    },
}

impl ChunkerParams {
    /// Checks the parameters before they reach FastCDC, whose own checks
    /// are debug assertions only.
    ///
    /// # Errors
    /// [`ChunkError::BadParams`].
    pub fn validate(&self) -> Result<(), ChunkError> {
        let Self { min, avg, max } = *self;
        let ok = min >= 64
            && avg >= 256
            && max >= 1024
            && min <= avg
            && avg <= max
            && max <= MAX_CHUNK_LEN
            && min % 2 == 0
            && avg % 2 == 0
            && max % 2 == 0;
        if ok {
            Ok(())
        } else {
            Err(ChunkError::BadParams { min, avg, max })
        }
    }
}

/// One chunk cut from a payload, with its raw bytes.
#[derive(Debug, Clone)]
pub struct RawChunk {
    /// BLAKE3 of `data`.
    pub id: ChunkId,
    /// Offset in the payload.
    pub offset: u64,
    /// The bytes.
    pub data: Vec<u8>,
}

/// Streams chunks out of any reader, holding at most `max` bytes at a time,
/// and hashes the whole payload along the way.
pub struct Chunker<R: Read> {
    inner: fastcdc::v2020::StreamCDC<R>,
    payload: blake3::Hasher,
    size: u64,
}

impl<R: Read> Chunker<R> {
    /// Starts chunking `reader`.
    ///
    /// # Errors
    /// [`ChunkError::BadParams`].
    pub fn new(reader: R, params: ChunkerParams) -> Result<Self, ChunkError> {
        params.validate()?;
        Ok(Self {
            inner: fastcdc::v2020::StreamCDC::new(
                reader,
                params.min as usize,
                params.avg as usize,
                params.max as usize,
            ),
            payload: blake3::Hasher::new(),
            size: 0,
        })
    }

    /// The next chunk, or `None` at the end of the payload.
    ///
    /// # Errors
    /// [`ChunkError::Io`] when the reader fails.
    pub fn next_chunk(&mut self) -> Result<Option<RawChunk>, ChunkError> {
        match self.inner.next() {
            None => Ok(None),
            Some(Err(e)) => Err(ChunkError::Io(e.into())),
            Some(Ok(c)) => {
                self.payload.update(&c.data);
                self.size += c.data.len() as u64;
                Ok(Some(RawChunk {
                    id: ChunkId::digest(&c.data),
                    offset: c.offset,
                    data: c.data,
                }))
            }
        }
    }

    /// The payload's size and BLAKE3, once every chunk has been taken.
    pub fn finish(self) -> (u64, PayloadHash) {
        (self.size, PayloadHash::from(self.payload.finalize()))
    }
}

/// How a chunk's bytes are stored or sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[repr(u8)]
pub enum Encoding {
    /// The raw bytes.
    Raw = 0,
    /// A zstd frame that inflates to the raw bytes.
    Zstd = 1,
}

impl Encoding {
    /// Parses the one-byte tag used in bundles and stores.
    ///
    /// # Errors
    /// [`ChunkError::UnknownEncoding`].
    pub fn from_tag(tag: u8) -> Result<Self, ChunkError> {
        match tag {
            0 => Ok(Self::Raw),
            1 => Ok(Self::Zstd),
            t => Err(ChunkError::UnknownEncoding(t)),
        }
    }
}

/// The zstd level used for chunks: fast enough for a Raspberry Pi to
/// recompress, and most of the gain of higher levels on firmware images.
pub const ZSTD_LEVEL: i32 = 3;

/// Compresses `raw` when that saves bytes, else keeps it raw.
pub fn encode_chunk(raw: &[u8]) -> (Encoding, Vec<u8>) {
    match zstd::bulk::compress(raw, ZSTD_LEVEL) {
        Ok(z) if z.len() < raw.len() => (Encoding::Zstd, z),
        _ => (Encoding::Raw, raw.to_vec()),
    }
}

/// Recovers a chunk's raw bytes and checks them against `id` and the
/// declared length. Decompression never produces more than `declared`
/// bytes, so a zstd bomb costs at most one chunk of memory.
///
/// # Errors
/// [`ChunkError::Decompress`], [`ChunkError::LengthMismatch`] or
/// [`ChunkError::HashMismatch`].
pub fn decode_chunk(
    encoding: Encoding,
    stored: &[u8],
    id: &ChunkId,
    declared: u32,
) -> Result<Vec<u8>, ChunkError> {
    open_chunk(encoding, stored, id, declared).map(Cow::into_owned)
}

/// [`decode_chunk`] without the copy of a raw chunk: its raw bytes are the
/// stored ones, checked where they lie. Every chunk a device receives is
/// checked once on arrival and again when it is installed, so the copy
/// was a chunk-sized allocation each time for nothing.
///
/// # Errors
/// As [`decode_chunk`].
pub fn open_chunk<'a>(
    encoding: Encoding,
    stored: &'a [u8],
    id: &ChunkId,
    declared: u32,
) -> Result<Cow<'a, [u8]>, ChunkError> {
    let raw = inflate_chunk(encoding, stored, declared)?;
    verify_chunk(&raw, id, declared.min(MAX_CHUNK_LEN))?;
    Ok(raw)
}

/// [`open_chunk`] without the hash: the raw bytes, checked against the
/// declared length only, for a caller that hashes them itself anyway
/// ([`crate::manifest::PayloadVerifier`] checks each chunk's id as it
/// goes). Installing a payload used to hash every chunk twice against
/// its id and the whole payload once: with a thousand simulated devices
/// committing together on one host, BLAKE3 was the function sampled most.
///
/// # Errors
/// [`ChunkError::Decompress`] or [`ChunkError::LengthMismatch`].
pub fn inflate_chunk(
    encoding: Encoding,
    stored: &[u8],
    declared: u32,
) -> Result<Cow<'_, [u8]>, ChunkError> {
    let declared = declared.min(MAX_CHUNK_LEN);
    let raw = match encoding {
        Encoding::Raw => Cow::Borrowed(stored),
        Encoding::Zstd => Cow::Owned(
            zstd::bulk::Decompressor::new()
                .and_then(|mut d| d.decompress(stored, declared as usize))
                .map_err(|e| ChunkError::Decompress {
                    declared,
                    reason: e.to_string(),
                })?,
        ),
    };
    if raw.len() != declared as usize {
        return Err(ChunkError::LengthMismatch {
            declared,
            actual: raw.len(),
        });
    }
    Ok(raw)
}

/// Checks raw chunk bytes against their id and declared length.
///
/// # Errors
/// [`ChunkError::LengthMismatch`] or [`ChunkError::HashMismatch`].
pub fn verify_chunk(raw: &[u8], id: &ChunkId, declared: u32) -> Result<(), ChunkError> {
    if raw.len() != declared as usize {
        return Err(ChunkError::LengthMismatch {
            declared,
            actual: raw.len(),
        });
    }
    let actual = ChunkId::digest(raw);
    if &actual != id {
        return Err(ChunkError::HashMismatch {
            expected: *id,
            actual,
        });
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Deterministic pseudo-random bytes (xorshift), so tests need no rand.
    pub(crate) fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    fn cut(data: &[u8]) -> Vec<RawChunk> {
        let mut c = Chunker::new(data, ChunkerParams::default()).unwrap();
        let mut out = Vec::new();
        while let Some(ch) = c.next_chunk().unwrap() {
            out.push(ch);
        }
        let (size, hash) = c.finish();
        assert_eq!(size, data.len() as u64);
        assert_eq!(hash, PayloadHash::digest(data));
        out
    }

    #[test]
    fn chunks_reassemble_to_the_payload_at_boundary_sizes() {
        let p = ChunkerParams::default();
        let sizes = [
            0,
            1,
            p.min as usize - 1,
            p.min as usize,
            p.max as usize,
            p.max as usize + 1,
            3 * 1024 * 1024 + 17,
        ];
        for size in sizes {
            let data = noise(size, size as u64 + 3);
            let chunks = cut(&data);
            let joined: Vec<u8> = chunks.iter().flat_map(|c| c.data.clone()).collect();
            assert_eq!(joined, data, "size {size}");
            for c in &chunks {
                assert!(c.data.len() <= p.max as usize);
                assert_eq!(c.id, ChunkId::digest(&c.data));
            }
            if size == 0 {
                assert!(chunks.is_empty());
            }
            if size > 0 && size <= p.min as usize {
                assert_eq!(chunks.len(), 1, "size {size}");
            }
            if size > p.max as usize {
                assert!(chunks.len() >= 2, "size {size}");
            }
            if size > 3 * 1024 * 1024 {
                assert!(chunks.len() > 12, "only {} chunks", chunks.len());
            }
        }
    }

    #[test]
    fn inserting_bytes_in_the_middle_changes_only_a_few_chunks() {
        let a = noise(8 * 1024 * 1024, 42);
        let mut b = a.clone();
        b.splice(4 * 1024 * 1024..4 * 1024 * 1024, *b"a few inserted bytes");
        let ca: std::collections::HashSet<_> = cut(&a).into_iter().map(|c| c.id).collect();
        let cb = cut(&b);
        let changed = cb.iter().filter(|c| !ca.contains(&c.id)).count();
        assert!(ca.len() > 60, "expected many chunks, got {}", ca.len());
        assert!(changed <= 2, "{changed} of {} chunks changed", cb.len());
    }

    #[test]
    fn rejects_parameters_fastcdc_would_only_debug_assert() {
        for (min, avg, max) in [
            (0, 0, 0),
            (63, 256, 1024),
            (64, 256, 1023),
            (1 << 20, 512, 1 << 21),
        ] {
            assert!(ChunkerParams { min, avg, max }.validate().is_err());
        }
        assert!(ChunkerParams {
            min: 64,
            avg: 256,
            max: MAX_CHUNK_LEN + 2
        }
        .validate()
        .is_err());
    }

    #[test]
    fn compressible_chunks_are_stored_compressed_and_round_trip() {
        let raw = vec![7u8; 100_000];
        let (enc, stored) = encode_chunk(&raw);
        assert_eq!(enc, Encoding::Zstd);
        assert!(stored.len() < 1000);
        let id = ChunkId::digest(&raw);
        assert_eq!(decode_chunk(enc, &stored, &id, 100_000).unwrap(), raw);
        let random = noise(50_000, 9);
        assert_eq!(encode_chunk(&random).0, Encoding::Raw);
    }

    #[test]
    fn a_raw_chunk_is_checked_where_it_lies_and_a_bad_one_still_refused() {
        let raw = noise(50_000, 10);
        let id = ChunkId::digest(&raw);
        let opened = open_chunk(Encoding::Raw, &raw, &id, 50_000).unwrap();
        assert!(matches!(opened, Cow::Borrowed(b) if b.as_ptr() == raw.as_ptr()));
        let mut bad = raw.clone();
        bad[7] ^= 1;
        assert!(matches!(
            open_chunk(Encoding::Raw, &bad, &id, 50_000),
            Err(ChunkError::HashMismatch { .. })
        ));
        let (enc, stored) = encode_chunk(&vec![3u8; 50_000]);
        let id = ChunkId::digest(&vec![3u8; 50_000]);
        assert_eq!(open_chunk(enc, &stored, &id, 50_000).unwrap().len(), 50_000);
    }

    #[test]
    fn a_decompression_bomb_is_capped_at_the_declared_length() {
        let raw = vec![0u8; 4 * 1024 * 1024];
        let (_, stored) = encode_chunk(&raw);
        let id = ChunkId::digest(&raw[..1024]);
        let err = decode_chunk(Encoding::Zstd, &stored, &id, 1024).unwrap_err();
        assert!(matches!(err, ChunkError::Decompress { .. }), "{err}");
    }

    #[test]
    fn a_chunk_with_wrong_bytes_is_a_hash_mismatch() {
        let raw = noise(1000, 1);
        let id = ChunkId::digest(&raw);
        let mut bad = raw.clone();
        bad[10] ^= 1;
        assert!(matches!(
            decode_chunk(Encoding::Raw, &bad, &id, 1000),
            Err(ChunkError::HashMismatch { .. })
        ));
        assert!(matches!(
            decode_chunk(Encoding::Raw, &raw, &id, 999),
            Err(ChunkError::LengthMismatch { .. })
        ));
    }
}
