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
mod recover;
pub mod replica;
mod segment;
mod sync;

pub use log::{QueueLog, SyncWaiter};
pub use replica::{Applier, FileOp, StorageTap, Tap};

use std::collections::HashSet;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use sha2::{Digest, Sha256};

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
    /// Replicated leaders only: where every durable mutation is reported (see `replica`).
    /// `None` costs nothing on any path.
    pub tap: Option<Tap>,
}

impl StorageConfig {
    pub const DEFAULT_SEGMENT_BYTES: u64 = 8 * 1024 * 1024;
    pub const DEFAULT_SYNC_INTERVAL: Duration = Duration::from_millis(200);

    pub fn new(dir: impl Into<PathBuf>) -> Self {
        StorageConfig {
            dir: dir.into(),
            segment_bytes: Self::DEFAULT_SEGMENT_BYTES,
            sync_interval: Self::DEFAULT_SYNC_INTERVAL,
            tap: None,
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
    /// Held (flock'd) for the life of the storage: two processes on one data directory would
    /// corrupt each other's logs.
    _lock: File,
    /// Serialises `save_definitions` (they share one temp file).
    definitions: Mutex<()>,
}

const LOCK_FILE: &str = "LOCK";
const QUEUES_DIR: &str = "queues";
const META_FILE: &str = "meta";

impl Storage {
    /// Opens (creating if needed) the storage under `config.dir` and starts the sync thread.
    /// Fails if another process (or another `Storage` in this one) has the directory open.
    pub fn open(config: StorageConfig) -> io::Result<Storage> {
        if config.segment_bytes == 0 || config.segment_bytes > log::MAX_SEGMENT_BYTES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "segment_bytes must be between 1 and {}",
                    log::MAX_SEGMENT_BYTES
                ),
            ));
        }
        std::fs::create_dir_all(config.dir.join(QUEUES_DIR))?;
        let lock = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(config.dir.join(LOCK_FILE))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(io::Error::new(
                    io::ErrorKind::WouldBlock,
                    format!(
                        "data directory {} is in use by another storage",
                        config.dir.display()
                    ),
                ))
            }
            Err(TryLockError::Error(e)) => return Err(e),
        }
        // Make `queues/` (and the data directory) durable: either may have just been created.
        File::open(&config.dir)?.sync_all()?;
        if let Some(parent) = config.dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            File::open(parent)?.sync_all()?;
        }
        let sync = sync::SyncThread::start(config.sync_interval)?;
        Ok(Storage {
            inner: Arc::new(StorageInner {
                config,
                sync,
                _lock: lock,
                definitions: Mutex::new(()),
            }),
        })
    }

    /// The last saved definitions snapshot, or `None` on a fresh data directory.
    pub fn load_definitions(&self) -> io::Result<Option<Vec<u8>>> {
        let _guard = self.inner.definitions.lock();
        definitions::load(&self.inner.config.dir)
    }

    /// Atomically replaces the definitions snapshot; durable (fsync'd) when this returns.
    pub fn save_definitions(&self, bytes: &[u8]) -> io::Result<()> {
        let _guard = self.inner.definitions.lock();
        definitions::save(&self.inner.config.dir, bytes)?;
        if let Some(tap) = &self.inner.config.tap {
            tap.0.record(FileOp::Definitions { data: bytes });
        }
        self.inner
            .sync
            .counters
            .fsyncs_total
            .fetch_add(2, Ordering::Relaxed);
        Ok(())
    }

    fn queues_dir(&self) -> PathBuf {
        self.inner.config.dir.join(QUEUES_DIR)
    }

    /// Opens (creating if needed) the log of one durable queue, recovering it first: torn or
    /// corrupt tails are truncated at the last intact record, acked records are skipped.
    /// Use [`QueueLog::scan`] to stream the live records back. At most one `QueueLog` per key
    /// may be open at a time.
    pub fn open_queue_log(&self, key: &QueueKey, durability: Durability) -> io::Result<QueueLog> {
        let queues = self.queues_dir();
        let dir = queues.join(key.dir_name());
        let meta = dir.join(META_FILE);
        if !meta.exists() {
            match std::fs::create_dir(&dir) {
                Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
                _ => {}
            }
            let names = serde_json::json!({ "vhost": key.vhost, "name": key.name });
            let mut file = File::create(&meta)?;
            file.write_all(names.to_string().as_bytes())?;
            file.sync_all()?;
            File::open(&dir)?.sync_all()?;
            File::open(&queues)?.sync_all()?;
            if let Some(tap) = &self.inner.config.tap {
                let rel = format!("{QUEUES_DIR}/{}", key.dir_name());
                tap.0.record(FileOp::CreateDir { path: &rel });
                tap.0.record(FileOp::WriteFile {
                    path: &format!("{rel}/{META_FILE}"),
                    data: names.to_string().as_bytes(),
                });
            }
            self.inner
                .sync
                .counters
                .fsyncs_total
                .fetch_add(3, Ordering::Relaxed);
        }
        let tap = self.inner.config.tap.clone().map(|tap| replica::DirTap {
            tap,
            rel_dir: format!("{QUEUES_DIR}/{}", key.dir_name()),
        });
        QueueLog::open(
            dir,
            self.inner.config.segment_bytes,
            durability,
            &self.inner.sync,
            tap,
        )
    }

    /// Removes a queue's log entirely. Deleting a log that does not exist is not an error.
    /// Drop the queue's `QueueLog` first.
    pub fn delete_queue_log(&self, key: &QueueKey) -> io::Result<()> {
        let queues = self.queues_dir();
        // Rename first: the removal below is not atomic, but a renamed directory is never
        // opened as the queue again (a redeclared queue starts empty) and is swept by
        // `retain_queue_logs` if a crash interrupts the removal.
        static DELETIONS: AtomicU64 = AtomicU64::new(0);
        let doomed = queues.join(format!(
            "{}.deleted-{}-{}",
            key.dir_name(),
            std::process::id(),
            DELETIONS.fetch_add(1, Ordering::Relaxed)
        ));
        match std::fs::rename(queues.join(key.dir_name()), &doomed) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            other => other?,
        }
        File::open(&queues)?.sync_all()?;
        self.inner
            .sync
            .counters
            .fsyncs_total
            .fetch_add(1, Ordering::Relaxed);
        let doomed_rel = self.inner.config.tap.as_ref().map(|tap| {
            let name = doomed
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            let rel = format!("{QUEUES_DIR}/{name}");
            tap.0.record(FileOp::Rename {
                from: &format!("{QUEUES_DIR}/{}", key.dir_name()),
                to: &rel,
            });
            rel
        });
        std::fs::remove_dir_all(&doomed)?;
        if let (Some(tap), Some(rel)) = (&self.inner.config.tap, doomed_rel) {
            tap.0.record(FileOp::RemoveDirAll { path: &rel });
        }
        Ok(())
    }

    /// Removes every queue log on disk whose key is not in `keep` (logs of queues deleted while
    /// a crash interrupted the removal).
    pub fn retain_queue_logs(&self, keep: &[QueueKey]) -> io::Result<()> {
        let queues = self.queues_dir();
        let keep: HashSet<String> = keep.iter().map(QueueKey::dir_name).collect();
        let mut removed = false;
        for entry in std::fs::read_dir(&queues)? {
            let entry = entry?;
            if entry
                .file_name()
                .to_str()
                .is_some_and(|name| keep.contains(name))
            {
                continue;
            }
            let is_dir = entry.file_type()?.is_dir();
            if is_dir {
                std::fs::remove_dir_all(entry.path())?;
            } else {
                std::fs::remove_file(entry.path())?;
            }
            if let (Some(tap), Some(name)) = (&self.inner.config.tap, entry.file_name().to_str()) {
                let path = format!("{QUEUES_DIR}/{name}");
                tap.0.record(if is_dir {
                    FileOp::RemoveDirAll { path: &path }
                } else {
                    FileOp::Remove { path: &path }
                });
            }
            removed = true;
        }
        if removed {
            File::open(&queues)?.sync_all()?;
            self.inner
                .sync
                .counters
                .fsyncs_total
                .fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Counters of the open queue logs and of every fsync since `open`.
    pub fn stats(&self) -> StorageStats {
        let mut stats = StorageStats {
            fsyncs_total: self
                .inner
                .sync
                .counters
                .fsyncs_total
                .load(Ordering::Relaxed),
            ..StorageStats::default()
        };
        for log in self
            .inner
            .sync
            .logs
            .lock()
            .iter()
            .filter_map(std::sync::Weak::upgrade)
        {
            stats.bytes_on_disk += log.bytes_on_disk.load(Ordering::Relaxed);
            stats.segments += log.segments.load(Ordering::Relaxed);
        }
        stats
    }
}

impl QueueKey {
    /// The log's directory name: a hash of vhost and name (both may hold any characters, and
    /// the length prefix keeps ("a", "bc") apart from ("ab", "c")).
    fn dir_name(&self) -> String {
        let mut hasher = Sha256::new();
        hasher.update((self.vhost.len() as u64).to_le_bytes());
        hasher.update(self.vhost.as_bytes());
        hasher.update(self.name.as_bytes());
        hex::encode(&hasher.finalize()[..16])
    }
}

#[cfg(test)]
mod tests;
