use crate::model::DeploymentMode;

const GIB: u64 = 1024 * 1024 * 1024;

/// A host instance type and the limits a broker node of that type enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InstanceTypeSpec {
    pub name: &'static str,
    pub max_connections: u32,
    pub max_channels: u32,
    pub max_queues: u32,
    pub max_consumers_per_channel: u32,
    /// Memory the node may use for messages and state.
    pub memory_bytes: u64,
    pub deployment_modes: &'static [DeploymentMode],
}

/// Mooring serves active/standby RabbitMQ brokers too (the same leader/follower replication
/// as its clusters, with one follower); Amazon MQ offers that mode for ActiveMQ only.
const ALL_MODES: &[DeploymentMode] = &[
    DeploymentMode::SingleInstance,
    DeploymentMode::ActiveStandbyMultiAz,
    DeploymentMode::ClusterMultiAz,
];

/// Limits from Amazon MQ's sizing guidelines for single-instance RabbitMQ brokers
/// (connections, channels, queues, consumers per channel); memory is the EC2 size's.
/// Smallest first.
pub const INSTANCE_TYPES: &[InstanceTypeSpec] = &[
    InstanceTypeSpec {
        name: "mq.t3.micro",
        max_connections: 500,
        max_channels: 1_500,
        max_queues: 2_500,
        max_consumers_per_channel: 1_000,
        memory_bytes: GIB,
        deployment_modes: &[DeploymentMode::SingleInstance],
    },
    InstanceTypeSpec {
        name: "mq.m5.large",
        max_connections: 5_000,
        max_channels: 15_000,
        max_queues: 30_000,
        max_consumers_per_channel: 1_000,
        memory_bytes: 8 * GIB,
        deployment_modes: ALL_MODES,
    },
    InstanceTypeSpec {
        name: "mq.m5.xlarge",
        max_connections: 10_000,
        max_channels: 30_000,
        max_queues: 60_000,
        max_consumers_per_channel: 1_000,
        memory_bytes: 16 * GIB,
        deployment_modes: ALL_MODES,
    },
    InstanceTypeSpec {
        name: "mq.m5.2xlarge",
        max_connections: 20_000,
        max_channels: 60_000,
        max_queues: 120_000,
        max_consumers_per_channel: 1_000,
        memory_bytes: 32 * GIB,
        deployment_modes: ALL_MODES,
    },
    InstanceTypeSpec {
        name: "mq.m5.4xlarge",
        max_connections: 40_000,
        max_channels: 120_000,
        max_queues: 240_000,
        max_consumers_per_channel: 1_000,
        memory_bytes: 64 * GIB,
        deployment_modes: ALL_MODES,
    },
];
