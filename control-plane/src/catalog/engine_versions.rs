use crate::model::EngineType;

/// How the local provider runs a version's nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runner {
    /// The agent binary the control plane was configured with (`--agent-binary`).
    ConfiguredAgent,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineVersionSpec {
    pub engine_type: EngineType,
    /// The version as the API spells it.
    pub version: &'static str,
    pub runner: Runner,
}

/// Every served version, newest first per engine. `RABBITMQ` means Mooring's own
/// engine speaking RabbitMQ's dialect of AMQP 0-9-1; each version is the RabbitMQ
/// behaviour it follows.
pub const ENGINE_VERSIONS: &[EngineVersionSpec] = &[
    EngineVersionSpec {
        engine_type: EngineType::Rabbitmq,
        version: "3.13",
        runner: Runner::ConfiguredAgent,
    },
    EngineVersionSpec {
        engine_type: EngineType::Rabbitmq,
        version: "3.12",
        runner: Runner::ConfiguredAgent,
    },
];
