//! The failover loop: keeps every replicated broker led, and its status honest.
//!
//! **Converges**: each serving replicated broker has a leader that heartbeats and holds its
//! lease; a leader whose heartbeats stopped (or whose lease lapsed) is replaced by the most
//! advanced live in-sync follower once its lease has surely run out; a pending switchover is
//! carried out; RUNNING and CRITICAL_ACTION_REQUIRED (with its `actionRequiredCode`) follow
//! [`plan::failover::honest_status`](crate::plan::failover::honest_status). The decisions
//! and their execution are in [`leadership`](super::leadership).
//!
//! **Triggered** by a short timer (`--failover-interval-ms`, 100 ms by default): detection
//! needs no more, since heartbeats are recorded as they arrive.
//!
//! **Idempotent**: a pass reads the recorded leadership and nodes and acts only through
//! compare-and-set writes on the epoch it read; a pass that raced with another control
//! plane loses its write and changes nothing. Running it again right after does nothing.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use chrono::Utc;

use super::leadership::{self, StepOutcome, Timing};
use crate::app::AppState;
use crate::model::BrokerState;
use crate::store::{BrokerId, NodeRecord};

/// Runs failover passes until `shutdown` completes.
pub async fn run(state: AppState, shutdown: impl Future<Output = ()>) {
    let timing = Timing::from_config(&state.config.failover);
    let interval = Duration::from_millis(state.config.failover.failover_interval_ms);
    let mut wakeups = state.failover_wakeups();
    tokio::pin!(shutdown);
    loop {
        wakeups.borrow_and_update();
        let started = Instant::now();
        let outcome = match pass(&state, &timing).await {
            Ok(()) => "ok",
            Err(e) => {
                tracing::warn!("failover pass failed: {e:#}");
                "error"
            }
        };
        state
            .metrics
            .reconcile_finished("failover", outcome, started.elapsed());
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(interval) => {}
            _ = wakeups.changed() => {}
        }
    }
}

/// Whether leadership is managed for a broker in `state`: not while it is being created
/// (its nodes come up one by one; the first leader is the planned one) nor deleted.
fn managed(state: BrokerState) -> bool {
    matches!(
        state,
        BrokerState::Running | BrokerState::RebootInProgress | BrokerState::CriticalActionRequired
    )
}

/// One pass over every replicated broker.
pub async fn pass(state: &AppState, timing: &Timing) -> anyhow::Result<()> {
    let store = &state.store;
    let leaderships = store.replication_list().await?;
    if leaderships.is_empty() {
        return Ok(());
    }
    let mut nodes_by_broker: BTreeMap<BrokerId, Vec<NodeRecord>> = BTreeMap::new();
    for node in store.node_list_replicated().await? {
        nodes_by_broker
            .entry(node.broker_id.clone())
            .or_default()
            .push(node);
    }
    for leadership in leaderships.iter().filter(|l| managed(l.broker_state)) {
        let nodes = nodes_by_broker
            .get(&leadership.broker_id)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let now = Utc::now();
        let outcome = match leadership::step(state, leadership, nodes, timing, now).await {
            Ok(outcome) => outcome,
            Err(e) => {
                tracing::warn!(broker = %leadership.broker_id, "leadership step failed: {e:#}");
                continue;
            }
        };
        // Status describes the broker as it is after this step; a promotion is judged at
        // the next pass, from the new record.
        if matches!(
            outcome,
            StepOutcome::Promoted { .. } | StepOutcome::LostRace
        ) {
            continue;
        }
        let action = leadership::action_required(leadership, nodes, timing, now);
        let state_moves = match leadership.broker_state {
            BrokerState::Running => action.is_some(),
            BrokerState::CriticalActionRequired => action.is_none(),
            _ => false,
        };
        let needs_write = state_moves || action != leadership.action_required.as_deref();
        if needs_write
            && store
                .replication_set_status(&leadership.broker_id, action, now)
                .await?
        {
            match action {
                Some(code) => {
                    tracing::warn!(broker = %leadership.broker_id, code, "broker runs without redundancy")
                }
                None => tracing::info!(broker = %leadership.broker_id, "redundancy restored"),
            }
        }
    }
    Ok(())
}
