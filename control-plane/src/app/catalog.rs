//! DescribeBrokerEngineTypes and DescribeBrokerInstanceOptions, read from the catalog.

use super::paging;
use crate::catalog::{self, InstanceTypeSpec};
use crate::error::ApiError;
use crate::model::{EngineType, StorageType};

const LIST_DEFAULT: i64 = 100;

/// Paging over an in-memory list: the token is the index of the next item.
fn page_of<T: Clone>(
    items: &[T],
    max_results: Option<&str>,
    token: Option<&str>,
) -> Result<(Vec<T>, Option<String>, i64), ApiError> {
    let limit = paging::max_results(max_results, LIST_DEFAULT)?;
    let start = match paging::decode_token(token)? {
        Some(key) => key
            .parse::<usize>()
            .map_err(|_| ApiError::bad_request("nextToken", "The nextToken is invalid."))?,
        None => 0,
    };
    let limit_usize = usize::try_from(limit).unwrap_or(usize::MAX);
    let end = start.saturating_add(limit_usize).min(items.len());
    let page = items.get(start..end).map(<[T]>::to_vec).unwrap_or_default();
    let token = (end < items.len()).then(|| paging::encode_token(&end.to_string()));
    Ok((page, token, limit))
}

fn engine_filter(raw: Option<&str>) -> Result<Option<EngineType>, ApiError> {
    raw.map(|s| {
        EngineType::parse(&s.to_ascii_uppercase())
            .ok_or_else(|| ApiError::bad_request("engineType", format!("Unknown engine type {s}.")))
    })
    .transpose()
}

/// An engine type and its versions, newest first.
pub type EngineVersions = (EngineType, Vec<&'static str>);

/// `(engine type, versions newest first)` for each engine with any version.
pub fn engine_types(
    catalog: &catalog::Catalog,
    engine: Option<&str>,
    max_results: Option<&str>,
    token: Option<&str>,
) -> Result<(Vec<EngineVersions>, Option<String>, i64), ApiError> {
    let filter = engine_filter(engine)?;
    let all: Vec<EngineVersions> = EngineType::ALL
        .iter()
        .filter(|e| filter.is_none_or(|f| f == **e))
        .map(|e| {
            (
                *e,
                catalog
                    .engine_versions(*e)
                    .into_iter()
                    .map(|v| v.version)
                    .collect::<Vec<_>>(),
            )
        })
        .filter(|(_, versions)| !versions.is_empty())
        .collect();
    page_of(&all, max_results, token)
}

pub fn instance_options(
    engine: Option<&str>,
    host_instance_type: Option<&str>,
    storage_type: Option<&str>,
    max_results: Option<&str>,
    token: Option<&str>,
) -> Result<(Vec<&'static InstanceTypeSpec>, Option<String>, i64), ApiError> {
    let engine = engine_filter(engine)?;
    let storage = storage_type
        .map(|s| {
            StorageType::parse(&s.to_ascii_uppercase()).ok_or_else(|| {
                ApiError::bad_request("storageType", format!("Unknown storage type {s}."))
            })
        })
        .transpose()?;
    // Only RABBITMQ on EBS is served.
    let served = engine.is_none_or(|e| e == EngineType::Rabbitmq)
        && storage.is_none_or(|s| s == StorageType::Ebs);
    let all: Vec<&'static InstanceTypeSpec> = catalog::INSTANCE_TYPES
        .iter()
        .filter(|t| served && host_instance_type.is_none_or(|h| h == t.name))
        .collect();
    page_of(&all, max_results, token)
}
