//! The accept loop of the API and origin, plain or TLS: one hyper
//! HTTP/1.1 connection per accepted stream.
//!
//! Our own loop rather than `axum::serve`, because that has neither TLS
//! nor a header-read timeout: without one a slowloris client (headers
//! trickled a byte at a time) holds a connection and a task forever.
//! Here the TLS handshake and every request head must each arrive within
//! [`Limits::header_timeout`]; an idle keep-alive connection is closed
//! after the same time (hyper starts the clock when it waits for a head).
//! Request bodies are bounded by the handlers (see `api::publish_release`
//! and the router's body limit).

use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

/// Time limits of a connection.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The TLS handshake, and each request head, must complete within this.
    pub header_timeout: Duration,
}

/// Serves `app` until `stop` fires; then stops accepting and lets every
/// connection finish its in-flight request (the supervisor bounds that
/// wait and aborts the rest).
///
/// # Errors
/// Never in practice: accept errors are logged and retried.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    app: Router,
    limits: Limits,
    mut stop: oneshot::Receiver<()>,
) -> Result<(), String> {
    let (drain_tx, drain_rx) = watch::channel(false);
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => {
                let (tcp, _) = match accepted {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of file descriptors and the like: back off
                        // rather than spin, and keep serving.
                        tracing::warn!(error = %e, "HTTP accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let (app, drain) = (app.clone(), drain_rx.clone());
                match tls.clone() {
                    None => { conns.spawn(connection(tcp, app, limits, drain)); }
                    Some(acceptor) => {
                        conns.spawn(async move {
                            let handshake = acceptor.accept(tcp);
                            let Ok(Ok(stream)) = tokio::time::timeout(limits.header_timeout, handshake).await else {
                                return;
                            };
                            connection(stream, app, limits, drain).await;
                        });
                    }
                }
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    let _ = drain_tx.send(true);
    while conns.join_next().await.is_some() {}
    Ok(())
}

async fn connection<S>(io: S, app: Router, limits: Limits, mut drain: watch::Receiver<bool>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let conn = builder.serve_connection(TokioIo::new(io), TowerToHyperService::new(app));
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = drain.wait_for(|d| *d) => {}
    }
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}
