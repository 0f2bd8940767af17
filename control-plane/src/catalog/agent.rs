//! The agent version the control plane would start now: it asks the configured agent binary
//! (`mooring-agent --version`) at start and again whenever the file changes (its size,
//! modification time, inode or change time), as when the installed binaries are upgraded.
//! Nodes reporting another version (broker_nodes.agent_version) have an `AGENT_VERSION`
//! pending action (see `reconcile::maintenance`).
//!
//! A binary that cannot be asked (missing, not executable, no answer within
//! [`ASK_TIMEOUT`]) has no known version: nothing is scheduled from it, and the last answer
//! of a binary since replaced is not kept (a half-installed upgrade must not stand for the
//! new version).

use std::io::Read as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// The longest `--version` may take.
pub const ASK_TIMEOUT: Duration = Duration::from_secs(5);

/// What identifies one installed file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    mtime_ns: i128,
    ctime_ns: i128,
    ino: u64,
    dev: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        len: m.len(),
        mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
        ctime_ns: i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()),
        ino: m.ino(),
        dev: m.dev(),
    })
}

/// The configured agent binary and the version it last answered.
pub struct AgentBinary {
    path: PathBuf,
    last: Mutex<Option<(Stamp, Option<String>)>>,
}

impl AgentBinary {
    pub fn new(path: PathBuf) -> Self {
        AgentBinary {
            path,
            last: Mutex::new(None),
        }
    }

    /// The version of the binary as installed now; asks it again only if the file changed.
    /// Blocking (it may run the binary): call from a blocking context.
    pub fn version(&self) -> Option<String> {
        let now = stamp(&self.path)?;
        if let Some((seen, version)) = &*self.last.lock() {
            if *seen == now {
                return version.clone();
            }
        }
        let asked = ask(&self.path);
        match &asked {
            Ok(v) => {
                tracing::info!(binary = %self.path.display(), version = %v, "agent binary version")
            }
            Err(e) => {
                tracing::warn!(binary = %self.path.display(), "asking the agent binary its version: {e}")
            }
        }
        let version = asked.ok();
        // The file may have changed while it was being asked: keep the answer only for the
        // file it came from, so the next call asks again.
        if stamp(&self.path) == Some(now) {
            *self.last.lock() = Some((now, version.clone()));
        }
        version
    }
}

/// Runs `<binary> --version` and reads the last word of its first line (`mooring-agent 0.1.0`).
pub fn ask(path: &Path) -> Result<String, String> {
    let mut child = Command::new(path)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("starting it: {e}"))?;
    let deadline = Instant::now() + ASK_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("no answer within {ASK_TIMEOUT:?}"));
            }
            Err(e) => return Err(format!("waiting for it: {e}")),
        }
    };
    let mut out = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        stdout
            .read_to_string(&mut out)
            .map_err(|e| format!("reading its answer: {e}"))?;
    }
    if !status.success() {
        return Err(format!("it exited with {status}"));
    }
    parse_version(&out).ok_or_else(|| format!("unexpected answer {out:?}"))
}

/// The version in a `--version` answer: the last word of the first line.
pub fn parse_version(out: &str) -> Option<String> {
    let word = out.lines().next()?.split_whitespace().last()?;
    let ok = word.len() <= 64
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-+_".contains(&b));
    ok.then(|| word.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn parses_the_last_word_of_the_first_line() {
        assert_eq!(
            parse_version("mooring-agent 0.1.0\n").as_deref(),
            Some("0.1.0")
        );
        assert_eq!(
            parse_version("9.9.9-test\nmore").as_deref(),
            Some("9.9.9-test")
        );
        assert_eq!(parse_version(""), None);
        assert_eq!(parse_version("mooring-agent 0.1;rm\n"), None);
    }

    fn script(path: &Path, version: &str) {
        install(
            path,
            &format!("#!/bin/sh\necho \"mooring-agent {version}\"\n"),
        );
    }

    fn install(path: &Path, text: &str) {
        // Written aside and renamed in, as an installer does (a running file is not rewritten).
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).expect("write");
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        std::fs::rename(&tmp, path).expect("rename");
    }

    #[test]
    fn asks_again_when_the_binary_is_replaced() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("agent");
        let binary = AgentBinary::new(path.clone());
        assert_eq!(binary.version(), None, "no binary yet");
        script(&path, "1.0.0");
        assert_eq!(binary.version().as_deref(), Some("1.0.0"));
        assert_eq!(binary.version().as_deref(), Some("1.0.0"), "cached");
        script(&path, "1.1.0");
        assert_eq!(
            binary.version().as_deref(),
            Some("1.1.0"),
            "the upgrade is seen"
        );
        install(&path, "#!/bin/sh\nexit 3\n");
        assert_eq!(binary.version(), None, "a broken binary has no version");
    }
}
