use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::model::{AuthenticationStrategy, EngineType};

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreateConfigurationRequest {
    pub authentication_strategy: Option<AuthenticationStrategy>,
    pub engine_type: Option<EngineType>,
    pub engine_version: Option<String>,
    pub name: Option<String>,
    pub tags: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConfigurationRevision {
    pub created: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub revision: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreateConfigurationResponse {
    pub arn: String,
    pub authentication_strategy: AuthenticationStrategy,
    pub created: String,
    pub id: String,
    pub latest_revision: ConfigurationRevision,
    pub name: String,
}

/// DescribeConfiguration's answer and ListConfigurations' items.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Configuration {
    pub arn: String,
    pub authentication_strategy: AuthenticationStrategy,
    pub created: String,
    pub description: String,
    pub engine_type: EngineType,
    pub engine_version: String,
    pub id: String,
    pub latest_revision: ConfigurationRevision,
    pub name: String,
    pub tags: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpdateConfigurationRequest {
    /// Base64 of the configuration file.
    pub data: Option<String>,
    pub description: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpdateConfigurationResponse {
    pub arn: String,
    pub created: String,
    pub id: String,
    pub latest_revision: ConfigurationRevision,
    pub name: String,
    pub warnings: Vec<serde_json::Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ListConfigurationsResponse {
    pub configurations: Vec<Configuration>,
    pub max_results: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DescribeConfigurationRevisionResponse {
    pub configuration_id: String,
    pub created: String,
    pub data: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ListConfigurationRevisionsResponse {
    pub configuration_id: String,
    pub max_results: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
    pub revisions: Vec<ConfigurationRevision>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeleteConfigurationResponse {
    pub configuration_id: String,
}
