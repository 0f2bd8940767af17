//! Per-broker decisions, taken after the nodes have been looked at.

use crate::model::BrokerState;

/// What is known about a broker and its nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerFacts {
    pub state: BrokerState,
    /// UpdateBroker recorded an engine version, instance type or configuration to apply.
    pub has_pending: bool,
    /// Every node the broker should have exists and is ready.
    pub nodes_ready: bool,
    /// Node rows still recorded for the broker.
    pub nodes_recorded: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerStep {
    /// Move pending changes into the spec (bumping the generation) before restarting nodes.
    ApplyPending,
    /// Declare the broker RUNNING.
    SetRunning,
    /// Every node is gone: remove the broker itself.
    Remove,
    Nothing,
}

pub fn broker_step(f: &BrokerFacts) -> BrokerStep {
    match f.state {
        BrokerState::RebootInProgress if f.has_pending => BrokerStep::ApplyPending,
        BrokerState::CreationInProgress | BrokerState::RebootInProgress if f.nodes_ready => {
            BrokerStep::SetRunning
        }
        BrokerState::DeletionInProgress if f.nodes_recorded == 0 => BrokerStep::Remove,
        _ => BrokerStep::Nothing,
    }
}

/// Whether the reconciler should keep the broker's nodes running (as opposed to removing
/// them, or leaving them alone).
pub fn serves(state: BrokerState) -> Option<bool> {
    match state {
        BrokerState::CreationInProgress
        | BrokerState::Running
        | BrokerState::RebootInProgress
        | BrokerState::CriticalActionRequired => Some(true),
        BrokerState::DeletionInProgress => Some(false),
        BrokerState::CreationFailed | BrokerState::Replica => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use BrokerState::*;

    #[test]
    fn broker_steps() {
        let f = |state, has_pending, nodes_ready, nodes_recorded| BrokerFacts {
            state,
            has_pending,
            nodes_ready,
            nodes_recorded,
        };
        let cases = [
            (
                "creating, nodes starting",
                f(CreationInProgress, false, false, 1),
                BrokerStep::Nothing,
            ),
            (
                "creating, nodes ready",
                f(CreationInProgress, false, true, 1),
                BrokerStep::SetRunning,
            ),
            ("running", f(Running, false, true, 1), BrokerStep::Nothing),
            (
                "running with pending changes waits for a reboot",
                f(Running, true, true, 1),
                BrokerStep::Nothing,
            ),
            (
                "running, node down: stays running",
                f(Running, false, false, 1),
                BrokerStep::Nothing,
            ),
            (
                "reboot with pending",
                f(RebootInProgress, true, true, 1),
                BrokerStep::ApplyPending,
            ),
            (
                "reboot, restarting",
                f(RebootInProgress, false, false, 1),
                BrokerStep::Nothing,
            ),
            (
                "reboot done",
                f(RebootInProgress, false, true, 1),
                BrokerStep::SetRunning,
            ),
            (
                "deleting, nodes left",
                f(DeletionInProgress, false, false, 1),
                BrokerStep::Nothing,
            ),
            (
                "deleting, nodes gone",
                f(DeletionInProgress, false, false, 0),
                BrokerStep::Remove,
            ),
            (
                "failed",
                f(CreationFailed, false, true, 1),
                BrokerStep::Nothing,
            ),
        ];
        for (name, facts, want) in cases {
            assert_eq!(broker_step(&facts), want, "{name}");
        }
    }

    #[test]
    fn which_states_keep_nodes() {
        assert_eq!(serves(Running), Some(true));
        assert_eq!(serves(DeletionInProgress), Some(false));
        assert_eq!(serves(CreationFailed), None);
    }
}
