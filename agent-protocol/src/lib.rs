//! The JSON messages exchanged between the control plane and broker agents.
