//! The HTTP API and origin (axum).
//!
//! | route                         | method | access        |
//! |-------------------------------|--------|---------------|
//! | `/v1/health`                  | GET    | open          |
//! | `/v1/chunks/{id}`             | GET    | open (content-addressed, verified by devices) |
//! | `/v1/manifests/{id}`          | GET    | open          |
//! | `/v1/releases`                | GET    | read          |
//! | `/v1/releases`                | POST   | operator      |
//! | `/v1/devices`                 | GET    | read          |
//! | `/v1/devices/{id}`            | GET    | read          |
//! | `/v1/devices/{id}/accept`     | POST   | operator      |
//! | `/v1/fleet`                   | GET    | read          |
//! | `/metrics`                    | GET    | metrics       |
//!
//! "operator" needs `Authorization: Bearer <token>` with the token from
//! `operator-token` in the data directory; "read" and "metrics" need it too
//! unless `open_reads` / `open_metrics` is set. Every error is JSON
//! `{"error": "...", "code": "..."}` with a fitting status.
//!
//! Plain HTTP by default; HTTPS when `http_tls` gives a certificate and
//! key ([`tls`]). Connections are served by [`serve`], which bounds the
//! time a client may take to send its headers.

mod api;
mod metrics;
mod origin;
mod rollouts;
pub mod serve;
pub mod tls;

use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use meshota_node::store::Store;
use meshota_protocol::TrustRoot;

use crate::config::secret_eq;
use crate::mqtt::control::{ControlHandle, ControlStats};
use crate::registry::Registry;

/// Counters the HTTP side keeps.
#[derive(Debug, Default)]
pub struct HttpStats {
    /// Chunk and manifest bytes served over HTTP.
    pub origin_http_bytes: AtomicU64,
    /// Chunk bytes served over libp2p (filled in by the p2p seeder).
    pub origin_p2p_bytes: AtomicU64,
}

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    /// The registry.
    pub registry: Arc<Registry>,
    /// The origin store.
    pub store: Arc<dyn Store>,
    /// Trust root releases are verified against, if configured.
    pub trust: Option<Arc<TrustRoot>>,
    /// The operator's bearer token.
    pub operator_token: Arc<str>,
    /// Whether reads need no token.
    pub open_reads: bool,
    /// Whether `/metrics` needs no token.
    pub open_metrics: bool,
    /// Where uploads are spooled.
    pub upload_dir: PathBuf,
    /// Largest upload.
    pub max_bundle_bytes: u64,
    /// Longest wait for the next piece of a request body.
    pub body_timeout: std::time::Duration,
    /// Largest request body other than a bundle upload.
    pub max_request_bytes: usize,
    /// The control plane's counters.
    pub control: Arc<ControlStats>,
    /// The control plane, for publishing (the rollout planner's entry).
    pub control_handle: Option<ControlHandle>,
    /// HTTP counters.
    pub stats: Arc<HttpStats>,
    /// The libp2p origin seeder, which provides each new release.
    pub seeder: Option<crate::seeder::Seeder>,
    /// The rollout service.
    pub rollouts: crate::rollouts::Rollouts,
}

/// An error answer: a status, a stable code and a message.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    /// A new error answer.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", message)
    }
    /// 400.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad-request", message)
    }
    /// 500, logged.
    pub fn internal(e: impl std::fmt::Display) -> Self {
        tracing::error!(error = %e, "internal error");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.message, "code": self.code });
        (self.status, Json(body)).into_response()
    }
}

/// Runs blocking registry or store work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(ApiError::internal)?
}

#[derive(Clone, Copy)]
enum Access {
    Read,
    Metrics,
    Operator,
}

async fn require(
    State((state, access)): State<(AppState, Access)>,
    req: Request,
    next: Next,
) -> Response {
    let open = match access {
        Access::Read => state.open_reads,
        Access::Metrics => state.open_metrics,
        Access::Operator => false,
    };
    if !open {
        let presented = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match presented {
            Some(t) if secret_eq(t.trim(), &state.operator_token) => {}
            Some(_) => {
                return ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "wrong bearer token")
                    .into_response()
            }
            None => {
                return ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "this endpoint needs `Authorization: Bearer <operator token>` (see operator-token in the data directory)",
                )
                .into_response()
            }
        }
    }
    next.run(req).await
}

/// Builds the router.
pub fn router(state: AppState) -> Router {
    let guard = |access| middleware::from_fn_with_state((state.clone(), access), require);
    let reads = Router::new()
        .route("/v1/releases", get(api::list_releases))
        .route("/v1/devices", get(api::list_devices))
        .route("/v1/devices/{id}", get(api::get_device))
        .route("/v1/fleet", get(api::fleet))
        .route("/v1/rollouts", get(rollouts::list))
        .route("/v1/rollouts/{id}", get(rollouts::get))
        .route_layer(guard(Access::Read));
    // Bundles can be gigabytes: the upload handler streams them to disk
    // and enforces `max_bundle_bytes` itself.
    let upload = Router::new()
        .route("/v1/releases", post(api::publish_release))
        .route_layer(guard(Access::Operator))
        .layer(DefaultBodyLimit::disable());
    let writes = Router::new()
        .route("/v1/devices/{id}/accept", post(api::accept_device))
        .route_layer(guard(Access::Operator));
    // Small JSON bodies: the router-wide body limit applies.
    let rollout_writes = Router::new()
        .route("/v1/rollouts", post(rollouts::create))
        .route("/v1/rollouts/{id}/{command}", post(rollouts::command))
        .route("/v1/devices/{id}/enroll", post(api::enroll_device))
        .route_layer(guard(Access::Operator));
    let metrics = Router::new()
        .route("/metrics", get(metrics::metrics))
        .route_layer(guard(Access::Metrics));
    let open = Router::new()
        .route("/v1/health", get(api::health))
        .route("/v1/chunks/{id}", get(origin::chunk))
        .route("/v1/manifests/{id}", get(origin::manifest));
    let max_request_bytes = state.max_request_bytes;
    Router::new()
        .merge(reads)
        .merge(upload)
        .merge(writes)
        .merge(rollout_writes)
        .merge(metrics)
        .merge(open)
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        // Every other body (JSON requests) is small.
        .layer(DefaultBodyLimit::max(max_request_bytes))
        .with_state(state)
}
