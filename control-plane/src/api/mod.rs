//! Amazon MQ's wire model (REST-JSON, camelCase members, as botocore's `mq` service
//! model describes it): the request and response bodies of the public API, with
//! their OpenAPI schemas. Parsing is lenient like AWS's own services: unknown
//! members are ignored (so newer SDKs keep working) and required members are
//! checked by the app layer, which names the missing one in `errorAttribute`.

mod brokers;
mod catalog;
mod configurations;
mod tags;
mod users;

pub use brokers::*;
pub use catalog::*;
pub use configurations::*;
pub use tags::*;
pub use users::*;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// An ISO 8601 timestamp as Amazon MQ writes it (UTC, milliseconds).
pub fn timestamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The body of every error response; the error's name travels in `x-amzn-ErrorType`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ErrorBody {
    /// The request member the error is about, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_attribute: Option<String>,
    pub message: String,
}

/// `maxResults` and `nextToken` of every List/Describe-many operation.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// 1-100.
    pub max_results: Option<String>,
    /// Opaque token from the previous page.
    pub next_token: Option<String>,
}

/// A configuration and revision, as brokers reference them.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ConfigurationRef {
    pub id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
}
