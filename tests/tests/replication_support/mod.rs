//! A replicated broker of real `mooring-agent run` processes against a tiny fake control plane
//! (an axum server speaking the agent API of `mooring_agent_protocol`). The fake records the
//! leader's proposed in-sync set as soon as it is reported and grants leases to the leader of
//! the current epoch; the test decides when to fail over (`promote`), as the real control
//! plane's failover loop will.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs::OpenOptions;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use mooring_agent_protocol::{
    rabbit_password_hash, ApplyReport, DesiredConfig, DesiredPointer, EngineSettings, Epoch,
    Generation, Heartbeat, LeaseGrant, Limits, NodeId, Peer, ReplicationSpec, ReplicationStatus,
    Role, User,
};
use mooring_tests::{binary, wait_for};
use parking_lot::Mutex;

pub const LEASE_MS: u64 = 1500;
pub const SECRET: &str = "replication-test-secret";

pub struct NodeState {
    pub generation: u64,
    pub role: Role,
    pub last_status: Option<ReplicationStatus>,
    pub ready: bool,
    pub heartbeats: u64,
}

pub struct CpState {
    pub epoch: u64,
    pub leader: String,
    pub in_sync: Vec<NodeId>,
    pub peers: Vec<Peer>,
    pub nodes: BTreeMap<String, NodeState>,
    /// When the lease last granted to the current leader runs out (on our clock).
    pub lease_until: Option<Instant>,
    /// Nodes this control plane does not answer (503), as if cut off from it.
    pub muted: BTreeSet<String>,
}

pub type Cp = Arc<Mutex<CpState>>;

fn config_for(cp: &CpState, node: &str) -> DesiredConfig {
    let n = &cp.nodes[node];
    DesiredConfig {
        generation: Generation(n.generation),
        users: vec![User {
            name: "guest".into(),
            password_hash: rabbit_password_hash("guest", [1, 2, 3, 4]),
            tags: vec!["administrator".into()],
            vhosts: vec!["/".into()],
        }],
        vhosts: vec!["/".into()],
        limits: Limits {
            max_connections: 1000,
            max_channels_per_connection: 2047,
            max_queues: 1000,
            memory_bytes: 1 << 30,
        },
        engine: EngineSettings {
            engine_version: "3.13".into(),
            host_instance_type: "mq.m5.large".into(),
            configuration: None,
        },
        replication: Some(ReplicationSpec {
            epoch: Epoch(cp.epoch),
            role: n.role,
            leader: NodeId(cp.leader.clone()),
            peers: cp.peers.clone(),
            secret: SECRET.into(),
        }),
    }
}

fn pointer(cp: &mut CpState, node: &str) -> DesiredPointer {
    let lease = if node == cp.leader {
        cp.lease_until = Some(Instant::now() + Duration::from_millis(LEASE_MS));
        Some(LeaseGrant {
            epoch: Epoch(cp.epoch),
            duration_ms: LEASE_MS,
        })
    } else {
        None
    };
    DesiredPointer {
        desired_generation: Generation(cp.nodes[node].generation),
        lease,
        in_sync: Some(cp.in_sync.clone()),
        release_lease: false,
        leaving: Vec::new(),
        hurry: false,
    }
}

async fn serve_cp(cp: Cp) -> Result<String> {
    let app = Router::new()
        .route(
            "/agent/v1/nodes/{node}/register",
            post(|State(cp): State<Cp>, Path(node): Path<String>| async move {
                let mut cp = cp.lock();
                if !cp.nodes.contains_key(&node) {
                    return Err(axum::http::StatusCode::NOT_FOUND);
                }
                if cp.muted.contains(&node) {
                    return Err(axum::http::StatusCode::SERVICE_UNAVAILABLE);
                }
                Ok(Json(pointer(&mut cp, &node)))
            }),
        )
        .route(
            "/agent/v1/nodes/{node}/heartbeat",
            post(
                |State(cp): State<Cp>, Path(node): Path<String>, Json(hb): Json<Heartbeat>| async move {
                    let mut cp = cp.lock();
                    if cp.muted.contains(&node) {
                        return Err(axum::http::StatusCode::SERVICE_UNAVAILABLE);
                    }
                    let epoch = cp.epoch;
                    let is_leader = cp.leader == node;
                    let Some(n) = cp.nodes.get_mut(&node) else {
                        return Err(axum::http::StatusCode::NOT_FOUND);
                    };
                    n.heartbeats += 1;
                    n.ready = hb.engine.ready;
                    n.last_status = hb.replication.clone();
                    // Record the leader's proposal at once (the real control plane writes it
                    // to its database first).
                    if let Some(st) = &hb.replication {
                        if is_leader && st.epoch.0 == epoch && !st.proposed_in_sync.is_empty() {
                            cp.in_sync = st.proposed_in_sync.clone();
                        }
                    }
                    Ok(Json(pointer(&mut cp, &node)))
                },
            ),
        )
        .route(
            "/agent/v1/nodes/{node}/config",
            get(|State(cp): State<Cp>, Path(node): Path<String>| async move {
                let cp = cp.lock();
                if !cp.nodes.contains_key(&node) {
                    return Err(axum::http::StatusCode::NOT_FOUND);
                }
                Ok(Json(config_for(&cp, &node)))
            }),
        )
        .route(
            "/agent/v1/nodes/{node}/applied",
            post(|Json(_): Json<ApplyReport>| async { axum::http::StatusCode::NO_CONTENT }),
        )
        .with_state(cp);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(format!("http://{addr}"))
}

fn free_port() -> Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

pub struct NodeProc {
    pub id: String,
    pub amqp: SocketAddr,
    pub repl: SocketAddr,
    pub dir: PathBuf,
    pub log: PathBuf,
    pub child: Option<Child>,
}

pub struct Cluster {
    pub cp: Cp,
    pub url: String,
    pub nodes: Vec<NodeProc>,
    _tmp: tempfile::TempDir,
}

impl Cluster {
    /// `n` nodes, the first one leading under epoch 1, all recorded in sync.
    pub async fn start(n: usize) -> Result<Cluster> {
        let tmp = tempfile::tempdir()?;
        let mut nodes = Vec::new();
        let mut peers = Vec::new();
        for i in 1..=n {
            let id = format!("b-repl-{i}");
            let (amqp, repl) = (free_port()?, free_port()?);
            peers.push(Peer {
                node: NodeId(id.clone()),
                zone: format!("zone-{i}"),
                amqp_addr: amqp.to_string(),
                replication_addr: repl.to_string(),
            });
            nodes.push(NodeProc {
                dir: tmp.path().join(&id),
                log: tmp.path().join(format!("{id}.log")),
                id,
                amqp,
                repl,
                child: None,
            });
        }
        let states = nodes
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let role = if i == 0 { Role::Leader } else { Role::Follower };
                (
                    p.id.clone(),
                    NodeState {
                        generation: 1,
                        role,
                        last_status: None,
                        ready: false,
                        heartbeats: 0,
                    },
                )
            })
            .collect();
        let cp = Arc::new(Mutex::new(CpState {
            epoch: 1,
            leader: nodes[0].id.clone(),
            in_sync: peers.iter().map(|p| p.node.clone()).collect(),
            peers,
            nodes: states,
            lease_until: None,
            muted: BTreeSet::new(),
        }));
        let url = serve_cp(cp.clone()).await?;
        let mut cluster = Cluster {
            cp,
            url,
            nodes,
            _tmp: tmp,
        };
        for i in 0..n {
            cluster.spawn(i)?;
        }
        Ok(cluster)
    }

    pub fn spawn(&mut self, i: usize) -> Result<()> {
        let exe = binary("mooring-agent")?;
        let node = &mut self.nodes[i];
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)?;
        let child = Command::new(exe)
            .arg("run")
            .args(["--control-plane", &self.url, "--node-id", &node.id])
            .arg("--data-dir")
            .arg(&node.dir)
            .args(["--amqp-listen", &node.amqp.to_string()])
            .args(["--admin-listen", "127.0.0.1:0"])
            .args(["--replication-listen", &node.repl.to_string()])
            .env("MOORING_AGENT_TOKEN", "test-token")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawning mooring-agent run")?;
        node.child = Some(child);
        Ok(())
    }

    pub fn uri(&self, i: usize) -> String {
        format!("amqp://guest:guest@{}/%2f", self.nodes[i].amqp)
    }

    pub fn index_of(&self, id: &str) -> usize {
        self.nodes
            .iter()
            .position(|n| n.id == id)
            .expect("a node of the cluster")
    }

    /// Sends a signal by name (`STOP`, `CONT`) through kill(1), without unsafe code.
    pub fn signal(&self, i: usize, sig: &str) -> Result<()> {
        let child = self.nodes[i].child.as_ref().context("not running")?;
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(child.id().to_string())
            .status()?;
        if !status.success() {
            bail!("kill -{sig} failed: {status}");
        }
        Ok(())
    }

    pub fn kill9(&mut self, i: usize) -> Result<()> {
        if let Some(mut c) = self.nodes[i].child.take() {
            c.kill()?;
            c.wait()?;
        }
        Ok(())
    }

    /// Waits until the leader reports every other node caught up and the control plane has
    /// recorded all of them in sync.
    pub async fn wait_all_in_sync(&self) -> Result<()> {
        let n = self.nodes.len();
        wait_for(Duration::from_secs(60), "every node in sync", || {
            let cp = self.cp.lock();
            let leader = &cp.nodes[&cp.leader];
            let ok = cp.in_sync.len() == n
                && leader.last_status.as_ref().is_some_and(|s| {
                    s.role == Role::Leader
                        && s.followers.len() == n - 1
                        && s.followers.iter().all(|f| f.caught_up)
                });
            std::future::ready(Ok(ok.then_some(())))
        })
        .await
    }

    /// Fails over the way the control plane does: wait out the leader's lease, pick the
    /// recorded in-sync follower with the highest position, bump the epoch and every
    /// generation. Returns the new leader's index.
    pub async fn promote_best(&self, dead: usize) -> Result<usize> {
        self.wait_out_lease().await;
        let dead_id = self.nodes[dead].id.clone();
        let mut cp = self.cp.lock();
        let best = cp
            .in_sync
            .iter()
            .filter(|n| n.0 != dead_id)
            .max_by_key(|n| {
                cp.nodes[&n.0]
                    .last_status
                    .as_ref()
                    .map_or(0, |s| s.position)
            })
            .cloned()
            .context("no in-sync follower to promote")?;
        self.set_leader(&mut cp, &best.0, &dead_id);
        Ok(self.index_of(&best.0))
    }

    async fn wait_out_lease(&self) {
        let until = self.cp.lock().lease_until;
        if let Some(until) = until {
            let now = Instant::now();
            if until > now {
                tokio::time::sleep(until - now + Duration::from_millis(100)).await;
            }
        }
    }

    /// Like [`promote_best`](Self::promote_best), but promotes node `chosen`, which must be in
    /// the recorded in-sync set (any member may be chosen, so each must hold every confirm).
    pub async fn promote(&self, dead: usize, chosen: usize) -> Result<usize> {
        self.wait_out_lease().await;
        let (dead_id, chosen_id) = (self.nodes[dead].id.clone(), self.nodes[chosen].id.clone());
        let mut cp = self.cp.lock();
        if !cp.in_sync.iter().any(|n| n.0 == chosen_id) {
            bail!(
                "{chosen_id} is not in the recorded in-sync set {:?}",
                cp.in_sync
            );
        }
        self.set_leader(&mut cp, &chosen_id, &dead_id);
        Ok(chosen)
    }

    fn set_leader(&self, cp: &mut CpState, leader: &str, dead: &str) {
        cp.epoch += 1;
        cp.leader = leader.to_string();
        cp.in_sync.retain(|n| n.0 != dead);
        cp.lease_until = None;
        for (id, n) in cp.nodes.iter_mut() {
            n.generation += 1;
            n.role = if id == leader {
                Role::Leader
            } else {
                Role::Follower
            };
        }
    }

    pub fn log_tail(&self, i: usize) -> String {
        let text = std::fs::read_to_string(&self.nodes[i].log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    pub fn logs(&self) -> String {
        (0..self.nodes.len())
            .map(|i| format!("--- {} ---\n{}", self.nodes[i].id, self.log_tail(i)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                // A SIGSTOPped process must be continued to die cleanly; SIGKILL works anyway.
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}
