//! The `local` provider: each node is a `mooring-agent run` process on this machine.
//!
//! A node's data directory is `<nodes-dir>/<node-id>/`; the agent's output goes to `agent.log`
//! in it. Agents run in their own process group, so a `kill -9` of the control plane (or a
//! Ctrl-C in its terminal) leaves them serving. A restarted control plane finds them again
//! through the pid file the agent writes, or by their command line in `/proc` ([`procfs`]),
//! and never starts a second agent for a node; the agent's lock on its data directory makes
//! a duplicate impossible even if it tried.

mod procfs;
mod signal;

use super::{Endpoint, NodeSpec, ProcessState, Provider, StartOutcome};
use anyhow::{bail, Context};
use futures::future::BoxFuture;
use futures::FutureExt;
use mooring_agent_protocol::{NodeId, TOKEN_ENV};
use parking_lot::Mutex;
use rand::Rng;
use std::collections::HashMap;
use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// The pid file the agent writes in its data directory (see the agent's `lock` module).
const PID_FILE: &str = "agent.pid";
const LOG_FILE: &str = "agent.log";
/// How often a stop polls for the process to be gone.
const STOP_POLL: Duration = Duration::from_millis(20);
/// After SIGKILL a process is gone within this long, or something is badly wrong.
const KILL_TIMEOUT: Duration = Duration::from_secs(5);
/// Attempts at finding two free ports not held by another node.
const PORT_ATTEMPTS: usize = 256;
/// Lowest port given to a node: above the well-known and most registered services.
const NODE_PORTS_LOW: u16 = 20000;

#[derive(Debug, Clone)]
pub struct LocalConfig {
    /// The `mooring-agent` binary.
    pub agent_binary: PathBuf,
    /// Where node data directories live: `<cp-data-dir>/nodes`.
    pub nodes_dir: PathBuf,
    /// The control plane's base URL as agents reach it, e.g. `http://127.0.0.1:7878`.
    pub control_plane_url: String,
    pub heartbeat_interval: Duration,
    /// The heartbeat interval of replicated brokers' nodes (sub-second: failure detection
    /// and lease renewal ride on it).
    pub replicated_heartbeat_interval: Duration,
    /// How long a stop waits after SIGTERM before SIGKILL.
    pub stop_timeout: Duration,
}

impl LocalConfig {
    pub fn new(agent_binary: PathBuf, cp_data_dir: &Path, control_plane_url: String) -> Self {
        LocalConfig {
            agent_binary,
            nodes_dir: cp_data_dir.join("nodes"),
            control_plane_url,
            heartbeat_interval: Duration::from_secs(1),
            replicated_heartbeat_interval: Duration::from_millis(200),
            stop_timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone)]
pub struct LocalProvider {
    config: LocalConfig,
    /// The last [`procfs::scan`] and when it was taken: looking for the agents of many nodes
    /// that have none (a pass over brokers whose agents are down, or cannot start) reads
    /// `/proc` once per [`SCAN_TTL`], not once per node. Dropped whenever this provider
    /// starts or stops a process.
    scan: Arc<Mutex<Option<Scan>>>,
}

/// A scan of `/proc` ([`procfs::scan`]) and when it was taken.
type Scan = (std::time::Instant, Arc<HashMap<String, Vec<u32>>>);

/// How long a scan of `/proc` answers for. Its hits are confirmed against `/proc` each
/// time; it can only miss an agent started since by someone else than this provider (the
/// agent's data-dir lock stops a duplicate), and not for longer than this.
const SCAN_TTL: Duration = Duration::from_secs(2);

impl LocalProvider {
    pub fn new(config: LocalConfig) -> Self {
        LocalProvider {
            config,
            scan: Arc::default(),
        }
    }

    /// The processes that named `node` in the latest scan of `/proc` (taken now if stale).
    fn scan_candidates(&self, node: &NodeId) -> Vec<u32> {
        let mut cached = self.scan.lock();
        let fresh = cached
            .as_ref()
            .is_some_and(|(taken, _)| taken.elapsed() < SCAN_TTL);
        if !fresh {
            let found = procfs::scan(&self.config.nodes_dir);
            *cached = Some((std::time::Instant::now(), Arc::new(found)));
        }
        cached
            .as_ref()
            .and_then(|(_, found)| found.get(&node.0).cloned())
            .unwrap_or_default()
    }

    /// Forgets the last scan (a process of ours started or stopped).
    fn forget_scan(&self) {
        *self.scan.lock() = None;
    }

    /// `<nodes-dir>/<node-id>`, refusing ids that could escape it.
    pub fn node_dir(&self, node: &NodeId) -> anyhow::Result<PathBuf> {
        if !NodeId::is_valid(&node.0) {
            bail!("invalid node id {:?}", node.0);
        }
        Ok(self.config.nodes_dir.join(&node.0))
    }

    /// The node's live agent, if any: the pid file first, else a scan of `/proc`.
    fn find(&self, node: &NodeId) -> anyhow::Result<Option<u32>> {
        let dir = self.node_dir(node)?;
        let from_file = fs::read_to_string(dir.join(PID_FILE))
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
            .filter(|pid| procfs::is_agent(*pid, &node.0, &dir));
        if from_file.is_some() {
            return Ok(from_file);
        }
        let found = procfs::agents_among(&self.scan_candidates(node), &node.0, &dir);
        if found.len() > 1 {
            tracing::error!(node = %node, pids = ?found, "several agents for one node");
        }
        Ok(found.into_iter().min())
    }

    async fn start_inner(&self, spec: &NodeSpec, token: &str) -> anyhow::Result<StartOutcome> {
        if let Some(pid) = self.find(&spec.node_id)? {
            return Ok(StartOutcome::Adopted { pid: Some(pid) });
        }
        // Checked before anything is forked: a missing binary fails the start (and the
        // broker backs off) without the cost of a fork of this large process.
        if !self.config.agent_binary.is_file() {
            bail!(
                "starting {}: no such agent binary",
                self.config.agent_binary.display()
            );
        }
        let dir = self.node_dir(&spec.node_id)?;
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(LOG_FILE))
            .context("opening the agent log")?;
        let log_err = log
            .try_clone()
            .context("duplicating the agent log handle")?;
        // Replicated nodes heartbeat faster: failover detection and lease renewal ride on it.
        let heartbeat = match spec.replication_port {
            Some(_) => self.config.replicated_heartbeat_interval,
            None => self.config.heartbeat_interval,
        };
        let mut command = tokio::process::Command::new(&self.config.agent_binary);
        command.arg("run");
        if let Some(port) = spec.replication_port {
            command
                .arg("--replication-listen")
                .arg(format!("127.0.0.1:{port}"));
        }
        let mut child = command
            .arg("--control-plane")
            .arg(&self.config.control_plane_url)
            .arg("--node-id")
            .arg(&spec.node_id.0)
            .arg("--data-dir")
            .arg(&dir)
            .arg("--amqp-listen")
            .arg(format!("127.0.0.1:{}", spec.amqp_port))
            .arg("--admin-listen")
            .arg(format!("127.0.0.1:{}", spec.admin_port))
            .arg("--heartbeat-interval-ms")
            .arg(heartbeat.as_millis().to_string())
            .env(TOKEN_ENV, token)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            // Its own process group: signals aimed at the control plane's group (a terminal's
            // Ctrl-C, a supervisor stopping it) do not reach the agents.
            .process_group(0)
            .kill_on_drop(false)
            .spawn()
            .with_context(|| format!("starting {}", self.config.agent_binary.display()))?;
        // A new agent of ours: the next look for it must not trust an older scan.
        self.forget_scan();
        let pid = child.id();
        let node = spec.node_id.clone();
        // Reap the child when it exits, so it does not linger as a zombie of ours.
        tokio::spawn(async move {
            match child.wait().await {
                Ok(status) => tracing::info!(node = %node, %status, "agent exited"),
                Err(e) => tracing::warn!(node = %node, "waiting for the agent failed: {e}"),
            }
        });
        tracing::info!(node = %spec.node_id, ?pid, "started agent");
        Ok(StartOutcome::Started { pid })
    }

    async fn stop_inner(&self, node: &NodeId) -> anyhow::Result<()> {
        let Some(pid) = self.find(node)? else {
            return Ok(());
        };
        let dir = self.node_dir(node)?;
        self.forget_scan();
        signal::send(pid, libc::SIGTERM).context("sending SIGTERM")?;
        if wait_gone(pid, &node.0, &dir, self.config.stop_timeout).await {
            return Ok(());
        }
        tracing::warn!(node = %node, pid, "agent ignored SIGTERM; killing it");
        signal::send(pid, libc::SIGKILL).context("sending SIGKILL")?;
        if wait_gone(pid, &node.0, &dir, KILL_TIMEOUT).await {
            return Ok(());
        }
        bail!("agent {pid} of {node} survived SIGKILL")
    }

    async fn delete_inner(&self, node: &NodeId) -> anyhow::Result<()> {
        self.stop_inner(node).await?;
        let dir = self.node_dir(node)?;
        match fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("removing {}", dir.display())),
        }
    }

    fn list_inner(&self) -> anyhow::Result<Vec<NodeId>> {
        let entries = match fs::read_dir(&self.config.nodes_dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).context("listing the nodes directory"),
        };
        let mut ids = Vec::new();
        for entry in entries {
            let entry = entry.context("reading the nodes directory")?;
            if let Some(name) = entry.file_name().to_str() {
                if NodeId::is_valid(name) && entry.path().is_dir() {
                    ids.push(NodeId(name.to_string()));
                }
            }
        }
        ids.sort();
        Ok(ids)
    }
}

/// Polls until `pid` is no longer the node's agent, up to `timeout`.
async fn wait_gone(pid: u32, node: &str, dir: &Path, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if !procfs::is_agent(pid, node, dir) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(STOP_POLL).await;
    }
}

/// Two distinct free loopback ports, neither in `taken`, drawn from below the kernel's
/// ephemeral range: a port chosen here stays free for the node's agent until it binds it
/// (and again after every restart) because programs binding port 0 are never given one.
fn free_port_pair(taken: &[u16]) -> anyhow::Result<(u16, u16)> {
    let (low, high) = node_port_range();
    let mut rng = rand::thread_rng();
    let mut found = Vec::with_capacity(2);
    let mut probes = Vec::with_capacity(2);
    for _ in 0..PORT_ATTEMPTS {
        let port = rng.gen_range(low..high);
        if taken.contains(&port) || found.contains(&port) {
            continue;
        }
        // Held until both are found, so the pair is distinct and both were free together.
        if let Ok(listener) = TcpListener::bind(("127.0.0.1", port)) {
            probes.push(listener);
            found.push(port);
            if let [a, b] = found[..] {
                return Ok((a, b));
            }
        }
    }
    bail!(
        "no free loopback ports in {low}..{high} outside the {} already held",
        taken.len()
    )
}

/// Node ports come from [`NODE_PORTS_LOW`] up to the start of the ephemeral range
/// (`/proc/sys/net/ipv4/ip_local_port_range`, 32768 by default).
fn node_port_range() -> (u16, u16) {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    if ephemeral_low > NODE_PORTS_LOW + 1000 {
        (NODE_PORTS_LOW, ephemeral_low)
    } else {
        // An unusual ephemeral range leaves no room below it: use the range above it.
        (ephemeral_low.max(61000), u16::MAX)
    }
}

impl Provider for LocalProvider {
    fn allocate_endpoint(&self) -> anyhow::Result<Endpoint> {
        let (amqp_port, admin_port) = free_port_pair(&[])?;
        Ok(Endpoint {
            host: "127.0.0.1".into(),
            amqp_port,
            admin_port,
        })
    }

    fn allocate_replication_port(&self) -> anyhow::Result<u16> {
        // A pair is drawn (and probed free together); one of it is enough.
        let (port, _) = free_port_pair(&[])?;
        Ok(port)
    }

    fn start<'a>(
        &'a self,
        spec: &'a NodeSpec,
        token: &'a str,
    ) -> BoxFuture<'a, anyhow::Result<StartOutcome>> {
        self.start_inner(spec, token).boxed()
    }

    fn status<'a>(&'a self, node: &'a NodeId) -> BoxFuture<'a, anyhow::Result<ProcessState>> {
        async move {
            Ok(match self.find(node)? {
                Some(pid) => ProcessState::Running { pid: Some(pid) },
                None => ProcessState::NotRunning,
            })
        }
        .boxed()
    }

    fn stop<'a>(&'a self, node: &'a NodeId) -> BoxFuture<'a, anyhow::Result<()>> {
        self.stop_inner(node).boxed()
    }

    fn delete<'a>(&'a self, node: &'a NodeId) -> BoxFuture<'a, anyhow::Result<()>> {
        self.delete_inner(node).boxed()
    }

    fn list<'a>(&'a self) -> BoxFuture<'a, anyhow::Result<Vec<NodeId>>> {
        async move { self.list_inner() }.boxed()
    }
}

#[cfg(test)]
mod tests;
