//! `GET /v1/brokers/{broker-id}/events` (Mooring extension, action `mq:ListBrokerEvents`):
//! a broker's failovers, switchovers, in-sync changes and patch steps, oldest first, paged
//! like ListBrokers.

use axum::extract::{Path, State};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::extract::ApiQuery;
use crate::api::{timestamp, ErrorBody, PageQuery};
use crate::app::{events, AppState};
use crate::error::ApiError;
use crate::store::EventRecord;

/// One event.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BrokerEvent {
    /// When it happened (ISO 8601).
    pub time: String,
    /// `failover`, `switchover`, `switchover-refused`, `in-sync-change`, `patch-step`, ...
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from_node_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to_node_id: Option<String>,
    /// The leadership epoch it led to (promotions) or happened under.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
    pub reason: String,
    /// Failover: from the old leader's last heartbeat to the promotion; switchover: from
    /// the request to the promotion.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ListBrokerEventsResponse {
    pub events: Vec<BrokerEvent>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
}

fn view(e: EventRecord) -> BrokerEvent {
    BrokerEvent {
        time: timestamp(e.at),
        kind: e.kind,
        from_node_id: e.from_node.map(|n| n.0),
        to_node_id: e.to_node.map(|n| n.0),
        epoch: e.epoch,
        reason: e.reason,
        duration_ms: e.duration_ms,
    }
}

#[utoipa::path(get, path = "/v1/brokers/{broker-id}/events", operation_id = "ListBrokerEvents", tag = "brokers",
    params(("broker-id" = String, Path), PageQuery),
    responses((status = 200, body = ListBrokerEventsResponse),
              (status = 400, body = ErrorBody, description = "BadRequestException"),
              (status = 404, body = ErrorBody, description = "NotFoundException")))]
pub async fn list_broker_events(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Json<ListBrokerEventsResponse>, ApiError> {
    let (rows, next_token) = events::list_broker_events(&state, &id, &q).await?;
    Ok(Json(ListBrokerEventsResponse {
        events: rows.into_iter().map(view).collect(),
        next_token,
    }))
}
