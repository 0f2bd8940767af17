//! On-disk formats of one segment and its ack file, and the reader that walks records.
//!
//! A segment is a sequence of records, each `len: u32 LE | crc: u32 LE | payload`, where `crc`
//! is the CRC32 of the length bytes followed by the payload. Covering the length means a
//! corrupt length is caught like a corrupt payload, and a zero-filled tail (what a file system
//! may leave after a power cut) never parses, since the CRC of four zero bytes is not zero.
//!
//! An ack file is a sequence of 8-byte entries, `offset: u32 LE | crc: u32 LE` with the CRC of
//! the offset bytes, each naming the header offset of an acked record in the segment beside it.
//! Fixed-size entries keep a torn tail from shifting later entries; the CRC makes garbage
//! harmless.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Bytes of the header in front of every record.
pub(super) const RECORD_HEADER_BYTES: u64 = 8;
/// Bytes of one ack file entry.
pub(super) const ACK_ENTRY_BYTES: usize = 8;
/// How much a sequential walk reads per `pread`: large enough to amortise the syscall, small
/// enough that recovery memory stays bounded whatever the segment size.
const WALK_CHUNK_BYTES: usize = 256 * 1024;

pub(super) fn segment_path(dir: &Path, segment: u32) -> PathBuf {
    dir.join(format!("{segment:010}.seg"))
}

pub(super) fn ack_path(dir: &Path, segment: u32) -> PathBuf {
    dir.join(format!("{segment:010}.ack"))
}

/// Parses a file name made by [`segment_path`] or [`ack_path`]: `(segment, is_ack)`.
pub(super) fn parse_file_name(name: &str) -> Option<(u32, bool)> {
    let (stem, ext) = name.split_once('.')?;
    let is_ack = match ext {
        "seg" => false,
        "ack" => true,
        _ => return None,
    };
    if stem.len() != 10 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let segment = stem.parse().ok()?;
    Some((segment, is_ack))
}

fn record_crc(len_bytes: [u8; 4], payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&len_bytes);
    hasher.update(payload);
    hasher.finalize()
}

/// Appends one framed record to `out`. The caller has checked that `payload` fits in a u32.
pub(super) fn encode_record(out: &mut Vec<u8>, payload: &[u8]) {
    let len_bytes = (payload.len() as u32).to_le_bytes();
    let crc = record_crc(len_bytes, payload);
    out.extend_from_slice(&len_bytes);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(payload);
}

/// Checks one framed record (header and payload) and returns its payload.
pub(super) fn decode_record(framed: &[u8]) -> Option<&[u8]> {
    let header = framed.get(..RECORD_HEADER_BYTES as usize)?;
    let len_bytes: [u8; 4] = header[..4].try_into().ok()?;
    let crc = u32::from_le_bytes(header[4..8].try_into().ok()?);
    let payload = framed.get(RECORD_HEADER_BYTES as usize..)?;
    if payload.len() != u32::from_le_bytes(len_bytes) as usize
        || record_crc(len_bytes, payload) != crc
    {
        return None;
    }
    Some(payload)
}

pub(super) fn encode_ack(out: &mut Vec<u8>, offset: u32) {
    let bytes = offset.to_le_bytes();
    out.extend_from_slice(&bytes);
    out.extend_from_slice(&crc32fast::hash(&bytes).to_le_bytes());
}

/// Decodes ack entries, skipping corrupt ones and ignoring a torn partial entry at the end.
pub(super) fn decode_acks(bytes: &[u8], out: &mut Vec<u32>) {
    for entry in bytes.chunks_exact(ACK_ENTRY_BYTES) {
        let offset_bytes: [u8; 4] = entry[..4].try_into().expect("chunk has 8 bytes");
        let crc = u32::from_le_bytes(entry[4..].try_into().expect("chunk has 8 bytes"));
        if crc32fast::hash(&offset_bytes) == crc {
            out.push(u32::from_le_bytes(offset_bytes));
        }
    }
}

/// Reads a whole ack file (missing means no acks) and returns its acked offsets sorted and
/// deduplicated, ready for a merge walk against the records.
pub(super) fn read_acks(path: &Path, pending: &[u8]) -> io::Result<Vec<u32>> {
    let mut acked = Vec::new();
    match std::fs::read(path) {
        Ok(bytes) => decode_acks(&bytes, &mut acked),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    decode_acks(pending, &mut acked);
    acked.sort_unstable();
    acked.dedup();
    Ok(acked)
}

/// Where a walk of a segment stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct WalkEnd {
    /// Offset just past the last intact record.
    pub intact_bytes: u64,
    /// Whether a torn or corrupt record was found before `end`.
    pub damaged: bool,
}

/// Visits the intact records of `file` in `[0, end)` in order, with memory bounded by the
/// largest record, and stops at the first torn or corrupt one. `visit` gets the header offset
/// and the payload.
pub(super) fn walk_records(
    file: &File,
    end: u64,
    mut visit: impl FnMut(u32, &[u8]) -> io::Result<()>,
) -> io::Result<WalkEnd> {
    let mut window: Vec<u8> = Vec::new();
    // File offset of window[0].
    let mut window_start = 0u64;
    let mut pos = 0u64;
    loop {
        let remaining = end - pos;
        if remaining == 0 {
            return Ok(WalkEnd {
                intact_bytes: pos,
                damaged: false,
            });
        }
        if remaining < RECORD_HEADER_BYTES {
            return Ok(WalkEnd {
                intact_bytes: pos,
                damaged: true,
            });
        }
        ensure_window(
            file,
            &mut window,
            &mut window_start,
            pos,
            RECORD_HEADER_BYTES,
            end,
        )?;
        let at = (pos - window_start) as usize;
        let len_bytes: [u8; 4] = window[at..at + 4]
            .try_into()
            .expect("window holds the header");
        let framed_len = RECORD_HEADER_BYTES + u64::from(u32::from_le_bytes(len_bytes));
        if framed_len > remaining {
            return Ok(WalkEnd {
                intact_bytes: pos,
                damaged: true,
            });
        }
        ensure_window(file, &mut window, &mut window_start, pos, framed_len, end)?;
        let at = (pos - window_start) as usize;
        let Some(payload) = decode_record(&window[at..at + framed_len as usize]) else {
            return Ok(WalkEnd {
                intact_bytes: pos,
                damaged: true,
            });
        };
        let offset = u32::try_from(pos).map_err(|_| invalid_data("segment larger than 4 GiB"))?;
        visit(offset, payload)?;
        pos += framed_len;
    }
}

/// Makes `window` cover `[pos, pos + need)`, refilling from `pos` when it does not.
fn ensure_window(
    file: &File,
    window: &mut Vec<u8>,
    window_start: &mut u64,
    pos: u64,
    need: u64,
    end: u64,
) -> io::Result<()> {
    let window_end = *window_start + window.len() as u64;
    if pos >= *window_start && pos + need <= window_end {
        return Ok(());
    }
    let len = (need.max(WALK_CHUNK_BYTES as u64)).min(end - pos) as usize;
    window.clear();
    window.resize(len, 0);
    file.read_exact_at(window, pos)?;
    *window_start = pos;
    Ok(())
}

pub(super) fn invalid_data(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn record_round_trip_and_corruption_detected() {
        let mut buf = Vec::new();
        encode_record(&mut buf, b"hello");
        assert_eq!(decode_record(&buf), Some(&b"hello"[..]));
        for i in 0..buf.len() {
            let mut bad = buf.clone();
            bad[i] ^= 0x40;
            assert_eq!(decode_record(&bad), None, "flip at byte {i} went unnoticed");
        }
        assert_eq!(
            decode_record(&[0u8; 8]),
            None,
            "a zero-filled header must not parse"
        );
    }

    #[test]
    fn ack_entries_skip_garbage_and_torn_tail() {
        let mut buf = Vec::new();
        encode_ack(&mut buf, 7);
        buf.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        encode_ack(&mut buf, 99);
        buf.extend_from_slice(&[9, 9, 9]);
        let mut out = Vec::new();
        decode_acks(&buf, &mut out);
        assert_eq!(out, vec![7, 99]);
    }

    #[test]
    fn file_names_parse_back() {
        let dir = Path::new("/x");
        for seg in [1, 42, u32::MAX] {
            let p = segment_path(dir, seg);
            let name = p.file_name().and_then(|n| n.to_str()).expect("utf-8 name");
            assert_eq!(parse_file_name(name), Some((seg, false)));
            let p = ack_path(dir, seg);
            let name = p.file_name().and_then(|n| n.to_str()).expect("utf-8 name");
            assert_eq!(parse_file_name(name), Some((seg, true)));
        }
        assert_eq!(parse_file_name("meta"), None);
        assert_eq!(parse_file_name("00000000x1.seg"), None);
        assert_eq!(parse_file_name("0000000001.tmp"), None);
    }

    #[test]
    fn walk_stops_at_damage_and_spans_chunks() {
        let mut file = tempfile::tempfile().expect("temp file");
        let mut buf = Vec::new();
        let big = vec![0xab; WALK_CHUNK_BYTES + 100];
        encode_record(&mut buf, b"a");
        encode_record(&mut buf, &big);
        encode_record(&mut buf, b"c");
        let intact = buf.len() as u64;
        buf.extend_from_slice(&[0xff; 5]);
        file.write_all(&buf).expect("write");
        let mut seen = Vec::new();
        let end = walk_records(&file, buf.len() as u64, |off, p| {
            seen.push((off, p.len()));
            Ok(())
        })
        .expect("walk");
        assert_eq!(
            end,
            WalkEnd {
                intact_bytes: intact,
                damaged: true
            }
        );
        assert_eq!(
            seen,
            vec![(0, 1), (9, big.len()), (9 + 8 + big.len() as u32, 1)]
        );
    }
}
