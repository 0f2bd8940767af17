//! Replicated brokers' leadership in the store and the failover loop, on both backends
//! (SQLite always, Postgres when reachable; always under CI): the epoch compare-and-set,
//! in-sync recording and leases in the heartbeat transaction, and failover passes of two
//! control planes racing on one database. Agents are played by the test (their heartbeats
//! go straight to the store function the agent API calls); the end-to-end tests with real
//! agents are in tests/python/e2e/test_replicated_*.py.

mod common;

use std::time::Duration;

use chrono::{TimeDelta, Utc};
use common::replicated::{hb, replicated_broker};
use mooring_agent_protocol::{Epoch, NodeId, Role};
use mooring_control_plane::app::AppState;
use mooring_control_plane::config::{FailoverConfig, ServeConfig};
use mooring_control_plane::model::BrokerState;
use mooring_control_plane::reconcile::{failover, leadership};
use mooring_control_plane::store::events::kind;
use mooring_control_plane::store::{BrokerId, Leave, NewEvent, Promotion, Store};

fn event(broker: &BrokerId, from: &NodeId, to: &NodeId) -> NewEvent {
    NewEvent {
        broker_id: broker.clone(),
        at: Utc::now(),
        kind: kind::FAILOVER,
        from_node: Some(from.clone()),
        to_node: Some(to.clone()),
        epoch: None,
        reason: "test".to_owned(),
        duration_ms: Some(1),
    }
}

const LEASE: TimeDelta = TimeDelta::milliseconds(1_500);

#[tokio::test]
async fn two_concurrent_promotions_exactly_one_wins() {
    for t in common::stores().await {
        let s = &t.store;
        let (broker, n) = replicated_broker(s, "cas", 3).await;
        let generation = s.broker_get(&broker).await.expect("broker").generation;
        let promote_to = |to: &NodeId| Promotion {
            broker_id: broker.clone(),
            from_epoch: Epoch(1),
            expected_in_sync: n.clone(),
            new_leader: to.clone(),
            new_in_sync: vec![to.clone()],
            event: event(&broker, &n[0], to),
        };
        let (a, b) = (promote_to(&n[1]), promote_to(&n[2]));
        let (ra, rb) = tokio::join!(s.replication_promote(&a), s.replication_promote(&b));
        let (ra, rb) = (ra.expect("promote a"), rb.expect("promote b"));
        assert!(
            ra ^ rb,
            "{}: exactly one promotion wins ({ra}, {rb})",
            t.backend
        );
        let winner = if ra { &n[1] } else { &n[2] };
        let l = s
            .replication_get(&broker)
            .await
            .expect("get")
            .expect("recorded");
        assert_eq!((l.epoch, &l.leader), (Epoch(2), winner), "{}", t.backend);
        assert_eq!(l.in_sync, vec![winner.clone()], "{}", t.backend);
        assert_eq!(
            s.broker_get(&broker).await.expect("broker").generation,
            generation + 1,
            "{}: the promotion bumps the generation once",
            t.backend
        );
        // A control plane still deciding under epoch 1 loses, whatever it wants.
        assert!(
            !s.replication_promote(&a).await.expect("stale promote"),
            "{}",
            t.backend
        );
        // So does one that read a different in-sync set.
        let stale_set = Promotion {
            from_epoch: Epoch(2),
            expected_in_sync: n.clone(),
            ..promote_to(&n[0])
        };
        assert!(
            !s.replication_promote(&stale_set).await.expect("stale set"),
            "{}",
            t.backend
        );
        let events = s.event_list(&broker, None, 100).await.expect("events");
        let failovers: Vec<_> = events.iter().filter(|e| e.kind == kind::FAILOVER).collect();
        assert_eq!(failovers.len(), 1, "{}: one event per promotion", t.backend);
        assert_eq!(failovers[0].epoch, Some(2), "{}", t.backend);
        t.finish().await;
    }
}

/// A follower about to be stopped for a planned restart leaves the in-sync set first: the
/// leader is told, a stale proposal cannot put it back, the leader's proposal without it
/// makes it `Ready`, and once stopped (`replication_left`) the leader may take it back.
#[tokio::test]
async fn a_planned_leave_takes_a_follower_out_before_it_stops() {
    const ACK: TimeDelta = TimeDelta::seconds(3);
    for t in common::stores().await {
        let s = &t.store;
        let b = t.backend;
        let (broker, n) = replicated_broker(s, "leave", 3).await;
        let now = Utc::now();
        let seen = s
            .replication_get(&broker)
            .await
            .expect("get")
            .expect("recorded");
        assert_eq!(seen.in_sync.len(), 3, "{b}");

        let first = s
            .replication_leave(&seen, &n[2], ACK, now)
            .await
            .expect("leave");
        assert_eq!(first, Leave::Pending, "{b}");
        // Decided on the old snapshot, another node's leave is refused: one at a time.
        assert_eq!(
            s.replication_leave(&seen, &n[1], ACK, now)
                .await
                .expect("leave"),
            Leave::Busy,
            "{b}"
        );
        let l = s
            .replication_get(&broker)
            .await
            .expect("get")
            .expect("recorded");
        assert_eq!(l.in_sync, vec![n[0].clone(), n[1].clone()], "{b}");
        assert_eq!(
            s.replication_leave(&l, &n[1], ACK, now)
                .await
                .expect("leave"),
            Leave::Busy,
            "{b}: another node is leaving"
        );

        // The leader's proposal sent before it heard of the leave still names n[2]: the
        // leave holds, and the answer tells the leader.
        let a = s
            .replication_heartbeat(
                &n[0],
                &hb(1, Role::Leader, 10, &[&n[0], &n[1], &n[2]], false),
                LEASE,
                now,
            )
            .await
            .expect("heartbeat");
        assert_eq!(a.in_sync, Some(vec![n[0].clone(), n[1].clone()]), "{b}");
        assert_eq!(a.leaving, vec![n[2].clone()], "{b}");
        assert!(!a.leaving_acked, "{b}");
        let l = s
            .replication_get(&broker)
            .await
            .expect("get")
            .expect("recorded");
        assert_eq!(
            s.replication_leave(&l, &n[2], ACK, now)
                .await
                .expect("leave"),
            Leave::Pending,
            "{b}"
        );
        // Without an acknowledgement, the wait is bounded.
        assert_eq!(
            s.replication_leave(&l, &n[2], ACK, now + ACK)
                .await
                .expect("leave"),
            Leave::Ready,
            "{b}"
        );

        // The leader lets go of it: Ready.
        let a = s
            .replication_heartbeat(
                &n[0],
                &hb(1, Role::Leader, 11, &[&n[0], &n[1]], false),
                LEASE,
                now,
            )
            .await
            .expect("heartbeat");
        assert!(a.leaving_acked, "{b}");
        let l = s
            .replication_get(&broker)
            .await
            .expect("get")
            .expect("recorded");
        assert!(l.leaving.as_ref().is_some_and(|l| l.acked), "{b}");
        assert_eq!(
            s.replication_leave(&l, &n[2], ACK, now)
                .await
                .expect("leave"),
            Leave::Ready,
            "{b}"
        );

        // Stopped and back: the leader's proposal takes it again.
        s.replication_left(&broker, &n[2]).await.expect("left");
        let a = s
            .replication_heartbeat(
                &n[0],
                &hb(1, Role::Leader, 12, &[&n[0], &n[1], &n[2]], false),
                LEASE,
                now,
            )
            .await
            .expect("heartbeat");
        assert_eq!(a.in_sync.map(|s| s.len()), Some(3), "{b}");
        assert!(a.leaving.is_empty(), "{b}");
        let l = s
            .replication_get(&broker)
            .await
            .expect("get")
            .expect("recorded");
        assert!(l.leaving.is_none(), "{b}");
    }
}

#[tokio::test]
async fn heartbeats_record_in_sync_sets_and_leases_only_from_the_current_leader() {
    for t in common::stores().await {
        let s = &t.store;
        let (broker, n) = replicated_broker(s, "hb", 3).await;
        let now = Utc::now();

        // The leader of epoch 1 proposes dropping node 3: recorded, lease granted.
        let a = s
            .replication_heartbeat(
                &n[0],
                &hb(1, Role::Leader, 10, &[&n[0], &n[1]], false),
                LEASE,
                now,
            )
            .await
            .expect("leader heartbeat");
        assert_eq!(
            a.in_sync,
            Some(vec![n[0].clone(), n[1].clone()]),
            "{}",
            t.backend
        );
        assert_eq!(
            a.lease.map(|l| (l.epoch, l.duration_ms)),
            Some((Epoch(1), 1_500)),
            "{}",
            t.backend
        );
        assert!(!a.release_lease, "{}", t.backend);
        let l = s
            .replication_get(&broker)
            .await
            .expect("get")
            .expect("recorded");
        let expiry = l.lease_expires_at.expect("lease recorded");
        assert!(
            (expiry - (now + LEASE)).num_milliseconds().abs() <= 1,
            "{}: expiry on the control plane's clock, {expiry} vs {}",
            t.backend,
            now + LEASE
        );
        let changes = s.event_list(&broker, None, 100).await.expect("events");
        assert!(
            changes.iter().any(|e| e.kind == kind::IN_SYNC_CHANGE),
            "{}",
            t.backend
        );

        // A follower's proposal, or the leader's under an old epoch, changes nothing.
        let f = s
            .replication_heartbeat(
                &n[1],
                &hb(1, Role::Follower, 10, &[&n[1]], false),
                LEASE,
                now,
            )
            .await
            .expect("follower heartbeat");
        assert_eq!(f.lease, None, "{}: followers get no lease", t.backend);
        assert_eq!(
            f.in_sync,
            Some(vec![n[0].clone(), n[1].clone()]),
            "{}",
            t.backend
        );
        let stale = s
            .replication_heartbeat(&n[0], &hb(0, Role::Leader, 10, &[&n[0]], false), LEASE, now)
            .await
            .expect("stale heartbeat");
        assert_eq!(stale.lease, None, "{}", t.backend);
        assert_eq!(
            stale.in_sync,
            Some(vec![n[0].clone(), n[1].clone()]),
            "{}",
            t.backend
        );

        // A proposal without the leader itself is malformed and ignored.
        let odd = s
            .replication_heartbeat(&n[0], &hb(1, Role::Leader, 10, &[&n[1]], false), LEASE, now)
            .await
            .expect("odd heartbeat");
        assert_eq!(
            odd.in_sync,
            Some(vec![n[0].clone(), n[1].clone()]),
            "{}",
            t.backend
        );

        // A lease is never shortened by a heartbeat stamped earlier (another replica's clock).
        s.replication_heartbeat(
            &n[0],
            &hb(1, Role::Leader, 11, &[], false),
            LEASE,
            now - TimeDelta::milliseconds(500),
        )
        .await
        .expect("early heartbeat");
        let l = s
            .replication_get(&broker)
            .await
            .expect("get")
            .expect("recorded");
        assert_eq!(l.lease_expires_at, Some(expiry), "{}", t.backend);

        // A switchover: the leader is asked to release its lease and gets no new one...
        assert!(s
            .replication_request_switchover(&broker, Some(&n[1]), "test", now)
            .await
            .expect("request"));
        assert!(
            !s.replication_request_switchover(&broker, None, "again", now)
                .await
                .expect("second request"),
            "{}: one at a time",
            t.backend
        );
        let asked = s
            .replication_heartbeat(&n[0], &hb(1, Role::Leader, 12, &[], false), LEASE, now)
            .await
            .expect("heartbeat during switchover");
        assert!(
            asked.release_lease && asked.lease.is_none(),
            "{}: {asked:?}",
            t.backend
        );
        // ... and reports the release with its final position.
        let released = s
            .replication_heartbeat(&n[0], &hb(1, Role::Leader, 13, &[], true), LEASE, now)
            .await
            .expect("release");
        assert!(
            released.leadership_changed && released.lease.is_none(),
            "{}",
            t.backend
        );
        let l = s
            .replication_get(&broker)
            .await
            .expect("get")
            .expect("recorded");
        assert!(l.lease_released, "{}", t.backend);
        assert_eq!(l.released_position, Some(13), "{}", t.backend);

        // After a promotion the old leader's heartbeats carry no weight.
        assert!(s
            .replication_promote(&Promotion {
                broker_id: broker.clone(),
                from_epoch: Epoch(1),
                expected_in_sync: vec![n[0].clone(), n[1].clone()],
                new_leader: n[1].clone(),
                new_in_sync: vec![n[1].clone()],
                event: event(&broker, &n[0], &n[1]),
            })
            .await
            .expect("promote"));
        let old = s
            .replication_heartbeat(
                &n[0],
                &hb(1, Role::Leader, 14, &[&n[0], &n[1]], false),
                LEASE,
                now,
            )
            .await
            .expect("old leader");
        assert_eq!(old.lease, None, "{}", t.backend);
        assert_eq!(old.in_sync, Some(vec![n[1].clone()]), "{}", t.backend);
        let new = s
            .replication_heartbeat(
                &n[1],
                &hb(2, Role::Leader, 14, &[&n[1], &n[2]], false),
                LEASE,
                now,
            )
            .await
            .expect("new leader");
        assert_eq!(new.lease.map(|l| l.epoch), Some(Epoch(2)), "{}", t.backend);
        assert_eq!(
            new.in_sync,
            Some(vec![n[1].clone(), n[2].clone()]),
            "{}",
            t.backend
        );
        let generation = s.broker_get(&broker).await.expect("broker").generation;
        assert_eq!(new.desired_generation, generation, "{}", t.backend);
        t.finish().await;
    }
}

/// Fast timings, so the test waits well under a second per failover.
fn fast() -> FailoverConfig {
    FailoverConfig {
        replicated_heartbeat_ms: 50,
        heartbeat_timeout_ms: 200,
        lease_ms: 400,
        lease_drift_margin_ms: 100,
        failover_interval_ms: 20,
        switchover_catch_up_ms: 500,
    }
}

fn app_state(store: &Store) -> AppState {
    let mut config = ServeConfig::for_tests(std::env::temp_dir(), None);
    config.failover = fast();
    AppState::new(store.clone(), config)
}

/// Heartbeats for every live node until `stop`: the leader as leader (proposing the given
/// set), the others as followers at `position`.
async fn play_agents(
    store: Store,
    broker: BrokerId,
    live: Vec<NodeId>,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    // Long enough that a follower stays live through a stall of this loop on a loaded
    // machine (with 400 ms, node 2 once lapsed and node 3 was promoted instead).
    let lease = TimeDelta::seconds(2);
    while !*stop.borrow() {
        let l = store
            .replication_get(&broker)
            .await
            .expect("get")
            .expect("recorded");
        for node in &live {
            let role = if *node == l.leader {
                Role::Leader
            } else {
                Role::Follower
            };
            // Node 2 is ahead of node 3: it should be the one promoted.
            let position = if node.0.ends_with("-2") { 20 } else { 10 };
            store
                .replication_heartbeat(
                    node,
                    &hb(l.epoch.0, role, position, &[], false),
                    lease,
                    Utc::now(),
                )
                .await
                .expect("heartbeat");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn two_control_planes_fail_over_once_after_the_lease() {
    for t in common::stores().await {
        let s = &t.store;
        let (broker, n) = replicated_broker(s, "loop", 3).await;
        let (cp1, cp2) = (app_state(s), app_state(s));
        let timing = leadership::Timing::from_config(&fast());

        // The leader heartbeats once (lease 400 ms), then dies; the followers go on.
        s.replication_heartbeat(
            &n[0],
            &hb(1, Role::Leader, 20, &[], false),
            TimeDelta::milliseconds(400),
            Utc::now(),
        )
        .await
        .expect("leader heartbeat");
        let expiry = s
            .replication_get(&broker)
            .await
            .expect("get")
            .expect("rec")
            .lease_expires_at
            .expect("lease");
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let agents = tokio::spawn(play_agents(
            s.clone(),
            broker.clone(),
            vec![n[1].clone(), n[2].clone()],
            stop_rx,
        ));

        // Both control planes run passes concurrently until a promotion shows.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let promoted = loop {
            let (a, b) = tokio::join!(failover::pass(&cp1, &timing), failover::pass(&cp2, &timing));
            a.expect("pass 1");
            b.expect("pass 2");
            let l = s.replication_get(&broker).await.expect("get").expect("rec");
            if l.epoch > Epoch(1) {
                break (l, Utc::now());
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{}: no failover within 10 s",
                t.backend
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let (l, seen) = promoted;
        assert!(
            seen >= expiry + TimeDelta::milliseconds(100),
            "{}: promoted at {seen}, before the lease ({expiry}) plus the drift margin",
            t.backend
        );
        assert_eq!(l.epoch, Epoch(2), "{}: exactly one promotion", t.backend);
        assert_eq!(
            l.leader, n[1],
            "{}: the most advanced in-sync follower",
            t.backend
        );
        assert_eq!(
            l.in_sync,
            vec![n[1].clone(), n[2].clone()],
            "{}: the dead leader left the set",
            t.backend
        );

        // A few more racing passes change nothing: the new leader heartbeats.
        for _ in 0..5 {
            let (a, b) = tokio::join!(failover::pass(&cp1, &timing), failover::pass(&cp2, &timing));
            a.expect("pass 1");
            b.expect("pass 2");
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        let after = s.replication_get(&broker).await.expect("get").expect("rec");
        assert_eq!(after.epoch, Epoch(2), "{}: no second promotion", t.backend);
        let events = s.event_list(&broker, None, 100).await.expect("events");
        let failovers: Vec<_> = events.iter().filter(|e| e.kind == kind::FAILOVER).collect();
        assert_eq!(failovers.len(), 1, "{}: {events:?}", t.backend);
        assert!(
            failovers[0].reason.contains("refuses connections"),
            "{}: the probe is in the reason: {}",
            t.backend,
            failovers[0].reason
        );
        // Redundancy: a leader and one in-sync follower left, so RUNNING.
        let state = s.broker_get(&broker).await.expect("broker").state;
        assert_eq!(state, BrokerState::Running, "{}", t.backend);

        // Node 3 dies too: no standby is left, the broker says so.
        stop_tx.send(true).expect("stop agents");
        agents.await.expect("agents");
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let agents = tokio::spawn(play_agents(
            s.clone(),
            broker.clone(),
            vec![n[1].clone()],
            stop_rx,
        ));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            failover::pass(&cp1, &timing).await.expect("pass");
            if s.broker_get(&broker).await.expect("broker").state
                == BrokerState::CriticalActionRequired
            {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{}: never CRITICAL_ACTION_REQUIRED",
                t.backend
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let l = s.replication_get(&broker).await.expect("get").expect("rec");
        assert_eq!(
            l.action_required.as_deref(),
            Some("MOORING_REDUNDANCY_LOST"),
            "{}",
            t.backend
        );
        assert_eq!(
            l.epoch,
            Epoch(2),
            "{}: nothing promoted for a dead follower",
            t.backend
        );
        stop_tx.send(true).expect("stop agents");
        agents.await.expect("agents");
        t.finish().await;
    }
}

#[tokio::test]
async fn a_switchover_promotes_the_target_once_the_leader_releases() {
    for t in common::stores().await {
        let s = &t.store;
        let (broker, n) = replicated_broker(s, "switch", 3).await;
        let cp = app_state(s);
        let timing = leadership::Timing::from_config(&fast());
        // Agents: the leader releases its lease as soon as asked (as the real agent does).
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let store = s.clone();
        let b = broker.clone();
        let nodes = n.clone();
        let agents = tokio::spawn(async move {
            let mut released_epoch = 0;
            while !*stop_rx.borrow() {
                let l = store.replication_get(&b).await.expect("get").expect("rec");
                for node in &nodes {
                    let leads = *node == l.leader;
                    let role = if leads { Role::Leader } else { Role::Follower };
                    let release = leads && released_epoch == l.epoch.0;
                    let answer = store
                        .replication_heartbeat(
                            node,
                            &hb(l.epoch.0, role, 30, &[], release),
                            TimeDelta::milliseconds(400),
                            Utc::now(),
                        )
                        .await
                        .expect("heartbeat");
                    if leads && answer.release_lease {
                        released_epoch = l.epoch.0;
                    }
                }
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
        });
        let looping = {
            let cp = cp.clone();
            tokio::spawn(async move {
                for _ in 0..500 {
                    failover::pass(&cp, &timing).await.expect("pass");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        };
        // Wait until every node has been heard from: a target never heard from is refused.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !s
            .node_list_for_broker(&broker)
            .await
            .expect("nodes")
            .iter()
            .all(|n| n.last_heartbeat.is_some())
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{}: no heartbeats",
                t.backend
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let started = std::time::Instant::now();
        let done = leadership::switchover(
            &cp,
            &broker,
            Some(n[2].clone()),
            "test switchover",
            Duration::from_secs(10),
        )
        .await
        .expect("switchover");
        let took = started.elapsed();
        assert_eq!(
            (done.from.clone(), done.to.clone(), done.epoch),
            (n[0].clone(), n[2].clone(), Epoch(2)),
            "{}",
            t.backend
        );
        // Released, not expired: well under the 400 ms lease plus margin after the request.
        assert!(
            took < Duration::from_millis(450),
            "{}: switchover took {took:?}",
            t.backend
        );
        let events = s.event_list(&broker, None, 100).await.expect("events");
        let sw: Vec<_> = events
            .iter()
            .filter(|e| e.kind == kind::SWITCHOVER)
            .collect();
        assert_eq!(sw.len(), 1, "{}: {events:?}", t.backend);
        assert!(
            sw[0].reason.contains("released its lease"),
            "{}: {}",
            t.backend,
            sw[0].reason
        );

        // An unknown target is refused, and the refusal says why.
        let refused = leadership::switchover(
            &cp,
            &broker,
            Some(NodeId("nope".into())),
            "bad target",
            Duration::from_secs(10),
        )
        .await;
        assert!(
            matches!(&refused, Err(leadership::SwitchoverError::Refused(why)) if why.contains("not a node")),
            "{}: {refused:?}",
            t.backend
        );
        stop_tx.send(true).expect("stop");
        agents.await.expect("agents");
        looping.abort();
        t.finish().await;
    }
}
