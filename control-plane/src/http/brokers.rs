//! Broker routes: parse, call `app::brokers`, answer.

use axum::extract::{Path, State};
use axum::Json;

use super::extract::{ApiJson, ApiQuery};
use super::views;
use crate::api::*;
use crate::app::{brokers, AppState};
use crate::error::ApiError;

#[utoipa::path(post, path = "/v1/brokers", operation_id = "CreateBroker", tag = "brokers",
    request_body = CreateBrokerRequest,
    responses((status = 200, body = CreateBrokerResponse),
              (status = 400, body = ErrorBody, description = "BadRequestException"),
              (status = 409, body = ErrorBody, description = "ConflictException")))]
pub async fn create_broker(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<CreateBrokerRequest>,
) -> Result<Json<CreateBrokerResponse>, ApiError> {
    let b = brokers::create_broker(&state, req).await?;
    Ok(Json(CreateBrokerResponse {
        broker_arn: b.arn,
        broker_id: b.id.to_string(),
    }))
}

#[utoipa::path(get, path = "/v1/brokers/{broker-id}", operation_id = "DescribeBroker", tag = "brokers",
    params(("broker-id" = String, Path)),
    responses((status = 200, body = DescribeBrokerResponse),
              (status = 404, body = ErrorBody, description = "NotFoundException")))]
pub async fn describe_broker(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<DescribeBrokerResponse>, ApiError> {
    Ok(Json(views::describe_broker(
        brokers::describe_broker(&state, &id).await?,
    )))
}

#[utoipa::path(get, path = "/v1/brokers", operation_id = "ListBrokers", tag = "brokers",
    params(PageQuery),
    responses((status = 200, body = ListBrokersResponse),
              (status = 400, body = ErrorBody, description = "BadRequestException")))]
pub async fn list_brokers(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Json<ListBrokersResponse>, ApiError> {
    let (rows, next_token) = brokers::list_brokers(&state, &q).await?;
    Ok(Json(ListBrokersResponse {
        broker_summaries: rows.iter().map(views::broker_summary).collect(),
        next_token,
    }))
}

#[utoipa::path(put, path = "/v1/brokers/{broker-id}", operation_id = "UpdateBroker", tag = "brokers",
    params(("broker-id" = String, Path)), request_body = UpdateBrokerRequest,
    responses((status = 200, body = UpdateBrokerResponse),
              (status = 400, body = ErrorBody, description = "BadRequestException"),
              (status = 404, body = ErrorBody, description = "NotFoundException"),
              (status = 409, body = ErrorBody, description = "ConflictException")))]
pub async fn update_broker(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<UpdateBrokerRequest>,
) -> Result<Json<UpdateBrokerResponse>, ApiError> {
    let b = brokers::update_broker(&state, &id, req).await?;
    Ok(Json(views::update_broker(&b)))
}

#[utoipa::path(post, path = "/v1/brokers/{broker-id}/reboot", operation_id = "RebootBroker", tag = "brokers",
    params(("broker-id" = String, Path)),
    responses((status = 200, body = Empty),
              (status = 400, body = ErrorBody, description = "BadRequestException"),
              (status = 404, body = ErrorBody, description = "NotFoundException")))]
pub async fn reboot_broker(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Empty>, ApiError> {
    brokers::reboot_broker(&state, &id).await?;
    Ok(Json(Empty {}))
}

#[utoipa::path(delete, path = "/v1/brokers/{broker-id}", operation_id = "DeleteBroker", tag = "brokers",
    params(("broker-id" = String, Path)),
    responses((status = 200, body = DeleteBrokerResponse),
              (status = 404, body = ErrorBody, description = "NotFoundException")))]
pub async fn delete_broker(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<DeleteBrokerResponse>, ApiError> {
    let b = brokers::delete_broker(&state, &id).await?;
    Ok(Json(DeleteBrokerResponse {
        broker_id: b.id.to_string(),
    }))
}
