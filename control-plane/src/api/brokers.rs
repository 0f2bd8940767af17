use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{ConfigurationRef, UserSummary};
use crate::model::{
    AuthenticationStrategy, BrokerState, DataReplicationMode, DayOfWeek, DeploymentMode,
    EngineType, StorageType,
};

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WeeklyStartTime {
    pub day_of_week: Option<DayOfWeek>,
    /// `HH:MM`, 24-hour.
    pub time_of_day: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Logs {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audit: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub general: Option<bool>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EncryptionOptions {
    pub kms_key_id: Option<String>,
    pub use_aws_owned_key: Option<bool>,
}

/// A user given at broker creation.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct User {
    pub console_access: Option<bool>,
    pub groups: Option<Vec<String>>,
    pub password: Option<String>,
    pub username: Option<String>,
    pub replication_user: Option<bool>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreateBrokerRequest {
    pub authentication_strategy: Option<AuthenticationStrategy>,
    pub auto_minor_version_upgrade: Option<bool>,
    pub broker_name: Option<String>,
    pub configuration: Option<ConfigurationRef>,
    pub creator_request_id: Option<String>,
    pub deployment_mode: Option<DeploymentMode>,
    pub encryption_options: Option<EncryptionOptions>,
    pub engine_type: Option<EngineType>,
    pub engine_version: Option<String>,
    pub host_instance_type: Option<String>,
    /// LDAP is not supported; present only so that it can be refused by name.
    #[schema(value_type = Option<Object>)]
    pub ldap_server_metadata: Option<serde_json::Value>,
    pub logs: Option<Logs>,
    pub maintenance_window_start_time: Option<WeeklyStartTime>,
    pub publicly_accessible: Option<bool>,
    pub security_groups: Option<Vec<String>>,
    pub storage_size: Option<i64>,
    pub storage_type: Option<StorageType>,
    pub subnet_ids: Option<Vec<String>>,
    pub tags: Option<BTreeMap<String, String>>,
    pub users: Option<Vec<User>>,
    pub data_replication_mode: Option<DataReplicationMode>,
    pub data_replication_primary_broker_arn: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreateBrokerResponse {
    pub broker_arn: String,
    pub broker_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BrokerInstance {
    #[serde(rename = "consoleURL", skip_serializing_if = "Option::is_none")]
    pub console_url: Option<String>,
    pub endpoints: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip_address: Option<String>,
    /// Mooring extension: the node behind this instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    /// Mooring extension: the node's availability zone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub availability_zone: Option<String>,
    /// Mooring extension, replicated brokers: `LEADER` or `FOLLOWER` (the leader is listed
    /// first; followers refuse AMQP clients, naming the leader).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
}

/// Why a broker is CRITICAL_ACTION_REQUIRED (Amazon MQ's `ActionRequired`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ActionRequired {
    pub action_required_code: String,
    pub action_required_info: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Configurations {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current: Option<ConfigurationRef>,
    pub history: Vec<ConfigurationRef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pending: Option<ConfigurationRef>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LogsSummary {
    pub audit: bool,
    pub general: bool,
    pub general_log_group: String,
}

/// Mooring extension: a disruptive change waiting for the maintenance window (or a
/// RebootBroker, which applies it at once).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PendingAction {
    /// `ENGINE_VERSION`, `HOST_INSTANCE_TYPE`, `CONFIGURATION` or `AGENT_VERSION`.
    pub action: String,
    /// The version, instance type or `<configuration-id>:<revision>` it moves to.
    pub target: String,
    /// `USER` (UpdateBroker), `AUTO_MINOR_VERSION_UPGRADE` or `AGENT`.
    pub source: String,
    /// When it is due: the start of the window it will be applied in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheduled_at: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DescribeBrokerResponse {
    /// Amazon MQ's member: why the broker is CRITICAL_ACTION_REQUIRED.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub actions_required: Vec<ActionRequired>,
    pub authentication_strategy: AuthenticationStrategy,
    pub auto_minor_version_upgrade: bool,
    pub broker_arn: String,
    pub broker_id: String,
    pub broker_instances: Vec<BrokerInstance>,
    pub broker_name: String,
    pub broker_state: BrokerState,
    pub configurations: Configurations,
    pub created: String,
    pub deployment_mode: DeploymentMode,
    pub data_replication_mode: DataReplicationMode,
    pub encryption_options: EncryptionOptions,
    pub engine_type: EngineType,
    pub engine_version: String,
    pub host_instance_type: String,
    pub logs: LogsSummary,
    pub maintenance_window_start_time: WeeklyStartTime,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pending_engine_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pending_host_instance_type: Option<String>,
    /// Mooring extension (ignored by AWS SDKs): every pending action with its time.
    #[serde(default)]
    pub pending_actions: Vec<PendingAction>,
    pub publicly_accessible: bool,
    pub security_groups: Vec<String>,
    pub storage_type: StorageType,
    pub subnet_ids: Vec<String>,
    pub tags: BTreeMap<String, String>,
    pub users: Vec<UserSummary>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BrokerSummary {
    pub broker_arn: String,
    pub broker_id: String,
    pub broker_name: String,
    pub broker_state: BrokerState,
    pub created: String,
    pub deployment_mode: DeploymentMode,
    pub engine_type: EngineType,
    pub host_instance_type: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ListBrokersResponse {
    pub broker_summaries: Vec<BrokerSummary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpdateBrokerRequest {
    pub authentication_strategy: Option<AuthenticationStrategy>,
    pub auto_minor_version_upgrade: Option<bool>,
    pub configuration: Option<ConfigurationRef>,
    pub engine_version: Option<String>,
    pub host_instance_type: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub ldap_server_metadata: Option<serde_json::Value>,
    pub logs: Option<Logs>,
    pub maintenance_window_start_time: Option<WeeklyStartTime>,
    pub security_groups: Option<Vec<String>>,
    pub storage_size: Option<i64>,
    pub data_replication_mode: Option<DataReplicationMode>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpdateBrokerResponse {
    pub authentication_strategy: AuthenticationStrategy,
    pub auto_minor_version_upgrade: bool,
    pub broker_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub configuration: Option<ConfigurationRef>,
    pub engine_version: String,
    pub host_instance_type: String,
    pub logs: Logs,
    pub maintenance_window_start_time: WeeklyStartTime,
    pub security_groups: Vec<String>,
    pub data_replication_mode: DataReplicationMode,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeleteBrokerResponse {
    pub broker_id: String,
}

/// The empty object several operations answer with.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct Empty {}
