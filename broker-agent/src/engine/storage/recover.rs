//! Start-up recovery of one queue log: find the segments on disk, cut torn or corrupt tails at
//! the last intact record, count live records against the ack files, and remove what is no
//! longer needed (fully acked segments, ack files whose segment is gone).

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::log::{remove_if_exists, Segment};
use super::replica::FileOp;
use super::segment::{self, ACK_ENTRY_BYTES};
use super::sync::LogSync;

/// What recovery found.
pub(super) struct Recovered {
    /// Segments with live records, by number. All are sealed: appends never go to a recovered
    /// segment, so stale ack entries past a cut can never name a new record.
    pub sealed: BTreeMap<u32, Segment>,
    /// The highest segment number seen on disk (0 if none); the next active segment is above.
    pub highest: u32,
    pub live_records: u64,
    pub live_bytes: u64,
}

pub(super) fn recover(dir: &Path, sync: &LogSync) -> io::Result<Recovered> {
    let mut segs = Vec::new();
    let mut acks = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        match name.to_str().and_then(segment::parse_file_name) {
            Some((n, false)) => segs.push(n),
            Some((n, true)) => acks.push(n),
            None => {}
        }
    }
    segs.sort_unstable();
    let mut found = Recovered {
        sealed: BTreeMap::new(),
        highest: segs.iter().chain(&acks).copied().max().unwrap_or(0),
        live_records: 0,
        live_bytes: 0,
    };
    // An ack file without its segment is what a crash between the two unlinks leaves.
    for n in acks.iter().filter(|n| segs.binary_search(n).is_err()) {
        remove_if_exists(&segment::ack_path(dir, *n))?;
        if let Some(tap) = &sync.tap {
            tap.record(FileOp::Remove {
                path: &tap.rel(&segment::ack_path(dir, *n)),
            });
        }
        sync.mark_dir();
    }
    for n in segs {
        recover_segment(dir, n, sync, &mut found)?;
    }
    Ok(found)
}

fn recover_segment(dir: &Path, n: u32, sync: &LogSync, found: &mut Recovered) -> io::Result<()> {
    let path = segment::segment_path(dir, n);
    let file = OpenOptions::new().read(true).write(true).open(&path)?;
    let len = file.metadata()?.len();
    let ack_path = segment::ack_path(dir, n);
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
        if let Some(tap) = &sync.tap {
            tap.record(FileOp::SetLen {
                path: &tap.rel(&path),
                len: end.intact_bytes,
            });
        }
    }
    if acked == records {
        // Nothing live: the whole segment goes (an empty one too, e.g. the fresh active
        // segment of a run that wrote nothing).
        remove_if_exists(&path)?;
        remove_if_exists(&ack_path)?;
        if let Some(tap) = &sync.tap {
            tap.record(FileOp::Remove {
                path: &tap.rel(&path),
            });
            tap.record(FileOp::Remove {
                path: &tap.rel(&ack_path),
            });
        }
        sync.mark_dir();
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
                if let Some(tap) = &sync.tap {
                    tap.record(FileOp::SetLen {
                        path: &tap.rel(&ack_path),
                        len: aligned,
                    });
                }
            }
            (Some(Arc::new(f)), aligned)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => (None, 0),
        Err(e) => return Err(e),
    };
    found.live_records += u64::from(records - acked);
    found.live_bytes += live_bytes;
    sync.bytes_on_disk
        .fetch_add(end.intact_bytes + ack_len, Ordering::Relaxed);
    sync.segments.fetch_add(1, Ordering::Relaxed);
    let mut seg = Segment::new(Arc::new(file), end.intact_bytes, records);
    seg.acked = acked;
    seg.ack_file = ack_file;
    seg.ack_len = ack_len;
    found.sealed.insert(n, seg);
    Ok(())
}
