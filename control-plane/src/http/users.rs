//! Broker user routes.

use axum::extract::{Path, State};
use axum::Json;

use super::audit;
use super::extract::{ApiJson, ApiQuery};
use super::views;
use crate::api::*;
use crate::app::{users, AppState};
use crate::error::ApiError;

#[utoipa::path(post, path = "/v1/brokers/{broker-id}/users/{username}", operation_id = "CreateUser", tag = "users",
    params(("broker-id" = String, Path), ("username" = String, Path)), request_body = CreateUserRequest,
    responses((status = 200, body = Empty),
              (status = 400, body = ErrorBody, description = "BadRequestException"),
              (status = 404, body = ErrorBody, description = "NotFoundException"),
              (status = 409, body = ErrorBody, description = "ConflictException")))]
pub async fn create_user(
    State(state): State<AppState>,
    Path((broker_id, username)): Path<(String, String)>,
    ApiJson(req): ApiJson<CreateUserRequest>,
) -> Result<Json<Empty>, ApiError> {
    // The success record commits with the user: one commit, not two.
    let record = audit::change_record();
    users::create_user(&state, &broker_id, &username, req, record.as_ref()).await?;
    if record.is_some() {
        audit::note_recorded_with_change();
    }
    Ok(Json(Empty {}))
}

#[utoipa::path(get, path = "/v1/brokers/{broker-id}/users/{username}", operation_id = "DescribeUser", tag = "users",
    params(("broker-id" = String, Path), ("username" = String, Path)),
    responses((status = 200, body = DescribeUserResponse),
              (status = 404, body = ErrorBody, description = "NotFoundException")))]
pub async fn describe_user(
    State(state): State<AppState>,
    Path((broker_id, username)): Path<(String, String)>,
) -> Result<Json<DescribeUserResponse>, ApiError> {
    Ok(Json(views::describe_user(
        &users::describe_user(&state, &broker_id, &username).await?,
    )))
}

#[utoipa::path(put, path = "/v1/brokers/{broker-id}/users/{username}", operation_id = "UpdateUser", tag = "users",
    params(("broker-id" = String, Path), ("username" = String, Path)), request_body = UpdateUserRequest,
    responses((status = 200, body = Empty),
              (status = 400, body = ErrorBody, description = "BadRequestException"),
              (status = 404, body = ErrorBody, description = "NotFoundException")))]
pub async fn update_user(
    State(state): State<AppState>,
    Path((broker_id, username)): Path<(String, String)>,
    ApiJson(req): ApiJson<UpdateUserRequest>,
) -> Result<Json<Empty>, ApiError> {
    users::update_user(&state, &broker_id, &username, req).await?;
    Ok(Json(Empty {}))
}

#[utoipa::path(delete, path = "/v1/brokers/{broker-id}/users/{username}", operation_id = "DeleteUser", tag = "users",
    params(("broker-id" = String, Path), ("username" = String, Path)),
    responses((status = 200, body = Empty),
              (status = 404, body = ErrorBody, description = "NotFoundException")))]
pub async fn delete_user(
    State(state): State<AppState>,
    Path((broker_id, username)): Path<(String, String)>,
) -> Result<Json<Empty>, ApiError> {
    users::delete_user(&state, &broker_id, &username).await?;
    Ok(Json(Empty {}))
}

#[utoipa::path(get, path = "/v1/brokers/{broker-id}/users", operation_id = "ListUsers", tag = "users",
    params(("broker-id" = String, Path), PageQuery),
    responses((status = 200, body = ListUsersResponse),
              (status = 404, body = ErrorBody, description = "NotFoundException")))]
pub async fn list_users(
    State(state): State<AppState>,
    Path(broker_id): Path<String>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Json<ListUsersResponse>, ApiError> {
    let (rows, next_token, max_results) = users::list_users(&state, &broker_id, &q).await?;
    Ok(Json(ListUsersResponse {
        broker_id,
        max_results,
        next_token,
        users: rows.iter().map(views::user_summary).collect(),
    }))
}
