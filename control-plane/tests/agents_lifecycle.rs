//! The control plane with real `mooring-agent` processes, in process: a broker recorded in
//! the store is provisioned to RUNNING; the agent API admits each agent only with its own
//! node's current token; user changes reach the node and stop being pending; a control plane
//! that stops and starts again adopts the running agents (same pids, no duplicates); a
//! deleted broker leaves no process, data or rows.
//!
//! Needs the `mooring-agent` binary (`cargo build --workspace --bins`, done by `make test`):
//! skipped when it is missing, except under CI=true where that fails.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use mooring_agent_protocol::{rabbit_password_hash, DesiredConfig, NodeId};
use mooring_control_plane::config::ServeConfig;
use mooring_control_plane::model::{BrokerState, DayOfWeek, DeploymentMode};
use mooring_control_plane::store::{BrokerId, NewBroker, NewUser, Store, StoreError};
use tokio::task::JoinHandle;

const DEADLINE: Duration = Duration::from_secs(60);

/// Polls `check` until it returns `Some`, failing with `what` after `DEADLINE`.
async fn wait_for<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn agent_binary() -> Option<PathBuf> {
    let dir = match std::env::var_os("MOORING_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        // Integration tests run from target/debug/deps; the binaries sit in target/debug.
        None => std::env::current_exe()
            .ok()?
            .parent()?
            .parent()?
            .to_path_buf(),
    };
    let path = dir.join("mooring-agent");
    path.is_file().then_some(path)
}

/// Kills every process whose command line names `dir`, even when the test fails.
struct KillUnder(PathBuf);

impl Drop for KillUnder {
    fn drop(&mut self) {
        for (pid, _) in processes_naming(&self.0) {
            let _ = std::process::Command::new("kill")
                .arg("-9")
                .arg(pid.to_string())
                .status();
        }
    }
}

/// (pid, argv) of live processes whose command line contains `needle`.
fn processes_naming(needle: &Path) -> Vec<(u32, Vec<String>)> {
    let needle = needle.to_string_lossy().into_owned();
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let zombie = stat
            .rsplit(')')
            .next()
            .and_then(|r| r.split_whitespace().next())
            == Some("Z");
        let argv: Vec<String> = raw
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if !zombie && argv.iter().any(|a| a.contains(&needle)) {
            out.push((pid, argv));
        }
    }
    out
}

/// Pids of `mooring-agent run` processes for `node` under `dir`, leaving out children an
/// agent forked but has not exec'd yet (they show its command line for a moment).
fn agent_pids(dir: &Path, node: &NodeId) -> Vec<u32> {
    let matches: Vec<u32> = processes_naming(dir)
        .into_iter()
        .filter(|(_, argv)| {
            argv.windows(2)
                .any(|w| w[0] == "--node-id" && w[1] == node.0)
        })
        .map(|(pid, _)| pid)
        .collect();
    matches
        .iter()
        .copied()
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let ppid = stat
                .rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            ppid.is_none_or(|p| !matches.contains(&p))
        })
        .collect()
}

fn agent_token(pid: u32) -> String {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("agent environment");
    environ
        .split(|b| *b == 0)
        .find_map(|kv| kv.strip_prefix(b"MOORING_AGENT_TOKEN="))
        .map(|t| String::from_utf8_lossy(t).into_owned())
        .expect("the agent has its token in its environment")
}

struct Server {
    stop: tokio::sync::oneshot::Sender<()>,
    task: JoinHandle<anyhow::Result<()>>,
    addr: String,
}

async fn start_server(data_dir: &Path, agent: &Path, listen: Option<&str>) -> Server {
    let mut config = ServeConfig::for_tests(data_dir.to_path_buf(), None);
    config.agent_binary = Some(agent.to_path_buf());
    if let Some(listen) = listen {
        config.listen = listen.parse().expect("a socket address");
    }
    let listen_file = data_dir.join("listen");
    let _ = std::fs::remove_file(&listen_file);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(mooring_control_plane::serve(config, async {
        let _ = stopped.await;
    }));
    let addr = wait_for("the listen file", || {
        let f = listen_file.clone();
        async move {
            std::fs::read_to_string(f)
                .ok()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
        }
    })
    .await;
    Server { stop, task, addr }
}

impl Server {
    async fn shutdown(self) {
        self.stop.send(()).expect("server running");
        let joined = tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("stops within 30 s");
        joined.expect("joined").expect("serve returns Ok");
    }
}

async fn insert_broker(store: &Store, name: &str) -> BrokerId {
    let broker = NewBroker {
        host_instance_type: "mq.t3.micro".into(),
        maintenance_day: DayOfWeek::Monday,
        maintenance_time: "02:00".into(),
        ..common::new_broker(name, DeploymentMode::SingleInstance)
    };
    let id = broker.id.clone();
    store
        .broker_insert(broker, vec![new_user("admin")])
        .await
        .expect("broker recorded");
    id
}

fn new_user(name: &str) -> NewUser {
    NewUser {
        username: name.into(),
        password_hash: rabbit_password_hash(&format!("{name}-password-1"), [9, 8, 7, 6]),
        console_access: false,
        groups: vec![],
        replication_user: false,
    }
}

async fn wait_state(store: &Store, id: &BrokerId, want: BrokerState) {
    wait_for(&format!("broker {id} to be {want}"), || async {
        (store.broker_get(id).await.ok()?.state == want).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_agents_from_creation_to_deletion() {
    let Some(agent) = agent_binary() else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "mooring-agent binary missing under CI"
        );
        eprintln!("skipping: build mooring-agent first (cargo build --workspace --bins)");
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let data_dir = tmp.path().join("cp");
    let _guard = KillUnder(tmp.path().to_path_buf());
    let server = start_server(&data_dir, &agent, None).await;
    let store = Store::connect(&Store::sqlite_url_in(&data_dir))
        .await
        .expect("store");

    // Creation: the reconciler records the node, starts its agent, and the broker runs.
    let a = insert_broker(&store, "agents-a").await;
    let b = insert_broker(&store, "agents-b").await;
    wait_state(&store, &a, BrokerState::Running).await;
    wait_state(&store, &b, BrokerState::Running).await;
    let node_a = NodeId(format!("{a}-1"));
    let node_b = NodeId(format!("{b}-1"));
    let rec = store.node_get(&node_a).await.expect("node row");
    assert_eq!(rec.zone, "us-east-1a");
    assert!(rec.registered_at.is_some() && rec.engine.ready);
    let pids_a = agent_pids(tmp.path(), &node_a);
    assert_eq!(pids_a.len(), 1, "one agent for the node");
    assert!(data_dir
        .join("nodes")
        .join(&node_a.0)
        .join("applied-config.json")
        .exists());

    // The agent API: each agent's token opens its own node's routes and no other's.
    let http = reqwest::Client::new();
    let base = format!("http://{}", server.addr);
    let token_a = agent_token(pids_a[0]);
    let config_url = |n: &NodeId| format!("{base}/agent/v1/nodes/{}/config", n.0);
    let status =
        |req: reqwest::RequestBuilder| async move { req.send().await.expect("answers").status() };
    assert_eq!(status(http.get(config_url(&node_a))).await, 401, "no token");
    assert_eq!(
        status(http.get(config_url(&node_a)).bearer_auth("0".repeat(64))).await,
        401,
        "wrong token"
    );
    assert_eq!(
        status(http.get(config_url(&node_b)).bearer_auth(&token_a)).await,
        401,
        "another node's route"
    );
    let got = http
        .get(config_url(&node_a))
        .bearer_auth(&token_a)
        .send()
        .await
        .expect("config");
    assert_eq!(got.status(), 200);
    let config: DesiredConfig = got.json().await.expect("a desired configuration");
    let broker_a = store.broker_get(&a).await.expect("broker");
    assert_eq!(
        i64::try_from(config.generation.0).expect("fits"),
        broker_a.generation
    );
    assert_eq!(
        config
            .users
            .iter()
            .map(|u| u.name.as_str())
            .collect::<Vec<_>>(),
        ["admin"]
    );
    assert_eq!(config.limits.max_connections, 500, "mq.t3.micro's limit");

    // A user change reaches the node and stops being pending.
    let generation = store
        .user_create(&a, &new_user("bob"), None)
        .await
        .expect("user recorded");
    wait_for("the node to apply the user change", || async {
        let node = store.node_get(&node_a).await.ok()?;
        let user = store.user_get(&a, "bob").await.ok()?;
        (node.applied_generation >= generation && user.pending_change.is_none()).then_some(())
    })
    .await;

    // A control plane that stops and comes back adopts its agents: same processes.
    let addr = server.addr.clone();
    server.shutdown().await;
    assert_eq!(
        agent_pids(tmp.path(), &node_a),
        pids_a,
        "agents outlive the control plane"
    );
    let heard_before = store.node_get(&node_a).await.expect("node").last_heartbeat;
    let server = start_server(&data_dir, &agent, Some(&addr)).await;
    wait_for("a heartbeat to the restarted control plane", || async {
        (store.node_get(&node_a).await.ok()?.last_heartbeat > heard_before).then_some(())
    })
    .await;
    // Several passes later, still the same single agent per node.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        agent_pids(tmp.path(), &node_a),
        pids_a,
        "adopted, not restarted"
    );
    assert_eq!(agent_pids(tmp.path(), &node_b).len(), 1);
    assert_eq!(
        store.broker_get(&a).await.expect("broker").state,
        BrokerState::Running
    );

    // Deletion: processes, data and rows go.
    for id in [&a, &b] {
        let changed = store
            .broker_set_state(id, &[BrokerState::Running], BrokerState::DeletionInProgress)
            .await
            .expect("deletion recorded");
        assert!(changed);
    }
    for id in [&a, &b] {
        wait_for("the broker row to go", || async {
            matches!(store.broker_get(id).await, Err(StoreError::NotFound(_))).then_some(())
        })
        .await;
    }
    assert!(
        agent_pids(tmp.path(), &node_a).is_empty() && agent_pids(tmp.path(), &node_b).is_empty()
    );
    assert!(!data_dir.join("nodes").join(&node_a.0).exists());
    assert!(store.node_ids().await.expect("node ids").is_empty());
    server.shutdown().await;
    store.close().await;
}
