//! Maintenance on both backends (SQLite always, Postgres when reachable, always under CI):
//! the store's tables, and the maintenance reconciler's passes driven through the public API
//! with an injected clock and a runtime catalog file. No agents here (the broker is set
//! RUNNING by hand); tests/python/e2e/test_maintenance.py runs the same story with real ones.

mod common;

use chrono::{DateTime, SubsecRound as _, TimeDelta, Utc};
use common::{create_iam_user, TestApi, TestStore, ADMIN_POLICY};
use mooring_agent_protocol::{EngineStatus, Generation, NodeId};
use mooring_control_plane::app::AppState;
use mooring_control_plane::config::ServeConfig;
use mooring_control_plane::model::{BrokerState, DayOfWeek};
use mooring_control_plane::plan::window::{next_start, MaintenanceWindow};
use mooring_control_plane::reconcile::maintenance;
use mooring_control_plane::store::NewNode;
use mooring_control_plane::store::{
    ActionKind, ActionRecord, ActionSource, BrokerId, RunRecord, StoreError,
};
use serde_json::json;

/// A control plane in process whose schedule clock reads `<dir>/clock-offset`.
struct Harness {
    api: TestApi,
    dir: tempfile::TempDir,
}

impl Harness {
    async fn new(store: TestStore, max_concurrent: u32) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = ServeConfig::for_tests(dir.path().to_path_buf(), None);
        config.clock_offset_file = Some(dir.path().join("clock-offset"));
        config.maintenance_max_concurrent = max_concurrent;
        let state = AppState::new(store.store.clone(), config);
        let router = mooring_control_plane::http::router(state.clone());
        let key = create_iam_user(&state, "test-admin", ADMIN_POLICY).await;
        Harness {
            api: TestApi {
                state,
                router,
                store,
                key: Some(key),
            },
            dir,
        }
    }

    fn add_engine_version(&self, version: &str) {
        let catalog = self.dir.path().join("catalog");
        std::fs::create_dir_all(&catalog).expect("mkdir catalog");
        std::fs::write(
            catalog.join("engine-versions.json"),
            json!({"engineVersions": [{"engineType": "RABBITMQ", "version": version}]}).to_string(),
        )
        .expect("write catalog");
    }

    /// Moves the schedule clock so that "now" is `at`.
    fn set_clock(&self, at: DateTime<Utc>) {
        let offset = (at - Utc::now()).num_milliseconds() as f64 / 1000.0;
        std::fs::write(self.dir.path().join("clock-offset"), offset.to_string())
            .expect("write clock");
    }

    async fn create_running(&self, name: &str, day: &str, time: &str) -> String {
        let mut body = common::broker_body(name);
        body["engineVersion"] = json!("3.13");
        body["autoMinorVersionUpgrade"] = json!(true);
        body["maintenanceWindowStartTime"] =
            json!({"dayOfWeek": day, "timeOfDay": time, "timeZone": "UTC"});
        let id = self.api.post("/v1/brokers", body).await.ok()["brokerId"]
            .as_str()
            .expect("broker id")
            .to_owned();
        let bid = BrokerId::parse(&id).expect("our id");
        assert!(self
            .api
            .state
            .store
            .broker_set_state(
                &bid,
                &[BrokerState::CreationInProgress],
                BrokerState::Running
            )
            .await
            .expect("set RUNNING"));
        self.add_serving_node(&bid).await;
        id
    }

    /// Records the broker's node as a started agent would: registered, engine ready, a
    /// fresh heartbeat (the planner restarts only a node that serves).
    async fn add_serving_node(&self, broker: &BrokerId) {
        use std::sync::atomic::{AtomicU16, Ordering};
        static NEXT_PORT: AtomicU16 = AtomicU16::new(21000);
        let store = &self.api.state.store;
        let id = NodeId(format!("{broker}-1"));
        let port = NEXT_PORT.fetch_add(2, Ordering::Relaxed);
        let node = NewNode {
            id: id.clone(),
            broker_id: broker.clone(),
            ordinal: 1,
            zone: "us-east-1a".into(),
            host: "127.0.0.1".into(),
            amqp_port: port,
            admin_port: port + 1,
            replication_port: None,
        };
        assert!(store
            .node_insert(&node, Utc::now())
            .await
            .expect("node insert"));
        store
            .node_register(&id, "test", Generation(1), Utc::now())
            .await
            .expect("register");
        let engine = EngineStatus {
            ready: true,
            ..Default::default()
        };
        store
            .node_heartbeat(&id, Generation(1), &engine, None, Utc::now())
            .await
            .expect("heartbeat");
    }

    async fn describe(&self, id: &str) -> serde_json::Value {
        self.api.get(&format!("/v1/brokers/{id}")).await.ok()
    }

    async fn pass(&self) {
        maintenance::pass(&self.api.state)
            .await
            .expect("maintenance pass");
    }
}

fn next_window(day: DayOfWeek, time: &str) -> DateTime<Utc> {
    let w = MaintenanceWindow::new(day, time, "UTC").expect("valid window");
    next_start(&w, Utc::now())
}

#[tokio::test]
async fn store_tables_on_both_backends() {
    for t in common::stores().await {
        let backend = t.backend;
        let h = Harness::new(t, 10).await;
        let s = &h.api.state.store;
        let a = BrokerId::parse(&h.create_running("st-a", "MONDAY", "02:00").await).expect("id");
        let b = BrokerId::parse(&h.create_running("st-b", "MONDAY", "02:00").await).expect("id");
        let now = Utc::now().trunc_subsecs(3);
        let row = |id: &BrokerId, kind, target: &str| ActionRecord {
            broker_id: id.clone(),
            kind,
            target: target.into(),
            source: ActionSource::User,
            scheduled_at: now + TimeDelta::hours(5),
            window_spec: "MONDAY 02:00 UTC".into(),
            created_at: now,
        };
        s.maintenance_action_upsert(&row(&a, ActionKind::EngineVersion, "3.13.1"))
            .await
            .expect("upsert");
        s.maintenance_action_upsert(&row(&a, ActionKind::HostInstanceType, "mq.m5.xlarge"))
            .await
            .expect("upsert");
        // The same kind again replaces (one pending engine version per broker).
        let mut newer = row(&a, ActionKind::EngineVersion, "3.13.2");
        newer.source = ActionSource::AutoMinorVersionUpgrade;
        s.maintenance_action_upsert(&newer).await.expect("upsert");
        let listed = s.maintenance_action_list(&a).await.expect("list");
        assert_eq!(listed.len(), 2, "{backend}");
        assert_eq!(
            listed.iter().find(|r| r.kind == ActionKind::EngineVersion),
            Some(&newer),
            "{backend}"
        );
        assert!(
            s.maintenance_action_list(&b)
                .await
                .expect("list")
                .is_empty(),
            "{backend}"
        );
        assert_eq!(
            s.maintenance_action_list_all().await.expect("all").len(),
            2,
            "{backend}"
        );

        // A broker that is gone is NotFound, not a constraint error.
        let ghost = BrokerId::generate();
        assert!(
            matches!(
                s.maintenance_action_upsert(&row(&ghost, ActionKind::EngineVersion, "3.13.1"))
                    .await,
                Err(StoreError::NotFound(_))
            ),
            "{backend}"
        );

        s.maintenance_action_delete(&a, ActionKind::HostInstanceType)
            .await
            .expect("delete");
        s.maintenance_action_delete(&a, ActionKind::HostInstanceType)
            .await
            .expect("delete twice");
        assert_eq!(
            s.maintenance_action_list(&a).await.expect("list").len(),
            1,
            "{backend}"
        );

        // Runs: the limit admits at most `max` brokers; a second begin is a no-op.
        let run = |id: &BrokerId| RunRecord {
            broker_id: id.clone(),
            generation: 3,
            actions: vec![("ENGINE_VERSION".into(), "3.13.2".into())],
            started_at: now,
        };
        assert!(
            s.maintenance_run_begin(&run(&a), 1).await.expect("begin"),
            "{backend}"
        );
        assert!(
            !s.maintenance_run_begin(&run(&a), 5).await.expect("again"),
            "{backend}"
        );
        assert!(
            !s.maintenance_run_begin(&run(&b), 1).await.expect("full"),
            "{backend}: limit 1"
        );
        assert!(
            s.maintenance_run_begin(&run(&b), 2).await.expect("begin b"),
            "{backend}"
        );
        let runs = s.maintenance_run_list().await.expect("runs");
        assert_eq!(runs.len(), 2, "{backend}");
        assert_eq!(
            runs.iter().find(|r| r.broker_id == a),
            Some(&run(&a)),
            "{backend}"
        );
        s.maintenance_run_end(&b).await.expect("end");
        assert_eq!(
            s.maintenance_run_list().await.expect("runs").len(),
            1,
            "{backend}"
        );

        // The switch: off until set.
        assert!(!s.maintenance_paused().await.expect("paused"), "{backend}");
        s.maintenance_set_paused(true, now).await.expect("pause");
        assert!(s.maintenance_paused().await.expect("paused"), "{backend}");
        s.maintenance_set_paused(false, now).await.expect("resume");
        assert!(!s.maintenance_paused().await.expect("paused"), "{backend}");

        // Removing the broker (its node first, as the reconciler does) removes its
        // schedule and run.
        s.node_remove(&NodeId(format!("{a}-1")))
            .await
            .expect("node remove");
        s.broker_remove(&a).await.expect("remove");
        assert!(
            s.maintenance_action_list(&a)
                .await
                .expect("list")
                .is_empty(),
            "{backend}"
        );
        assert!(
            s.maintenance_run_list().await.expect("runs").is_empty(),
            "{backend}"
        );
        h.api.store.finish().await;
    }
}

/// The whole schedule on both backends: a version added to the catalog becomes a pending
/// action with the next window's start; the clock moved into one broker's window applies it
/// to that broker only; paused and the fleet limit hold it back.
#[tokio::test]
async fn auto_minor_upgrade_is_scheduled_and_applied_in_the_window_only() {
    for t in common::stores().await {
        let backend = t.backend;
        let h = Harness::new(t, 1).await;
        let mon = h.create_running("mw-monday", "MONDAY", "02:00").await;
        let mon2 = h.create_running("mw-monday-2", "MONDAY", "02:00").await;
        let thu = h.create_running("mw-thursday", "THURSDAY", "14:00").await;

        // Nothing pending before the catalog grows.
        h.pass().await;
        let d = h.describe(&mon).await;
        assert!(d.get("pendingEngineVersion").is_none(), "{backend}: {d}");
        assert_eq!(d["pendingActions"], json!([]), "{backend}");

        h.add_engine_version("3.13.1");
        let types = h.api.get("/v1/broker-engine-types").await.ok();
        assert_eq!(
            types["brokerEngineTypes"][0]["engineVersions"][0]["name"], "3.13.1",
            "{backend}: the runtime version is offered"
        );
        h.pass().await; // sets the pending engine version
        h.pass().await; // schedules it
        let monday = next_window(DayOfWeek::Monday, "02:00");
        for id in [&mon, &mon2, &thu] {
            let d = h.describe(id).await;
            assert_eq!(d["pendingEngineVersion"], "3.13.1", "{backend}: {d}");
            assert_eq!(d["engineVersion"], "3.13", "{backend}");
            let actions = d["pendingActions"].as_array().expect("list");
            assert_eq!(actions.len(), 1, "{backend}: {d}");
            assert_eq!(actions[0]["action"], "ENGINE_VERSION");
            assert_eq!(actions[0]["target"], "3.13.1");
            assert_eq!(actions[0]["source"], "AUTO_MINOR_VERSION_UPGRADE");
        }
        let scheduled = h.describe(&mon).await["pendingActions"][0]["scheduledAt"].clone();
        assert_eq!(
            scheduled,
            json!(mooring_control_plane::api::timestamp(monday)),
            "{backend}"
        );

        // Paused: the window opens and nothing starts.
        h.api
            .put("/v1/maintenance", json!({"paused": true}))
            .await
            .ok();
        h.set_clock(monday + TimeDelta::minutes(5));
        h.pass().await;
        assert_eq!(
            h.describe(&mon).await["engineVersion"],
            "3.13",
            "{backend}: paused"
        );

        // Resumed: one Monday broker starts (limit 1), the Thursday one is untouched.
        let status = h
            .api
            .put("/v1/maintenance", json!({"paused": false}))
            .await
            .ok();
        assert_eq!(status["paused"], false);
        h.pass().await;
        let (a, b) = (h.describe(&mon).await, h.describe(&mon2).await);
        let started: Vec<&serde_json::Value> = [&a, &b]
            .into_iter()
            .filter(|d| d["engineVersion"] == "3.13.1")
            .collect();
        assert_eq!(
            started.len(),
            1,
            "{backend}: exactly one under the limit: {a} {b}"
        );
        let s = started[0];
        assert_eq!(s["brokerState"], "REBOOT_IN_PROGRESS", "{backend}");
        assert!(s.get("pendingEngineVersion").is_none(), "{backend}: {s}");
        assert_eq!(s["pendingActions"], json!([]), "{backend}");
        let status = h.api.get("/v1/maintenance").await.ok();
        assert_eq!(
            status["brokersInMaintenance"],
            json!([s["brokerId"]]),
            "{backend}"
        );
        let t = h.describe(&thu).await;
        assert_eq!(
            (&t["engineVersion"], &t["pendingEngineVersion"]),
            (&json!("3.13"), &json!("3.13.1")),
            "{backend}"
        );
        assert_eq!(
            t["pendingActions"].as_array().map(Vec::len),
            Some(1),
            "{backend}"
        );

        // A second pass starts nothing more while the first run holds the only slot.
        h.pass().await;
        let waiting = if a["engineVersion"] == "3.13.1" {
            &mon2
        } else {
            &mon
        };
        assert_eq!(
            h.describe(waiting).await["engineVersion"],
            "3.13",
            "{backend}"
        );
        h.api.store.finish().await;
    }
}

#[tokio::test]
async fn maintenance_switch_validates_its_input() {
    let h = Harness::new(common::sqlite_store().await, 10).await;
    h.api
        .put("/v1/maintenance", json!({}))
        .await
        .error("BadRequestException", 400);
    h.api
        .put("/v1/maintenance", json!({"paused": "yes"}))
        .await
        .error("BadRequestException", 400);
    h.api
        .put("/v1/maintenance", json!({"paused": true, "extra": 1}))
        .await
        .error("BadRequestException", 400);
    let s = h.api.get("/v1/maintenance").await.ok();
    assert_eq!(s["paused"], false, "a refused request changes nothing");
    assert_eq!(s["maxConcurrent"], 10);
}

#[tokio::test]
async fn update_broker_changes_are_pending_with_a_time_and_reboot_applies_them() {
    let h = Harness::new(common::sqlite_store().await, 10).await;
    let id = h.create_running("upd", "WEDNESDAY", "03:30").await;
    h.api
        .put(
            &format!("/v1/brokers/{id}"),
            json!({"hostInstanceType": "mq.m5.xlarge", "autoMinorVersionUpgrade": false}),
        )
        .await
        .ok();
    // Shown at once, before any pass: the time the reconciler will record.
    let d = h.describe(&id).await;
    assert_eq!(d["pendingHostInstanceType"], "mq.m5.xlarge");
    let wed = mooring_control_plane::api::timestamp(next_window(DayOfWeek::Wednesday, "03:30"));
    assert_eq!(
        d["pendingActions"],
        json!([{"action": "HOST_INSTANCE_TYPE", "target": "mq.m5.xlarge", "source": "USER", "scheduledAt": wed}])
    );
    h.pass().await;
    assert_eq!(h.describe(&id).await["pendingActions"], d["pendingActions"]);

    // A window given as a UTC offset is accepted and reschedules.
    h.api
        .put(
            &format!("/v1/brokers/{id}"),
            json!({"maintenanceWindowStartTime": {"dayOfWeek": "WEDNESDAY", "timeOfDay": "03:30", "timeZone": "UTC+05:45"}}),
        )
        .await
        .ok();
    h.pass().await;
    let moved = h.describe(&id).await["pendingActions"][0]["scheduledAt"].clone();
    assert_ne!(moved, json!(wed));
    h.api
        .put(
            &format!("/v1/brokers/{id}"),
            json!({"maintenanceWindowStartTime": {"dayOfWeek": "WEDNESDAY", "timeOfDay": "03:30", "timeZone": "Mars/Olympus"}}),
        )
        .await
        .error("BadRequestException", 400);

    // RebootBroker applies at once; the schedule goes.
    h.api
        .post(&format!("/v1/brokers/{id}/reboot"), json!({}))
        .await
        .ok();
    h.pass().await;
    let d = h.describe(&id).await;
    assert_eq!(d["hostInstanceType"], "mq.m5.xlarge");
    assert_eq!(d["pendingActions"], json!([]));
    let bid = BrokerId::parse(&id).expect("id");
    assert!(h
        .api
        .state
        .store
        .maintenance_action_list(&bid)
        .await
        .expect("list")
        .is_empty());
}

/// A configuration revision is a pending action too (its settings need a restart), applied
/// in the window like an engine version.
#[tokio::test]
async fn configuration_revision_is_applied_in_the_window() {
    let h = Harness::new(common::sqlite_store().await, 10).await;
    let id = h.create_running("cfg-patch", "FRIDAY", "22:00").await;
    let config = h
        .api
        .post(
            "/v1/configurations",
            json!({"name": "cfg-m", "engineType": "RABBITMQ"}),
        )
        .await
        .ok();
    let config_id = config["id"].as_str().expect("configuration id").to_owned();
    h.api
        .put(
            &format!("/v1/brokers/{id}"),
            json!({"configuration": {"id": config_id, "revision": 1}, "autoMinorVersionUpgrade": false}),
        )
        .await
        .ok();
    h.pass().await;
    let d = h.describe(&id).await;
    assert_eq!(d["configurations"]["pending"]["id"], json!(config_id));
    let actions = d["pendingActions"].as_array().expect("list").clone();
    assert_eq!(actions.len(), 1, "{d}");
    assert_eq!(actions[0]["action"], "CONFIGURATION");
    assert_eq!(actions[0]["target"], json!(format!("{config_id}:1")));

    h.set_clock(next_window(DayOfWeek::Friday, "22:00") + TimeDelta::minutes(1));
    h.pass().await;
    let d = h.describe(&id).await;
    assert_eq!(
        d["configurations"]["current"]["id"],
        json!(config_id),
        "{d}"
    );
    assert!(d["configurations"].get("pending").is_none(), "{d}");
    assert_eq!(d["pendingActions"], json!([]));
    assert_eq!(d["brokerState"], "REBOOT_IN_PROGRESS");
}
