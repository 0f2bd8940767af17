//! The definitions snapshot: one file replaced atomically.
//!
//! The file is `MAGIC | len: u64 LE | crc32: u32 LE | bytes`. Rename makes the replacement
//! atomic; the checksum turns a corrupted file (a disk fault, a stray edit) into an error at
//! start-up instead of definitions silently misread by the engine.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

use super::segment::invalid_data;

pub(super) const FILE_NAME: &str = "definitions";
const TEMP_NAME: &str = "definitions.tmp";
const MAGIC: &[u8; 8] = b"MOORDEF1";
const HEADER_BYTES: usize = MAGIC.len() + 8 + 4;

/// Returns the saved snapshot, or `None` if none was ever saved. A temp file left by a crash
/// during `save` is discarded: the rename never happened, so the previous snapshot stands.
pub(super) fn load(dir: &Path) -> io::Result<Option<Vec<u8>>> {
    match std::fs::remove_file(dir.join(TEMP_NAME)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let raw = match std::fs::read(dir.join(FILE_NAME)) {
        Ok(raw) => raw,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    decode(&raw).map(|bytes| Some(bytes.to_vec()))
}

fn decode(raw: &[u8]) -> io::Result<&[u8]> {
    if raw.len() < HEADER_BYTES || &raw[..MAGIC.len()] != MAGIC {
        return Err(invalid_data("definitions file has no valid header"));
    }
    let len = u64::from_le_bytes(raw[8..16].try_into().expect("8 bytes"));
    let crc = u32::from_le_bytes(raw[16..20].try_into().expect("4 bytes"));
    let body = &raw[HEADER_BYTES..];
    if body.len() as u64 != len || crc32fast::hash(body) != crc {
        return Err(invalid_data(
            "definitions file is corrupt (length or checksum mismatch)",
        ));
    }
    Ok(body)
}

/// Replaces the snapshot; durable when this returns. Callers serialise saves.
pub(super) fn save(dir: &Path, bytes: &[u8]) -> io::Result<()> {
    let temp = dir.join(TEMP_NAME);
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&temp)?;
    let mut out = Vec::with_capacity(HEADER_BYTES + bytes.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(bytes).to_le_bytes());
    out.extend_from_slice(bytes);
    file.write_all(&out)?;
    // Data before rename: otherwise a power cut could leave the new name on an empty file.
    file.sync_all()?;
    drop(file);
    std::fs::rename(&temp, dir.join(FILE_NAME))?;
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_dir_has_none_then_round_trips_and_replaces() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(load(dir.path()).expect("load"), None);
        save(dir.path(), b"first").expect("save");
        assert_eq!(
            load(dir.path()).expect("load").as_deref(),
            Some(&b"first"[..])
        );
        save(dir.path(), b"").expect("save empty");
        assert_eq!(load(dir.path()).expect("load").as_deref(), Some(&b""[..]));
        save(dir.path(), b"third").expect("save");
        assert_eq!(
            load(dir.path()).expect("load").as_deref(),
            Some(&b"third"[..])
        );
    }

    #[test]
    fn leftover_temp_file_is_ignored_and_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        save(dir.path(), b"committed").expect("save");
        std::fs::write(dir.path().join(TEMP_NAME), b"half-writ").expect("write temp");
        assert_eq!(
            load(dir.path()).expect("load").as_deref(),
            Some(&b"committed"[..])
        );
        assert!(!dir.path().join(TEMP_NAME).exists());
    }

    #[test]
    fn corruption_is_an_error_not_a_misread() {
        let dir = tempfile::tempdir().expect("tempdir");
        save(dir.path(), b"some definitions").expect("save");
        let path = dir.path().join(FILE_NAME);
        let mut raw = std::fs::read(&path).expect("read");
        let last = raw.len() - 1;
        raw[last] ^= 1;
        std::fs::write(&path, &raw).expect("write");
        let err = load(dir.path()).expect_err("corrupt file must not load");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        std::fs::write(&path, &raw[..10]).expect("write");
        assert!(load(dir.path()).is_err());
    }
}
