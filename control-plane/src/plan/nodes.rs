//! Per-node decisions.

use crate::model::DeploymentMode;
use chrono::{DateTime, Utc};
use mooring_agent_protocol::NodeId;
use std::time::Duration;

/// A node's heartbeat older than this no longer counts as "the node is up". Several agent
/// heartbeat intervals, so one lost heartbeat does not flip a broker.
pub const HEARTBEAT_FRESHNESS: Duration = Duration::from_secs(10);

/// A running agent not heard from for this long is restarted: it is hung, or it holds a
/// control-plane address that no longer answers. Counted from the latest of its last
/// heartbeat, its start, and the reconciler's own start (so a control plane that was down
/// does not blame the agents for its absence).
pub const SILENCE_RESTART: Duration = Duration::from_secs(30);

/// A node a broker should have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredNode {
    pub id: NodeId,
    /// 1-based.
    pub ordinal: i32,
    /// Availability-zone label; nodes of one broker get distinct zones.
    pub zone: String,
}

/// How many nodes each deployment mode runs (Amazon MQ's own counts).
pub fn node_count(mode: DeploymentMode) -> i32 {
    match mode {
        DeploymentMode::SingleInstance => 1,
        DeploymentMode::ActiveStandbyMultiAz => 2,
        DeploymentMode::ClusterMultiAz => 3,
    }
}

/// The nodes of a broker: `<broker-id>-<ordinal>`, in zones `<region>a`, `<region>b`, ...
pub fn desired_nodes(broker_id: &str, mode: DeploymentMode, region: &str) -> Vec<DesiredNode> {
    (1..=node_count(mode))
        .map(|ordinal| {
            let zone_letter = char::from(b'a' + u8::try_from(ordinal - 1).unwrap_or(0) % 26);
            DesiredNode {
                id: NodeId(format!("{broker_id}-{ordinal}")),
                ordinal,
                zone: format!("{region}{zone_letter}"),
            }
        })
        .collect()
}

/// What the broker wants of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeGoal {
    /// Run and serve; a node whose latest start predates `reboot_generation` is restarted.
    Serve { reboot_generation: i64 },
    /// Stop and remove everything.
    Remove,
}

/// What is known about a node right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFacts {
    /// The provider sees its process running.
    pub running: bool,
    /// The agent started with the current token has registered.
    pub registered: bool,
    pub engine_ready: bool,
    /// The configuration generation the agent last reported applied (0: none yet, so the
    /// node has no users and cannot serve anyone).
    pub applied_generation: i64,
    pub last_heartbeat: Option<DateTime<Utc>>,
    /// The reboot generation the latest start satisfies.
    pub restart_generation: i64,
    /// The latest of: last heartbeat, latest start, reconciler start.
    pub last_heard: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeAction {
    /// Start the process (first time, or again after it died) on its data.
    Start,
    /// Stop, then start: a reboot was requested after the latest start.
    Restart,
    /// Stop and delete the node's data, then forget it.
    Remove,
    /// Something is in progress (the agent is starting); look again soon.
    Wait,
    /// Converged.
    Nothing,
}

fn silent(last_heard: Option<DateTime<Utc>>, now: DateTime<Utc>) -> bool {
    last_heard.is_some_and(|t| {
        now.signed_duration_since(t)
            .to_std()
            .is_ok_and(|age| age >= SILENCE_RESTART)
    })
}

pub fn heartbeat_fresh(last: Option<DateTime<Utc>>, now: DateTime<Utc>) -> bool {
    last.is_some_and(|t| {
        now.signed_duration_since(t)
            .to_std()
            .map_or(true, |age| age < HEARTBEAT_FRESHNESS)
    })
}

/// Whether the node serves: running, registered since its latest start, engine ready,
/// heard from recently, and restarted since the latest reboot request.
pub fn node_ready(facts: &NodeFacts, reboot_generation: i64, now: DateTime<Utc>) -> bool {
    facts.running
        && facts.registered
        && facts.engine_ready
        && facts.applied_generation > 0
        && heartbeat_fresh(facts.last_heartbeat, now)
        && facts.restart_generation >= reboot_generation
}

pub fn node_action(goal: NodeGoal, facts: &NodeFacts, now: DateTime<Utc>) -> NodeAction {
    match goal {
        NodeGoal::Remove => NodeAction::Remove,
        NodeGoal::Serve { reboot_generation } => {
            if !facts.running {
                NodeAction::Start
            } else if facts.restart_generation < reboot_generation || silent(facts.last_heard, now)
            {
                NodeAction::Restart
            } else if node_ready(facts, reboot_generation, now) {
                NodeAction::Nothing
            } else {
                NodeAction::Wait
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(
        running: bool,
        registered: bool,
        ready: bool,
        hb_age_s: Option<i64>,
        restart: i64,
    ) -> NodeFacts {
        NodeFacts {
            running,
            registered,
            engine_ready: ready,
            applied_generation: if registered { 1 } else { 0 },
            last_heartbeat: hb_age_s.map(|s| now() - chrono::Duration::seconds(s)),
            restart_generation: restart,
            last_heard: hb_age_s
                .map(|s| now() - chrono::Duration::seconds(s))
                .or(Some(now())),
        }
    }

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .expect("valid")
            .with_timezone(&Utc)
    }

    #[test]
    fn node_actions() {
        use NodeAction::*;
        let serve = |rg| NodeGoal::Serve {
            reboot_generation: rg,
        };
        let cases = [
            (
                "never started",
                serve(0),
                facts(false, false, false, None, 0),
                Start,
            ),
            (
                "died",
                serve(0),
                facts(false, true, true, Some(1), 0),
                Start,
            ),
            (
                "starting, not registered",
                serve(0),
                facts(true, false, false, None, 0),
                Wait,
            ),
            (
                "registered, engine not ready",
                serve(0),
                facts(true, true, false, Some(1), 0),
                Wait,
            ),
            (
                "serving",
                serve(0),
                facts(true, true, true, Some(1), 0),
                Nothing,
            ),
            (
                "quiet for a while",
                serve(0),
                facts(true, true, true, Some(20), 0),
                Wait,
            ),
            (
                "silent for too long: hung, or holding a stale address",
                serve(0),
                facts(true, true, true, Some(60), 0),
                Restart,
            ),
            (
                "reboot requested",
                serve(5),
                facts(true, true, true, Some(1), 4),
                Restart,
            ),
            (
                "rebooted",
                serve(5),
                facts(true, true, true, Some(1), 5),
                Nothing,
            ),
            (
                "dead during a reboot",
                serve(5),
                facts(false, true, true, Some(1), 4),
                Start,
            ),
            (
                "remove a running node",
                NodeGoal::Remove,
                facts(true, true, true, Some(1), 0),
                Remove,
            ),
            (
                "remove a dead node",
                NodeGoal::Remove,
                facts(false, false, false, None, 0),
                Remove,
            ),
        ];
        for (name, goal, f, want) in cases {
            assert_eq!(node_action(goal, &f, now()), want, "{name}");
        }
    }

    #[test]
    fn readiness_needs_every_condition() {
        assert!(node_ready(&facts(true, true, true, Some(0), 3), 3, now()));
        assert!(!node_ready(&facts(true, true, true, Some(0), 2), 3, now()));
        assert!(!node_ready(&facts(true, true, true, None, 3), 3, now()));
        assert!(!node_ready(&facts(true, false, true, Some(0), 3), 3, now()));
        assert!(!node_ready(&facts(false, true, true, Some(0), 3), 3, now()));
        let mut unconfigured = facts(true, true, true, Some(0), 3);
        unconfigured.applied_generation = 0;
        assert!(
            !node_ready(&unconfigured, 3, now()),
            "no configuration applied: no users yet"
        );
        // A heartbeat stamped slightly in the future (clock skew between replicas) is fresh.
        assert!(heartbeat_fresh(
            Some(now() + chrono::Duration::seconds(1)),
            now()
        ));
    }

    #[test]
    fn nodes_per_mode_in_distinct_zones() {
        let single = desired_nodes("b-x", DeploymentMode::SingleInstance, "us-east-1");
        assert_eq!(
            single,
            vec![DesiredNode {
                id: NodeId("b-x-1".into()),
                ordinal: 1,
                zone: "us-east-1a".into()
            }]
        );
        let cluster = desired_nodes("b-x", DeploymentMode::ClusterMultiAz, "eu-west-1");
        let zones: Vec<&str> = cluster.iter().map(|n| n.zone.as_str()).collect();
        assert_eq!(zones, ["eu-west-1a", "eu-west-1b", "eu-west-1c"]);
        assert_eq!(
            desired_nodes("b-x", DeploymentMode::ActiveStandbyMultiAz, "r").len(),
            2
        );
        assert!(cluster.iter().all(|n| NodeId::is_valid(&n.id.0)));
    }
}
