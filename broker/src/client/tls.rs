//! HTTPS for the operator CLI: a ureq [`TlsConnector`] over rustls
//! (aws-lc-rs, the provider the server side already uses), trusting either
//! one CA file (`--ca-cert`, for a self-signed server certificate) or the
//! system's roots.
//!
//! ureq is built without its own TLS, which would pull in a second crypto
//! provider (ring) and a bundled root list.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;

use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::{self, ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use ureq::{ReadWrite, TlsConnector};

use super::ClientError;

/// Marks an I/O error as a failed TLS handshake, so the client can tell it
/// from an unreachable server (see [`handshake_failure`]).
#[derive(Debug, thiserror::Error)]
#[error("TLS handshake with {host} failed: {reason}")]
pub(super) struct HandshakeFailed {
    host: String,
    reason: String,
}

/// The TLS handshake failure inside a ureq error, if that is what it is.
pub(super) fn handshake_failure(e: &ureq::Error) -> Option<String> {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            if let Some(h) = io
                .get_ref()
                .and_then(|i| i.downcast_ref::<HandshakeFailed>())
            {
                return Some(h.to_string());
            }
        }
        source = s.source();
    }
    None
}

/// Trusts the certificates of the PEM file `ca`, or else the system roots.
pub(super) struct Connector {
    config: Arc<ClientConfig>,
}

impl Connector {
    /// # Errors
    /// [`ClientError::File`] when `ca` cannot be read,
    /// [`ClientError::Tls`] when it holds no usable certificate.
    pub(super) fn new(ca: Option<&Path>) -> Result<Self, ClientError> {
        let mut roots = RootCertStore::empty();
        match ca {
            Some(path) => {
                let bad =
                    |reason: String| ClientError::Tls(format!("{}: {reason}", path.display()));
                let pem = std::fs::read(path).map_err(|source| ClientError::File {
                    path: path.display().to_string(),
                    source,
                })?;
                let certs = rustls_pemfile::certs(&mut pem.as_slice())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| bad(e.to_string()))?;
                if certs.is_empty() {
                    return Err(bad("no PEM certificate in the file".into()));
                }
                for c in certs {
                    roots.add(c).map_err(|e| bad(e.to_string()))?;
                }
            }
            None => {
                // Unreadable system roots only mean fewer trusted servers;
                // the handshake error then says the issuer is unknown.
                let native = rustls_native_certs::load_native_certs();
                roots.add_parsable_certificates(native.certs);
            }
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ClientError::Tls(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Self {
            config: Arc::new(config),
        })
    }
}

struct TlsStream(StreamOwned<ClientConnection, Box<dyn ReadWrite>>);

impl std::fmt::Debug for TlsStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("TlsStream").field(&self.0.sock).finish()
    }
}

impl Read for TlsStream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for TlsStream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

impl ReadWrite for TlsStream {
    fn socket(&self) -> Option<&TcpStream> {
        self.0.sock.socket()
    }
}

impl TlsConnector for Connector {
    fn connect(
        &self,
        dns_name: &str,
        mut io: Box<dyn ReadWrite>,
    ) -> Result<Box<dyn ReadWrite>, ureq::Error> {
        let failed = |reason: String| {
            ureq::Error::from(std::io::Error::other(HandshakeFailed {
                host: dns_name.to_string(),
                reason,
            }))
        };
        let name = ServerName::try_from(dns_name.to_string()).map_err(|e| failed(e.to_string()))?;
        let mut conn =
            ClientConnection::new(self.config.clone(), name).map_err(|e| failed(e.to_string()))?;
        // Finish the handshake here, not lazily on the first write, so a
        // certificate problem is reported as such rather than as a
        // broken request.
        while conn.is_handshaking() {
            conn.complete_io(&mut io)
                .map_err(|e| failed(e.to_string()))?;
        }
        Ok(Box::new(TlsStream(StreamOwned::new(conn, io))))
    }
}
