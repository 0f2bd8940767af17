//! DescribeBrokerEngineTypes and DescribeBrokerInstanceOptions routes.

use axum::extract::State;
use axum::Json;

use super::extract::ApiQuery;
use crate::api::*;
use crate::app::{catalog, AppState};
use crate::error::ApiError;
use crate::model::{EngineType, StorageType};

#[utoipa::path(get, path = "/v1/broker-engine-types", operation_id = "DescribeBrokerEngineTypes", tag = "catalog",
    params(EngineTypesQuery),
    responses((status = 200, body = DescribeBrokerEngineTypesResponse),
              (status = 400, body = ErrorBody, description = "BadRequestException")))]
pub async fn engine_types(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<EngineTypesQuery>,
) -> Result<Json<DescribeBrokerEngineTypesResponse>, ApiError> {
    let (rows, next_token, max_results) = catalog::engine_types(
        &state.catalog,
        q.engine_type.as_deref(),
        q.max_results.as_deref(),
        q.next_token.as_deref(),
    )?;
    Ok(Json(DescribeBrokerEngineTypesResponse {
        broker_engine_types: rows
            .into_iter()
            .map(|(engine_type, versions)| BrokerEngineType {
                engine_type,
                engine_versions: versions
                    .into_iter()
                    .map(|v| EngineVersion { name: v.to_owned() })
                    .collect(),
            })
            .collect(),
        max_results,
        next_token,
    }))
}

#[utoipa::path(get, path = "/v1/broker-instance-options", operation_id = "DescribeBrokerInstanceOptions",
    tag = "catalog", params(InstanceOptionsQuery),
    responses((status = 200, body = DescribeBrokerInstanceOptionsResponse),
              (status = 400, body = ErrorBody, description = "BadRequestException")))]
pub async fn instance_options(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<InstanceOptionsQuery>,
) -> Result<Json<DescribeBrokerInstanceOptionsResponse>, ApiError> {
    let (rows, next_token, max_results) = catalog::instance_options(
        q.engine_type.as_deref(),
        q.host_instance_type.as_deref(),
        q.storage_type.as_deref(),
        q.max_results.as_deref(),
        q.next_token.as_deref(),
    )?;
    let versions: Vec<String> = state
        .catalog
        .engine_versions(EngineType::Rabbitmq)
        .into_iter()
        .map(|v| v.version.to_owned())
        .collect();
    // Zones are labels for the local provider: one per region, as `<region>a`.
    let zone = AvailabilityZone {
        name: format!("{}a", state.config.region),
    };
    Ok(Json(DescribeBrokerInstanceOptionsResponse {
        broker_instance_options: rows
            .into_iter()
            .map(|t| BrokerInstanceOption {
                availability_zones: vec![zone.clone()],
                engine_type: EngineType::Rabbitmq,
                host_instance_type: t.name.to_owned(),
                storage_type: StorageType::Ebs,
                supported_deployment_modes: t.deployment_modes.to_vec(),
                supported_engine_versions: versions.clone(),
            })
            .collect(),
        max_results,
        next_token,
    }))
}
