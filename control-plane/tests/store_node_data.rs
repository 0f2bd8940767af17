//! The store queries behind agent upgrades and node replacement, on both backends (SQLite
//! always, Postgres when reachable): the agent versions nodes reported, and a replicated
//! node that comes back without its data leaving the in-sync set.

mod common;

use chrono::{SubsecRound as _, TimeDelta, Utc};
use common::replicated::{hb, replicated_broker};
use mooring_agent_protocol::{Generation, Role};

#[tokio::test]
async fn agent_versions_and_nodes_that_lost_their_data() {
    for t in common::stores().await {
        let s = &t.store;
        let (broker_id, ids) = replicated_broker(s, "lost-data", 3).await;
        let now = Utc::now().trunc_subsecs(3);

        // At creation nothing was applied anywhere, and no node ran before: nobody leaves.
        for id in &ids {
            assert!(
                !s.replication_node_lost_data(id, now).await.expect("check"),
                "{}: a node that never ran has lost nothing",
                t.backend
            );
            s.node_register(id, "0.1.0", Generation(0), now)
                .await
                .expect("register");
        }
        s.node_register(&ids[2], "0.2.0", Generation(3), now)
            .await
            .expect("register");
        let mut versions = s.maintenance_agent_versions().await.expect("versions");
        versions.retain(|(broker, _)| *broker == broker_id);
        let versions: Vec<&str> = versions.iter().map(|(_, v)| v.as_str()).collect();
        assert_eq!(versions, ["0.1.0", "0.2.0"], "{}", t.backend);

        // A follower that ran before comes back empty: out of the in-sync set, once.
        assert!(s
            .replication_node_lost_data(&ids[1], now)
            .await
            .expect("check"));
        let r = s
            .replication_get(&broker_id)
            .await
            .expect("get")
            .expect("row");
        assert_eq!(
            r.in_sync,
            vec![ids[0].clone(), ids[2].clone()],
            "{}",
            t.backend
        );
        assert!(!s
            .replication_node_lost_data(&ids[1], now)
            .await
            .expect("again"));
        let events = s.event_list(&broker_id, None, 100).await.expect("events");
        let lost: Vec<_> = events
            .iter()
            .filter(|e| e.reason.contains("came back without its data"))
            .collect();
        assert_eq!(lost.len(), 1, "{}: {events:?}", t.backend);
        assert_eq!(lost[0].from_node.as_ref(), Some(&ids[1]));
        // The leader stays the leader and in the set (not handled here).
        assert!(!s
            .replication_node_lost_data(&ids[0], now)
            .await
            .expect("leader"));
        let r = s
            .replication_get(&broker_id)
            .await
            .expect("get")
            .expect("row");
        assert!(r.in_sync.contains(&ids[0]) && r.leader == ids[0]);

        // The leader may still propose it from before it noticed: that cannot put it back.
        assert_eq!(
            r.leaving.as_ref().map(|l| &l.node),
            Some(&ids[1]),
            "{}",
            t.backend
        );
        s.node_register(
            &ids[1],
            "0.1.0",
            Generation(0),
            now + TimeDelta::milliseconds(1),
        )
        .await
        .expect("register");
        let stale = hb(1, Role::Leader, 10, &[&ids[0], &ids[1], &ids[2]], false);
        let later = now + TimeDelta::milliseconds(10);
        let a = s
            .replication_heartbeat(&ids[0], &stale, TimeDelta::seconds(1), later)
            .await
            .expect("heartbeat");
        assert_eq!(
            a.in_sync,
            Some(vec![ids[0].clone(), ids[2].clone()]),
            "{}",
            t.backend
        );
        assert_eq!(
            a.leaving,
            vec![ids[1].clone()],
            "{}: the leader is told",
            t.backend
        );
        // Once the leader has let go of it, the leave is over: it rejoins when proposed
        // (by then, having copied).
        let let_go = hb(1, Role::Leader, 10, &[&ids[0], &ids[2]], false);
        s.replication_heartbeat(&ids[0], &let_go, TimeDelta::seconds(1), later)
            .await
            .expect("heartbeat");
        let r = s
            .replication_get(&broker_id)
            .await
            .expect("get")
            .expect("row");
        assert!(r.leaving.is_none(), "{}", t.backend);
        let a = s
            .replication_heartbeat(&ids[0], &stale, TimeDelta::seconds(1), later)
            .await
            .expect("heartbeat");
        assert_eq!(a.in_sync.map(|s| s.len()), Some(3), "{}", t.backend);
    }
}
