//! What to patch next on a broker (DESIGN.md decision 8): every disruptive change is a
//! pending action with a scheduled time; in the window, or at once when asked, a replicated
//! broker is patched one node at a time — followers first, each waited on until back in
//! sync, then a switchover (promote before stop), then the old leader.
//!
//! A started rolling restart is finished even if the window closes meanwhile: a broker left
//! half on one version and half on another until next week is worse than a late step.

use super::failover::{alive, best_candidate, FailoverPolicy, ReplicaFacts, Role};
use chrono::{DateTime, Utc};
use mooring_agent_protocol::NodeId;

/// A change that needs the broker's nodes restarted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PendingKind {
    EngineVersion {
        to: String,
    },
    InstanceType {
        to: String,
    },
    /// A configuration revision whose settings only take effect at a restart.
    ConfigurationRevision {
        revision: i64,
    },
    AgentVersion {
        to: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingAction {
    pub kind: PendingKind,
    /// When it is due, as DescribeBroker shows it; `None` until first scheduled.
    pub scheduled_at: Option<DateTime<Utc>>,
}

/// One node, as maintenance sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatchNode {
    /// Role, in-sync flag, position and heartbeat, as for failover.
    pub replica: ReplicaFacts,
    /// The node runs what the pending actions ask for (version, instance type, configuration
    /// revision, agent): the reconciler compares the node's reported state with the target.
    pub patched: bool,
}

/// What allows maintenance to start now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trigger {
    /// The broker's weekly window is open at `now` ([`super::window::is_open`]).
    pub window_open: bool,
    /// RebootBroker or apply-immediately: act now, window or not, past the fleet limit and
    /// the pause (those brake automatic maintenance, not a user's own request).
    pub apply_now: bool,
    /// This broker's maintenance has already started (a node was restarted for it): it goes
    /// on after the window closes and past the fleet limit, but stops while paused.
    pub in_progress: bool,
}

/// Fleet-wide brakes, from configuration and the operator's switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FleetGate {
    /// Stops window-driven maintenance everywhere (explicit user requests still run: a
    /// RebootBroker is the user's own decision, as on Amazon MQ).
    pub paused: bool,
    pub max_in_maintenance: usize,
    /// Brokers other than this one with maintenance in progress.
    pub in_maintenance_elsewhere: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MaintenanceStep {
    Nothing,
    /// Record `at` as the scheduled time of the actions that have none.
    Schedule {
        at: DateTime<Utc>,
    },
    /// Restart this follower on the target. Until the node reports the target, the same step
    /// comes back: the reconciler makes it idempotent by recording the target in the node's
    /// desired configuration (a new generation) rather than by counting restarts.
    RestartFollower {
        node: NodeId,
    },
    /// A node is not back (ready and, for a follower, in sync); touch nothing else.
    WaitUntilInSync {
        node: NodeId,
    },
    /// Every follower is patched: move leadership to `to` (through the failover planner).
    Switchover {
        to: NodeId,
    },
    /// The node that led before the switchover, now a follower, is restarted last.
    RestartOldLeader {
        node: NodeId,
    },
    /// A single-instance broker restarts on its data directory.
    RestartSingleInstance {
        node: NodeId,
    },
    /// Every node runs the target: clear the pending actions and record the event.
    Done,
}

/// Serving again after a restart: alive and, for a follower, back in the in-sync set.
fn back(n: &PatchNode, policy: &FailoverPolicy, now: DateTime<Utc>) -> bool {
    alive(&n.replica, policy, now) && (n.replica.role == Role::Leader || n.replica.in_sync)
}

fn order(a: &&PatchNode, b: &&PatchNode) -> std::cmp::Ordering {
    (&a.replica.zone, &a.replica.id.0).cmp(&(&b.replica.zone, &b.replica.id.0))
}

/// The next maintenance step for one broker at `now`. `next_window_start` comes from
/// [`super::window::next_start`].
pub fn next_step(
    pending: &[PendingAction],
    nodes: &[PatchNode],
    trigger: Trigger,
    fleet: FleetGate,
    next_window_start: DateTime<Utc>,
    policy: &FailoverPolicy,
    now: DateTime<Utc>,
) -> MaintenanceStep {
    use MaintenanceStep::*;
    if pending.is_empty() {
        return Nothing;
    }
    // Scheduling only records a time, so it happens even while maintenance is paused: the
    // pending action is visible in DescribeBroker as soon as it exists.
    if pending.iter().any(|p| p.scheduled_at.is_none()) {
        let at = if trigger.apply_now || trigger.window_open {
            now
        } else {
            next_window_start
        };
        return Schedule { at };
    }
    let due = pending
        .iter()
        .filter_map(|p| p.scheduled_at)
        .min()
        .is_some_and(|at| at <= now);
    let may_start = !fleet.paused
        && trigger.window_open
        && due
        && fleet.in_maintenance_elsewhere < fleet.max_in_maintenance;
    let may_act = trigger.apply_now || (trigger.in_progress && !fleet.paused) || may_start;
    if !may_act {
        return Nothing;
    }

    let mut sorted: Vec<&PatchNode> = nodes.iter().collect();
    sorted.sort_by(order);
    // Never take a node down while another is not back: that would cost the redundancy the
    // rolling restart exists to keep.
    if let Some(n) = sorted.iter().find(|n| !back(n, policy, now)) {
        return WaitUntilInSync {
            node: n.replica.id.clone(),
        };
    }
    let Some(leader) = sorted.iter().find(|n| n.replica.role == Role::Leader) else {
        // Leaderless: failover's business first.
        return Nothing;
    };
    if sorted.len() == 1 {
        return if leader.patched {
            Done
        } else {
            RestartSingleInstance {
                node: leader.replica.id.clone(),
            }
        };
    }
    if let Some(f) = sorted
        .iter()
        .find(|n| n.replica.role == Role::Follower && !n.patched)
    {
        // The leader only runs the target after a switchover, so an unpatched follower
        // next to a patched leader is the node that led before.
        let node = f.replica.id.clone();
        return if leader.patched {
            RestartOldLeader { node }
        } else {
            RestartFollower { node }
        };
    }
    if !leader.patched {
        let replicas: Vec<ReplicaFacts> = sorted.iter().map(|n| n.replica.clone()).collect();
        return match best_candidate(&replicas, policy, now) {
            Ok(to) => Switchover { to: to.id.clone() },
            // Unreachable after the in-sync check above; waiting is the safe answer.
            Err(_) => Nothing,
        };
    }
    Done
}

/// A version as `major.minor[.patch]`; a missing patch is 0.
fn parse_version(v: &str) -> Option<(u32, u32, u32)> {
    let mut parts = v.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    let patch = match parts.next() {
        Some(p) => p.parse().ok()?,
        None => 0,
    };
    parts.next().is_none().then_some((major, minor, patch))
}

/// The version `autoMinorVersionUpgrade` moves a broker on `current` to, if any.
///
/// Amazon MQ calls a change of minor *or* patch number a "minor version upgrade", but the
/// flag only applies patches: its API documentation says "automatic upgrades to new patch
/// versions", and for RabbitMQ 3.13 and later Amazon MQ "manages upgrades to the latest
/// supported patch version". A move to the next minor (3.12 -> 3.13) happens only when the
/// current minor reaches end of support, and RabbitMQ forbids skipping a minor. So: the
/// newest catalog version with the same major.minor that is newer than `current`.
pub fn auto_minor_upgrade<'a>(
    catalog: impl IntoIterator<Item = &'a str>,
    current: &str,
) -> Option<&'a str> {
    let cur = parse_version(current)?;
    catalog
        .into_iter()
        .filter_map(|v| parse_version(v).map(|p| (p, v)))
        .filter(|(p, _)| p.0 == cur.0 && p.1 == cur.1 && *p > cur)
        .max_by_key(|(p, _)| *p)
        .map(|(_, v)| v)
}

/// The pending action auto minor version upgrade adds, unless one for that version exists.
pub fn auto_upgrade_action<'a>(
    enabled: bool,
    catalog: impl IntoIterator<Item = &'a str>,
    current: &str,
    pending: &[PendingAction],
) -> Option<PendingKind> {
    if !enabled {
        return None;
    }
    let to = auto_minor_upgrade(catalog, current)?;
    let kind = PendingKind::EngineVersion { to: to.to_owned() };
    (!pending.iter().any(|p| p.kind == kind)).then_some(kind)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::failover::LogPosition;
    use crate::plan::window::{is_open, next_start, parse_window, MaintenanceWindow};
    use chrono::TimeDelta;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("valid")
            .with_timezone(&Utc)
    }

    fn now() -> DateTime<Utc> {
        t("2026-01-05T02:30:00Z")
    }

    fn id(s: &str) -> NodeId {
        NodeId(s.into())
    }

    /// `spec`: `L`/`F` role, then flags: `p` patched, `s` in sync, `d` dead.
    fn n(name: &str, spec: &str) -> PatchNode {
        let role = if spec.starts_with('L') {
            Role::Leader
        } else {
            Role::Follower
        };
        PatchNode {
            replica: ReplicaFacts {
                id: id(name),
                zone: format!("z-{name}"),
                role,
                in_sync: spec.contains('s') || role == Role::Leader,
                acked: LogPosition {
                    epoch: 1,
                    offset: 10,
                },
                last_heartbeat: (!spec.contains('d')).then(|| now() - TimeDelta::milliseconds(100)),
            },
            patched: spec.contains('p'),
        }
    }

    fn upgrade(at: Option<&str>) -> Vec<PendingAction> {
        vec![PendingAction {
            kind: PendingKind::EngineVersion {
                to: "3.13.2".into(),
            },
            scheduled_at: at.map(t),
        }]
    }

    const OPEN: Trigger = Trigger {
        window_open: true,
        apply_now: false,
        in_progress: false,
    };
    const CLOSED: Trigger = Trigger {
        window_open: false,
        apply_now: false,
        in_progress: false,
    };
    const RUNNING_ON: Trigger = Trigger {
        window_open: false,
        apply_now: false,
        in_progress: true,
    };
    const REBOOT: Trigger = Trigger {
        window_open: false,
        apply_now: true,
        in_progress: false,
    };
    const FREE: FleetGate = FleetGate {
        paused: false,
        max_in_maintenance: 2,
        in_maintenance_elsewhere: 0,
    };
    const FULL: FleetGate = FleetGate {
        paused: false,
        max_in_maintenance: 2,
        in_maintenance_elsewhere: 2,
    };
    const PAUSED: FleetGate = FleetGate {
        paused: true,
        max_in_maintenance: 2,
        in_maintenance_elsewhere: 0,
    };

    #[test]
    fn steps() {
        use MaintenanceStep::*;
        let next_window = t("2026-01-12T02:00:00Z");
        let due = Some("2026-01-05T02:00:00Z");
        let cases = [
            (
                "nothing pending",
                vec![],
                vec![n("a", "L")],
                OPEN,
                FREE,
                Nothing,
            ),
            (
                "new action, window closed: scheduled at the next window",
                upgrade(None),
                vec![n("a", "L")],
                CLOSED,
                FREE,
                Schedule { at: next_window },
            ),
            (
                "new action, window open: scheduled now",
                upgrade(None),
                vec![n("a", "L")],
                OPEN,
                FREE,
                Schedule { at: now() },
            ),
            (
                "new action while paused: still scheduled (visible)",
                upgrade(None),
                vec![n("a", "L")],
                CLOSED,
                PAUSED,
                Schedule { at: next_window },
            ),
            (
                "scheduled, window closed: untouched",
                upgrade(Some("2026-01-12T02:00:00Z")),
                vec![n("a", "L"), n("b", "Fs")],
                CLOSED,
                FREE,
                Nothing,
            ),
            (
                "window open but the action is due at a later window (the window was moved \
                 after scheduling): it waits for its time",
                upgrade(Some("2026-01-12T02:00:00Z")),
                vec![n("a", "L"), n("b", "Fs")],
                OPEN,
                FREE,
                Nothing,
            ),
            (
                "single instance, window open: restart on its data",
                upgrade(due),
                vec![n("a", "L")],
                OPEN,
                FREE,
                RestartSingleInstance { node: id("a") },
            ),
            (
                "single instance restarting: wait",
                upgrade(due),
                vec![n("a", "Lpd")],
                RUNNING_ON,
                FREE,
                WaitUntilInSync { node: id("a") },
            ),
            (
                "single instance back on the target: done",
                upgrade(due),
                vec![n("a", "Lp")],
                RUNNING_ON,
                FREE,
                Done,
            ),
            (
                "cluster: followers first, in zone order",
                upgrade(due),
                vec![n("a", "L"), n("c", "Fs"), n("b", "Fs")],
                OPEN,
                FREE,
                RestartFollower { node: id("b") },
            ),
            (
                "cluster: a restarted follower not yet in sync is waited on",
                upgrade(due),
                vec![n("a", "L"), n("b", "Fp"), n("c", "Fs")],
                RUNNING_ON,
                FREE,
                WaitUntilInSync { node: id("b") },
            ),
            (
                "cluster: next follower once the first is back, window closed meanwhile",
                upgrade(due),
                vec![n("a", "L"), n("b", "Fps"), n("c", "Fs")],
                RUNNING_ON,
                FREE,
                RestartFollower { node: id("c") },
            ),
            (
                "cluster: followers patched, switch over to the most advanced (tie: zone)",
                upgrade(due),
                vec![n("a", "L"), n("b", "Fps"), n("c", "Fps")],
                RUNNING_ON,
                FREE,
                Switchover { to: id("b") },
            ),
            (
                "cluster: after the switchover, the old leader is restarted",
                upgrade(due),
                vec![n("a", "Fs"), n("b", "Lp"), n("c", "Fps")],
                RUNNING_ON,
                FREE,
                RestartOldLeader { node: id("a") },
            ),
            (
                "cluster: old leader restarted, catching up",
                upgrade(due),
                vec![n("a", "Fp"), n("b", "Lp"), n("c", "Fps")],
                RUNNING_ON,
                FREE,
                WaitUntilInSync { node: id("a") },
            ),
            (
                "cluster: everything patched and in sync: done",
                upgrade(due),
                vec![n("a", "Fps"), n("b", "Lp"), n("c", "Fps")],
                RUNNING_ON,
                FREE,
                Done,
            ),
            (
                "active/standby: an out-of-sync standby blocks the start",
                upgrade(due),
                vec![n("a", "L"), n("b", "F")],
                OPEN,
                FREE,
                WaitUntilInSync { node: id("b") },
            ),
            (
                "fleet limit reached: does not start",
                upgrade(due),
                vec![n("a", "L"), n("b", "Fs")],
                OPEN,
                FULL,
                Nothing,
            ),
            (
                "fleet limit reached: a started broker finishes",
                upgrade(due),
                vec![n("a", "L"), n("b", "Fps")],
                RUNNING_ON,
                FULL,
                Switchover { to: id("b") },
            ),
            (
                "paused: nothing starts",
                upgrade(due),
                vec![n("a", "L"), n("b", "Fs")],
                OPEN,
                PAUSED,
                Nothing,
            ),
            (
                "paused: a started broker stops between steps",
                upgrade(due),
                vec![n("a", "L"), n("b", "Fps")],
                RUNNING_ON,
                PAUSED,
                Nothing,
            ),
            (
                "RebootBroker: at once, outside the window, paused or not",
                upgrade(Some("2026-01-12T02:00:00Z")),
                vec![n("a", "L"), n("b", "Fs")],
                REBOOT,
                PAUSED,
                RestartFollower { node: id("b") },
            ),
            (
                "leaderless broker: failover first",
                upgrade(due),
                vec![n("a", "Fs"), n("b", "Fs")],
                OPEN,
                FREE,
                Nothing,
            ),
        ];
        for (why, pending, nodes, trigger, fleet, want) in cases {
            assert_eq!(
                next_step(
                    &pending,
                    &nodes,
                    trigger,
                    fleet,
                    next_window,
                    &FailoverPolicy::default(),
                    now()
                ),
                want,
                "{why}"
            );
        }
    }

    /// The scenario on an injected clock: a new catalog version makes a pending
    /// action, visible with its scheduled time; nothing moves until the window opens (Paris,
    /// Monday 03:00 = 02:00 UTC in January); then the broker is patched node by node and the
    /// action is gone. A broker whose window is elsewhere is untouched.
    #[test]
    fn rolling_upgrade_through_a_window() {
        use MaintenanceStep::*;
        let p = FailoverPolicy::default();
        let window = parse_window("MONDAY", "03:00", "Europe/Paris").expect("valid");
        let other = parse_window("THURSDAY", "03:00", "Europe/Paris").expect("valid");
        let catalog = ["3.12.9", "3.13.1", "3.13.2", "4.0.1"];
        let found = t("2026-01-03T12:00:00Z"); // Saturday

        let mut pending = Vec::new();
        let kind = auto_upgrade_action(true, catalog, "3.13.1", &pending).expect("an upgrade");
        assert_eq!(
            kind,
            PendingKind::EngineVersion {
                to: "3.13.2".into()
            }
        );
        pending.push(PendingAction {
            kind,
            scheduled_at: None,
        });
        assert_eq!(auto_upgrade_action(true, catalog, "3.13.1", &pending), None);

        let cluster = |spec: [&str; 3]| -> Vec<PatchNode> {
            ["a", "b", "c"]
                .iter()
                .zip(spec)
                .map(|(name, s)| n(name, s))
                .collect()
        };
        let step = |pending: &[PendingAction],
                    w: &MaintenanceWindow,
                    nodes: &[PatchNode],
                    in_progress: bool,
                    at: DateTime<Utc>| {
            let trigger = Trigger {
                window_open: is_open(w, at),
                apply_now: false,
                in_progress,
            };
            // Heartbeats in `n` are relative to the fixed `now()`, so liveness is judged there;
            // the window is judged at `at`.
            next_step(pending, nodes, trigger, FREE, next_start(w, at), &p, now())
        };

        let idle = cluster(["L", "Fs", "Fs"]);
        let scheduled = step(&pending, &window, &idle, false, found);
        assert_eq!(
            scheduled,
            Schedule {
                at: t("2026-01-05T02:00:00Z")
            }
        );
        if let Schedule { at } = scheduled {
            pending[0].scheduled_at = Some(at);
        }
        // Visible before: the action and its time.
        assert_eq!(pending[0].scheduled_at, Some(t("2026-01-05T02:00:00Z")));
        // Sunday evening: not open yet.
        assert_eq!(
            step(&pending, &window, &idle, false, t("2026-01-04T22:00:00Z")),
            Nothing
        );
        // The other broker, same action, its window closed on Monday: untouched.
        let mut other_pending = pending.clone();
        other_pending[0].scheduled_at = Some(next_start(&other, found));
        assert_eq!(
            step(
                &other_pending,
                &other,
                &idle,
                false,
                t("2026-01-05T02:30:00Z")
            ),
            Nothing
        );

        let in_window = t("2026-01-05T02:30:00Z");
        let script = [
            (
                cluster(["L", "Fs", "Fs"]),
                false,
                RestartFollower { node: id("b") },
            ),
            (
                cluster(["L", "Fp", "Fs"]),
                true,
                WaitUntilInSync { node: id("b") },
            ),
            (
                cluster(["L", "Fps", "Fs"]),
                true,
                RestartFollower { node: id("c") },
            ),
            (
                cluster(["L", "Fps", "Fps"]),
                true,
                Switchover { to: id("b") },
            ),
            (
                cluster(["Fs", "Lp", "Fps"]),
                true,
                RestartOldLeader { node: id("a") },
            ),
            (cluster(["Fps", "Lp", "Fps"]), true, Done),
        ];
        for (nodes, in_progress, want) in script {
            assert_eq!(
                step(&pending, &window, &nodes, in_progress, in_window),
                want
            );
        }
        // Done: the reconciler clears the action; gone after, and nothing more to do.
        pending.clear();
        assert_eq!(
            step(
                &pending,
                &window,
                &cluster(["Fps", "Lp", "Fps"]),
                false,
                in_window
            ),
            Nothing
        );
        assert_eq!(auto_upgrade_action(true, catalog, "3.13.2", &pending), None);
    }

    #[test]
    fn auto_minor_upgrades() {
        let catalog = [
            "3.12.13", "3.13.1", "3.13.7", "3.13.10", "4.0.5", "4.1", "bogus",
        ];
        let cases = [
            (
                "newest patch of the same minor (numeric, not text, order)",
                "3.13.1",
                Some("3.13.10"),
            ),
            ("already newest", "3.13.10", None),
            ("never to the next minor or major", "3.12.13", None),
            (
                "a major.minor without patch counts as .0",
                "4.0",
                Some("4.0.5"),
            ),
            ("4.1 alone is not newer than 4.1.0", "4.1.0", None),
            (
                "not in the catalog itself: still upgraded to its minor's newest",
                "3.13.3",
                Some("3.13.10"),
            ),
            ("unparsable current version: no guess", "three", None),
            (
                "a newer patch of a different minor does not count",
                "3.11.2",
                None,
            ),
        ];
        for (why, current, want) in cases {
            assert_eq!(auto_minor_upgrade(catalog, current), want, "{why}");
        }
        assert_eq!(auto_upgrade_action(false, catalog, "3.13.1", &[]), None);
        assert_eq!(
            auto_upgrade_action(true, catalog, "3.13.1", &[]),
            Some(PendingKind::EngineVersion {
                to: "3.13.10".into()
            })
        );
    }

    proptest::proptest! {
        /// A rolling upgrade driven by the planner alone, on a model broker where a restarted
        /// node comes back when waited on: for any size, leader and half-finished state, it
        /// ends `Done` with every node patched, restarts each unpatched node exactly once,
        /// never restarts the leader or takes a second node down, and switches over (to a
        /// patched, in-sync follower) exactly when the leader still needs the patch.
        #[test]
        fn rolling_upgrade_converges_safely(
            size in 1usize..=3,
            leader in 0usize..3,
            patched in proptest::collection::vec(proptest::bool::ANY, 3),
        ) {
            use MaintenanceStep::*;
            let leader = leader % size;
            let mut nodes: Vec<PatchNode> = (0..size)
                .map(|i| {
                    let mut node = n(&format!("n{i}"), if i == leader { "L" } else { "Fs" });
                    node.patched = patched[i];
                    node
                })
                .collect();
            let must_restart = nodes.iter().filter(|n| !n.patched).count();
            let must_switch = size > 1 && !nodes[leader].patched;
            let pending = upgrade(Some("2026-01-05T02:00:00Z"));
            let p = FailoverPolicy::default();
            let (mut restarts, mut switches, mut started, mut done) = (0, 0, false, false);
            for _ in 0..4 * size + 2 {
                let trigger = Trigger { in_progress: started, ..OPEN };
                let step = next_step(&pending, &nodes, trigger, FREE, now(), &p, now());
                let index = |id: &NodeId| nodes.iter().position(|n| &n.replica.id == id);
                match step {
                    RestartFollower { node } | RestartOldLeader { node } | RestartSingleInstance { node } => {
                        let i = index(&node).expect("a known node");
                        proptest::prop_assert!(nodes.iter().all(|n| back(n, &p, now())));
                        proptest::prop_assert!(
                            nodes[i].replica.role == Role::Follower || size == 1,
                            "restarted the leader of a replicated broker"
                        );
                        proptest::prop_assert!(!nodes[i].patched);
                        nodes[i].patched = true;
                        nodes[i].replica.in_sync = false;
                        nodes[i].replica.last_heartbeat = None;
                        restarts += 1;
                        started = true;
                    }
                    WaitUntilInSync { node } => {
                        let i = index(&node).expect("a known node");
                        proptest::prop_assert!(!back(&nodes[i], &p, now()));
                        nodes[i].replica.in_sync = true;
                        nodes[i].replica.last_heartbeat = Some(now());
                    }
                    Switchover { to } => {
                        let i = index(&to).expect("a known node");
                        proptest::prop_assert!(nodes[i].patched && nodes[i].replica.in_sync);
                        for n in nodes.iter_mut() {
                            n.replica.role = Role::Follower;
                            n.replica.in_sync = true;
                        }
                        nodes[i].replica.role = Role::Leader;
                        switches += 1;
                        started = true;
                    }
                    Done => {
                        done = true;
                        break;
                    }
                    other => proptest::prop_assert!(false, "unexpected {:?}", other),
                }
            }
            proptest::prop_assert!(done, "did not converge: {:?}", nodes);
            proptest::prop_assert!(nodes.iter().all(|n| n.patched));
            proptest::prop_assert_eq!(restarts, must_restart);
            proptest::prop_assert_eq!(switches, usize::from(must_switch));
        }
    }
}
