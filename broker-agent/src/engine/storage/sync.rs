//! The one thread that fsyncs every queue log of a node (group commit).
//!
//! Each log shares a [`LogSync`] with this thread: `flush` records there which files it wrote
//! since the last fsync. A `sync` request is a message carrying the log and a oneshot sender.
//! The thread works in rounds: it takes every request that has arrived, then for each log named
//! takes its dirty files and fdatasyncs each once, then answers all of that log's waiters. While
//! a round runs, new requests queue up and share the next round's fsyncs, so the number of
//! fsyncs follows the disk's speed, not the number of confirms. Between requests, every
//! `sync_interval` it fsyncs whatever any log left dirty (that is the durability of
//! `Durability::Written` logs).
//!
//! Correctness of the batching: a waiter's data was written (flush returned) before its request
//! was sent, so it is in its log's dirty set before the round that receives the request drains
//! that set, or an earlier round drained and fsynced it already.

use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::oneshot;

/// What one waiter is told. `io::Error` is not `Clone`, so a failed round is described by kind
/// and message for each of its waiters.
pub(super) type SyncResult = Result<(), (io::ErrorKind, String)>;

/// Node-wide counters (see `StorageStats`).
#[derive(Debug, Default)]
pub(super) struct Counters {
    pub fsyncs_total: AtomicU64,
}

/// The sync state one log shares with the sync thread.
pub(super) struct LogSync {
    /// The log's directory, fsynced when files were created or removed in it.
    dir: PathBuf,
    dirty: Mutex<Dirty>,
    /// `Dirty::seq` as of the last successful fsync round for this log.
    synced_seq: AtomicU64,
    /// Set forever after a failed fsync: the kernel may have dropped the dirty pages, so a later
    /// fsync that succeeds would prove nothing (the "fsyncgate" lesson).
    failed: AtomicBool,
    /// Bytes of this log's files on disk and its number of segments, for `stats`.
    pub bytes_on_disk: AtomicU64,
    pub segments: AtomicU64,
    /// Replicated leaders: where this log's file mutations are reported.
    pub tap: Option<super::replica::DirTap>,
}

#[derive(Default)]
struct Dirty {
    /// Files written since they were last taken by the sync thread. A handful at most (the
    /// active segment, a sealed one, some ack files), so a linear search is the fast choice.
    files: Vec<Arc<File>>,
    dir: bool,
    /// Bumped by every `mark_*`: tells whether anything happened since the last fsync.
    seq: u64,
}

impl LogSync {
    pub fn new(dir: PathBuf, tap: Option<super::replica::DirTap>) -> LogSync {
        LogSync {
            tap,
            dir,
            dirty: Mutex::new(Dirty::default()),
            synced_seq: AtomicU64::new(0),
            failed: AtomicBool::new(false),
            bytes_on_disk: AtomicU64::new(0),
            segments: AtomicU64::new(0),
        }
    }

    /// Records that `file` was written and needs an fdatasync.
    pub fn mark_file(&self, file: &Arc<File>) {
        let mut dirty = self.dirty.lock();
        if !dirty.files.iter().any(|f| Arc::ptr_eq(f, file)) {
            dirty.files.push(Arc::clone(file));
        }
        dirty.seq += 1;
    }

    /// Records that a file was created or removed in the log's directory.
    pub fn mark_dir(&self) {
        let mut dirty = self.dirty.lock();
        dirty.dir = true;
        dirty.seq += 1;
    }

    fn failed_error() -> io::Error {
        io::Error::other("an earlier fsync of this queue log failed; its data may not be durable")
    }

    /// Whether everything marked so far is already fsynced; an error if an fsync ever failed.
    pub fn is_synced(&self) -> io::Result<bool> {
        if self.failed.load(Ordering::Acquire) {
            return Err(Self::failed_error());
        }
        let seq = self.dirty.lock().seq;
        Ok(self.synced_seq.load(Ordering::Acquire) >= seq)
    }

    /// Fsyncs everything marked so far. Runs on the sync thread (and in tests).
    fn sync_now(&self, counters: &Counters) -> io::Result<()> {
        if self.failed.load(Ordering::Acquire) {
            return Err(Self::failed_error());
        }
        let (files, dir, seq) = {
            let mut dirty = self.dirty.lock();
            (
                std::mem::take(&mut dirty.files),
                std::mem::take(&mut dirty.dir),
                dirty.seq,
            )
        };
        let result = (|| {
            for file in &files {
                file.sync_data()?;
                counters.fsyncs_total.fetch_add(1, Ordering::Relaxed);
            }
            if dir {
                File::open(&self.dir)?.sync_all()?;
                counters.fsyncs_total.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        })();
        match result {
            Ok(()) => {
                self.synced_seq.fetch_max(seq, Ordering::AcqRel);
                Ok(())
            }
            Err(e) => {
                tracing::error!(dir = %self.dir.display(), error = %e, "fsync of queue log failed");
                self.failed.store(true, Ordering::Release);
                Err(e)
            }
        }
    }
}

pub(super) struct SyncRequest {
    pub log: Arc<LogSync>,
    pub done: oneshot::Sender<SyncResult>,
}

/// Handle to the sync thread. The thread ends once every sender (this handle and every log's
/// clone) is dropped.
pub(super) struct SyncThread {
    tx: mpsc::Sender<SyncRequest>,
    /// Every open log, so that the periodic pass and `stats` can reach them. Dead entries are
    /// pruned when logs are opened and by the periodic pass.
    pub logs: Arc<Mutex<Vec<Weak<LogSync>>>>,
    pub counters: Arc<Counters>,
}

impl SyncThread {
    pub fn start(interval: Duration) -> io::Result<SyncThread> {
        let (tx, rx) = mpsc::channel();
        let logs: Arc<Mutex<Vec<Weak<LogSync>>>> = Arc::default();
        let counters: Arc<Counters> = Arc::default();
        let thread_logs = Arc::clone(&logs);
        let thread_counters = Arc::clone(&counters);
        std::thread::Builder::new()
            .name("mooring-fsync".into())
            .spawn(move || run(rx, interval, &thread_logs, &thread_counters))?;
        Ok(SyncThread { tx, logs, counters })
    }

    pub fn sender(&self) -> mpsc::Sender<SyncRequest> {
        self.tx.clone()
    }

    pub fn register(&self, log: &Arc<LogSync>) {
        let mut logs = self.logs.lock();
        logs.retain(|l| l.strong_count() > 0);
        logs.push(Arc::downgrade(log));
    }
}

fn run(
    rx: mpsc::Receiver<SyncRequest>,
    interval: Duration,
    logs: &Mutex<Vec<Weak<LogSync>>>,
    counters: &Counters,
) {
    let mut next_tick = Instant::now() + interval;
    let mut round: Vec<SyncRequest> = Vec::new();
    loop {
        let timeout = next_tick.saturating_duration_since(Instant::now());
        match rx.recv_timeout(timeout) {
            Ok(first) => {
                round.push(first);
                round.extend(rx.try_iter());
                serve_round(&mut round, counters);
            }
            Err(RecvTimeoutError::Timeout) => {
                sync_all_logs(logs, counters);
                next_tick = Instant::now() + interval;
            }
            Err(RecvTimeoutError::Disconnected) => {
                sync_all_logs(logs, counters);
                return;
            }
        }
    }
}

/// Most fsyncs in flight at once. The device and the file system's journal batch concurrent
/// flushes, so a round over many logs costs about one fsync rather than one per log.
const MAX_PARALLEL_FSYNCS: usize = 8;

/// Fsyncs each log named in `round` once and answers every waiter.
fn serve_round(round: &mut Vec<SyncRequest>, counters: &Counters) {
    // Group the waiters by log: sort by address, then one entry per run of equal logs.
    round.sort_by_key(|r| Arc::as_ptr(&r.log) as usize);
    let mut logs: Vec<Arc<LogSync>> = Vec::new();
    let mut waiters: Vec<Vec<oneshot::Sender<SyncResult>>> = Vec::new();
    for request in round.drain(..) {
        if logs.last().is_some_and(|l| Arc::ptr_eq(l, &request.log)) {
            waiters
                .last_mut()
                .expect("pushed with its log")
                .push(request.done);
        } else {
            logs.push(request.log);
            waiters.push(vec![request.done]);
        }
    }
    let results = sync_logs(&logs, counters);
    for (result, waiters) in results.into_iter().zip(waiters) {
        let result: SyncResult = result.map_err(|e| (e.kind(), e.to_string()));
        for waiter in waiters {
            // A waiter that stopped waiting is no error of ours.
            let _ = waiter.send(result.clone());
        }
    }
}

/// Fsyncs `logs`, several at once when there are several; results in the same order.
fn sync_logs(logs: &[Arc<LogSync>], counters: &Counters) -> Vec<io::Result<()>> {
    if logs.len() <= 1 {
        return logs.iter().map(|log| log.sync_now(counters)).collect();
    }
    let per_worker = logs.len().div_ceil(MAX_PARALLEL_FSYNCS);
    std::thread::scope(|scope| {
        let workers: Vec<_> = logs
            .chunks(per_worker)
            .map(|chunk| {
                scope.spawn(move || {
                    chunk
                        .iter()
                        .map(|log| log.sync_now(counters))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("sync_now does not panic"))
            .collect()
    })
}

fn sync_all_logs(logs: &Mutex<Vec<Weak<LogSync>>>, counters: &Counters) {
    let dirty: Vec<Arc<LogSync>> = {
        let mut logs = logs.lock();
        logs.retain(|l| l.strong_count() > 0);
        logs.iter()
            .filter_map(Weak::upgrade)
            .filter(|log| matches!(log.is_synced(), Ok(false)))
            .collect()
    };
    // Failures are logged and made sticky inside; the next sync request reports them.
    let _ = sync_logs(&dirty, counters);
}
