//! The provisioning reconciler: converges every broker's nodes to its desired state.
//!
//! **Converges**: each serving broker (CREATION_IN_PROGRESS, RUNNING, REBOOT_IN_PROGRESS,
//! CRITICAL_ACTION_REQUIRED) has exactly its planned nodes recorded and running, restarted
//! once after each reboot request; CREATION_IN_PROGRESS and REBOOT_IN_PROGRESS brokers whose
//! nodes all serve become RUNNING; user changes the nodes have applied stop being pending;
//! a DELETION_IN_PROGRESS broker loses its nodes (processes and data), then its row.
//!
//! **Triggered** by a timer, by API writes and by agent reports that matter (registration,
//! readiness, an applied generation), through [`AppState::wake_reconcilers`].
//!
//! **Idempotent**: a pass reads everything it decides on (store rows, and the provider's view
//! of each process) and does only the next step. Node rows are written before the provider
//! acts and say `unknown` while it does; starting a running node adopts it; deleting a
//! missing node succeeds. A pass right after a converged pass does nothing.

use anyhow::Context;
use chrono::Utc;
use mooring_agent_protocol::NodeId;
use rand::RngCore;
use std::collections::HashMap;
use std::sync::Arc;

use crate::app::AppState;
use crate::http::agent::token_hash;
use crate::model::BrokerState;
use crate::plan::broker::{broker_step, serves, BrokerFacts, BrokerStep};
use crate::plan::failover::{restart_gate, RestartCause, RestartGate};
use crate::plan::nodes::{
    desired_nodes, node_action, node_ready, DesiredNode, NodeAction, NodeFacts, NodeGoal,
};
use crate::provider::{NodeSpec, ProcessState, Provider, StartOutcome};
use crate::reconcile::leadership::{replica_facts, Timing};
use crate::store::events::kind;
use crate::store::{
    BrokerId, BrokerRecord, Leave, NewEvent, NewNode, NodeRecord, ObservedState, ReplicationRecord,
    StoreError,
};

/// An agent that exits sooner than this after its start is crash-looping.
const CRASH_LOOP_WINDOW: std::time::Duration = std::time::Duration::from_secs(5);

/// Draws of an endpoint for a new node before giving up for this pass.
const ENDPOINT_ATTEMPTS: u32 = 8;
/// How long a follower leaving for a planned restart waits for the leader to let go of it
/// (normally one heartbeat, 200 ms); an agent that never does is restarted anyway, and
/// confirms then wait on it until the leader's lag timeout drops it.
const LEAVE_ACK_TIMEOUT: chrono::TimeDelta = chrono::TimeDelta::seconds(3);

/// What one broker's pass achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing left to do.
    Converged,
    /// Work was done or is in progress (an agent starting): look again at the next pass.
    Progressing,
}

pub struct Provisioner {
    state: AppState,
    provider: Arc<dyn Provider>,
    region: String,
    /// Per broker, the highest applied generation already passed to `user_mark_applied`,
    /// so converged brokers cost no writes. Lost on restart: marking again is harmless.
    marked_applied: parking_lot::Mutex<HashMap<BrokerId, i64>>,
    /// When this reconciler started: agents are not blamed for silence before it.
    started_at: chrono::DateTime<Utc>,
}

impl Provisioner {
    pub fn new(state: AppState, provider: Arc<dyn Provider>, region: String) -> Self {
        Provisioner {
            state,
            provider,
            region,
            marked_applied: Default::default(),
            started_at: Utc::now(),
        }
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    pub fn provider(&self) -> &Arc<dyn Provider> {
        &self.provider
    }

    /// One pass over one broker.
    pub async fn reconcile_broker(&self, broker: &BrokerRecord) -> anyhow::Result<Outcome> {
        let Some(serve) = serves(broker.state) else {
            return Ok(Outcome::Converged);
        };
        let store = &self.state.store;
        let desired = if serve {
            desired_nodes(broker.id.as_str(), broker.deployment_mode, &self.region)
        } else {
            Vec::new()
        };

        // 0. Replicated brokers: their leadership (epoch 1, the first node leading, every node
        // in sync while all are empty) and secret are recorded before any node.
        let leadership = if serve && desired.len() > 1 {
            Some(self.ensure_leadership(broker, &desired).await?)
        } else {
            None
        };

        // 1. Record planned nodes that have no row yet (before anything exists for them).
        let mut nodes = store.node_list_for_broker(&broker.id).await?;
        let mut progressed = false;
        for planned in &desired {
            if nodes.iter().any(|n| n.id == planned.id) {
                continue;
            }
            self.record_node(broker, planned, leadership.is_some())
                .await?;
            progressed = true;
        }
        if progressed {
            nodes = store.node_list_for_broker(&broker.id).await?;
        }

        // 2. Each node's next step.
        let reboot_generation = broker.reboot_generation.unwrap_or(0);
        let now = Utc::now();
        let mut all_ready = !desired.is_empty();
        let mut remaining = 0;
        for node in &nodes {
            let wanted = serve && desired.iter().any(|d| d.id == node.id);
            let goal = if wanted {
                NodeGoal::Serve { reboot_generation }
            } else {
                NodeGoal::Remove
            };
            let process = self.provider.status(&node.id).await?;
            let facts = NodeFacts {
                running: matches!(process, ProcessState::Running { .. }),
                registered: node.registered_at.is_some(),
                engine_ready: node.engine.ready,
                applied_generation: node.applied_generation,
                last_heartbeat: node.last_heartbeat,
                restart_generation: node.restart_generation,
                last_heard: [node.last_heartbeat, node.started_at, Some(self.started_at)]
                    .into_iter()
                    .flatten()
                    .max(),
            };
            // A replicated broker is RUNNING once it is redundant: every node serves and is
            // in the recorded in-sync set (else a new broker would show RUNNING, then
            // CRITICAL_ACTION_REQUIRED until its followers had copied, then RUNNING again).
            let in_sync = leadership
                .as_ref()
                .is_none_or(|l| l.in_sync.contains(&node.id));
            let ready = wanted && in_sync && node_ready(&facts, reboot_generation, now);
            all_ready &= ready;
            let mut action = node_action(goal, &facts, now);
            if let (Some(l), true) = (&leadership, wanted) {
                action = self
                    .gate_replicated(broker, l, &nodes, node, action, reboot_generation)
                    .await?;
            }
            match action {
                NodeAction::Nothing => {
                    // A crash between a start and its record leaves `unknown`; the process
                    // is there and serving, so record it as ours.
                    if let (ProcessState::Running { pid }, true) =
                        (process, node.observed != ObservedState::Started)
                    {
                        store.node_mark_adopted(&node.id, pid).await?;
                    }
                    remaining += 1;
                }
                NodeAction::Wait => {
                    progressed = true;
                    remaining += 1;
                }
                NodeAction::Start => {
                    // An agent that dies right after its start (a port taken, a bad data
                    // dir) would otherwise be restarted every pass: fail the pass instead,
                    // so the broker backs off.
                    if node.observed == ObservedState::Started
                        && node.started_at.is_some_and(|t| {
                            now.signed_duration_since(t)
                                .to_std()
                                .is_ok_and(|age| age < CRASH_LOOP_WINDOW)
                        })
                    {
                        anyhow::bail!(
                            "the agent of {} exited within {:?} of its start; see its agent.log",
                            node.id,
                            CRASH_LOOP_WINDOW
                        );
                    }
                    self.start_node(broker, node, reboot_generation).await?;
                    progressed = true;
                    remaining += 1;
                }
                NodeAction::Restart => {
                    tracing::info!(node = %node.id, reboot_generation, "restarting node");
                    store
                        .node_set_observed(&node.id, ObservedState::Unknown)
                        .await?;
                    self.provider
                        .stop(&node.id)
                        .await
                        .context("stopping the node")?;
                    store
                        .node_set_observed(&node.id, ObservedState::Stopped)
                        .await?;
                    // Stopped: once it has caught up again, the leader may take it back.
                    if leadership.is_some() {
                        store.replication_left(&broker.id, &node.id).await?;
                    }
                    self.start_node(broker, node, reboot_generation).await?;
                    progressed = true;
                    remaining += 1;
                }
                NodeAction::Remove => {
                    tracing::info!(node = %node.id, "removing node");
                    store
                        .node_set_observed(&node.id, ObservedState::Deleting)
                        .await?;
                    self.provider
                        .delete(&node.id)
                        .await
                        .context("deleting the node")?;
                    store.node_remove(&node.id).await?;
                    progressed = true;
                }
            }
        }
        // Planned nodes without a row were just recorded; they are not ready yet.
        all_ready &= desired.iter().all(|d| nodes.iter().any(|n| n.id == d.id));

        // 3. User changes the nodes have applied are no longer pending.
        if serve {
            self.mark_applied(broker, &nodes, &desired).await?;
        }

        // 4. The broker as a whole.
        let facts = BrokerFacts {
            state: broker.state,
            nodes_ready: all_ready,
            nodes_recorded: remaining,
        };
        match broker_step(&facts) {
            BrokerStep::SetRunning => {
                let from = [
                    BrokerState::CreationInProgress,
                    BrokerState::RebootInProgress,
                ];
                if store
                    .broker_set_state(&broker.id, &from, BrokerState::Running)
                    .await?
                {
                    tracing::info!(broker = %broker.id, "broker is RUNNING");
                }
            }
            BrokerStep::Remove => {
                store.broker_remove(&broker.id).await?;
                self.marked_applied.lock().remove(&broker.id);
                tracing::info!(broker = %broker.id, "broker deleted");
            }
            BrokerStep::Nothing => {}
        }
        Ok(if progressed {
            Outcome::Progressing
        } else {
            Outcome::Converged
        })
    }

    /// The replicated broker's leadership record, created on first sight.
    async fn ensure_leadership(
        &self,
        broker: &BrokerRecord,
        desired: &[DesiredNode],
    ) -> anyhow::Result<ReplicationRecord> {
        if let Some(existing) = self.state.store.replication_get(&broker.id).await? {
            return Ok(existing);
        }
        let ids: Vec<NodeId> = desired.iter().map(|d| d.id.clone()).collect();
        let secret = self.state.master_key.seal(&new_token());
        Ok(self
            .state
            .store
            .replication_ensure(&broker.id, &ids[0], &ids, &secret, Utc::now())
            .await?)
    }

    /// A replicated broker's nodes restart one at a time, followers first, the leader after
    /// a switchover; a dead leader waits for the failover (see `plan::failover::restart_gate`).
    async fn gate_replicated(
        &self,
        broker: &BrokerRecord,
        leadership: &ReplicationRecord,
        nodes: &[NodeRecord],
        node: &NodeRecord,
        action: NodeAction,
        reboot_generation: i64,
    ) -> anyhow::Result<NodeAction> {
        let cause = match action {
            NodeAction::Start => RestartCause::Dead,
            NodeAction::Restart if node.restart_generation < reboot_generation => {
                RestartCause::Reboot
            }
            NodeAction::Restart => RestartCause::Hung,
            other => return Ok(other),
        };
        // While the broker is being created the failover loop leaves it alone: a dead first
        // leader is simply started again (nothing was confirmed without it yet).
        if broker.state == BrokerState::CreationInProgress {
            return Ok(action);
        }
        let now = Utc::now();
        let timing = Timing::from_config(&self.state.config.failover);
        let facts = replica_facts(leadership, nodes);
        let due: Vec<NodeId> = nodes
            .iter()
            .filter(|n| n.restart_generation < reboot_generation)
            .map(|n| n.id.clone())
            .collect();
        Ok(
            match restart_gate(&node.id, cause, &facts, &due, &timing.policy, now) {
                RestartGate::Go => {
                    if cause == RestartCause::Reboot && node.id != leadership.leader {
                        // Out of the in-sync set before it stops, so that no confirm waits
                        // on it meanwhile (issue 5 point 4: the planned-restart gap).
                        let store = &self.state.store;
                        match store
                            .replication_leave(leadership, &node.id, LEAVE_ACK_TIMEOUT, now)
                            .await?
                        {
                            Leave::Ready => {}
                            Leave::Pending | Leave::Busy => return Ok(NodeAction::Wait),
                        }
                    }
                    if cause == RestartCause::Reboot {
                        let event = NewEvent {
                            broker_id: broker.id.clone(),
                            at: now,
                            kind: kind::PATCH_STEP,
                            from_node: Some(node.id.clone()),
                            to_node: None,
                            epoch: Some(leadership.epoch.0),
                            reason: format!(
                                "rolling restart: restarting {} (reboot generation {reboot_generation})",
                                node.id
                            ),
                            duration_ms: None,
                        };
                        self.state.store.event_insert(&event).await?;
                    }
                    action
                }
                RestartGate::Wait => NodeAction::Wait,
                RestartGate::SwitchOverFirst => {
                    if self
                        .state
                        .store
                        .replication_request_switchover(
                            &broker.id,
                            None,
                            "RebootBroker: rolling restart, the leader goes last",
                            now,
                        )
                        .await?
                    {
                        tracing::info!(broker = %broker.id, leader = %node.id, "switching over before restarting the leader");
                    }
                    NodeAction::Wait
                }
            },
        )
    }

    /// Records a planned node with an endpoint of its own. A drawn port that another node
    /// already holds fails the insert on a unique constraint; draw again, a bounded number of
    /// times.
    async fn record_node(
        &self,
        broker: &BrokerRecord,
        planned: &DesiredNode,
        replicated: bool,
    ) -> anyhow::Result<()> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let endpoint = self.provider.allocate_endpoint()?;
            let replication_port = if replicated {
                Some(self.provider.allocate_replication_port()?)
            } else {
                None
            };
            // Drawn separately, it may repeat one of the endpoint's own ports.
            if replication_port.is_some_and(|p| p == endpoint.amqp_port || p == endpoint.admin_port)
                && attempt < ENDPOINT_ATTEMPTS
            {
                continue;
            }
            let node = NewNode {
                id: planned.id.clone(),
                broker_id: broker.id.clone(),
                ordinal: planned.ordinal,
                zone: planned.zone.clone(),
                host: endpoint.host,
                amqp_port: endpoint.amqp_port,
                admin_port: endpoint.admin_port,
                replication_port,
            };
            match self.state.store.node_insert(&node, Utc::now()).await {
                Ok(_) => return Ok(()),
                Err(StoreError::Constraint(_)) if attempt < ENDPOINT_ATTEMPTS => continue,
                Err(e) => return Err(e).context("recording a node"),
            }
        }
    }

    /// Starts a node with a fresh token. The token's hash is recorded first (with the node
    /// `unknown`), so the started agent can always authenticate and an older agent cannot.
    async fn start_node(
        &self,
        broker: &BrokerRecord,
        node: &NodeRecord,
        reboot_generation: i64,
    ) -> anyhow::Result<()> {
        let store = &self.state.store;
        let token = new_token();
        store
            .node_begin_start(&node.id, &token_hash(&token))
            .await?;
        let spec = NodeSpec {
            node_id: node.id.clone(),
            broker_id: broker.id.to_string(),
            zone: node.zone.clone(),
            amqp_port: node.amqp_port,
            admin_port: node.admin_port,
            engine_version: broker.engine_version.clone(),
            replication_port: node.replication_port,
        };
        match self
            .provider
            .start(&spec, &token)
            .await
            .context("starting the node")?
        {
            StartOutcome::Started { pid } => {
                tracing::info!(node = %node.id, ?pid, "node started");
                store
                    .node_mark_started(&node.id, pid, reboot_generation, Utc::now())
                    .await?;
            }
            StartOutcome::Adopted { pid } => {
                // A process appeared between our look and our start (another replica?). It
                // holds an older token, so it could never report: stop it; the next pass
                // starts the node cleanly.
                tracing::warn!(node = %node.id, ?pid, "found a running agent while starting; stopping it");
                self.provider
                    .stop(&node.id)
                    .await
                    .context("stopping an unexpected agent")?;
            }
        }
        Ok(())
    }

    async fn mark_applied(
        &self,
        broker: &BrokerRecord,
        nodes: &[NodeRecord],
        desired: &[DesiredNode],
    ) -> anyhow::Result<()> {
        // The broker has applied what every planned node has applied.
        let applied = desired
            .iter()
            .map(|d| {
                nodes
                    .iter()
                    .find(|n| n.id == d.id)
                    .map_or(0, |n| n.applied_generation)
            })
            .min()
            .unwrap_or(0);
        if applied <= 0 {
            return Ok(());
        }
        let already = self
            .marked_applied
            .lock()
            .get(&broker.id)
            .copied()
            .unwrap_or(0);
        if applied > already {
            self.state
                .store
                .user_mark_applied(&broker.id, applied)
                .await?;
            self.marked_applied
                .lock()
                .insert(broker.id.clone(), applied);
        }
        Ok(())
    }

    /// Removes provider data for nodes nobody recorded (a crash cannot cause this, given the
    /// write order, but a hand-edited database or an old bug could). The provider is listed
    /// before the store is read: a node being created right now is recorded before its data
    /// exists, so it is never mistaken for an orphan.
    pub async fn collect_orphans(&self) -> anyhow::Result<usize> {
        let held = self.provider.list().await?;
        if held.is_empty() {
            return Ok(0);
        }
        let recorded: std::collections::HashSet<NodeId> =
            self.state.store.node_ids().await?.into_iter().collect();
        let mut removed = 0;
        for node in held.into_iter().filter(|n| !recorded.contains(n)) {
            tracing::warn!(node = %node, "removing an unrecorded node");
            self.provider.delete(&node).await?;
            removed += 1;
        }
        Ok(removed)
    }
}

/// A fresh node token: 32 random bytes, hex.
fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}
