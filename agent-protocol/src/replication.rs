//! The replication part of the agent protocol: who leads, under which epoch, with which lease,
//! and which followers are in sync (DESIGN.md decisions 3 and 4; issue 5).
//!
//! The safety argument, in the terms of these types:
//!
//! - **Epoch.** Every change of leader bumps the broker's [`Epoch`] in the database *before*
//!   any node hears of it. A follower refuses replication from a leader whose epoch is older
//!   than the newest one it has seen, so a deposed leader cannot make anyone append.
//! - **Lease.** The control plane grants the leader of the current epoch a [`LeaseGrant`] in
//!   answer to each heartbeat. The agent starts counting the lease from the instant it *sent*
//!   that heartbeat (before the control plane saw it), so its idea of the lease ends before the
//!   control plane's. A leader confirms a publish only while its lease holds; the control plane
//!   promotes a follower only once the lease, plus a drift margin, has run out on its own clock.
//! - **In-sync set.** A publish is confirmed only when every node in the in-sync set has
//!   appended it durably. The control plane promotes only a member of the *recorded* in-sync
//!   set, so the leader may stop waiting for a follower only after the control plane has
//!   recorded that follower's removal: the leader proposes a set in its heartbeat
//!   ([`ReplicationStatus::proposed_in_sync`]) and waits for every node in the union of the
//!   proposed and the recorded set ([`DesiredPointer::in_sync`](crate::DesiredPointer)) until
//!   the recorded set equals its proposal.

use serde::{Deserialize, Serialize};
use std::fmt;

use crate::NodeId;

/// A broker's leadership epoch. Only ever grows; bumped in the database before a promotion.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Epoch(pub u64);

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// What a node of a replicated broker is told to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Role {
    /// Serves AMQP clients and ships its log to the followers.
    Leader,
    /// Appends the leader's log and refuses AMQP clients, naming the leader.
    Follower,
}

/// One node of a replicated broker, as every node sees its peers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Peer {
    pub node: NodeId,
    /// Availability zone (a label for the local provider).
    pub zone: String,
    /// Where AMQP clients reach it, e.g. `127.0.0.1:5673`.
    pub amqp_addr: String,
    /// Where its replication listener is bound (followers connect to the leader's).
    pub replication_addr: String,
}

/// The replication part of a node's desired configuration. Absent for SINGLE_INSTANCE brokers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplicationSpec {
    pub epoch: Epoch,
    /// This node's role under `epoch`.
    pub role: Role,
    /// The leader under `epoch`.
    pub leader: NodeId,
    /// Every node of the broker, this one included, sorted by node id.
    pub peers: Vec<Peer>,
    /// Shared by the broker's nodes; authenticates the replication handshake (HMAC-SHA256 of
    /// a nonce). Never logged.
    pub secret: String,
}

impl ReplicationSpec {
    /// The leader's entry in `peers`, if it is there.
    pub fn leader_peer(&self) -> Option<&Peer> {
        self.peers.iter().find(|p| p.node == self.leader)
    }
}

/// Replication facts a node reports in every heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplicationStatus {
    /// The newest epoch this node has seen.
    pub epoch: Epoch,
    /// The role it is acting in now (it may lag the desired one for a moment).
    pub role: Role,
    /// Position of the last log entry this node holds durably (leader: written locally;
    /// follower: appended and acknowledged to the leader). Compared only within one epoch
    /// history; the control plane promotes the in-sync follower with the highest position.
    pub position: u64,
    /// Leader only: the in-sync set it wants recorded (itself included), sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub proposed_in_sync: Vec<NodeId>,
    /// Leader only: each follower's acknowledged position, for status and events.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub followers: Vec<FollowerProgress>,
    /// True once a leader has given up its lease for a planned switchover: it confirms
    /// nothing more under this epoch, so the control plane may promote without waiting.
    #[serde(default)]
    pub lease_released: bool,
}

/// How far one follower has got, as its leader sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FollowerProgress {
    pub node: NodeId,
    pub acked_position: u64,
    /// Connected and caught up to within the leader's in-sync threshold.
    pub caught_up: bool,
}

/// A lease granted to the leader of the current epoch in answer to its heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeaseGrant {
    pub epoch: Epoch,
    /// Counted by the agent from the instant it sent the heartbeat this answers.
    pub duration_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_are_camel_case() {
        let status = ReplicationStatus {
            epoch: Epoch(4),
            role: Role::Leader,
            position: 17,
            proposed_in_sync: vec![NodeId("b-1-1".into())],
            followers: vec![],
            lease_released: false,
        };
        let json = serde_json::to_value(&status).expect("serialisable");
        assert_eq!(json["epoch"], 4);
        assert_eq!(json["role"], "leader");
        assert_eq!(json["proposedInSync"][0], "b-1-1");
        assert!(json.get("followers").is_none());
        let back: ReplicationStatus = serde_json::from_value(json).expect("round trip");
        assert_eq!(back, status);
    }
}
