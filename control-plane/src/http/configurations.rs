//! Configuration routes.

use axum::extract::{Path, State};
use axum::Json;

use super::extract::{ApiJson, ApiQuery};
use super::views;
use crate::api::*;
use crate::app::{configurations, AppState};
use crate::error::ApiError;

#[utoipa::path(post, path = "/v1/configurations", operation_id = "CreateConfiguration", tag = "configurations",
    request_body = CreateConfigurationRequest,
    responses((status = 200, body = CreateConfigurationResponse),
              (status = 400, body = ErrorBody, description = "BadRequestException")))]
pub async fn create_configuration(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<CreateConfigurationRequest>,
) -> Result<Json<CreateConfigurationResponse>, ApiError> {
    let c = configurations::create_configuration(&state, req).await?;
    Ok(Json(CreateConfigurationResponse {
        arn: c.arn.clone(),
        authentication_strategy: c.authentication_strategy,
        created: timestamp(c.created_at),
        id: c.id.to_string(),
        latest_revision: views::revision(&c),
        name: c.name.clone(),
    }))
}

#[utoipa::path(get, path = "/v1/configurations/{configuration-id}", operation_id = "DescribeConfiguration",
    tag = "configurations", params(("configuration-id" = String, Path)),
    responses((status = 200, body = Configuration),
              (status = 404, body = ErrorBody, description = "NotFoundException")))]
pub async fn describe_configuration(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Configuration>, ApiError> {
    let (c, tags) = configurations::describe_configuration(&state, &id).await?;
    Ok(Json(views::configuration(&c, tags)))
}

#[utoipa::path(put, path = "/v1/configurations/{configuration-id}", operation_id = "UpdateConfiguration",
    tag = "configurations", params(("configuration-id" = String, Path)), request_body = UpdateConfigurationRequest,
    responses((status = 200, body = UpdateConfigurationResponse),
              (status = 400, body = ErrorBody, description = "BadRequestException"),
              (status = 404, body = ErrorBody, description = "NotFoundException")))]
pub async fn update_configuration(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<UpdateConfigurationRequest>,
) -> Result<Json<UpdateConfigurationResponse>, ApiError> {
    let c = configurations::update_configuration(&state, &id, req).await?;
    Ok(Json(UpdateConfigurationResponse {
        arn: c.arn.clone(),
        created: timestamp(c.created_at),
        id: c.id.to_string(),
        latest_revision: views::revision(&c),
        name: c.name.clone(),
        warnings: Vec::new(),
    }))
}

#[utoipa::path(get, path = "/v1/configurations", operation_id = "ListConfigurations", tag = "configurations",
    params(PageQuery),
    responses((status = 200, body = ListConfigurationsResponse),
              (status = 400, body = ErrorBody, description = "BadRequestException")))]
pub async fn list_configurations(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Json<ListConfigurationsResponse>, ApiError> {
    let (rows, next_token, max_results) = configurations::list_configurations(&state, &q).await?;
    Ok(Json(ListConfigurationsResponse {
        configurations: rows
            .into_iter()
            .map(|(c, tags)| views::configuration(&c, tags))
            .collect(),
        max_results,
        next_token,
    }))
}

#[utoipa::path(get, path = "/v1/configurations/{configuration-id}/revisions/{configuration-revision}",
    operation_id = "DescribeConfigurationRevision", tag = "configurations",
    params(("configuration-id" = String, Path), ("configuration-revision" = String, Path)),
    responses((status = 200, body = DescribeConfigurationRevisionResponse),
              (status = 404, body = ErrorBody, description = "NotFoundException")))]
pub async fn describe_revision(
    State(state): State<AppState>,
    Path((id, revision)): Path<(String, String)>,
) -> Result<Json<DescribeConfigurationRevisionResponse>, ApiError> {
    let r = configurations::describe_revision(&state, &id, &revision).await?;
    Ok(Json(DescribeConfigurationRevisionResponse {
        configuration_id: r.configuration_id.to_string(),
        created: timestamp(r.created_at),
        data: r.data,
        description: r.description,
    }))
}

#[utoipa::path(get, path = "/v1/configurations/{configuration-id}/revisions",
    operation_id = "ListConfigurationRevisions", tag = "configurations",
    params(("configuration-id" = String, Path), PageQuery),
    responses((status = 200, body = ListConfigurationRevisionsResponse),
              (status = 404, body = ErrorBody, description = "NotFoundException")))]
pub async fn list_revisions(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Json<ListConfigurationRevisionsResponse>, ApiError> {
    let (c, rows, next_token, max_results) =
        configurations::list_revisions(&state, &id, &q).await?;
    Ok(Json(ListConfigurationRevisionsResponse {
        configuration_id: c.id.to_string(),
        max_results,
        next_token,
        revisions: rows.iter().map(views::revision_summary).collect(),
    }))
}

#[utoipa::path(delete, path = "/v1/configurations/{configuration-id}", operation_id = "DeleteConfiguration",
    tag = "configurations", params(("configuration-id" = String, Path)),
    responses((status = 200, body = DeleteConfigurationResponse),
              (status = 404, body = ErrorBody, description = "NotFoundException"),
              (status = 409, body = ErrorBody, description = "ConflictException")))]
pub async fn delete_configuration(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<DeleteConfigurationResponse>, ApiError> {
    let id = configurations::delete_configuration(&state, &id).await?;
    Ok(Json(DeleteConfigurationResponse {
        configuration_id: id.to_string(),
    }))
}
