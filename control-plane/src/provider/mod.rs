//! Where broker nodes run. A [`Provider`] starts, observes, stops and deletes one node at a
//! time; the provisioning reconciler decides which of those to do.
//!
//! Every operation is idempotent in the way reconcilers need (DESIGN.md decision 5):
//! [`Provider::start`] adopts a node that is already running instead of starting a second one,
//! and [`Provider::delete`] of a node that does not exist is success.

pub mod local;

use futures::future::BoxFuture;
use mooring_agent_protocol::NodeId;

/// Everything a provider needs to run a node. Ports are chosen once
/// ([`Provider::allocate_endpoint`]) and kept, so the node's endpoint is stable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSpec {
    pub node_id: NodeId,
    pub broker_id: String,
    pub zone: String,
    pub amqp_port: u16,
    pub admin_port: u16,
    /// The engine version to run (selects the agent binary where several exist).
    pub engine_version: String,
    /// Replicated brokers: the port of the node's replication listener (chosen once, like
    /// the others). `None` for single-instance brokers.
    pub replication_port: Option<u16>,
}

/// Where a new node will listen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub amqp_port: u16,
    pub admin_port: u16,
}

/// What a provider sees of a node's process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessState {
    Running { pid: Option<u32> },
    NotRunning,
}

/// The result of [`Provider::start`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartOutcome {
    /// A new process was started with the given token.
    Started { pid: Option<u32> },
    /// A process was already running for this node and was left alone; it holds whatever
    /// token it was started with.
    Adopted { pid: Option<u32> },
}

pub trait Provider: Send + Sync + 'static {
    /// Picks where a new node will listen. The choice may collide with ports another node
    /// holds; the store's unique constraints catch that, and the reconciler draws again.
    fn allocate_endpoint(&self) -> anyhow::Result<Endpoint>;

    /// Picks a port for a replicated node's replication listener, chosen and caught like
    /// [`Provider::allocate_endpoint`]'s. Providers whose nodes each have their own address
    /// may answer a fixed port.
    fn allocate_replication_port(&self) -> anyhow::Result<u16> {
        anyhow::bail!("this provider does not run replicated brokers yet")
    }

    /// Ensures the node runs: adopts a running process, else starts one on the node's
    /// existing data (creating it the first time) with `token` as its credential.
    fn start<'a>(
        &'a self,
        spec: &'a NodeSpec,
        token: &'a str,
    ) -> BoxFuture<'a, anyhow::Result<StartOutcome>>;

    fn status<'a>(&'a self, node: &'a NodeId) -> BoxFuture<'a, anyhow::Result<ProcessState>>;

    /// Stops the node's process, keeping its data. Stopping a stopped node is success.
    fn stop<'a>(&'a self, node: &'a NodeId) -> BoxFuture<'a, anyhow::Result<()>>;

    /// Stops the node and removes its data. Deleting a node that does not exist is success.
    fn delete<'a>(&'a self, node: &'a NodeId) -> BoxFuture<'a, anyhow::Result<()>>;

    /// Every node the provider holds something for (to find leftovers nobody recorded).
    fn list<'a>(&'a self) -> BoxFuture<'a, anyhow::Result<Vec<NodeId>>>;
}
