//! Helpers shared by the end-to-end tests: finding the built binaries, running a standalone
//! `mooring-agent` on a data directory that outlives restarts, a real `mooring serve` with its
//! signed API (`control_plane`), producers and checks for replication chaos (`chaos`), and
//! waiting with deadlines.

pub mod agent;
pub mod bins;
pub mod chaos;
pub mod control_plane;
pub mod queue_files;
pub mod wait;

pub use agent::{Agent, Ports};
pub use bins::binary;
pub use wait::wait_for;
