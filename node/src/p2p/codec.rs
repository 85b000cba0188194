//! The request-response codec for `/meshota/chunks/1`.
//!
//! Every message is one frame: a 4-byte big-endian length, then the bytes
//! of [`meshota_protocol::codec::encode`]. A declared length above the
//! kind's limit ([`Kind::max_size`]) is refused before anything is
//! allocated, and exactly `len` bytes of the body are read, into a buffer
//! grown with the bytes that arrive, so a peer that lies about the
//! length or streams past it costs at most one capped frame of memory.
//!
//! A node with an upload cap writes each chunk answer at the capped rate,
//! a slice at a time ([`write_paced`]), rather than all at once.

use std::io;
use std::time::Duration;

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

/// How much of a paced chunk answer goes out at once: what a small
/// message sent meanwhile may queue behind on the uplink.
const PACE_SLICE: usize = 16 * 1024;

/// The longest a paced answer is spread over. A requester counts an
/// answer not in after 10 s as late (`SchedulerConfig::request_timeout`)
/// and may ask a neighbour too; under a cap far below the chunk size per
/// second, an answer goes out faster than the cap, and the server's
/// pacing still holds the long-run rate to it.
const PACE_SPREAD_MAX: Duration = Duration::from_secs(6);

/// The rate a paced answer of `len` bytes is written at under a cap of
/// `cap_bps`: the cap, unless that would spread it past
/// [`PACE_SPREAD_MAX`].
fn answer_rate(cap_bps: u64, len: usize) -> f64 {
    (cap_bps.max(1) as f64).max(len as f64 / PACE_SPREAD_MAX.as_secs_f64())
}

/// Codec for [`PeerRequest`] / [`PeerResponse`] over the one meshota codec.
#[derive(Debug, Clone, Copy, Default)]
pub struct ChunkCodec {
    /// The node's upload cap, bytes per second: chunk answers are written
    /// at this rate ([`write_paced`]). `None` writes them at once.
    pub pace_bps: Option<u64>,
}

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
    let (head, body) = frame(msg)?;
    io.write_all(&head).await?;
    io.write_all(&body).await?;
    io.flush().await
}

/// Writes one message like [`write_message`], but its body a slice at a
/// time at `bps` bytes per second (or faster for a body that would take
/// longer than `PACE_SPREAD_MAX`, 6 s).
///
/// Why: an answer written at once sits in the uplink's queue (a modem's
/// buffer, a shaped link) until the link drains it, and every small
/// message sent meanwhile (a `Busy`, a `Have`, this device's own chunk
/// requests) waits behind it. With the whole answer queued, a 1 ms LAN
/// took a median 1.5 s to carry a `Busy` back under load (100 devices on
/// 2 Mbit/s uplinks), so requesters learned late where to ask, and
/// uploaders went idle waiting for requests. Written at a cap just under
/// the link rate, the queue stays about one slice long.
pub async fn write_paced<T, W>(io: &mut W, msg: &T, bps: u64) -> io::Result<()>
where
    T: Message,
    W: AsyncWrite + Unpin + Send,
{
    let (head, body) = frame(msg)?;
    let rate = answer_rate(bps, head.len() + body.len());
    // A dozen bytes: they go with the first slice's pacing.
    io.write_all(&head).await?;
    let start = tokio::time::Instant::now();
    let mut sent = head.len() as u64;
    let mut slices = body.chunks(PACE_SLICE).peekable();
    while let Some(slice) = slices.next() {
        io.write_all(slice).await?;
        io.flush().await?;
        sent += slice.len() as u64;
        // The last slice is not waited out: the server's pacing already
        // spaces one answer from the next.
        if slices.peek().is_some() {
            let due = start + Duration::from_secs_f64(sent as f64 / rate);
            tokio::time::sleep_until(due).await;
        }
    }
    io.flush().await
}

/// A message as a frame, checked against its kind's limit, in two
/// pieces: the length prefix with the envelope's header, then the body
/// (see [`codec::encode_parts`]: the body is never copied again).
fn frame<T: Message>(msg: &T) -> io::Result<(Vec<u8>, Vec<u8>)> {
    let parts = codec::encode_parts(msg).map_err(invalid)?;
    let limit = frame_limit(T::KIND);
    if parts.len() > limit {
        return Err(invalid(format!(
            "{} message of {} bytes exceeds the {limit}-byte limit",
            T::KIND,
            parts.len()
        )));
    }
    let len = u32::try_from(parts.len()).map_err(invalid)?;
    let mut head = Vec::with_capacity(4 + parts.header.len());
    head.extend_from_slice(&len.to_be_bytes());
    head.extend_from_slice(&parts.header);
    Ok((head, parts.body))
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
        match (self.pace_bps, &res) {
            (Some(bps), PeerResponse::Chunk { .. }) => write_paced(io, &res, bps).await,
            _ => write_message(io, &res).await,
        }
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
            hints: true,
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

    /// Records each write and when it came.
    #[derive(Default)]
    struct Clocked {
        writes: Vec<(std::time::Instant, usize)>,
        bytes: Vec<u8>,
    }

    impl AsyncWrite for Clocked {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<io::Result<usize>> {
            self.writes.push((std::time::Instant::now(), buf.len()));
            self.bytes.extend_from_slice(buf);
            std::task::Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
        fn poll_close(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn a_capped_chunk_answer_goes_out_a_slice_at_a_time_never_ahead_of_the_cap() {
        const BPS: u64 = 1_000_000;
        let res = PeerResponse::Chunk {
            encoding: Encoding::Raw,
            data: vec![7; 100_000].into(),
        };
        let start = std::time::Instant::now();
        let mut paced = Clocked::default();
        write_paced(&mut paced, &res, BPS).await.unwrap();
        // The same frame as an unpaced write, only spread out.
        let mut plain = Vec::new();
        write_message(&mut plain, &res).await.unwrap();
        assert_eq!(paced.bytes, plain);
        let body = &paced.writes[1..];
        assert!(body.len() > 100_000 / PACE_SLICE, "{} writes", body.len());
        // No slice left before the cap allowed the bytes ahead of it.
        // (A slow machine only makes writes later; this cannot flake.)
        let mut ahead = 0usize;
        for (at, n) in body {
            assert!(*n <= PACE_SLICE);
            let allowed = at.duration_since(start).as_secs_f64() * BPS as f64;
            assert!(
                ahead as f64 <= allowed + 1.0,
                "{ahead} bytes out by {allowed}"
            );
            ahead += n;
        }
    }

    #[test]
    fn an_answer_is_spread_at_the_cap_but_never_longer_than_the_spread_limit() {
        assert_eq!(answer_rate(237_500, 1 << 20), 237_500.0);
        let spread = PACE_SPREAD_MAX.as_secs_f64();
        // A 1 MiB answer under a 20 kB/s cap takes the limit, not 52 s.
        assert_eq!(answer_rate(20_000, 1 << 20), f64::from(1 << 20) / spread);
        assert!(answer_rate(0, 10) > 0.0);
    }

    #[tokio::test]
    async fn the_codec_paces_only_chunk_answers_and_only_under_a_cap() {
        use request_response::Codec as _;
        let chunk = PeerResponse::Chunk {
            encoding: Encoding::Raw,
            data: vec![1; 3 * PACE_SLICE - 1024].into(),
        };
        let writes = |pace_bps, res: PeerResponse| async move {
            let mut io = Clocked::default();
            ChunkCodec { pace_bps }
                .write_response(&PROTOCOL, &mut io, res)
                .await
                .unwrap();
            io.writes.len()
        };
        // Length prefix and envelope header, then one write per slice of
        // the (just under three slices long) body when paced.
        assert_eq!(writes(Some(10_000_000), chunk.clone()).await, 1 + 3);
        assert_eq!(writes(None, chunk).await, 2);
        assert_eq!(writes(Some(10_000_000), PeerResponse::Busy).await, 2);
    }
}
