//! The `broker_nodes` table: the nodes each broker runs, what the provisioning reconciler
//! last did to them and what their agents last said.
//!
//! Write order makes crashes safe: a node's row exists before its process or data directory
//! (`node_insert` first), a start records the new token's hash and `unknown` before the
//! provider acts (`node_begin_start`), and the row goes only after the provider has removed
//! everything (`node_remove`).

use chrono::{DateTime, Utc};
use mooring_agent_protocol::{EngineStatus, Generation, NodeId, Rejection, Role};
use sqlx::FromRow;

use super::{with_pool, BrokerId, Store, StoreError};

/// What the control plane last knew about a node's process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ObservedState {
    /// Recorded, never started.
    Pending,
    /// A provider action is in flight, or was interrupted by a crash: look before trusting.
    Unknown,
    /// The provider started (or adopted) the process.
    Started,
    /// The provider stopped the process.
    Stopped,
    /// Removal has begun; the row goes once the provider is done.
    Deleting,
}

impl ObservedState {
    pub fn as_str(self) -> &'static str {
        match self {
            ObservedState::Pending => "pending",
            ObservedState::Unknown => "unknown",
            ObservedState::Started => "started",
            ObservedState::Stopped => "stopped",
            ObservedState::Deleting => "deleting",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => ObservedState::Pending,
            "unknown" => ObservedState::Unknown,
            "started" => ObservedState::Started,
            "stopped" => ObservedState::Stopped,
            "deleting" => ObservedState::Deleting,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct NodeRecord {
    pub id: NodeId,
    pub broker_id: BrokerId,
    /// 1-based position within the broker; node ids are `<broker-id>-<ordinal>`.
    pub ordinal: i32,
    /// Availability-zone label, e.g. `us-east-1a`.
    pub zone: String,
    pub host: String,
    pub amqp_port: u16,
    pub admin_port: u16,
    pub token_hash: Option<String>,
    pub observed: ObservedState,
    pub pid: Option<i64>,
    /// The broker reboot generation that the node's latest start satisfies.
    pub restart_generation: i64,
    pub started_at: Option<DateTime<Utc>>,
    /// Set once the agent started with the current token has registered.
    pub registered_at: Option<DateTime<Utc>>,
    pub agent_version: Option<String>,
    pub last_heartbeat: Option<DateTime<Utc>>,
    pub engine: EngineStatus,
    pub applied_generation: i64,
    pub rejected: Option<(i64, String)>,
    pub created_at: DateTime<Utc>,
    /// Where its replication listener is bound (replicated brokers only).
    pub replication_port: Option<u16>,
    /// What its agent last said of its replication (replicated brokers only).
    pub reported: ReportedReplication,
}

/// A node's last replication report: zeros and `None` until its first one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReportedReplication {
    /// The newest epoch it has seen.
    pub epoch: u64,
    /// The role it acts in.
    pub role: Option<Role>,
    /// The last log position it holds durably.
    pub position: u64,
}

/// How a role is stored in `broker_nodes.reported_role`.
pub(crate) fn role_str(role: Role) -> &'static str {
    match role {
        Role::Leader => "leader",
        Role::Follower => "follower",
    }
}

pub(crate) fn parse_role(s: &str) -> Option<Role> {
    match s {
        "leader" => Some(Role::Leader),
        "follower" => Some(Role::Follower),
        _ => None,
    }
}

impl NodeRecord {
    /// The AMQP endpoint clients use, as DescribeBroker shows it.
    pub fn amqp_endpoint(&self) -> String {
        format!("amqp://{}:{}", self.host, self.amqp_port)
    }

    /// The console (admin) URL, as DescribeBroker shows it.
    pub fn console_url(&self) -> String {
        format!("http://{}:{}", self.host, self.admin_port)
    }

    /// `host:port` of its AMQP listener, as peers name it.
    pub fn amqp_addr(&self) -> String {
        format!("{}:{}", self.host, self.amqp_port)
    }

    /// `host:port` of its replication listener, if it has one.
    pub fn replication_addr(&self) -> Option<String> {
        self.replication_port
            .map(|p| format!("{}:{}", self.host, p))
    }
}

/// A node to record before anything is started for it.
#[derive(Debug, Clone)]
pub struct NewNode {
    pub id: NodeId,
    pub broker_id: BrokerId,
    pub ordinal: i32,
    pub zone: String,
    pub host: String,
    pub amqp_port: u16,
    pub admin_port: u16,
    /// Replicated brokers only.
    pub replication_port: Option<u16>,
}

/// What the agent API needs to authenticate a node and answer it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeAuth {
    pub broker_id: BrokerId,
    pub token_hash: Option<String>,
    /// The broker's current generation: the one the node should hold.
    pub desired_generation: i64,
    /// What the node last reported, so the agent API can tell when something changed that
    /// a reconciler must look at.
    pub applied_generation: i64,
    pub engine_ready: bool,
    pub registered: bool,
    pub last_heartbeat: Option<DateTime<Utc>>,
    /// Whether a refused configuration is on record.
    pub rejected: bool,
    /// The broker is replicated: every heartbeat is recorded (failover reads them) and
    /// answered with the lease and the in-sync set.
    pub replicated: bool,
}

const COLUMNS: &str = "id, broker_id, ordinal, zone, host, amqp_port, admin_port, token_hash, \
    observed_state, pid, restart_generation, started_at, registered_at, agent_version, \
    last_heartbeat, engine_ready, connections, queues, messages, applied_generation, \
    rejected_generation, rejected_reason, created_at, replication_port, reported_epoch, \
    reported_role, reported_position";

#[derive(FromRow)]
struct NodeRow {
    id: String,
    broker_id: String,
    ordinal: i32,
    zone: String,
    host: String,
    amqp_port: i32,
    admin_port: i32,
    token_hash: Option<String>,
    observed_state: String,
    pid: Option<i64>,
    restart_generation: i64,
    started_at: Option<DateTime<Utc>>,
    registered_at: Option<DateTime<Utc>>,
    agent_version: Option<String>,
    last_heartbeat: Option<DateTime<Utc>>,
    engine_ready: bool,
    connections: i64,
    queues: i64,
    messages: i64,
    applied_generation: i64,
    rejected_generation: Option<i64>,
    rejected_reason: Option<String>,
    created_at: DateTime<Utc>,
    replication_port: Option<i32>,
    reported_epoch: i64,
    reported_role: Option<String>,
    reported_position: i64,
}

#[derive(FromRow)]
struct AuthRow {
    broker_id: String,
    token_hash: Option<String>,
    desired_generation: i64,
    applied_generation: i64,
    engine_ready: bool,
    registered: bool,
    last_heartbeat: Option<DateTime<Utc>>,
    rejected: bool,
    replicated: bool,
}

fn port(column: &str, value: i32) -> Result<u16, StoreError> {
    u16::try_from(value)
        .map_err(|_| StoreError::Corrupt(format!("broker_nodes.{column} = {value}")))
}

fn count(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

impl TryFrom<NodeRow> for NodeRecord {
    type Error = StoreError;

    fn try_from(r: NodeRow) -> Result<Self, StoreError> {
        Ok(NodeRecord {
            id: NodeId(r.id),
            broker_id: BrokerId::from_db(r.broker_id),
            ordinal: r.ordinal,
            zone: r.zone,
            host: r.host,
            amqp_port: port("amqp_port", r.amqp_port)?,
            admin_port: port("admin_port", r.admin_port)?,
            token_hash: r.token_hash,
            observed: ObservedState::parse(&r.observed_state).ok_or_else(|| {
                StoreError::Corrupt(format!(
                    "broker_nodes.observed_state = {:?}",
                    r.observed_state
                ))
            })?,
            pid: r.pid,
            restart_generation: r.restart_generation,
            started_at: r.started_at,
            registered_at: r.registered_at,
            agent_version: r.agent_version,
            last_heartbeat: r.last_heartbeat,
            engine: EngineStatus {
                ready: r.engine_ready,
                connections: count(r.connections),
                queues: count(r.queues),
                messages: count(r.messages),
            },
            applied_generation: r.applied_generation,
            rejected: r.rejected_generation.zip(r.rejected_reason),
            created_at: r.created_at,
            replication_port: r
                .replication_port
                .map(|p| port("replication_port", p))
                .transpose()?,
            reported: ReportedReplication {
                epoch: count(r.reported_epoch),
                role: r.reported_role.as_deref().and_then(parse_role),
                position: count(r.reported_position),
            },
        })
    }
}

fn generation_i64(g: Generation) -> i64 {
    i64::try_from(g.0).unwrap_or(i64::MAX)
}

impl Store {
    /// Records a node before anything exists for it. Recording the same node twice is a
    /// no-op (returns false), so a re-run pass after a crash is harmless.
    pub async fn node_insert(
        &self,
        node: &NewNode,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let affected = with_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO broker_nodes (id, broker_id, ordinal, zone, host, amqp_port, \
                 admin_port, token_hash, observed_state, pid, restart_generation, engine_ready, \
                 connections, queues, messages, applied_generation, created_at, replication_port) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, NULL, $8, NULL, 0, FALSE, 0, 0, 0, 0, $9, $10) \
                 ON CONFLICT (id) DO NOTHING",
            )
            .bind(&node.id.0)
            .bind(node.broker_id.as_str())
            .bind(node.ordinal)
            .bind(&node.zone)
            .bind(&node.host)
            .bind(i32::from(node.amqp_port))
            .bind(i32::from(node.admin_port))
            .bind(ObservedState::Pending.as_str())
            .bind(now)
            .bind(node.replication_port.map(i32::from))
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(affected > 0)
    }

    pub async fn node_get(&self, id: &NodeId) -> Result<NodeRecord, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM broker_nodes WHERE id = $1");
        let row: Option<NodeRow> = with_pool!(self, pool => {
            sqlx::query_as(&sql).bind(&id.0).fetch_optional(pool).await?
        });
        row.ok_or(StoreError::NotFound("node"))?.try_into()
    }

    /// A broker's nodes by ordinal.
    pub async fn node_list_for_broker(
        &self,
        broker_id: &BrokerId,
    ) -> Result<Vec<NodeRecord>, StoreError> {
        let sql =
            format!("SELECT {COLUMNS} FROM broker_nodes WHERE broker_id = $1 ORDER BY ordinal");
        let rows: Vec<NodeRow> = with_pool!(self, pool => {
            sqlx::query_as(&sql).bind(broker_id.as_str()).fetch_all(pool).await?
        });
        rows.into_iter().map(TryInto::try_into).collect()
    }

    /// The nodes of every replicated broker, by broker then ordinal (one query: the failover
    /// loop reads them several times a second).
    pub async fn node_list_replicated(&self) -> Result<Vec<NodeRecord>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM broker_nodes WHERE broker_id IN \
             (SELECT broker_id FROM broker_replication) ORDER BY broker_id, ordinal"
        );
        let rows: Vec<NodeRow> = with_pool!(self, pool => {
            sqlx::query_as(&sql).fetch_all(pool).await?
        });
        rows.into_iter().map(TryInto::try_into).collect()
    }

    /// Every recorded node id (to find data the provider holds for nodes nobody recorded).
    pub async fn node_ids(&self) -> Result<Vec<NodeId>, StoreError> {
        let ids: Vec<String> = with_pool!(self, pool => {
            sqlx::query_scalar("SELECT id FROM broker_nodes ORDER BY id").fetch_all(pool).await?
        });
        Ok(ids.into_iter().map(NodeId).collect())
    }

    /// Every port some node holds, so a new node gets others.
    pub async fn node_ports_taken(&self) -> Result<Vec<u16>, StoreError> {
        let rows: Vec<(i32, i32, Option<i32>)> = with_pool!(self, pool => {
            sqlx::query_as("SELECT amqp_port, admin_port, replication_port FROM broker_nodes")
                .fetch_all(pool)
                .await?
        });
        Ok(rows
            .into_iter()
            .flat_map(|(a, b, r)| [Some(a), Some(b), r])
            .flatten()
            .filter_map(|p| u16::try_from(p).ok())
            .collect())
    }

    /// Before a provider action: the row says `state` (usually `unknown`) until the action's
    /// outcome is recorded, so a crash in between is never mistaken for success.
    pub async fn node_set_observed(
        &self,
        id: &NodeId,
        state: ObservedState,
    ) -> Result<(), StoreError> {
        with_pool!(self, pool => {
            sqlx::query("UPDATE broker_nodes SET observed_state = $2 WHERE id = $1")
                .bind(&id.0)
                .bind(state.as_str())
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// Before starting a process: the new token's hash replaces the old one (so only the
    /// process about to start can talk for the node), registration and readiness are cleared,
    /// and the state is `unknown` until [`Store::node_mark_started`].
    pub async fn node_begin_start(&self, id: &NodeId, token_hash: &str) -> Result<(), StoreError> {
        with_pool!(self, pool => {
            sqlx::query(
                "UPDATE broker_nodes SET token_hash = $2, observed_state = $3, registered_at = NULL, \
                 engine_ready = FALSE WHERE id = $1",
            )
            .bind(&id.0)
            .bind(token_hash)
            .bind(ObservedState::Unknown.as_str())
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// After the provider started (or adopted) the process.
    pub async fn node_mark_started(
        &self,
        id: &NodeId,
        pid: Option<u32>,
        restart_generation: i64,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        with_pool!(self, pool => {
            sqlx::query(
                "UPDATE broker_nodes SET observed_state = $2, pid = $3, restart_generation = $4, \
                 started_at = $5 WHERE id = $1",
            )
            .bind(&id.0)
            .bind(ObservedState::Started.as_str())
            .bind(pid.map(i64::from))
            .bind(restart_generation)
            .bind(now)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// A running process found by the provider without a start of ours (adoption).
    pub async fn node_mark_adopted(&self, id: &NodeId, pid: Option<u32>) -> Result<(), StoreError> {
        with_pool!(self, pool => {
            sqlx::query("UPDATE broker_nodes SET observed_state = $2, pid = $3 WHERE id = $1")
                .bind(&id.0)
                .bind(ObservedState::Started.as_str())
                .bind(pid.map(i64::from))
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// Removes the row once the provider holds nothing for the node. Missing is success.
    pub async fn node_remove(&self, id: &NodeId) -> Result<(), StoreError> {
        with_pool!(self, pool => {
            sqlx::query("DELETE FROM broker_nodes WHERE id = $1").bind(&id.0).execute(pool).await?;
        });
        Ok(())
    }

    /// For the agent API: the node's token hash and the generation it should hold.
    pub async fn node_auth(&self, id: &NodeId) -> Result<NodeAuth, StoreError> {
        let row: Option<AuthRow> = with_pool!(self, pool => {
            sqlx::query_as(
                "SELECT n.broker_id, n.token_hash, b.generation AS desired_generation, \
                 n.applied_generation, n.engine_ready, \
                 n.registered_at IS NOT NULL AS registered, n.last_heartbeat, \
                 n.rejected_generation IS NOT NULL AS rejected, \
                 EXISTS (SELECT 1 FROM broker_replication r WHERE r.broker_id = n.broker_id) \
                 AS replicated FROM broker_nodes n \
                 JOIN brokers b ON b.id = n.broker_id WHERE n.id = $1",
            )
            .bind(&id.0)
            .fetch_optional(pool)
            .await?
        });
        let r = row.ok_or(StoreError::NotFound("node"))?;
        Ok(NodeAuth {
            broker_id: BrokerId::from_db(r.broker_id),
            token_hash: r.token_hash,
            desired_generation: r.desired_generation,
            applied_generation: r.applied_generation,
            engine_ready: r.engine_ready,
            registered: r.registered,
            last_heartbeat: r.last_heartbeat,
            rejected: r.rejected,
            replicated: r.replicated,
        })
    }

    /// The agent started with the current token said hello.
    pub async fn node_register(
        &self,
        id: &NodeId,
        agent_version: &str,
        applied: Generation,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        with_pool!(self, pool => {
            sqlx::query(
                "UPDATE broker_nodes SET registered_at = $2, agent_version = $3, \
                 applied_generation = $4, last_heartbeat = $2 WHERE id = $1",
            )
            .bind(&id.0)
            .bind(now)
            .bind(agent_version)
            .bind(generation_i64(applied))
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Records a heartbeat: liveness, what the engine reports, the applied generation.
    pub async fn node_heartbeat(
        &self,
        id: &NodeId,
        applied: Generation,
        engine: &EngineStatus,
        rejected: Option<&Rejection>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let to_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        with_pool!(self, pool => {
            sqlx::query(
                "UPDATE broker_nodes SET last_heartbeat = $2, applied_generation = $3, \
                 engine_ready = $4, connections = $5, queues = $6, messages = $7, \
                 rejected_generation = $8, rejected_reason = $9 WHERE id = $1",
            )
            .bind(&id.0)
            .bind(now)
            .bind(generation_i64(applied))
            .bind(engine.ready)
            .bind(to_i64(engine.connections))
            .bind(to_i64(engine.queues))
            .bind(to_i64(engine.messages))
            .bind(rejected.map(|r| generation_i64(r.generation)))
            .bind(rejected.map(|r| r.reason.as_str()))
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Records the outcome of applying a configuration. The applied generation only grows.
    pub async fn node_record_apply(
        &self,
        id: &NodeId,
        applied: Option<Generation>,
        rejected: Option<&Rejection>,
    ) -> Result<(), StoreError> {
        with_pool!(self, pool => {
            match (applied, rejected) {
                (Some(g), _) => sqlx::query(
                    "UPDATE broker_nodes SET applied_generation = CASE WHEN applied_generation < $2 \
                     THEN $2 ELSE applied_generation END, rejected_generation = NULL, \
                     rejected_reason = NULL WHERE id = $1",
                )
                .bind(&id.0)
                .bind(generation_i64(g))
                .execute(pool)
                .await?
                .rows_affected(),
                (None, Some(r)) => sqlx::query(
                    "UPDATE broker_nodes SET rejected_generation = $2, rejected_reason = $3 WHERE id = $1",
                )
                .bind(&id.0)
                .bind(generation_i64(r.generation))
                .bind(&r.reason)
                .execute(pool)
                .await?
                .rows_affected(),
                (None, None) => return Ok(()),
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests;
