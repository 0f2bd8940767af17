//! Per-broker decisions, taken after the nodes have been looked at.

use crate::model::BrokerState;

/// What is known about a broker and its nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerFacts {
    pub state: BrokerState,
    /// Every node the broker should have exists and is ready.
    pub nodes_ready: bool,
    /// Node rows still recorded for the broker.
    pub nodes_recorded: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerStep {
    /// Declare the broker RUNNING.
    SetRunning,
    /// Every node is gone: remove the broker itself.
    Remove,
    Nothing,
}

pub fn broker_step(f: &BrokerFacts) -> BrokerStep {
    match f.state {
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
        let f = |state, nodes_ready, nodes_recorded| BrokerFacts {
            state,
            nodes_ready,
            nodes_recorded,
        };
        let cases = [
            (
                "creating, nodes starting",
                f(CreationInProgress, false, 1),
                BrokerStep::Nothing,
            ),
            (
                "creating, nodes ready",
                f(CreationInProgress, true, 1),
                BrokerStep::SetRunning,
            ),
            ("running", f(Running, true, 1), BrokerStep::Nothing),
            (
                "running, node down: stays running",
                f(Running, false, 1),
                BrokerStep::Nothing,
            ),
            (
                "reboot, restarting",
                f(RebootInProgress, false, 1),
                BrokerStep::Nothing,
            ),
            (
                "reboot done",
                f(RebootInProgress, true, 1),
                BrokerStep::SetRunning,
            ),
            (
                "deleting, nodes left",
                f(DeletionInProgress, false, 1),
                BrokerStep::Nothing,
            ),
            (
                "deleting, nodes gone",
                f(DeletionInProgress, false, 0),
                BrokerStep::Remove,
            ),
            ("failed", f(CreationFailed, true, 1), BrokerStep::Nothing),
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
