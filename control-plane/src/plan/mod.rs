//! Pure decisions for provisioning: no I/O, no clock (time is a parameter), table-tested.
//!
//! - [`nodes`]: which nodes a broker should have, and what to do next for each one given what
//!   the provider and the agent report.
//! - [`config`]: the configuration a broker's nodes must hold at a generation.
//! - [`broker`]: what to do next for a broker as a whole (declare it RUNNING,
//!   remove it) once its nodes are known.

pub mod broker;
pub mod config;
pub mod nodes;
