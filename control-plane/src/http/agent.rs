//! The agent API (`/agent/v1/nodes/{node}/...`, see `mooring_agent_protocol`): broker agents
//! register, heartbeat, fetch their desired configuration and report what they applied.
//!
//! Each request carries the node's token as `Authorization: Bearer`; the SHA-256 of it must
//! equal the hash recorded at the node's latest start (compared in constant time), so an
//! agent reaches only its own node's routes, and an agent from before a restart (old token)
//! none. Handlers record what agents say and wake the reconcilers when it matters (a node
//! became ready, a generation was applied); reconcilers draw the conclusions.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::Utc;
use mooring_agent_protocol::{
    ApplyReport, DesiredConfig, DesiredPointer, Generation, Heartbeat, NodeId, RegisterRequest,
};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::app::AppState;
use crate::catalog;
use crate::plan::config::{desired_config, replication_spec};
use crate::store::{NodeAuth, StoreError};

/// The longest a node's recorded heartbeat may lag the agent's latest, when nothing else
/// changed. Well under `plan::nodes::HEARTBEAT_FRESHNESS`.
const HEARTBEAT_WRITE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(3);
const _: () = assert!(
    HEARTBEAT_WRITE_INTERVAL.as_secs() * 3 <= crate::plan::nodes::HEARTBEAT_FRESHNESS.as_secs()
);

/// A configuration read races with writers when the broker's generation moves between the
/// first and last read; retried this many times before answering 503.
const CONFIG_READ_ATTEMPTS: usize = 5;

/// The agent API's routes, ready to be merged into the main router.
pub fn router<S>(state: AppState) -> Router<S> {
    Router::new()
        .route("/agent/v1/nodes/{node}/register", post(register))
        .route("/agent/v1/nodes/{node}/heartbeat", post(heartbeat))
        .route("/agent/v1/nodes/{node}/config", get(config))
        .route("/agent/v1/nodes/{node}/applied", post(applied))
        .with_state(state)
}

/// SHA-256 of a token, hex: what the node row stores.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

#[derive(Debug, thiserror::Error)]
enum AgentError {
    #[error("unauthorized")]
    Unauthorized,
    #[error("{0}")]
    Unavailable(&'static str),
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl From<StoreError> for AgentError {
    fn from(e: StoreError) -> Self {
        AgentError::Internal(e.into())
    }
}

impl IntoResponse for AgentError {
    fn into_response(self) -> Response {
        let status = match &self {
            AgentError::Unauthorized => StatusCode::UNAUTHORIZED,
            AgentError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            AgentError::Internal(e) => {
                tracing::error!("agent API: {e:#}");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        (
            status,
            Json(serde_json::json!({ "message": self.to_string() })),
        )
            .into_response()
    }
}

/// The node the request speaks for, if its token is the node's current one. Unknown nodes
/// and wrong tokens look the same to the caller.
async fn authenticate(
    state: &AppState,
    node: &str,
    headers: &HeaderMap,
) -> Result<(NodeId, NodeAuth), AgentError> {
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or(AgentError::Unauthorized)?;
    if !NodeId::is_valid(node) {
        return Err(AgentError::Unauthorized);
    }
    let id = NodeId(node.to_owned());
    let auth = match state.store.node_auth(&id).await {
        Ok(auth) => auth,
        Err(StoreError::NotFound(_)) => return Err(AgentError::Unauthorized),
        Err(e) => return Err(e.into()),
    };
    let presented = token_hash(token);
    let expected = auth.token_hash.as_deref().unwrap_or("");
    if bool::from(presented.as_bytes().ct_eq(expected.as_bytes())) && !expected.is_empty() {
        Ok((id, auth))
    } else {
        Err(AgentError::Unauthorized)
    }
}

fn pointer(auth: &NodeAuth) -> Json<DesiredPointer> {
    Json(DesiredPointer {
        desired_generation: Generation(u64::try_from(auth.desired_generation).unwrap_or(0)),
        lease: None,
        in_sync: None,
        release_lease: false,
        leaving: Vec::new(),
        hurry: false,
    })
}

fn to_i64(g: Generation) -> i64 {
    i64::try_from(g.0).unwrap_or(i64::MAX)
}

async fn register(
    State(state): State<AppState>,
    Path(node): Path<String>,
    headers: HeaderMap,
    Json(req): Json<RegisterRequest>,
) -> Result<Json<DesiredPointer>, AgentError> {
    let (id, auth) = authenticate(&state, &node, &headers).await?;
    // Nothing applied: a fresh data directory. A replicated node that had run before lost
    // its data and must not stay a failover candidate (issue 5, node replacement).
    if req.applied_generation.0 == 0
        && state
            .store
            .replication_node_lost_data(&id, Utc::now())
            .await?
    {
        tracing::warn!(node = %id, "agent came back without its data: out of the in-sync set until it has copied from the leader");
        state.wake_reconcilers();
    }
    state
        .store
        .node_register(&id, &req.agent_version, req.applied_generation, Utc::now())
        .await?;
    tracing::info!(node = %id, amqp = %req.amqp_addr, applied = %req.applied_generation, "agent registered");
    state.wake_reconcilers();
    Ok(pointer(&auth))
}

async fn heartbeat(
    State(state): State<AppState>,
    Path(node): Path<String>,
    headers: HeaderMap,
    Json(hb): Json<Heartbeat>,
) -> Result<Json<DesiredPointer>, AgentError> {
    let (id, auth) = authenticate(&state, &node, &headers).await?;
    let now = Utc::now();
    if auth.replicated {
        return replicated_heartbeat(&state, &id, &auth, &hb).await;
    }
    let applied_changed = to_i64(hb.applied_generation) != auth.applied_generation;
    let changed = applied_changed
        || hb.engine.ready != auth.engine_ready
        || hb.rejected.is_some() != auth.rejected;
    // A heartbeat that only says "still here" is written at most every
    // HEARTBEAT_WRITE_INTERVAL: freshness is judged over several of those, and the database
    // is spared one write per agent per second.
    let recently_written = auth.last_heartbeat.is_some_and(|t| {
        now.signed_duration_since(t)
            .to_std()
            .is_ok_and(|age| age < HEARTBEAT_WRITE_INTERVAL)
    });
    if changed || !recently_written {
        state
            .store
            .node_heartbeat(
                &id,
                hb.applied_generation,
                &hb.engine,
                hb.rejected.as_ref(),
                now,
            )
            .await?;
    }
    // Most heartbeats change nothing a reconciler acts on; wake them only when one does.
    if applied_changed || hb.engine.ready != auth.engine_ready {
        state.wake_reconcilers();
    }
    Ok(pointer(&auth))
}

/// A replicated node's heartbeat: every one is recorded (the failover loop judges liveness
/// by them) and answered with the lease, the recorded in-sync set and any step-down request,
/// all from one store transaction (see `Store::replication_heartbeat`).
async fn replicated_heartbeat(
    state: &AppState,
    id: &NodeId,
    auth: &NodeAuth,
    hb: &Heartbeat,
) -> Result<Json<DesiredPointer>, AgentError> {
    let lease = chrono::TimeDelta::milliseconds(
        i64::try_from(state.config.failover.lease_ms).unwrap_or(i64::MAX),
    );
    let answer = state
        .store
        .replication_heartbeat(id, hb, lease, Utc::now())
        .await?;
    // A leaving follower the leader let go of may be stopped now: the provisioner waits
    // for that, so tell it at once.
    if to_i64(hb.applied_generation) != auth.applied_generation
        || hb.engine.ready != auth.engine_ready
        || answer.leaving_acked
    {
        state.wake_reconcilers();
    }
    // A released lease or a changed in-sync set: the failover loop decides at once (and
    // the provisioner, which waits for a replicated broker's nodes to be in sync).
    if answer.leadership_changed {
        state.wake_failover();
        state.wake_reconcilers();
    }
    Ok(Json(DesiredPointer {
        desired_generation: Generation(u64::try_from(answer.desired_generation).unwrap_or(0)),
        lease: answer.lease,
        in_sync: answer.in_sync,
        release_lease: answer.release_lease,
        leaving: answer.leaving,
        hurry: answer.hurry,
    }))
}

async fn config(
    State(state): State<AppState>,
    Path(node): Path<String>,
    headers: HeaderMap,
) -> Result<Json<DesiredConfig>, AgentError> {
    let (id, auth) = authenticate(&state, &node, &headers).await?;
    let store = &state.store;
    for _ in 0..CONFIG_READ_ATTEMPTS {
        let broker = store.broker_get(&auth.broker_id).await?;
        let users = store.user_list_desired(&auth.broker_id).await?;
        // Replicated brokers: the epoch and leader move only with the generation (one
        // transaction), so they are read between the two generation reads too.
        let replication = if auth.replicated {
            Some(replication_part(&state, &id, &auth).await?)
        } else {
            None
        };
        let configuration = match &broker.configuration {
            Some((id, revision)) => {
                Some(store.configuration_revision_get(id, *revision).await?.data)
            }
            None => None,
        };
        // Every change to users bumps the generation in the same transaction, so an
        // unchanged generation means the reads above saw one consistent state.
        let after = store.broker_get(&auth.broker_id).await?;
        if after.generation != broker.generation {
            continue;
        }
        let instance = catalog::instance_type(&broker.host_instance_type).ok_or_else(|| {
            AgentError::Internal(anyhow::anyhow!(
                "broker {} has instance type {:?}, which is not in the catalog",
                broker.id,
                broker.host_instance_type
            ))
        })?;
        let mut desired = desired_config(&broker, &users, instance, configuration);
        desired.replication = replication;
        return Ok(Json(desired));
    }
    Err(AgentError::Unavailable(
        "the configuration kept changing; retry",
    ))
}

async fn applied(
    State(state): State<AppState>,
    Path(node): Path<String>,
    headers: HeaderMap,
    Json(report): Json<ApplyReport>,
) -> Result<StatusCode, AgentError> {
    let (id, _) = authenticate(&state, &node, &headers).await?;
    match &report {
        ApplyReport::Applied { generation } => {
            state
                .store
                .node_record_apply(&id, Some(*generation), None)
                .await?;
        }
        ApplyReport::Rejected(rejection) => {
            tracing::error!(
                node = %id,
                generation = %rejection.generation,
                "agent refused its configuration: {}",
                rejection.reason
            );
            state
                .store
                .node_record_apply(&id, None, Some(rejection))
                .await?;
        }
    }
    state.wake_reconcilers();
    Ok(StatusCode::NO_CONTENT)
}

/// The node's replication spec; 503 while the broker's nodes are still being recorded.
async fn replication_part(
    state: &AppState,
    id: &NodeId,
    auth: &NodeAuth,
) -> Result<mooring_agent_protocol::ReplicationSpec, AgentError> {
    let leadership =
        state
            .store
            .replication_get(&auth.broker_id)
            .await?
            .ok_or(AgentError::Unavailable(
                "the broker's leadership is not recorded yet",
            ))?;
    let nodes = state.store.node_list_for_broker(&auth.broker_id).await?;
    let secret = state
        .master_key
        .open(&leadership.secret_sealed)
        .map_err(|e| {
            AgentError::Internal(anyhow::anyhow!("opening the replication secret: {e:?}"))
        })?;
    replication_spec(id, &leadership, &nodes, secret).ok_or(AgentError::Unavailable(
        "the broker's nodes are still being recorded",
    ))
}
