//! The AMQP 0-9-1 server: frames, handshake, connections and channels.

mod auth;
mod basic;
mod channel;
pub mod connection;
pub mod error;
pub mod frame;
mod handshake;
mod io;
pub mod server;
