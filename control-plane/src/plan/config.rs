//! The configuration a broker's nodes must hold at a generation: a pure function of the
//! broker's spec, its users and its instance type, so that one generation always has one
//! content (agents refuse a generation whose content changed).

use crate::catalog::InstanceTypeSpec;
use crate::store::{BrokerRecord, UserRecord};
use mooring_agent_protocol::{DesiredConfig, EngineSettings, Generation, Limits, User};

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
    }
}
