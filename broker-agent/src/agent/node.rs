//! What the agent drives: the node's engine, behind a small trait so the control loop can be
//! tested without one.

use mooring_agent_protocol::{DesiredConfig, DesiredPointer, EngineStatus, ReplicationStatus};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::Notify;

/// The thing a configuration is applied to.
pub trait Node: Send + Sync {
    /// Applies users, vhosts and limits in place. Settings that need a restart (engine version,
    /// memory) are applied by the control plane restarting the node.
    fn apply(&self, config: &DesiredConfig) -> anyhow::Result<()>;
    fn status(&self) -> EngineStatus;
    /// Replicated brokers: the replication facts for the heartbeat.
    fn replication(&self) -> Option<ReplicationStatus> {
        None
    }
    /// The control plane's answer to a register or heartbeat sent at `sent_at` (the lease is
    /// counted from then).
    fn on_pointer(&self, _sent_at: Instant, _pointer: &DesiredPointer) {}
    /// Notified when the node wants a heartbeat sent at once (its role changed).
    fn nudge(&self) -> Option<Arc<Notify>> {
        None
    }
}
