//! A packet-type guard on the client-to-broker byte stream.
//!
//! rumqttd 0.20's MQTT 5 decoder reaches `unreachable!()` when a client
//! sends a CONNACK or an UNSUBACK. The panic is confined to that
//! connection's task, but the task dies before telling rumqttd's router,
//! so a logged-in session that does this leaves its router slot taken for
//! good: enough of them (the router's `max_connections`) lock every
//! client out. The test
//! `repeated_connacks_from_logged_in_clients_do_not_use_up_the_brokers_connections`
//! showed it.
//!
//! The guard follows MQTT's framing (a type byte, a 1-4 byte remaining
//! length, the body) without decoding anything else, and stops the
//! stream at the first packet only a server may send. It only sees
//! plaintext, so it cannot help when rumqttd terminates TLS; there the
//! abuse still needs valid credentials (see `docs/threats.md`).

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Packet types (the high nibble of the first byte) a client must never
/// send: CONNACK, SUBACK, UNSUBACK and PINGRESP.
const SERVER_ONLY: [u8; 4] = [2, 9, 11, 13];

/// Why the guard stopped a stream.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum GuardError {
    /// A packet type only a server may send.
    #[error("client sent server-only MQTT packet type {0}")]
    ServerOnly(u8),
    /// A remaining length longer than MQTT's four bytes.
    #[error("malformed MQTT remaining length")]
    BadLength,
}

/// Where the framer is in the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Expecting a packet's first byte.
    Type,
    /// Reading the remaining length: value so far, bytes read.
    Length(usize, u32),
    /// Inside a body: bytes left.
    Body(usize),
}

/// An incremental framer over the client's bytes.
#[derive(Debug)]
pub struct Framer {
    state: State,
}

impl Default for Framer {
    fn default() -> Self {
        Self { state: State::Type }
    }
}

impl Framer {
    /// Feeds the next bytes of the stream.
    ///
    /// # Errors
    /// [`GuardError`] at the first forbidden packet or malformed length;
    /// the stream must then be closed.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Result<(), GuardError> {
        while let Some((&b, rest)) = bytes.split_first() {
            match self.state {
                State::Body(left) => {
                    // Skip the body in bulk.
                    let n = left.min(bytes.len());
                    bytes = &bytes[n..];
                    self.state = if left == n {
                        State::Type
                    } else {
                        State::Body(left - n)
                    };
                    continue;
                }
                State::Type => {
                    let kind = b >> 4;
                    if SERVER_ONLY.contains(&kind) {
                        return Err(GuardError::ServerOnly(kind));
                    }
                    self.state = State::Length(0, 0);
                }
                State::Length(value, read) => {
                    if read == 4 {
                        return Err(GuardError::BadLength);
                    }
                    let value = value | (usize::from(b & 0x7F) << (7 * read));
                    self.state = match (b & 0x80 != 0, value) {
                        (true, _) => State::Length(value, read + 1),
                        (false, 0) => State::Type,
                        (false, len) => State::Body(len),
                    };
                }
            }
            bytes = rest;
        }
        Ok(())
    }
}

/// Copies `from` to `to` through a [`Framer`] until end of stream or the
/// first forbidden packet (which is not forwarded).
///
/// # Errors
/// The I/O error, or the guard's verdict as `InvalidData`.
pub async fn copy_guarded<R, W>(mut from: R, mut to: W) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut framer = Framer::default();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return to.shutdown().await;
        }
        framer
            .feed(&buf[..n])
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        to.write_all(&buf[..n]).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_packets_pass_in_any_split_and_server_only_ones_are_stopped() {
        // CONNECT (remaining length 2 + 1 body byte here, enough for the
        // framer), PUBLISH with a two-byte length, PINGREQ, DISCONNECT.
        let mut stream = vec![0x10, 0x03, 1, 2, 3, 0x30, 0x80, 0x01];
        stream.extend(vec![7u8; 128]);
        stream.extend([0xC0, 0x00, 0xE0, 0x00]);
        for split in 0..stream.len() {
            let mut f = Framer::default();
            f.feed(&stream[..split]).unwrap();
            f.feed(&stream[split..]).unwrap();
            assert_eq!(f.state, State::Type);
        }
        for kind in SERVER_ONLY {
            let mut f = Framer::default();
            f.feed(&stream).unwrap();
            assert_eq!(f.feed(&[kind << 4, 0]), Err(GuardError::ServerOnly(kind)));
        }
        // A forbidden type hidden in a body is just data.
        let mut f = Framer::default();
        f.feed(&[0x30, 0x02, 0x20, 0x02]).unwrap();
        assert_eq!(
            Framer::default().feed(&[0x10, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F]),
            Err(GuardError::BadLength)
        );
    }
}
