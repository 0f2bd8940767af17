//! The session against an in-process fake control plane and a fake node.

use super::ledger::tests::config;
use super::*;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use mooring_agent_protocol::{
    ApplyReport, DesiredConfig, DesiredPointer, EngineStatus, Generation, Heartbeat,
};
use parking_lot::Mutex;
use std::sync::Arc;

const TOKEN: &str = "secret-token";

#[derive(Default)]
struct FakeCp {
    desired: Generation,
    config: Option<DesiredConfig>,
    registers: usize,
    heartbeats: Vec<Heartbeat>,
    reports: Vec<ApplyReport>,
}

type Shared = Arc<Mutex<FakeCp>>;

fn authorized(headers: &HeaderMap) -> Result<(), StatusCode> {
    let want = format!("Bearer {TOKEN}");
    match headers.get("authorization").and_then(|v| v.to_str().ok()) {
        Some(v) if v == want => Ok(()),
        _ => Err(StatusCode::UNAUTHORIZED),
    }
}

async fn serve(cp: Shared) -> String {
    let app = Router::new()
        .route(
            "/agent/v1/nodes/n-1/register",
            post(|State(cp): State<Shared>, h: HeaderMap| async move {
                authorized(&h)?;
                let mut cp = cp.lock();
                cp.registers += 1;
                Ok::<_, StatusCode>(Json(DesiredPointer {
                    desired_generation: cp.desired,
                    lease: None,
                    in_sync: None,
                    release_lease: false,
                    leaving: Vec::new(),
                    hurry: false,
                }))
            }),
        )
        .route(
            "/agent/v1/nodes/n-1/heartbeat",
            post(
                |State(cp): State<Shared>, h: HeaderMap, Json(hb): Json<Heartbeat>| async move {
                    authorized(&h)?;
                    let mut cp = cp.lock();
                    cp.heartbeats.push(hb);
                    Ok::<_, StatusCode>(Json(DesiredPointer {
                        desired_generation: cp.desired,
                        lease: None,
                        in_sync: None,
                        release_lease: false,
                        leaving: Vec::new(),
                        hurry: false,
                    }))
                },
            ),
        )
        .route(
            "/agent/v1/nodes/n-1/config",
            get(|State(cp): State<Shared>, h: HeaderMap| async move {
                authorized(&h)?;
                cp.lock()
                    .config
                    .clone()
                    .map(Json)
                    .ok_or(StatusCode::NOT_FOUND)
            }),
        )
        .route(
            "/agent/v1/nodes/n-1/applied",
            post(
                |State(cp): State<Shared>, h: HeaderMap, Json(r): Json<ApplyReport>| async move {
                    authorized(&h)?;
                    cp.lock().reports.push(r);
                    Ok::<_, StatusCode>(StatusCode::NO_CONTENT)
                },
            ),
        )
        .with_state(cp);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

#[derive(Clone, Default)]
struct FakeNode {
    applied: Arc<Mutex<Vec<Generation>>>,
}

impl Node for FakeNode {
    fn apply(&self, config: &DesiredConfig) -> anyhow::Result<()> {
        self.applied.lock().push(config.generation);
        Ok(())
    }
    fn status(&self) -> EngineStatus {
        EngineStatus {
            ready: true,
            connections: 1,
            queues: 2,
            messages: 3,
        }
    }
}

fn session(base: &str, dir: &std::path::Path, token: &str, node: FakeNode) -> Session<FakeNode> {
    let ledger = Ledger::new(dir);
    let held = ledger.load().expect("ledger loads");
    let client = ControlPlaneClient::new(base, NodeId("n-1".into()), token.into()).expect("client");
    let register = RegisterRequest {
        agent_version: "test".into(),
        amqp_addr: "127.0.0.1:1".into(),
        admin_addr: "127.0.0.1:2".into(),
        applied_generation: Generation(0),
        replication_addr: None,
    };
    Session::new(
        client,
        node,
        ledger,
        held,
        register,
        Duration::from_millis(10),
    )
}

#[tokio::test]
async fn fetches_applies_and_reports_new_generations() {
    let cp: Shared = Default::default();
    cp.lock().desired = Generation(1);
    cp.lock().config = Some(config(1, &["alice"]));
    let base = serve(cp.clone()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let node = FakeNode::default();
    let mut s = session(&base, dir.path(), TOKEN, node.clone());

    s.step().await.expect("register round");
    assert_eq!(cp.lock().registers, 1);
    assert_eq!(*node.applied.lock(), vec![Generation(1)]);
    assert_eq!(
        cp.lock().reports,
        vec![ApplyReport::Applied {
            generation: Generation(1)
        }]
    );

    // Nothing new: a heartbeat, no fetch.
    s.step().await.expect("heartbeat round");
    let hb = cp.lock().heartbeats.last().cloned().expect("a heartbeat");
    assert_eq!(hb.applied_generation, Generation(1));
    assert_eq!(hb.engine.queues, 2);
    assert_eq!(node.applied.lock().len(), 1);

    cp.lock().desired = Generation(2);
    cp.lock().config = Some(config(2, &["alice", "bob"]));
    s.step().await.expect("catch-up round");
    assert_eq!(*node.applied.lock(), vec![Generation(1), Generation(2)]);
    assert_eq!(
        Ledger::new(dir.path()).load().expect("ledger"),
        Some(config(2, &["alice", "bob"]))
    );
}

#[tokio::test]
async fn refuses_stale_and_conflicting_generations() {
    let cp: Shared = Default::default();
    cp.lock().desired = Generation(2);
    cp.lock().config = Some(config(2, &["alice"]));
    let base = serve(cp.clone()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let node = FakeNode::default();
    let mut s = session(&base, dir.path(), TOKEN, node.clone());
    s.step().await.expect("first round");

    // A stale control plane serves generation 1 while pointing at 3.
    cp.lock().desired = Generation(3);
    cp.lock().config = Some(config(1, &["mallory"]));
    s.step().await.expect("round with a stale config");
    assert_eq!(s.held().map(|c| c.generation), Some(Generation(2)));
    assert!(
        matches!(cp.lock().reports.last(), Some(ApplyReport::Rejected(r)) if r.reason.contains("older"))
    );

    // Same generation as held, different contents.
    cp.lock().config = Some(config(2, &["mallory"]));
    cp.lock().desired = Generation(4);
    s.step().await.expect("round with a conflicting config");
    assert!(matches!(
        cp.lock().reports.last(),
        Some(ApplyReport::Rejected(r)) if r.reason.contains("different contents")
    ));
    assert_eq!(s.held(), Some(&config(2, &["alice"])));
    assert_eq!(
        *node.applied.lock(),
        vec![Generation(2)],
        "nothing refused was applied"
    );

    // The refusal travels in the heartbeat, and the refused generation is not fetched again.
    let reports = cp.lock().reports.len();
    s.step().await.expect("heartbeat round");
    assert_eq!(cp.lock().reports.len(), reports);
    let hb = cp.lock().heartbeats.last().cloned().expect("a heartbeat");
    assert_eq!(hb.rejected.map(|r| r.generation), Some(Generation(2)));

    // A genuinely newer generation is applied and clears the refusal.
    cp.lock().desired = Generation(5);
    cp.lock().config = Some(config(5, &["alice", "carol"]));
    s.step().await.expect("recovery round");
    assert_eq!(s.held().map(|c| c.generation), Some(Generation(5)));
    assert!(s.rejected().is_none());
}

#[tokio::test]
async fn restores_from_the_ledger_and_survives_an_absent_control_plane() {
    let dir = tempfile::tempdir().expect("tempdir");
    Ledger::new(dir.path())
        .store(&config(7, &["alice"]))
        .expect("seed the ledger");

    // Nothing listens here: the round fails, the held configuration stays.
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let dead_url = format!("http://{}", dead.local_addr().expect("addr"));
    drop(dead);
    let mut s = session(&dead_url, dir.path(), TOKEN, FakeNode::default());
    assert!(s.step().await.is_err());
    assert_eq!(s.held().map(|c| c.generation), Some(Generation(7)));

    // Run the loop against a live control plane: it registers with generation 7 and heartbeats.
    let cp: Shared = Default::default();
    cp.lock().desired = Generation(7);
    let base = serve(cp.clone()).await;
    let s = session(&base, dir.path(), TOKEN, FakeNode::default());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(s.run(async move {
        let _ = stop_rx.await;
    }));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while cp.lock().heartbeats.len() < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no heartbeats within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop_tx.send(()).expect("loop still running");
    task.await.expect("loop ends on shutdown");
    assert!(cp
        .lock()
        .heartbeats
        .iter()
        .all(|h| h.applied_generation == Generation(7)));
    assert!(
        cp.lock().reports.is_empty(),
        "nothing fetched: already at the desired generation"
    );
}

#[tokio::test]
async fn a_wrong_token_is_an_error_not_a_crash() {
    let cp: Shared = Default::default();
    let base = serve(cp.clone()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = session(&base, dir.path(), "wrong", FakeNode::default());
    let err = s.step().await.expect_err("unauthorized");
    assert!(format!("{err:#}").contains("401"), "{err:#}");
    assert_eq!(cp.lock().registers, 0);
}
