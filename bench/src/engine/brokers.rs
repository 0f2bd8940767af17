//! Starting and stopping the two brokers under test: `mooring-agent standalone` and a
//! private RabbitMQ node. Each runs from a temporary directory and is stopped by its PID
//! when its handle drops (SIGTERM, then SIGKILL), so that an error, a panic or an
//! interrupt never leaves a broker behind.
//!
//! RabbitMQ is a private node rather than the shared one on 5672: its CPU and memory are
//! then ours alone to measure (other engineers' tests use the shared node), it starts
//! empty, and its configuration is known (no plugins, no management listener).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use super::procstat::is_alive;

/// How long a broker may take to become ready.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a broker gets to exit after SIGTERM before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(50);

const RABBITMQ_SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";
const RABBITMQCTL: &str = "/usr/lib/rabbitmq/bin/rabbitmqctl";
/// The Erlang cookie of user rabbitmq lives here; rabbitmqctl must see the same one.
const RABBITMQ_HOME: &str = "/var/lib/rabbitmq";

/// A broker ready for load.
#[derive(Debug)]
pub struct Broker {
    pub name: &'static str,
    pub uri: String,
    /// The process whose CPU and memory are the broker's (beam.smp for RabbitMQ).
    pub pid: u32,
    /// None for a broker someone else runs.
    owned: Option<Owned>,
}

#[derive(Debug)]
struct Owned {
    child: Child,
    /// Held only to be removed on drop, after Broker::drop has stopped the process.
    _dir: tempfile::TempDir,
    log: PathBuf,
}

impl Broker {
    /// A broker already running elsewhere: measured, never stopped.
    pub fn external(name: &'static str, uri: String, pid: u32) -> Result<Self> {
        if !is_alive(pid) {
            bail!("{name}: no process {pid}");
        }
        Ok(Self {
            name,
            uri,
            pid,
            owned: None,
        })
    }

    /// The last lines of the broker's own output, for error messages.
    pub fn log_tail(&self) -> String {
        self.owned
            .as_ref()
            .map(|o| tail(&o.log, 20))
            .unwrap_or_default()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(owned) = &mut self.owned {
            stop_pid(self.pid);
            // The process we spawned (runuser for RabbitMQ) exits with the broker.
            if let Err(e) = owned.child.kill() {
                // Already exited is the normal case.
                let _ = e;
            }
            let _ = owned.child.wait();
            eprintln!("stopped {} (pid {})", self.name, self.pid);
        }
    }
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([sig, &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

/// SIGTERM, wait up to STOP_TIMEOUT, then SIGKILL.
fn stop_pid(pid: u32) {
    signal(pid, "-TERM");
    let deadline = Instant::now() + STOP_TIMEOUT;
    while is_alive(pid) && Instant::now() < deadline {
        std::thread::sleep(POLL);
    }
    if is_alive(pid) {
        eprintln!("pid {pid} ignored SIGTERM for {STOP_TIMEOUT:?}: SIGKILL");
        signal(pid, "-KILL");
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr().context("reading the bound port")?.port())
}

#[derive(Deserialize)]
struct Ports {
    amqp: String,
}

/// Starts `mooring-agent standalone` on ephemeral ports and waits for its ports.json.
pub fn start_mooring(agent: &Path) -> Result<Broker> {
    let dir = tempfile::Builder::new()
        .prefix("mooring-bench-agent.")
        .tempdir()
        .context("creating the agent's temp dir")?;
    let data = dir.path().join("data");
    let log = dir.path().join("agent.log");
    let out = std::fs::File::create(&log).context("creating the agent log")?;
    let err = out.try_clone().context("sharing the agent log")?;
    let child = Command::new(agent)
        .arg("standalone")
        .arg("--data-dir")
        .arg(&data)
        .args([
            "--amqp-listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .with_context(|| format!("starting {}", agent.display()))?;
    let pid = child.id();
    let mut broker = Broker {
        name: "mooring",
        uri: String::new(),
        pid,
        owned: Some(Owned {
            child,
            _dir: dir,
            log,
        }),
    };
    let ports_file = data.join("ports.json");
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(text) = std::fs::read_to_string(&ports_file) {
            // The file may be caught half-written; a parse error means "not yet".
            if let Ok(ports) = serde_json::from_str::<Ports>(&text) {
                broker.uri = format!("amqp://guest:guest@{}/%2f", ports.amqp);
                return Ok(broker);
            }
        }
        if !is_alive(pid) {
            bail!("mooring-agent exited during start:\n{}", broker.log_tail());
        }
        if Instant::now() > deadline {
            bail!(
                "mooring-agent wrote no ports.json in {START_TIMEOUT:?}:\n{}",
                broker.log_tail()
            );
        }
        std::thread::sleep(POLL);
    }
}

/// Starts a private RabbitMQ node as user rabbitmq on free ports and waits until it runs.
pub fn start_rabbitmq() -> Result<Broker> {
    let dir = tempfile::Builder::new()
        .prefix("mooring-bench-rabbitmq.")
        .tempdir()
        .context("creating RabbitMQ's temp dir")?;
    let d = dir.path();
    let amqp_port = free_port()?;
    let dist_port = free_port()?;
    let node = format!("mooring-bench-{}@localhost", std::process::id());
    std::fs::write(
        d.join("rabbitmq.conf"),
        format!("listeners.tcp.1 = 127.0.0.1:{amqp_port}\n"),
    )?;
    std::fs::write(d.join("enabled_plugins"), "[].\n")?;
    // An empty env file keeps /etc/rabbitmq/rabbitmq-env.conf (the shared node's name) out.
    std::fs::write(d.join("rabbitmq-env.conf"), "")?;
    let status = Command::new("chown")
        .args(["-R", "rabbitmq:rabbitmq"])
        .arg(d)
        .status()
        .context("chown of RabbitMQ's temp dir")?;
    if !status.success() {
        bail!("chown rabbitmq {} failed", d.display());
    }
    let pid_file = d.join("rabbitmq.pid");
    let env = |name: &str| d.join(name).display().to_string();
    let vars = [
        format!("HOME={RABBITMQ_HOME}"),
        format!("RABBITMQ_CONF_ENV_FILE={}", env("rabbitmq-env.conf")),
        format!("RABBITMQ_NODENAME={node}"),
        "RABBITMQ_NODE_IP_ADDRESS=127.0.0.1".to_string(),
        format!("RABBITMQ_NODE_PORT={amqp_port}"),
        format!("RABBITMQ_DIST_PORT={dist_port}"),
        format!("RABBITMQ_MNESIA_BASE={}", env("mnesia")),
        format!("RABBITMQ_LOG_BASE={}", env("log")),
        format!("RABBITMQ_CONFIG_FILE={}", env("rabbitmq.conf")),
        format!("RABBITMQ_ENABLED_PLUGINS_FILE={}", env("enabled_plugins")),
        format!("RABBITMQ_PID_FILE={}", pid_file.display()),
        "ERL_EPMD_ADDRESS=127.0.0.1".to_string(),
    ];
    let log = d.join("server.log");
    let out = std::fs::File::create(&log).context("creating RabbitMQ's log")?;
    let err = out.try_clone().context("sharing RabbitMQ's log")?;
    let child = Command::new("runuser")
        .args(["-u", "rabbitmq", "--", "env"])
        .args(&vars)
        .arg(RABBITMQ_SERVER)
        .current_dir(d)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .context("starting rabbitmq-server")?;
    let wait = Command::new("runuser")
        .args(["-u", "rabbitmq", "--", "env"])
        .args(&vars)
        .arg(RABBITMQCTL)
        .args(["-n", &node, "wait", "--timeout"])
        .arg(START_TIMEOUT.as_secs().to_string())
        .arg(&pid_file)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    // Read the PID even when the wait failed, so that the node is stopped either way.
    let pid = std::fs::read_to_string(&pid_file)
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok());
    let mut broker = Broker {
        name: "rabbitmq",
        uri: format!("amqp://guest:guest@127.0.0.1:{amqp_port}/%2f"),
        pid: pid.unwrap_or(child.id()),
        owned: Some(Owned {
            child,
            _dir: dir,
            log,
        }),
    };
    match wait {
        Ok(s) if s.success() && pid.is_some() => Ok(broker),
        _ => {
            let log = broker
                .owned
                .as_mut()
                .map(|o| tail(&o.log, 20))
                .unwrap_or_default();
            bail!("RabbitMQ node {node} did not start:\n{log}")
        }
    }
}
