//! Engine configuration: what `Engine::start` needs, and the limits that can change at run time.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::users::UserDef;

/// Limits answered with the protocol's errors. `None` means unlimited, as in RabbitMQ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Client connections at once; beyond it new connections are refused during the handshake.
    pub max_connections: Option<u32>,
    /// Highest channel number a client may open (negotiated as `channel_max` in tune).
    pub max_channels_per_connection: u16,
    /// Queues across all vhosts; declaring one more fails with 406 PRECONDITION_FAILED.
    pub max_queues: Option<u32>,
    /// Largest message body accepted; larger publishes close the channel with 406.
    pub max_message_bytes: u64,
    /// Largest frame (negotiated in tune); larger frames close the connection with 501.
    pub frame_max: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: None,
            max_channels_per_connection: 2047,
            max_queues: None,
            // RabbitMQ 3.10's max_message_size default.
            max_message_bytes: 128 * 1024 * 1024,
            frame_max: 131_072,
        }
    }
}

/// A certificate chain and private key, both PEM files, for amqps.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Everything `Engine::start` needs.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The node's data directory (definitions, queue logs, ports.json).
    pub data_dir: PathBuf,
    /// Plain AMQP listener; port 0 picks a free port.
    pub amqp_listen: SocketAddr,
    /// amqps listener, used only together with `tls`.
    pub amqps_listen: Option<SocketAddr>,
    pub tls: Option<TlsFiles>,
    /// Admin HTTP listener (healthz, metrics, listings).
    pub admin_listen: Option<SocketAddr>,
    /// Users to install at start when the data directory holds none (first start). Users saved
    /// in the definitions snapshot win over these, so `set_users` survives a restart.
    pub initial_users: Vec<UserDef>,
    /// When true, `initial_users` replace the saved users at every start (standalone mode,
    /// where the command line is the authority).
    pub force_users: bool,
    /// Users allowed to log in from loopback addresses only (RabbitMQ's `loopback_users`).
    pub loopback_users: Vec<String>,
    pub limits: Limits,
    /// Heartbeat interval proposed in tune; zero disables heartbeats.
    pub heartbeat: Duration,
    /// Publishers are blocked once the engine's message memory exceeds this many bytes.
    pub memory_high_watermark_bytes: u64,
    /// Publishers are blocked once the data directory's file system has less free space.
    pub disk_free_limit_bytes: u64,
    /// Message bodies of durable, persistent messages beyond this many bytes in memory are
    /// dropped from memory and read back from the queue log on delivery.
    pub body_memory_budget_bytes: u64,
    /// Period of the background fsync for classic durable queues.
    pub sync_interval: Duration,
    /// Replicated leaders only: storage reports every durable mutation here, and confirms wait
    /// for the followers (see `storage::replica`).
    pub replication_tap: Option<super::storage::Tap>,
}

impl EngineConfig {
    /// A configuration with RabbitMQ-like defaults, listening on the given address.
    pub fn new(data_dir: impl Into<PathBuf>, amqp_listen: SocketAddr) -> Self {
        EngineConfig {
            data_dir: data_dir.into(),
            amqp_listen,
            amqps_listen: None,
            tls: None,
            admin_listen: None,
            initial_users: Vec::new(),
            force_users: false,
            loopback_users: Vec::new(),
            limits: Limits::default(),
            heartbeat: Duration::from_secs(60),
            memory_high_watermark_bytes: 1024 * 1024 * 1024,
            disk_free_limit_bytes: 50 * 1024 * 1024,
            body_memory_budget_bytes: 64 * 1024 * 1024,
            sync_interval: Duration::from_millis(200),
            replication_tap: None,
        }
    }
}

/// The addresses the engine actually listens on (after binding port 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineAddrs {
    pub amqp: SocketAddr,
    pub amqps: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
}
