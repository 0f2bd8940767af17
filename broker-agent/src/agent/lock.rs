//! Exclusive ownership of a node's data directory.
//!
//! Two agents on one data directory would corrupt its queue logs, and a control plane that
//! restarts may not know whether an agent is still running. So an agent holds an exclusive
//! advisory lock (`flock`) on `<data-dir>/agent.lock` for its whole life; a second agent on the
//! same directory fails at start. The kernel drops the lock when the process dies, however it
//! dies, so a crashed agent never blocks its successor. The pid file beside it lets the
//! provider find the process without scanning.

use anyhow::{bail, Context};
use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write;
use std::path::{Path, PathBuf};

pub const LOCK_FILE: &str = "agent.lock";
pub const PID_FILE: &str = "agent.pid";

/// Held for the agent's lifetime; dropping it releases the directory.
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
    pid_path: PathBuf,
}

impl DataDirLock {
    /// Takes the lock without waiting, then records this process's pid.
    pub fn acquire(data_dir: &Path) -> anyhow::Result<Self> {
        let path = data_dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                bail!(
                    "another agent holds {}: refusing to share the data directory",
                    path.display()
                )
            }
            Err(TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("locking {}", path.display()))
            }
        }
        let pid_path = data_dir.join(PID_FILE);
        let mut pid =
            File::create(&pid_path).with_context(|| format!("creating {}", pid_path.display()))?;
        writeln!(pid, "{}", std::process::id()).context("writing the pid file")?;
        Ok(DataDirLock {
            _file: file,
            pid_path,
        })
    }
}

impl Drop for DataDirLock {
    fn drop(&mut self) {
        // Best effort: a stale pid file is harmless (the provider checks the process behind it).
        let _ = std::fs::remove_file(&self.pid_path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_is_refused_until_the_first_releases() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = DataDirLock::acquire(dir.path()).expect("first lock");
        let pid = std::fs::read_to_string(dir.path().join(PID_FILE)).expect("pid file");
        assert_eq!(pid.trim(), std::process::id().to_string());
        let err = DataDirLock::acquire(dir.path()).expect_err("second lock must fail");
        assert!(format!("{err:#}").contains("another agent"), "{err:#}");
        drop(first);
        assert!(!dir.path().join(PID_FILE).exists());
        DataDirLock::acquire(dir.path()).expect("lock after release");
    }
}
