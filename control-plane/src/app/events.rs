//! Replicated brokers' extension operations: ListBrokerEvents (failovers, switchovers, in-sync
//! changes, patch steps) and SwitchoverBroker (a planned change of leader).

use std::time::Duration;

use mooring_agent_protocol::NodeId;

use super::brokers::get_broker;
use super::{paging, AppState};
use crate::api::PageQuery;
use crate::error::ApiError;
use crate::model::DeploymentMode;
use crate::reconcile::leadership::{self, SwitchoverDone, SwitchoverError};
use crate::store::EventRecord;

/// Default page size of ListBrokerEvents.
const LIST_DEFAULT: i64 = 50;
/// How long the switchover route waits for the promotion before answering Conflict.
const SWITCHOVER_DEADLINE: Duration = Duration::from_secs(15);

/// A page of the broker's events, oldest first, and the token of the next page.
pub async fn list_broker_events(
    state: &AppState,
    id: &str,
    q: &PageQuery,
) -> Result<(Vec<EventRecord>, Option<String>), ApiError> {
    let broker = get_broker(state, id).await?;
    let limit = paging::max_results(q.max_results.as_deref(), LIST_DEFAULT)?;
    let after = match paging::decode_token(q.next_token.as_deref())? {
        Some(key) => Some(
            key.parse::<i64>()
                .map_err(|_| ApiError::bad_request("nextToken", "The nextToken is invalid."))?,
        ),
        None => None,
    };
    let rows = state.store.event_list(&broker.id, after, limit + 1).await?;
    Ok(paging::page(rows, limit, |e| e.id.to_string()))
}

/// Moves leadership of a replicated broker to `target` (or the best in-sync follower) and
/// answers once the new leader is committed.
pub async fn switchover_broker(
    state: &AppState,
    id: &str,
    target: Option<String>,
) -> Result<SwitchoverDone, ApiError> {
    let broker = get_broker(state, id).await?;
    if broker.deployment_mode == DeploymentMode::SingleInstance {
        return Err(ApiError::bad_request(
            "broker-id",
            format!(
                "Broker {} is SINGLE_INSTANCE: only replicated brokers can switch over.",
                broker.id
            ),
        ));
    }
    let target = match target {
        Some(t) => {
            let nodes = state.store.node_list_for_broker(&broker.id).await?;
            let node = NodeId(t.clone());
            if !nodes.iter().any(|n| n.id == node) {
                return Err(ApiError::bad_request(
                    "targetNodeId",
                    format!("{t} is not a node of broker {}.", broker.id),
                ));
            }
            Some(node)
        }
        None => None,
    };
    let reason = match &target {
        Some(t) => format!("SwitchoverBroker to {t}"),
        None => "SwitchoverBroker".to_owned(),
    };
    match leadership::switchover(state, &broker.id, target, &reason, SWITCHOVER_DEADLINE).await {
        Ok(done) => Ok(done),
        Err(SwitchoverError::NotReplicated) => Err(ApiError::bad_request(
            "broker-id",
            "The broker's replication is not set up yet; retry once it is RUNNING.",
        )),
        Err(e @ SwitchoverError::NotServing(_)) => {
            Err(ApiError::bad_request("broker-id", format!("{e}.")))
        }
        Err(e @ (SwitchoverError::InProgress | SwitchoverError::TimedOut(_))) => {
            Err(ApiError::conflict("broker-id", format!("{e}.")))
        }
        Err(e @ SwitchoverError::Refused(_)) => {
            Err(ApiError::conflict("targetNodeId", format!("{e}.")))
        }
        Err(SwitchoverError::Store(e)) => Err(e.into()),
    }
}
