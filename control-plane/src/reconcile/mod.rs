//! Background loops that converge the world to the intent in the store (DESIGN.md
//! decision 5). Each pass takes no input, may run twice, and records what it saw; see each
//! loop's module for what it converges.
//!
//! - [`provision`]: brokers' nodes: create, adopt, restart, reboot, delete; broker states.
//! - [`maintenance`]: pending disruptive changes scheduled and applied in each broker's
//!   weekly window, with a fleet-wide limit and pause switch.
//! - [`failover`]: replicated brokers' leadership (failover, switchover; see [`leadership`])
//!   and their honest status, on a short timer of its own.
//!
//! They run only in the replica holding the control-plane lease ([`lease`]).
//!
//! The driver here runs a pass on a timer and whenever the API or an agent wakes the
//! reconcilers, skips brokers that are backing off after failures (with jitter) or that
//! converged recently and whose row has not changed since ([`backoff`]), works on several brokers at once, and records each
//! pass's outcome and duration in the metrics registry.

pub mod backoff;
pub mod failover;
pub mod leadership;
pub mod lease;
pub mod maintenance;
pub mod provision;

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::app::AppState;
use crate::provider::Provider;
use crate::store::{BrokerId, BrokerRecord};
use backoff::Schedule;
use provision::{Outcome, Provisioner};

/// Time between passes without a wake-up.
pub const PASS_INTERVAL: Duration = Duration::from_secs(1);
/// Brokers reconciled at once within a pass (a reboot waits for an agent to stop; others
/// should not wait behind it).
const CONCURRENT_BROKERS: usize = 16;
/// Brokers read per store query while listing.
const LIST_PAGE: i64 = 500;
/// Orphan collection runs at start and then this often.
const ORPHAN_INTERVAL: Duration = Duration::from_secs(30);
/// Wake-ups closer than this after a pass started are merged into one pass: every API write
/// and many agent reports wake the reconcilers, and a pass reads the fleet's versions.
const MIN_PASS_GAP: Duration = Duration::from_millis(25);

/// Runs the reconcilers until `shutdown` completes.
pub async fn run(
    state: AppState,
    provider: Arc<dyn Provider>,
    region: String,
    shutdown: impl Future<Output = ()>,
) {
    let mut wakeups = state.reconcile_wakeups();
    let provisioner = Provisioner::new(state, provider, region);
    let mut schedule: Schedule<BrokerId, Fingerprint> = Schedule::default();
    tokio::pin!(shutdown);
    let mut orphans_collected: Option<Instant> = None;
    loop {
        if orphans_collected.is_none_or(|t| t.elapsed() >= ORPHAN_INTERVAL) {
            orphans_collected = Some(Instant::now());
            if let Err(e) = provisioner.collect_orphans().await {
                tracing::warn!("collecting orphaned nodes failed: {e:#}");
            }
        }
        let started = Instant::now();
        let outcome = match provision_pass(&provisioner, &mut schedule).await {
            Ok(()) => "ok",
            Err(e) => {
                tracing::warn!("provision pass failed: {e:#}");
                "error"
            }
        };
        provisioner
            .state()
            .metrics
            .reconcile_finished("provision", outcome, started.elapsed());
        tokio::select! {
            _ = &mut shutdown => return,
            changed = wakeups.changed() => {
                if changed.is_err() {
                    // Every sender is gone: the app is shutting down.
                    return;
                }
                // Let the wake-ups of a burst (one per API write) share the next pass.
                tokio::select! {
                    _ = &mut shutdown => return,
                    _ = tokio::time::sleep_until((started + MIN_PASS_GAP).into()) => {}
                }
            }
            _ = tokio::time::sleep(PASS_INTERVAL) => {}
        }
    }
}

/// One pass over every broker that is due. The pass lists each broker's fingerprint (id,
/// version, generation) only and reads the rows of the due ones, so converged and backing-off
/// brokers whose rows did not change cost a few bytes of one query per pass.
pub async fn provision_pass(
    provisioner: &Provisioner,
    schedule: &mut Schedule<BrokerId, Fingerprint>,
) -> anyhow::Result<()> {
    let versions = list_versions(provisioner).await?;
    let present: HashSet<&BrokerId> = versions.iter().map(|(id, _)| id).collect();
    schedule.retain(|id| present.contains(id));
    let now = Instant::now();
    let due_ids: Vec<BrokerId> = versions
        .iter()
        .filter(|(id, seen)| schedule.due(id, now, seen))
        .map(|(id, _)| id.clone())
        .collect();
    let store = &provisioner.state().store;
    let mut due: Vec<BrokerRecord> = Vec::with_capacity(due_ids.len());
    for chunk in due_ids.chunks(usize::try_from(LIST_PAGE).unwrap_or(500)) {
        // A broker removed since the listing is simply missing.
        due.extend(store.broker_get_many(chunk).await?);
    }
    due.sort_by(|a, b| a.id.as_str().cmp(b.id.as_str()));
    let mut results = Vec::with_capacity(due.len());
    for chunk in due.chunks(CONCURRENT_BROKERS) {
        results.extend(
            futures::future::join_all(chunk.iter().map(|b| reconcile_one(provisioner, b))).await,
        );
    }
    let now = Instant::now();
    for (id, seen, result) in results {
        match result {
            Ok(Outcome::Converged) => schedule.converged(&id, now, seen),
            Ok(Outcome::Progressing) => schedule.progressing(&id),
            Err(e) => {
                schedule.failed(&id, now);
                tracing::warn!(broker = %id, failures = schedule.failures(&id), "reconciling broker failed: {e:#}");
            }
        }
    }
    Ok(())
}

/// What identifies a version of a broker's row: every write bumps `version`, every change
/// the nodes must see bumps `generation`.
pub type Fingerprint = (i64, i64);

fn fingerprint(b: &BrokerRecord) -> Fingerprint {
    (b.version, b.generation)
}

async fn reconcile_one(
    provisioner: &Provisioner,
    broker: &BrokerRecord,
) -> (BrokerId, Fingerprint, anyhow::Result<Outcome>) {
    let result = provisioner.reconcile_broker(broker).await;
    (broker.id.clone(), fingerprint(broker), result)
}

/// Every broker's id and [`Fingerprint`], by id.
async fn list_versions(provisioner: &Provisioner) -> anyhow::Result<Vec<(BrokerId, Fingerprint)>> {
    let store = &provisioner.state().store;
    let mut all = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store
            .broker_list_versions(after.as_deref(), LIST_PAGE)
            .await?;
        let full = i64::try_from(page.len()).unwrap_or(i64::MAX) >= LIST_PAGE;
        after = page.last().map(|(id, _, _)| id.to_string());
        all.extend(
            page.into_iter()
                .map(|(id, version, generation)| (id, (version, generation))),
        );
        if !full {
            return Ok(all);
        }
    }
}

/// Starts the reconcilers with the provider `state.config` names, for a control plane whose
/// HTTP API (agent routes included) listens on `listen`. They run only while this replica
/// holds the control-plane lease ([`lease`]), and stop when `stop` turns true.
pub fn spawn(
    state: &AppState,
    listen: std::net::SocketAddr,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let settings = lease::Settings::from_lease_ms(state.config.control_plane_lease_ms);
    let loops_state = state.clone();
    vec![tokio::spawn(lease::run(
        state.clone(),
        lease::replica_id(listen),
        settings,
        stop,
        move |acting, stop| spawn_acting(&loops_state, listen, acting, stop),
    ))]
}

/// The loops that act on the world, for one tenure of the lease.
fn spawn_acting(
    state: &AppState,
    listen: std::net::SocketAddr,
    acting: lease::Acting,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut stop_maintenance = stop.clone();
    let maintenance = tokio::spawn(maintenance::run(state.clone(), async move {
        let _ = stop_maintenance.wait_for(|stopped| *stopped).await;
    }));
    let mut tasks = spawn_node_loops(state, listen, acting, stop);
    tasks.push(maintenance);
    tasks
}

/// The loops that act on nodes (provisioning, and failover where present), with a provider
/// that acts only within the tenure.
fn spawn_node_loops(
    state: &AppState,
    listen: std::net::SocketAddr,
    acting: lease::Acting,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let config = &state.config;
    let provider: Arc<dyn Provider> = match config.provider {
        crate::config::ProviderKind::Local => {
            let mut local = crate::provider::local::LocalConfig::new(
                config.agent_binary(),
                &config.database.data_dir,
                config
                    .agent_control_plane_url
                    .clone()
                    .unwrap_or_else(|| agent_url(listen)),
            );
            local.replicated_heartbeat_interval =
                Duration::from_millis(config.failover.replicated_heartbeat_ms);
            Arc::new(crate::provider::local::LocalProvider::new(local))
        }
    };
    let provider: Arc<dyn Provider> = Arc::new(lease::Fenced::new(provider, acting));
    let mut stop_failover = stop.clone();
    let shutdown = async move {
        // Ends on `true` or when the sender is dropped.
        let _ = stop.wait_for(|stopped| *stopped).await;
    };
    let task = tokio::spawn(run(
        state.clone(),
        provider,
        config.region.clone(),
        shutdown,
    ));
    let failover = tokio::spawn(failover::run(state.clone(), async move {
        let _ = stop_failover.wait_for(|stopped| *stopped).await;
    }));
    vec![task, failover]
}

/// The URL agents on this machine use to reach the control plane: loopback when it listens
/// on every address.
fn agent_url(listen: std::net::SocketAddr) -> String {
    let host = if listen.ip().is_unspecified() {
        std::net::IpAddr::from([127, 0, 0, 1])
    } else {
        listen.ip()
    };
    format!("http://{}", std::net::SocketAddr::new(host, listen.port()))
}

#[cfg(test)]
mod tests;
