use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::model::{DeploymentMode, EngineType, StorageType};

#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct EngineTypesQuery {
    pub engine_type: Option<String>,
    pub max_results: Option<String>,
    pub next_token: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct InstanceOptionsQuery {
    pub engine_type: Option<String>,
    pub host_instance_type: Option<String>,
    pub storage_type: Option<String>,
    pub max_results: Option<String>,
    pub next_token: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EngineVersion {
    pub name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BrokerEngineType {
    pub engine_type: EngineType,
    pub engine_versions: Vec<EngineVersion>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DescribeBrokerEngineTypesResponse {
    pub broker_engine_types: Vec<BrokerEngineType>,
    pub max_results: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AvailabilityZone {
    pub name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BrokerInstanceOption {
    pub availability_zones: Vec<AvailabilityZone>,
    pub engine_type: EngineType,
    pub host_instance_type: String,
    pub storage_type: StorageType,
    pub supported_deployment_modes: Vec<DeploymentMode>,
    pub supported_engine_versions: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DescribeBrokerInstanceOptionsResponse {
    pub broker_instance_options: Vec<BrokerInstanceOption>,
    pub max_results: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
}
