//! A real `mooring serve` process under test, its SigV4-signed API, and the `mooring-agent`
//! processes its local provider starts.
//!
//! Agents run in their own process group and outlive the control plane by design, so the
//! guard kills every process whose command line names the data directory when it is
//! dropped (as the Python e2e helpers do).

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use mooring_bench::sigv4::Signer;
use serde_json::Value;

use crate::{binary, wait_for};

/// How long a (debug) `mooring serve` may take to publish its address.
pub const SERVE_START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a broker may take from CreateBroker to RUNNING with every node serving.
pub const CREATE_TIMEOUT: Duration = Duration::from_secs(120);
/// How long [`Api::wait_healthy`] wants a broker healthy without a change.
pub const HEALTHY_FOR: Duration = Duration::from_secs(1);
/// Postgres on the development and CI machines (trust auth).
pub const POSTGRES_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432";

/// One `mooring serve` process. Dropping it kills the process and every agent under its
/// data directory.
pub struct ControlPlane {
    data_dir: PathBuf,
    child: Option<Child>,
    log_path: PathBuf,
    /// `127.0.0.1:PORT` of the API.
    pub addr: String,
    /// When false, drop leaves the agents alone (another control plane shares the data
    /// directory and cleans up).
    owns_agents: bool,
}

/// How to start a control plane beyond the defaults.
#[derive(Debug, Clone, Default)]
pub struct ServeOptions {
    /// `postgres://...`; SQLite under the data directory when `None`.
    pub database_url: Option<String>,
    /// A master key shared with another control plane on the same database (sealed
    /// secrets must open in both).
    pub master_key_file: Option<PathBuf>,
    /// Name of the log file inside the data directory (two processes sharing a data
    /// directory need two logs).
    pub log_name: Option<String>,
    /// Extra flags for `mooring serve`.
    pub extra_args: Vec<String>,
}

impl ControlPlane {
    /// Starts `mooring serve` on `data_dir` with an ephemeral port and waits for it to
    /// publish its address in `<data-dir>/listen`.
    pub async fn start(data_dir: &Path, options: ServeOptions) -> Result<ControlPlane> {
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("creating {}", data_dir.display()))?;
        let listen_file = data_dir.join("listen");
        match std::fs::remove_file(&listen_file) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).context("removing a stale listen file"),
        }
        let log_path = data_dir.join(options.log_name.as_deref().unwrap_or("mooring.log"));
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        let mut command = Command::new(binary("mooring")?);
        command
            .arg("serve")
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .arg("--agent-binary")
            .arg(binary("mooring-agent")?)
            // The tests call the API far faster than a person would.
            .args(["--rate-limit-burst", "0"])
            .env_remove("DATABASE_URL")
            .env("RUST_LOG", "info");
        if let Some(url) = &options.database_url {
            command.args(["--database-url", url]);
        }
        if let Some(key) = &options.master_key_file {
            command.arg("--master-key-file").arg(key);
        }
        command.args(&options.extra_args);
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("duplicating the log handle")?)
            .stderr(log)
            .spawn()
            .context("spawning mooring serve")?;
        let mut cp = ControlPlane {
            data_dir: data_dir.to_path_buf(),
            child: Some(child),
            log_path,
            addr: String::new(),
            owns_agents: true,
        };
        let child = cp.child.as_mut().expect("just spawned");
        let addr = wait_for(
            SERVE_START_TIMEOUT,
            "mooring serve to write its listen file",
            || {
                let exited = child.try_wait();
                let listen_file = listen_file.clone();
                async move {
                    if let Ok(Some(status)) = exited {
                        bail!("mooring serve exited during start-up with {status}");
                    }
                    Ok(std::fs::read_to_string(&listen_file)
                        .ok()
                        .map(|s| s.trim().to_owned())
                        .filter(|s| !s.is_empty()))
                }
            },
        )
        .await
        .with_context(|| format!("control plane log:\n{}", cp.log_tail()))?;
        cp.addr = addr;
        Ok(cp)
    }

    /// Leaves the agents running when this control plane is dropped.
    pub fn share_agents(&mut self) {
        self.owns_agents = false;
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The API client signed with the admin key bootstrapped into `credentials_dir`
    /// (`<data-dir>/credentials` of the first control plane on a database).
    pub fn api_with(&self, credentials_dir: &Path) -> Result<Api> {
        let path = credentials_dir.join("credentials");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{name} = ")))
                .map(str::to_owned)
                .with_context(|| format!("{name} missing from {}", path.display()))
        };
        Ok(Api {
            base: format!("http://{}", self.addr),
            host: self.addr.clone(),
            key_id: field("aws_access_key_id")?,
            secret: field("aws_secret_access_key")?,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .context("building the HTTP client")?,
        })
    }

    /// The API client signed with this control plane's own bootstrapped admin key.
    pub fn api(&self) -> Result<Api> {
        self.api_with(&self.data_dir)
    }

    /// Whether this replica holds the control-plane lease (and runs the reconcilers), as
    /// its `/healthz` says.
    pub async fn holds_lease(&self) -> Result<bool> {
        let body = reqwest::Client::new()
            .get(format!("http://{}/healthz", self.addr))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .context("GET /healthz")?
            .text()
            .await
            .context("reading /healthz")?;
        Ok(body.contains("control-plane lease: held by this replica"))
    }

    /// SIGKILL of the control plane itself.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let start = text.len().saturating_sub(6000);
        let start = (start..text.len())
            .find(|i| text.is_char_boundary(*i))
            .unwrap_or(text.len());
        text[start..].to_string()
    }

    /// The pid of the live agent of `node_id` under this data directory.
    pub fn agent_pid(&self, node_id: &str) -> Result<u32> {
        let pids = agent_pids(&self.data_dir, node_id);
        match pids.as_slice() {
            [pid] => Ok(*pid),
            [] => bail!("no live agent for node {node_id}"),
            many => bail!("several live agents for node {node_id}: {many:?}"),
        }
    }

    /// The tail of a node's `agent.log`.
    pub fn agent_log_tail(&self, node_id: &str) -> String {
        let path = self.data_dir.join("nodes").join(node_id).join("agent.log");
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let start = text.len().saturating_sub(3000);
        let start = (start..text.len())
            .find(|i| text.is_char_boundary(*i))
            .unwrap_or(text.len());
        text[start..].to_string()
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.kill();
        if self.owns_agents {
            for pid in processes_naming(&self.data_dir.to_string_lossy()) {
                let _ = send_signal(pid, "KILL");
            }
        }
    }
}

/// Sends `signal` (a name such as `KILL`, `STOP`, `CONT`) to `pid`. std has no signals but
/// SIGKILL, and the workspace forbids unsafe code: kill(1) does it.
pub fn send_signal(pid: u32, signal: &str) -> Result<()> {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status()
        .context("running kill")?;
    if !status.success() {
        bail!("kill -{signal} {pid} failed: {status}");
    }
    Ok(())
}

/// Live (not zombie) processes whose command line contains `needle`.
pub fn processes_naming(needle: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let me = std::process::id();
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let state = stat
                .rsplit(')')
                .next()
                .and_then(|s| s.split_whitespace().next());
            String::from_utf8_lossy(&cmdline).contains(needle)
                && !matches!(state, Some("Z") | Some("X") | None)
        })
        .collect()
}

/// `mooring-agent run` processes of `node_id` under `data_dir`, leaving out children an
/// agent forked but has not exec'd yet (they show the agent's command line for a moment).
pub fn agent_pids(data_dir: &Path, node_id: &str) -> Vec<u32> {
    let dir = data_dir.join("nodes").join(node_id);
    let found: Vec<u32> = processes_naming(&dir.to_string_lossy())
        .into_iter()
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            cmdline
                .split(|b| *b == 0)
                .any(|arg| arg == node_id.as_bytes())
        })
        .collect();
    found
        .iter()
        .copied()
        .filter(|pid| !parent_pid(*pid).is_some_and(|p| found.contains(&p)))
        .collect()
}

fn parent_pid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')')
        .next()?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The public API, every request SigV4-signed with an access key.
#[derive(Clone)]
pub struct Api {
    base: String,
    host: String,
    key_id: String,
    secret: String,
    http: reqwest::Client,
}

/// A failed call: its HTTP status and Amazon MQ error type, for callers that branch.
#[derive(Debug)]
pub struct ApiFailure {
    pub status: u16,
    pub error_type: String,
    pub body: String,
}

impl std::fmt::Display for ApiFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HTTP {} {}: {}", self.status, self.error_type, self.body)
    }
}

impl std::error::Error for ApiFailure {}

/// A node of a broker as DescribeBroker shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub node_id: String,
    /// `127.0.0.1:PORT` of its AMQP listener.
    pub amqp: String,
    /// `LEADER`, `FOLLOWER`, or empty for single-instance brokers.
    pub role: String,
}

impl Api {
    /// `http://127.0.0.1:PORT` of the control plane it calls.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// Sends a signed request; a non-2xx answer is an [`ApiFailure`].
    pub async fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value> {
        self.send(method, path, "", body).await
    }

    /// [`Api::call`] with a query string (`query` without the `?`, empty for none).
    async fn send(
        &self,
        method: &str,
        path: &str,
        query: &str,
        body: Option<&Value>,
    ) -> Result<Value> {
        let bytes = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
        let signer = Signer {
            access_key_id: &self.key_id,
            secret_access_key: &self.secret,
            region: "us-east-1",
            service: "mq",
        };
        let headers = signer.sign(
            method,
            path,
            query,
            &[("host", self.host.as_str())],
            &bytes,
            chrono::Utc::now(),
        );
        let method_value = reqwest::Method::from_bytes(method.as_bytes())
            .with_context(|| format!("bad method {method}"))?;
        let url = if query.is_empty() {
            format!("{}{path}", self.base)
        } else {
            format!("{}{path}?{query}", self.base)
        };
        let mut request = self.http.request(method_value, url);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        if body.is_some() {
            request = request
                .header("content-type", "application/json")
                .body(bytes);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("{method} {path}"))?;
        let status = response.status().as_u16();
        let error_type = response
            .headers()
            .get("x-amzn-ErrorType")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let text = response.text().await.context("reading the answer")?;
        if !(200..300).contains(&status) {
            return Err(ApiFailure {
                status,
                error_type,
                body: text,
            }
            .into());
        }
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text).with_context(|| format!("{method} {path}: not JSON: {text}"))
    }

    /// CreateBroker of a RABBITMQ broker in `deployment_mode` with one user; its id.
    pub async fn create_broker(
        &self,
        name: &str,
        deployment_mode: &str,
        user: (&str, &str),
    ) -> Result<String> {
        let body = serde_json::json!({
            "brokerName": name,
            "deploymentMode": deployment_mode,
            "engineType": "RABBITMQ",
            "engineVersion": "3.13",
            "hostInstanceType": "mq.m5.large",
            "publiclyAccessible": false,
            "autoMinorVersionUpgrade": false,
            "users": [{"username": user.0, "password": user.1}],
        });
        let created = self.call("POST", "/v1/brokers", Some(&body)).await?;
        created["brokerId"]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("no brokerId in {created}"))
    }

    pub async fn describe(&self, broker_id: &str) -> Result<Value> {
        self.call("GET", &format!("/v1/brokers/{broker_id}"), None)
            .await
    }

    /// RebootBroker (a rolling restart with switchover for replicated brokers).
    pub async fn reboot(&self, broker_id: &str) -> Result<()> {
        self.call("POST", &format!("/v1/brokers/{broker_id}/reboot"), None)
            .await
            .map(|_| ())
    }

    /// The switchover extension; answers once the new leader is committed.
    pub async fn switchover(&self, broker_id: &str, target: Option<&str>) -> Result<Value> {
        let body = match target {
            Some(t) => serde_json::json!({ "targetNodeId": t }),
            None => serde_json::json!({}),
        };
        self.call(
            "POST",
            &format!("/v1/brokers/{broker_id}/switchover"),
            Some(&body),
        )
        .await
    }

    /// Every event of the broker, oldest first (following `nextToken`).
    pub async fn events(&self, broker_id: &str) -> Result<Vec<Value>> {
        let mut all = Vec::new();
        let mut token: Option<String> = None;
        for _ in 0..1000 {
            // The token is opaque: sign it exactly as sent.
            let query = token
                .as_ref()
                .map(|t| format!("nextToken={t}"))
                .unwrap_or_default();
            let path = format!("/v1/brokers/{broker_id}/events");
            let page = self.send("GET", &path, &query, None).await?;
            if let Some(events) = page["events"].as_array() {
                all.extend(events.iter().cloned());
            }
            match page["nextToken"].as_str() {
                Some(t) if !t.is_empty() => token = Some(t.to_owned()),
                _ => return Ok(all),
            }
        }
        bail!("more than 1000 pages of events")
    }

    /// Waits until the broker is RUNNING with `nodes` instances, a leader among them and no
    /// action required (redundancy complete), unchanged for [`HEALTHY_FOR`]; returns its
    /// instances, leader first.
    ///
    /// Held for a while because a broker turns RUNNING as soon as its nodes run, before the
    /// failover loop has judged its redundancy: a leader killed in that moment may have no
    /// in-sync follower yet, and then correctly nothing is promoted.
    pub async fn wait_healthy(
        &self,
        broker_id: &str,
        nodes: usize,
        timeout: Duration,
    ) -> Result<Vec<Instance>> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut since: Option<(tokio::time::Instant, Vec<Instance>)> = None;
        let mut last_error = None;
        loop {
            match self.describe(broker_id).await {
                Ok(d) => {
                    let list = instances(&d)?;
                    let healthy = d["brokerState"] == "RUNNING"
                        && d["actionsRequired"].as_array().is_none_or(|a| a.is_empty())
                        && list.len() == nodes
                        && list.iter().filter(|i| i.role == "LEADER").count() == 1;
                    since = match since.take() {
                        _ if !healthy => None,
                        Some((at, before)) if before == list => Some((at, before)),
                        _ => Some((tokio::time::Instant::now(), list)),
                    };
                    if let Some((at, list)) = &since {
                        if at.elapsed() >= HEALTHY_FOR {
                            return Ok(list.clone());
                        }
                    }
                }
                Err(e) => last_error = Some(e),
            }
            if tokio::time::Instant::now() >= deadline {
                let what = format!("broker {broker_id} RUNNING with {nodes} nodes in sync");
                match last_error {
                    Some(e) => {
                        bail!("timed out after {timeout:?} waiting for {what}: last error: {e:#}")
                    }
                    None => bail!("timed out after {timeout:?} waiting for {what}"),
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The instances of a DescribeBroker answer.
pub fn instances(described: &Value) -> Result<Vec<Instance>> {
    let list = described["brokerInstances"]
        .as_array()
        .with_context(|| format!("no brokerInstances in {described}"))?;
    list.iter()
        .map(|i| {
            let endpoint = i["endpoints"][0].as_str().unwrap_or_default();
            Ok(Instance {
                node_id: i["nodeId"]
                    .as_str()
                    .with_context(|| format!("no nodeId in {i}"))?
                    .to_owned(),
                amqp: endpoint
                    .strip_prefix("amqp://")
                    .with_context(|| format!("endpoint {endpoint:?} is not amqp://"))?
                    .to_owned(),
                role: i["role"].as_str().unwrap_or_default().to_owned(),
            })
        })
        .collect()
}

/// A fresh Postgres database on the local server, dropped when the guard is dropped.
pub struct TempDatabase {
    pub name: String,
    pub url: String,
}

impl TempDatabase {
    /// Creates `mooring_chaos_<random>` with psql. Postgres is a required peer: its
    /// absence is an error, never a skip.
    pub fn create() -> Result<TempDatabase> {
        let name = format!("mooring_chaos_{:016x}", rand::random::<u64>());
        psql(&format!("CREATE DATABASE {name}"))?;
        Ok(TempDatabase {
            url: format!("{POSTGRES_ADMIN_URL}/{name}"),
            name,
        })
    }

    /// Runs a query in this database; rows as `|`-separated lines.
    pub fn query(&self, sql: &str) -> Result<String> {
        psql_in(&self.name, sql)
    }
}

impl Drop for TempDatabase {
    fn drop(&mut self) {
        let _ = psql(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ));
    }
}

fn psql(sql: &str) -> Result<String> {
    psql_in("postgres", sql)
}

fn psql_in(db: &str, sql: &str) -> Result<String> {
    let out = Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            "5432",
            "-U",
            "postgres",
            "-d",
            db,
            "-v",
            "ON_ERROR_STOP=1",
            "-Atc",
            sql,
        ])
        .output()
        .context("running psql (Postgres at 127.0.0.1:5432 is a required test peer)")?;
    if !out.status.success() {
        bail!(
            "psql {sql:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
