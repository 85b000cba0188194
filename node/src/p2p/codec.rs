//! The request-response codec for `/meshota/chunks/1`.
//!
//! Every message is one frame: a 4-byte big-endian length, then the bytes
//! of [`meshota_protocol::codec::encode`]. A declared length above the
//! kind's limit ([`Kind::max_size`]) is refused before anything is
//! allocated, and exactly `len` bytes of the body are read, into a buffer
//! grown with the bytes that arrive, so a peer that lies about the
//! length or streams past it costs at most one capped frame of memory.

use std::io;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::request_response;
use libp2p::StreamProtocol;
use meshota_protocol::codec::{self, Message};
use meshota_protocol::peer::CHUNK_PROTOCOL;
use meshota_protocol::{Kind, PeerRequest, PeerResponse};

/// The protocol name as libp2p wants it.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new(CHUNK_PROTOCOL);

/// How much of a declared frame length is reserved before its bytes
/// arrive: twice the default average chunk.
const PREALLOC: usize = 512 * 1024;

/// The largest frame body accepted (and written) for a kind.
pub fn frame_limit(kind: Kind) -> usize {
    kind.max_size()
}

/// Codec for [`PeerRequest`] / [`PeerResponse`] over the one meshota codec.
#[derive(Debug, Clone, Copy, Default)]
pub struct ChunkCodec;

fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

/// Reads one length-prefixed message, refusing oversize frames before
/// allocating.
///
/// # Errors
/// `InvalidData` for an oversize, short or undecodable frame; other I/O
/// errors as the stream reports them.
pub async fn read_message<T, R>(io: &mut R) -> io::Result<T>
where
    T: Message,
    R: AsyncRead + Unpin + Send,
{
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    let limit = frame_limit(T::KIND);
    if len > limit {
        return Err(invalid(format!(
            "{} frame of {len} bytes exceeds the {limit}-byte limit",
            T::KIND
        )));
    }
    // Read into exactly the declared length, in steps of at most
    // `PREALLOC`: the buffer grows with the bytes that arrive, never with
    // the claim, so a peer that lies about the length costs at most
    // `PREALLOC` per stream. `read_to_end` zero-filled its spare room
    // and, once the frame was in, grew the full buffer by 32 bytes to
    // look for the end: a second allocation and copy of every chunk.
    let mut buf = vec![0u8; len.min(PREALLOC)];
    let mut filled = 0;
    while filled < len {
        if filled == buf.len() {
            buf.resize(filled + (len - filled).min(PREALLOC), 0);
        }
        let n = io.read(&mut buf[filled..]).await?;
        if n == 0 {
            return Err(invalid(format!(
                "{} frame truncated: {filled} of {len} bytes",
                T::KIND
            )));
        }
        filled += n;
    }
    codec::decode(&buf).map_err(invalid)
}

/// Writes one length-prefixed message.
///
/// # Errors
/// `InvalidData` when the message exceeds its kind's limit (so nothing
/// is sent that the peer would refuse); I/O errors from the stream.
pub async fn write_message<T, W>(io: &mut W, msg: &T) -> io::Result<()>
where
    T: Message,
    W: AsyncWrite + Unpin + Send,
{
    let bytes = codec::encode(msg).map_err(invalid)?;
    let limit = frame_limit(T::KIND);
    if bytes.len() > limit {
        return Err(invalid(format!(
            "{} message of {} bytes exceeds the {limit}-byte limit",
            T::KIND,
            bytes.len()
        )));
    }
    let len = u32::try_from(bytes.len()).map_err(invalid)?;
    io.write_all(&len.to_be_bytes()).await?;
    io.write_all(&bytes).await?;
    io.flush().await
}

impl request_response::Codec for ChunkCodec {
    type Protocol = StreamProtocol;
    type Request = PeerRequest;
    type Response = PeerResponse;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<PeerRequest>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_message(io).await
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<PeerResponse>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_message(io).await
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: PeerRequest,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_message(io, &req).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: PeerResponse,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_message(io, &res).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshota_protocol::{ChunkId, Encoding};

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        futures::executor::block_on(f)
    }

    #[test]
    fn messages_round_trip_through_frames() {
        let mut buf = Vec::new();
        let req = PeerRequest::Get {
            chunk: ChunkId::digest(b"x"),
        };
        block_on(write_message(&mut buf, &req)).unwrap();
        let back: PeerRequest = block_on(read_message(&mut buf.as_slice())).unwrap();
        assert_eq!(back, req);

        let mut buf = Vec::new();
        let res = PeerResponse::Chunk {
            encoding: Encoding::Raw,
            data: vec![7; 100_000].into(),
        };
        block_on(write_message(&mut buf, &res)).unwrap();
        let back: PeerResponse = block_on(read_message(&mut buf.as_slice())).unwrap();
        assert_eq!(back, res);
    }

    /// Hands out at most 7 bytes a read, like a stream whose frames
    /// arrive in pieces.
    struct Trickle<'a>(&'a [u8]);

    impl AsyncRead for Trickle<'_> {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            out: &mut [u8],
        ) -> std::task::Poll<io::Result<usize>> {
            let n = out.len().min(7).min(self.0.len());
            out[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            std::task::Poll::Ready(Ok(n))
        }
    }

    #[test]
    fn frames_in_pieces_and_past_the_reserve_are_read_whole_and_no_further() {
        // 1.5 MiB: three times the reserve, so the buffer grows twice.
        let big = PeerResponse::Chunk {
            encoding: Encoding::Raw,
            data: (0..1_572_864u32)
                .map(|i| i as u8)
                .collect::<Vec<u8>>()
                .into(),
        };
        let small = PeerResponse::NotFound;
        let mut wire = Vec::new();
        block_on(write_message(&mut wire, &big)).unwrap();
        block_on(write_message(&mut wire, &small)).unwrap();
        let mut io = Trickle(&wire);
        let first: PeerResponse = block_on(read_message(&mut io)).unwrap();
        assert_eq!(first, big);
        let second: PeerResponse = block_on(read_message(&mut io)).unwrap();
        assert_eq!(second, small);
        assert!(io.0.is_empty());
    }

    #[test]
    fn a_declared_length_above_the_limit_is_refused_before_reading_the_body() {
        let mut input = Vec::from((frame_limit(Kind::PeerRequest) as u32 + 1).to_be_bytes());
        input.extend_from_slice(&[0u8; 16]);
        let err = block_on(read_message::<PeerRequest, _>(&mut input.as_slice())).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        let mut huge = &u32::MAX.to_be_bytes()[..];
        assert!(block_on(read_message::<PeerResponse, _>(&mut huge)).is_err());
    }

    #[test]
    fn a_frame_shorter_than_declared_is_an_error_not_a_hang() {
        let mut input = Vec::from(100u32.to_be_bytes());
        input.extend_from_slice(&[1, 2, 3]);
        let err = block_on(read_message::<PeerRequest, _>(&mut input.as_slice())).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn garbage_of_the_right_length_is_invalid_data() {
        let mut input = Vec::from(4u32.to_be_bytes());
        input.extend_from_slice(b"\xff\xff\xff\xff");
        let err = block_on(read_message::<PeerResponse, _>(&mut input.as_slice())).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }
}
