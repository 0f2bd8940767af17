//! The stream end to end in one process: a leader's real storage with the hub as its tap, the
//! replication listener, and followers applying into their own directories; then the
//! follower's directory opened as storage must hold the leader's records.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mooring_agent_protocol::{Epoch, NodeId, Peer, ReplicationSpec, Role};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::follower::{self, Target};
use super::{leader, Hub, HubConfig};
use crate::engine::storage::{Durability, QueueKey, Storage, StorageConfig, StorageTap, Tap};

const SECRET: &str = "test-secret";

fn spec(leader_addr: &str) -> ReplicationSpec {
    let peer = |n: &str, addr: &str| Peer {
        node: NodeId(n.into()),
        zone: "z".into(),
        amqp_addr: "127.0.0.1:1".into(),
        replication_addr: addr.into(),
    };
    ReplicationSpec {
        epoch: Epoch(1),
        role: Role::Leader,
        leader: NodeId("a".into()),
        peers: vec![peer("a", leader_addr), peer("b", ""), peer("c", "")],
        secret: SECRET.into(),
    }
}

fn key(name: &str) -> QueueKey {
    QueueKey {
        vhost: "/".into(),
        name: name.into(),
    }
}

/// Polls `f` until it holds, or panics naming `what`.
async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn records(dir: &std::path::Path, names: &[&str]) -> Vec<Vec<Vec<u8>>> {
    let storage = Storage::open(StorageConfig::new(dir)).expect("open follower storage");
    names
        .iter()
        .map(|n| {
            let log = storage
                .open_queue_log(&key(n), Durability::Written)
                .expect("open log");
            let mut out = Vec::new();
            log.scan(&mut |_, b| out.push(b.to_vec())).expect("scan");
            out
        })
        .collect()
}

struct Leader {
    hub: Arc<Hub>,
    storage: Storage,
    addr: String,
    _stop: watch::Sender<bool>,
    _spec: watch::Sender<Option<ReplicationSpec>>,
}

async fn start_leader(dir: &std::path::Path) -> Leader {
    let hub = Arc::new(Hub::new(HubConfig::new(NodeId("a".into()))));
    hub.become_leader(1, vec![NodeId("a".into()), NodeId("b".into())]);
    // The control plane's first answer: a lease, and an in-sync set of the leader alone (a
    // follower joining by full resync is admitted only while it is not recorded in sync).
    hub.on_pointer(
        std::time::Instant::now(),
        &mooring_agent_protocol::DesiredPointer {
            lease: Some(mooring_agent_protocol::LeaseGrant {
                epoch: mooring_agent_protocol::Epoch(1),
                duration_ms: 600_000,
            }),
            in_sync: Some(vec![NodeId("a".into())]),
            ..Default::default()
        },
    );
    let mut config = StorageConfig::new(dir);
    config.tap = Some(Tap(hub.clone()));
    let storage = Storage::open(config).expect("leader storage");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let (spec_tx, spec_rx) = watch::channel(Some(spec(&addr)));
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(leader::serve(
        listener,
        hub.clone(),
        spec_rx,
        dir.to_path_buf(),
        stop_rx,
    ));
    Leader {
        hub,
        storage,
        addr,
        _stop: stop_tx,
        _spec: spec_tx,
    }
}

fn start_follower(
    name: &str,
    dir: &std::path::Path,
    leader_addr: &str,
    hub: Option<Arc<Hub>>,
) -> (Arc<Hub>, tokio::task::JoinHandle<()>) {
    let hub = hub.unwrap_or_else(|| Arc::new(Hub::new(HubConfig::new(NodeId(name.into())))));
    let target = Target {
        epoch: 1,
        leader: "a".into(),
        addr: leader_addr.into(),
        secret: SECRET.into(),
    };
    let task = tokio::spawn(follower::follow(
        hub.clone(),
        dir.to_path_buf(),
        target,
        Arc::new(AtomicBool::new(false)),
    ));
    (hub, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_resyncs_then_streams_then_resumes_from_the_window() {
    let ldir = tempfile::tempdir().expect("tempdir");
    let fdir = tempfile::tempdir().expect("tempdir");
    let leader = start_leader(ldir.path()).await;
    // Data before the follower exists: it arrives by full resync.
    let mut q1 = leader
        .storage
        .open_queue_log(&key("q1"), Durability::Written)
        .expect("q1");
    let mut locs = Vec::new();
    for i in 0..200u32 {
        locs.push(q1.append(&i.to_le_bytes()).expect("append"));
    }
    q1.flush().expect("flush");
    leader.storage.save_definitions(b"defs-1").expect("defs");

    let (fhub, task) = start_follower("b", fdir.path(), &leader.addr, None);
    wait_until("the resync", || fhub.position() == leader.hub.position()).await;

    // Live entries: appends, acks (a whole segment's worth), a second queue, a deletion.
    for loc in &locs[..50] {
        q1.ack(*loc).expect("ack");
    }
    for i in 200..300u32 {
        q1.append(&i.to_le_bytes()).expect("append");
    }
    q1.flush().expect("flush");
    let mut q2 = leader
        .storage
        .open_queue_log(&key("q2"), Durability::Synced)
        .expect("q2");
    q2.append(b"two").expect("append");
    q2.flush().expect("flush");
    let mut q3 = leader
        .storage
        .open_queue_log(&key("q3"), Durability::Written)
        .expect("q3");
    q3.append(b"doomed").expect("append");
    q3.flush().expect("flush");
    drop(q3);
    leader.storage.delete_queue_log(&key("q3")).expect("delete");
    wait_until("live entries", || fhub.position() == leader.hub.position()).await;

    // The follower stops (its task is aborted, as on a role change); more is written; it
    // comes back with the same hub and resumes from the window.
    task.abort();
    let _ = task.await;
    for i in 300..350u32 {
        q1.append(&i.to_le_bytes()).expect("append");
    }
    q1.flush().expect("flush");
    let before = fhub.position();
    let (_, task) = start_follower("b", fdir.path(), &leader.addr, Some(fhub.clone()));
    wait_until("catch-up", || fhub.position() == leader.hub.position()).await;
    assert!(before < fhub.position());
    task.abort();
    let _ = task.await;

    drop((q1, q2));
    drop(leader);
    let want = records(ldir.path(), &["q1", "q2", "q3"]);
    let got = records(fdir.path(), &["q1", "q2", "q3"]);
    assert_eq!(got, want);
    assert_eq!(got[0].len(), 300, "q1 holds 350 appended minus 50 acked");
    assert_eq!(got[1], vec![b"two".to_vec()]);
    assert!(got[2].is_empty(), "q3 was deleted");
    let fstorage = Storage::open(StorageConfig::new(fdir.path())).expect("open");
    assert_eq!(
        fstorage.load_definitions().expect("defs").as_deref(),
        Some(&b"defs-1"[..])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_with_the_wrong_secret_or_a_newer_epoch_is_refused() {
    let ldir = tempfile::tempdir().expect("tempdir");
    let fdir = tempfile::tempdir().expect("tempdir");
    let leader = start_leader(ldir.path()).await;
    let hub = Arc::new(Hub::new(HubConfig::new(NodeId("b".into()))));
    let target = Target {
        epoch: 1,
        leader: "a".into(),
        addr: leader.addr.clone(),
        secret: "wrong".into(),
    };
    let task = tokio::spawn(follower::follow(
        hub.clone(),
        fdir.path().to_path_buf(),
        target,
        Arc::new(AtomicBool::new(false)),
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(hub.resume_key().is_none(), "nothing was applied");
    task.abort();

    // A follower that has seen epoch 2 makes the epoch-1 leader fence itself.
    leader
        .hub
        .record(crate::engine::storage::FileOp::CreateDir { path: "queues/x" });
    let waiter =
        crate::engine::storage::StorageTap::replicated(&*leader.hub, leader.hub.position());
    let fhub = Arc::new(Hub::new(HubConfig::new(NodeId("b".into()))));
    fhub.observe_epoch(2);
    let (_, task) = start_follower("b", fdir.path(), &leader.addr, Some(fhub));
    wait_until("the leader to be fenced", || leader.hub.gate().fenced).await;
    assert!(waiter.await.is_err(), "a fenced leader confirms nothing");
    task.abort();
}

#[tokio::test]
async fn garbage_and_half_frames_from_a_peer_do_no_harm() {
    use tokio::io::AsyncWriteExt;
    let ldir = tempfile::tempdir().expect("tempdir");
    let leader = start_leader(ldir.path()).await;
    for junk in [
        &b"GET / HTTP/1.1\r\n\r\n"[..],
        &[0, 0, 0, 50, 2, 1][..],
        &[0xff; 64][..],
        &[][..],
    ] {
        let mut s = tokio::net::TcpStream::connect(&leader.addr)
            .await
            .expect("connect");
        let _ = s.write_all(junk).await;
        drop(s);
    }
    // The leader still serves a real follower.
    let fdir = tempfile::tempdir().expect("tempdir");
    leader.storage.save_definitions(b"d").expect("defs");
    let (fhub, task) = start_follower("b", fdir.path(), &leader.addr, None);
    wait_until("the follower", || fhub.position() == leader.hub.position()).await;
    task.abort();
}
