//! The bundle file: one self-contained, signed, chunked release.
//!
//! ```text
//! "MSHOTA\0\x01"                        8-byte magic (format version 1)
//! u32 BE length, BundleHeader           codec frame: manifest bytes + signed release
//! per manifest chunk, in payload order:
//!   u8 encoding (0 raw, 1 zstd), u32 BE stored length, stored bytes
//! ```
//!
//! Chunks follow the manifest order, so a bundle is extracted and verified
//! in one streaming pass holding one chunk at a time. Chunk ids are always
//! the BLAKE3 of the raw bytes; compression is a storage detail.

use std::io::{Read, Write};

use serde::{Deserialize, Serialize};

use crate::chunking::{decode_chunk, ChunkError, Encoding, MAX_CHUNK_LEN};
use crate::codec::{self, CodecError, Kind, Message};
use crate::ids::{ManifestId, ReleaseId};
use crate::manifest::{ChunkRef, Manifest, ManifestError};
use crate::release::Release;
use crate::trust::{Role, Signed, TrustRoot};
use crate::verify::VerifyError;

/// First bytes of every bundle.
pub const MAGIC: [u8; 8] = *b"MSHOTA\0\x01";

/// zstd never expands incompressible data by more than this for chunks of
/// our sizes; anything larger is refused before it is read.
const MAX_STORED_LEN: u32 = MAX_CHUNK_LEN + MAX_CHUNK_LEN / 64 + 1024;

/// The header frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BundleHeader {
    /// The manifest's canonical encoding (its BLAKE3 is the manifest id).
    #[serde(with = "serde_bytes")]
    pub manifest: Vec<u8>,
    /// The release, signed by the release role.
    pub release: Signed<Release>,
}

impl Message for BundleHeader {
    const KIND: Kind = Kind::BundleHeader;
}

/// Everything that can be wrong with a bundle, each with where it is.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// The file does not start with the bundle magic.
    #[error("not a meshota bundle (bad magic bytes); was it made by `meshota bundle create`?")]
    BadMagic,
    /// The header frame is unreadable or too large.
    #[error("bundle header: {0}")]
    Header(#[from] CodecError),
    /// The manifest is inconsistent.
    #[error("bundle manifest: {0}")]
    Manifest(#[from] ManifestError),
    /// The release signatures or trust checks failed.
    #[error("release signature check failed: {0}")]
    Release(#[from] VerifyError),
    /// The release and manifest disagree.
    #[error("release does not match the manifest: {0}")]
    ReleaseMismatch(String),
    /// The file ends before the last chunk.
    #[error("bundle is truncated at byte {bundle_offset}: chunk {index} of {total} is missing or incomplete")]
    Truncated {
        /// Chunk position.
        index: usize,
        /// Chunks the manifest lists.
        total: usize,
        /// Where the file ended (or the record began).
        bundle_offset: u64,
    },
    /// A chunk record is corrupt or does not match the manifest.
    #[error("chunk {index} (payload offset {payload_offset}, bundle offset {bundle_offset}) is tampered or corrupt: {source}")]
    ChunkCorrupt {
        /// Chunk position.
        index: usize,
        /// Its offset in the payload.
        payload_offset: u64,
        /// Offset of its record in the bundle file.
        bundle_offset: u64,
        /// What is wrong.
        #[source]
        source: ChunkError,
    },
    /// A record claims more stored bytes than any valid chunk can have.
    #[error("chunk {index} at bundle offset {bundle_offset} claims {stored} stored bytes, above the {MAX_STORED_LEN}-byte limit")]
    StoredTooLarge {
        /// Chunk position.
        index: usize,
        /// Offset of its record.
        bundle_offset: u64,
        /// Claimed length.
        stored: u32,
    },
    /// Bytes follow the last chunk.
    #[error("unexpected data after the last chunk at bundle offset {bundle_offset}")]
    TrailingData {
        /// Where the extra bytes start.
        bundle_offset: u64,
    },
    /// Every chunk matched but the payload hash did not.
    #[error("payload hash mismatch after all chunks verified")]
    PayloadHash,
    /// Reading or writing failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// Writes a bundle: header first, then chunk records in manifest order.
pub struct BundleWriter<W: Write> {
    out: W,
}

impl<W: Write> BundleWriter<W> {
    /// Writes the magic and header.
    ///
    /// # Errors
    /// [`BundleError::Header`] or [`BundleError::Io`].
    pub fn new(mut out: W, header: &BundleHeader) -> Result<Self, BundleError> {
        out.write_all(&MAGIC)?;
        codec::write_frame(&mut out, header)?;
        Ok(Self { out })
    }

    /// Appends one stored chunk record.
    ///
    /// # Errors
    /// [`BundleError::Io`].
    pub fn write_chunk(&mut self, encoding: Encoding, stored: &[u8]) -> Result<(), BundleError> {
        let len = u32::try_from(stored.len()).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "stored chunk too large")
        })?;
        self.out.write_all(&[encoding as u8])?;
        self.out.write_all(&len.to_be_bytes())?;
        self.out.write_all(stored)?;
        Ok(())
    }

    /// Flushes and returns the writer.
    ///
    /// # Errors
    /// [`BundleError::Io`].
    pub fn finish(mut self) -> Result<W, BundleError> {
        self.out.flush()?;
        Ok(self.out)
    }
}

/// One verified chunk out of a bundle.
#[derive(Debug)]
pub struct BundleChunk {
    /// Position in the manifest.
    pub index: usize,
    /// Offset in the payload.
    pub payload_offset: u64,
    /// The manifest entry.
    pub chunk: ChunkRef,
    /// How it was stored in the bundle.
    pub encoding: Encoding,
    /// The stored bytes (compressed or raw), as a store would keep them.
    pub stored: Vec<u8>,
    /// The raw bytes, verified against the chunk id.
    pub raw: Vec<u8>,
}

/// Reads a bundle, verifying as it goes.
pub struct BundleReader<R: Read> {
    input: R,
    header: BundleHeader,
    manifest: Manifest,
    manifest_id: ManifestId,
    next: usize,
    payload_offset: u64,
    bundle_offset: u64,
    whole: blake3::Hasher,
}

impl<R: Read> BundleReader<R> {
    /// Reads and checks the magic, header and manifest (not yet the
    /// signatures: see [`Self::verify_release`]).
    ///
    /// # Errors
    /// [`BundleError`].
    pub fn open(mut input: R) -> Result<Self, BundleError> {
        let mut magic = [0u8; 8];
        input.read_exact(&mut magic).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                BundleError::BadMagic
            } else {
                BundleError::Io(e)
            }
        })?;
        if magic != MAGIC {
            return Err(BundleError::BadMagic);
        }
        let raw = codec::read_raw_frame(&mut input, Kind::BundleHeader)?;
        let header: BundleHeader = codec::decode(&raw)?;
        let (manifest_id, manifest) = Manifest::decode(&header.manifest)?;
        Ok(Self {
            input,
            bundle_offset: (MAGIC.len() + 4 + raw.len()) as u64,
            header,
            manifest,
            manifest_id,
            next: 0,
            payload_offset: 0,
            whole: blake3::Hasher::new(),
        })
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }
    /// The manifest id (BLAKE3 of the bytes in the header).
    pub fn manifest_id(&self) -> ManifestId {
        self.manifest_id
    }
    /// The encoded manifest, as carried.
    pub fn manifest_bytes(&self) -> &[u8] {
        &self.header.manifest
    }
    /// The signed release.
    pub fn signed_release(&self) -> &Signed<Release> {
        &self.header.release
    }
    /// The release id.
    pub fn release_id(&self) -> ReleaseId {
        self.header.release.id()
    }

    /// Checks the release's signatures against `root`'s release role, and
    /// that the release pins this manifest and agrees with it.
    ///
    /// # Errors
    /// [`BundleError::Release`] or [`BundleError::ReleaseMismatch`].
    pub fn verify_release(&self, root: &TrustRoot) -> Result<Release, BundleError> {
        let release = self.header.release.verify(Role::Release, &root.release)?;
        release_matches_manifest(&release, self.manifest_id, &self.manifest)?;
        Ok(release)
    }

    /// The next verified chunk, or `None` after the last one (at which
    /// point trailing data and the payload hash have been checked).
    ///
    /// # Errors
    /// [`BundleError`] naming the chunk and offsets.
    pub fn next_chunk(&mut self) -> Result<Option<BundleChunk>, BundleError> {
        let total = self.manifest.chunks.len();
        let index = self.next;
        let record_at = self.bundle_offset;
        let Some(chunk) = self.manifest.chunks.get(index).copied() else {
            return self.finish().map(|()| None);
        };
        let truncated = |e: std::io::Error| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                BundleError::Truncated {
                    index,
                    total,
                    bundle_offset: record_at,
                }
            } else {
                BundleError::Io(e)
            }
        };
        let mut head = [0u8; 5];
        self.input.read_exact(&mut head).map_err(truncated)?;
        let corrupt = |source| BundleError::ChunkCorrupt {
            index,
            payload_offset: self.payload_offset,
            bundle_offset: record_at,
            source,
        };
        let encoding = Encoding::from_tag(head[0]).map_err(corrupt)?;
        let stored_len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]);
        if stored_len > MAX_STORED_LEN {
            return Err(BundleError::StoredTooLarge {
                index,
                bundle_offset: record_at,
                stored: stored_len,
            });
        }
        let mut stored = vec![0u8; stored_len as usize];
        self.input.read_exact(&mut stored).map_err(truncated)?;
        let raw = decode_chunk(encoding, &stored, &chunk.id, chunk.len).map_err(corrupt)?;
        self.whole.update(&raw);
        let out = BundleChunk {
            index,
            payload_offset: self.payload_offset,
            chunk,
            encoding,
            stored,
            raw,
        };
        self.next += 1;
        self.payload_offset += u64::from(chunk.len);
        self.bundle_offset += 5 + u64::from(stored_len);
        Ok(Some(out))
    }

    fn finish(&mut self) -> Result<(), BundleError> {
        let mut probe = [0u8; 1];
        loop {
            match self.input.read(&mut probe) {
                Ok(0) => break,
                Ok(_) => {
                    return Err(BundleError::TrailingData {
                        bundle_offset: self.bundle_offset,
                    })
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            }
        }
        if *self.whole.finalize().as_bytes() != *self.manifest.payload_hash.as_bytes() {
            return Err(BundleError::PayloadHash);
        }
        Ok(())
    }
}

/// Checks that a release pins `manifest_id` and repeats the manifest's
/// name, version, class and size, so neither can be swapped alone.
///
/// # Errors
/// [`BundleError::ReleaseMismatch`].
pub fn release_matches_manifest(
    release: &Release,
    manifest_id: ManifestId,
    manifest: &Manifest,
) -> Result<(), BundleError> {
    let mismatch = |what: &str| Err(BundleError::ReleaseMismatch(what.to_string()));
    if release.manifest_id != manifest_id {
        return mismatch("the release pins another manifest id");
    }
    if release.name != manifest.name
        || release.version != manifest.version
        || release.compatible != manifest.compatible
    {
        return mismatch("name, version or compatible differ");
    }
    if release.payload_size != manifest.payload_size {
        return mismatch("payload size differs");
    }
    Ok(())
}
