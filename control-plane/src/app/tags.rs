//! CreateTags, DeleteTags, ListTags on brokers and configurations, by ARN.

use std::collections::BTreeMap;

use super::arn::{self, Resource};
use super::{validate, AppState};
use crate::error::ApiError;
use crate::store::StoreError;

/// Checks that `resource_arn` names an existing broker or configuration of ours and
/// returns the ARN as stored (tags are keyed by it).
async fn existing_resource(state: &AppState, resource_arn: &str) -> Result<String, ApiError> {
    let not_found = || {
        ApiError::not_found(
            "resource-arn",
            format!("Can't find requested resource [{resource_arn}]."),
        )
    };
    let found = match arn::parse(&state.config, resource_arn).ok_or_else(not_found)? {
        Resource::Broker(id) => state.store.broker_get(&id).await.map(|b| b.arn),
        Resource::Configuration(id) => state.store.configuration_get(&id).await.map(|c| c.arn),
    };
    match found {
        // A broker ARN names the broker's name too: the whole ARN must match.
        Ok(stored) if stored == resource_arn => Ok(stored),
        Ok(_) | Err(StoreError::NotFound(_)) => Err(not_found()),
        Err(e) => Err(e.into()),
    }
}

pub async fn create_tags(
    state: &AppState,
    resource_arn: &str,
    tags: Option<BTreeMap<String, String>>,
) -> Result<(), ApiError> {
    let tags = tags.ok_or_else(|| {
        ApiError::bad_request("tags", "The request is missing the required member tags.")
    })?;
    validate::tags(&tags)?;
    let arn = existing_resource(state, resource_arn).await?;
    let mut all = state.store.tag_list(&arn).await?;
    all.extend(tags.clone());
    validate::tags(&all)?;
    state.store.tag_put(&arn, &tags).await?;
    Ok(())
}

pub async fn delete_tags(
    state: &AppState,
    resource_arn: &str,
    keys: &[String],
) -> Result<(), ApiError> {
    if keys.is_empty() {
        return Err(ApiError::bad_request(
            "tagKeys",
            "The request is missing the required member tagKeys.",
        ));
    }
    let arn = existing_resource(state, resource_arn).await?;
    state.store.tag_delete(&arn, keys).await?;
    Ok(())
}

pub async fn list_tags(
    state: &AppState,
    resource_arn: &str,
) -> Result<BTreeMap<String, String>, ApiError> {
    let arn = existing_resource(state, resource_arn).await?;
    Ok(state.store.tag_list(&arn).await?)
}
