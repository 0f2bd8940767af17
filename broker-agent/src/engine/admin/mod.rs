//! The engine's admin HTTP server (`--admin-listen`): `/healthz`, `/metrics` in Prometheus text
//! format, and JSON listings (`/api/overview`, `/api/queues`, `/api/queues/{vhost}`,
//! `/api/connections`) shaped like RabbitMQ's management API.
//!
//! The server knows nothing of the engine's internals: the engine implements [`AdminView`],
//! which hands out plain snapshots, and [`serve`] renders them.

mod http;
mod metrics;
mod view;

#[cfg(test)]
mod tests;

pub use http::serve;
pub use view::{AdminView, ConnectionInfo, Overview, QueueInfo, StorageStats};
