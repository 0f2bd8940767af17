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

use super::segment::{self, ACK_ENTRY_BYTES, RECORD_HEADER_BYTES};
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
    /// Every segment with live records, plus the active one (the highest number). Sealed
    /// segments leave the map once all their records are acked.
    segments: BTreeMap<u32, Segment>,
    /// The segment appends go to. Always present in `segments`.
    active: u32,
    /// Framed records appended to the active segment and not yet written. Starts at file
    /// offset `segments[active].file_len`, always on a record boundary.
    buf: Vec<u8>,
    /// Segments whose `ack_buf` holds entries (each listed once).
    ack_dirty: Vec<u32>,
    /// Fully acked sealed segments, already out of `segments`, whose files `flush` removes.
    doomed: Vec<u32>,
    live_records: u64,
    live_bytes: u64,
    sync: Arc<LogSync>,
    sync_tx: mpsc::Sender<SyncRequest>,
    /// Set when a failed write could not be undone: a file's tail is then unknown, so any
    /// further write could land after garbage. The queue must be reopened (recovered).
    broken: bool,
}

struct Segment {
    file: Arc<File>,
    /// Bytes written to the file. Records appended since sit in `QueueLog::buf`.
    file_len: u64,
    /// Records in the segment (written or buffered) and how many of them are acked.
    records: u32,
    acked: u32,
    /// Created on the first flush that has acks for this segment.
    ack_file: Option<Arc<File>>,
    ack_len: u64,
    /// Ack entries not yet written.
    ack_buf: Vec<u8>,
}

/// Resolves once every record appended before [`QueueLog::sync`] was called is fsync'd.
pub struct SyncWaiter {
    state: WaiterState,
}

enum WaiterState {
    Done,
    Pending(oneshot::Receiver<SyncResult>),
}

impl QueueLog {
    /// Opens the log in `dir` (which exists), recovering what is there: torn tails are cut,
    /// fully acked segments removed, and a fresh active segment started. Appends never go to
    /// a recovered segment, so stale ack entries past a cut can never name a new record.
    pub(super) fn open(
        dir: PathBuf,
        segment_bytes: u64,
        durability: Durability,
        sync_thread: &SyncThread,
    ) -> io::Result<QueueLog> {
        let sync = Arc::new(LogSync::new(dir.clone()));
        let mut log = QueueLog {
            dir,
            segment_bytes,
            durability,
            segments: BTreeMap::new(),
            active: 0,
            buf: Vec::new(),
            ack_dirty: Vec::new(),
            doomed: Vec::new(),
            live_records: 0,
            live_bytes: 0,
            sync,
            sync_tx: sync_thread.sender(),
            broken: false,
        };
        let highest = log.recover()?;
        let active = highest
            .checked_add(1)
            .ok_or_else(|| io::Error::other("segment numbers exhausted"))?;
        log.start_segment(active)?;
        sync_thread.register(&log.sync);
        Ok(log)
    }

    /// Loads every segment on disk; returns the highest segment number seen (0 if none).
    fn recover(&mut self) -> io::Result<u32> {
        let mut segs = Vec::new();
        let mut acks = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name();
            match name.to_str().and_then(segment::parse_file_name) {
                Some((n, false)) => segs.push(n),
                Some((n, true)) => acks.push(n),
                None => {}
            }
        }
        segs.sort_unstable();
        let highest = segs.iter().chain(&acks).copied().max().unwrap_or(0);
        // An ack file without its segment is what a crash between the two unlinks leaves.
        for n in acks.iter().filter(|n| segs.binary_search(n).is_err()) {
            remove_if_exists(&segment::ack_path(&self.dir, *n))?;
            self.sync.mark_dir();
        }
        for n in segs {
            self.recover_segment(n)?;
        }
        Ok(highest)
    }

    fn recover_segment(&mut self, n: u32) -> io::Result<()> {
        let path = segment::segment_path(&self.dir, n);
        let file = OpenOptions::new().read(true).write(true).open(&path)?;
        let len = file.metadata()?.len();
        let ack_path = segment::ack_path(&self.dir, n);
        let acked_offsets = segment::read_acks(&ack_path, &[])?;
        let (mut records, mut acked, mut live_bytes) = (0u32, 0u32, 0u64);
        let mut next_ack = acked_offsets.iter().peekable();
        let end = segment::walk_records(&file, len, |offset, payload| {
            records += 1;
            // Both ascend, so a merge walk matches acks to records; entries naming no record
            // (torn away, or garbage that passed the CRC) are skipped over.
            while next_ack.next_if(|a| **a < offset).is_some() {}
            if next_ack.next_if(|a| **a == offset).is_some() {
                acked += 1;
            } else {
                live_bytes += payload.len() as u64;
            }
            Ok(())
        })?;
        if end.damaged {
            tracing::warn!(
                segment = %path.display(),
                intact_bytes = end.intact_bytes,
                file_bytes = len,
                "torn or corrupt segment tail: truncating at the last intact record"
            );
            file.set_len(end.intact_bytes)?;
            file.sync_data()?;
        }
        if acked == records {
            // Nothing live: the whole segment goes (an empty one too, e.g. the fresh active
            // segment of a run that wrote nothing).
            remove_if_exists(&path)?;
            remove_if_exists(&ack_path)?;
            self.sync.mark_dir();
            return Ok(());
        }
        let (ack_file, ack_len) = match OpenOptions::new().read(true).write(true).open(&ack_path) {
            Ok(f) => {
                // Cut a torn partial entry so that new entries stay aligned.
                let len = f.metadata()?.len();
                let aligned = len - len % ACK_ENTRY_BYTES as u64;
                if aligned != len {
                    f.set_len(aligned)?;
                    f.sync_data()?;
                }
                (Some(Arc::new(f)), aligned)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => (None, 0),
            Err(e) => return Err(e),
        };
        self.live_records += u64::from(records - acked);
        self.live_bytes += live_bytes;
        self.sync
            .bytes_on_disk
            .fetch_add(end.intact_bytes + ack_len, Ordering::Relaxed);
        self.sync.segments.fetch_add(1, Ordering::Relaxed);
        self.segments.insert(
            n,
            Segment {
                file: Arc::new(file),
                file_len: end.intact_bytes,
                records,
                acked,
                ack_file,
                ack_len,
                ack_buf: Vec::new(),
            },
        );
        Ok(())
    }

    /// Creates segment `n` and makes it the active one.
    fn start_segment(&mut self, n: u32) -> io::Result<()> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(segment::segment_path(&self.dir, n))?;
        self.sync.mark_dir();
        self.sync.segments.fetch_add(1, Ordering::Relaxed);
        self.segments.insert(
            n,
            Segment {
                file: Arc::new(file),
                file_len: 0,
                records: 0,
                acked: 0,
                ack_file: None,
                ack_len: 0,
                ack_buf: Vec::new(),
            },
        );
        self.active = n;
        Ok(())
    }

    fn active_segment(&mut self) -> &mut Segment {
        self.segments
            .get_mut(&self.active)
            .expect("the active segment is always in the map")
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
        let active_len = self.active_segment().file_len + self.buf.len() as u64;
        if active_len > 0 && active_len + framed > self.segment_bytes {
            self.roll()?;
        }
        let offset = self.active_segment().file_len + self.buf.len() as u64;
        let location = Location {
            segment: self.active,
            offset: u32::try_from(offset)
                .expect("offsets stay below MAX_SEGMENT_BYTES + MAX_RECORD_BYTES"),
            len: len as u32,
        };
        segment::encode_record(&mut self.buf, record);
        self.active_segment().records += 1;
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
        let sealed = self.active;
        let next = sealed
            .checked_add(1)
            .ok_or_else(|| io::Error::other("segment numbers exhausted"))?;
        self.start_segment(next)?;
        let seg = &self.segments[&sealed];
        if seg.acked == seg.records {
            self.doom(sealed);
        }
        Ok(())
    }

    fn doom(&mut self, n: u32) {
        // The files stay until `flush` removes them (no syscalls in `ack`).
        if self.segments.remove(&n).is_some() {
            self.doomed.push(n);
        }
    }

    /// Records that the message at `loc` is acked (buffered like appends). Once every record of
    /// a sealed segment is acked, the segment and its ack file are deleted. Acking a location
    /// twice is a caller error; acking one whose segment is gone reports `NotFound`.
    pub fn ack(&mut self, loc: Location) -> io::Result<()> {
        self.check_usable()?;
        let Some(seg) = self.segments.get_mut(&loc.segment) else {
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
        if fully_acked && loc.segment != self.active {
            self.doom(loc.segment);
        }
        Ok(())
    }

    /// Hands buffered appends and acks to the kernel (one write per file). After this returns
    /// they survive `kill -9` of the process.
    pub fn flush(&mut self) -> io::Result<()> {
        self.check_usable()?;
        self.write_active()?;
        while let Some(&n) = self.ack_dirty.last() {
            if let Some(seg) = self.segments.get_mut(&n) {
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
        let active = self.active;
        let seg = self
            .segments
            .get_mut(&active)
            .expect("the active segment is always in the map");
        if let Err(e) = seg.file.write_all_at(&self.buf, seg.file_len) {
            // Undo a partial write so the file ends on a record boundary again; the buffer is
            // kept, so a later flush may succeed. If even that fails, the tail is unknown.
            if seg.file.set_len(seg.file_len).is_err() {
                self.broken = true;
            }
            return Err(e);
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

    /// What a publisher confirm waits for, by the log's [`Durability`]: for `Synced`, the same
    /// as [`sync`](Self::sync); for `Written`, a flush, with a waiter that is already resolved
    /// (the sync thread fsyncs the data within `sync_interval`).
    pub fn commit(&mut self) -> io::Result<SyncWaiter> {
        match self.durability {
            Durability::Synced => self.sync(),
            Durability::Written => {
                self.flush()?;
                // A failed background fsync means the disk is losing writes: stop confirming.
                self.sync.is_synced()?;
                Ok(SyncWaiter {
                    state: WaiterState::Done,
                })
            }
        }
    }

    /// Reads one record back (for bodies not kept in memory). Reads buffered data too.
    pub fn read(&self, loc: Location) -> io::Result<Bytes> {
        let seg = self.segments.get(&loc.segment).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                "read of a record whose segment is gone",
            )
        })?;
        let offset = u64::from(loc.offset);
        let framed = (RECORD_HEADER_BYTES + u64::from(loc.len)) as usize;
        if loc.segment == self.active && offset >= seg.file_len {
            let start = (offset - seg.file_len) as usize;
            let bytes = self
                .buf
                .get(start..start + framed)
                .and_then(segment::decode_record)
                .ok_or_else(|| segment::invalid_data("no intact record at this location"))?;
            return Ok(Bytes::copy_from_slice(bytes));
        }
        let mut framed_bytes = vec![0u8; framed];
        seg.file.read_exact_at(&mut framed_bytes, offset)?;
        if segment::decode_record(&framed_bytes).is_none() {
            return Err(segment::invalid_data("no intact record at this location"));
        }
        Ok(Bytes::from(framed_bytes).slice(RECORD_HEADER_BYTES as usize..))
    }

    /// Streams the live (unacked) records in append order, for recovery at start-up. Memory
    /// stays bounded: each record is handed to `f` and then dropped.
    pub fn scan(&self, f: &mut dyn FnMut(Location, &[u8])) -> io::Result<()> {
        for (&n, seg) in &self.segments {
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
            if n == self.active {
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
    seg.ack_len += seg.ack_buf.len() as u64;
    sync.bytes_on_disk
        .fetch_add(seg.ack_buf.len() as u64, Ordering::Relaxed);
    sync.mark_file(&file);
    seg.ack_buf.clear();
    Ok(())
}

fn remove_if_exists(path: &Path) -> io::Result<()> {
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
            WaiterState::Pending(rx) => match rx.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err((kind, msg))) => Err(io::Error::new(kind, msg)),
                Err(_) => Err(io::Error::other(
                    "the storage sync thread stopped before syncing",
                )),
            },
        }
    }
}
