//! The provisioning pass against a fake provider and a real (SQLite) store: each pass does
//! only the next step, a second pass right after does nothing, interrupted work is resumed
//! without duplicates, failures back off, deletion converges to nothing.

use super::backoff::Schedule;
use super::provision::{Outcome, Provisioner};
use super::provision_pass;
use crate::app::AppState;
use crate::config::ServeConfig;
use crate::model::BrokerState;
use crate::provider::{Endpoint, NodeSpec, ProcessState, Provider, StartOutcome};
use crate::store::{BrokerId, ObservedState, Store};
use chrono::Utc;
use futures::future::BoxFuture;
use futures::FutureExt;
use mooring_agent_protocol::{EngineStatus, Generation, NodeId};
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;

#[derive(Default)]
struct Fake {
    /// Node -> running pid (None: data exists, process stopped).
    nodes: Mutex<BTreeMap<NodeId, Option<u32>>>,
    log: Mutex<Vec<String>>,
    fail_starts: Mutex<bool>,
    next_port: AtomicU16,
}

impl Fake {
    fn ops(&self) -> Vec<String> {
        std::mem::take(&mut *self.log.lock())
    }

    fn running(&self, node: &NodeId) -> bool {
        matches!(self.nodes.lock().get(node), Some(Some(_)))
    }

    fn crash(&self, node: &NodeId) {
        self.nodes.lock().insert(node.clone(), None);
    }
}

impl Provider for Fake {
    fn allocate_endpoint(&self) -> anyhow::Result<Endpoint> {
        let base = 20_000 + self.next_port.fetch_add(2, Ordering::Relaxed);
        Ok(Endpoint {
            host: "127.0.0.1".into(),
            amqp_port: base,
            admin_port: base + 1,
        })
    }

    fn start<'a>(
        &'a self,
        spec: &'a NodeSpec,
        _token: &'a str,
    ) -> BoxFuture<'a, anyhow::Result<StartOutcome>> {
        async move {
            if *self.fail_starts.lock() {
                anyhow::bail!("injected start failure");
            }
            let mut nodes = self.nodes.lock();
            if let Some(Some(pid)) = nodes.get(&spec.node_id) {
                return Ok(StartOutcome::Adopted { pid: Some(*pid) });
            }
            let pid = 1000 + u32::try_from(nodes.len()).expect("few nodes");
            nodes.insert(spec.node_id.clone(), Some(pid));
            self.log.lock().push(format!("start {}", spec.node_id));
            Ok(StartOutcome::Started { pid: Some(pid) })
        }
        .boxed()
    }

    fn status<'a>(&'a self, node: &'a NodeId) -> BoxFuture<'a, anyhow::Result<ProcessState>> {
        async move {
            Ok(match self.nodes.lock().get(node) {
                Some(Some(pid)) => ProcessState::Running { pid: Some(*pid) },
                _ => ProcessState::NotRunning,
            })
        }
        .boxed()
    }

    fn stop<'a>(&'a self, node: &'a NodeId) -> BoxFuture<'a, anyhow::Result<()>> {
        async move {
            if let Some(slot) = self.nodes.lock().get_mut(node) {
                *slot = None;
            }
            self.log.lock().push(format!("stop {node}"));
            Ok(())
        }
        .boxed()
    }

    fn delete<'a>(&'a self, node: &'a NodeId) -> BoxFuture<'a, anyhow::Result<()>> {
        async move {
            self.nodes.lock().remove(node);
            self.log.lock().push(format!("delete {node}"));
            Ok(())
        }
        .boxed()
    }

    fn list<'a>(&'a self) -> BoxFuture<'a, anyhow::Result<Vec<NodeId>>> {
        async move { Ok(self.nodes.lock().keys().cloned().collect()) }.boxed()
    }
}

async fn insert_broker(store: &Store, name: &str) -> BrokerId {
    use crate::model::{
        AuthenticationStrategy, DayOfWeek, DeploymentMode, EngineType, StorageType,
    };
    use crate::store::{NewBroker, NewUser};
    let id = BrokerId::generate();
    let broker = NewBroker {
        id: id.clone(),
        name: name.to_string(),
        arn: format!("arn:aws:mq:us-east-1:000000000000:broker:{name}:{id}"),
        engine_type: EngineType::Rabbitmq,
        engine_version: "3.13".into(),
        host_instance_type: "mq.t3.micro".into(),
        deployment_mode: DeploymentMode::SingleInstance,
        authentication_strategy: AuthenticationStrategy::Simple,
        storage_type: StorageType::Ebs,
        publicly_accessible: false,
        auto_minor_version_upgrade: true,
        maintenance_day: DayOfWeek::Monday,
        maintenance_time: "02:00".into(),
        maintenance_time_zone: "UTC".into(),
        logs_general: false,
        logs_audit: false,
        security_groups: vec![],
        subnet_ids: vec![],
        configuration: None,
        creator_request_id: None,
        tags: vec![],
        now: Utc::now(),
    };
    let user = NewUser {
        username: "admin".into(),
        password_hash: mooring_agent_protocol::rabbit_password_hash("admin-password", [1, 2, 3, 4]),
        console_access: false,
        groups: vec![],
        replication_user: false,
    };
    store
        .broker_insert(broker, vec![user])
        .await
        .expect("broker inserted");
    id
}

struct Harness {
    _dir: tempfile::TempDir,
    store: Store,
    fake: Arc<Fake>,
    provisioner: Provisioner,
}

async fn harness() -> Harness {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::connect(&Store::sqlite_url_in(dir.path()))
        .await
        .expect("sqlite");
    store.migrate().await.expect("migrate");
    let state = AppState::new(
        store.clone(),
        ServeConfig::for_tests(dir.path().to_path_buf(), None),
    );
    let fake = Arc::new(Fake::default());
    let provisioner = Provisioner::new(state, fake.clone(), "us-east-1".into());
    Harness {
        _dir: dir,
        store,
        fake,
        provisioner,
    }
}

impl Harness {
    async fn pass(&self, id: &BrokerId) -> Outcome {
        let broker = self.store.broker_get(id).await.expect("broker");
        self.provisioner
            .reconcile_broker(&broker)
            .await
            .expect("pass")
    }

    /// What an agent does once started: register, then report a ready engine.
    async fn agent_reports(&self, node: &NodeId, applied: i64) {
        let g = Generation(u64::try_from(applied).expect("positive"));
        self.store
            .node_register(node, "test", g, Utc::now())
            .await
            .expect("register");
        let ready = EngineStatus {
            ready: true,
            ..Default::default()
        };
        self.store
            .node_heartbeat(node, g, &ready, None, Utc::now())
            .await
            .expect("heartbeat");
    }
}

#[tokio::test]
async fn creation_converges_in_steps_and_a_second_pass_does_nothing() {
    let h = harness().await;
    let id = insert_broker(&h.store, "steps").await;
    let node = NodeId(format!("{id}-1"));

    assert_eq!(h.pass(&id).await, Outcome::Progressing);
    assert_eq!(h.fake.ops(), [format!("start {node}")]);
    let rec = h.store.node_get(&node).await.expect("node recorded");
    assert_eq!(rec.observed, ObservedState::Started);
    assert!(rec.token_hash.is_some());

    // The agent has not spoken yet: wait, never start a second one.
    assert_eq!(h.pass(&id).await, Outcome::Progressing);
    assert!(h.fake.ops().is_empty());
    assert_eq!(
        h.store.broker_get(&id).await.expect("broker").state,
        BrokerState::CreationInProgress
    );

    h.agent_reports(&node, 1).await;
    h.pass(&id).await;
    assert_eq!(
        h.store.broker_get(&id).await.expect("broker").state,
        BrokerState::Running
    );
    assert_eq!(h.pass(&id).await, Outcome::Converged);
    assert_eq!(h.pass(&id).await, Outcome::Converged);
    assert!(h.fake.ops().is_empty(), "converged passes touch nothing");
    let users = h.store.user_list(&id, None, 10).await.expect("users");
    assert!(
        users.iter().all(|u| u.pending_change.is_none()),
        "applied generation 1 clears creation"
    );
}

#[tokio::test]
async fn interrupted_start_is_adopted_and_a_dead_agent_restarted_on_its_data() {
    let h = harness().await;
    let id = insert_broker(&h.store, "crashy").await;
    let node = NodeId(format!("{id}-1"));
    h.pass(&id).await;
    h.agent_reports(&node, 1).await;
    // A control plane that died between starting the agent and recording it.
    h.store
        .node_set_observed(&node, ObservedState::Unknown)
        .await
        .expect("unknown");
    h.fake.ops();
    h.pass(&id).await;
    assert!(
        h.fake.ops().is_empty(),
        "the running agent is adopted, not started again"
    );
    assert_eq!(
        h.store.node_get(&node).await.expect("node").observed,
        ObservedState::Started
    );

    h.fake.crash(&node);
    let broker = h.store.broker_get(&id).await.expect("broker");
    let err = h
        .provisioner
        .reconcile_broker(&broker)
        .await
        .expect_err("died right after its start");
    assert!(format!("{err:#}").contains("exited within"), "{err:#}");
    assert!(h.fake.ops().is_empty(), "no restart while crash-looping");
    // Later, the dead agent is restarted on its data.
    let long_ago = Utc::now() - chrono::Duration::seconds(60);
    h.store
        .node_mark_started(&node, Some(1), 0, long_ago)
        .await
        .expect("backdate the start");
    h.pass(&id).await;
    assert_eq!(h.fake.ops(), [format!("start {node}")]);
    assert!(h.fake.running(&node));
    let rec = h.store.node_get(&node).await.expect("node");
    assert!(
        rec.registered_at.is_none(),
        "the new process must register with its new token"
    );
}

#[tokio::test]
async fn failures_back_off_per_broker() {
    let h = harness().await;
    let id = insert_broker(&h.store, "failing").await;
    *h.fake.fail_starts.lock() = true;
    let mut schedule = Schedule::default();
    provision_pass(&h.provisioner, &mut schedule)
        .await
        .expect("the pass itself succeeds");
    assert_eq!(schedule.failures(&id), 1);
    // Backing off: an immediate pass skips the broker.
    provision_pass(&h.provisioner, &mut schedule)
        .await
        .expect("pass");
    assert_eq!(schedule.failures(&id), 1);
    *h.fake.fail_starts.lock() = false;
    let node = NodeId(format!("{id}-1"));
    assert_eq!(
        h.store.node_get(&node).await.expect("row kept").observed,
        ObservedState::Unknown
    );
}

#[tokio::test]
async fn reboot_restarts_once_and_deletion_removes_everything() {
    let h = harness().await;
    let id = insert_broker(&h.store, "lifecycle").await;
    let node = NodeId(format!("{id}-1"));
    h.pass(&id).await;
    h.agent_reports(&node, 1).await;
    h.pass(&id).await;
    h.fake.ops();

    let broker = h.store.broker_get(&id).await.expect("broker");
    let mut spec = broker.spec();
    spec.state = BrokerState::RebootInProgress;
    spec.request_reboot = true;
    h.store
        .broker_update_spec(&broker, &spec, true)
        .await
        .expect("reboot requested");
    h.pass(&id).await;
    assert_eq!(
        h.fake.ops(),
        [format!("stop {node}"), format!("start {node}")]
    );
    h.pass(&id).await;
    assert!(h.fake.ops().is_empty(), "restarted once, not on every pass");
    assert_eq!(
        h.store.broker_get(&id).await.expect("broker").state,
        BrokerState::RebootInProgress
    );
    h.agent_reports(&node, 2).await;
    h.pass(&id).await;
    assert_eq!(
        h.store.broker_get(&id).await.expect("broker").state,
        BrokerState::Running
    );

    h.store
        .broker_set_state(
            &id,
            &[BrokerState::Running],
            BrokerState::DeletionInProgress,
        )
        .await
        .expect("deleting");
    h.pass(&id).await;
    assert_eq!(h.fake.ops(), [format!("delete {node}")]);
    assert!(
        h.store.broker_get(&id).await.is_err(),
        "the broker row goes with its last node"
    );
    assert!(h.store.node_ids().await.expect("ids").is_empty());
}

#[tokio::test]
async fn orphaned_provider_data_is_collected() {
    let h = harness().await;
    let id = insert_broker(&h.store, "kept").await;
    h.pass(&id).await;
    h.fake
        .nodes
        .lock()
        .insert(NodeId("b-orphan-1".into()), None);
    h.fake.ops();
    assert_eq!(h.provisioner.collect_orphans().await.expect("gc"), 1);
    assert_eq!(h.fake.ops(), ["delete b-orphan-1"]);
    assert!(
        h.fake.running(&NodeId(format!("{id}-1"))),
        "recorded nodes are kept"
    );
}

#[tokio::test]
async fn converged_brokers_wait_until_their_row_changes() {
    let h = harness().await;
    let id = insert_broker(&h.store, "quiet").await;
    let node = NodeId(format!("{id}-1"));
    h.pass(&id).await;
    h.agent_reports(&node, 1).await;
    h.pass(&id).await;
    let mut schedule = Schedule::default();
    provision_pass(&h.provisioner, &mut schedule)
        .await
        .expect("pass");
    h.fake.ops();

    // The agent dies; right away, the converged broker is not looked at again...
    let long_ago = Utc::now() - chrono::Duration::seconds(60);
    h.store
        .node_mark_started(&node, Some(1), 0, long_ago)
        .await
        .expect("backdate");
    h.fake.crash(&node);
    provision_pass(&h.provisioner, &mut schedule)
        .await
        .expect("pass");
    assert!(h.fake.ops().is_empty(), "not due: converged and unchanged");

    // ...until its row changes (here a user change bumps the generation).
    let user = crate::store::NewUser {
        username: "bob".into(),
        password_hash: "x".into(),
        console_access: false,
        groups: vec![],
        replication_user: false,
    };
    h.store.user_create(&id, &user, None).await.expect("user");
    provision_pass(&h.provisioner, &mut schedule)
        .await
        .expect("pass");
    assert_eq!(h.fake.ops(), [format!("start {node}")]);
}

#[tokio::test]
async fn a_port_another_node_holds_is_drawn_again() {
    let h = harness().await;
    let a = insert_broker(&h.store, "first").await;
    h.pass(&a).await;
    // The provider's next draw repeats the first node's ports.
    h.fake.next_port.store(0, Ordering::Relaxed);
    let b = insert_broker(&h.store, "second").await;
    h.pass(&b).await;
    let first = h
        .store
        .node_get(&NodeId(format!("{a}-1")))
        .await
        .expect("first");
    let second = h
        .store
        .node_get(&NodeId(format!("{b}-1")))
        .await
        .expect("second");
    assert_eq!(first.amqp_port, 20_000);
    assert_eq!(second.amqp_port, 20_002, "the colliding draw was replaced");
}
