//! mooring-agent: one broker node. Embeds the queue engine and talks to the control plane.
pub mod agent;
pub mod engine;
pub mod replication;
