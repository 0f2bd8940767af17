//! [`Node`] for the real engine: maps the wire configuration onto the engine's users and limits.

use super::node::Node;
use super::RunArgs;
use crate::engine::broker::stats::Stats;
use crate::engine::storage::Tap;
use crate::engine::{Engine, EngineAddrs, EngineConfig, Limits, UserDef};
use mooring_agent_protocol::{DesiredConfig, EngineStatus};

/// Cheap to clone (the engine is a handle).
#[derive(Clone)]
pub struct EngineNode {
    engine: Engine,
}

impl EngineNode {
    /// Starts the engine on the node's data directory with the held configuration, if any.
    /// `tap`: replicated leaders only (see `engine::storage::replica`).
    pub async fn start(
        args: &RunArgs,
        held: Option<&DesiredConfig>,
        tap: Option<Tap>,
    ) -> anyhow::Result<Self> {
        let mut config = EngineConfig::new(args.data_dir.join("engine"), args.amqp_listen);
        config.admin_listen = Some(args.admin_listen);
        config.replication_tap = tap;
        if let Some(held) = held {
            config.initial_users = users(held);
            config.limits = limits(held);
            config.memory_high_watermark_bytes = held.limits.memory_bytes.max(64 << 20) * 4 / 10;
        }
        let engine = Engine::start(config).await?;
        let node = EngineNode { engine };
        // The engine keeps users from its own snapshot over `initial_users`; the ledger is the
        // authority here, so apply it again.
        if let Some(held) = held {
            node.apply(held)?;
        }
        Ok(node)
    }

    pub fn addrs(&self) -> EngineAddrs {
        self.engine.local_addrs()
    }

    pub async fn shutdown(&self) {
        self.engine.shutdown().await;
    }
}

impl Node for EngineNode {
    fn apply(&self, config: &DesiredConfig) -> anyhow::Result<()> {
        self.engine.set_users(users(config))?;
        self.engine.set_limits(limits(config));
        Ok(())
    }

    fn status(&self) -> EngineStatus {
        let stats = &self.engine.broker().stats;
        EngineStatus {
            // The engine exists only once recovery is done and its listeners are bound.
            ready: true,
            connections: Stats::get(&stats.connections),
            queues: Stats::get(&stats.queues),
            messages: Stats::get(&stats.ready) + Stats::get(&stats.unacked),
        }
    }
}

fn users(config: &DesiredConfig) -> Vec<UserDef> {
    config
        .users
        .iter()
        .map(|u| UserDef {
            name: u.name.clone(),
            password_hash: u.password_hash.clone(),
            tags: u.tags.clone(),
            vhosts: u.vhosts.clone(),
        })
        .collect()
}

fn limits(config: &DesiredConfig) -> Limits {
    let l = &config.limits;
    Limits {
        max_connections: Some(l.max_connections),
        max_channels_per_connection: u16::try_from(l.max_channels_per_connection)
            .unwrap_or(u16::MAX),
        max_queues: Some(l.max_queues),
        ..Limits::default()
    }
}
