//! A hook to shape every TCP connection of a node (the simulator's
//! network model: token buckets, site uplinks, latency).
//!
//! When [`super::P2pConfig::shaper`] is set, the node builds its TCP
//! transport by hand and hands each raw connection, before noise and
//! yamux, to [`ConnectionShaper::shape`], which may wrap it in its own
//! `AsyncRead`/`AsyncWrite`. When it is unset the node takes the stock
//! `with_tcp` path, so a device that does not use the hook pays nothing.

use std::net::SocketAddr;

use futures::{AsyncRead, AsyncWrite};

/// A byte stream a shaper can wrap and return.
pub trait ShapedIo: AsyncRead + AsyncWrite + Send + Unpin {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin> ShapedIo for T {}

/// The two ends of a new TCP connection, as the kernel reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnInfo {
    /// This node's end.
    pub local: SocketAddr,
    /// The other end.
    pub remote: SocketAddr,
    /// Whether this node dialed.
    pub dialer: bool,
}

/// Wraps raw TCP connections. Called once per established connection,
/// from the transport's task; must not block.
pub trait ConnectionShaper: Send + Sync + std::fmt::Debug + 'static {
    /// Returns the stream the node should use for this connection.
    fn shape(&self, io: Box<dyn ShapedIo>, info: ConnInfo) -> Box<dyn ShapedIo>;
}
