//! Leadership of replicated brokers: failover and switchover are one code path.
//!
//! [`step`] looks at one broker (its recorded leadership and nodes), asks
//! [`plan::failover::decide_leadership`](crate::plan::failover::decide_leadership) what to do,
//! and does it: promote (an epoch compare-and-set that also bumps the broker's generation, so
//! every node fetches its new role), wait for a lease to run out, or refuse a switchover.
//! A pending switchover request is just another input of that decision: the heartbeat
//! answers ask the leader to release its lease, and the promotion follows once it has (or
//! once its lease has run out, for an agent that ignores the request).
//!
//! [`switchover`] is the entry point for planned changes of leader (the switchover route,
//! RebootBroker's rolling restart, maintenance): it records the request and returns once a
//! promotion has happened or the request was refused.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use mooring_agent_protocol::{Epoch, NodeId};

use crate::app::AppState;
use crate::config::FailoverConfig;
use crate::model::BrokerState;
use crate::plan::failover::{
    alive, best_candidate, decide_leadership, honest_status, FailoverPolicy, HonestStatus, Intent,
    LeadershipDecision, Lease, LogPosition, NoCandidateReason, ReplicaFacts, Role,
    SwitchoverRefusal,
};
use crate::store::events::kind;
use crate::store::{BrokerId, NewEvent, NodeRecord, Promotion, ReplicationRecord, StoreError};

/// How long a direct probe of a silent leader's admin port may take.
const PROBE_TIMEOUT: Duration = Duration::from_millis(150);
/// How often [`switchover`] looks whether its request was carried out.
const SWITCHOVER_POLL: Duration = Duration::from_millis(25);

/// Timing of leadership decisions, from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub policy: FailoverPolicy,
    /// How long a switchover waits for its target to catch up with the released leader.
    pub catch_up: TimeDelta,
}

impl Timing {
    pub fn from_config(c: &FailoverConfig) -> Self {
        let ms = |v: u64| TimeDelta::milliseconds(i64::try_from(v).unwrap_or(i64::MAX));
        Timing {
            policy: FailoverPolicy {
                heartbeat_timeout: ms(c.heartbeat_timeout_ms),
                clock_drift_margin: ms(c.lease_drift_margin_ms),
            },
            catch_up: ms(c.switchover_catch_up_ms),
        }
    }
}

/// What one [`step`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepOutcome {
    /// Nothing to change.
    Steady,
    /// Waiting: for a lease to run out, a leader to step down, a target to catch up.
    Waiting,
    /// `node` now leads under `epoch`.
    Promoted {
        node: NodeId,
        epoch: Epoch,
        kind: &'static str,
    },
    /// Another control plane (or a heartbeat changing the in-sync set) got there first.
    LostRace,
    /// A requested switchover was dropped.
    SwitchoverRefused,
    /// Nobody can lead without losing confirmed publishes.
    NoCandidate,
}

/// The plan's view of a broker's nodes.
pub fn replica_facts(leadership: &ReplicationRecord, nodes: &[NodeRecord]) -> Vec<ReplicaFacts> {
    nodes
        .iter()
        .map(|n| ReplicaFacts {
            id: n.id.clone(),
            zone: n.zone.clone(),
            role: if n.id == leadership.leader {
                Role::Leader
            } else {
                Role::Follower
            },
            in_sync: leadership.in_sync.contains(&n.id),
            acked: LogPosition {
                epoch: n.reported.epoch,
                offset: n.reported.position,
            },
            last_heartbeat: n.last_heartbeat,
        })
        .collect()
}

fn lease_of(leadership: &ReplicationRecord) -> Option<Lease> {
    match (leadership.lease_expires_at, leadership.lease_released) {
        (Some(expires_at), released) => Some(Lease {
            expires_at,
            released,
        }),
        // Released before any expiry was recorded: a lease that ended already.
        (None, true) => Some(Lease {
            expires_at: leadership.leader_since,
            released: true,
        }),
        (None, false) => None,
    }
}

/// The `actionRequiredCode` the broker should show, if any.
pub fn action_required(
    leadership: &ReplicationRecord,
    nodes: &[NodeRecord],
    timing: &Timing,
    now: DateTime<Utc>,
) -> Option<&'static str> {
    let facts = replica_facts(leadership, nodes);
    match honest_status(true, &facts, lease_of(leadership), &timing.policy, now) {
        HonestStatus::Running => None,
        HonestStatus::CriticalActionRequired(a) => Some(a.code()),
    }
}

fn millis(d: TimeDelta) -> u64 {
    u64::try_from(d.num_milliseconds()).unwrap_or(0)
}

/// One leadership step for one replicated broker.
pub async fn step(
    state: &AppState,
    leadership: &ReplicationRecord,
    nodes: &[NodeRecord],
    timing: &Timing,
    now: DateTime<Utc>,
) -> anyhow::Result<StepOutcome> {
    let facts = replica_facts(leadership, nodes);
    let lease = lease_of(leadership);
    let policy = &timing.policy;
    let intent = match &leadership.switchover {
        Some(request) => match &request.target {
            Some(target) => Intent::SwitchoverTo(target.clone()),
            None => match best_candidate(&facts, policy, now) {
                Ok(best) => Intent::SwitchoverTo(best.id.clone()),
                Err(reason) => {
                    return refuse(state, leadership, &facts, timing, now, refusal_text(reason))
                        .await;
                }
            },
        },
        None => Intent::KeepLed,
    };
    let epoch = leadership.epoch.0;
    match decide_leadership(&intent, epoch, &facts, lease, policy, now) {
        LeadershipDecision::Healthy => {
            if leadership.switchover.is_some() {
                // The target already leads (a request made twice, or a failover chose it).
                let event = NewEvent {
                    broker_id: leadership.broker_id.clone(),
                    at: now,
                    kind: kind::SWITCHOVER_REFUSED,
                    from_node: None,
                    to_node: None,
                    epoch: Some(epoch),
                    reason: "the requested node already leads".into(),
                    duration_ms: Some(0),
                };
                state
                    .store
                    .replication_cancel_switchover(&leadership.broker_id, leadership.epoch, &event)
                    .await?;
            }
            Ok(StepOutcome::Steady)
        }
        LeadershipDecision::WaitForLeaseExpiry { .. } | LeadershipDecision::StepDown { .. } => {
            Ok(StepOutcome::Waiting)
        }
        LeadershipDecision::Promote { node, .. } => {
            promote(state, leadership, nodes, &facts, &node, timing, now).await
        }
        LeadershipDecision::Refused(why) => {
            let text = match why {
                SwitchoverRefusal::UnknownNode(n) => format!("{n} is not a node of this broker"),
                SwitchoverRefusal::TargetNotInSync(n) => {
                    format!(
                        "{n} is not alive and in sync: promoting it could lose confirmed messages"
                    )
                }
            };
            refuse(state, leadership, &facts, timing, now, text).await
        }
        LeadershipDecision::NoCandidate { reason } => {
            // A leader that released its lease for a switchover that can no longer happen
            // would otherwise stay silent forever: give it a new epoch and a new lease.
            let leader = facts.iter().find(|f| f.role == Role::Leader);
            if leadership.lease_released {
                if let Some(l) = leader.filter(|l| alive(l, policy, now)) {
                    let id = l.id.clone();
                    return promote(state, leadership, nodes, &facts, &id, timing, now).await;
                }
            }
            tracing::debug!(broker = %leadership.broker_id, "no candidate: {}", refusal_text(reason));
            Ok(StepOutcome::NoCandidate)
        }
    }
}

fn refusal_text(reason: NoCandidateReason) -> String {
    match reason {
        NoCandidateReason::NoFollower => "the broker has no follower".into(),
        NoCandidateReason::NoInSyncFollower => {
            "no follower is alive and in sync: promoting one could lose confirmed messages".into()
        }
    }
}

async fn refuse(
    state: &AppState,
    leadership: &ReplicationRecord,
    facts: &[ReplicaFacts],
    timing: &Timing,
    now: DateTime<Utc>,
    why: String,
) -> anyhow::Result<StepOutcome> {
    let request = leadership.switchover.as_ref();
    let event = NewEvent {
        broker_id: leadership.broker_id.clone(),
        at: now,
        kind: kind::SWITCHOVER_REFUSED,
        from_node: Some(leadership.leader.clone()),
        to_node: request.and_then(|r| r.target.clone()),
        epoch: Some(leadership.epoch.0),
        reason: format!("{} ({})", why, request.map_or("", |r| r.reason.as_str())),
        duration_ms: request.map(|r| millis(now - r.requested_at)),
    };
    tracing::warn!(broker = %leadership.broker_id, "switchover refused: {why}");
    state
        .store
        .replication_cancel_switchover(&leadership.broker_id, leadership.epoch, &event)
        .await?;
    let _ = (facts, timing);
    Ok(StepOutcome::SwitchoverRefused)
}

/// What a direct probe of a node's admin port says.
async fn probe(node: &NodeRecord) -> &'static str {
    let addr = (node.host.as_str(), node.admin_port);
    match tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(_)) => "its admin port answers: alive but cut off from the control plane (or frozen)",
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            "its admin port refuses connections: the process is gone"
        }
        Ok(Err(_)) => "its admin port is unreachable",
        Err(_) => "its admin port did not answer in time: unreachable",
    }
}

async fn promote(
    state: &AppState,
    leadership: &ReplicationRecord,
    nodes: &[NodeRecord],
    facts: &[ReplicaFacts],
    to: &NodeId,
    timing: &Timing,
    now: DateTime<Utc>,
) -> anyhow::Result<StepOutcome> {
    let policy = &timing.policy;
    let old = &leadership.leader;
    let old_node = nodes.iter().find(|n| &n.id == old);
    let target = nodes.iter().find(|n| &n.id == to);
    let (kind, duration, reason) = match &leadership.switchover {
        Some(request) => {
            // Planned: let the target catch up with what the leader wrote before releasing,
            // so clients need not resend the unconfirmed tail (bounded wait).
            if let (Some(released_at), Some(t)) = (leadership.released_position, target) {
                let caught_up =
                    t.reported.epoch >= leadership.epoch.0 && t.reported.position >= released_at;
                if !caught_up && now < request.requested_at + timing.catch_up {
                    return Ok(StepOutcome::Waiting);
                }
            }
            let how = if leadership.lease_released {
                "the leader released its lease"
            } else {
                "the leader's lease ran out"
            };
            (
                kind::SWITCHOVER,
                now - request.requested_at,
                format!("{} ({how})", request.reason),
            )
        }
        None if to == old => (
            kind::SWITCHOVER,
            TimeDelta::zero(),
            "re-elected: the leader released its lease for a switchover that could not happen"
                .to_string(),
        ),
        None => {
            let last_seen = old_node
                .and_then(|n| n.last_heartbeat)
                .unwrap_or(leadership.leader_since);
            let silent = now - last_seen;
            let why = if silent >= policy.heartbeat_timeout {
                let probed = match old_node {
                    Some(n) => probe(n).await,
                    None => "it is no longer recorded",
                };
                format!(
                    "leader {old} silent for {} ms (timeout {} ms); {probed}",
                    silent.num_milliseconds(),
                    policy.heartbeat_timeout.num_milliseconds()
                )
            } else {
                format!("leader {old} heartbeats but its lease lapsed")
            };
            (kind::FAILOVER, silent, why)
        }
    };
    // Under the new epoch: the new leader and every live in-sync follower. The old leader
    // leaves the set (it may hold an unconfirmed tail to discard) and rejoins once the new
    // leader proposes it.
    let mut new_in_sync: Vec<NodeId> = facts
        .iter()
        .filter(|f| &f.id == to || (&f.id != old && f.in_sync && alive(f, policy, now)))
        .map(|f| f.id.clone())
        .collect();
    if to == old {
        new_in_sync = leadership.in_sync.clone();
    }
    let promotion = Promotion {
        broker_id: leadership.broker_id.clone(),
        from_epoch: leadership.epoch,
        expected_in_sync: leadership.in_sync.clone(),
        new_leader: to.clone(),
        new_in_sync,
        event: NewEvent {
            broker_id: leadership.broker_id.clone(),
            at: now,
            kind,
            from_node: Some(old.clone()),
            to_node: Some(to.clone()),
            epoch: None,
            reason: reason.clone(),
            duration_ms: Some(millis(duration)),
        },
    };
    if !state.store.replication_promote(&promotion).await? {
        return Ok(StepOutcome::LostRace);
    }
    let epoch = Epoch(leadership.epoch.0 + 1);
    tracing::info!(
        broker = %leadership.broker_id, from = %old, to = %to, %epoch, kind,
        duration_ms = duration.num_milliseconds(), "leader changed: {reason}"
    );
    state
        .metrics
        .leadership_changed(kind, duration.to_std().unwrap_or_default());
    // The nodes learn their roles from the new generation at their next heartbeat; the
    // provisioner may now restart the old leader.
    state.wake_reconcilers();
    Ok(StepOutcome::Promoted {
        node: to.clone(),
        epoch,
        kind,
    })
}

/// Why a [`switchover`] did not happen.
#[derive(Debug, thiserror::Error)]
pub enum SwitchoverError {
    #[error("the broker is not replicated")]
    NotReplicated,
    #[error("the broker is {0}; switchovers need a RUNNING broker")]
    NotServing(BrokerState),
    #[error("another switchover is in progress")]
    InProgress,
    #[error("the switchover was refused: {0}")]
    Refused(String),
    #[error("the switchover did not complete within {0:?}")]
    TimedOut(Duration),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The result of a completed [`switchover`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwitchoverDone {
    pub from: NodeId,
    pub to: NodeId,
    pub epoch: Epoch,
}

/// Records a switchover request for `broker_id` and waits until it is carried out.
///
/// The failover loop does the work (see the module doc): it asks the leader to release its
/// lease, waits for `target` (or the best in-sync follower when `None`) to catch up, and
/// promotes it under a new epoch, recording a `switchover` event with `reason`. Returns the
/// old and new leader once the new epoch is committed (the nodes switch roles at their next
/// heartbeat), or why not within `deadline`.
///
/// For maintenance (helper H7) and RebootBroker: call it with the broker RUNNING or
/// REBOOT_IN_PROGRESS; a `TargetNotInSync` refusal means "wait until the follower is back
/// in sync and call again".
pub async fn switchover(
    state: &AppState,
    broker_id: &BrokerId,
    target: Option<NodeId>,
    reason: &str,
    deadline: Duration,
) -> Result<SwitchoverDone, SwitchoverError> {
    let before = state
        .store
        .replication_get(broker_id)
        .await?
        .ok_or(SwitchoverError::NotReplicated)?;
    if !matches!(
        before.broker_state,
        BrokerState::Running | BrokerState::RebootInProgress | BrokerState::CriticalActionRequired
    ) {
        return Err(SwitchoverError::NotServing(before.broker_state));
    }
    if target.as_ref() == Some(&before.leader) {
        return Ok(SwitchoverDone {
            from: before.leader.clone(),
            to: before.leader,
            epoch: before.epoch,
        });
    }
    let requested = state
        .store
        .replication_request_switchover(broker_id, target.as_ref(), reason, Utc::now())
        .await?;
    if !requested {
        return Err(SwitchoverError::InProgress);
    }
    let started = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(SWITCHOVER_POLL).await;
        let now = state
            .store
            .replication_get(broker_id)
            .await?
            .ok_or(SwitchoverError::NotReplicated)?;
        if now.epoch > before.epoch {
            return Ok(SwitchoverDone {
                from: before.leader,
                to: now.leader,
                epoch: now.epoch,
            });
        }
        if now.switchover.is_none() {
            let why = state
                .store
                .event_last_of_kind(broker_id, kind::SWITCHOVER_REFUSED)
                .await?
                .map_or_else(|| "cancelled".to_owned(), |e| e.reason);
            return Err(SwitchoverError::Refused(why));
        }
        if started.elapsed() >= deadline {
            let event = NewEvent {
                broker_id: broker_id.clone(),
                at: Utc::now(),
                kind: kind::SWITCHOVER_REFUSED,
                from_node: Some(now.leader.clone()),
                to_node: target.clone(),
                epoch: Some(now.epoch.0),
                reason: format!("timed out after {deadline:?} ({reason})"),
                duration_ms: Some(u64::try_from(deadline.as_millis()).unwrap_or(u64::MAX)),
            };
            state
                .store
                .replication_cancel_switchover(broker_id, now.epoch, &event)
                .await?;
            return Err(SwitchoverError::TimedOut(deadline));
        }
    }
}
