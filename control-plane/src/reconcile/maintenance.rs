//! The maintenance reconciler (DESIGN.md decision 8): every disruptive change a broker
//! has pending gets a scheduled time, and is applied in the broker's weekly window.
//!
//! **Converges**, per broker:
//! - With `autoMinorVersionUpgrade`, a newer patch of the broker's engine version in the
//!   catalog becomes the broker's pending engine version
//!   ([`plan::maintenance::auto_minor_upgrade`]).
//! - A node running another agent version than the installed agent binary's (asked of the
//!   binary, [`crate::catalog::agent`]) gives its broker an `AGENT_VERSION` pending change,
//!   derived each pass ([`agent_version_pending`]), not stored: applying it is restarting
//!   every node (the run's reboot request, or RebootBroker), which starts them on the new
//!   binary, and it is gone once every node reports that version.
//! - Each pending change in the broker row (engine version, instance type, configuration)
//!   or derived (agent version) has a `maintenance_actions` row with the start of the window it is due in
//!   ([`plan::window::schedule_at`]); a changed target or window reschedules it, and a
//!   change no longer pending (applied by RebootBroker, or undone) loses its row.
//! - In an open window, once due, unless maintenance is paused or the fleet limit is
//!   reached ([`plan::maintenance::next_step`]): a single-instance broker's pending changes
//!   become its spec and its node restarts on them, on its data directory (the same path as
//!   RebootBroker: a generation bump and a reboot request the provisioning reconciler
//!   carries out). A `maintenance_runs` row, written first, marks the broker as under
//!   maintenance until its node runs the new spec; then the run's event is recorded.
//!
//! **Triggered** by a timer and by API writes ([`AppState::wake_reconcilers`]).
//!
//! **Idempotent**: each pass re-reads rows and decides from them; a run row records the
//! generation its reboot request bumps to, so a pass can tell "applied" (the broker's
//! `reboot_generation` reached it) from "interrupted before applying" (the run is dropped
//! and the decision taken again). Writes to the broker row are optimistic (its `version`).
//!
//! Windows are read with [`AppState::clock`] (tests move it); node heartbeats are real
//! time, so their ages are taken on the real clock.
//!
//! Replicated brokers are patched node by node by the same reboot request: the provisioning
//! reconciler's rolling restart takes followers first, each back in sync before the next,
//! then a switchover, then the old leader. Each start and end is a `patch-step` event.

use std::collections::HashMap;
use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::{DateTime, TimeDelta, Utc};

use crate::app::maintenance::{
    action_source, agent_version_pending, broker_window, pending_in_row, window_spec,
};
use crate::app::AppState;
use crate::catalog::Catalog;
use crate::model::{BrokerState, EngineType};
use crate::plan::failover::{FailoverPolicy, LogPosition, ReplicaFacts, Role};
use crate::plan::maintenance::{
    auto_minor_upgrade, next_step, FleetGate, MaintenanceStep, PatchNode, PendingAction,
    PendingKind, Trigger,
};
use crate::plan::nodes::HEARTBEAT_FRESHNESS;
use crate::plan::window::{is_open, next_start, schedule_at};
use crate::reconcile::leadership::replica_facts;
use crate::store::events::{kind, NewEvent};
use crate::store::{
    ActionKind, ActionRecord, ActionSource, BrokerId, BrokerRecord, NodeRecord, RunRecord,
    StoreError,
};

/// Time between passes without a wake-up.
pub const PASS_INTERVAL: Duration = Duration::from_secs(2);
/// Wake-ups closer than this are merged into one pass: every API write and many agent
/// reports wake the reconcilers, and a maintenance pass reads the whole fleet.
const MIN_PASS_GAP: Duration = Duration::from_millis(500);
/// Brokers read per store query while listing.
const LIST_PAGE: i64 = 500;
/// A run whose reboot request never landed (the control plane died between recording the
/// run and writing the broker, or lost the optimistic write) is dropped after this long,
/// and the decision is taken again. Long enough that another replica's run in flight is
/// never mistaken for an interrupted one.
const UNAPPLIED_RUN_GRACE: TimeDelta = TimeDelta::seconds(30);

/// Runs maintenance passes until `shutdown` completes.
pub async fn run(state: AppState, shutdown: impl Future<Output = ()>) {
    let mut wakeups = state.reconcile_wakeups();
    tokio::pin!(shutdown);
    loop {
        let started = Instant::now();
        let outcome = match pass(&state).await {
            Ok(()) => "ok",
            Err(e) => {
                tracing::warn!("maintenance pass failed: {e:#}");
                "error"
            }
        };
        state
            .metrics
            .reconcile_finished("maintenance", outcome, started.elapsed());
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(MIN_PASS_GAP) => {}
        }
        tokio::select! {
            _ = &mut shutdown => return,
            changed = wakeups.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            _ = tokio::time::sleep(PASS_INTERVAL) => {}
        }
    }
}

/// What one pass knows about the fleet.
struct Fleet {
    paused: bool,
    max_concurrent: u32,
    /// Brokers with a run in progress (grows as this pass starts runs).
    running: usize,
}

/// One pass over every broker. Brokers are visited one at a time so that the fleet limit
/// counts the runs this pass starts.
pub async fn pass(state: &AppState) -> anyhow::Result<()> {
    let now = state.clock.now();
    let brokers = list_all(state).await?;
    let mut scheduled: HashMap<BrokerId, Vec<ActionRecord>> = HashMap::new();
    for a in state.store.maintenance_action_list_all().await? {
        scheduled.entry(a.broker_id.clone()).or_default().push(a);
    }
    let mut runs: HashMap<BrokerId, RunRecord> = state
        .store
        .maintenance_run_list()
        .await?
        .into_iter()
        .map(|r| (r.broker_id.clone(), r))
        .collect();
    let mut fleet = Fleet {
        paused: state.config.maintenance_paused || state.store.maintenance_paused().await?,
        max_concurrent: state.config.maintenance_max_concurrent,
        running: runs.len(),
    };
    let versions = CatalogVersions::read(&state.catalog);
    // The agent version a node started now would run (asks the binary once after it changed).
    let catalog = state.catalog.clone();
    let agent_now = tokio::task::spawn_blocking(move || catalog.agent_version())
        .await
        .context("asking the agent binary its version")?;
    let mut reported: HashMap<BrokerId, Vec<String>> = HashMap::new();
    for (broker, version) in state.store.maintenance_agent_versions().await? {
        reported.entry(broker).or_default().push(version);
    }
    let mut failed = 0usize;
    for b in &brokers {
        let rows = scheduled.remove(&b.id).unwrap_or_default();
        let agent = agent_version_pending(
            reported.get(&b.id).map_or(&[], Vec::as_slice),
            agent_now.as_deref(),
        );
        let result = match runs.remove(&b.id) {
            Some(run) => finish_run(state, b, &run, &mut fleet).await,
            None => {
                maintain(
                    state,
                    b,
                    &rows,
                    agent.as_deref(),
                    &versions,
                    &mut fleet,
                    now,
                )
                .await
            }
        };
        if let Err(e) = result {
            failed += 1;
            tracing::warn!(broker = %b.id, "maintenance of broker failed: {e:#}");
        }
    }
    anyhow::ensure!(failed == 0, "{failed} broker(s) failed");
    Ok(())
}

async fn list_all(state: &AppState) -> anyhow::Result<Vec<BrokerRecord>> {
    let mut all = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = state.store.broker_list(after.as_deref(), LIST_PAGE).await?;
        let full = i64::try_from(page.len()).unwrap_or(i64::MAX) >= LIST_PAGE;
        after = page.last().map(|b| b.id.to_string());
        all.extend(page);
        if !full {
            return Ok(all);
        }
    }
}

/// The catalog's versions per engine, read once per pass.
pub struct CatalogVersions(HashMap<EngineType, Vec<&'static str>>);

impl CatalogVersions {
    pub fn read(catalog: &Catalog) -> Self {
        CatalogVersions(
            EngineType::ALL
                .iter()
                .map(|e| {
                    let v = catalog.engine_versions(*e).into_iter().map(|v| v.version);
                    (*e, v.collect())
                })
                .collect(),
        )
    }

    fn of(&self, e: EngineType) -> &[&'static str] {
        self.0.get(&e).map_or(&[], Vec::as_slice)
    }
}

/// The pending engine version the broker row should hold after the automatic minor
/// version upgrade rule: `Some(new value)` when it must change, `None` when it is right.
///
/// Only an unset pending version is filled (a user's UpdateBroker choice wins), and one
/// the rule set itself (recorded with source AUTO) moves to a newer patch or is withdrawn
/// when the user turns the flag off.
pub fn auto_upgrade_change(
    b: &BrokerRecord,
    catalog: &[&str],
    rows: &[ActionRecord],
) -> Option<Option<String>> {
    let wanted = if b.auto_minor_version_upgrade {
        auto_minor_upgrade(catalog.iter().copied(), &b.engine_version)
    } else {
        None
    };
    let ours = rows.iter().any(|r| {
        r.kind == ActionKind::EngineVersion
            && r.source == ActionSource::AutoMinorVersionUpgrade
            && b.pending_engine_version.as_deref() == Some(r.target.as_str())
    });
    match (&b.pending_engine_version, wanted) {
        (None, Some(to)) => Some(Some(to.to_owned())),
        (Some(p), Some(to)) if ours && p != to => Some(Some(to.to_owned())),
        (Some(_), None) if ours => Some(None),
        _ => None,
    }
}

/// The schedule rows to write and the kinds to delete so that `rows` matches the broker's
/// pending changes at `now`: those in its row, and `agent`, the agent version its nodes are
/// to be restarted onto ([`agent_version_pending`]).
pub fn schedule_changes(
    b: &BrokerRecord,
    catalog: &[&str],
    rows: &[ActionRecord],
    agent: Option<&str>,
    now: DateTime<Utc>,
) -> anyhow::Result<(Vec<ActionRecord>, Vec<ActionKind>)> {
    let window = broker_window(b).map_err(anyhow::Error::msg)?;
    let spec = window_spec(b);
    let mut pending = pending_in_row(b);
    if let Some(to) = agent {
        pending.push((ActionKind::AgentVersion, to.to_owned()));
    }
    let mut upserts = Vec::new();
    for (kind, target) in &pending {
        let current = rows.iter().find(|r| r.kind == *kind);
        if current.is_some_and(|r| &r.target == target && r.window_spec == spec) {
            continue;
        }
        upserts.push(ActionRecord {
            broker_id: b.id.clone(),
            kind: *kind,
            target: target.clone(),
            source: action_source(b, *kind, target, catalog, current),
            scheduled_at: schedule_at(&window, now),
            window_spec: spec.clone(),
            created_at: now,
        });
    }
    let deletes = rows
        .iter()
        .filter(|r| !pending.iter().any(|(k, _)| *k == r.kind))
        .map(|r| r.kind)
        .collect();
    Ok((upserts, deletes))
}

/// A node as the maintenance planner sees it. `skew` (schedule clock minus real clock)
/// shifts its heartbeat onto the schedule clock, so its age is the real one.
pub fn patch_node(n: &NodeRecord, patched: bool, skew: TimeDelta) -> PatchNode {
    PatchNode {
        replica: ReplicaFacts {
            id: n.id.clone(),
            zone: n.zone.clone(),
            // Single-instance: the only node leads. Replicated roles come from the
            // replication state (not used here yet).
            role: Role::Leader,
            in_sync: true,
            acked: LogPosition::default(),
            last_heartbeat: n
                .last_heartbeat
                .filter(|_| n.engine.ready)
                .map(|t| t + skew),
        },
        patched,
    }
}

/// Heartbeats are judged as the provisioning reconciler judges readiness.
fn policy() -> FailoverPolicy {
    FailoverPolicy {
        heartbeat_timeout: TimeDelta::from_std(HEARTBEAT_FRESHNESS)
            .expect("a few seconds fit in a TimeDelta"),
        ..FailoverPolicy::default()
    }
}

fn plan_kind(kind: ActionKind, target: &str) -> PendingKind {
    match kind {
        ActionKind::EngineVersion => PendingKind::EngineVersion { to: target.into() },
        ActionKind::HostInstanceType => PendingKind::InstanceType { to: target.into() },
        ActionKind::Configuration => PendingKind::ConfigurationRevision {
            revision: target
                .rsplit_once(':')
                .and_then(|(_, r)| r.parse().ok())
                .unwrap_or(0),
        },
        ActionKind::AgentVersion => PendingKind::AgentVersion { to: target.into() },
    }
}

/// Brings one broker without a run in progress forward: auto upgrade, schedule, start.
async fn maintain(
    state: &AppState,
    b: &BrokerRecord,
    rows: &[ActionRecord],
    agent: Option<&str>,
    versions: &CatalogVersions,
    fleet: &mut Fleet,
    now: DateTime<Utc>,
) -> anyhow::Result<()> {
    // A deleted broker's rows go with it (cascade).
    if b.state == BrokerState::DeletionInProgress {
        return Ok(());
    }
    let catalog = versions.of(b.engine_type);
    // New pending versions only for a serving broker; creation, reboot and repair first.
    if b.state == BrokerState::Running {
        if let Some(change) = auto_upgrade_change(b, catalog, rows) {
            let mut spec = b.spec();
            spec.pending_engine_version = change.clone();
            match state.store.broker_update_spec(b, &spec, false).await {
                Ok(_) => {
                    tracing::info!(broker = %b.id, from = %b.engine_version, to = ?change, "automatic minor version upgrade: pending engine version set");
                    state.wake_reconcilers();
                }
                // Someone wrote the broker meanwhile: decide again on the next pass.
                Err(StoreError::VersionConflict | StoreError::NotFound(_)) => {}
                Err(e) => return Err(e).context("setting the pending engine version"),
            }
            // The row changed (or the write lost): the next pass schedules from a fresh read.
            return Ok(());
        }
    }

    let (upserts, deletes) = schedule_changes(b, catalog, rows, agent, now)?;
    for a in &upserts {
        match state.store.maintenance_action_upsert(a).await {
            Ok(()) => {
                tracing::info!(broker = %b.id, action = a.kind.as_str(), target = %a.target, scheduled_at = %a.scheduled_at, "pending action scheduled")
            }
            Err(StoreError::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e).context("scheduling a pending action"),
        }
    }
    for kind in &deletes {
        state.store.maintenance_action_delete(&b.id, *kind).await?;
    }
    let mut actions: Vec<ActionRecord> = rows
        .iter()
        .filter(|r| !deletes.contains(&r.kind) && !upserts.iter().any(|u| u.kind == r.kind))
        .cloned()
        .collect();
    actions.extend(upserts);
    // Applying waits for RUNNING (a reboot in progress applies the row's changes itself).
    if actions.is_empty() || b.state != BrokerState::Running {
        return Ok(());
    }

    let window = broker_window(b).map_err(anyhow::Error::msg)?;
    let window_open = is_open(&window, now);
    let due = actions.iter().any(|a| a.scheduled_at <= now);
    if !(window_open && due) {
        return Ok(());
    }
    let nodes = state.store.node_list_for_broker(&b.id).await?;
    let skew = now - Utc::now();
    let patch_nodes: Vec<PatchNode> = match state.store.replication_get(&b.id).await? {
        // Replicated: roles, in-sync set and positions as failover sees them.
        Some(leadership) => replica_facts(&leadership, &nodes)
            .into_iter()
            .map(|mut replica| {
                replica.last_heartbeat = replica.last_heartbeat.map(|t| t + skew);
                PatchNode {
                    replica,
                    patched: false,
                }
            })
            .collect(),
        None => nodes.iter().map(|n| patch_node(n, false, skew)).collect(),
    };
    let pending: Vec<PendingAction> = actions
        .iter()
        .map(|a| PendingAction {
            kind: plan_kind(a.kind, &a.target),
            scheduled_at: Some(a.scheduled_at),
        })
        .collect();
    let step = next_step(
        &pending,
        &patch_nodes,
        Trigger {
            window_open,
            apply_now: false,
            in_progress: false,
        },
        FleetGate {
            paused: fleet.paused,
            max_in_maintenance: usize::try_from(fleet.max_concurrent).unwrap_or(usize::MAX),
            in_maintenance_elsewhere: fleet.running,
        },
        next_start(&window, now),
        &policy(),
        now,
    );
    match step {
        // Every node serves and the broker may start: the pending changes become its spec
        // and the provisioning reconciler restarts its nodes onto it — a single instance on
        // its data directory; a replicated broker one node at a time, followers first, each
        // back in sync before the next, a switchover, then the old leader (its rolling
        // restart, `plan::failover::restart_gate`, in the order `next_step` names first).
        MaintenanceStep::RestartSingleInstance { node }
        | MaintenanceStep::RestartFollower { node }
        | MaintenanceStep::RestartOldLeader { node }
        | MaintenanceStep::Switchover { to: node } => {
            tracing::info!(broker = %b.id, first = %node, "maintenance window open: applying pending actions");
            start_run(state, b, &actions, fleet).await
        }
        MaintenanceStep::WaitUntilInSync { node } => {
            tracing::debug!(broker = %b.id, %node, "maintenance waits for a node to serve");
            Ok(())
        }
        MaintenanceStep::Nothing | MaintenanceStep::Schedule { .. } | MaintenanceStep::Done => {
            Ok(())
        }
    }
}

/// Records the run (the fleet limit admits it or not), then writes the pending changes into
/// the broker's spec with a reboot request, as RebootBroker does.
async fn start_run(
    state: &AppState,
    b: &BrokerRecord,
    actions: &[ActionRecord],
    fleet: &mut Fleet,
) -> anyhow::Result<()> {
    let run = RunRecord {
        broker_id: b.id.clone(),
        // `broker_update_spec` with a bump moves the generation exactly one up, and only
        // from this snapshot (its version check).
        generation: b.generation + 1,
        actions: actions
            .iter()
            .map(|a| (a.kind.as_str().to_owned(), a.target.clone()))
            .collect(),
        started_at: Utc::now(),
    };
    let max = i64::from(fleet.max_concurrent);
    if !state.store.maintenance_run_begin(&run, max).await? {
        tracing::info!(broker = %b.id, "maintenance waits: the fleet limit is reached");
        return Ok(());
    }
    let mut spec = b.spec();
    apply_pending(&mut spec);
    match state.store.broker_update_spec(b, &spec, true).await {
        Ok(updated) => {
            fleet.running += 1;
            tracing::info!(
                broker = %b.id,
                event = "maintenance_started",
                generation = updated.generation,
                engine_version = %updated.engine_version,
                host_instance_type = %updated.host_instance_type,
                actions = ?run.actions,
                "maintenance step: restarting the node on the new spec"
            );
            record_event(
                state,
                b,
                format!("maintenance window: applying {}", describe(&run.actions)),
                None,
            )
            .await;
            for a in actions {
                state.store.maintenance_action_delete(&b.id, a.kind).await?;
            }
            state.wake_reconcilers();
            Ok(())
        }
        Err(StoreError::VersionConflict | StoreError::NotFound(_)) => {
            // Lost a race with another write: nothing was applied; decide again later.
            state.store.maintenance_run_end(&b.id).await?;
            Ok(())
        }
        Err(e) => Err(e).context("applying pending actions"),
    }
}

/// What RebootBroker does to a spec: pending changes become current, and the nodes are
/// asked to restart.
pub fn apply_pending(spec: &mut crate::store::BrokerSpecUpdate) {
    spec.state = BrokerState::RebootInProgress;
    if let Some(v) = spec.pending_engine_version.take() {
        spec.engine_version = v;
    }
    if let Some(t) = spec.pending_host_instance_type.take() {
        spec.host_instance_type = t;
    }
    if let Some(c) = spec.pending_configuration.take() {
        if let Some(old) = spec.configuration.replace(c) {
            spec.configuration_history.push(old);
        }
    }
    spec.request_reboot = true;
}

/// Where a run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunProgress {
    /// The reboot request has not landed and may still (another replica, a moment ago).
    Starting,
    /// The reboot request never landed: drop the run and decide again.
    Abandoned,
    /// The nodes are restarting onto the new spec.
    Restarting,
    /// Every node serves again, started after the run's reboot request.
    Done,
}

/// A node as a run's end sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartFacts {
    /// The broker reboot generation the node's latest start satisfies.
    pub restart_generation: i64,
    /// Its engine accepts connections.
    pub ready: bool,
}

impl From<&NodeRecord> for RestartFacts {
    fn from(n: &NodeRecord) -> Self {
        RestartFacts {
            restart_generation: n.restart_generation,
            ready: n.engine.ready,
        }
    }
}

pub fn run_progress(
    b: &BrokerRecord,
    run: &RunRecord,
    nodes: &[RestartFacts],
    real_now: DateTime<Utc>,
) -> RunProgress {
    if b.reboot_generation.unwrap_or(0) < run.generation {
        return if real_now - run.started_at > UNAPPLIED_RUN_GRACE {
            RunProgress::Abandoned
        } else {
            RunProgress::Starting
        };
    }
    let restarted = !nodes.is_empty()
        && nodes
            .iter()
            .all(|n| n.restart_generation >= run.generation && n.ready);
    if b.state == BrokerState::Running && restarted {
        RunProgress::Done
    } else {
        RunProgress::Restarting
    }
}

/// Ends a run whose nodes serve the new spec, recording the event.
async fn finish_run(
    state: &AppState,
    b: &BrokerRecord,
    run: &RunRecord,
    fleet: &mut Fleet,
) -> anyhow::Result<()> {
    let nodes = state.store.node_list_for_broker(&b.id).await?;
    let facts: Vec<RestartFacts> = nodes.iter().map(RestartFacts::from).collect();
    match run_progress(b, run, &facts, Utc::now()) {
        RunProgress::Starting | RunProgress::Restarting => Ok(()),
        RunProgress::Abandoned => {
            tracing::warn!(broker = %b.id, generation = run.generation, "dropping a maintenance run whose reboot request never landed");
            state.store.maintenance_run_end(&b.id).await?;
            fleet.running = fleet.running.saturating_sub(1);
            Ok(())
        }
        RunProgress::Done => {
            state.store.maintenance_run_end(&b.id).await?;
            fleet.running = fleet.running.saturating_sub(1);
            let took = Utc::now() - run.started_at;
            tracing::info!(
                broker = %b.id,
                event = "maintenance_done",
                engine_version = %b.engine_version,
                host_instance_type = %b.host_instance_type,
                actions = ?run.actions,
                duration_ms = took.num_milliseconds(),
                "maintenance step: the broker runs the new spec"
            );
            record_event(
                state,
                b,
                format!("maintenance done: {}", describe(&run.actions)),
                u64::try_from(took.num_milliseconds()).ok(),
            )
            .await;
            Ok(())
        }
    }
}

fn describe(actions: &[(String, String)]) -> String {
    actions
        .iter()
        .map(|(kind, target)| format!("{kind} -> {target}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A `patch-step` event; a failure to record it is logged, never fatal to the patch (the
/// log line above says the same).
async fn record_event(
    state: &AppState,
    b: &BrokerRecord,
    reason: String,
    duration_ms: Option<u64>,
) {
    let event = NewEvent {
        broker_id: b.id.clone(),
        at: Utc::now(),
        kind: kind::PATCH_STEP,
        from_node: None,
        to_node: None,
        epoch: None,
        reason,
        duration_ms,
    };
    if let Err(e) = state.store.event_insert(&event).await {
        tracing::warn!(broker = %b.id, "recording a maintenance event failed: {e:#}");
    }
}

#[cfg(test)]
mod tests;
