//! CreateConfiguration, DescribeConfiguration, UpdateConfiguration (a new revision
//! each time), ListConfigurations, DescribeConfigurationRevision,
//! ListConfigurationRevisions, DeleteConfiguration.

use std::collections::BTreeMap;

use base64::Engine as _;
use chrono::{SubsecRound as _, Utc};

use super::{arn, paging, validate, AppState};
use crate::api::{CreateConfigurationRequest, PageQuery, UpdateConfigurationRequest};
use crate::catalog;
use crate::error::ApiError;
use crate::model::{AuthenticationStrategy, EngineType};
use crate::store::{
    ConfigurationId, ConfigurationRecord, Constraint, NewConfiguration, RevisionRecord, StoreError,
};

const LIST_DEFAULT: i64 = 100;

/// Revision 1 of every configuration: RabbitMQ's setting as Amazon MQ ships it.
pub const DEFAULT_DATA: &str =
    "# Mooring broker configuration (rabbitmq.conf syntax)\nconsumer_timeout = 1800000\n";

fn not_found(id: &str) -> ApiError {
    ApiError::not_found(
        "configuration-id",
        format!("Can't find requested configuration [{id}]. Make sure your configuration exists."),
    )
}

async fn get(state: &AppState, id: &str) -> Result<ConfigurationRecord, ApiError> {
    let parsed = ConfigurationId::parse(id).ok_or_else(|| not_found(id))?;
    match state.store.configuration_get(&parsed).await {
        Ok(c) => Ok(c),
        Err(StoreError::NotFound(_)) => Err(not_found(id)),
        Err(e) => Err(e.into()),
    }
}

pub async fn create_configuration(
    state: &AppState,
    req: CreateConfigurationRequest,
) -> Result<ConfigurationRecord, ApiError> {
    let name = req.name.ok_or_else(|| {
        ApiError::bad_request("name", "The request is missing the required member name.")
    })?;
    validate::configuration_name(&name)?;
    let engine_type = req.engine_type.ok_or_else(|| {
        ApiError::bad_request(
            "engineType",
            "The request is missing the required member engineType.",
        )
    })?;
    if engine_type != EngineType::Rabbitmq {
        return Err(ApiError::bad_request(
            "engineType",
            "Engine type ACTIVEMQ is not supported: Mooring serves RABBITMQ brokers only.",
        ));
    }
    let version = match &req.engine_version {
        Some(v) => catalog::engine_version(engine_type, v).ok_or_else(|| {
            ApiError::bad_request(
                "engineVersion",
                format!("Engine version {v} is not supported."),
            )
        })?,
        None => catalog::default_engine_version(engine_type).ok_or_else(|| {
            ApiError::internal(anyhow::anyhow!("the catalog has no {engine_type} version"))
        })?,
    };
    match req.authentication_strategy {
        None | Some(AuthenticationStrategy::Simple) => {}
        Some(other) => {
            return Err(ApiError::bad_request(
                "authenticationStrategy",
                format!("Authentication strategy {other} is not supported; use SIMPLE."),
            ))
        }
    }
    let tags: BTreeMap<String, String> = req.tags.unwrap_or_default();
    validate::tags(&tags)?;
    let id = ConfigurationId::generate();
    let record = state
        .store
        .configuration_insert(NewConfiguration {
            arn: arn::configuration_arn(&state.config, &id),
            id,
            name,
            engine_type,
            engine_version: version.version.to_owned(),
            authentication_strategy: AuthenticationStrategy::Simple,
            data: base64::engine::general_purpose::STANDARD.encode(DEFAULT_DATA),
            description: Some("Auto-generated default for a new configuration".to_owned()),
            tags: tags.into_iter().collect(),
            now: Utc::now().trunc_subsecs(3),
        })
        .await?;
    tracing::info!(configuration_id = %record.id, "configuration created");
    Ok(record)
}

pub async fn describe_configuration(
    state: &AppState,
    id: &str,
) -> Result<(ConfigurationRecord, BTreeMap<String, String>), ApiError> {
    let config = get(state, id).await?;
    let tags = state.store.tag_list(&config.arn).await?;
    Ok((config, tags))
}

pub async fn update_configuration(
    state: &AppState,
    id: &str,
    req: UpdateConfigurationRequest,
) -> Result<ConfigurationRecord, ApiError> {
    let data = req.data.ok_or_else(|| {
        ApiError::bad_request("data", "The request is missing the required member data.")
    })?;
    validate::configuration_data(&data)?;
    if req
        .description
        .as_ref()
        .is_some_and(|d| d.chars().count() > 500)
    {
        return Err(ApiError::bad_request(
            "description",
            "The description must be at most 500 characters long.",
        ));
    }
    let config = get(state, id).await?;
    let updated = state
        .store
        .configuration_add_revision(&config.id, data.trim(), req.description.as_deref())
        .await
        .map_err(|e| match e {
            StoreError::NotFound(_) => not_found(id),
            e => e.into(),
        })?;
    tracing::info!(configuration_id = %updated.id, revision = updated.latest_revision, "configuration revised");
    Ok(updated)
}

pub async fn list_configurations(
    state: &AppState,
    q: &PageQuery,
) -> Result<
    (
        Vec<(ConfigurationRecord, BTreeMap<String, String>)>,
        Option<String>,
        i64,
    ),
    ApiError,
> {
    let limit = paging::max_results(q.max_results.as_deref(), LIST_DEFAULT)?;
    let after = paging::decode_token(q.next_token.as_deref())?;
    let rows = state
        .store
        .configuration_list(after.as_deref(), limit + 1)
        .await?;
    let (rows, token) = paging::page(rows, limit, |c| c.id.to_string());
    let mut out = Vec::with_capacity(rows.len());
    for c in rows {
        let tags = state.store.tag_list(&c.arn).await?;
        out.push((c, tags));
    }
    Ok((out, token, limit))
}

pub async fn describe_revision(
    state: &AppState,
    id: &str,
    revision: &str,
) -> Result<RevisionRecord, ApiError> {
    let config = get(state, id).await?;
    let missing = || {
        ApiError::not_found(
            "configuration-revision",
            format!("Can't find requested revision [{revision}] of configuration [{id}]."),
        )
    };
    let n: i64 = revision.parse().map_err(|_| missing())?;
    match state.store.configuration_revision_get(&config.id, n).await {
        Ok(r) => Ok(r),
        Err(StoreError::NotFound(_)) => Err(missing()),
        Err(e) => Err(e.into()),
    }
}

pub async fn list_revisions(
    state: &AppState,
    id: &str,
    q: &PageQuery,
) -> Result<
    (
        ConfigurationRecord,
        Vec<RevisionRecord>,
        Option<String>,
        i64,
    ),
    ApiError,
> {
    let limit = paging::max_results(q.max_results.as_deref(), LIST_DEFAULT)?;
    let after = match paging::decode_token(q.next_token.as_deref())? {
        Some(key) => key
            .parse::<i64>()
            .map_err(|_| ApiError::bad_request("nextToken", "The nextToken is invalid."))?,
        None => 0,
    };
    let config = get(state, id).await?;
    let rows = state
        .store
        .configuration_revision_list(&config.id, after, limit + 1)
        .await?;
    let (rows, token) = paging::page(rows, limit, |r| r.revision.to_string());
    Ok((config, rows, token, limit))
}

pub async fn delete_configuration(state: &AppState, id: &str) -> Result<ConfigurationId, ApiError> {
    let config = get(state, id).await?;
    match state.store.configuration_delete(&config.id).await {
        Ok(()) => {
            tracing::info!(configuration_id = %config.id, "configuration deleted");
            Ok(config.id)
        }
        Err(StoreError::NotFound(_)) => Err(not_found(id)),
        Err(StoreError::Constraint(Constraint::ConfigurationInUse)) => Err(ApiError::conflict(
            "configuration-id",
            format!("Configuration {id} is in use by a broker and cannot be deleted."),
        )),
        Err(e) => Err(e.into()),
    }
}
