//! What the agent drives: the node's engine, behind a small trait so the control loop can be
//! tested without one.

use mooring_agent_protocol::{DesiredConfig, EngineStatus};

/// The thing a configuration is applied to.
pub trait Node: Send + Sync {
    /// Applies users, vhosts and limits in place. Settings that need a restart (engine version,
    /// memory) are applied by the control plane restarting the node.
    fn apply(&self, config: &DesiredConfig) -> anyhow::Result<()>;
    fn status(&self) -> EngineStatus;
}
