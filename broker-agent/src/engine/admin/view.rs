//! What the admin server shows, as plain data: the engine implements [`AdminView`] and the
//! server only renders. Field names follow RabbitMQ's management API where one exists, so that
//! scripts written against RabbitMQ's `/api/queues` and `/api/connections` keep working.

use serde::Serialize;

pub use crate::engine::storage::StorageStats;

/// The engine as the admin server sees it. Methods are called from a blocking thread, so an
/// implementation may take the engine's locks; each call should return a consistent snapshot.
pub trait AdminView: Send + Sync + 'static {
    fn overview(&self) -> Overview;
    fn queues(&self) -> Vec<QueueInfo>;
    fn connections(&self) -> Vec<ConnectionInfo>;
    fn storage_stats(&self) -> StorageStats;
}

/// Node-wide gauges and counters. Counters (`*_total`) only grow for the life of the process.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Overview {
    pub connections: u64,
    pub channels: u64,
    pub queues: u64,
    pub consumers: u64,
    pub messages_ready: u64,
    pub messages_unacknowledged: u64,
    /// Body bytes of the messages held by queues (ready and unacknowledged).
    pub message_bytes: u64,
    pub published_total: u64,
    pub delivered_total: u64,
    pub acked_total: u64,
    pub confirmed_total: u64,
    pub returned_total: u64,
    /// Resources in alarm ("memory", "disk"): publishers are blocked while any is raised.
    pub alarms: Vec<String>,
}

/// One queue, named as in RabbitMQ's `GET /api/queues`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QueueInfo {
    pub name: String,
    pub vhost: String,
    pub durable: bool,
    pub auto_delete: bool,
    pub exclusive: bool,
    /// Declared arguments as JSON (`{"x-message-ttl": 60000, ...}`).
    pub arguments: serde_json::Map<String, serde_json::Value>,
    /// "classic" or "quorum".
    #[serde(rename = "type")]
    pub queue_type: String,
    /// `messages_ready + messages_unacknowledged`, as RabbitMQ reports it.
    pub messages: u64,
    pub messages_ready: u64,
    pub messages_unacknowledged: u64,
    /// Body bytes of ready messages.
    pub message_bytes_ready: u64,
    pub consumers: u64,
    /// The owning connection's name, for exclusive queues.
    pub owner_pid_details: Option<String>,
}

impl QueueInfo {
    /// A queue with no messages, consumers or arguments; callers fill in the rest. Keeps
    /// `messages` consistent with its parts (see [`QueueInfo::with_counts`]).
    pub fn new(vhost: impl Into<String>, name: impl Into<String>) -> QueueInfo {
        QueueInfo {
            name: name.into(),
            vhost: vhost.into(),
            durable: false,
            auto_delete: false,
            exclusive: false,
            arguments: serde_json::Map::new(),
            queue_type: "classic".into(),
            messages: 0,
            messages_ready: 0,
            messages_unacknowledged: 0,
            message_bytes_ready: 0,
            consumers: 0,
            owner_pid_details: None,
        }
    }

    pub fn with_counts(mut self, ready: u64, unacknowledged: u64, consumers: u64) -> QueueInfo {
        self.messages_ready = ready;
        self.messages_unacknowledged = unacknowledged;
        self.messages = ready + unacknowledged;
        self.consumers = consumers;
        self
    }
}

/// One client connection, named as in RabbitMQ's `GET /api/connections`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConnectionInfo {
    /// "PEER_HOST:PEER_PORT -> HOST:PORT", RabbitMQ's naming.
    pub name: String,
    pub vhost: String,
    pub user: String,
    pub peer_host: String,
    pub peer_port: u16,
    pub host: String,
    pub port: u16,
    pub channels: u64,
    /// "running", or "blocked" while an alarm holds its publishers.
    pub state: String,
    pub protocol: String,
    pub ssl: bool,
    /// Milliseconds since the Unix epoch.
    pub connected_at: u64,
    /// Negotiated heartbeat in seconds (RabbitMQ calls it `timeout`).
    pub timeout: u64,
    pub frame_max: u64,
    pub channel_max: u64,
    pub auth_mechanism: String,
    /// The client's properties table as JSON (product, version, capabilities, ...).
    pub client_properties: serde_json::Map<String, serde_json::Value>,
}

impl ConnectionInfo {
    /// A connection with RabbitMQ's name built from its two ends; callers fill in the rest.
    pub fn new(peer: std::net::SocketAddr, local: std::net::SocketAddr) -> ConnectionInfo {
        ConnectionInfo {
            name: format!("{peer} -> {local}"),
            vhost: "/".into(),
            user: String::new(),
            peer_host: peer.ip().to_string(),
            peer_port: peer.port(),
            host: local.ip().to_string(),
            port: local.port(),
            channels: 0,
            state: "running".into(),
            protocol: "AMQP 0-9-1".into(),
            ssl: false,
            connected_at: 0,
            timeout: 0,
            frame_max: 0,
            channel_max: 0,
            auth_mechanism: "PLAIN".into(),
            client_properties: serde_json::Map::new(),
        }
    }
}
