//! Pure decisions (provisioning, leadership, maintenance): no I/O, no clock (time is a parameter), table-tested.
//!
//! - [`nodes`]: which nodes a broker should have, and what to do next for each one given what
//!   the provider and the agent report.
//! - [`config`]: the configuration a broker's nodes must hold at a generation.
//! - [`broker`]: what to do next for a broker as a whole (declare it RUNNING,
//!   remove it) once its nodes are known.
//! - [`failover`]: who leads a replicated broker (failover, switchover) and its honest status.
//! - [`window`]: the weekly maintenance window: validation, open or not, next start.
//! - [`maintenance`]: what to patch next, node by node, and auto minor version upgrades.

pub mod broker;
pub mod config;
pub mod failover;
pub mod maintenance;
pub mod nodes;
pub mod window;
