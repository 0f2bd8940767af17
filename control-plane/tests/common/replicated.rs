//! A replicated broker in the store, and heartbeats as its agents send them, for the
//! store-level replication tests.

use chrono::Utc;
use mooring_agent_protocol::{
    EngineStatus, Epoch, Generation, Heartbeat, NodeId, ReplicationStatus, Role,
};
use mooring_control_plane::model::{BrokerState, DeploymentMode};
use mooring_control_plane::store::{BrokerId, NewNode, NewUser, Store};

/// A RUNNING CLUSTER_MULTI_AZ (3 nodes) or ACTIVE_STANDBY_MULTI_AZ (2) broker with its
/// nodes recorded and node 1 leading under epoch 1.
pub async fn replicated_broker(store: &Store, name: &str, nodes: i32) -> (BrokerId, Vec<NodeId>) {
    let mode = if nodes == 3 {
        DeploymentMode::ClusterMultiAz
    } else {
        DeploymentMode::ActiveStandbyMultiAz
    };
    let broker = super::new_broker(name, mode);
    let id = broker.id.clone();
    let user = NewUser {
        username: "admin".to_owned(),
        password_hash: "hash".to_owned(),
        console_access: false,
        groups: vec![],
        replication_user: false,
    };
    store
        .broker_insert(broker, vec![user])
        .await
        .expect("insert broker");
    let mut ids = Vec::new();
    for ordinal in 1..=nodes {
        let node = NewNode {
            id: NodeId(format!("{id}-{ordinal}")),
            broker_id: id.clone(),
            ordinal,
            zone: format!(
                "us-east-1{}",
                ["a", "b", "c"][usize::try_from(ordinal - 1).expect("small")]
            ),
            host: "127.0.0.1".to_owned(),
            // Ports nobody listens on: probes of a silent leader are refused.
            amqp_port: port(),
            admin_port: port(),
            replication_port: Some(port()),
        };
        assert!(store
            .node_insert(&node, Utc::now())
            .await
            .expect("insert node"));
        ids.push(node.id);
    }
    store
        .replication_ensure(&id, &ids[0], &ids, "sealed", Utc::now())
        .await
        .expect("ensure leadership");
    assert!(store
        .broker_set_state(
            &id,
            &[BrokerState::CreationInProgress],
            BrokerState::Running
        )
        .await
        .expect("running"));
    (id, ids)
}

/// Ports unique within the test binary (the store's unique constraints); nothing listens
/// on them, so a probe of a silent leader is refused.
pub fn port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = 41_000 + u16::try_from(std::process::id() % 400).expect("small") * 20;
    base + NEXT.fetch_add(1, Ordering::Relaxed)
}

pub fn hb(
    epoch: u64,
    role: Role,
    position: u64,
    proposed: &[&NodeId],
    released: bool,
) -> Heartbeat {
    Heartbeat {
        applied_generation: Generation(1),
        engine: EngineStatus {
            ready: true,
            ..Default::default()
        },
        rejected: None,
        replication: Some(ReplicationStatus {
            epoch: Epoch(epoch),
            role,
            position,
            proposed_in_sync: proposed.iter().map(|n| (*n).clone()).collect(),
            followers: vec![],
            lease_released: released,
        }),
    }
}
