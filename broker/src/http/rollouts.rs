//! `/v1/rollouts`: create, list, show, and operator commands.
//!
//! Planner calls are quick, but creation reads the registry (sled), so
//! every handler runs on the blocking pool like the other endpoints.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;

use super::{blocking, ApiError, AppState};
use crate::rollout::PlannerCommand;
use crate::rollouts::{CreateRollout, RolloutView, RolloutsError};

fn rollouts_error(e: RolloutsError) -> ApiError {
    let status = match &e {
        RolloutsError::UnknownRelease(_) | RolloutsError::UnknownRollout(_) => {
            StatusCode::NOT_FOUND
        }
        RolloutsError::Conflict { .. }
        | RolloutsError::Command(_)
        | RolloutsError::NoSignedRelease(_) => StatusCode::CONFLICT,
        RolloutsError::NoRolloutKey => StatusCode::SERVICE_UNAVAILABLE,
        RolloutsError::Plan(_) => StatusCode::UNPROCESSABLE_ENTITY,
        RolloutsError::Corrupt { .. } | RolloutsError::Registry(_) => {
            return ApiError::internal(e);
        }
    };
    let code = match status {
        StatusCode::NOT_FOUND => "not-found",
        StatusCode::CONFLICT => "conflict",
        StatusCode::SERVICE_UNAVAILABLE => "no-rollout-key",
        _ => "invalid-rollout",
    };
    ApiError::new(status, code, e.to_string())
}

pub(super) async fn create(
    State(s): State<AppState>,
    body: Result<Json<CreateRollout>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<RolloutView>), ApiError> {
    let Json(req) = body.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad-request",
            format!("rollout request: {}", e.body_text()),
        )
    })?;
    let r = s.rollouts.clone();
    let view = blocking(move || r.create(req, crate::now()).map_err(rollouts_error)).await?;
    Ok((StatusCode::CREATED, Json(view)))
}

pub(super) async fn list(State(s): State<AppState>) -> Result<Json<Vec<RolloutView>>, ApiError> {
    let r = s.rollouts.clone();
    Ok(Json(blocking(move || Ok(r.list(crate::now()))).await?))
}

pub(super) async fn get(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<RolloutView>, ApiError> {
    let r = s.rollouts.clone();
    Ok(Json(
        blocking(move || r.get(&id, crate::now()).map_err(rollouts_error)).await?,
    ))
}

pub(super) async fn command(
    State(s): State<AppState>,
    Path((id, cmd)): Path<(String, String)>,
) -> Result<Json<RolloutView>, ApiError> {
    let cmd = match cmd.as_str() {
        "pause" => PlannerCommand::Pause,
        "resume" => PlannerCommand::Resume,
        "abort" => PlannerCommand::Abort,
        "rollback" => PlannerCommand::Rollback,
        other => {
            return Err(ApiError::not_found(format!(
                "no rollout command {other:?}; use pause, resume, abort or rollback"
            )))
        }
    };
    let r = s.rollouts.clone();
    Ok(Json(
        blocking(move || r.command(&id, cmd, crate::now()).map_err(rollouts_error)).await?,
    ))
}
