//! The `broker_replication` table and the replication columns of `broker_nodes`: who leads a
//! replicated broker under which epoch, the leader's lease, the recorded in-sync set, and
//! what each node last reported (DESIGN.md decisions 3 and 4).
//!
//! Every write that could move leadership is a compare-and-set on the epoch it was decided
//! under (`... WHERE epoch = $old`), so of two control planes deciding at once exactly one
//! wins, and a heartbeat answered under an old epoch cannot change the new one's lease or
//! in-sync set. A promotion bumps the epoch, the broker's configuration generation and its
//! version, and records its event, in one transaction.

use chrono::{DateTime, TimeDelta, Utc};
use mooring_agent_protocol::{Epoch, Heartbeat, LeaseGrant, NodeId, Role};
use sqlx::FromRow;

use super::events::{insert_event, kind, NewEvent};
use super::nodes::role_str;
use super::{with_pool, BrokerId, Store, StoreError};
use crate::model::BrokerState;

/// A replicated broker's leadership as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicationRecord {
    pub broker_id: BrokerId,
    pub epoch: Epoch,
    /// The leader under `epoch`.
    pub leader: NodeId,
    /// Sorted; the control plane promotes only a member.
    pub in_sync: Vec<NodeId>,
    /// On the control plane's clock; `None` until the leader of `epoch` is first granted one.
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// The leader gave the lease up for a switchover: it confirms nothing more.
    pub lease_released: bool,
    /// The leader's log position when it released its lease.
    pub released_position: Option<u64>,
    /// The replication secret, sealed under the master key.
    pub secret_sealed: String,
    pub switchover: Option<SwitchoverRequest>,
    /// The `actionRequiredCode` the broker shows while CRITICAL_ACTION_REQUIRED.
    pub action_required: Option<String>,
    pub leader_since: DateTime<Utc>,
    /// The broker's state (joined, for the loops that read every replicated broker).
    pub broker_state: BrokerState,
    /// A follower out of the in-sync set for a planned restart (see [`Store::replication_leave`]).
    pub leaving: Option<Leaving>,
}

/// A follower taken out of the in-sync set before a planned restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leaving {
    pub node: NodeId,
    pub since: DateTime<Utc>,
    /// The leader's proposal no longer names it: no confirm waits on it any more.
    pub acked: bool,
}

/// Where a planned leave stands (see [`Store::replication_leave`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leave {
    /// Recorded now, or earlier and the leader has not let go of it yet.
    Pending,
    /// The leader has let go of it (or was given `since` long enough): it may be stopped.
    Ready,
    /// Not recorded: another node is leaving, or the leadership changed since it was read.
    Busy,
}

/// A planned change of leader, waiting to happen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwitchoverRequest {
    pub requested_at: DateTime<Utc>,
    /// `None`: the best in-sync follower.
    pub target: Option<NodeId>,
    pub reason: String,
}

/// How the agent API answers a replicated node's heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HeartbeatAnswer {
    pub desired_generation: i64,
    /// For the leader of the current epoch, unless it was asked to release its lease.
    pub lease: Option<LeaseGrant>,
    /// The recorded in-sync set, after any change this heartbeat made.
    pub in_sync: Option<Vec<NodeId>>,
    /// The leader is asked to step down (a switchover is pending).
    pub release_lease: bool,
    /// This heartbeat changed something the leadership loop acts on (lease released).
    pub leadership_changed: bool,
    /// To the leader: the follower leaving for a planned restart (drop it from proposals).
    pub leaving: Vec<NodeId>,
    /// This heartbeat recorded that the leader let go of the leaving follower: the
    /// provisioner may stop it now.
    pub leaving_acked: bool,
    /// A hand-over of leadership is under way: the node should heartbeat again at once.
    pub hurry: bool,
}

/// A promotion decided under `from_epoch`; see [`Store::replication_promote`].
#[derive(Debug, Clone)]
pub struct Promotion {
    pub broker_id: BrokerId,
    pub from_epoch: Epoch,
    /// The in-sync set the decision read; the promotion fails if it changed since.
    pub expected_in_sync: Vec<NodeId>,
    pub new_leader: NodeId,
    /// The in-sync set under the new epoch (the new leader and the live in-sync followers).
    pub new_in_sync: Vec<NodeId>,
    /// Recorded in the same transaction; its epoch is set to the new one.
    pub event: NewEvent,
}

const COLUMNS: &str = "r.broker_id, r.epoch, r.leader_node, r.in_sync, r.lease_expires_at, \
    r.lease_released, r.released_position, r.secret_sealed, r.switchover_requested_at, \
    r.switchover_target, r.switchover_reason, r.action_required, r.leader_since, \
    r.leaving_node, r.leaving_since, r.leaving_acked, b.state AS broker_state";

#[derive(FromRow)]
struct ReplicationRow {
    broker_id: String,
    epoch: i64,
    leader_node: String,
    in_sync: String,
    lease_expires_at: Option<DateTime<Utc>>,
    lease_released: bool,
    released_position: Option<i64>,
    secret_sealed: String,
    switchover_requested_at: Option<DateTime<Utc>>,
    switchover_target: Option<String>,
    switchover_reason: Option<String>,
    action_required: Option<String>,
    leader_since: DateTime<Utc>,
    leaving_node: Option<String>,
    leaving_since: Option<DateTime<Utc>>,
    leaving_acked: bool,
    broker_state: String,
}

fn u64_of(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The stored form of a node set: a sorted JSON array, so equal sets compare equal as text.
pub(crate) fn node_set_text(nodes: &[NodeId]) -> String {
    let mut ids: Vec<String> = nodes.iter().map(|n| n.0.clone()).collect();
    ids.sort();
    ids.dedup();
    super::json_list(&ids)
}

fn node_set(text: &str) -> Result<Vec<NodeId>, StoreError> {
    Ok(super::parse_json_list(text)?
        .into_iter()
        .map(NodeId)
        .collect())
}

impl TryFrom<ReplicationRow> for ReplicationRecord {
    type Error = StoreError;

    fn try_from(r: ReplicationRow) -> Result<Self, StoreError> {
        Ok(ReplicationRecord {
            broker_id: BrokerId::from_db(r.broker_id),
            epoch: Epoch(u64_of(r.epoch)),
            leader: NodeId(r.leader_node),
            in_sync: node_set(&r.in_sync)?,
            lease_expires_at: r.lease_expires_at,
            lease_released: r.lease_released,
            released_position: r.released_position.map(u64_of),
            secret_sealed: r.secret_sealed,
            switchover: r.switchover_requested_at.map(|at| SwitchoverRequest {
                requested_at: at,
                target: r.switchover_target.map(NodeId),
                reason: r.switchover_reason.unwrap_or_default(),
            }),
            action_required: r.action_required,
            leader_since: r.leader_since,
            broker_state: BrokerState::parse(&r.broker_state).ok_or_else(|| {
                StoreError::Corrupt(format!("brokers.state = {:?}", r.broker_state))
            })?,
            leaving: match (r.leaving_node, r.leaving_since) {
                (Some(node), Some(since)) => Some(Leaving {
                    node: NodeId(node),
                    since,
                    acked: r.leaving_acked,
                }),
                _ => None,
            },
        })
    }
}

/// What the heartbeat transaction reads: the broker's generation and, when replicated,
/// its leadership.
#[derive(FromRow)]
struct HeartbeatRow {
    generation: i64,
    epoch: Option<i64>,
    leader_node: Option<String>,
    in_sync: Option<String>,
    lease_expires_at: Option<DateTime<Utc>>,
    lease_released: Option<bool>,
    switchover_requested_at: Option<DateTime<Utc>>,
    leaving_node: Option<String>,
    leaving_acked: Option<bool>,
    leaving_since: Option<DateTime<Utc>>,
    /// When the leaving node's agent last registered (it restarted after the leave began).
    leaving_registered_at: Option<DateTime<Utc>>,
}

impl Store {
    /// Records a replicated broker's leadership at epoch 1 unless it is recorded already
    /// (then the existing record is returned unchanged: a re-run provisioning pass is
    /// harmless).
    pub async fn replication_ensure(
        &self,
        broker_id: &BrokerId,
        leader: &NodeId,
        in_sync: &[NodeId],
        secret_sealed: &str,
        now: DateTime<Utc>,
    ) -> Result<ReplicationRecord, StoreError> {
        with_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO broker_replication (broker_id, epoch, leader_node, in_sync, \
                 lease_expires_at, lease_released, released_position, secret_sealed, \
                 switchover_requested_at, switchover_target, switchover_reason, \
                 action_required, leader_since, updated_at) \
                 VALUES ($1, 1, $2, $3, NULL, FALSE, NULL, $4, NULL, NULL, NULL, NULL, $5, $5) \
                 ON CONFLICT (broker_id) DO NOTHING",
            )
            .bind(broker_id.as_str())
            .bind(&leader.0)
            .bind(node_set_text(in_sync))
            .bind(secret_sealed)
            .bind(now)
            .execute(pool)
            .await?;
        });
        self.replication_get(broker_id)
            .await?
            .ok_or(StoreError::NotFound("broker"))
    }

    pub async fn replication_get(
        &self,
        broker_id: &BrokerId,
    ) -> Result<Option<ReplicationRecord>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM broker_replication r JOIN brokers b ON b.id = r.broker_id \
             WHERE r.broker_id = $1"
        );
        let row: Option<ReplicationRow> = with_pool!(self, pool => {
            sqlx::query_as(&sql).bind(broker_id.as_str()).fetch_optional(pool).await?
        });
        row.map(TryInto::try_into).transpose()
    }

    /// Every replicated broker's leadership, by broker id.
    pub async fn replication_list(&self) -> Result<Vec<ReplicationRecord>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM broker_replication r JOIN brokers b ON b.id = r.broker_id \
             ORDER BY r.broker_id"
        );
        let rows: Vec<ReplicationRow> = with_pool!(self, pool => {
            sqlx::query_as(&sql).fetch_all(pool).await?
        });
        rows.into_iter().map(TryInto::try_into).collect()
    }

    /// Records a replicated node's heartbeat and answers it, in one transaction: liveness and
    /// engine status; the node's replication report; for the leader of the current epoch,
    /// a released lease, a renewed lease (expiry = `now` + `lease`, on this clock; never
    /// shortened), and its proposed in-sync set. Lease and in-sync writes are conditional on
    /// the epoch read in the transaction, so a promotion committed meanwhile wins.
    pub async fn replication_heartbeat(
        &self,
        node: &NodeId,
        hb: &Heartbeat,
        lease: TimeDelta,
        now: DateTime<Utc>,
    ) -> Result<HeartbeatAnswer, StoreError> {
        let report = hb.replication.as_ref();
        let rejected = hb.rejected.as_ref();
        let lease_ms = u64::try_from(lease.num_milliseconds()).unwrap_or(0);
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            // The write comes first: on SQLite it takes the write lock, so the reads below
            // and the conditional writes after them see one state.
            let broker_id: Option<String> = sqlx::query_scalar(
                "UPDATE broker_nodes SET last_heartbeat = $2, applied_generation = $3, \
                 engine_ready = $4, connections = $5, queues = $6, messages = $7, \
                 rejected_generation = $8, rejected_reason = $9, \
                 reported_epoch = COALESCE($10, reported_epoch), \
                 reported_role = COALESCE($11, reported_role), \
                 reported_position = COALESCE($12, reported_position) \
                 WHERE id = $1 RETURNING broker_id",
            )
            .bind(&node.0)
            .bind(now)
            .bind(i64_of(hb.applied_generation.0))
            .bind(hb.engine.ready)
            .bind(i64_of(hb.engine.connections))
            .bind(i64_of(hb.engine.queues))
            .bind(i64_of(hb.engine.messages))
            .bind(rejected.map(|r| i64_of(r.generation.0)))
            .bind(rejected.map(|r| r.reason.as_str()))
            .bind(report.map(|r| i64_of(r.epoch.0)))
            .bind(report.map(|r| role_str(r.role)))
            .bind(report.map(|r| i64_of(r.position)))
            .fetch_optional(&mut *tx)
            .await?;
            let broker_id = broker_id.ok_or(StoreError::NotFound("node"))?;
            let row: HeartbeatRow = sqlx::query_as(
                "SELECT b.generation, r.epoch, r.leader_node, r.in_sync, r.lease_expires_at, \
                 r.lease_released, r.switchover_requested_at, r.leaving_node, r.leaving_acked, \
                 r.leaving_since, ln.registered_at AS leaving_registered_at \
                 FROM brokers b \
                 LEFT JOIN broker_replication r ON r.broker_id = b.id \
                 LEFT JOIN broker_nodes ln ON ln.id = r.leaving_node WHERE b.id = $1",
            )
            .bind(&broker_id)
            .fetch_one(&mut *tx)
            .await?;
            let mut answer = HeartbeatAnswer {
                desired_generation: row.generation,
                ..HeartbeatAnswer::default()
            };
            let (Some(epoch), Some(leader), Some(in_sync_text)) =
                (row.epoch, row.leader_node.as_deref(), row.in_sync.as_deref())
            else {
                tx.commit().await?;
                return Ok(answer);
            };
            let mut in_sync = node_set(in_sync_text)?;
            let released = row.lease_released.unwrap_or(false);
            let switching = row.switchover_requested_at.is_some();
            answer.hurry = switching || released;
            // The leader of the current epoch, acting as one under it.
            let current_leader = report.filter(|r| {
                leader == node.0 && r.epoch.0 == u64_of(epoch) && r.role == Role::Leader
            });
            if let Some(r) = current_leader {
                if r.lease_released && !released {
                    sqlx::query(
                        "UPDATE broker_replication SET lease_released = TRUE, \
                         released_position = $3, updated_at = $4 \
                         WHERE broker_id = $1 AND epoch = $2",
                    )
                    .bind(&broker_id)
                    .bind(epoch)
                    .bind(i64_of(r.position))
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                    answer.leadership_changed = true;
                } else if !r.lease_released && !released && !switching {
                    let expiry = now + lease;
                    let expiry = row.lease_expires_at.map_or(expiry, |e| e.max(expiry));
                    let granted = sqlx::query(
                        "UPDATE broker_replication SET lease_expires_at = $3 \
                         WHERE broker_id = $1 AND epoch = $2 AND lease_released = FALSE \
                         AND switchover_requested_at IS NULL",
                    )
                    .bind(&broker_id)
                    .bind(epoch)
                    .bind(expiry)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    if granted > 0 {
                        answer.lease = Some(LeaseGrant {
                            epoch: Epoch(u64_of(epoch)),
                            duration_ms: lease_ms,
                        });
                    }
                }
                answer.release_lease = switching && !r.lease_released && !released;
                let leaving = row.leaving_node.as_deref().map(|n| NodeId(n.to_owned()));
                if let Some(gone) = &leaving {
                    answer.leaving = vec![gone.clone()];
                    // The leader has let go of it: nothing it confirms waits on that node.
                    let let_go =
                        !r.proposed_in_sync.is_empty() && !r.proposed_in_sync.contains(gone);
                    // Already back (it lost its data, or was restarted by a control plane
                    // that did not record the stop): once let go, the leader takes it back
                    // only after it has copied, so the leave has done its work.
                    let restarted = match (row.leaving_registered_at, row.leaving_since) {
                        (Some(registered), Some(since)) => registered >= since,
                        _ => false,
                    };
                    if let_go && restarted {
                        sqlx::query(
                            "UPDATE broker_replication SET leaving_node = NULL, \
                             leaving_since = NULL, leaving_acked = FALSE \
                             WHERE broker_id = $1 AND epoch = $2 AND leaving_node = $3",
                        )
                        .bind(&broker_id)
                        .bind(epoch)
                        .bind(&gone.0)
                        .execute(&mut *tx)
                        .await?;
                    } else if let_go && !row.leaving_acked.unwrap_or(false) {
                        sqlx::query(
                            "UPDATE broker_replication SET leaving_acked = TRUE \
                             WHERE broker_id = $1 AND epoch = $2 AND leaving_node = $3",
                        )
                        .bind(&broker_id)
                        .bind(epoch)
                        .bind(&gone.0)
                        .execute(&mut *tx)
                        .await?;
                        answer.leaving_acked = true;
                    }
                }
                let mut proposed = r.proposed_in_sync.clone();
                // A proposal sent before the leader heard of the leave cannot put it back.
                proposed.retain(|n| Some(n) != leaving.as_ref());
                proposed.sort();
                proposed.dedup();
                // The leader always holds everything it confirmed: a proposal without it is
                // malformed and ignored.
                if !proposed.is_empty() && proposed != in_sync && proposed.contains(node) {
                    let changed = sqlx::query(
                        "UPDATE broker_replication SET in_sync = $4, updated_at = $5 \
                         WHERE broker_id = $1 AND epoch = $2 AND leader_node = $3",
                    )
                    .bind(&broker_id)
                    .bind(epoch)
                    .bind(&node.0)
                    .bind(node_set_text(&proposed))
                    .bind(now)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    if changed > 0 {
                        let event = NewEvent {
                            broker_id: BrokerId::from_db(broker_id.clone()),
                            at: now,
                            kind: kind::IN_SYNC_CHANGE,
                            from_node: None,
                            to_node: None,
                            epoch: Some(u64_of(epoch)),
                            reason: format!(
                                "in-sync set {} -> {} at the leader's request",
                                show(&in_sync),
                                show(&proposed)
                            ),
                            duration_ms: None,
                        };
                        insert_event!(&mut *tx, &event);
                        in_sync = proposed;
                        answer.leadership_changed = true;
                    }
                }
            }
            tx.commit().await?;
            answer.in_sync = Some(in_sync);
            Ok(answer)
        })
    }

    /// Promotes `p.new_leader` under epoch `p.from_epoch + 1`, if the epoch is still
    /// `p.from_epoch` and the in-sync set still `p.expected_in_sync` (else nothing changes and
    /// `false` is returned: another control plane or a heartbeat got there first). In one
    /// transaction: the new epoch, leader and in-sync set, a cleared lease and switchover
    /// request, the broker's generation and version bumped (the nodes fetch their new roles),
    /// and the event.
    pub async fn replication_promote(&self, p: &Promotion) -> Result<bool, StoreError> {
        let now = p.event.at;
        let new_epoch = p.from_epoch.0 + 1;
        let event = NewEvent {
            epoch: Some(new_epoch),
            ..p.event.clone()
        };
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let won = sqlx::query(
                "UPDATE broker_replication SET epoch = $3, leader_node = $4, in_sync = $5, \
                 lease_expires_at = NULL, lease_released = FALSE, released_position = NULL, \
                 switchover_requested_at = NULL, switchover_target = NULL, \
                 switchover_reason = NULL, leader_since = $6, updated_at = $6, \
                 leaving_node = NULL, leaving_since = NULL, leaving_acked = FALSE \
                 WHERE broker_id = $1 AND epoch = $2 AND in_sync = $7",
            )
            .bind(p.broker_id.as_str())
            .bind(i64_of(p.from_epoch.0))
            .bind(i64_of(new_epoch))
            .bind(&p.new_leader.0)
            .bind(node_set_text(&p.new_in_sync))
            .bind(now)
            .bind(node_set_text(&p.expected_in_sync))
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if won == 0 {
                tx.rollback().await?;
                return Ok(false);
            }
            sqlx::query(
                "UPDATE brokers SET generation = generation + 1, version = version + 1, \
                 updated_at = $2 WHERE id = $1",
            )
            .bind(p.broker_id.as_str())
            .bind(now)
            .execute(&mut *tx)
            .await?;
            insert_event!(&mut *tx, &event);
            tx.commit().await?;
        });
        Ok(true)
    }

    /// Takes `node`, a follower about to be stopped for a planned restart, out of the
    /// in-sync set first, so that the restart costs the producers no wait: the leader hears
    /// of it in its next heartbeat answer and stops waiting for that node's acks, and its
    /// next proposal without the node marks the leave acknowledged (`Ready`). Removing a
    /// member is always safe (the control plane promotes only members); until the node has
    /// been stopped ([`Store::replication_left`]) no proposal can put it back.
    ///
    /// Recorded only against the leadership `seen` was read from (same epoch and in-sync
    /// set) and when no other node is leaving. `ack_timeout` bounds the wait for a leader
    /// that does not acknowledge (an older agent): it is then treated as `Ready`, and
    /// confirms wait on the stopped node until the leader's lag timeout drops it.
    pub async fn replication_leave(
        &self,
        seen: &ReplicationRecord,
        node: &NodeId,
        ack_timeout: TimeDelta,
        now: DateTime<Utc>,
    ) -> Result<Leave, StoreError> {
        if let Some(l) = &seen.leaving {
            return Ok(match () {
                _ if &l.node != node => Leave::Busy,
                _ if l.acked || now - l.since >= ack_timeout => Leave::Ready,
                _ => Leave::Pending,
            });
        }
        let remaining: Vec<NodeId> = seen
            .in_sync
            .iter()
            .filter(|n| *n != node)
            .cloned()
            .collect();
        let event = NewEvent {
            broker_id: seen.broker_id.clone(),
            at: now,
            kind: kind::IN_SYNC_CHANGE,
            from_node: Some(node.clone()),
            to_node: None,
            epoch: Some(seen.epoch.0),
            reason: format!(
                "in-sync set {} -> {}: {node} leaves for a planned restart",
                show(&seen.in_sync),
                show(&remaining)
            ),
            duration_ms: None,
        };
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let n = sqlx::query(
                "UPDATE broker_replication SET in_sync = $4, leaving_node = $5, \
                 leaving_since = $6, leaving_acked = FALSE, updated_at = $6 \
                 WHERE broker_id = $1 AND epoch = $2 AND in_sync = $3 AND leaving_node IS NULL",
            )
            .bind(seen.broker_id.as_str())
            .bind(i64_of(seen.epoch.0))
            .bind(node_set_text(&seen.in_sync))
            .bind(node_set_text(&remaining))
            .bind(&node.0)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if n == 0 {
                tx.rollback().await?;
                return Ok(Leave::Busy);
            }
            if remaining != seen.in_sync {
                insert_event!(&mut *tx, &event);
            }
            tx.commit().await?;
        });
        Ok(Leave::Pending)
    }

    /// The leaving node has been stopped: the leader may take it back once it has caught up
    /// again.
    pub async fn replication_left(
        &self,
        broker_id: &BrokerId,
        node: &NodeId,
    ) -> Result<(), StoreError> {
        with_pool!(self, pool => {
            sqlx::query(
                "UPDATE broker_replication SET leaving_node = NULL, leaving_since = NULL, \
                 leaving_acked = FALSE WHERE broker_id = $1 AND leaving_node = $2",
            )
            .bind(broker_id.as_str())
            .bind(&node.0)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Records a switchover request unless one is pending (returns whether this one was
    /// recorded). `target` `None`: the best in-sync follower.
    pub async fn replication_request_switchover(
        &self,
        broker_id: &BrokerId,
        target: Option<&NodeId>,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let n = with_pool!(self, pool => {
            sqlx::query(
                "UPDATE broker_replication SET switchover_requested_at = $2, \
                 switchover_target = $3, switchover_reason = $4, updated_at = $2 \
                 WHERE broker_id = $1 AND switchover_requested_at IS NULL",
            )
            .bind(broker_id.as_str())
            .bind(now)
            .bind(target.map(|t| t.0.as_str()))
            .bind(reason)
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(n > 0)
    }

    /// Drops a pending switchover request made under `epoch` (refused or abandoned), and
    /// records why.
    pub async fn replication_cancel_switchover(
        &self,
        broker_id: &BrokerId,
        epoch: Epoch,
        event: &NewEvent,
    ) -> Result<bool, StoreError> {
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let n = sqlx::query(
                "UPDATE broker_replication SET switchover_requested_at = NULL, \
                 switchover_target = NULL, switchover_reason = NULL, updated_at = $3 \
                 WHERE broker_id = $1 AND epoch = $2 AND switchover_requested_at IS NOT NULL",
            )
            .bind(broker_id.as_str())
            .bind(i64_of(epoch.0))
            .bind(event.at)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if n > 0 {
                insert_event!(&mut *tx, event);
            }
            tx.commit().await?;
            Ok(n > 0)
        })
    }

    /// Records why the broker needs an operator (`None`: it does not) and moves it between
    /// RUNNING and CRITICAL_ACTION_REQUIRED accordingly. Other states are left alone (a
    /// creation or reboot finishes on its own terms). Returns whether anything changed.
    pub async fn replication_set_status(
        &self,
        broker_id: &BrokerId,
        action_required: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let (from, to) = match action_required {
            Some(_) => (BrokerState::Running, BrokerState::CriticalActionRequired),
            None => (BrokerState::CriticalActionRequired, BrokerState::Running),
        };
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let a = sqlx::query(
                "UPDATE broker_replication SET action_required = $2, updated_at = $3 \
                 WHERE broker_id = $1 AND COALESCE(action_required, '') <> COALESCE($2, '')",
            )
            .bind(broker_id.as_str())
            .bind(action_required)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            let b = sqlx::query(
                "UPDATE brokers SET state = $3, version = version + 1, updated_at = $4 \
                 WHERE id = $1 AND state = $2",
            )
            .bind(broker_id.as_str())
            .bind(from.as_str())
            .bind(to.as_str())
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            tx.commit().await?;
            Ok(a + b > 0)
        })
    }

    /// A node that had registered before registers again with nothing applied: its data is
    /// gone (a fresh data directory). It leaves the in-sync set at once, before its first
    /// heartbeat can make it a candidate: it holds none of the log it was in sync with, and
    /// joins again only when the leader proposes it, having copied. Called before
    /// [`Store::node_register`]. Returns whether it left. A leader that lost its data is not
    /// handled here.
    pub async fn replication_node_lost_data(
        &self,
        node: &NodeId,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        // `agent_version` is set at a registration and never cleared: the node ran before
        // (`registered_at` is cleared at each start).
        let row: Option<(String, Option<String>)> = with_pool!(self, pool => {
            sqlx::query_as("SELECT broker_id, agent_version FROM broker_nodes WHERE id = $1")
                .bind(&node.0)
                .fetch_optional(pool)
                .await?
        });
        let Some((broker_id, Some(_))) = row else {
            return Ok(false);
        };
        let broker_id = BrokerId::from_db(broker_id);
        // Compare-and-set on the in-sync set; a concurrent change is read again.
        for _ in 0..5 {
            let Some(r) = self.replication_get(&broker_id).await? else {
                return Ok(false);
            };
            if r.leader == *node || !r.in_sync.contains(node) {
                return Ok(false);
            }
            let remaining: Vec<NodeId> = r.in_sync.iter().filter(|n| *n != node).cloned().collect();
            let event = NewEvent {
                broker_id: broker_id.clone(),
                at: now,
                kind: kind::IN_SYNC_CHANGE,
                from_node: Some(node.clone()),
                to_node: None,
                epoch: Some(r.epoch.0),
                reason: format!(
                    "in-sync set {} -> {}: {node} came back without its data; it copies from \
                     the leader before it joins again",
                    show(&r.in_sync),
                    show(&remaining)
                ),
                duration_ms: None,
            };
            let left = with_pool!(self, pool => {
                let mut tx = pool.begin().await?;
                // Also leaving (unless another node is): the leader may still propose it
                // from before it noticed the node was gone, and such a proposal must not put
                // it back; the leave ends once the leader has let go of it.
                let n = sqlx::query(
                    "UPDATE broker_replication SET in_sync = $4, updated_at = $5, \
                     leaving_node = COALESCE(leaving_node, $6), \
                     leaving_since = CASE WHEN leaving_node IS NULL THEN $5 ELSE leaving_since END, \
                     leaving_acked = CASE WHEN leaving_node IS NULL THEN FALSE ELSE leaving_acked END \
                     WHERE broker_id = $1 AND epoch = $2 AND in_sync = $3",
                )
                .bind(broker_id.as_str())
                .bind(i64_of(r.epoch.0))
                .bind(node_set_text(&r.in_sync))
                .bind(node_set_text(&remaining))
                .bind(now)
                .bind(&node.0)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if n == 0 {
                    tx.rollback().await?;
                    false
                } else {
                    insert_event!(&mut *tx, &event);
                    tx.commit().await?;
                    true
                }
            });
            if left {
                return Ok(true);
            }
        }
        Err(StoreError::VersionConflict)
    }
}

fn show(nodes: &[NodeId]) -> String {
    let ids: Vec<&str> = nodes.iter().map(|n| n.0.as_str()).collect();
    format!("[{}]", ids.join(", "))
}
