//! What brokers can be made of, as data: engine versions (and how the local provider
//! runs each) and host instance types (and the limits each imposes on the engine).
//! DescribeBrokerEngineTypes and DescribeBrokerInstanceOptions read these; the
//! provisioning side pushes an instance type's limits to its nodes.
//!
//! Engine versions are the built-in list plus those added at runtime ([`extra`]); code that
//! serves the API reads them through a [`Catalog`] (in `AppState`), so a version added to
//! the file is offered by DescribeBrokerEngineTypes and picked up by automatic minor
//! version upgrades without a restart.

pub mod agent;
mod engine_versions;
pub mod extra;
mod instance_types;

pub use engine_versions::{EngineVersionSpec, Runner, ENGINE_VERSIONS};
pub use instance_types::{InstanceTypeSpec, INSTANCE_TYPES};

use std::path::Path;

use crate::model::EngineType;

/// The built-in catalog plus the runtime file of one control plane.
pub struct Catalog {
    extra: extra::ExtraVersions,
    /// The agent binary nodes are started from, when there is one to ask.
    agent: Option<agent::AgentBinary>,
}

impl Catalog {
    /// The catalog of a control plane whose data directory is `data_dir`.
    pub fn new(data_dir: &Path) -> Self {
        Catalog {
            extra: extra::ExtraVersions::new(extra::extra_versions_path(data_dir)),
            agent: None,
        }
    }

    /// Also knows the version of the agent binary nodes are started from.
    pub fn with_agent_binary(mut self, path: std::path::PathBuf) -> Self {
        self.agent = Some(agent::AgentBinary::new(path));
        self
    }

    /// The version of the agent a node started now would run, if known. Blocking (it may
    /// run the binary once after it changed).
    pub fn agent_version(&self) -> Option<String> {
        self.agent.as_ref().and_then(agent::AgentBinary::version)
    }

    /// Every version of `engine`, built-in and runtime, newest first, each once.
    pub fn engine_versions(&self, engine: EngineType) -> Vec<EngineVersionSpec> {
        let mut all: Vec<EngineVersionSpec> = engine_versions(engine).copied().collect();
        for v in self.extra.current() {
            if v.engine_type == engine && !all.iter().any(|a| a.version == v.version) {
                all.push(v);
            }
        }
        all.sort_by_key(|v| std::cmp::Reverse(version_key(v.version)));
        all
    }

    pub fn engine_version(&self, engine: EngineType, version: &str) -> Option<EngineVersionSpec> {
        self.engine_versions(engine)
            .into_iter()
            .find(|v| v.version == version)
    }

    /// The version CreateBroker uses when none is given: the newest.
    pub fn default_engine_version(&self, engine: EngineType) -> Option<EngineVersionSpec> {
        self.engine_versions(engine).into_iter().next()
    }
}

/// Orders versions numerically (`3.13.1` > `3.13` > `3.9`); a non-numeric part counts 0.
pub fn version_key(v: &str) -> Vec<u32> {
    let mut key: Vec<u32> = v.split('.').map(|p| p.parse().unwrap_or(0)).collect();
    // `3.13` and `3.13.0` are the same version.
    while key.len() > 1 && key.last() == Some(&0) {
        key.pop();
    }
    key
}

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

    #[test]
    fn runtime_versions_merge_newest_first() {
        let dir = tempfile::tempdir().expect("temp dir");
        let catalog = Catalog::new(dir.path());
        let builtin: Vec<_> = engine_versions(EngineType::Rabbitmq)
            .map(|v| v.version)
            .collect();
        let listed = |c: &Catalog| -> Vec<&'static str> {
            c.engine_versions(EngineType::Rabbitmq)
                .iter()
                .map(|v| v.version)
                .collect()
        };
        assert_eq!(listed(&catalog), builtin);
        std::fs::create_dir_all(dir.path().join("catalog")).expect("mkdir");
        std::fs::write(
            extra::extra_versions_path(dir.path()),
            r#"{"engineVersions":[{"engineType":"RABBITMQ","version":"3.12.4"},
                {"engineType":"RABBITMQ","version":"3.13.1"},
                {"engineType":"RABBITMQ","version":"3.13"}]}"#,
        )
        .expect("write");
        assert_eq!(listed(&catalog), ["3.13.1", "3.13", "3.12.4", "3.12"]);
        assert_eq!(
            catalog
                .default_engine_version(EngineType::Rabbitmq)
                .map(|v| v.version),
            Some("3.13.1")
        );
        assert!(catalog
            .engine_version(EngineType::Rabbitmq, "3.12.4")
            .is_some());
        assert!(catalog
            .engine_version(EngineType::Activemq, "3.12.4")
            .is_none());
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
