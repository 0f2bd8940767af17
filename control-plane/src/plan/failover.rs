//! Who leads a replicated broker: fail over when the leader is gone, switch over on request,
//! and tell RUNNING from CRITICAL_ACTION_REQUIRED.
//!
//! Safety rests on the lease (DESIGN.md decision 3): a leader that cannot renew its lease
//! stops confirming before the lease ends, so a follower is promoted only once the lease has
//! surely expired — its expiry plus a margin for the clocks of the two machines drifting
//! apart — or once the leader itself has acknowledged giving it up (a planned switchover).
//! Any in-sync follower holds every confirmed publish (decision 4); the most advanced one
//! is chosen to keep the unconfirmed tail clients would otherwise resend small.

use chrono::{DateTime, TimeDelta, Utc};
use mooring_agent_protocol::NodeId;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Leader,
    Follower,
}

/// A place in the replicated log, ordered by epoch first: an entry written under a later
/// epoch is ahead of any entry of an earlier one, whatever the offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct LogPosition {
    pub epoch: u64,
    pub offset: u64,
}

/// What the control plane knows of one node of the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaFacts {
    pub id: NodeId,
    pub zone: String,
    pub role: Role,
    /// In the leader's in-sync set as last recorded: it has appended every confirmed publish.
    pub in_sync: bool,
    /// The last position it acknowledged durably.
    pub acked: LogPosition,
    pub last_heartbeat: Option<DateTime<Utc>>,
}

/// The lease of the current leader as recorded in the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// When it ends on the control plane's clock unless renewed.
    pub expires_at: DateTime<Utc>,
    /// The leader acknowledged stepping down: it confirms nothing more, so no wait is needed.
    pub released: bool,
}

/// Timing knobs (configuration; the defaults meet issue 5's 3-second failover target).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailoverPolicy {
    /// A node not heard from for this long is considered gone.
    pub heartbeat_timeout: TimeDelta,
    /// Added to a lease's expiry before promoting: how far the leader's clock may run
    /// behind the control plane's over one lease.
    pub clock_drift_margin: TimeDelta,
}

impl Default for FailoverPolicy {
    fn default() -> Self {
        FailoverPolicy {
            heartbeat_timeout: TimeDelta::milliseconds(1_500),
            clock_drift_margin: TimeDelta::milliseconds(250),
        }
    }
}

/// Why a failover (or status check) wants an operator or a repair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoCandidateReason {
    /// The broker has no follower at all (single instance, or every follower is gone).
    NoFollower,
    /// Followers exist, but none is both in sync and alive: promoting one would lose
    /// confirmed publishes, so nothing is promoted.
    NoInSyncFollower,
}

/// Why a requested switchover cannot go ahead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SwitchoverRefusal {
    UnknownNode(NodeId),
    /// The target is not in sync or not alive: promoting it could lose confirmed publishes.
    TargetNotInSync(NodeId),
}

/// Why leadership should change now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Intent {
    /// Keep the broker led; fail over if the leader is gone.
    KeepLed,
    /// Planned: move leadership to `to` (RebootBroker's rolling restart, the extension route,
    /// maintenance). Promote-before-stop: the old leader keeps running until `to` leads.
    SwitchoverTo(NodeId),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeadershipDecision {
    /// Nothing to change.
    Healthy,
    /// In one transaction, bump the broker's epoch to `new_epoch`, record `node` as leader
    /// (the others as followers) and clear the old lease; then tell `node` to lead.
    Promote { node: NodeId, new_epoch: u64 },
    /// The leader may still confirm until `until`; look again then.
    WaitForLeaseExpiry { until: DateTime<Utc> },
    /// A switchover with a live leader: ask it to stop confirming and release its lease.
    StepDown { node: NodeId },
    /// The leader is gone and no follower can take over without losing data.
    NoCandidate { reason: NoCandidateReason },
    /// The requested switchover is refused (the API answers BadRequest/Conflict).
    Refused(SwitchoverRefusal),
}

/// Heard from within the heartbeat timeout.
pub fn alive(n: &ReplicaFacts, policy: &FailoverPolicy, now: DateTime<Utc>) -> bool {
    // A heartbeat stamped slightly ahead of `now` (another replica's clock) counts as fresh.
    n.last_heartbeat
        .is_some_and(|t| now.signed_duration_since(t) < policy.heartbeat_timeout)
}

/// A follower that may lead without losing a confirmed publish.
fn eligible(n: &ReplicaFacts, policy: &FailoverPolicy, now: DateTime<Utc>) -> bool {
    n.role == Role::Follower && n.in_sync && alive(n, policy, now)
}

/// The follower to promote: eligible, most advanced, ties broken by zone then node id so
/// every control-plane replica picks the same one.
pub fn best_candidate<'a>(
    nodes: &'a [ReplicaFacts],
    policy: &FailoverPolicy,
    now: DateTime<Utc>,
) -> Result<&'a ReplicaFacts, NoCandidateReason> {
    let mut followers = nodes.iter().filter(|n| n.role == Role::Follower).peekable();
    if followers.peek().is_none() {
        return Err(NoCandidateReason::NoFollower);
    }
    followers
        .filter(|n| eligible(n, policy, now))
        .min_by(|a, b| {
            b.acked
                .cmp(&a.acked)
                .then_with(|| a.zone.cmp(&b.zone))
                .then_with(|| a.id.0.cmp(&b.id.0))
        })
        .ok_or(NoCandidateReason::NoInSyncFollower)
}

/// The leader may confirm: its lease runs. A leader without a lease on record has just been
/// promoted and gets one with its next heartbeat; counting it as serving keeps a fresh
/// promotion from being followed by another (it confirms nothing until the lease arrives,
/// so this costs no safety).
fn lease_held(lease: Option<Lease>, now: DateTime<Utc>) -> bool {
    lease.is_none_or(|l| !l.released && now < l.expires_at)
}

/// When promoting becomes safe: at once for a released lease (or none on record), else after
/// the expiry plus the drift margin.
fn safe_from(lease: Option<Lease>, policy: &FailoverPolicy) -> Option<DateTime<Utc>> {
    lease
        .filter(|l| !l.released)
        .map(|l| l.expires_at + policy.clock_drift_margin)
}

/// The next leadership step for a replicated broker at `now`. `epoch` is the broker's current
/// generation of leadership; `lease` is the current leader's lease, if one was ever granted.
pub fn decide_leadership(
    intent: &Intent,
    epoch: u64,
    nodes: &[ReplicaFacts],
    lease: Option<Lease>,
    policy: &FailoverPolicy,
    now: DateTime<Utc>,
) -> LeadershipDecision {
    let leader = nodes.iter().find(|n| n.role == Role::Leader);
    // A leader needs both: heartbeats (it runs) and an unexpired lease (it may confirm).
    let leader_serving = leader.is_some_and(|l| alive(l, policy, now)) && lease_held(lease, now);
    let promote_when_safe = |node: &ReplicaFacts| match safe_from(lease, policy) {
        Some(until) if now < until => LeadershipDecision::WaitForLeaseExpiry { until },
        _ => LeadershipDecision::Promote {
            node: node.id.clone(),
            new_epoch: epoch + 1,
        },
    };
    match intent {
        Intent::KeepLed => {
            if leader_serving {
                return LeadershipDecision::Healthy;
            }
            match best_candidate(nodes, policy, now) {
                Ok(node) => promote_when_safe(node),
                Err(reason) => LeadershipDecision::NoCandidate { reason },
            }
        }
        Intent::SwitchoverTo(to) => {
            let Some(target) = nodes.iter().find(|n| &n.id == to) else {
                return LeadershipDecision::Refused(SwitchoverRefusal::UnknownNode(to.clone()));
            };
            if target.role == Role::Leader {
                return LeadershipDecision::Healthy;
            }
            if !eligible(target, policy, now) {
                return LeadershipDecision::Refused(SwitchoverRefusal::TargetNotInSync(to.clone()));
            }
            match leader {
                // Stop confirming first; the leader's process stays up until `to` leads.
                Some(l) if leader_serving => LeadershipDecision::StepDown { node: l.id.clone() },
                // Released, or the leader died meanwhile: the same wait as a failover.
                _ => promote_when_safe(target),
            }
        }
    }
}

/// Whether the provisioner may (re)start a replicated broker's node now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartGate {
    Go,
    /// Another node is not back in sync yet, followers go first, or a failover must
    /// happen before the dead leader is started again.
    Wait,
    /// The node leads and is due for a planned restart: switch over first.
    SwitchOverFirst,
}

/// Why the provisioner wants to act on a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartCause {
    /// Its process is gone.
    Dead,
    /// A reboot (RebootBroker, maintenance) is due for it.
    Reboot,
    /// It is running but silent for too long (hung): restart at once.
    Hung,
}

/// The rolling-restart rule of replicated brokers (issue 5, DESIGN.md "Patch"): one node at a
/// time, each waited on until it is back alive and in sync, followers before the leader, the
/// leader only after a switchover (promote before stop). A dead leader is started again only
/// when no follower can take over: otherwise the failover comes first and it rejoins as a
/// follower. `due` lists the nodes still waiting for the reboot.
pub fn restart_gate(
    node: &NodeId,
    cause: RestartCause,
    nodes: &[ReplicaFacts],
    due: &[NodeId],
    policy: &FailoverPolicy,
    now: DateTime<Utc>,
) -> RestartGate {
    let is_leader = nodes
        .iter()
        .any(|n| &n.id == node && n.role == Role::Leader);
    match cause {
        RestartCause::Hung => RestartGate::Go,
        RestartCause::Dead if is_leader => {
            if best_candidate(nodes, policy, now).is_ok() {
                RestartGate::Wait
            } else {
                RestartGate::Go
            }
        }
        RestartCause::Dead => RestartGate::Go,
        RestartCause::Reboot => {
            let others_in_sync = nodes
                .iter()
                .filter(|n| &n.id != node)
                .all(|n| n.in_sync && alive(n, policy, now));
            if !others_in_sync {
                RestartGate::Wait
            } else if !is_leader {
                RestartGate::Go
            } else if due.iter().any(|d| d != node) {
                RestartGate::Wait
            } else {
                RestartGate::SwitchOverFirst
            }
        }
    }
}

/// Why a broker shows CRITICAL_ACTION_REQUIRED: one `actionsRequired` entry. The codes are
/// Mooring's own (Amazon MQ's documented codes name RabbitMQ alarms), prefixed so that no
/// one mistakes them for Amazon's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActionRequired {
    /// The broker serves, but losing one more machine would lose confirmed publishes or stop
    /// it: no follower is alive and in sync (or, during a failover, none is left beyond the
    /// one being promoted).
    RedundancyLost,
    /// No node can serve: the leader is gone and no follower is alive and in sync.
    NoLeader,
}

impl ActionRequired {
    /// `actionRequiredCode`.
    pub fn code(self) -> &'static str {
        match self {
            ActionRequired::RedundancyLost => "MOORING_REDUNDANCY_LOST",
            ActionRequired::NoLeader => "MOORING_NO_IN_SYNC_NODE",
        }
    }

    /// The entry an `actionRequiredCode` stands for (as the failover loop records it).
    pub fn from_code(code: &str) -> Option<Self> {
        [ActionRequired::RedundancyLost, ActionRequired::NoLeader]
            .into_iter()
            .find(|a| a.code() == code)
    }

    /// `actionRequiredInfo`.
    pub fn info(self) -> &'static str {
        match self {
            ActionRequired::RedundancyLost => {
                "The broker runs without an in-sync standby; it is being repaired. Another \
                 failure before the repair completes would interrupt it."
            }
            ActionRequired::NoLeader => {
                "No node holds every confirmed message and can lead; nothing was promoted, to \
                 avoid losing confirmed messages. Bring the previous leader back, or reboot."
            }
        }
    }
}

/// The status a running broker shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HonestStatus {
    Running,
    CriticalActionRequired(ActionRequired),
}

/// RUNNING only while the broker can lose a machine without losing a confirmed publish: a
/// serving leader and, for replicated brokers, a follower alive and in sync. While a
/// failover is under way the status already describes the broker after it: the promoted
/// follower leads, so one more eligible follower is needed for redundancy. A single-instance
/// broker never had redundancy: it is RUNNING whenever its node is.
pub fn honest_status(
    replicated: bool,
    nodes: &[ReplicaFacts],
    lease: Option<Lease>,
    policy: &FailoverPolicy,
    now: DateTime<Utc>,
) -> HonestStatus {
    let leader_alive = nodes
        .iter()
        .any(|n| n.role == Role::Leader && alive(n, policy, now));
    let eligible_followers = nodes.iter().filter(|n| eligible(n, policy, now)).count();
    if !replicated {
        return if leader_alive {
            HonestStatus::Running
        } else {
            HonestStatus::CriticalActionRequired(ActionRequired::NoLeader)
        };
    }
    let leader_serving = leader_alive && lease_held(lease, now);
    // Followers left to stand by once someone leads.
    let standby = if leader_serving {
        eligible_followers
    } else if eligible_followers > 0 {
        eligible_followers - 1
    } else {
        return HonestStatus::CriticalActionRequired(ActionRequired::NoLeader);
    };
    if standby > 0 {
        HonestStatus::Running
    } else {
        HonestStatus::CriticalActionRequired(ActionRequired::RedundancyLost)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .expect("valid")
            .with_timezone(&Utc)
    }

    fn ms(n: i64) -> TimeDelta {
        TimeDelta::milliseconds(n)
    }

    fn id(s: &str) -> NodeId {
        NodeId(s.into())
    }

    /// A node heard from `hb_ago_ms` ago (None: never).
    fn node(
        name: &str,
        zone: &str,
        role: Role,
        in_sync: bool,
        pos: (u64, u64),
        hb_ago_ms: Option<i64>,
    ) -> ReplicaFacts {
        ReplicaFacts {
            id: id(name),
            zone: zone.into(),
            role,
            in_sync,
            acked: LogPosition {
                epoch: pos.0,
                offset: pos.1,
            },
            last_heartbeat: hb_ago_ms.map(|a| now() - ms(a)),
        }
    }

    use Role::{Follower as F, Leader as L};

    fn lease(expires_in_ms: i64) -> Option<Lease> {
        Some(Lease {
            expires_at: now() + ms(expires_in_ms),
            released: false,
        })
    }

    #[test]
    fn failover_decisions() {
        use LeadershipDecision::*;
        let p = FailoverPolicy::default(); // heartbeat timeout 1.5 s, drift margin 250 ms
        let cases = [
            (
                "leader alive with its lease",
                vec![
                    node("a", "z-a", L, true, (3, 10), Some(100)),
                    node("b", "z-b", F, true, (3, 10), Some(100)),
                ],
                lease(2_000),
                Healthy,
            ),
            (
                "leader silent, lease still running: wait for expiry plus margin",
                vec![
                    node("a", "z-a", L, true, (3, 10), Some(3_000)),
                    node("b", "z-b", F, true, (3, 10), Some(100)),
                ],
                lease(500),
                WaitForLeaseExpiry {
                    until: now() + ms(750),
                },
            ),
            (
                "lease expired 100 ms ago: still inside the drift margin",
                vec![
                    node("a", "z-a", L, true, (3, 10), Some(3_000)),
                    node("b", "z-b", F, true, (3, 10), Some(100)),
                ],
                lease(-100),
                WaitForLeaseExpiry {
                    until: now() + ms(150),
                },
            ),
            (
                "lease surely expired: promote the only in-sync follower, next epoch",
                vec![
                    node("a", "z-a", L, true, (3, 10), Some(3_000)),
                    node("b", "z-b", F, true, (3, 10), Some(100)),
                ],
                lease(-250),
                Promote {
                    node: id("b"),
                    new_epoch: 4,
                },
            ),
            (
                "heartbeats fresh but the lease lapsed (renewal refused): the leader stopped \
                 confirming, fail over",
                vec![
                    node("a", "z-a", L, true, (3, 10), Some(100)),
                    node("b", "z-b", F, true, (3, 10), Some(100)),
                ],
                lease(-1_000),
                Promote {
                    node: id("b"),
                    new_epoch: 4,
                },
            ),
            (
                "the most advanced in-sync follower wins",
                vec![
                    node("a", "z-a", L, true, (3, 50), Some(5_000)),
                    node("b", "z-b", F, true, (3, 40), Some(100)),
                    node("c", "z-c", F, true, (3, 41), Some(100)),
                ],
                lease(-1_000),
                Promote {
                    node: id("c"),
                    new_epoch: 4,
                },
            ),
            (
                "a later epoch beats a higher offset",
                vec![
                    node("a", "z-a", L, true, (3, 50), Some(5_000)),
                    node("b", "z-b", F, true, (2, 900), Some(100)),
                    node("c", "z-c", F, true, (3, 1), Some(100)),
                ],
                lease(-1_000),
                Promote {
                    node: id("c"),
                    new_epoch: 4,
                },
            ),
            (
                "an out-of-sync follower is never chosen, however advanced it claims to be",
                vec![
                    node("a", "z-a", L, true, (3, 50), Some(5_000)),
                    node("b", "z-b", F, false, (3, 99), Some(100)),
                    node("c", "z-c", F, true, (3, 40), Some(100)),
                ],
                lease(-1_000),
                Promote {
                    node: id("c"),
                    new_epoch: 4,
                },
            ),
            (
                "a dead in-sync follower is not chosen",
                vec![
                    node("a", "z-a", L, true, (3, 50), Some(5_000)),
                    node("b", "z-b", F, true, (3, 50), Some(5_000)),
                    node("c", "z-c", F, true, (3, 40), Some(100)),
                ],
                lease(-1_000),
                Promote {
                    node: id("c"),
                    new_epoch: 4,
                },
            ),
            (
                "a tie goes to the first zone, whatever the node order",
                vec![
                    node("a", "z-a", L, true, (3, 50), None),
                    node("c", "z-b", F, true, (3, 50), Some(100)),
                    node("b", "z-c", F, true, (3, 50), Some(100)),
                ],
                lease(-1_000),
                Promote {
                    node: id("c"),
                    new_epoch: 4,
                },
            ),
            (
                "no in-sync follower: nothing promoted, an operator is needed",
                vec![
                    node("a", "z-a", L, true, (3, 50), Some(5_000)),
                    node("b", "z-b", F, false, (3, 50), Some(100)),
                ],
                lease(-1_000),
                NoCandidate {
                    reason: NoCandidateReason::NoInSyncFollower,
                },
            ),
            (
                "no in-sync follower is reported before the lease runs out",
                vec![
                    node("a", "z-a", L, true, (3, 50), Some(5_000)),
                    node("b", "z-b", F, false, (3, 50), Some(100)),
                ],
                lease(1_000),
                NoCandidate {
                    reason: NoCandidateReason::NoInSyncFollower,
                },
            ),
            (
                "single instance whose node died: no follower",
                vec![node("a", "z-a", L, true, (1, 5), Some(5_000))],
                lease(-1_000),
                NoCandidate {
                    reason: NoCandidateReason::NoFollower,
                },
            ),
            (
                "just promoted, no lease granted yet: not promoted again",
                vec![
                    node("a", "z-a", F, true, (3, 10), Some(5_000)),
                    node("b", "z-b", L, true, (3, 10), Some(100)),
                    node("c", "z-c", F, true, (3, 10), Some(100)),
                ],
                None,
                Healthy,
            ),
            (
                "just promoted, then silent before any lease: the next in-sync follower, at once",
                vec![
                    node("a", "z-a", F, true, (3, 10), Some(5_000)),
                    node("b", "z-b", L, true, (3, 10), Some(5_000)),
                    node("c", "z-c", F, true, (3, 10), Some(100)),
                ],
                None,
                Promote {
                    node: id("c"),
                    new_epoch: 4,
                },
            ),
            (
                "no leader recorded and no lease ever granted: promote at once",
                vec![
                    node("a", "z-a", F, true, (1, 0), Some(100)),
                    node("b", "z-b", F, true, (1, 0), Some(100)),
                ],
                None,
                Promote {
                    node: id("a"),
                    new_epoch: 4,
                },
            ),
        ];
        for (why, nodes, lease, want) in cases {
            assert_eq!(
                decide_leadership(&Intent::KeepLed, 3, &nodes, lease, &p, now()),
                want,
                "{why}"
            );
        }
    }

    #[test]
    fn switchover_decisions() {
        use LeadershipDecision::*;
        let p = FailoverPolicy::default();
        let cluster = |b_in_sync: bool, a_hb: Option<i64>| {
            vec![
                node("a", "z-a", L, true, (3, 50), a_hb),
                node("b", "z-b", F, b_in_sync, (3, 40), Some(100)),
                node("c", "z-c", F, true, (3, 50), Some(100)),
            ]
        };
        let released = Some(Lease {
            expires_at: now() + ms(2_000),
            released: true,
        });
        let to = |s: &str| Intent::SwitchoverTo(id(s));
        let cases = [
            (
                "leader alive: it steps down first, even for a less advanced target",
                to("b"),
                cluster(true, Some(100)),
                lease(2_000),
                StepDown { node: id("a") },
            ),
            (
                "lease released: promote the chosen target, not the most advanced",
                to("b"),
                cluster(true, Some(100)),
                released,
                Promote {
                    node: id("b"),
                    new_epoch: 4,
                },
            ),
            (
                "leader died during the switchover: wait out its lease like a failover",
                to("b"),
                cluster(true, Some(5_000)),
                lease(300),
                WaitForLeaseExpiry {
                    until: now() + ms(550),
                },
            ),
            (
                "target out of sync: refused",
                to("b"),
                cluster(false, Some(100)),
                lease(2_000),
                Refused(SwitchoverRefusal::TargetNotInSync(id("b"))),
            ),
            (
                "unknown target: refused",
                to("zz"),
                cluster(true, Some(100)),
                lease(2_000),
                Refused(SwitchoverRefusal::UnknownNode(id("zz"))),
            ),
            (
                "target already leads: done",
                to("a"),
                cluster(true, Some(100)),
                lease(2_000),
                Healthy,
            ),
        ];
        for (why, intent, nodes, lease, want) in cases {
            assert_eq!(
                decide_leadership(&intent, 3, &nodes, lease, &p, now()),
                want,
                "{why}"
            );
        }
    }

    #[test]
    fn statuses() {
        use ActionRequired::*;
        use HonestStatus::*;
        let p = FailoverPolicy::default();
        let cases = [
            (
                "replicated, leader and an in-sync follower",
                true,
                vec![
                    node("a", "z-a", L, true, (1, 1), Some(100)),
                    node("b", "z-b", F, true, (1, 1), Some(100)),
                ],
                lease(1_000),
                Running,
            ),
            (
                "replicated, follower out of sync",
                true,
                vec![
                    node("a", "z-a", L, true, (1, 1), Some(100)),
                    node("b", "z-b", F, false, (1, 1), Some(100)),
                ],
                lease(1_000),
                CriticalActionRequired(RedundancyLost),
            ),
            (
                "replicated, follower dead",
                true,
                vec![
                    node("a", "z-a", L, true, (1, 1), Some(100)),
                    node("b", "z-b", F, true, (1, 1), Some(9_000)),
                ],
                lease(1_000),
                CriticalActionRequired(RedundancyLost),
            ),
            (
                "replicated, leader gone, nobody can lead",
                true,
                vec![
                    node("a", "z-a", L, true, (1, 1), Some(9_000)),
                    node("b", "z-b", F, false, (1, 1), Some(100)),
                ],
                lease(-1_000),
                CriticalActionRequired(NoLeader),
            ),
            (
                "cluster mid-failover: one follower leads next, another stands by",
                true,
                vec![
                    node("a", "z-a", L, true, (1, 1), Some(9_000)),
                    node("b", "z-b", F, true, (1, 1), Some(100)),
                    node("c", "z-c", F, true, (1, 1), Some(100)),
                ],
                lease(-1_000),
                Running,
            ),
            (
                "active/standby mid-failover: the standby leads next, none is left",
                true,
                vec![
                    node("a", "z-a", L, true, (1, 1), Some(9_000)),
                    node("b", "z-b", F, true, (1, 1), Some(100)),
                ],
                lease(-1_000),
                CriticalActionRequired(RedundancyLost),
            ),
            (
                "replicated, leader's lease lapsed though it heartbeats: not serving",
                true,
                vec![
                    node("a", "z-a", L, true, (1, 1), Some(100)),
                    node("b", "z-b", F, true, (1, 1), Some(100)),
                ],
                lease(-1),
                CriticalActionRequired(RedundancyLost),
            ),
            (
                "single instance running: no redundancy expected",
                false,
                vec![node("a", "z-a", L, true, (1, 1), Some(100))],
                None,
                Running,
            ),
            (
                "single instance silent",
                false,
                vec![node("a", "z-a", L, true, (1, 1), Some(9_000))],
                None,
                CriticalActionRequired(NoLeader),
            ),
        ];
        for (why, replicated, nodes, lease, want) in cases {
            assert_eq!(
                honest_status(replicated, &nodes, lease, &p, now()),
                want,
                "{why}"
            );
        }
    }

    #[test]
    fn rolling_restart_gates() {
        use RestartCause::*;
        use RestartGate::*;
        let p = FailoverPolicy::default();
        let healthy = vec![
            node("a", "z-a", L, true, (3, 10), Some(100)),
            node("b", "z-b", F, true, (3, 10), Some(100)),
            node("c", "z-c", F, true, (3, 10), Some(100)),
        ];
        let mut b_catching_up = healthy.clone();
        b_catching_up[1].in_sync = false;
        let mut b_silent = healthy.clone();
        b_silent[1].last_heartbeat = Some(now() - ms(5_000));
        let mut only_leader = healthy.clone();
        only_leader[1].in_sync = false;
        only_leader[2].in_sync = false;
        let all = [id("a"), id("b"), id("c")];
        let just_a = [id("a")];
        let a_and_c = [id("a"), id("c")];
        type Case<'a> = (
            &'a str,
            &'a str,
            RestartCause,
            &'a Vec<ReplicaFacts>,
            &'a [NodeId],
            RestartGate,
        );
        let cases: Vec<Case<'_>> = vec![
            ("a follower first", "b", Reboot, &healthy, &all, Go),
            (
                "the leader waits for the followers",
                "a",
                Reboot,
                &healthy,
                &all,
                Wait,
            ),
            (
                "then switches over",
                "a",
                Reboot,
                &healthy,
                &just_a,
                SwitchOverFirst,
            ),
            (
                "the next follower waits until the first is back in sync",
                "c",
                Reboot,
                &b_catching_up,
                &a_and_c,
                Wait,
            ),
            ("or back alive", "c", Reboot, &b_silent, &a_and_c, Wait),
            (
                "a dead leader waits for the failover",
                "a",
                Dead,
                &healthy,
                &[],
                Wait,
            ),
            (
                "a dead leader nobody can replace is started",
                "a",
                Dead,
                &only_leader,
                &[],
                Go,
            ),
            ("a dead follower is started", "b", Dead, &healthy, &[], Go),
            (
                "a hung node is restarted at once",
                "a",
                Hung,
                &healthy,
                &[],
                Go,
            ),
        ];
        for (why, n, cause, nodes, due, want) in cases {
            assert_eq!(
                restart_gate(&id(n), cause, nodes, due, &p, now()),
                want,
                "{why}"
            );
        }
    }

    fn arb_node(i: usize) -> impl Strategy<Value = ReplicaFacts> {
        (
            any::<bool>(),
            0u64..3,
            0u64..4,
            prop::option::of(0i64..3_000),
            0usize..3,
        )
            .prop_map(move |(in_sync, epoch, offset, hb, zone)| ReplicaFacts {
                id: NodeId(format!("n{i}")),
                zone: format!("z{zone}"),
                role: Role::Follower,
                in_sync,
                acked: LogPosition { epoch, offset },
                last_heartbeat: hb.map(|a| now() - ms(a)),
            })
    }

    proptest! {
        /// Whatever the followers, the promoted node is alive, in sync, behind no other live
        /// in-sync follower, the same whatever the order of the list, and the epoch grows.
        #[test]
        fn promoted_node_is_in_sync_and_most_advanced(
            followers in (arb_node(1), arb_node(2), arb_node(3), arb_node(4)),
            rotate in 0usize..4,
        ) {
            let p = FailoverPolicy::default();
            let mut nodes = vec![
                node("n0", "z0", L, true, (2, 9), None),
                followers.0, followers.1, followers.2, followers.3,
            ];
            let decision = decide_leadership(&Intent::KeepLed, 7, &nodes, lease(-10_000), &p, now());
            nodes.rotate_left(rotate);
            let again = decide_leadership(&Intent::KeepLed, 7, &nodes, lease(-10_000), &p, now());
            prop_assert_eq!(&decision, &again);
            let live_in_sync: Vec<&ReplicaFacts> = nodes
                .iter()
                .filter(|n| n.role == F && n.in_sync && alive(n, &p, now()))
                .collect();
            match decision {
                LeadershipDecision::Promote { node, new_epoch } => {
                    prop_assert_eq!(new_epoch, 8);
                    let chosen = nodes.iter().find(|n| n.id == node).expect("promoted a known node");
                    prop_assert!(chosen.in_sync && chosen.role == F && alive(chosen, &p, now()));
                    prop_assert!(live_in_sync.iter().all(|n| n.acked <= chosen.acked));
                }
                LeadershipDecision::NoCandidate { reason } => {
                    prop_assert_eq!(reason, NoCandidateReason::NoInSyncFollower);
                    prop_assert!(live_in_sync.is_empty());
                }
                other => prop_assert!(false, "unexpected {:?}", other),
            }
        }

        /// The safety rule, for failovers and switchovers alike: a promotion names an alive,
        /// in-sync follower, bumps the epoch by one, and never happens while the old lease
        /// might still let the old leader confirm.
        #[test]
        fn never_promotes_under_a_live_lease(
            followers in (arb_node(1), arb_node(2)),
            leader_hb in prop::option::of(0i64..3_000),
            // Mostly unreleased leases near their expiry, where the drift margin matters.
            lease_ms in prop::option::weighted(0.9, (-1_000i64..1_000, prop::bool::weighted(0.2))),
            switch_to in prop::option::of(0usize..4),
        ) {
            let p = FailoverPolicy::default();
            let nodes = vec![
                node("n0", "z0", L, true, (2, 9), leader_hb),
                followers.0,
                followers.1,
            ];
            let lease = lease_ms.map(|(ms_left, released)| Lease {
                expires_at: now() + ms(ms_left),
                released,
            });
            let intent = match switch_to {
                Some(i) => Intent::SwitchoverTo(NodeId(format!("n{i}"))),
                None => Intent::KeepLed,
            };
            let decision = decide_leadership(&intent, 5, &nodes, lease, &p, now());
            match decision {
                LeadershipDecision::Promote { node, new_epoch } => {
                    prop_assert_eq!(new_epoch, 6);
                    let chosen = nodes.iter().find(|n| n.id == node).expect("known node");
                    prop_assert!(chosen.role == F && chosen.in_sync && alive(chosen, &p, now()));
                    if let Intent::SwitchoverTo(to) = &intent {
                        prop_assert_eq!(&node, to);
                    }
                    let lease_over = lease
                        .is_none_or(|l| l.released || now() >= l.expires_at + p.clock_drift_margin);
                    prop_assert!(lease_over, "promoted under a live lease: {:?}", lease);
                }
                LeadershipDecision::WaitForLeaseExpiry { until } => {
                    prop_assert!(until > now());
                }
                _ => {}
            }
        }
    }
}
