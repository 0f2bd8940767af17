//! The JSON messages exchanged between the control plane and broker agents.
//!
//! Every route lives under [`API_PREFIX`] and names the node it acts for; the agent sends its
//! per-node token as `Authorization: Bearer <token>` and may reach only its own node's routes.
//!
//! | route                                   | body                | answer               |
//! |-----------------------------------------|---------------------|----------------------|
//! | `POST {prefix}/nodes/{node}/register`   | [`RegisterRequest`] | [`DesiredPointer`]   |
//! | `POST {prefix}/nodes/{node}/heartbeat`  | [`Heartbeat`]       | [`DesiredPointer`]   |
//! | `GET  {prefix}/nodes/{node}/config`     | —                   | [`DesiredConfig`]    |
//! | `POST {prefix}/nodes/{node}/applied`    | [`ApplyReport`]     | `204 No Content`     |
//!
//! Generations fence every change (DESIGN.md decision 3): the control plane bumps a node's
//! desired generation before it serves the new configuration, and an agent refuses a
//! configuration older than the one it holds or equal in number but different in contents.

mod password;
pub mod replication;

pub use password::{rabbit_password_hash, rabbit_password_verify};
pub use replication::{
    Epoch, FollowerProgress, LeaseGrant, Peer, ReplicationSpec, ReplicationStatus, Role,
};

use serde::{Deserialize, Serialize};
use std::fmt;

/// Path prefix of the agent API on the control plane.
pub const API_PREFIX: &str = "/agent/v1";

/// Environment variable through which a provider hands an agent its token (not visible in `ps`).
pub const TOKEN_ENV: &str = "MOORING_AGENT_TOKEN";

/// Path of a node-scoped route, e.g. `route("b-1234-1", "heartbeat")`.
pub fn route(node: &NodeId, leaf: &str) -> String {
    format!("{API_PREFIX}/nodes/{}/{leaf}", node.0)
}

/// Identity of one broker node: `<broker-id>-<ordinal>`, e.g. `b-6f1c...-1`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeId(pub String);

impl NodeId {
    /// Node ids appear in paths, file names and process command lines, so they are restricted to
    /// `[A-Za-z0-9_-]`, 1 to 128 characters.
    pub fn is_valid(s: &str) -> bool {
        !s.is_empty()
            && s.len() <= 128
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A desired-configuration generation. Only ever grows; 0 means "nothing yet".
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Generation(pub u64);

impl fmt::Display for Generation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// First message of an agent process: who it is and where it serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegisterRequest {
    /// The agent binary's version (`CARGO_PKG_VERSION`).
    pub agent_version: String,
    /// Address the AMQP listener is bound to, e.g. `127.0.0.1:5673`.
    pub amqp_addr: String,
    /// Address the admin (console) listener is bound to.
    pub admin_addr: String,
    /// Generation of the configuration the agent restored from its data dir, 0 if none.
    pub applied_generation: Generation,
    /// Address the replication listener is bound to (replicated brokers only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication_addr: Option<String>,
}

/// The control plane's answer to register and heartbeat: the generation the node should hold.
/// When it is above the agent's applied generation the agent fetches the configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DesiredPointer {
    pub desired_generation: Generation,
    /// Replicated brokers, to the leader of the current epoch only: its renewed lease.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<LeaseGrant>,
    /// Replicated brokers: the in-sync set as recorded in the database (see
    /// [`replication`] for how the leader uses it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_sync: Option<Vec<NodeId>>,
    /// Planned switchover, to the leader of the current epoch only: stop confirming new
    /// publishes, let the followers catch up with what was written, then report
    /// `lease_released: true` with the final `position` in the next heartbeats. No lease is
    /// granted meanwhile, so an agent that ignores this simply lets its lease run out (the
    /// control plane then promotes after expiry, as for a failover). The control plane
    /// promotes the chosen follower under a new epoch once it has caught up with that final
    /// position (or after a bounded wait).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub release_lease: bool,
    /// To the leader of the current epoch: followers about to be stopped for a planned
    /// restart, already out of the recorded in-sync set. The leader drops them from its
    /// proposal at once (so no confirm waits on them) and proposes none of them again while
    /// they are listed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub leaving: Vec<NodeId>,
    /// A change of leader is under way for this node's broker (a switchover requested, or
    /// a lease released and its successor not yet promoted): heartbeat again after
    /// [`HURRY_INTERVAL`] instead of the usual interval, so that every step of the hand-over
    /// is heard at once rather than one heartbeat interval later.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hurry: bool,
}

/// The heartbeat interval while [`DesiredPointer::hurry`] is set.
pub const HURRY_INTERVAL: std::time::Duration = std::time::Duration::from_millis(20);

/// Periodic liveness and status report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Heartbeat {
    /// Generation of the configuration currently applied, 0 if none.
    pub applied_generation: Generation,
    pub engine: EngineStatus,
    /// The last configuration the agent refused, and why; cleared once one is applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected: Option<Rejection>,
    /// Replicated brokers only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication: Option<ReplicationStatus>,
}

/// What the engine reports about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EngineStatus {
    /// True once the AMQP listener accepts connections.
    pub ready: bool,
    pub connections: u64,
    pub queues: u64,
    pub messages: u64,
}

/// A configuration the agent refused to apply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rejection {
    pub generation: Generation,
    pub reason: String,
}

/// Outcome of applying a fetched configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "camelCase")]
pub enum ApplyReport {
    Applied { generation: Generation },
    Rejected(Rejection),
}

/// Everything a node needs to serve, at one generation. Lists are sorted by name so that the
/// same intent always serialises to the same contents (the agent compares them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DesiredConfig {
    pub generation: Generation,
    pub users: Vec<User>,
    pub vhosts: Vec<String>,
    pub limits: Limits,
    pub engine: EngineSettings,
    /// Replicated brokers only: role, epoch, leader and peers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication: Option<ReplicationSpec>,
}

/// A broker user as the engine needs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct User {
    pub name: String,
    /// RabbitMQ's `rabbit_password_hashing_sha256` format:
    /// `base64(salt[4] ++ sha256(salt[4] ++ password))`; see [`rabbit_password_hash`].
    pub password_hash: String,
    /// RabbitMQ user tags, e.g. `administrator` for console access.
    pub tags: Vec<String>,
    /// Virtual hosts the user may use.
    pub vhosts: Vec<String>,
}

/// Resource limits of the broker's host instance type; the engine enforces them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Limits {
    pub max_connections: u32,
    pub max_channels_per_connection: u32,
    pub max_queues: u32,
    pub memory_bytes: u64,
}

/// Engine-level settings that come from the broker's spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EngineSettings {
    /// The engine version the broker runs, e.g. `3.13`.
    pub engine_version: String,
    /// The host instance type the limits come from, e.g. `mq.m5.large`.
    pub host_instance_type: String,
    /// The configuration revision's data (RabbitMQ `rabbitmq.conf` style), if one is attached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub configuration: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_id_validation() {
        assert!(NodeId::is_valid("b-1234abcd-1"));
        assert!(!NodeId::is_valid(""));
        assert!(!NodeId::is_valid("../etc"));
        assert!(!NodeId::is_valid("a b"));
        assert!(!NodeId::is_valid(&"x".repeat(129)));
    }

    #[test]
    fn wire_names_are_camel_case() {
        let hb = Heartbeat {
            applied_generation: Generation(3),
            engine: EngineStatus {
                ready: true,
                ..Default::default()
            },
            rejected: None,
            replication: None,
        };
        let json = serde_json::to_value(&hb).expect("serialisable");
        assert_eq!(json["appliedGeneration"], 3);
        assert_eq!(json["engine"]["ready"], true);
        assert!(json.get("rejected").is_none());

        let report = ApplyReport::Rejected(Rejection {
            generation: Generation(2),
            reason: "old".into(),
        });
        let json = serde_json::to_value(&report).expect("serialisable");
        assert_eq!(json["outcome"], "rejected");
        assert_eq!(json["generation"], 2);
        let back: ApplyReport = serde_json::from_value(json).expect("round trip");
        assert_eq!(back, report);
    }

    #[test]
    fn routes_name_the_node() {
        assert_eq!(
            route(&NodeId("b-1-1".into()), "config"),
            "/agent/v1/nodes/b-1-1/config"
        );
    }
}
