//! `POST /v1/brokers/{broker-id}/switchover` (Mooring extension, action
//! `mq:SwitchoverBroker`): a planned change of leader of a replicated broker, to
//! `targetNodeId` or to the most advanced in-sync follower. Answers once the new leader is
//! committed; the nodes switch roles at their next heartbeat.

use axum::extract::{Path, State};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::extract::ApiJson;
use crate::api::ErrorBody;
use crate::app::{events, AppState};
use crate::error::ApiError;

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SwitchoverBrokerRequest {
    /// The node to lead (a `nodeId` from DescribeBroker's `brokerInstances`); default: the
    /// most advanced in-sync follower.
    #[serde(default)]
    pub target_node_id: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SwitchoverBrokerResponse {
    pub broker_id: String,
    pub from_node_id: String,
    pub to_node_id: String,
    /// The leadership epoch the new leader leads under.
    pub epoch: u64,
}

#[utoipa::path(post, path = "/v1/brokers/{broker-id}/switchover", operation_id = "SwitchoverBroker", tag = "brokers",
    params(("broker-id" = String, Path)), request_body = SwitchoverBrokerRequest,
    responses((status = 200, body = SwitchoverBrokerResponse),
              (status = 400, body = ErrorBody, description = "BadRequestException"),
              (status = 404, body = ErrorBody, description = "NotFoundException"),
              (status = 409, body = ErrorBody, description = "ConflictException")))]
pub async fn switchover_broker(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<SwitchoverBrokerRequest>,
) -> Result<Json<SwitchoverBrokerResponse>, ApiError> {
    let done = events::switchover_broker(&state, &id, req.target_node_id).await?;
    Ok(Json(SwitchoverBrokerResponse {
        broker_id: id,
        from_node_id: done.from.0,
        to_node_id: done.to.0,
        epoch: done.epoch.0,
    }))
}
