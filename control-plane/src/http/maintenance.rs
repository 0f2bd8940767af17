//! Mooring extension routes for fleet maintenance: `GET /v1/maintenance` (authorized as
//! `mq:DescribeMaintenance`) and `PUT /v1/maintenance` (`mq:UpdateMaintenance`), the switch
//! that pauses window-driven maintenance everywhere.

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::extract::ApiJson;
use crate::api::ErrorBody;
use crate::app::maintenance::{self, MaintenanceStatus};
use crate::app::AppState;
use crate::error::ApiError;

/// `PUT /v1/maintenance`.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateMaintenanceRequest {
    /// `true` stops window-driven maintenance across the fleet (a run in progress stops
    /// between steps); `false` resumes it. RebootBroker is never paused.
    pub paused: Option<bool>,
}

/// The fleet's maintenance switch and load.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MaintenanceResponse {
    /// The switch set by `PUT /v1/maintenance`.
    pub paused: bool,
    /// Paused by `--maintenance-paused`, whatever the switch says.
    pub paused_by_configuration: bool,
    /// `--maintenance-max-concurrent`: brokers under maintenance at once.
    pub max_concurrent: u32,
    /// Brokers whose maintenance is in progress.
    pub brokers_in_maintenance: Vec<String>,
}

fn view(s: MaintenanceStatus) -> MaintenanceResponse {
    MaintenanceResponse {
        paused: s.paused,
        paused_by_configuration: s.paused_by_configuration,
        max_concurrent: s.max_concurrent,
        brokers_in_maintenance: s.in_progress.iter().map(ToString::to_string).collect(),
    }
}

#[utoipa::path(get, path = "/v1/maintenance", operation_id = "DescribeMaintenance", tag = "maintenance",
    responses((status = 200, body = MaintenanceResponse)))]
pub async fn describe_maintenance(
    State(state): State<AppState>,
) -> Result<Json<MaintenanceResponse>, ApiError> {
    Ok(Json(view(maintenance::status(&state).await?)))
}

#[utoipa::path(put, path = "/v1/maintenance", operation_id = "UpdateMaintenance", tag = "maintenance",
    request_body = UpdateMaintenanceRequest,
    responses((status = 200, body = MaintenanceResponse),
              (status = 400, body = ErrorBody, description = "BadRequestException")))]
pub async fn update_maintenance(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<UpdateMaintenanceRequest>,
) -> Result<Json<MaintenanceResponse>, ApiError> {
    let paused = req.paused.ok_or_else(|| {
        ApiError::bad_request(
            "paused",
            "The request is missing the required member paused.",
        )
    })?;
    Ok(Json(view(maintenance::set_paused(&state, paused).await?)))
}
