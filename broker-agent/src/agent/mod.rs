//! The agent's control-plane mode (`mooring-agent run`): one broker node managed by `mooring`.
//!
//! At start the agent locks its data directory (one agent per directory, ever), restores the
//! last applied configuration from it and starts the engine with it, so the node serves even
//! before (or without) reaching the control plane. Then a [`session::Session`] registers,
//! heartbeats and applies new configurations as their generations arrive. SIGTERM or SIGINT
//! stops the engine cleanly.

mod backoff;
mod client;
mod engine_node;
mod ledger;
mod lock;
mod node;
mod replica;
mod session;

pub use client::ControlPlaneClient;
pub use ledger::{judge, Ledger, Verdict, LEDGER_FILE};
pub use lock::{DataDirLock, LOCK_FILE, PID_FILE};
pub use node::Node;
pub use session::Session;

use anyhow::{bail, Context};
use mooring_agent_protocol::{NodeId, RegisterRequest, TOKEN_ENV};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// A hidden override of the version this agent reports (at registration and by `--version`),
/// for tests of agent upgrades: a wrapper script around one build can pose as an older or a
/// newer agent, as `--clock-offset-file` lets tests move the control plane's clock. Unset or
/// empty: the crate version.
pub const REPORTED_VERSION_ENV: &str = "MOORING_AGENT_REPORTED_VERSION";

/// The version this agent reports: [`REPORTED_VERSION_ENV`] if set, else the crate version.
pub fn reported_version() -> String {
    std::env::var(REPORTED_VERSION_ENV)
        .ok()
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| env!("CARGO_PKG_VERSION").to_owned())
}

/// `mooring-agent run`: serve one broker node for a control plane.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Base URL of the control plane, e.g. `http://127.0.0.1:7878`.
    #[arg(long, env = "MOORING_CONTROL_PLANE")]
    pub control_plane: String,
    /// This node's id, as the control plane named it.
    #[arg(long, env = "MOORING_NODE_ID")]
    pub node_id: String,
    /// This node's bearer token. Passed by environment so it does not show in `ps`.
    #[arg(long, env = TOKEN_ENV, hide_env_values = true)]
    pub token: String,
    /// The node's data directory (queue logs, definitions, applied configuration, lock).
    #[arg(long, env = "MOORING_DATA_DIR")]
    pub data_dir: PathBuf,
    /// AMQP listener address.
    #[arg(long, env = "MOORING_AMQP_LISTEN")]
    pub amqp_listen: SocketAddr,
    /// Admin (console) HTTP listener address.
    #[arg(long, env = "MOORING_ADMIN_LISTEN")]
    pub admin_listen: SocketAddr,
    /// Milliseconds between heartbeats [default: 1000, or 200 with --replication-listen:
    /// a replicated leader renews its lease with them].
    #[arg(long, env = "MOORING_HEARTBEAT_INTERVAL_MS")]
    pub heartbeat_interval_ms: Option<u64>,
    /// Replicated brokers: the replication listener (followers connect to the leader's).
    /// Its presence makes this node a member of a replicated broker.
    #[arg(long, env = "MOORING_REPLICATION_LISTEN")]
    pub replication_listen: Option<SocketAddr>,
}

/// Heartbeat period without `--heartbeat-interval-ms`.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(1000);
/// The same for replicated nodes: well inside the control plane's lease.
pub const REPLICATED_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(200);

impl RunArgs {
    pub fn heartbeat_interval(&self) -> Duration {
        match (self.heartbeat_interval_ms, self.replication_listen) {
            (Some(ms), _) => Duration::from_millis(ms.max(10)),
            (None, Some(_)) => REPLICATED_HEARTBEAT_INTERVAL,
            (None, None) => HEARTBEAT_INTERVAL,
        }
    }
}

/// Runs the node until SIGTERM/SIGINT. Returns an error only for problems at start (bad
/// arguments, a data directory held by another agent, listeners that cannot bind); an
/// unreachable control plane is retried forever.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    if !NodeId::is_valid(&args.node_id) {
        bail!("invalid node id {:?}", args.node_id);
    }
    let node_id = NodeId(args.node_id.clone());
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    let _lock = DataDirLock::acquire(&args.data_dir)?;

    let ledger = Ledger::new(&args.data_dir);
    let held = ledger.load()?;
    if args.replication_listen.is_some() {
        return replica::run(args, node_id, ledger, held, shutdown_signal()?).await;
    }
    let node = engine_node::EngineNode::start(&args, held.as_ref(), None).await?;
    let addrs = node.addrs();
    tracing::info!(node = %node_id, amqp = %addrs.amqp, "engine serving");

    let client = ControlPlaneClient::new(&args.control_plane, node_id, args.token.clone())?;
    let register = RegisterRequest {
        agent_version: reported_version(),
        amqp_addr: addrs.amqp.to_string(),
        admin_addr: addrs.admin.map(|a| a.to_string()).unwrap_or_default(),
        applied_generation: Default::default(),
        replication_addr: None,
    };
    let interval = args.heartbeat_interval();
    let session = Session::new(client, node.clone(), ledger, held, register, interval);
    session.run(shutdown_signal()?).await;

    tracing::info!("shutting down");
    node.shutdown().await;
    Ok(())
}

/// Completes on SIGTERM or SIGINT.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

#[cfg(test)]
mod tests;
