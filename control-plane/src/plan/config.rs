//! The configuration a broker's nodes must hold at a generation: a pure function of the
//! broker's spec, its users and its instance type, so that one generation always has one
//! content (agents refuse a generation whose content changed).

use crate::catalog::InstanceTypeSpec;
use crate::store::{BrokerRecord, NodeRecord, ReplicationRecord, UserRecord};
use mooring_agent_protocol::{
    DesiredConfig, EngineSettings, Generation, Limits, NodeId, Peer, ReplicationSpec, Role, User,
};

/// The only virtual host until vhosts become an API resource.
pub const DEFAULT_VHOST: &str = "/";
/// RabbitMQ's tag for console (management UI) access, granted by `consoleAccess`.
pub const CONSOLE_TAG: &str = "administrator";

/// `users` must be the broker's desired users (not pending deletion); order does not matter.
pub fn desired_config(
    broker: &BrokerRecord,
    users: &[UserRecord],
    instance: &InstanceTypeSpec,
    configuration_data: Option<String>,
) -> DesiredConfig {
    let mut users: Vec<User> = users
        .iter()
        .map(|u| User {
            name: u.username.clone(),
            password_hash: u.password_hash.clone(),
            tags: if u.console_access {
                vec![CONSOLE_TAG.to_string()]
            } else {
                Vec::new()
            },
            vhosts: vec![DEFAULT_VHOST.to_string()],
        })
        .collect();
    users.sort_by(|a, b| a.name.cmp(&b.name));
    DesiredConfig {
        generation: Generation(u64::try_from(broker.generation).unwrap_or(0)),
        users,
        vhosts: vec![DEFAULT_VHOST.to_string()],
        limits: Limits {
            max_connections: instance.max_connections,
            max_channels_per_connection: instance.max_channels,
            max_queues: instance.max_queues,
            memory_bytes: instance.memory_bytes,
        },
        engine: EngineSettings {
            engine_version: broker.engine_version.clone(),
            host_instance_type: broker.host_instance_type.clone(),
            configuration: configuration_data,
        },
        // Filled by the replication planner for replicated brokers (issue 5).
        replication: None,
    }
}

/// The replication part of `node`'s configuration: its role under the recorded epoch, the
/// leader, and every node of the broker as a peer, sorted by node id. `None` while some node
/// has no replication port yet (its row predates replication, or is being recorded): the
/// configuration cannot be complete, and one generation must have one content.
pub fn replication_spec(
    node: &NodeId,
    leadership: &ReplicationRecord,
    nodes: &[NodeRecord],
    secret: String,
) -> Option<ReplicationSpec> {
    let mut peers = nodes
        .iter()
        .map(|n| {
            Some(Peer {
                node: n.id.clone(),
                zone: n.zone.clone(),
                amqp_addr: n.amqp_addr(),
                replication_addr: n.replication_addr()?,
            })
        })
        .collect::<Option<Vec<Peer>>>()?;
    peers.sort_by(|a, b| a.node.cmp(&b.node));
    Some(ReplicationSpec {
        epoch: leadership.epoch,
        role: if *node == leadership.leader {
            Role::Leader
        } else {
            Role::Follower
        },
        leader: leadership.leader.clone(),
        peers,
        secret,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{
        AuthenticationStrategy, DayOfWeek, DeploymentMode, EngineType, StorageType,
    };
    use crate::store::BrokerId;
    use chrono::Utc;

    fn broker(generation: i64) -> BrokerRecord {
        BrokerRecord {
            id: BrokerId::generate(),
            name: "b".into(),
            arn: "arn".into(),
            state: crate::model::BrokerState::Running,
            engine_type: EngineType::Rabbitmq,
            engine_version: "3.13".into(),
            host_instance_type: "mq.t3.micro".into(),
            deployment_mode: DeploymentMode::SingleInstance,
            authentication_strategy: AuthenticationStrategy::Simple,
            storage_type: StorageType::Ebs,
            publicly_accessible: false,
            auto_minor_version_upgrade: true,
            maintenance_day: DayOfWeek::Monday,
            maintenance_time: "02:00".into(),
            maintenance_time_zone: "UTC".into(),
            logs_general: false,
            logs_audit: false,
            security_groups: vec![],
            subnet_ids: vec![],
            configuration: None,
            configuration_history: vec![],
            pending_engine_version: None,
            pending_host_instance_type: Some("mq.m5.large".into()),
            pending_configuration: None,
            creator_request_id: None,
            generation,
            reboot_generation: None,
            version: 1,
            created_at: Utc::now(),
            updated_at: Utc::now(),
        }
    }

    fn user(b: &BrokerRecord, name: &str, console: bool) -> UserRecord {
        UserRecord {
            broker_id: b.id.clone(),
            username: name.into(),
            password_hash: format!("hash-of-{name}"),
            console_access: console,
            groups: vec![],
            replication_user: false,
            pending_change: None,
            pending_generation: 1,
            created_at: Utc::now(),
        }
    }

    #[test]
    fn one_generation_has_one_content_whatever_the_read_order() {
        let b = broker(7);
        let micro = crate::catalog::instance_type("mq.t3.micro").expect("in the catalog");
        let a = desired_config(
            &b,
            &[user(&b, "zed", false), user(&b, "amy", true)],
            micro,
            None,
        );
        let z = desired_config(
            &b,
            &[user(&b, "amy", true), user(&b, "zed", false)],
            micro,
            None,
        );
        assert_eq!(a, z);
        assert_eq!(a.generation, Generation(7));
        let names: Vec<&str> = a.users.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(names, ["amy", "zed"]);
        assert_eq!(a.users[0].tags, [CONSOLE_TAG]);
        assert!(a.users[1].tags.is_empty());
        assert_eq!(a.users[0].password_hash, "hash-of-amy");
        // Limits come from the current instance type, never the pending one.
        assert_eq!(a.limits.max_connections, micro.max_connections);
        assert_eq!(a.engine.host_instance_type, "mq.t3.micro");
    }
}
