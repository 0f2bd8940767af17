//! Leader -> in-sync followers log shipping for replicated brokers (DESIGN.md decision 4,
//! issue 5; the contract with the control plane is `mooring_agent_protocol::replication`).
//!
//! - `wire`: the stream's frames (length-prefixed, bounded) and messages.
//! - `auth`: the handshake's HMAC proofs under the broker's shared secret.
//! - `hub`: the node's replication state: position (LSN), window of recent entries, followers'
//!   progress, in-sync proposal, lease, and the gate publisher confirms wait on. It is the
//!   storage tap of a leader (`engine::storage::replica`).
//! - `leader`: the replication listener and one shipper per follower (resync, then live).
//! - `follower`: connects to the leader, applies its entries to the local storage, acks.
//! - `refuse`: a follower's AMQP listener, which closes every client naming the leader.
//!
//! The stream is physical: each entry is a file operation of the leader's storage (see
//! `storage::replica`), so a follower's data directory is the leader's, and promotion is the
//! engine's normal start-up recovery on it.

pub mod auth;
pub mod follower;
pub mod hub;
pub mod leader;
pub mod refuse;
pub mod wire;

pub use hub::{Hub, HubConfig};

/// Completes once `stop` holds true or its sender is gone.
pub(crate) async fn stopped(stop: &mut tokio::sync::watch::Receiver<bool>) {
    loop {
        if *stop.borrow_and_update() {
            return;
        }
        if stop.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests;
