//! The one codec: every byte meshota puts on a wire or a disk goes through here.
//!
//! A message is CBOR inside a versioned envelope, itself the CBOR array
//! `[version, kind, body-bytes]`. The envelope is read first, so the
//! version and kind are checked before a byte of the body is decoded, and
//! the total size is checked against the kind's limit before anything is
//! decoded at all: serde_cbor has a nesting limit but no size cap, and it
//! is unmaintained (RUSTSEC-2021-0127), so we never hand it unbounded input.

use std::fmt;
use std::io::{Read, Write};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The envelope version this build writes and accepts.
pub const WIRE_VERSION: u16 = 1;

/// Bytes the envelope adds around a body, at most.
const ENVELOPE_OVERHEAD: usize = 16;

/// Every kind of message, each with its own size limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Kind {
    /// A [`crate::TrustRoot`].
    TrustRoot,
    /// A [`crate::Manifest`].
    Manifest,
    /// A [`crate::Release`].
    Release,
    /// A [`crate::RolloutGate`].
    RolloutGate,
    /// A [`crate::Signed`] document (body plus signatures).
    Signed,
    /// An [`crate::Announcement`].
    Announcement,
    /// A [`crate::Command`].
    Command,
    /// A signed device report ([`crate::SignedReport`]).
    SignedReport,
    /// The body of a device report ([`crate::Report`]).
    Report,
    /// A bundle file header ([`crate::bundle::BundleHeader`]).
    BundleHeader,
    /// A request between peers ([`crate::PeerRequest`]).
    PeerRequest,
    /// A response between peers ([`crate::PeerResponse`]).
    PeerResponse,
    /// A device's persisted agent state (node-local).
    LocalState,
    /// A device login token ([`crate::auth::DeviceToken`]).
    DeviceToken,
    /// Signed trust roots, oldest first ([`crate::TrustChain`]).
    TrustChain,
}

impl Kind {
    /// The number written in the envelope.
    pub const fn code(self) -> u16 {
        match self {
            Kind::TrustRoot => 1,
            Kind::Manifest => 2,
            Kind::Release => 3,
            Kind::RolloutGate => 4,
            Kind::Signed => 5,
            Kind::Announcement => 6,
            Kind::Command => 7,
            Kind::SignedReport => 8,
            Kind::Report => 9,
            Kind::BundleHeader => 10,
            Kind::PeerRequest => 11,
            Kind::PeerResponse => 12,
            Kind::LocalState => 13,
            Kind::DeviceToken => 14,
            Kind::TrustChain => 15,
        }
    }

    /// The largest encoded message of this kind that will be decoded.
    ///
    /// Limits follow from the largest legitimate content: a manifest lists
    /// up to [`crate::MAX_CHUNKS`] chunks of about 40 bytes each; a peer
    /// response carries one chunk of at most [`crate::MAX_CHUNK_LEN`].
    pub const fn max_size(self) -> usize {
        const KIB: usize = 1024;
        const MIB: usize = 1024 * KIB;
        match self {
            Kind::TrustRoot => 64 * KIB,
            Kind::Manifest => 48 * MIB,
            Kind::Release | Kind::RolloutGate | Kind::Command => 16 * KIB,
            Kind::Signed => 80 * KIB,
            Kind::Announcement => 256 * KIB,
            Kind::SignedReport => 32 * KIB,
            Kind::Report => 24 * KIB,
            Kind::BundleHeader => 48 * MIB + 256 * KIB,
            Kind::PeerRequest => 4 * KIB,
            Kind::PeerResponse => crate::MAX_CHUNK_LEN as usize + 64 * KIB,
            Kind::LocalState => MIB,
            // A device id (at most 128 bytes), a key and two times.
            Kind::DeviceToken => 512,
            // Roots of a few kilobytes each, up to `MAX_TRUST_CHAIN` of them.
            Kind::TrustChain => 512 * KIB,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// A message type that travels through the codec.
pub trait Message: Serialize + DeserializeOwned {
    /// Its kind, written in and checked against the envelope.
    const KIND: Kind;
}

/// Why bytes could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// Larger than the kind's limit; nothing was decoded.
    #[error("{kind} message of {size} bytes exceeds the {limit}-byte limit")]
    TooLarge {
        /// The expected kind.
        kind: Kind,
        /// The size offered.
        size: usize,
        /// The limit for that kind.
        limit: usize,
    },
    /// The envelope names a version this build does not speak.
    #[error("unsupported wire version {0} (this build speaks {WIRE_VERSION}); upgrade meshota")]
    UnsupportedVersion(u16),
    /// The envelope names another kind than the one expected.
    #[error("expected a {expected} message, found kind code {found}")]
    WrongKind {
        /// The kind the caller asked for.
        expected: Kind,
        /// The code found in the envelope.
        found: u16,
    },
    /// The bytes are not valid CBOR of the expected shape.
    #[error("malformed {kind} message: {reason}")]
    Malformed {
        /// The kind being decoded.
        kind: Kind,
        /// What the CBOR decoder said.
        reason: String,
    },
    /// Reading or writing a frame failed.
    #[error("i/o error while reading or writing a {kind} frame: {source}")]
    Io {
        /// The kind being read or written.
        kind: Kind,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

#[derive(Serialize)]
struct EnvelopeOut<'a>(u16, u16, #[serde(with = "serde_bytes")] &'a [u8]);

#[derive(Deserialize)]
struct EnvelopeIn<'a>(u16, u16, #[serde(borrow)] &'a serde_bytes::Bytes);

fn malformed(kind: Kind, e: impl fmt::Display) -> CodecError {
    CodecError::Malformed {
        kind,
        reason: e.to_string(),
    }
}

/// Encodes a message in its envelope.
///
/// # Errors
/// [`CodecError::TooLarge`] if the result would exceed the kind's limit,
/// so nothing is ever written that a peer would refuse to read.
pub fn encode<T: Message>(msg: &T) -> Result<Vec<u8>, CodecError> {
    let parts = encode_parts(msg)?;
    let mut out = Vec::with_capacity(parts.len());
    out.extend_from_slice(&parts.header);
    out.extend_from_slice(&parts.body);
    Ok(out)
}

/// A message encoded as [`encode`] does, in two pieces: the envelope's
/// header, then the message's own CBOR. Their concatenation is exactly
/// `encode`'s output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    /// The envelope up to its body: the array, version, kind and the
    /// body's byte-string header.
    pub header: Vec<u8>,
    /// The message's CBOR.
    pub body: Vec<u8>,
}

impl Encoded {
    /// The encoded size, header included.
    pub fn len(&self) -> usize {
        self.header.len() + self.body.len()
    }

    /// Never true: the header is at least four bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Encodes a message like [`encode`], without copying its body into the
/// envelope: a writer sends the header, then the body. A chunk answer's
/// body is the chunk; copying it into an envelope-sized buffer was one
/// chunk-sized allocation and copy per answer served (a tenth of the
/// `memmove` of a 1,000-device simulator run).
///
/// # Errors
/// As [`encode`].
pub fn encode_parts<T: Message>(msg: &T) -> Result<Encoded, CodecError> {
    let body = serde_cbor::to_vec(msg).map_err(|e| malformed(T::KIND, e))?;
    // The envelope of an empty body ends in the empty byte string's one
    // byte (0x40); that byte becomes the real body's byte-string header.
    let mut header = Vec::with_capacity(ENVELOPE_OVERHEAD);
    serde_cbor::to_writer(&mut header, &EnvelopeOut(WIRE_VERSION, T::KIND.code(), &[]))
        .map_err(|e| malformed(T::KIND, e))?;
    if header.pop() != Some(0x40) {
        return Err(malformed(T::KIND, "unexpected envelope encoding"));
    }
    push_bytes_header(&mut header, body.len());
    let parts = Encoded { header, body };
    check_size(T::KIND, parts.len())?;
    Ok(parts)
}

/// CBOR's header of a byte string of `len` bytes (major type 2), in its
/// shortest form, as serde_cbor writes it.
fn push_bytes_header(out: &mut Vec<u8>, len: usize) {
    const MAJOR: u8 = 2 << 5;
    let len = len as u64;
    if len < 24 {
        out.push(MAJOR | len as u8);
    } else if let Ok(v) = u8::try_from(len) {
        out.extend_from_slice(&[MAJOR | 24, v]);
    } else if let Ok(v) = u16::try_from(len) {
        out.push(MAJOR | 25);
        out.extend_from_slice(&v.to_be_bytes());
    } else if let Ok(v) = u32::try_from(len) {
        out.push(MAJOR | 26);
        out.extend_from_slice(&v.to_be_bytes());
    } else {
        out.push(MAJOR | 27);
        out.extend_from_slice(&len.to_be_bytes());
    }
}

fn check_size(kind: Kind, size: usize) -> Result<(), CodecError> {
    let limit = kind.max_size() + ENVELOPE_OVERHEAD;
    if size > limit {
        return Err(CodecError::TooLarge { kind, size, limit });
    }
    Ok(())
}

/// Decodes a message, checking size, version and kind first.
///
/// # Errors
/// A [`CodecError`] naming what was wrong; never panics on any input.
pub fn decode<T: Message>(bytes: &[u8]) -> Result<T, CodecError> {
    let kind = T::KIND;
    check_size(kind, bytes.len())?;
    let EnvelopeIn(version, code, body) =
        serde_cbor::from_slice(bytes).map_err(|e| malformed(kind, e))?;
    if version != WIRE_VERSION {
        return Err(CodecError::UnsupportedVersion(version));
    }
    if code != kind.code() {
        return Err(CodecError::WrongKind {
            expected: kind,
            found: code,
        });
    }
    serde_cbor::from_slice(body).map_err(|e| malformed(kind, e))
}

/// Writes a message as a frame: a 4-byte big-endian length, then the bytes.
///
/// # Errors
/// [`CodecError::TooLarge`] or [`CodecError::Io`].
pub fn write_frame<T: Message, W: Write>(w: &mut W, msg: &T) -> Result<usize, CodecError> {
    let bytes = encode(msg)?;
    write_raw_frame(w, T::KIND, &bytes)?;
    Ok(bytes.len() + 4)
}

/// Writes already-encoded bytes as a frame.
///
/// # Errors
/// [`CodecError::Io`] when the writer fails.
pub fn write_raw_frame<W: Write>(w: &mut W, kind: Kind, bytes: &[u8]) -> Result<(), CodecError> {
    let io = |source| CodecError::Io { kind, source };
    let len = u32::try_from(bytes.len()).map_err(|_| CodecError::TooLarge {
        kind,
        size: bytes.len(),
        limit: u32::MAX as usize,
    })?;
    w.write_all(&len.to_be_bytes()).map_err(io)?;
    w.write_all(bytes).map_err(io)
}

/// Reads one frame's raw bytes, refusing a length above the kind's limit
/// before allocating for it.
///
/// # Errors
/// [`CodecError::TooLarge`] or [`CodecError::Io`] (including a clean EOF,
/// as `UnexpectedEof`).
pub fn read_raw_frame<R: Read>(r: &mut R, kind: Kind) -> Result<Vec<u8>, CodecError> {
    let io = |source| CodecError::Io { kind, source };
    let mut len = [0u8; 4];
    r.read_exact(&mut len).map_err(io)?;
    let len = u32::from_be_bytes(len) as usize;
    check_size(kind, len)?;
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf).map_err(io)?;
    Ok(buf)
}

/// Reads and decodes one frame.
///
/// # Errors
/// As [`read_raw_frame`] and [`decode`].
pub fn read_frame<T: Message, R: Read>(r: &mut R) -> Result<T, CodecError> {
    let buf = read_raw_frame(r, T::KIND)?;
    decode(&buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Small {
        a: u32,
        b: String,
    }
    impl Message for Small {
        const KIND: Kind = Kind::Command;
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Other {
        a: u32,
    }
    impl Message for Other {
        const KIND: Kind = Kind::Release;
    }

    #[test]
    fn round_trips_a_message() {
        let m = Small {
            a: 7,
            b: "x".into(),
        };
        assert_eq!(decode::<Small>(&encode(&m).unwrap()).unwrap(), m);
    }

    #[test]
    fn refuses_oversize_input_before_decoding() {
        let huge = vec![0u8; Kind::Command.max_size() + 100];
        assert!(matches!(
            decode::<Small>(&huge),
            Err(CodecError::TooLarge { .. })
        ));
    }

    #[test]
    fn refuses_to_encode_oversize_messages() {
        let m = Small {
            a: 1,
            b: "y".repeat(Kind::Command.max_size() + 100),
        };
        assert!(matches!(encode(&m), Err(CodecError::TooLarge { .. })));
    }

    #[test]
    fn refuses_unknown_version_and_wrong_kind() {
        let body = serde_cbor::to_vec(&Small {
            a: 1,
            b: String::new(),
        })
        .unwrap();
        let v9 = serde_cbor::to_vec(&EnvelopeOut(9, Kind::Command.code(), &body)).unwrap();
        assert!(matches!(
            decode::<Small>(&v9),
            Err(CodecError::UnsupportedVersion(9))
        ));
        let other = encode(&Other { a: 1 }).unwrap();
        assert!(matches!(
            decode::<Small>(&other),
            Err(CodecError::WrongKind { .. })
        ));
    }

    #[test]
    fn malformed_bytes_give_a_typed_error() {
        for bad in [&b""[..], b"\xff\xff", b"\x83\x01\x07", b"\x9f\x9f\x9f"] {
            assert!(matches!(
                decode::<Small>(bad),
                Err(CodecError::Malformed { .. })
            ));
        }
    }

    #[test]
    fn frames_refuse_a_declared_length_above_the_limit_without_allocating() {
        let mut input = &(u32::MAX).to_be_bytes()[..];
        assert!(matches!(
            read_frame::<Small, _>(&mut input),
            Err(CodecError::TooLarge { .. })
        ));
    }

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct Blob(#[serde(with = "serde_bytes")] Vec<u8>);

    impl Message for Blob {
        const KIND: Kind = Kind::PeerResponse;
    }

    #[test]
    fn the_parts_of_an_encoding_join_into_what_the_envelope_encoder_writes() {
        // Around every boundary of CBOR's length forms, for the body's
        // byte-string header and for the message's own.
        for n in [
            0, 1, 19, 20, 21, 22, 23, 24, 250, 255, 256, 65_530, 65_535, 65_536, 300_000,
        ] {
            let m = Blob((0..n).map(|i| i as u8).collect());
            let body = serde_cbor::to_vec(&m).unwrap();
            let whole =
                serde_cbor::to_vec(&EnvelopeOut(WIRE_VERSION, Blob::KIND.code(), &body)).unwrap();
            let parts = encode_parts(&m).unwrap();
            assert_eq!(parts.len(), whole.len(), "length {n}");
            assert_eq!([parts.header, parts.body].concat(), whole, "length {n}");
            assert_eq!(encode(&m).unwrap(), whole, "length {n}");
            assert_eq!(decode::<Blob>(&whole).unwrap(), m);
        }
    }

    #[test]
    fn frames_round_trip() {
        let mut buf = Vec::new();
        write_frame(&mut buf, &Other { a: 42 }).unwrap();
        assert_eq!(
            read_frame::<Other, _>(&mut buf.as_slice()).unwrap(),
            Other { a: 42 }
        );
    }
}
