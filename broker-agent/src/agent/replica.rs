//! A node of a replicated broker (`mooring-agent run --replication-listen ...`): acts as the
//! leader or a follower as `DesiredConfig.replication` says, and reports replication facts in
//! its heartbeats (see `mooring_agent_protocol::replication` for the contract).
//!
//! - **Follower**: the AMQP address refuses clients naming the leader; the follower task
//!   applies the leader's stream to `<data-dir>/engine`.
//! - **Leader**: the engine serves on `<data-dir>/engine` with the hub as its storage tap, so
//!   confirms wait for the in-sync followers and the lease; the replication listener ships.
//! - **Promotion** (follower -> leader under a newer epoch): stop following, then start the
//!   engine, whose normal recovery opens the replicated files.
//! - **Demotion** (leader -> follower): fence (pending confirms are refused), stop the engine
//!   (clients get connection.close), let connected followers take what was written (bounded),
//!   then follow the new leader, resuming from the window or by a full resync.
//!
//! One task applies role changes in order; it is the only one that starts or stops the engine.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use mooring_agent_protocol::{
    DesiredConfig, DesiredPointer, EngineStatus, NodeId, RegisterRequest, ReplicationSpec,
    ReplicationStatus, Role,
};
use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use super::client::ControlPlaneClient;
use super::engine_node::EngineNode;
use super::ledger::Ledger;
use super::node::Node;
use super::session::Session;
use super::RunArgs;
use crate::engine::storage::replica::RESYNC_MARKER;
use crate::engine::storage::Tap;
use crate::replication::follower::{self, Target};
use crate::replication::{leader, refuse, Hub, HubConfig};

/// How often the hub samples positions and revises the in-sync proposal.
const TICK: Duration = Duration::from_millis(50);
/// A demoted leader waits at most this long for connected followers to take its last writes.
const DRAIN_TIMEOUT: Duration = Duration::from_millis(1000);
/// Attempts to bind the AMQP address after the other role released it.
const BIND_ATTEMPTS: u32 = 50;

pub async fn run(
    mut args: RunArgs,
    node_id: NodeId,
    ledger: Ledger,
    held: Option<DesiredConfig>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let repl_addr = args
        .replication_listen
        .context("replicated mode needs --replication-listen")?;
    let repl_listener = TcpListener::bind(repl_addr)
        .await
        .with_context(|| format!("binding the replication listener {repl_addr}"))?;
    let repl_local = repl_listener.local_addr()?;
    // Both roles bind the AMQP address in turn, so a port 0 is fixed once here.
    args.amqp_listen = resolve(args.amqp_listen)?;
    args.admin_listen = resolve(args.admin_listen)?;
    let hub = Arc::new(Hub::new(HubConfig::new(node_id.clone())));
    let node = ReplicaNode::start(args.clone(), hub, repl_listener);
    if let Some(held) = &held {
        node.restore(held);
    }
    tracing::info!(node = %node_id, amqp = %args.amqp_listen, replication = %repl_local, "replicated node started");
    let client = ControlPlaneClient::new(&args.control_plane, node_id, args.token.clone())?;
    let register = RegisterRequest {
        agent_version: super::reported_version(),
        amqp_addr: args.amqp_listen.to_string(),
        admin_addr: args.admin_listen.to_string(),
        applied_generation: Default::default(),
        replication_addr: Some(repl_local.to_string()),
    };
    let session = Session::new(
        client,
        node.clone(),
        ledger,
        held,
        register,
        args.heartbeat_interval(),
    );
    session.run(shutdown).await;
    tracing::info!("shutting down");
    node.shutdown().await;
    Ok(())
}

fn resolve(addr: SocketAddr) -> anyhow::Result<SocketAddr> {
    if addr.port() != 0 {
        return Ok(addr);
    }
    let l = std::net::TcpListener::bind(addr).with_context(|| format!("binding {addr}"))?;
    Ok(l.local_addr()?)
}

/// Cheap to clone.
#[derive(Clone)]
pub struct ReplicaNode {
    inner: Arc<Inner>,
}

struct Inner {
    args: RunArgs,
    hub: Arc<Hub>,
    desired: watch::Sender<Option<DesiredConfig>>,
    /// The control plane has vouched for `desired` in this process's life: it was fetched,
    /// or a heartbeat answer pointed at its very generation (and, for a leader, granted a
    /// lease under its epoch). Until then a configuration
    /// restored from the ledger that names this node leader is not acted on: a leader
    /// killed and restarted may have been replaced meanwhile, and must not accept clients
    /// as the leader of an old epoch while it finds out.
    vouched: watch::Sender<bool>,
    spec: watch::Sender<Option<ReplicationSpec>>,
    /// Present while leading.
    engine: Mutex<Option<EngineNode>>,
    /// True while a follower receives live entries.
    streaming: Arc<AtomicBool>,
    nudge: Arc<Notify>,
    stop: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl ReplicaNode {
    fn start(args: RunArgs, hub: Arc<Hub>, repl_listener: TcpListener) -> ReplicaNode {
        let (stop, stop_rx) = watch::channel(false);
        let inner = Arc::new(Inner {
            args,
            hub,
            desired: watch::channel(None).0,
            vouched: watch::channel(false).0,
            spec: watch::channel(None).0,
            engine: Mutex::new(None),
            streaming: Arc::new(AtomicBool::new(false)),
            nudge: Arc::new(Notify::new()),
            stop,
            tasks: Mutex::new(Vec::new()),
        });
        let engine_dir = inner.args.data_dir.join("engine");
        let serve = tokio::spawn(leader::serve(
            repl_listener,
            inner.hub.clone(),
            inner.spec.subscribe(),
            engine_dir,
            stop_rx.clone(),
        ));
        let hub = inner.hub.clone();
        let mut tick_stop = stop_rx.clone();
        let ticker = tokio::spawn(async move {
            let mut every = tokio::time::interval(TICK);
            loop {
                tokio::select! {
                    _ = crate::replication::stopped(&mut tick_stop) => return,
                    _ = every.tick() => hub.tick(Instant::now()),
                }
            }
        });
        let roles = tokio::spawn(roles(inner.clone(), stop_rx));
        inner.tasks.lock().extend([serve, ticker, roles]);
        ReplicaNode { inner }
    }

    /// The configuration held in the ledger at start: known, not yet vouched for.
    fn restore(&self, config: &DesiredConfig) {
        self.inner.desired.send_replace(Some(config.clone()));
    }

    async fn shutdown(&self) {
        self.inner.stop.send_replace(true);
        let tasks: Vec<JoinHandle<()>> = std::mem::take(&mut *self.inner.tasks.lock());
        for t in tasks {
            let _ = t.await;
        }
    }
}

impl Node for ReplicaNode {
    fn apply(&self, config: &DesiredConfig) -> anyhow::Result<()> {
        if let Some(engine) = self.inner.engine.lock().as_ref() {
            engine.apply(config)?;
        }
        // The configuration before the vouch (and `roles` reads them in the other order):
        // a vouch must never be paired with the configuration it replaces.
        self.inner.desired.send_replace(Some(config.clone()));
        self.inner.vouched.send_replace(true);
        Ok(())
    }

    fn status(&self) -> EngineStatus {
        match self.inner.engine.lock().as_ref() {
            Some(engine) => engine.status(),
            // A follower is "ready" in its role once it receives the live stream.
            None => EngineStatus {
                ready: self.inner.streaming.load(Ordering::Relaxed),
                ..EngineStatus::default()
            },
        }
    }

    fn replication(&self) -> Option<ReplicationStatus> {
        Some(self.inner.hub.status())
    }

    fn on_pointer(&self, sent_at: Instant, pointer: &DesiredPointer) {
        // A restored lead is vouched for only with a lease for its epoch: the control plane
        // grants one to the recorded leader of the current epoch alone.
        let current = self.inner.desired.borrow().as_ref().is_some_and(|c| {
            c.generation == pointer.desired_generation
                && c.replication.as_ref().is_none_or(|r| {
                    r.role != Role::Leader || pointer.lease.is_some_and(|g| g.epoch == r.epoch)
                })
        });
        if current {
            self.inner
                .vouched
                .send_if_modified(|v| !std::mem::replace(v, true));
        }
        self.inner.hub.on_pointer(sent_at, pointer);
    }

    fn nudge(&self) -> Option<Arc<Notify>> {
        Some(self.inner.nudge.clone())
    }
}

/// What the node is doing now.
enum Acting {
    Idle,
    Following(Following),
    Leading { epoch: u64 },
}

struct Following {
    target: Target,
    task: JoinHandle<()>,
    refuse_reason: watch::Sender<String>,
    refuse_stop: watch::Sender<bool>,
    refuse_task: JoinHandle<()>,
}

impl Following {
    async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
        self.refuse_stop.send_replace(true);
        let _ = self.refuse_task.await;
    }
}

/// Applies each new desired configuration's replication part, in order, until stopped.
async fn roles(inner: Arc<Inner>, mut stop: watch::Receiver<bool>) {
    let mut desired = inner.desired.subscribe();
    let mut vouched = inner.vouched.subscribe();
    let mut acting = Acting::Idle;
    // Restored as leader and not yet vouched for: the hub claims the lead (heartbeats say
    // "leader of epoch N", which is how a lease is asked for) but no engine runs and no
    // client is accepted until the control plane grants a lease or says otherwise.
    let mut claiming = false;
    loop {
        let trusted = *vouched.borrow_and_update();
        let config = desired.borrow_and_update().clone();
        let spec = config.as_ref().and_then(|c| c.replication.clone());
        let restored_lead = spec.as_ref().filter(|s| !trusted && s.role == Role::Leader);
        if let (Some(s), false) = (restored_lead, claiming) {
            inner.hub.observe_epoch(s.epoch.0);
            let peers = s.peers.iter().map(|p| p.node.clone()).collect();
            inner.hub.become_leader(s.epoch.0, peers);
            claiming = true;
            inner.nudge.notify_one();
        } else if claiming && restored_lead.is_none() {
            claiming = false;
            if spec.as_ref().is_some_and(|s| s.role != Role::Leader) {
                inner.hub.stop_leading();
            }
        }
        // A restored "lead" waits for the control plane (see `Inner::vouched`).
        if let Some(spec) = spec.filter(|s| trusted || s.role != Role::Leader) {
            let before = matches!(acting, Acting::Leading { .. });
            acting = step(&inner, acting, config.as_ref(), &spec).await;
            if before != matches!(acting, Acting::Leading { .. }) {
                // Report the new role (and ask for a lease) without waiting a whole interval.
                inner.nudge.notify_one();
            }
        }
        tokio::select! {
            _ = crate::replication::stopped(&mut stop) => break,
            r = desired.changed() => if r.is_err() { break },
            r = vouched.changed() => if r.is_err() { break },
        }
    }
    match acting {
        Acting::Following(f) => f.stop().await,
        Acting::Leading { .. } => {
            inner.hub.fence();
            let engine = inner.engine.lock().take();
            if let Some(engine) = engine {
                engine.shutdown().await;
            }
        }
        Acting::Idle => {}
    }
}

async fn step(
    inner: &Arc<Inner>,
    acting: Acting,
    config: Option<&DesiredConfig>,
    spec: &ReplicationSpec,
) -> Acting {
    let hub = &inner.hub;
    inner.spec.send_replace(Some(spec.clone()));
    hub.observe_epoch(spec.epoch.0);
    let peers: Vec<NodeId> = spec.peers.iter().map(|p| p.node.clone()).collect();
    match (spec.role, acting) {
        (Role::Leader, Acting::Leading { epoch }) if epoch == spec.epoch.0 => {
            hub.set_peers(peers);
            Acting::Leading { epoch }
        }
        (Role::Leader, Acting::Leading { .. }) => {
            // Re-confirmed as leader under a newer epoch: a new term on the same engine.
            hub.become_leader(spec.epoch.0, peers);
            Acting::Leading {
                epoch: spec.epoch.0,
            }
        }
        (Role::Leader, acting) => {
            let started = Instant::now();
            if let Acting::Following(f) = acting {
                f.stop().await;
            }
            inner.streaming.store(false, Ordering::Relaxed);
            hub.become_leader(spec.epoch.0, peers);
            start_engine(inner, config).await;
            tracing::info!(epoch = %spec.epoch, took_ms = started.elapsed().as_millis() as u64, "leading");
            Acting::Leading {
                epoch: spec.epoch.0,
            }
        }
        (Role::Follower, Acting::Following(f)) => {
            let target = target(spec);
            if target.as_ref() == Some(&f.target) {
                f.refuse_reason.send_replace(reason(inner, spec));
                Acting::Following(f)
            } else {
                f.stop().await;
                follow(inner, spec)
            }
        }
        (Role::Follower, Acting::Leading { .. }) => {
            demote(inner).await;
            follow(inner, spec)
        }
        (Role::Follower, Acting::Idle) => follow(inner, spec),
    }
}

async fn start_engine(inner: &Arc<Inner>, config: Option<&DesiredConfig>) {
    let marker = inner.args.data_dir.join("engine").join(RESYNC_MARKER);
    if marker.exists() {
        // Promoted in the middle of a full resync: the files are a partial copy. Serving them
        // would lose confirmed messages; staying down (`ready: false`) lets the control plane
        // choose another node.
        tracing::error!(
            "told to lead, but a full resync from the previous leader was interrupted ({}): \
             refusing to serve a partial copy",
            marker.display()
        );
        inner.hub.fence();
        return;
    }
    let tap = Tap(inner.hub.clone());
    let mut attempt = 0;
    loop {
        attempt += 1;
        match EngineNode::start(&inner.args, config, Some(tap.clone())).await {
            Ok(engine) => {
                *inner.engine.lock() = Some(engine);
                return;
            }
            Err(e) if attempt < BIND_ATTEMPTS => {
                tracing::warn!("starting the engine as leader failed, retrying: {e:#}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => {
                // Without an engine the node confirms nothing; the control plane sees
                // `ready: false` and may move leadership elsewhere.
                tracing::error!("cannot start the engine as leader: {e:#}");
                return;
            }
        }
    }
}

async fn demote(inner: &Arc<Inner>) {
    let started = Instant::now();
    let hub = &inner.hub;
    hub.fence();
    let engine = inner.engine.lock().take();
    if let Some(engine) = engine {
        engine.shutdown().await;
    }
    // Let connected followers take the last writes (the engine's final flushes) so that they
    // can resume rather than resync.
    let last = hub.position();
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    while !hub.connected_followers_at(last) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    hub.stop_leading();
    tracing::info!(
        took_ms = started.elapsed().as_millis() as u64,
        "demoted: no longer leading"
    );
}

fn target(spec: &ReplicationSpec) -> Option<Target> {
    let leader = spec.leader_peer()?;
    Some(Target {
        epoch: spec.epoch.0,
        leader: leader.node.0.clone(),
        addr: leader.replication_addr.clone(),
        secret: spec.secret.clone(),
    })
}

fn reason(inner: &Inner, spec: &ReplicationSpec) -> String {
    let leader = spec.leader_peer();
    refuse::reason(
        &inner.hub.me().0,
        leader.map(|p| (p.node.0.as_str(), p.amqp_addr.as_str())),
    )
}

fn follow(inner: &Arc<Inner>, spec: &ReplicationSpec) -> Acting {
    let (refuse_reason, reason_rx) = watch::channel(reason(inner, spec));
    let (refuse_stop, stop_rx) = watch::channel(false);
    let addr = inner.args.amqp_listen;
    let refuse_task = tokio::spawn(async move {
        // The engine may have just released the address: retry briefly.
        for _ in 0..BIND_ATTEMPTS {
            match TcpListener::bind(addr).await {
                Ok(l) => return refuse::serve(l, reason_rx, stop_rx).await,
                Err(e) => {
                    tracing::debug!(%addr, error = %e, "binding the refusing AMQP listener");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        tracing::error!(%addr, "cannot bind the AMQP address to refuse clients");
    });
    let Some(target) = target(spec) else {
        tracing::error!(leader = %spec.leader, "the leader is not among the peers: not following");
        refuse_stop.send_replace(true);
        return Acting::Idle;
    };
    let task = tokio::spawn(follower::follow(
        inner.hub.clone(),
        inner.args.data_dir.join("engine"),
        target.clone(),
        inner.streaming.clone(),
    ));
    tracing::info!(leader = %target.leader, addr = %target.addr, epoch = target.epoch, "following");
    Acting::Following(Following {
        target,
        task,
        refuse_reason,
        refuse_stop,
        refuse_task,
    })
}
