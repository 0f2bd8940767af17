//! A fleet of brokers served by in-process simulated agents: the real control plane (store,
//! agent API over HTTP, provisioning reconciler) and agents that speak the real agent
//! protocol (register, heartbeat, fetch and apply configuration) with no engine behind them.
//!
//! Measures, on the control plane's own threads (named `mooring-cp`; the simulated agents run
//! on other threads): CPU per heartbeat, CPU per reconcile of a converged broker, and the
//! process's memory growth per broker (an upper bound: it includes the simulated agents).
//!
//! `MOORING_FLEET_BROKERS` (default 200) and `MOORING_FLEET_HEARTBEAT_MS` (default 1000) size
//! the run; `MOORING_FLEET_DATABASE_URL` points it at Postgres instead of SQLite. The full
//! measurement: `MOORING_FLEET_BROKERS=10000 MOORING_FLEET_HEARTBEAT_MS=5000 cargo test
//! --release -p mooring-control-plane --test agents_fleet -- --nocapture`.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::FutureExt;
use mooring_agent_protocol::{
    route, ApplyReport, DesiredConfig, DesiredPointer, EngineStatus, Generation, Heartbeat, NodeId,
    RegisterRequest,
};
use mooring_control_plane::app::AppState;
use mooring_control_plane::config::ServeConfig;
use mooring_control_plane::model::{BrokerState, DayOfWeek, DeploymentMode};
use mooring_control_plane::provider::{Endpoint, NodeSpec, ProcessState, Provider, StartOutcome};
use mooring_control_plane::reconcile::backoff::Schedule;
use mooring_control_plane::reconcile::provision::Provisioner;
use mooring_control_plane::store::{NewBroker, NewUser, Store};
use parking_lot::Mutex;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Simulated agents, one tokio task each on the simulation runtime.
struct Sim {
    handle: tokio::runtime::Handle,
    http: reqwest::Client,
    base: Mutex<String>,
    agents: Mutex<HashMap<NodeId, tokio::task::AbortHandle>>,
    next_port: AtomicU16,
    starts: AtomicU64,
    heartbeats: Arc<AtomicU64>,
    interval: Duration,
}

impl Sim {
    async fn agent(
        http: reqwest::Client,
        base: String,
        node: NodeId,
        token: String,
        beats: Arc<AtomicU64>,
        interval: Duration,
    ) {
        let url = |leaf: &str| format!("{base}{}", route(&node, leaf));
        let mut applied = Generation(0);
        let register = RegisterRequest {
            agent_version: "sim".into(),
            amqp_addr: "127.0.0.1:1".into(),
            admin_addr: "127.0.0.1:2".into(),
            applied_generation: applied,
            replication_addr: None,
        };
        let mut desired: Option<DesiredPointer> = None;
        // Bounded only by the test, which aborts every agent at its end.
        loop {
            let answer = if desired.is_none() {
                http.post(url("register"))
                    .bearer_auth(&token)
                    .json(&register)
                    .send()
                    .await
            } else {
                let hb = Heartbeat {
                    applied_generation: applied,
                    engine: EngineStatus {
                        ready: true,
                        ..Default::default()
                    },
                    rejected: None,
                    replication: None,
                };
                let sent = http
                    .post(url("heartbeat"))
                    .bearer_auth(&token)
                    .json(&hb)
                    .send()
                    .await;
                beats.fetch_add(1, Ordering::Relaxed);
                sent
            };
            if let Ok(resp) = answer {
                if let Ok(pointer) = resp.json::<DesiredPointer>().await {
                    desired = Some(pointer.clone());
                    if pointer.desired_generation > applied {
                        if let Some(config) = fetch_config(&http, &url("config"), &token).await {
                            applied = config.generation;
                            let report = ApplyReport::Applied {
                                generation: applied,
                            };
                            let _ = http
                                .post(url("applied"))
                                .bearer_auth(&token)
                                .json(&report)
                                .send()
                                .await;
                        }
                    }
                }
            }
            tokio::time::sleep(interval).await;
        }
    }
}

async fn fetch_config(http: &reqwest::Client, url: &str, token: &str) -> Option<DesiredConfig> {
    let resp = http.get(url).bearer_auth(token).send().await.ok()?;
    resp.json().await.ok()
}

impl Provider for Sim {
    fn allocate_endpoint(&self) -> anyhow::Result<Endpoint> {
        // Nothing listens: simulated nodes only need distinct numbers.
        let port = 10_000 + self.next_port.fetch_add(2, Ordering::Relaxed);
        Ok(Endpoint {
            host: "127.0.0.1".into(),
            amqp_port: port,
            admin_port: port + 1,
        })
    }

    fn start<'a>(
        &'a self,
        spec: &'a NodeSpec,
        token: &'a str,
    ) -> BoxFuture<'a, anyhow::Result<StartOutcome>> {
        async move {
            let mut agents = self.agents.lock();
            if agents.get(&spec.node_id).is_some_and(|a| !a.is_finished()) {
                return Ok(StartOutcome::Adopted { pid: None });
            }
            let task = self.handle.spawn(Sim::agent(
                self.http.clone(),
                self.base.lock().clone(),
                spec.node_id.clone(),
                token.to_owned(),
                self.heartbeats.clone(),
                self.interval,
            ));
            agents.insert(spec.node_id.clone(), task.abort_handle());
            self.starts.fetch_add(1, Ordering::Relaxed);
            Ok(StartOutcome::Started { pid: None })
        }
        .boxed()
    }

    fn status<'a>(&'a self, node: &'a NodeId) -> BoxFuture<'a, anyhow::Result<ProcessState>> {
        async move {
            Ok(match self.agents.lock().get(node) {
                Some(a) if !a.is_finished() => ProcessState::Running { pid: None },
                _ => ProcessState::NotRunning,
            })
        }
        .boxed()
    }

    fn stop<'a>(&'a self, node: &'a NodeId) -> BoxFuture<'a, anyhow::Result<()>> {
        async move {
            if let Some(a) = self.agents.lock().remove(node) {
                a.abort();
            }
            Ok(())
        }
        .boxed()
    }

    fn delete<'a>(&'a self, node: &'a NodeId) -> BoxFuture<'a, anyhow::Result<()>> {
        self.stop(node)
    }

    fn list<'a>(&'a self) -> BoxFuture<'a, anyhow::Result<Vec<NodeId>>> {
        async move { Ok(self.agents.lock().keys().cloned().collect()) }.boxed()
    }
}

/// CPU seconds used so far by this process's threads named `name` (/proc reports USER_HZ,
/// 100 per second on Linux).
fn thread_cpu_seconds(name: &str) -> f64 {
    let mut ticks = 0u64;
    for task in std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .flatten()
    {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        if !stat[open + 1..close].starts_with(name) {
            continue;
        }
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        // After "(comm)": state is field 3 of stat(5), utime 14 and stime 15.
        ticks += fields
            .get(11)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0);
        ticks += fields
            .get(12)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0);
    }
    ticks as f64 / 100.0
}

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn new_broker(i: u64) -> (NewBroker, Vec<NewUser>) {
    let broker = NewBroker {
        host_instance_type: "mq.t3.micro".into(),
        maintenance_day: DayOfWeek::Monday,
        maintenance_time: "02:00".into(),
        ..common::new_broker(&format!("fleet-{i}"), DeploymentMode::SingleInstance)
    };
    let user = NewUser {
        username: "app".into(),
        password_hash: mooring_agent_protocol::rabbit_password_hash("app-password-1", [1, 2, 3, 4]),
        console_access: false,
        groups: vec![],
        replication_user: false,
    };
    (broker, vec![user])
}

async fn running_count(store: &Store) -> i64 {
    let counts = store.broker_count_by_state().await.expect("counts");
    counts
        .iter()
        .filter(|c| c.state == BrokerState::Running)
        .map(|c| c.count)
        .sum()
}

#[test]
fn fleet_of_simulated_agents() {
    let brokers = env_or("MOORING_FLEET_BROKERS", 200);
    let interval = Duration::from_millis(env_or("MOORING_FLEET_HEARTBEAT_MS", 1000));
    let cp_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("mooring-cp")
        .enable_all()
        .build()
        .expect("control-plane runtime");
    let sim_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("mooring-sim")
        .enable_all()
        .build()
        .expect("simulation runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let url = std::env::var("MOORING_FLEET_DATABASE_URL")
        .unwrap_or_else(|_| Store::sqlite_url_in(dir.path()));

    let sim = Arc::new(Sim {
        handle: sim_rt.handle().clone(),
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("client"),
        base: Mutex::new(String::new()),
        agents: Mutex::new(HashMap::new()),
        next_port: AtomicU16::new(0),
        starts: AtomicU64::new(0),
        heartbeats: Arc::new(AtomicU64::new(0)),
        interval,
    });
    let (state, stop_reconciler) = cp_rt.block_on(async {
        let store = Store::connect(&url).await.expect("store");
        store.migrate().await.expect("migrate");
        let state = AppState::new(
            store,
            ServeConfig::for_tests(dir.path().to_path_buf(), None),
        );
        let app = mooring_control_plane::http::router(state.clone())
            .merge(mooring_control_plane::http::agent::router(state.clone()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        *sim.base.lock() = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let provider: Arc<dyn Provider> = sim.clone();
        tokio::spawn(mooring_control_plane::reconcile::run(
            state.clone(),
            provider,
            "us-east-1".into(),
            async {
                let _ = stopped.await;
            },
        ));
        (state, stop)
    });
    let store = state.store.clone();

    // Create the fleet and wait for it to run.
    let rss_before = rss_bytes();
    let created = Instant::now();
    cp_rt.block_on(async {
        for i in 0..brokers {
            let (b, users) = new_broker(i);
            store.broker_insert(b, users).await.expect("broker");
        }
        state.wake_reconcilers();
        let deadline = Instant::now()
            + Duration::from_secs(120)
            + Duration::from_millis(30) * u32::try_from(brokers).unwrap_or(u32::MAX);
        while running_count(&store).await < i64::try_from(brokers).expect("fits") {
            assert!(
                Instant::now() < deadline,
                "the fleet did not reach RUNNING in time"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let converge_s = created.elapsed().as_secs_f64();
    let rss_per_broker = rss_bytes().saturating_sub(rss_before) / brokers.max(1);
    assert_eq!(
        sim.starts.load(Ordering::Relaxed),
        brokers,
        "exactly one agent started per broker"
    );

    // Heartbeats alone: the reconciler loop stopped, agents beating.
    stop_reconciler.send(()).expect("reconciler running");
    let window = interval * 5;
    let (cpu0, beats0) = (
        thread_cpu_seconds("mooring-cp"),
        sim.heartbeats.load(Ordering::Relaxed),
    );
    std::thread::sleep(window);
    let (cpu1, beats1) = (
        thread_cpu_seconds("mooring-cp"),
        sim.heartbeats.load(Ordering::Relaxed),
    );
    let beats = beats1 - beats0;
    assert!(
        beats >= brokers,
        "every agent heartbeats ({beats} in {window:?})"
    );
    let cpu_per_beat = (cpu1 - cpu0) / beats as f64;

    // Full passes over the converged fleet, run on the control plane's threads.
    let passes = 3u64;
    let provisioner = Arc::new(Provisioner::new(
        state.clone(),
        sim.clone(),
        "us-east-1".into(),
    ));
    let (cpu2, beats2) = (
        thread_cpu_seconds("mooring-cp"),
        sim.heartbeats.load(Ordering::Relaxed),
    );
    let pass_started = Instant::now();
    cp_rt.block_on(async {
        let p = provisioner.clone();
        tokio::spawn(async move {
            for _ in 0..passes {
                let mut schedule = Schedule::default();
                mooring_control_plane::reconcile::provision_pass(&p, &mut schedule)
                    .await
                    .expect("pass");
            }
        })
        .await
        .expect("passes");
    });
    let pass_s = pass_started.elapsed().as_secs_f64() / passes as f64;
    let (cpu3, beats3) = (
        thread_cpu_seconds("mooring-cp"),
        sim.heartbeats.load(Ordering::Relaxed),
    );
    let reconcile_cpu = ((cpu3 - cpu2) - (beats3 - beats2) as f64 * cpu_per_beat).max(0.0);
    let cpu_per_reconcile = reconcile_cpu / (passes * brokers) as f64;
    assert_eq!(
        sim.starts.load(Ordering::Relaxed),
        brokers,
        "converged passes start nothing"
    );

    eprintln!(
        "fleet: {brokers} brokers ({}), heartbeat every {interval:?}: RUNNING after {converge_s:.1} s; \
         control plane CPU {:.1} us/heartbeat, {:.1} us per converged broker reconcile \
         ({pass_s:.2} s per pass); process RSS growth {} KiB per broker (includes simulated agents)",
        if url.starts_with("postgres") { "Postgres" } else { "SQLite" },
        cpu_per_beat * 1e6,
        cpu_per_reconcile * 1e6,
        rss_per_broker / 1024,
    );

    for (_, agent) in sim.agents.lock().drain() {
        agent.abort();
    }
    cp_rt.block_on(store.close());
    sim_rt.shutdown_timeout(Duration::from_secs(5));
    cp_rt.shutdown_timeout(Duration::from_secs(5));
}
