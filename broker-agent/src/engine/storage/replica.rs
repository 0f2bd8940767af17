//! Storage as seen by replication: every durable mutation as a physical file operation, a tap
//! through which the leader's storage reports them, and the follower's apply path.
//!
//! Operations name files by their path relative to the storage directory and are *physical*
//! (create, write these bytes at this offset, truncate, remove, rename), so a follower that
//! applies a leader's operations in order holds the same files, and on promotion the normal
//! recovery (`Storage::open`, `open_queue_log`) opens them. Every operation is idempotent when
//! replayed in order over a copy taken at any moment after it: that is what lets a full resync
//! copy the leader's files while they change and then replay the stream from the position read
//! before the copy started (the way a base backup plus WAL replay works).
//!
//! The tap is called right *after* the mutation it reports, so an operation whose position is
//! at most `P` has reached the files before anyone could read `P` from the tap.

use std::collections::HashMap;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Component, Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

/// One durable mutation of the storage directory. Paths are relative to it, `/`-separated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileOp<'a> {
    /// `mkdir`, succeeding if it exists.
    CreateDir { path: &'a str },
    /// Create (or truncate) a file and write `data` as its whole contents.
    WriteFile { path: &'a str, data: &'a [u8] },
    /// Create an empty file (truncating one that exists).
    CreateFile { path: &'a str },
    /// Positioned write (creating the file if absent).
    WriteAt {
        path: &'a str,
        offset: u64,
        data: &'a [u8],
    },
    /// Truncate (or extend) a file to `len`.
    SetLen { path: &'a str, len: u64 },
    /// Remove a file; absent is fine.
    Remove { path: &'a str },
    /// Rename a file or directory; an absent source is fine.
    Rename { from: &'a str, to: &'a str },
    /// Remove a directory tree; absent is fine.
    RemoveDirAll { path: &'a str },
    /// Replace the definitions snapshot (the engine's opaque bytes).
    Definitions { data: &'a [u8] },
}

/// Where a leader's storage reports its mutations (the replication hub implements it).
pub trait StorageTap: Send + Sync + 'static {
    /// Records one mutation that has just been applied to the files. Must be quick: it runs
    /// under queue locks on the publish path.
    fn record(&self, op: FileOp<'_>);
    /// A position covering every operation recorded so far.
    fn position(&self) -> u64;
    /// Resolves once every follower that must have `lsn` acknowledged it and the leader may
    /// still confirm; an error means "never": the caller must not confirm.
    fn replicated(&self, lsn: u64) -> Pin<Box<dyn Future<Output = io::Result<()>> + Send>>;
}

/// A shared tap, cheap to clone. `Debug` so that configurations holding one stay printable.
#[derive(Clone)]
pub struct Tap(pub Arc<dyn StorageTap>);

impl fmt::Debug for Tap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Tap")
    }
}

/// A tap bound to one directory under the storage root (`""` for the root itself).
#[derive(Clone, Debug)]
pub(super) struct DirTap {
    pub tap: Tap,
    pub rel_dir: String,
}

impl DirTap {
    /// The relative path of `abs`, a file directly inside this tap's directory.
    pub fn rel(&self, abs: &Path) -> String {
        let name = abs
            .file_name()
            .and_then(|n| n.to_str())
            .expect("storage file names are ASCII");
        if self.rel_dir.is_empty() {
            name.to_string()
        } else {
            format!("{}/{name}", self.rel_dir)
        }
    }

    pub fn record(&self, op: FileOp<'_>) {
        self.tap.0.record(op);
    }
}

/// Present in a storage directory while a full resync is under way: its files are then a
/// partial copy, and the node must not lead on them.
pub const RESYNC_MARKER: &str = "RESYNC-IN-PROGRESS";

/// Applies operations to a follower's storage directory. Keeps the files it writes open
/// (segments receive many appends); every removal or rename drops the cache.
pub struct Applier {
    root: PathBuf,
    open: HashMap<String, File>,
}

/// Most files kept open by an applier; beyond it the cache is emptied (rarely: a handful of
/// queues are written at once).
const MAX_OPEN_FILES: usize = 256;

impl Applier {
    /// `root` is the storage directory (the engine's data dir). Created if needed.
    pub fn new(root: impl Into<PathBuf>) -> io::Result<Applier> {
        let root = root.into();
        std::fs::create_dir_all(root.join("queues"))?;
        Ok(Applier {
            root,
            open: HashMap::new(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Checks that `path` stays under the root: relative, no `..`, not empty. A leader is
    /// authenticated, but a bug must not be able to write outside the data directory.
    fn resolve(&self, path: &str) -> io::Result<PathBuf> {
        let p = Path::new(path);
        if path.is_empty() || !p.components().all(|c| matches!(c, Component::Normal(_))) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("replicated path {path:?} is not a plain relative path"),
            ));
        }
        if path == super::LOCK_FILE || path == RESYNC_MARKER {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "replicated path names the storage lock file",
            ));
        }
        Ok(self.root.join(p))
    }

    fn file(&mut self, path: &str, truncate: bool) -> io::Result<&File> {
        if truncate {
            self.open.remove(path);
        }
        if !self.open.contains_key(path) {
            if self.open.len() >= MAX_OPEN_FILES {
                self.open.clear();
            }
            let abs = self.resolve(path)?;
            if let Some(parent) = abs.parent() {
                std::fs::create_dir_all(parent)?;
            }
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(truncate)
                .open(&abs)?;
            self.open.insert(path.to_string(), file);
        }
        Ok(self.open.get(path).expect("inserted above"))
    }

    /// Applies one operation: written to the kernel (not fsync'd) when this returns, except
    /// `Definitions`, which is fsync'd like the leader's.
    pub fn apply(&mut self, op: &FileOp<'_>) -> io::Result<()> {
        match *op {
            FileOp::CreateDir { path } => {
                let abs = self.resolve(path)?;
                std::fs::create_dir_all(abs)
            }
            FileOp::WriteFile { path, data } => {
                let mut f = self.file(path, true)?;
                f.write_all(data)
            }
            FileOp::CreateFile { path } => self.file(path, true).map(|_| ()),
            FileOp::WriteAt { path, offset, data } => {
                self.file(path, false)?.write_all_at(data, offset)
            }
            FileOp::SetLen { path, len } => self.file(path, false)?.set_len(len),
            FileOp::Remove { path } => {
                let abs = self.resolve(path)?;
                self.open.remove(path);
                ignore_not_found(std::fs::remove_file(abs))
            }
            FileOp::Rename { from, to } => {
                let (f, t) = (self.resolve(from)?, self.resolve(to)?);
                self.open.clear();
                ignore_not_found(std::fs::rename(f, t))
            }
            FileOp::RemoveDirAll { path } => {
                let abs = self.resolve(path)?;
                self.open.clear();
                ignore_not_found(std::fs::remove_dir_all(abs))
            }
            FileOp::Definitions { data } => super::definitions::save(&self.root, data),
        }
    }

    /// Removes everything but the lock file: the start of a full resync.
    pub fn wipe(&mut self) -> io::Result<()> {
        self.open.clear();
        for entry in std::fs::read_dir(&self.root)? {
            let entry = entry?;
            if entry.file_name() == super::LOCK_FILE {
                continue;
            }
            if entry.file_type()?.is_dir() {
                std::fs::remove_dir_all(entry.path())?;
            } else {
                std::fs::remove_file(entry.path())?;
            }
        }
        std::fs::create_dir_all(self.root.join("queues"))?;
        File::create(self.root.join(RESYNC_MARKER))?.sync_all()?;
        File::open(&self.root)?.sync_all()
    }

    /// The end of a full resync: everything applied is fsync'd, then the marker goes.
    pub fn finish_resync(&mut self) -> io::Result<()> {
        self.sync()?;
        ignore_not_found(std::fs::remove_file(self.root.join(RESYNC_MARKER)))?;
        File::open(&self.root)?.sync_all()
    }

    /// Fsyncs the files written so far (a follower does this periodically, like the leader's
    /// sync thread, and before reporting a resync complete).
    pub fn sync(&mut self) -> io::Result<()> {
        for f in self.open.values() {
            f.sync_data()?;
        }
        Ok(())
    }
}

fn ignore_not_found(r: io::Result<()>) -> io::Result<()> {
    match r {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Every file of a storage directory a full resync copies (definitions, queue metas, segments,
/// ack files), as relative paths, in an order where directories come before their files.
/// The lock file and leftovers of interrupted writes are skipped.
pub fn list_files(root: &Path) -> io::Result<Vec<String>> {
    let mut out = Vec::new();
    if root.join(super::definitions::FILE_NAME).exists() {
        out.push(super::definitions::FILE_NAME.to_string());
    }
    let queues = root.join(super::QUEUES_DIR);
    let mut dirs: Vec<String> = match std::fs::read_dir(&queues) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            // Renamed-away (deleted) queue directories are not copied.
            .filter(|n| !n.contains('.'))
            .collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    dirs.sort();
    for d in dirs {
        let mut files: Vec<String> = match std::fs::read_dir(queues.join(&d)) {
            Ok(rd) => rd
                .filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .filter(|n| n == super::META_FILE || super::segment::parse_file_name(n).is_some())
                .collect(),
            // Deleted while we listed: the stream replays its deletion.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        files.sort();
        for f in files {
            out.push(format!("{}/{d}/{f}", super::QUEUES_DIR));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_outside_the_root_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut a = Applier::new(dir.path()).expect("applier");
        for bad in ["", "/etc/passwd", "../x", "queues/../../x", "LOCK", "./x"] {
            let err = a.apply(&FileOp::CreateFile { path: bad }).expect_err(bad);
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{bad}");
        }
    }

    #[test]
    fn replay_over_a_later_copy_converges() {
        // The ops of a queue deleted and redeclared, replayed over a directory that already
        // holds the redeclared queue, end with exactly the leader's files.
        let dir = tempfile::tempdir().expect("tempdir");
        let mut a = Applier::new(dir.path()).expect("applier");
        let ops = [
            FileOp::CreateDir { path: "queues/q" },
            FileOp::WriteFile {
                path: "queues/q/meta",
                data: b"m1",
            },
            FileOp::CreateFile {
                path: "queues/q/0000000001.seg",
            },
            FileOp::WriteAt {
                path: "queues/q/0000000001.seg",
                offset: 0,
                data: b"old",
            },
            FileOp::Rename {
                from: "queues/q",
                to: "queues/q.deleted-1",
            },
            FileOp::RemoveDirAll {
                path: "queues/q.deleted-1",
            },
            FileOp::CreateDir { path: "queues/q" },
            FileOp::WriteFile {
                path: "queues/q/meta",
                data: b"m2",
            },
            FileOp::CreateFile {
                path: "queues/q/0000000002.seg",
            },
            FileOp::WriteAt {
                path: "queues/q/0000000002.seg",
                offset: 0,
                data: b"new!",
            },
            FileOp::SetLen {
                path: "queues/q/0000000002.seg",
                len: 3,
            },
        ];
        for op in &ops {
            a.apply(op).expect("apply");
        }
        let first = std::fs::read(dir.path().join("queues/q/0000000002.seg")).expect("read");
        // Replay everything again over the final state: same result.
        for op in &ops {
            a.apply(op).expect("replay");
        }
        assert_eq!(first, b"new");
        assert_eq!(
            std::fs::read(dir.path().join("queues/q/0000000002.seg")).expect("read"),
            b"new"
        );
        assert!(!dir.path().join("queues/q/0000000001.seg").exists());
        assert_eq!(
            std::fs::read(dir.path().join("queues/q/meta")).expect("meta"),
            b"m2"
        );
        assert_eq!(
            list_files(dir.path()).expect("list"),
            vec![
                "queues/q/0000000002.seg".to_string(),
                "queues/q/meta".to_string()
            ]
        );
    }
}
