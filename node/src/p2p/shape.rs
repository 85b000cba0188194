//! A hook to shape every connection of a node (the simulator's network
//! model: token buckets, site uplinks, latency).
//!
//! When [`super::P2pConfig::shaper`] is set, the node builds its
//! transport by hand: TCP, plus libp2p's in-process memory transport
//! (`/memory/N` addresses), which lets one process hold a thousand nodes
//! without a file descriptor per connection end. It hands each raw
//! connection, before noise and yamux, to [`ConnectionShaper::shape`],
//! which may wrap it in its own `AsyncRead`/`AsyncWrite`. When it is
//! unset the node builds plain TCP, so a device that does not use the
//! hook pays nothing.

use std::net::SocketAddr;

use futures::{AsyncRead, AsyncWrite};

/// A byte stream a shaper can wrap and return.
pub trait ShapedIo: AsyncRead + AsyncWrite + Send + Unpin {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin> ShapedIo for T {}

/// What a node knows about a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnInfo {
    /// A TCP connection, both ends as the kernel reports them.
    Tcp {
        /// This node's end.
        local: SocketAddr,
        /// The other end.
        remote: SocketAddr,
        /// Whether this node dialed.
        dialer: bool,
    },
    /// An in-process memory connection. Both ends know only the
    /// listener's port (the dialer's own port is hidden in the channel).
    Memory {
        /// The listening end's `/memory/N` port.
        listener_port: u64,
        /// Whether this node dialed.
        dialer: bool,
    },
}

/// Wraps raw connections. Called once per established connection,
/// from the transport's task; must not block.
pub trait ConnectionShaper: Send + Sync + std::fmt::Debug + 'static {
    /// Returns the stream the node should use for this connection.
    fn shape(&self, io: Box<dyn ShapedIo>, info: ConnInfo) -> Box<dyn ShapedIo>;
}
