//! API throughput against raw Postgres (issue 3, "scale and speed"): DescribeBroker,
//! ListBrokers and CreateUser over real HTTP with concurrent clients, then pgbench doing
//! the equivalent single-row select and insert on the same server, and the ratio.
//!
//! Ignored by default (it is a benchmark, and wants a release build):
//! `cargo test --release -p mooring-control-plane --test api_load -- --ignored --nocapture`
//! Knobs: `API_LOAD_CLIENTS` (default 16), `API_LOAD_SECONDS` per operation (default 5).

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mooring_control_plane::app::AppState;
use mooring_control_plane::config::ServeConfig;
use mooring_control_plane::store::Store;

const BROKERS: usize = 100;

fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Outcome {
    rate: f64,
    p50: Duration,
    p99: Duration,
}

/// Runs `clients` loops of `op` for `duration`; every call must succeed.
async fn drive<F, Fut>(clients: u64, duration: Duration, op: F) -> Outcome
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let op = Arc::new(op);
    let counter = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (op, counter) = (op.clone(), counter.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while started.elapsed() < duration {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                let t = Instant::now();
                assert!(op(n).await, "request {n} failed");
                latencies.push(t.elapsed());
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("client task"));
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort_unstable();
    let at = |q: f64| all[((all.len() as f64 * q) as usize).min(all.len() - 1)];
    Outcome {
        rate: all.len() as f64 / elapsed,
        p50: at(0.5),
        p99: at(0.99),
    }
}

/// pgbench's transactions per second for `script` on `database`.
fn pgbench(database: &str, script: &str, clients: u64, seconds: u64) -> f64 {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("script.sql");
    std::fs::write(&file, script).expect("write script");
    let out = std::process::Command::new("pgbench")
        .args(["-h", "127.0.0.1", "-U", "postgres", "-n", "-j", "2"])
        .args(["-c", &clients.to_string(), "-T", &seconds.to_string(), "-f"])
        .arg(&file)
        .arg(database)
        .output()
        .expect("pgbench runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "pgbench failed: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    text.lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no tps in pgbench output: {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run explicitly, in release"]
async fn api_against_raw_postgres() {
    let clients = knob("API_LOAD_CLIENTS", 16);
    let seconds = knob("API_LOAD_SECONDS", 5);
    let duration = Duration::from_secs(seconds);
    let t = common::postgres_store()
        .await
        .expect("Postgres is required for this benchmark");
    let database = match &t.store {
        Store::Postgres(pool, ..) => pool
            .connect_options()
            .get_database()
            .expect("a database name")
            .to_owned(),
        Store::Sqlite(_) => unreachable!("postgres_store returns Postgres"),
    };
    // The API alone: no reconcilers competing for the CPU (brokers here never get nodes).
    let state = AppState::new(
        t.store.clone(),
        ServeConfig::for_tests(std::env::temp_dir(), None),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("bound address");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let app = mooring_control_plane::http::router(state);
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await
    });
    let base = Arc::new(format!("http://{addr}"));
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(clients as usize)
        .build()
        .expect("client");

    let mut ids = Vec::new();
    for i in 0..BROKERS {
        let body = common::broker_body(&format!("load-{i}"));
        let reply: serde_json::Value = http
            .post(format!("{base}/v1/brokers"))
            .json(&body)
            .send()
            .await
            .expect("create")
            .json()
            .await
            .expect("json");
        ids.push(reply["brokerId"].as_str().expect("id").to_owned());
    }
    let ids = Arc::new(ids);

    // HTTP, client and one trivial query: the floor under every operation.
    let (h, b) = (http.clone(), base.clone());
    let health = drive(clients, duration, move |_| {
        let url = format!("{b}/healthz");
        let h = h.clone();
        async move { h.get(url).send().await.is_ok_and(|r| r.status() == 200) }
    })
    .await;
    let (h, b, i) = (http.clone(), base.clone(), ids.clone());
    let describe = drive(clients, duration, move |n| {
        let url = format!("{b}/v1/brokers/{}", i[n as usize % i.len()]);
        let h = h.clone();
        async move { h.get(url).send().await.is_ok_and(|r| r.status() == 200) }
    })
    .await;
    let (h, b) = (http.clone(), base.clone());
    let list = drive(clients, duration, move |_| {
        let url = format!("{b}/v1/brokers?maxResults=20");
        let h = h.clone();
        async move { h.get(url).send().await.is_ok_and(|r| r.status() == 200) }
    })
    .await;
    let (h, b, i) = (http.clone(), base.clone(), ids.clone());
    let create_user = drive(clients, duration, move |n| {
        let url = format!("{b}/v1/brokers/{}/users/user-{n}", i[n as usize % i.len()]);
        let h = h.clone();
        async move {
            let body = serde_json::json!({"password": "load-password-1"});
            h.post(url)
                .json(&body)
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        }
    })
    .await;

    // The raw equivalents: one indexed single-row select; one single-row insert.
    let select = "\\set n random(0, 99)\nSELECT * FROM brokers WHERE name = 'load-' || :n;\n";
    let select_tps = pgbench(&database, select, clients, seconds);
    let insert =
        "INSERT INTO tags (resource_arn, key, value) VALUES (md5(random()::text), 'k', 'v');\n";
    let insert_tps = pgbench(&database, insert, clients, seconds);

    let report = |name: &str, o: &Outcome, raw: f64| {
        println!(
            "{name:<16} {:>8.0} req/s  p50 {:>7.2} ms  p99 {:>7.2} ms  | pgbench {:>8.0} tps  ratio {:.2}",
            o.rate,
            o.p50.as_secs_f64() * 1e3,
            o.p99.as_secs_f64() * 1e3,
            raw,
            o.rate / raw
        );
    };
    println!("api_load: {clients} clients, {seconds} s per operation, {BROKERS} brokers, Postgres");
    report("healthz", &health, select_tps);
    report("DescribeBroker", &describe, select_tps);
    report("ListBrokers", &list, select_tps);
    report("CreateUser", &create_user, insert_tps);

    stop.send(()).expect("server running");
    server.await.expect("joined").expect("serve ok");
    t.finish().await;
}
