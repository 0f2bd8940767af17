//! What brokers can be made of, as data: engine versions (and how the local provider
//! runs each) and host instance types (and the limits each imposes on the engine).
//! DescribeBrokerEngineTypes and DescribeBrokerInstanceOptions read these; the
//! provisioning side pushes an instance type's limits to its nodes.

mod engine_versions;
mod instance_types;

pub use engine_versions::{EngineVersionSpec, Runner, ENGINE_VERSIONS};
pub use instance_types::{InstanceTypeSpec, INSTANCE_TYPES};

use crate::model::EngineType;

/// The engine versions of `engine`, newest first.
pub fn engine_versions(engine: EngineType) -> impl Iterator<Item = &'static EngineVersionSpec> {
    ENGINE_VERSIONS
        .iter()
        .filter(move |v| v.engine_type == engine)
}

pub fn engine_version(engine: EngineType, version: &str) -> Option<&'static EngineVersionSpec> {
    engine_versions(engine).find(|v| v.version == version)
}

/// The version CreateBroker uses when none is given: the newest.
pub fn default_engine_version(engine: EngineType) -> Option<&'static EngineVersionSpec> {
    engine_versions(engine).next()
}

pub fn instance_type(name: &str) -> Option<&'static InstanceTypeSpec> {
    INSTANCE_TYPES.iter().find(|t| t.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_version_is_unique_and_newest_first() {
        let versions: Vec<_> = engine_versions(EngineType::Rabbitmq)
            .map(|v| v.version)
            .collect();
        assert_eq!(
            default_engine_version(EngineType::Rabbitmq).map(|v| v.version),
            Some(versions[0])
        );
        for pair in versions.windows(2) {
            assert!(
                version_key(pair[0]) > version_key(pair[1]),
                "{versions:?} not newest first"
            );
        }
        assert!(default_engine_version(EngineType::Activemq).is_none());
    }

    fn version_key(v: &str) -> Vec<u32> {
        v.split('.')
            .map(|p| p.parse().expect("numeric version"))
            .collect()
    }

    #[test]
    fn instance_types_follow_the_sizing_table() {
        let large = instance_type("mq.m5.large").expect("mq.m5.large is in the catalog");
        assert_eq!(
            (large.max_connections, large.max_channels, large.max_queues),
            (5_000, 15_000, 30_000)
        );
        let mut previous = 0;
        for t in INSTANCE_TYPES {
            assert!(
                t.max_connections > previous,
                "{} should allow more than the type before",
                t.name
            );
            previous = t.max_connections;
        }
        assert!(instance_type("mq.m4.large").is_none());
    }
}
