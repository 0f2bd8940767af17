//! One durable queue's segment log. See the module docs of `storage` for the contract.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};

use bytes::Bytes;
use tokio::sync::oneshot;

use super::recover;
use super::replica::{DirTap, FileOp};
use super::segment::{self, RECORD_HEADER_BYTES};
use super::sync::{LogSync, SyncRequest, SyncResult, SyncThread};
use super::{Durability, Location};

/// Largest record payload. Together with `MAX_SEGMENT_BYTES` it keeps every offset and every
/// record end inside a u32, as `Location` needs.
pub(super) const MAX_RECORD_BYTES: u64 = (u32::MAX / 2) as u64 - RECORD_HEADER_BYTES;
/// Largest configurable segment size (see `MAX_RECORD_BYTES`).
pub(super) const MAX_SEGMENT_BYTES: u64 = (u32::MAX / 2) as u64;
/// Appends past this many buffered bytes are written out at once, so a caller that rarely
/// flushes cannot grow the buffer without bound. Large enough to stay rare.
const AUTO_FLUSH_BYTES: usize = 4 * 1024 * 1024;

/// The log of one durable queue. Owned by the queue and used under its lock; not shared.
pub struct QueueLog {
    dir: PathBuf,
    segment_bytes: u64,
    durability: Durability,
    /// The segment appends go to: the highest number. Kept out of `sealed` so that the hot
    /// path (append, and acks of recent records) needs no map lookup.
    active_no: u32,
    active: Segment,
    /// Framed records appended to the active segment and not yet written. Starts at file
    /// offset `active.file_len`, always on a record boundary.
    buf: Vec<u8>,
    /// Sealed segments with live records. One leaves the map once all its records are acked.
    sealed: BTreeMap<u32, Segment>,
    /// Segments whose `ack_buf` holds entries (each listed once).
    ack_dirty: Vec<u32>,
    /// Fully acked sealed segments, already out of `sealed`, whose files `flush` removes.
    doomed: Vec<u32>,
    live_records: u64,
    live_bytes: u64,
    sync: Arc<LogSync>,
    sync_tx: mpsc::Sender<SyncRequest>,
    /// Set when a failed write could not be undone: a file's tail is then unknown, so any
    /// further write could land after garbage. The queue must be reopened (recovered).
    broken: bool,
}

/// One segment's in-memory state.
pub(super) struct Segment {
    pub file: Arc<File>,
    /// Bytes written to the file. Records appended since sit in `QueueLog::buf`.
    pub file_len: u64,
    /// Records in the segment (written or buffered) and how many of them are acked;
    /// `acked <= records`.
    pub records: u32,
    pub acked: u32,
    /// Created on the first flush that has acks for this segment.
    pub ack_file: Option<Arc<File>>,
    pub ack_len: u64,
    /// Ack entries not yet written.
    pub ack_buf: Vec<u8>,
}

impl Segment {
    pub fn new(file: Arc<File>, file_len: u64, records: u32) -> Segment {
        Segment {
            file,
            file_len,
            records,
            acked: 0,
            ack_file: None,
            ack_len: 0,
            ack_buf: Vec::new(),
        }
    }
}

/// Resolves once every record appended before [`QueueLog::sync`] was called is fsync'd.
pub struct SyncWaiter {
    state: WaiterState,
}

enum WaiterState {
    Done,
    Pending(oneshot::Receiver<SyncResult>),
    /// Replicated leaders: the local fsync (if one is needed), then the followers.
    Gated {
        local: Option<oneshot::Receiver<SyncResult>>,
        replicated: std::pin::Pin<Box<dyn std::future::Future<Output = io::Result<()>> + Send>>,
    },
}

impl QueueLog {
    /// Opens the log in `dir` (which exists), recovering what is there (see `recover`), and
    /// starts a fresh active segment.
    pub(super) fn open(
        dir: PathBuf,
        segment_bytes: u64,
        durability: Durability,
        sync_thread: &SyncThread,
        tap: Option<DirTap>,
    ) -> io::Result<QueueLog> {
        let sync = Arc::new(LogSync::new(dir.clone(), tap));
        let found = recover::recover(&dir, &sync)?;
        let active_no = next_segment(found.highest)?;
        let active = create_segment(&dir, active_no, &sync)?;
        sync_thread.register(&sync);
        Ok(QueueLog {
            dir,
            segment_bytes,
            durability,
            active_no,
            active,
            buf: Vec::new(),
            sealed: found.sealed,
            ack_dirty: Vec::new(),
            doomed: Vec::new(),
            live_records: found.live_records,
            live_bytes: found.live_bytes,
            sync,
            sync_tx: sync_thread.sender(),
            broken: false,
        })
    }

    fn segment(&self, n: u32) -> Option<&Segment> {
        if n == self.active_no {
            Some(&self.active)
        } else {
            self.sealed.get(&n)
        }
    }

    fn check_usable(&self) -> io::Result<()> {
        if self.broken {
            return Err(io::Error::other(
                "queue log is broken by an earlier write error; reopen it",
            ));
        }
        Ok(())
    }

    /// Appends a record to a user-space buffer and returns where it will live. Nothing is
    /// durable until [`flush`](Self::flush).
    pub fn append(&mut self, record: &[u8]) -> io::Result<Location> {
        self.check_usable()?;
        let len = record.len() as u64;
        if len > MAX_RECORD_BYTES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "record too large for a segment",
            ));
        }
        let framed = RECORD_HEADER_BYTES + len;
        let active_len = self.active.file_len + self.buf.len() as u64;
        if active_len > 0 && active_len + framed > self.segment_bytes {
            self.roll()?;
        }
        let offset = self.active.file_len + self.buf.len() as u64;
        let location = Location {
            segment: self.active_no,
            offset: u32::try_from(offset)
                .expect("offsets stay below MAX_SEGMENT_BYTES + MAX_RECORD_BYTES"),
            len: len as u32,
        };
        segment::encode_record(&mut self.buf, record);
        self.active.records += 1;
        self.live_records += 1;
        self.live_bytes += len;
        if self.buf.len() >= AUTO_FLUSH_BYTES {
            self.write_active()?;
        }
        Ok(location)
    }

    /// Seals the active segment (writing out its buffer) and starts the next one.
    fn roll(&mut self) -> io::Result<()> {
        self.write_active()?;
        let next_no = next_segment(self.active_no)?;
        let next = create_segment(&self.dir, next_no, &self.sync)?;
        let sealed = std::mem::replace(&mut self.active, next);
        let sealed_no = std::mem::replace(&mut self.active_no, next_no);
        if sealed.acked == sealed.records {
            // The files stay until `flush` removes them (no syscalls on this path).
            self.doomed.push(sealed_no);
        } else {
            self.sealed.insert(sealed_no, sealed);
        }
        Ok(())
    }

    /// Records that the message at `loc` is acked (buffered like appends). Once every record of
    /// a sealed segment is acked, the segment and its ack file are deleted. Acking a location
    /// twice is a caller error; acking one whose segment is gone reports `NotFound`.
    pub fn ack(&mut self, loc: Location) -> io::Result<()> {
        self.check_usable()?;
        let is_active = loc.segment == self.active_no;
        let seg = if is_active {
            Some(&mut self.active)
        } else {
            self.sealed.get_mut(&loc.segment)
        };
        let Some(seg) = seg else {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "ack of a record whose segment is gone",
            ));
        };
        if seg.acked >= seg.records {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "more acks than records in segment",
            ));
        }
        seg.acked += 1;
        if seg.ack_buf.is_empty() {
            self.ack_dirty.push(loc.segment);
        }
        segment::encode_ack(&mut seg.ack_buf, loc.offset);
        let fully_acked = seg.acked == seg.records;
        self.live_records -= 1;
        self.live_bytes = self.live_bytes.saturating_sub(u64::from(loc.len));
        if fully_acked && !is_active {
            // The files stay until `flush` removes them (no syscalls in `ack`).
            self.sealed.remove(&loc.segment);
            self.doomed.push(loc.segment);
        }
        Ok(())
    }

    /// Hands buffered appends and acks to the kernel (one write per file). After this returns
    /// they survive `kill -9` of the process.
    pub fn flush(&mut self) -> io::Result<()> {
        self.check_usable()?;
        self.write_active()?;
        while let Some(&n) = self.ack_dirty.last() {
            let seg = if n == self.active_no {
                Some(&mut self.active)
            } else {
                self.sealed.get_mut(&n)
            };
            if let Some(seg) = seg {
                write_acks(&self.dir, n, seg, &self.sync, &mut self.broken)?;
            }
            self.ack_dirty.pop();
        }
        while let Some(&n) = self.doomed.last() {
            self.remove_segment_files(n)?;
            self.doomed.pop();
        }
        Ok(())
    }

    /// Writes the active segment's buffer with one positioned write.
    fn write_active(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let seg = &mut self.active;
        if let Err(e) = seg.file.write_all_at(&self.buf, seg.file_len) {
            // Undo a partial write so the file ends on a record boundary again; the buffer is
            // kept, so a later flush may succeed. If even that fails, the tail is unknown.
            if seg.file.set_len(seg.file_len).is_err() {
                self.broken = true;
            }
            return Err(e);
        }
        if let Some(tap) = &self.sync.tap {
            tap.record(FileOp::WriteAt {
                path: &tap.rel(&segment::segment_path(&self.dir, self.active_no)),
                offset: seg.file_len,
                data: &self.buf,
            });
        }
        seg.file_len += self.buf.len() as u64;
        self.sync
            .bytes_on_disk
            .fetch_add(self.buf.len() as u64, Ordering::Relaxed);
        self.sync.mark_file(&seg.file);
        self.buf.clear();
        Ok(())
    }

    /// Removes a doomed segment: the segment file first, so that a crash in between leaves an
    /// orphan ack file (removed at recovery) rather than live-looking records without acks.
    fn remove_segment_files(&mut self, n: u32) -> io::Result<()> {
        let seg_path = segment::segment_path(&self.dir, n);
        let ack_path = segment::ack_path(&self.dir, n);
        let bytes = file_len_if_exists(&seg_path)? + file_len_if_exists(&ack_path)?;
        remove_if_exists(&seg_path)?;
        remove_if_exists(&ack_path)?;
        if let Some(tap) = &self.sync.tap {
            tap.record(FileOp::Remove {
                path: &tap.rel(&seg_path),
            });
            tap.record(FileOp::Remove {
                path: &tap.rel(&ack_path),
            });
        }
        self.sync.mark_dir();
        let _ = self
            .sync
            .bytes_on_disk
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                Some(b.saturating_sub(bytes))
            });
        self.sync.segments.fetch_sub(1, Ordering::Relaxed);
        Ok(())
    }

    /// Flushes, then asks the sync thread for an fdatasync covering everything appended so far.
    /// Many callers share one fsync.
    pub fn sync(&mut self) -> io::Result<SyncWaiter> {
        let waiter = self.sync_local()?;
        Ok(self.gate(waiter))
    }

    fn sync_local(&mut self) -> io::Result<SyncWaiter> {
        self.flush()?;
        if self.sync.is_synced()? {
            return Ok(SyncWaiter {
                state: WaiterState::Done,
            });
        }
        let (done, rx) = oneshot::channel();
        self.sync_tx
            .send(SyncRequest {
                log: Arc::clone(&self.sync),
                done,
            })
            .map_err(|_| io::Error::other("the storage sync thread has stopped"))?;
        Ok(SyncWaiter {
            state: WaiterState::Pending(rx),
        })
    }

    /// On a replicated leader, makes `waiter` also wait until the followers have everything
    /// written so far (the tap's position is read after the flush, so it covers this log's
    /// writes). Without a tap, `waiter` as it is.
    fn gate(&self, waiter: SyncWaiter) -> SyncWaiter {
        let Some(tap) = &self.sync.tap else {
            return waiter;
        };
        let lsn = tap.tap.0.position();
        let replicated = tap.tap.0.replicated(lsn);
        let local = match waiter.state {
            WaiterState::Pending(rx) => Some(rx),
            _ => None,
        };
        SyncWaiter {
            state: WaiterState::Gated { local, replicated },
        }
    }

    /// What a publisher confirm waits for, by the log's [`Durability`]: for `Synced`, the same
    /// as [`sync`](Self::sync); for `Written`, a flush, with a waiter that is already resolved
    /// (the sync thread fsyncs the data within `sync_interval`). On a replicated leader the
    /// waiter also waits for the followers (see `replica::StorageTap::replicated`).
    pub fn commit(&mut self) -> io::Result<SyncWaiter> {
        let waiter = match self.durability {
            Durability::Synced => self.sync_local()?,
            Durability::Written => {
                self.flush()?;
                // A failed background fsync means the disk is losing writes: stop confirming.
                self.sync.is_synced()?;
                SyncWaiter {
                    state: WaiterState::Done,
                }
            }
        };
        Ok(self.gate(waiter))
    }

    /// Reads one record back (for bodies not kept in memory). Reads buffered data too.
    pub fn read(&self, loc: Location) -> io::Result<Bytes> {
        let seg = self.segment(loc.segment).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                "read of a record whose segment is gone",
            )
        })?;
        let offset = u64::from(loc.offset);
        let framed = (RECORD_HEADER_BYTES + u64::from(loc.len)) as usize;
        if loc.segment == self.active_no && offset >= seg.file_len {
            let start = (offset - seg.file_len) as usize;
            let bytes = self
                .buf
                .get(start..start + framed)
                .and_then(segment::decode_record)
                .ok_or_else(|| segment::invalid_data("no intact record at this location"))?;
            return Ok(Bytes::copy_from_slice(bytes));
        }
        let mut framed_bytes = vec![0u8; framed];
        seg.file
            .read_exact_at(&mut framed_bytes, offset)
            .map_err(|e| match e.kind() {
                io::ErrorKind::UnexpectedEof => {
                    segment::invalid_data("location past the segment end")
                }
                _ => e,
            })?;
        if segment::decode_record(&framed_bytes).is_none() {
            return Err(segment::invalid_data("no intact record at this location"));
        }
        Ok(Bytes::from(framed_bytes).slice(RECORD_HEADER_BYTES as usize..))
    }

    /// Streams the live (unacked) records in append order, for recovery at start-up. Memory
    /// stays bounded: each record is handed to `f` and then dropped.
    pub fn scan(&self, f: &mut dyn FnMut(Location, &[u8])) -> io::Result<()> {
        let active = std::iter::once((&self.active_no, &self.active));
        for (&n, seg) in self.sealed.iter().chain(active) {
            let acked = segment::read_acks(&segment::ack_path(&self.dir, n), &seg.ack_buf)?;
            let mut next_ack = acked.iter().peekable();
            let mut visit = |offset: u32, payload: &[u8]| {
                while next_ack.next_if(|a| **a < offset).is_some() {}
                if next_ack.next_if(|a| **a == offset).is_none() {
                    f(
                        Location {
                            segment: n,
                            offset,
                            len: payload.len() as u32,
                        },
                        payload,
                    );
                }
            };
            let end = segment::walk_records(&seg.file, seg.file_len, |offset, payload| {
                visit(offset, payload);
                Ok(())
            })?;
            if end.damaged {
                return Err(segment::invalid_data(
                    "segment changed on disk after recovery",
                ));
            }
            if n == self.active_no {
                let mut pos = 0usize;
                while pos < self.buf.len() {
                    let len =
                        u32::from_le_bytes(self.buf[pos..pos + 4].try_into().expect("4 bytes"))
                            as usize;
                    let framed = &self.buf[pos..pos + RECORD_HEADER_BYTES as usize + len];
                    let payload =
                        segment::decode_record(framed).expect("the buffer holds records we framed");
                    let offset = seg.file_len + pos as u64;
                    visit(offset as u32, payload);
                    pos += framed.len();
                }
            }
        }
        Ok(())
    }

    /// Number of live records and their total payload bytes.
    pub fn live(&self) -> (u64, u64) {
        (self.live_records, self.live_bytes)
    }
}

impl Drop for QueueLog {
    fn drop(&mut self) {
        // Best effort: whatever was appended reaches the kernel on an orderly close. Callers
        // that need a guarantee flush (or sync) themselves and see the error.
        if let Err(e) = self.flush() {
            tracing::warn!(dir = %self.dir.display(), error = %e, "flush on close of queue log failed");
        }
    }
}

/// Writes one segment's pending ack entries with one positioned write.
/// Like `write_active`, a partial write is undone, or `broken` set if it cannot be.
fn write_acks(
    dir: &Path,
    n: u32,
    seg: &mut Segment,
    sync: &LogSync,
    broken: &mut bool,
) -> io::Result<()> {
    if seg.ack_buf.is_empty() {
        return Ok(());
    }
    let file = match &seg.ack_file {
        Some(f) => Arc::clone(f),
        None => {
            let f = Arc::new(
                OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(segment::ack_path(dir, n))?,
            );
            sync.mark_dir();
            if let Some(tap) = &sync.tap {
                tap.record(FileOp::CreateFile {
                    path: &tap.rel(&segment::ack_path(dir, n)),
                });
            }
            seg.ack_file = Some(Arc::clone(&f));
            f
        }
    };
    if let Err(e) = file.write_all_at(&seg.ack_buf, seg.ack_len) {
        if file.set_len(seg.ack_len).is_err() {
            *broken = true;
        }
        return Err(e);
    }
    if let Some(tap) = &sync.tap {
        tap.record(FileOp::WriteAt {
            path: &tap.rel(&segment::ack_path(dir, n)),
            offset: seg.ack_len,
            data: &seg.ack_buf,
        });
    }
    seg.ack_len += seg.ack_buf.len() as u64;
    sync.bytes_on_disk
        .fetch_add(seg.ack_buf.len() as u64, Ordering::Relaxed);
    sync.mark_file(&file);
    seg.ack_buf.clear();
    Ok(())
}

fn next_segment(n: u32) -> io::Result<u32> {
    n.checked_add(1)
        .ok_or_else(|| io::Error::other("segment numbers exhausted"))
}

/// Creates the file of segment `n` (new, empty).
fn create_segment(dir: &Path, n: u32, sync: &LogSync) -> io::Result<Segment> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(segment::segment_path(dir, n))?;
    if let Some(tap) = &sync.tap {
        tap.record(FileOp::CreateFile {
            path: &tap.rel(&segment::segment_path(dir, n)),
        });
    }
    sync.mark_dir();
    sync.segments.fetch_add(1, Ordering::Relaxed);
    Ok(Segment::new(Arc::new(file), 0, 0))
}

pub(super) fn remove_if_exists(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn file_len_if_exists(path: &Path) -> io::Result<u64> {
    match std::fs::metadata(path) {
        Ok(m) => Ok(m.len()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e),
    }
}

impl SyncWaiter {
    /// Waits for the fsync. An error means the data may not be durable: the caller must nack.
    pub async fn wait(self) -> io::Result<()> {
        match self.state {
            WaiterState::Done => Ok(()),
            WaiterState::Pending(rx) => Self::local(rx).await,
            WaiterState::Gated { local, replicated } => {
                if let Some(rx) = local {
                    Self::local(rx).await?;
                }
                replicated.await
            }
        }
    }

    async fn local(rx: oneshot::Receiver<SyncResult>) -> io::Result<()> {
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err((kind, msg))) => Err(io::Error::new(kind, msg)),
            Err(_) => Err(io::Error::other(
                "the storage sync thread stopped before syncing",
            )),
        }
    }
}
