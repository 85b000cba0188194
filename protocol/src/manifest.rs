//! Manifests: the ordered list of chunks that make a payload, and a
//! streaming verifier that checks a payload against one.

use std::collections::BTreeMap;
use std::io::Write;

use serde::{Deserialize, Serialize};

use crate::chunking::{ChunkerParams, MAX_CHUNK_LEN};
use crate::codec::{self, CodecError, Kind, Message};
use crate::ids::{ChunkId, Compatible, ManifestId, PayloadHash};

/// Most chunks one manifest may list (about 60 GiB at the default average).
pub const MAX_CHUNKS: usize = 1_000_000;

/// What the payload is, which tells the installer how to apply it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InstallKind {
    /// A raw filesystem or disk image written to the inactive slot.
    Image,
    /// An archive unpacked into the inactive slot.
    Archive,
    /// A single file placed in the inactive slot.
    File,
}

impl std::str::FromStr for InstallKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "image" => Ok(Self::Image),
            "archive" => Ok(Self::Archive),
            "file" => Ok(Self::File),
            other => Err(format!(
                "unknown install kind {other:?}: expected image, archive or file"
            )),
        }
    }
}

/// One entry in a manifest's chunk list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRef {
    /// BLAKE3 of the raw bytes.
    pub id: ChunkId,
    /// Raw length in bytes.
    pub len: u32,
}

/// Describes one payload, chunk by chunk. Pinned by a [`ManifestId`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Product or image name.
    pub name: String,
    /// Semantic version of the payload.
    pub version: semver::Version,
    /// Device class that may install it.
    pub compatible: Compatible,
    /// Total payload bytes.
    pub payload_size: u64,
    /// BLAKE3 of the whole payload.
    pub payload_hash: PayloadHash,
    /// How it was cut.
    pub chunker: ChunkerParams,
    /// The chunks, in payload order.
    pub chunks: Vec<ChunkRef>,
    /// How to install it.
    pub kind: InstallKind,
    /// Creation time, seconds since the Unix epoch.
    pub created_at: u64,
    /// Free-form metadata (build id, git revision …).
    pub meta: BTreeMap<String, String>,
}

impl Message for Manifest {
    const KIND: Kind = Kind::Manifest;
}

/// Why a manifest is internally inconsistent.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Chunker parameters are out of range.
    #[error(transparent)]
    Params(#[from] crate::chunking::ChunkError),
    /// More chunks than [`MAX_CHUNKS`].
    #[error("{0} chunks exceed the limit of {MAX_CHUNKS}")]
    TooManyChunks(usize),
    /// A chunk is empty or longer than the declared maximum.
    #[error("chunk {index} has length {len}, outside 1..={max}")]
    BadChunkLen {
        /// Position in the list.
        index: usize,
        /// Declared length.
        len: u32,
        /// The maximum allowed.
        max: u32,
    },
    /// Chunk lengths do not add up to the payload size.
    #[error("chunk lengths add up to {sum} bytes but payload_size is {declared}")]
    SizeMismatch {
        /// Sum of chunk lengths.
        sum: u64,
        /// Declared payload size.
        declared: u64,
    },
    /// The manifest could not be encoded or decoded.
    #[error(transparent)]
    Codec(#[from] CodecError),
}

impl Manifest {
    /// Checks that the manifest is self-consistent, so later code may size
    /// buffers from it.
    ///
    /// # Errors
    /// The first [`ManifestError`] found.
    pub fn validate(&self) -> Result<(), ManifestError> {
        self.chunker.validate()?;
        if self.chunks.len() > MAX_CHUNKS {
            return Err(ManifestError::TooManyChunks(self.chunks.len()));
        }
        let max = self.chunker.max.min(MAX_CHUNK_LEN);
        let mut sum = 0u64;
        for (index, c) in self.chunks.iter().enumerate() {
            if c.len == 0 || c.len > max {
                return Err(ManifestError::BadChunkLen {
                    index,
                    len: c.len,
                    max,
                });
            }
            sum += u64::from(c.len);
        }
        if sum != self.payload_size {
            return Err(ManifestError::SizeMismatch {
                sum,
                declared: self.payload_size,
            });
        }
        Ok(())
    }

    /// The canonical encoding, whose BLAKE3 is the [`ManifestId`].
    ///
    /// # Errors
    /// [`ManifestError::Codec`] if it exceeds the manifest size limit.
    pub fn encode(&self) -> Result<Vec<u8>, ManifestError> {
        Ok(codec::encode(self)?)
    }

    /// Decodes and validates a manifest, and returns it with its id (the
    /// BLAKE3 of exactly these bytes, so a caller compares it against the
    /// id a signed release pins).
    ///
    /// # Errors
    /// [`ManifestError`] for undecodable or inconsistent manifests.
    pub fn decode(bytes: &[u8]) -> Result<(ManifestId, Manifest), ManifestError> {
        let m: Manifest = codec::decode(bytes)?;
        m.validate()?;
        Ok((ManifestId::digest(bytes), m))
    }

    /// The id of the canonical encoding.
    ///
    /// # Errors
    /// As [`Manifest::encode`].
    pub fn id(&self) -> Result<ManifestId, ManifestError> {
        Ok(ManifestId::digest(&self.encode()?))
    }

    /// Byte offset of each chunk in the payload.
    pub fn offsets(&self) -> impl Iterator<Item = (u64, &ChunkRef)> {
        self.chunks.iter().scan(0u64, |off, c| {
            let at = *off;
            *off += u64::from(c.len);
            Some((at, c))
        })
    }

    /// Distinct chunk ids, for stores and schedulers that fetch each once.
    pub fn unique_chunks(&self) -> BTreeMap<ChunkId, u32> {
        self.chunks.iter().map(|c| (c.id, c.len)).collect()
    }
}

/// Why a payload does not match its manifest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    /// A chunk's bytes do not hash to the listed id.
    #[error("payload chunk {index} at offset {offset} does not match the manifest (expected {expected}, got {actual})")]
    ChunkMismatch {
        /// Position in the chunk list.
        index: usize,
        /// Payload offset of the chunk.
        offset: u64,
        /// Listed id.
        expected: ChunkId,
        /// Id of what was seen.
        actual: ChunkId,
    },
    /// More bytes than the manifest lists.
    #[error("payload is longer than the manifest's {expected} bytes")]
    TooLong {
        /// Declared size.
        expected: u64,
    },
    /// Fewer bytes than the manifest lists.
    #[error("payload is truncated: {got} of {expected} bytes")]
    Truncated {
        /// Bytes seen.
        got: u64,
        /// Declared size.
        expected: u64,
    },
    /// All chunks matched but the whole-payload hash did not.
    #[error("payload hash mismatch: expected {expected}, got {actual}")]
    PayloadHash {
        /// Declared hash.
        expected: PayloadHash,
        /// Hash of what was seen.
        actual: PayloadHash,
    },
}

/// Checks a payload against a manifest as bytes stream through it, holding
/// at most one chunk. Use it as a [`Write`] sink or call [`Self::update`].
pub struct PayloadVerifier<'m> {
    manifest: &'m Manifest,
    index: usize,
    offset: u64,
    buf: Vec<u8>,
    whole: blake3::Hasher,
    /// The first mismatch: every later call fails with it.
    failed: Option<PayloadError>,
}

impl<'m> PayloadVerifier<'m> {
    /// Starts verifying against a validated manifest.
    pub fn new(manifest: &'m Manifest) -> Self {
        Self {
            manifest,
            index: 0,
            offset: 0,
            buf: Vec::new(),
            whole: blake3::Hasher::new(),
            failed: None,
        }
    }

    /// Feeds the next bytes of the payload.
    ///
    /// # Errors
    /// The first [`PayloadError`] found; later calls keep failing.
    pub fn update(&mut self, mut data: &[u8]) -> Result<(), PayloadError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        while !data.is_empty() {
            let Some(current) = self.manifest.chunks.get(self.index) else {
                return Err(PayloadError::TooLong {
                    expected: self.manifest.payload_size,
                });
            };
            let want = current.len as usize - self.buf.len();
            // A whole chunk handed over at once (how `write_payload`
            // feeds it) is checked where it lies, not copied first.
            if self.buf.is_empty() && data.len() >= want {
                let (chunk, rest) = data.split_at(want);
                self.check(current.id, chunk)?;
                data = rest;
                continue;
            }
            let take = want.min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buf.len() == current.len as usize {
                let mut buf = std::mem::take(&mut self.buf);
                let checked = self.check(current.id, &buf);
                buf.clear();
                self.buf = buf;
                checked?;
            }
        }
        Ok(())
    }

    /// Checks the whole of the current chunk and moves on to the next.
    fn check(&mut self, expected: ChunkId, chunk: &[u8]) -> Result<(), PayloadError> {
        let actual = ChunkId::digest(chunk);
        if actual != expected {
            let e = PayloadError::ChunkMismatch {
                index: self.index,
                offset: self.offset,
                expected,
                actual,
            };
            self.failed = Some(e.clone());
            return Err(e);
        }
        self.whole.update(chunk);
        self.offset += chunk.len() as u64;
        self.index += 1;
        Ok(())
    }

    /// Ends verification.
    ///
    /// # Errors
    /// [`PayloadError::Truncated`] or [`PayloadError::PayloadHash`].
    pub fn finish(self) -> Result<(), PayloadError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        if self.index != self.manifest.chunks.len() {
            return Err(PayloadError::Truncated {
                got: self.offset + self.buf.len() as u64,
                expected: self.manifest.payload_size,
            });
        }
        let actual = PayloadHash::from(self.whole.finalize());
        if actual != self.manifest.payload_hash {
            return Err(PayloadError::PayloadHash {
                expected: self.manifest.payload_hash,
                actual,
            });
        }
        Ok(())
    }
}

impl Write for PayloadVerifier<'_> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.update(data)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Cuts a payload into chunks and builds its manifest in one pass,
/// handing every chunk to `on_chunk` (a bundle writer, a store, or nothing).
///
/// # Errors
/// [`ManifestError`] from chunking or validation, or whatever `on_chunk`
/// returns, converted by the caller's error type.
pub fn build_manifest<R, E>(
    reader: R,
    template: ManifestTemplate,
    mut on_chunk: impl FnMut(&crate::chunking::RawChunk) -> Result<(), E>,
) -> Result<Manifest, E>
where
    R: std::io::Read,
    E: From<ManifestError>,
{
    let mut chunker = crate::chunking::Chunker::new(reader, template.chunker)
        .map_err(|e| E::from(ManifestError::from(e)))?;
    let mut chunks = Vec::new();
    while let Some(c) = chunker
        .next_chunk()
        .map_err(|e| E::from(ManifestError::from(e)))?
    {
        on_chunk(&c)?;
        chunks.push(ChunkRef {
            id: c.id,
            len: c.data.len() as u32,
        });
        if chunks.len() > MAX_CHUNKS {
            return Err(E::from(ManifestError::TooManyChunks(chunks.len())));
        }
    }
    let (payload_size, payload_hash) = chunker.finish();
    let m = Manifest {
        name: template.name,
        version: template.version,
        compatible: template.compatible,
        payload_size,
        payload_hash,
        chunker: template.chunker,
        chunks,
        kind: template.kind,
        created_at: template.created_at,
        meta: template.meta,
    };
    m.validate().map_err(E::from)?;
    Ok(m)
}

/// Everything in a manifest that does not come from the payload bytes.
#[derive(Debug, Clone)]
pub struct ManifestTemplate {
    /// See [`Manifest::name`].
    pub name: String,
    /// See [`Manifest::version`].
    pub version: semver::Version,
    /// See [`Manifest::compatible`].
    pub compatible: Compatible,
    /// See [`Manifest::chunker`].
    pub chunker: ChunkerParams,
    /// See [`Manifest::kind`].
    pub kind: InstallKind,
    /// See [`Manifest::created_at`].
    pub created_at: u64,
    /// See [`Manifest::meta`].
    pub meta: BTreeMap<String, String>,
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn template() -> ManifestTemplate {
        ManifestTemplate {
            name: "rootfs".into(),
            version: semver::Version::new(1, 2, 3),
            compatible: Compatible::new("rpi4").unwrap(),
            chunker: ChunkerParams::default(),
            kind: InstallKind::Image,
            created_at: 1_700_000_000,
            meta: BTreeMap::new(),
        }
    }

    pub(crate) fn manifest_for(data: &[u8]) -> Manifest {
        build_manifest::<_, ManifestError>(data, template(), |_| Ok(())).unwrap()
    }

    #[test]
    fn verifier_accepts_the_payload_in_any_write_sizes() {
        let data = crate::chunking::tests::noise(1_500_000, 5);
        let m = manifest_for(&data);
        for step in [1usize, 4096, 100_000, 2_000_000] {
            let mut v = PayloadVerifier::new(&m);
            for part in data.chunks(step) {
                v.update(part).unwrap();
            }
            v.finish().unwrap();
        }
    }

    #[test]
    fn verifier_names_the_chunk_and_offset_of_a_flipped_byte() {
        let data = crate::chunking::tests::noise(1_000_000, 6);
        let m = manifest_for(&data);
        let (off, _) = m.offsets().nth(3).unwrap();
        let mut bad = data.clone();
        bad[off as usize + 5] ^= 0x80;
        let mut v = PayloadVerifier::new(&m);
        let err = v.update(&bad).unwrap_err();
        assert!(
            matches!(err, PayloadError::ChunkMismatch { index: 3, offset, .. } if offset == off),
            "{err}"
        );
        // The mismatch sticks: good bytes fed after it do not make the
        // payload pass, whether fed whole or a few at a time.
        assert_eq!(v.update(&data[off as usize..]), Err(err.clone()));
        assert_eq!(
            v.update(&data[off as usize..off as usize + 3]),
            Err(err.clone())
        );
        assert_eq!(v.finish(), Err(err));
    }

    #[test]
    fn verifier_reports_truncation_and_extra_bytes() {
        let data = crate::chunking::tests::noise(300_000, 7);
        let m = manifest_for(&data);
        let mut v = PayloadVerifier::new(&m);
        v.update(&data[..299_000]).unwrap();
        assert!(matches!(v.finish(), Err(PayloadError::Truncated { .. })));
        let mut v = PayloadVerifier::new(&m);
        let mut long = data.clone();
        long.push(0);
        assert!(matches!(v.update(&long), Err(PayloadError::TooLong { .. })));
    }

    #[test]
    fn manifest_id_is_the_hash_of_its_canonical_encoding() {
        let m = manifest_for(b"hello world");
        let bytes = m.encode().unwrap();
        let (id, back) = Manifest::decode(&bytes).unwrap();
        assert_eq!(id, m.id().unwrap());
        assert_eq!(back, m);
        assert_eq!(back.encode().unwrap(), bytes);
    }

    #[test]
    fn inconsistent_manifests_are_refused() {
        let mut m = manifest_for(&crate::chunking::tests::noise(100_000, 8));
        m.payload_size += 1;
        assert!(matches!(
            Manifest::decode(&m.encode().unwrap()),
            Err(ManifestError::SizeMismatch { .. })
        ));
        let mut m = manifest_for(b"abc");
        m.chunks[0].len = 0;
        assert!(matches!(
            m.validate(),
            Err(ManifestError::BadChunkLen { .. })
        ));
    }
}
