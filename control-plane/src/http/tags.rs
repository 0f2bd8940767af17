//! Tag routes; the resource ARN is the (percent-encoded) last path segment.

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::Json;

use super::extract::{query_values, ApiJson};
use crate::api::*;
use crate::app::{tags, AppState};
use crate::error::ApiError;

#[utoipa::path(post, path = "/v1/tags/{resource-arn}", operation_id = "CreateTags", tag = "tags",
    params(("resource-arn" = String, Path)), request_body = CreateTagsRequest,
    responses((status = 204),
              (status = 400, body = ErrorBody, description = "BadRequestException"),
              (status = 404, body = ErrorBody, description = "NotFoundException")))]
pub async fn create_tags(
    State(state): State<AppState>,
    Path(arn): Path<String>,
    ApiJson(req): ApiJson<CreateTagsRequest>,
) -> Result<StatusCode, ApiError> {
    tags::create_tags(&state, &arn, req.tags).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(delete, path = "/v1/tags/{resource-arn}", operation_id = "DeleteTags", tag = "tags",
    params(("resource-arn" = String, Path), ("tagKeys" = Vec<String>, Query)),
    responses((status = 204),
              (status = 400, body = ErrorBody, description = "BadRequestException"),
              (status = 404, body = ErrorBody, description = "NotFoundException")))]
pub async fn delete_tags(
    State(state): State<AppState>,
    Path(arn): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<StatusCode, ApiError> {
    let keys = query_values(query.as_deref(), "tagKeys");
    tags::delete_tags(&state, &arn, &keys).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/v1/tags/{resource-arn}", operation_id = "ListTags", tag = "tags",
    params(("resource-arn" = String, Path)),
    responses((status = 200, body = ListTagsResponse),
              (status = 404, body = ErrorBody, description = "NotFoundException")))]
pub async fn list_tags(
    State(state): State<AppState>,
    Path(arn): Path<String>,
) -> Result<Json<ListTagsResponse>, ApiError> {
    Ok(Json(ListTagsResponse {
        tags: tags::list_tags(&state, &arn).await?,
    }))
}
