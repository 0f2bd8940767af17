use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::model::ChangeType;

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserSummary {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pending_change: Option<ChangeType>,
    pub username: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreateUserRequest {
    pub console_access: Option<bool>,
    pub groups: Option<Vec<String>>,
    pub password: Option<String>,
    pub replication_user: Option<bool>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpdateUserRequest {
    pub console_access: Option<bool>,
    pub groups: Option<Vec<String>>,
    pub password: Option<String>,
    pub replication_user: Option<bool>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserPendingChanges {
    pub console_access: bool,
    pub groups: Vec<String>,
    pub pending_change: ChangeType,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DescribeUserResponse {
    pub broker_id: String,
    pub console_access: bool,
    pub groups: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pending: Option<UserPendingChanges>,
    pub username: String,
    pub replication_user: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ListUsersResponse {
    pub broker_id: String,
    pub max_results: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
    pub users: Vec<UserSummary>,
}
