//! A `mooring-agent standalone` process under test: started on a data directory, killed with
//! SIGKILL or stopped with SIGTERM, and restarted on the same directory.

use std::fs::OpenOptions;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::{binary, wait_for};

/// How long a (debug) agent may take to write ports.json after it was spawned.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long SIGTERM may take before the agent is killed instead.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// `<data-dir>/ports.json`, written by the agent once its listeners are bound.
#[derive(Debug, Clone, Deserialize)]
pub struct Ports {
    pub amqp: SocketAddr,
    pub admin: SocketAddr,
    #[serde(default)]
    pub amqps: Option<SocketAddr>,
}

/// A running (or stopped) agent. Its data directory is kept across restarts; dropping the
/// `Agent` kills the process.
pub struct Agent {
    exe: PathBuf,
    data_dir: PathBuf,
    extra_args: Vec<String>,
    child: Option<Child>,
    ports: Option<Ports>,
    log_path: PathBuf,
}

impl Agent {
    /// Starts an agent on `data_dir` with ephemeral ports and waits until it listens.
    pub async fn start(data_dir: &Path, extra_args: &[&str]) -> Result<Agent> {
        let mut agent = Agent {
            exe: binary("mooring-agent")?,
            data_dir: data_dir.to_path_buf(),
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            child: None,
            ports: None,
            log_path: data_dir.with_extension("log"),
        };
        agent.restart().await?;
        Ok(agent)
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The ports of the running process.
    pub fn ports(&self) -> Result<&Ports> {
        self.ports.as_ref().context("the agent is not running")
    }

    /// `amqp://guest:guest@127.0.0.1:PORT/%2f` for the running process.
    pub fn amqp_uri(&self) -> Result<String> {
        Ok(format!("amqp://guest:guest@{}/%2f", self.ports()?.amqp))
    }

    /// Starts the process again on the same data directory (after `kill` or `stop`).
    pub async fn restart(&mut self) -> Result<()> {
        if self.child.is_some() {
            bail!("restart of an agent that is still running");
        }
        std::fs::create_dir_all(&self.data_dir)
            .with_context(|| format!("creating {}", self.data_dir.display()))?;
        let ports_file = self.data_dir.join("ports.json");
        // A file left by the previous process names ports the new one does not hold.
        match std::fs::remove_file(&ports_file) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).context("removing a stale ports.json"),
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .with_context(|| format!("opening {}", self.log_path.display()))?;
        let child = Command::new(&self.exe)
            .arg("standalone")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args([
                "--amqp-listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
            ])
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("duplicating the log handle")?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawning {}", self.exe.display()))?;
        self.child = Some(child);

        let result = wait_for(START_TIMEOUT, "mooring-agent to write ports.json", || {
            let exited = self.child.as_mut().map(|c| c.try_wait());
            let ports_file = ports_file.clone();
            async move {
                if let Some(Ok(Some(status))) = exited {
                    bail!("mooring-agent exited during start-up with {status}");
                }
                match std::fs::read(&ports_file) {
                    // An incomplete file does not parse yet: poll again.
                    Ok(bytes) => Ok(serde_json::from_slice::<Ports>(&bytes).ok()),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(e.into()),
                }
            }
        })
        .await;
        match result {
            Ok(ports) => {
                self.ports = Some(ports);
                Ok(())
            }
            Err(e) => {
                self.kill();
                Err(e.context(format!("agent log:\n{}", self.log_tail())))
            }
        }
    }

    /// SIGKILL, then reap the process: the crash the durability tests simulate.
    pub fn kill(&mut self) {
        self.ports = None;
        if let Some(mut child) = self.child.take() {
            // Errors mean the process is already gone, which is what we want.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait for a clean exit; falls back to SIGKILL after [`STOP_TIMEOUT`].
    pub async fn stop(&mut self) -> Result<()> {
        self.ports = None;
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        // std has no SIGTERM; kill(1) sends it without unsafe code.
        let sent = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !sent {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(());
        }
        let deadline = tokio::time::Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait()? {
                if !status.success() {
                    bail!("mooring-agent exited with {status} after SIGTERM");
                }
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("mooring-agent did not exit within {STOP_TIMEOUT:?} of SIGTERM");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The agent's combined stdout and stderr over all its restarts.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The last few kilobytes of the agent's combined stdout and stderr, for failure messages.
    pub fn log_tail(&self) -> String {
        let Ok(text) = std::fs::read_to_string(&self.log_path) else {
            return "(no log)".into();
        };
        let start = text.len().saturating_sub(4000);
        let start = (start..text.len())
            .find(|i| text.is_char_boundary(*i))
            .unwrap_or(text.len());
        text[start..].to_string()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}
