//! The HTTP origin: chunks and manifests by id.
//!
//! `GET /v1/chunks/{id}` answers the chunk's **raw** bytes, decompressed
//! and re-verified against the id on the way out (a corrupt store gives a
//! 500, never wrong bytes), so any HTTP client can check
//! `BLAKE3(body) == id`. `?form=stored` answers the stored bytes instead,
//! with `X-Meshota-Encoding: raw|zstd` and `X-Meshota-Raw-Length`, for
//! clients that verify with `decode_chunk` like a peer would and want to
//! save bandwidth. We do not use `Content-Encoding: zstd`: proxies and
//! clients may decode it transparently, so the verified unit would depend
//! on the client stack. Both forms are immutable: `Cache-Control: public,
//! max-age=31536000, immutable` and `ETag: "<id>"` (suffixed `-stored`
//! for the stored form).

use std::borrow::Cow;
use std::sync::atomic::Ordering;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use meshota_protocol::chunking::open_chunk;
use meshota_protocol::{ChunkId, Encoding, ManifestId};
use serde::Deserialize;

use super::{blocking, ApiError, AppState};

const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// Query of `GET /v1/chunks/{id}`.
#[derive(Debug, Deserialize)]
pub(super) struct ChunkQuery {
    form: Option<String>,
}

fn immutable(
    etag: &str,
    body: impl Into<axum::body::Bytes>,
    content_type: &'static str,
    req: &HeaderMap,
) -> Response {
    let tag = format!("\"{etag}\"");
    let mut headers = HeaderMap::new();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(IMMUTABLE));
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(v) = HeaderValue::from_str(&tag) {
        headers.insert(header::ETAG, v);
    }
    let matches = req
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == tag || t.trim() == "*"));
    if matches {
        return (StatusCode::NOT_MODIFIED, headers).into_response();
    }
    (StatusCode::OK, headers, body.into()).into_response()
}

pub(super) async fn chunk(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<ChunkQuery>,
    req: HeaderMap,
) -> Result<Response, ApiError> {
    let id: ChunkId = id
        .parse()
        .map_err(|e: meshota_protocol::IdError| ApiError::bad_request(e.to_string()))?;
    let stored_form = match q.form.as_deref() {
        None | Some("raw") => false,
        Some("stored") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "unknown form {other:?}: expected raw or stored"
            )))
        }
    };
    let store = s.store.clone();
    let chunk = blocking(move || store.get_chunk(&id).map_err(ApiError::internal)).await?;
    let Some(chunk) = chunk else {
        return Err(ApiError::not_found(format!("no chunk {id}")));
    };
    let resp = if stored_form {
        let len = chunk.data.len();
        let mut r = immutable(
            &format!("{id}-stored"),
            chunk.data,
            "application/octet-stream",
            &req,
        );
        let enc = match chunk.encoding {
            Encoding::Raw => "raw",
            Encoding::Zstd => "zstd",
        };
        r.headers_mut()
            .insert("x-meshota-encoding", HeaderValue::from_static(enc));
        r.headers_mut()
            .insert("x-meshota-raw-length", HeaderValue::from(chunk.raw_len));
        if r.status() == StatusCode::OK {
            s.stats
                .origin_http_bytes
                .fetch_add(len as u64, Ordering::Relaxed);
        }
        r
    } else {
        let raw = blocking(move || {
            let raw = open_chunk(chunk.encoding, &chunk.data, &id, chunk.raw_len)
                .map_err(|e| ApiError::internal(format!("stored chunk {id} is corrupt: {e}")))?;
            // A raw chunk is served from the store's own buffer.
            Ok(match raw {
                Cow::Borrowed(_) => chunk.data.clone(),
                Cow::Owned(v) => v.into(),
            })
        })
        .await?;
        let len = raw.len();
        let r = immutable(&id.to_string(), raw, "application/octet-stream", &req);
        if r.status() == StatusCode::OK {
            s.stats
                .origin_http_bytes
                .fetch_add(len as u64, Ordering::Relaxed);
        }
        r
    };
    Ok(resp)
}

pub(super) async fn manifest(
    State(s): State<AppState>,
    Path(id): Path<String>,
    req: HeaderMap,
) -> Result<Response, ApiError> {
    let id: ManifestId = id
        .parse()
        .map_err(|e: meshota_protocol::IdError| ApiError::bad_request(e.to_string()))?;
    let store = s.store.clone();
    let bytes = blocking(move || store.get_manifest(&id).map_err(ApiError::internal)).await?;
    let Some(bytes) = bytes else {
        return Err(ApiError::not_found(format!("no manifest {id}")));
    };
    let len = bytes.len();
    let r = immutable(&id.to_string(), bytes, "application/cbor", &req);
    if r.status() == StatusCode::OK {
        s.stats
            .origin_http_bytes
            .fetch_add(len as u64, Ordering::Relaxed);
    }
    Ok(r)
}
