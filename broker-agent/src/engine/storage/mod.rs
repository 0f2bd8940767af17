//! On-disk state of one broker node.
//!
//! Two kinds of data live here, both under the node's data directory:
//!
//! - **Definitions** (`definitions.rs`): durable exchanges, queues, bindings, vhosts, users and
//!   permissions. Small and rarely changed, so they are kept as one snapshot that is replaced
//!   atomically (write a temp file, fsync it, rename it, fsync the directory). The engine owns
//!   the encoding; storage sees opaque bytes.
//! - **Queue logs** (`log.rs`, `segment.rs`): one append-only segment log per durable queue,
//!   holding message records (opaque bytes encoded by the engine) and, beside each segment, the
//!   acks of the records in it. A segment whose records are all acked is deleted whole.
//!
//! Durability has two levels (see [`Durability`]): a record is *written* once `flush` has handed
//! it to the kernel (it then survives `kill -9` of this process), and *synced* once an
//! `fdatasync` covering it has returned (it then survives power loss). A single sync thread
//! serves every log, so many confirms share one fsync (group commit).
//!
//! The contract below is what the engine codes against; it is the only public surface.

mod definitions;
mod log;
mod segment;
mod sync;

pub use log::{QueueLog, SyncWaiter};

use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// Where a record lives: enough to read it back or to ack it without any other index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Location {
    /// Segment number within the queue's log (segments are numbered from 1 and never reused).
    pub segment: u32,
    /// Byte offset of the record's header within the segment file.
    pub offset: u32,
    /// Length of the record payload (the engine's bytes), excluding the storage header.
    pub len: u32,
}

/// How hard a queue's confirms wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Confirm once written to the kernel; fsync'd by the sync thread every `sync_interval`.
    /// Survives a crash of the process; may lose the last interval on power loss.
    Written,
    /// Confirm only after an fdatasync covering the record (quorum queues).
    Synced,
}

/// Storage settings. Units are in the names.
#[derive(Debug, Clone)]
pub struct StorageConfig {
    /// The node's data directory; storage creates `definitions` and `queues/` inside it.
    pub dir: PathBuf,
    /// A segment is sealed and a new one started once it reaches this size.
    pub segment_bytes: u64,
    /// Period of the background fsync of logs with `Durability::Written`.
    pub sync_interval: Duration,
}

impl StorageConfig {
    pub const DEFAULT_SEGMENT_BYTES: u64 = 8 * 1024 * 1024;
    pub const DEFAULT_SYNC_INTERVAL: Duration = Duration::from_millis(200);

    pub fn new(dir: impl Into<PathBuf>) -> Self {
        StorageConfig {
            dir: dir.into(),
            segment_bytes: Self::DEFAULT_SEGMENT_BYTES,
            sync_interval: Self::DEFAULT_SYNC_INTERVAL,
        }
    }
}

/// Counters exported on `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StorageStats {
    pub bytes_on_disk: u64,
    pub fsyncs_total: u64,
    pub segments: u64,
}

/// Identifies a queue's log on disk. Derived from vhost and queue name so that the engine needs
/// no extra mapping; the directory name is a hash of both, and a `meta` file beside the
/// segments records the plain names for humans.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct QueueKey {
    pub vhost: String,
    pub name: String,
}

/// A node's storage. Cheap to clone; all clones share the sync thread.
#[derive(Clone)]
pub struct Storage {
    inner: std::sync::Arc<StorageInner>,
}

struct StorageInner {
    config: StorageConfig,
    sync: sync::SyncThread,
}

impl Storage {
    /// Opens (creating if needed) the storage under `config.dir` and starts the sync thread.
    pub fn open(config: StorageConfig) -> io::Result<Storage> {
        let _ = &config;
        todo!("storage helper")
    }

    /// The last saved definitions snapshot, or `None` on a fresh data directory.
    pub fn load_definitions(&self) -> io::Result<Option<Vec<u8>>> {
        todo!("storage helper")
    }

    /// Atomically replaces the definitions snapshot; durable (fsync'd) when this returns.
    pub fn save_definitions(&self, bytes: &[u8]) -> io::Result<()> {
        let _ = bytes;
        todo!("storage helper")
    }

    /// Opens (creating if needed) the log of one durable queue, recovering it first: torn or
    /// corrupt tails are truncated at the last intact record, acked records are skipped.
    /// Use [`QueueLog::scan`] to stream the live records back.
    pub fn open_queue_log(&self, key: &QueueKey, durability: Durability) -> io::Result<QueueLog> {
        let _ = (key, durability);
        todo!("storage helper")
    }

    /// Removes a queue's log entirely. Deleting a log that does not exist is not an error.
    pub fn delete_queue_log(&self, key: &QueueKey) -> io::Result<()> {
        let _ = key;
        todo!("storage helper")
    }

    /// Removes every queue log on disk whose key is not in `keep` (logs of queues deleted while
    /// a crash interrupted the removal).
    pub fn retain_queue_logs(&self, keep: &[QueueKey]) -> io::Result<()> {
        let _ = keep;
        todo!("storage helper")
    }

    pub fn stats(&self) -> StorageStats {
        todo!("storage helper")
    }
}
