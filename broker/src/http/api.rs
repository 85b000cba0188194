//! JSON endpoints: health, releases, devices, fleet.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::Json;
use futures::StreamExt;
use meshota_protocol::DeviceId;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use super::{blocking, ApiError, AppState};
use crate::origin::{publish_bundle, PublishError};
use crate::registry::{Admission, DeviceRecord, RegistryError, ReleaseRecord};

pub(super) async fn health(State(s): State<AppState>) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "status": "ok",
        "mqtt_connected": s.control.connected.load(Ordering::Relaxed),
        "trust_root": s.trust.is_some(),
    }))
}

fn registry_error(e: RegistryError) -> ApiError {
    match e {
        RegistryError::UnknownDevice(d) => ApiError::not_found(format!("no device {d:?}")),
        e => ApiError::internal(e),
    }
}

pub(super) async fn list_releases(
    State(s): State<AppState>,
) -> Result<Json<Vec<ReleaseRecord>>, ApiError> {
    let reg = s.registry.clone();
    Ok(Json(
        blocking(move || reg.releases().map_err(registry_error)).await?,
    ))
}

/// `POST /v1/releases`: the body is a bundle file. It is spooled to a
/// temporary file in the data directory (never held in memory), then
/// verified and stored in one pass.
pub(super) async fn publish_release(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<ReleaseRecord>), ApiError> {
    let Some(trust) = s.trust.clone() else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no-trust-root",
            "this server has no trust root configured (--trust), so it cannot verify releases",
        ));
    };
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too-large",
            format!("bundle exceeds the {}-byte limit", s.max_bundle_bytes),
        )
    };
    // Refuse a declared oversize body before spooling any of it.
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > s.max_bundle_bytes) {
        return Err(too_large());
    }
    let tmp = tempfile::NamedTempFile::new_in(&s.upload_dir).map_err(ApiError::internal)?;
    let std_file = tmp.reopen().map_err(ApiError::internal)?;
    let mut file = tokio::fs::File::from_std(std_file);
    let mut stream = body.into_data_stream();
    let mut total = 0u64;
    // A client that stops sending mid-body must not hold the connection
    // and the spool file forever: each piece has to arrive in time.
    loop {
        let next = tokio::time::timeout(s.body_timeout, stream.next()).await;
        let piece = match next {
            Ok(Some(piece)) => piece,
            Ok(None) => break,
            Err(_) => {
                return Err(ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "body-timeout",
                    format!(
                        "no upload data for {} ms; the upload was abandoned",
                        s.body_timeout.as_millis()
                    ),
                ))
            }
        };
        let piece = piece.map_err(|e| ApiError::bad_request(format!("upload interrupted: {e}")))?;
        total += piece.len() as u64;
        if total > s.max_bundle_bytes {
            return Err(too_large());
        }
        file.write_all(&piece).await.map_err(ApiError::internal)?;
    }
    file.flush().await.map_err(ApiError::internal)?;
    drop(file);
    let (store, reg) = (s.store.clone(), s.registry.clone());
    let rec = blocking(move || {
        let r = publish_bundle(tmp.path(), &trust, store.as_ref(), &reg, crate::now());
        // `tmp` is removed here, whatever the outcome.
        drop(tmp);
        r.map_err(|e| match e {
            e @ (PublishError::Bundle(_) | PublishError::Expired { .. }) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "bundle-rejected",
                e.to_string(),
            ),
            e => ApiError::internal(e),
        })
    })
    .await?;
    if let Some(seeder) = &s.seeder {
        seeder.provide(rec.manifest_id).await;
    }
    tracing::info!(release = %rec.id, name = rec.name, version = %rec.version, "release published");
    Ok((StatusCode::CREATED, Json(rec)))
}

/// Filters of `GET /v1/devices`.
#[derive(Debug, Deserialize)]
pub(super) struct DeviceFilter {
    state: Option<String>,
    version: Option<String>,
    site: Option<String>,
    admission: Option<String>,
}

/// A device as listed.
#[derive(Debug, Serialize)]
pub(super) struct DeviceView {
    #[serde(flatten)]
    record: DeviceRecord,
}

fn state_name(r: &DeviceRecord) -> &'static str {
    r.state.map_or("unknown", |s| s.as_str())
}

fn admission_name(a: Admission) -> &'static str {
    match a {
        Admission::Pending => "pending",
        Admission::Accepted => "accepted",
    }
}

pub(super) async fn list_devices(
    State(s): State<AppState>,
    Query(f): Query<DeviceFilter>,
) -> Result<Json<Vec<DeviceView>>, ApiError> {
    let reg = s.registry.clone();
    let all = blocking(move || reg.devices().map_err(registry_error)).await?;
    let out = all
        .into_iter()
        .filter(|d| f.state.as_deref().is_none_or(|st| st == state_name(d)))
        .filter(|d| {
            f.version
                .as_deref()
                .is_none_or(|v| d.version.as_ref().map(ToString::to_string).as_deref() == Some(v))
        })
        .filter(|d| {
            f.site
                .as_deref()
                .is_none_or(|site| d.site.as_ref().map(|x| x.as_str()) == Some(site))
        })
        .filter(|d| {
            f.admission
                .as_deref()
                .is_none_or(|a| a == admission_name(d.admission))
        })
        .map(|record| DeviceView { record })
        .collect();
    Ok(Json(out))
}

fn device_id(raw: &str) -> Result<DeviceId, ApiError> {
    DeviceId::new(raw).map_err(|e| ApiError::bad_request(e.to_string()))
}

pub(super) async fn get_device(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id = device_id(&id)?;
    let reg = s.registry.clone();
    let (rec, events) = blocking(move || {
        let rec = reg.device(&id).map_err(registry_error)?;
        let rec = rec.ok_or_else(|| ApiError::not_found(format!("no device {id:?}")))?;
        let events = reg.events(&id).map_err(registry_error)?;
        Ok((rec, events))
    })
    .await?;
    Ok(Json(serde_json::json!({ "device": rec, "events": events })))
}

pub(super) async fn accept_device(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<DeviceRecord>, ApiError> {
    let id = device_id(&id)?;
    let reg = s.registry.clone();
    let rec = blocking(move || reg.accept(&id).map_err(registry_error)).await?;
    tracing::info!(device = %rec.id, key = %rec.public_key, "device accepted");
    Ok(Json(rec))
}

/// Body of `POST /v1/devices/{id}/enroll`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Enroll {
    /// The device's public key, 64 hex characters (printed by
    /// `meshota-node` at first start).
    public_key: String,
}

pub(super) async fn enroll_device(
    State(s): State<AppState>,
    Path(id): Path<String>,
    body: Result<Json<Enroll>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<DeviceRecord>, ApiError> {
    let id = device_id(&id)?;
    let Json(body) = body.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let key: meshota_protocol::PublicKey = body.public_key.trim().parse().map_err(|e| {
        ApiError::bad_request(format!(
            "public_key: {e}; expected the 64 hex characters meshota-node prints at first start"
        ))
    })?;
    let reg = s.registry.clone();
    let rec = blocking(move || {
        reg.enroll(&id, key, crate::now()).map_err(|e| match e {
            RegistryError::KeyConflict(_) => {
                ApiError::new(StatusCode::CONFLICT, "key-conflict", e.to_string())
            }
            e => registry_error(e),
        })
    })
    .await?;
    tracing::info!(device = %rec.id, key = %rec.public_key, "device enrolled");
    Ok(Json(rec))
}

/// `GET /v1/fleet`.
#[derive(Debug, Serialize, Deserialize, Default)]
pub struct FleetSummary {
    /// Devices known.
    pub devices: u64,
    /// Devices accepted.
    pub accepted: u64,
    /// Devices pending.
    pub pending: u64,
    /// Devices whose last status said online.
    pub online: u64,
    /// Accepted devices by update state.
    pub by_state: BTreeMap<String, u64>,
    /// Accepted devices by installed version.
    pub by_version: BTreeMap<String, u64>,
    /// Accepted devices by the trust-root version they verify with, to
    /// follow a key rotation (`unknown` before their first status).
    #[serde(default)]
    pub by_trust_version: BTreeMap<String, u64>,
    /// Releases published.
    pub releases: u64,
}

pub(super) fn summarize(devices: &[DeviceRecord], releases: u64) -> FleetSummary {
    let mut s = FleetSummary {
        releases,
        ..FleetSummary::default()
    };
    for d in devices {
        s.devices += 1;
        match d.admission {
            Admission::Pending => s.pending += 1,
            Admission::Accepted => {
                s.accepted += 1;
                *s.by_state.entry(state_name(d).to_string()).or_default() += 1;
                let v = d
                    .version
                    .as_ref()
                    .map_or("unknown".into(), ToString::to_string);
                *s.by_version.entry(v).or_default() += 1;
                let t = d
                    .trust_version
                    .map_or("unknown".into(), |t| format!("v{t}"));
                *s.by_trust_version.entry(t).or_default() += 1;
            }
        }
        if d.online {
            s.online += 1;
        }
    }
    s
}

pub(super) async fn fleet(State(s): State<AppState>) -> Result<Json<FleetSummary>, ApiError> {
    let reg = s.registry.clone();
    let (devices, releases) = blocking(move || {
        let d = reg.devices().map_err(registry_error)?;
        let r = reg.releases().map_err(registry_error)?.len() as u64;
        Ok((d, r))
    })
    .await?;
    Ok(Json(summarize(&devices, releases)))
}
