//! The store on both backends: SQLite always, Postgres when reachable (always under CI).

mod common;

use std::collections::BTreeMap;

use chrono::{SubsecRound as _, Utc};
use mooring_control_plane::model::{
    AuthenticationStrategy, BrokerState, ChangeType, DeploymentMode, EngineType,
};
use mooring_control_plane::store::{
    AuditDecision, AuditFilter, BrokerId, ConfigurationId, Constraint, NewAuditEvent, NewBroker,
    NewConfiguration, NewUser, Store, StoreError, UserUpdate,
};

fn new_broker(name: &str, token: Option<&str>) -> NewBroker {
    NewBroker {
        creator_request_id: token.map(str::to_owned),
        tags: vec![("env".to_owned(), "test".to_owned())],
        ..common::new_broker(name, DeploymentMode::SingleInstance)
    }
}

fn user(name: &str) -> NewUser {
    NewUser {
        username: name.to_owned(),
        password_hash: "hash".to_owned(),
        console_access: false,
        groups: vec![],
        replication_user: false,
    }
}

#[tokio::test]
async fn brokers_insert_read_list_and_unique_names() {
    for t in common::stores().await {
        let s = &t.store;
        let b = s
            .broker_insert(new_broker("one", Some("tok-1")), vec![user("admin")])
            .await
            .expect("insert");
        assert_eq!(
            (b.state, b.generation, b.version),
            (BrokerState::CreationInProgress, 1, 1),
            "{}",
            t.backend
        );
        assert_eq!(
            s.broker_get(&b.id).await.expect("get"),
            b,
            "{}: read back equals inserted",
            t.backend
        );
        assert_eq!(
            s.broker_get_by_name("one")
                .await
                .expect("by name")
                .map(|x| x.id),
            Some(b.id.clone())
        );
        assert_eq!(
            s.broker_get_by_creator_request_id("tok-1")
                .await
                .expect("by token")
                .map(|x| x.id),
            Some(b.id.clone())
        );
        assert_eq!(
            s.tag_list(&b.arn)
                .await
                .expect("tags")
                .get("env")
                .map(String::as_str),
            Some("test")
        );

        let dup = s.broker_insert(new_broker("one", None), vec![]).await;
        assert!(
            matches!(dup, Err(StoreError::Constraint(Constraint::BrokerName))),
            "{}: {dup:?}",
            t.backend
        );
        let dup_token = s
            .broker_insert(new_broker("two", Some("tok-1")), vec![])
            .await;
        assert!(
            matches!(
                dup_token,
                Err(StoreError::Constraint(Constraint::BrokerCreatorRequestId))
            ),
            "{}: {dup_token:?}",
            t.backend
        );
        // A failed insert leaves nothing behind (users and tags are in its transaction).
        assert!(s
            .broker_get_by_name("two")
            .await
            .expect("by name")
            .is_none());

        for i in 0..7 {
            s.broker_insert(new_broker(&format!("b{i}"), None), vec![])
                .await
                .expect("insert");
        }
        let mut seen = Vec::new();
        let mut after: Option<String> = None;
        for _ in 0..10 {
            let page = s.broker_list(after.as_deref(), 3).await.expect("list");
            if page.is_empty() {
                break;
            }
            after = page.last().map(|b| b.id.to_string());
            seen.extend(page.into_iter().map(|b| b.name));
        }
        seen.sort();
        assert_eq!(
            seen.len(),
            8,
            "{}: every broker exactly once: {seen:?}",
            t.backend
        );
        seen.dedup();
        assert_eq!(seen.len(), 8);

        assert_eq!(
            s.broker_get(&BrokerId::generate())
                .await
                .err()
                .map(|e| e.to_string()),
            Some("broker not found".into())
        );
        t.finish().await;
    }
}

#[tokio::test]
async fn optimistic_updates_detect_lost_races_and_generations_only_grow() {
    for t in common::stores().await {
        let s = &t.store;
        let b = s
            .broker_insert(new_broker("race", None), vec![])
            .await
            .expect("insert");
        let (first, second) = (b.clone(), b.clone());

        let mut spec = first.spec();
        spec.pending_engine_version = Some("3.14".to_owned());
        let won = s
            .broker_update_spec(&first, &spec, false)
            .await
            .expect("first writer wins");
        assert_eq!(
            (won.version, won.generation),
            (2, 1),
            "{}: no bump unless asked",
            t.backend
        );

        let mut spec = second.spec();
        spec.pending_host_instance_type = Some("mq.m5.xlarge".to_owned());
        let lost = s.broker_update_spec(&second, &spec, true).await;
        assert!(
            matches!(lost, Err(StoreError::VersionConflict)),
            "{}: {lost:?}",
            t.backend
        );
        let now = s.broker_get(&b.id).await.expect("get");
        assert_eq!(
            now.pending_engine_version.as_deref(),
            Some("3.14"),
            "{}: the winner's change stands",
            t.backend
        );
        assert_eq!(
            now.pending_host_instance_type, None,
            "{}: the loser wrote nothing",
            t.backend
        );

        let mut spec = now.spec();
        spec.state = BrokerState::RebootInProgress;
        spec.request_reboot = true;
        let rebooted = s
            .broker_update_spec(&now, &spec, true)
            .await
            .expect("reboot");
        assert_eq!(
            (rebooted.generation, rebooted.reboot_generation),
            (2, Some(2)),
            "{}",
            t.backend
        );

        // A reconciler's state change moves the version, so a stale API snapshot loses.
        assert!(s
            .broker_set_state(
                &b.id,
                &[BrokerState::RebootInProgress],
                BrokerState::Running
            )
            .await
            .expect("set"));
        assert!(!s
            .broker_set_state(
                &b.id,
                &[BrokerState::RebootInProgress],
                BrokerState::Running
            )
            .await
            .expect("set"));
        let stale = s
            .broker_update_spec(&rebooted, &rebooted.spec(), false)
            .await;
        assert!(
            matches!(stale, Err(StoreError::VersionConflict)),
            "{}: {stale:?}",
            t.backend
        );

        let gone = BrokerId::generate();
        let mut ghost = rebooted.clone();
        ghost.id = gone;
        assert!(matches!(
            s.broker_update_spec(&ghost, &ghost.spec(), false).await,
            Err(StoreError::NotFound(_))
        ));
        t.finish().await;
    }
}

/// Many writers append to one broker at once, each re-reading and retrying when it
/// loses (as the app layer does): conflicts happen, and no write is lost.
#[tokio::test]
async fn racing_read_modify_writes_are_detected_not_lost() {
    const WRITERS: usize = 8;
    for t in common::stores().await {
        let b = t
            .store
            .broker_insert(new_broker("contended", None), vec![])
            .await
            .expect("insert");
        let mut tasks = Vec::new();
        for i in 0..WRITERS {
            let store: Store = t.store.clone();
            let id = b.id.clone();
            tasks.push(tokio::spawn(async move {
                let mut conflicts = 0;
                for _ in 0..200 {
                    let current = store.broker_get(&id).await.expect("get");
                    let mut spec = current.spec();
                    spec.security_groups.push(format!("sg-{i}"));
                    match store.broker_update_spec(&current, &spec, true).await {
                        Ok(_) => return conflicts,
                        Err(StoreError::VersionConflict) => conflicts += 1,
                        Err(e) => panic!("unexpected store error: {e:#}"),
                    }
                    tokio::task::yield_now().await;
                }
                panic!("writer {i} never won within 200 attempts");
            }));
        }
        let mut conflicts = 0;
        for task in tasks {
            conflicts += task.await.expect("writer finished");
        }
        let end = t.store.broker_get(&b.id).await.expect("get");
        let mut groups = end.security_groups.clone();
        groups.sort();
        let expected: Vec<String> = (0..WRITERS).map(|i| format!("sg-{i}")).collect();
        assert_eq!(
            groups, expected,
            "{}: every writer's change is present",
            t.backend
        );
        assert_eq!(
            end.generation,
            1 + WRITERS as i64,
            "{}: one bump per successful write",
            t.backend
        );
        assert_eq!(end.version, 1 + WRITERS as i64, "{}", t.backend);
        eprintln!("{}: {conflicts} conflicts detected and retried", t.backend);
        t.finish().await;
    }
}

#[tokio::test]
async fn user_changes_stay_pending_until_their_generation_is_applied() {
    for t in common::stores().await {
        let s = &t.store;
        let b = s
            .broker_insert(new_broker("users", None), vec![user("admin")])
            .await
            .expect("insert");
        let admin = s.user_get(&b.id, "admin").await.expect("admin");
        assert_eq!(
            (admin.pending_change, admin.pending_generation),
            (Some(ChangeType::Create), 1)
        );

        let g2 = s
            .user_create(&b.id, &user("app"), None)
            .await
            .expect("create");
        assert_eq!(g2, 2, "{}: a user change bumps the generation", t.backend);
        let dup = s.user_create(&b.id, &user("app"), None).await;
        assert!(
            matches!(dup, Err(StoreError::Constraint(Constraint::BrokerUser))),
            "{}: {dup:?}",
            t.backend
        );
        assert_eq!(
            s.broker_get(&b.id).await.expect("get").generation,
            2,
            "{}: a failed change bumps nothing",
            t.backend
        );

        s.user_mark_applied(&b.id, 1).await.expect("applied 1");
        assert_eq!(
            s.user_get(&b.id, "admin")
                .await
                .expect("admin")
                .pending_change,
            None
        );
        assert_eq!(
            s.user_get(&b.id, "app").await.expect("app").pending_change,
            Some(ChangeType::Create)
        );

        let g3 = s
            .user_update(
                &b.id,
                "app",
                &UserUpdate {
                    console_access: Some(true),
                    ..Default::default()
                },
            )
            .await
            .expect("update");
        let app = s.user_get(&b.id, "app").await.expect("app");
        assert_eq!(
            (app.pending_change, app.console_access, g3),
            (Some(ChangeType::Create), true, 3),
            "{}",
            t.backend
        );
        let g4 = s
            .user_update(
                &b.id,
                "admin",
                &UserUpdate {
                    password_hash: Some("h2".into()),
                    ..Default::default()
                },
            )
            .await
            .expect("update admin");
        let admin = s.user_get(&b.id, "admin").await.expect("admin");
        assert_eq!(
            (admin.pending_change, admin.password_hash.as_str()),
            (Some(ChangeType::Update), "h2")
        );

        let g5 = s.user_delete(&b.id, "app").await.expect("delete");
        assert_eq!(
            s.user_get(&b.id, "app")
                .await
                .expect("still listed")
                .pending_change,
            Some(ChangeType::Delete)
        );
        assert!(matches!(
            s.user_delete(&b.id, "app").await,
            Err(StoreError::NotFound(_))
        ));
        assert!(matches!(
            s.user_update(&b.id, "app", &UserUpdate::default()).await,
            Err(StoreError::NotFound(_))
        ));
        let desired: Vec<String> = s
            .user_list_desired(&b.id)
            .await
            .expect("desired")
            .into_iter()
            .map(|u| u.username)
            .collect();
        assert_eq!(desired, vec!["admin"], "{}", t.backend);

        // Applying an older generation leaves later changes pending.
        s.user_mark_applied(&b.id, g4).await.expect("applied g4");
        assert!(
            s.user_get(&b.id, "app").await.is_ok(),
            "{}: deletion at g5 not yet applied",
            t.backend
        );
        assert_eq!(
            s.user_get(&b.id, "admin")
                .await
                .expect("admin")
                .pending_change,
            None
        );
        s.user_mark_applied(&b.id, g5).await.expect("applied g5");
        assert!(
            matches!(s.user_get(&b.id, "app").await, Err(StoreError::NotFound(_))),
            "{}",
            t.backend
        );

        // A user pending deletion can be created again.
        s.user_create(&b.id, &user("admin2"), None)
            .await
            .expect("create");
        s.user_delete(&b.id, "admin2").await.expect("delete");
        s.user_create(&b.id, &user("admin2"), None)
            .await
            .expect("revive");
        assert_eq!(
            s.user_get(&b.id, "admin2")
                .await
                .expect("revived")
                .pending_change,
            Some(ChangeType::Create)
        );

        let page = s.user_list(&b.id, Some("admin"), 10).await.expect("list");
        assert_eq!(
            page.iter().map(|u| u.username.as_str()).collect::<Vec<_>>(),
            vec!["admin2"]
        );

        // Nothing changes on a broker being deleted.
        assert!(s
            .broker_set_state(
                &b.id,
                &[BrokerState::CreationInProgress],
                BrokerState::DeletionInProgress
            )
            .await
            .expect("set"));
        assert!(matches!(
            s.user_create(&b.id, &user("late"), None).await,
            Err(StoreError::NotFound("broker"))
        ));
        s.broker_remove(&b.id).await.expect("remove");
        s.broker_remove(&b.id)
            .await
            .expect("removing twice is fine");
        assert!(
            s.user_list(&b.id, None, 10).await.expect("list").is_empty(),
            "{}: users go with the broker",
            t.backend
        );
        assert!(
            s.tag_list(&b.arn).await.expect("tags").is_empty(),
            "{}: tags go with the broker",
            t.backend
        );
        t.finish().await;
    }
}

#[tokio::test]
async fn configurations_revisions_and_deletion_rules() {
    for t in common::stores().await {
        let s = &t.store;
        let id = ConfigurationId::generate();
        let c = s
            .configuration_insert(NewConfiguration {
                arn: format!("arn:aws:mq:us-east-1:000000000000:configuration:{id}"),
                id: id.clone(),
                name: "cfg".into(),
                engine_type: EngineType::Rabbitmq,
                engine_version: "3.13".into(),
                authentication_strategy: AuthenticationStrategy::Simple,
                data: "ZGF0YQ==".into(),
                description: Some("first".into()),
                tags: vec![("k".into(), "v".into())],
                now: Utc::now().trunc_subsecs(3),
            })
            .await
            .expect("insert");
        assert_eq!(
            (c.latest_revision, c.description.as_deref()),
            (1, Some("first"))
        );
        let c2 = s
            .configuration_add_revision(&id, "bmV3", Some("second"))
            .await
            .expect("revise");
        let c3 = s
            .configuration_add_revision(&id, "bmV3ZXI=", None)
            .await
            .expect("revise");
        assert_eq!(
            (c2.latest_revision, c3.latest_revision),
            (2, 3),
            "{}",
            t.backend
        );
        assert_eq!(
            s.configuration_revision_get(&id, 2)
                .await
                .expect("rev 2")
                .data,
            "bmV3"
        );
        let revs = s
            .configuration_revision_list(&id, 1, 10)
            .await
            .expect("revisions");
        assert_eq!(
            revs.iter().map(|r| r.revision).collect::<Vec<_>>(),
            vec![2, 3]
        );
        assert!(matches!(
            s.configuration_revision_get(&id, 9).await,
            Err(StoreError::NotFound(_))
        ));

        let mut nb = new_broker("uses-config", None);
        nb.configuration = Some((id.clone(), 2));
        let b = s.broker_insert(nb, vec![]).await.expect("broker");
        assert!(s.broker_uses_configuration(&id).await.expect("uses"));
        let refused = s.configuration_delete(&id).await;
        assert!(
            matches!(
                refused,
                Err(StoreError::Constraint(Constraint::ConfigurationInUse))
            ),
            "{}: {refused:?}",
            t.backend
        );
        s.broker_remove(&b.id).await.expect("remove broker");
        s.configuration_delete(&id)
            .await
            .expect("delete once unused");
        assert!(matches!(
            s.configuration_get(&id).await,
            Err(StoreError::NotFound(_))
        ));
        assert!(
            s.tag_list(&c.arn).await.expect("tags").is_empty(),
            "{}: tags go with it",
            t.backend
        );
        t.finish().await;
    }
}

#[tokio::test]
async fn tags_and_state_counts() {
    for t in common::stores().await {
        let s = &t.store;
        let arn = "arn:aws:mq:us-east-1:000000000000:broker:x:b-1";
        let mut tags = BTreeMap::new();
        tags.insert("a".to_owned(), "1".to_owned());
        tags.insert("b".to_owned(), "2".to_owned());
        s.tag_put(arn, &tags).await.expect("put");
        tags.insert("a".to_owned(), "one".to_owned());
        s.tag_put(arn, &tags).await.expect("overwrite");
        s.tag_delete(arn, &["b".to_owned(), "missing".to_owned()])
            .await
            .expect("delete");
        let got = s.tag_list(arn).await.expect("list");
        assert_eq!(
            got.into_iter().collect::<Vec<_>>(),
            vec![("a".to_owned(), "one".to_owned())],
            "{}",
            t.backend
        );

        for name in ["s1", "s2", "s3"] {
            s.broker_insert(new_broker(name, None), vec![])
                .await
                .expect("insert");
        }
        let b = s
            .broker_get_by_name("s1")
            .await
            .expect("get")
            .expect("exists");
        s.broker_set_state(
            &b.id,
            &[BrokerState::CreationInProgress],
            BrokerState::Running,
        )
        .await
        .expect("set");
        let counts: Vec<(BrokerState, i64)> = s
            .broker_count_by_state()
            .await
            .expect("counts")
            .into_iter()
            .map(|c| (c.state, c.count))
            .collect();
        assert_eq!(
            counts,
            vec![
                (BrokerState::CreationInProgress, 2),
                (BrokerState::Running, 1)
            ],
            "{}",
            t.backend
        );
        s.ping().await.expect("ping");
        t.finish().await;
    }
}

/// DescribeBroker's single statement reads what the separate reads do, on both backends:
/// users (pending deletion included, by name), tags, nodes by ordinal, scheduled actions by
/// kind, and the leadership of a replicated broker.
#[tokio::test]
async fn broker_describe_matches_the_separate_reads() {
    use mooring_agent_protocol::NodeId;
    use mooring_control_plane::store::{ActionKind, ActionRecord, ActionSource, NewNode};

    for t in common::stores().await {
        let s = &t.store;
        let b = s
            .broker_insert(new_broker("described", None), vec![user("zed")])
            .await
            .expect("insert");
        let mut console = user("amy");
        console.console_access = true;
        console.groups = vec!["g1".to_owned(), "g2".to_owned()];
        s.user_create(&b.id, &console, None).await.expect("user");
        s.user_create(&b.id, &user("gone"), None)
            .await
            .expect("user");
        s.user_delete(&b.id, "gone").await.expect("delete");

        // Empty aggregates first: no nodes, actions nor leadership yet.
        let d = s.broker_describe(&b.id).await.expect("describe");
        assert!(d.nodes.is_empty() && d.scheduled.is_empty() && d.leadership.is_none());

        for ordinal in [1, 0] {
            s.node_insert(
                &NewNode {
                    id: NodeId(format!("{}-{ordinal}", b.id)),
                    broker_id: b.id.clone(),
                    ordinal,
                    zone: format!("us-east-1{}", ["a", "b"][ordinal as usize]),
                    host: "127.0.0.1".to_owned(),
                    amqp_port: 20_000 + ordinal as u16,
                    admin_port: 21_000 + ordinal as u16,
                    replication_port: None,
                },
                Utc::now(),
            )
            .await
            .expect("node");
        }
        let at = Utc::now().trunc_subsecs(6);
        for kind in [ActionKind::HostInstanceType, ActionKind::EngineVersion] {
            s.maintenance_action_upsert(&ActionRecord {
                broker_id: b.id.clone(),
                kind,
                target: "x".to_owned(),
                source: ActionSource::User,
                scheduled_at: at,
                window_spec: "SUNDAY 00:00 UTC".to_owned(),
                created_at: at,
            })
            .await
            .expect("action");
        }
        let leader = NodeId(format!("{}-1", b.id));
        s.replication_ensure(&b.id, &leader, std::slice::from_ref(&leader), "sealed", at)
            .await
            .expect("leadership");

        let d = s.broker_describe(&b.id).await.expect("describe");
        assert_eq!(
            d.broker,
            s.broker_get(&b.id).await.expect("get"),
            "{}",
            t.backend
        );
        assert_eq!(
            d.users,
            s.user_list(&b.id, None, 100).await.expect("users"),
            "{}",
            t.backend
        );
        assert_eq!(
            d.users
                .iter()
                .map(|u| u.username.as_str())
                .collect::<Vec<_>>(),
            ["amy", "gone", "zed"]
        );
        assert!(d.users[0].console_access && d.users[0].groups == ["g1", "g2"]);
        assert_eq!(d.users[1].pending_change, Some(ChangeType::Delete));
        assert_eq!(d.tags, s.tag_list(&b.arn).await.expect("tags"));
        let nodes = s.node_list_for_broker(&b.id).await.expect("nodes");
        assert_eq!(d.nodes.len(), 2);
        for (described, node) in d.nodes.iter().zip(&nodes) {
            assert_eq!(described.id, node.id, "{}", t.backend);
            assert_eq!(described.zone, node.zone);
            assert_eq!(described.host, node.host);
            assert_eq!(described.amqp_endpoint(), node.amqp_endpoint());
            assert_eq!(described.console_url(), node.console_url());
            assert_eq!(described.observed, node.observed);
        }
        assert_eq!(
            d.scheduled,
            s.maintenance_action_list(&b.id).await.expect("actions"),
            "{}",
            t.backend
        );
        assert_eq!(d.scheduled[0].kind, ActionKind::EngineVersion);
        assert_eq!(d.scheduled[0].scheduled_at, at, "{}", t.backend);
        let l = d.leadership.expect("leadership");
        assert_eq!(l.leader, leader);
        assert_eq!(l.action_required, None);

        assert!(matches!(
            s.broker_describe(&BrokerId::generate()).await,
            Err(StoreError::NotFound(_))
        ));
        t.finish().await;
    }
}

/// DescribeBroker remembers what it read of other tables on Postgres (the detail version,
/// migration 0107): after a describe, every kind of change to what it shows must show in
/// the next one, whoever writes it (raw SQL here stands for any writer).
#[tokio::test]
async fn broker_describe_sees_every_change_after_a_remembered_read() {
    use mooring_agent_protocol::NodeId;
    use mooring_control_plane::store::{
        ActionKind, ActionRecord, ActionSource, NewNode, ObservedState, UserUpdate,
    };

    for t in common::stores().await {
        let s = &t.store;
        let b = s
            .broker_insert(new_broker("remembered", None), vec![user("zed")])
            .await
            .expect("insert");
        let describe = || async { s.broker_describe(&b.id).await.expect("describe") };
        let names = |d: &mooring_control_plane::store::BrokerDetail| {
            d.users
                .iter()
                .map(|u| (u.username.clone(), u.pending_change))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names(&describe().await),
            [("zed".to_owned(), Some(ChangeType::Create))]
        );
        // Twice unchanged: the second answer (remembered on Postgres) is the same.
        assert_eq!(names(&describe().await), names(&describe().await));

        // Users: created, changed, applied, deleted.
        let generation = s
            .user_create(&b.id, &user("amy"), None)
            .await
            .expect("create");
        assert_eq!(describe().await.users.len(), 2, "{}", t.backend);
        s.user_update(
            &b.id,
            "amy",
            &UserUpdate {
                console_access: Some(true),
                ..UserUpdate::default()
            },
        )
        .await
        .expect("update");
        assert!(describe().await.users[0].console_access, "{}", t.backend);
        s.user_mark_applied(&b.id, generation + 1)
            .await
            .expect("applied");
        assert!(
            describe()
                .await
                .users
                .iter()
                .all(|u| u.pending_change.is_none()),
            "{}",
            t.backend
        );
        s.user_delete(&b.id, "zed").await.expect("delete");
        assert_eq!(
            describe().await.users[1].pending_change,
            Some(ChangeType::Delete),
            "{}",
            t.backend
        );
        // A user inserted by any writer, with the generation bump that tells the agents
        // (inserts bump no detail version: migration 0110).
        mooring_control_plane::with_pool!(s, pool => sqlx::query(
            "INSERT INTO broker_users (broker_id, username, password_hash, console_access, \
             groups, replication_user, pending_change, pending_generation, created_at) \
             SELECT id, 'raw', 'x', FALSE, '[]', FALSE, 'CREATE', generation + 1, updated_at \
             FROM brokers WHERE id = $1",
        )
        .bind(b.id.as_str())
        .execute(pool)
        .await
        .expect("raw insert")
        .rows_affected());
        mooring_control_plane::with_pool!(s, pool => sqlx::query(
            "UPDATE brokers SET generation = generation + 1 WHERE id = $1",
        )
        .bind(b.id.as_str())
        .execute(pool)
        .await
        .expect("raw bump")
        .rows_affected());
        assert!(
            describe().await.users.iter().any(|u| u.username == "raw"),
            "{}",
            t.backend
        );

        // Tags, by the broker's ARN.
        let before = describe().await.tags;
        let team = BTreeMap::from([("team".to_owned(), "core".to_owned())]);
        s.tag_put(&b.arn, &team).await.expect("tag");
        let mut expected = before.clone();
        expected.extend(team);
        assert_eq!(describe().await.tags, expected, "{}", t.backend);
        s.tag_delete(&b.arn, &["team".to_owned()])
            .await
            .expect("untag");
        assert_eq!(describe().await.tags, before, "{}", t.backend);

        // Nodes: added, their observed state, and a column DescribeBroker shows changed
        // by any writer.
        let node = NodeId(format!("{}-0", b.id));
        s.node_insert(
            &NewNode {
                id: node.clone(),
                broker_id: b.id.clone(),
                ordinal: 0,
                zone: "us-east-1a".to_owned(),
                host: "127.0.0.1".to_owned(),
                amqp_port: 20_000,
                admin_port: 21_000,
                replication_port: None,
            },
            Utc::now(),
        )
        .await
        .expect("node");
        assert_eq!(describe().await.nodes.len(), 1, "{}", t.backend);
        s.node_set_observed(&node, ObservedState::Started)
            .await
            .expect("observed");
        assert_eq!(
            describe().await.nodes[0].observed,
            ObservedState::Started,
            "{}",
            t.backend
        );
        mooring_control_plane::with_pool!(s, pool => sqlx::query("UPDATE broker_nodes SET amqp_port = 20001 WHERE id = $1")
            .bind(&node.0)
            .execute(pool)
            .await
            .expect("raw update")
            .rows_affected());
        assert_eq!(describe().await.nodes[0].amqp_port, 20_001, "{}", t.backend);

        // Scheduled actions.
        let at = Utc::now().trunc_subsecs(6);
        s.maintenance_action_upsert(&ActionRecord {
            broker_id: b.id.clone(),
            kind: ActionKind::EngineVersion,
            target: "x".to_owned(),
            source: ActionSource::User,
            scheduled_at: at,
            window_spec: "SUNDAY 00:00 UTC".to_owned(),
            created_at: at,
        })
        .await
        .expect("action");
        assert_eq!(describe().await.scheduled.len(), 1, "{}", t.backend);
        s.maintenance_action_delete(&b.id, ActionKind::EngineVersion)
            .await
            .expect("action gone");
        assert!(describe().await.scheduled.is_empty(), "{}", t.backend);

        // Leadership: created, then a new leader written by any writer.
        s.replication_ensure(&b.id, &node, std::slice::from_ref(&node), "sealed", at)
            .await
            .expect("leadership");
        assert_eq!(
            describe().await.leadership.map(|l| l.leader),
            Some(node.clone()),
            "{}",
            t.backend
        );
        mooring_control_plane::with_pool!(s, pool => sqlx::query(
            "UPDATE broker_replication SET leader_node = 'other', action_required = 'X' \
             WHERE broker_id = $1",
        )
        .bind(b.id.as_str())
        .execute(pool)
        .await
        .expect("raw update")
        .rows_affected());
        let l = describe().await.leadership.expect("leadership");
        assert_eq!(
            (l.leader.0.as_str(), l.action_required.as_deref()),
            ("other", Some("X")),
            "{}",
            t.backend
        );
        t.finish().await;
    }
}

/// DescribeBroker and ListBrokers coalesce concurrent reads on Postgres (one statement for
/// many requests, identical pages read once): under a crowd of concurrent requests, each
/// still gets exactly its own answer, a missing broker its own NotFound, and a write that
/// finished before a read started shows in that read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_describes_and_list_pages_each_get_their_own_answer() {
    for t in common::stores().await {
        let s = &t.store;
        let mut ids = Vec::new();
        for i in 0..12 {
            let b = s
                .broker_insert(
                    new_broker(&format!("crowd-{i:02}"), None),
                    vec![user(&format!("u{i}"))],
                )
                .await
                .expect("insert");
            ids.push(b.id);
        }
        let mut sorted = ids.clone();
        sorted.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        let missing = BrokerId::generate();

        let mut reads = tokio::task::JoinSet::new();
        for round in 0..20 {
            for (i, id) in ids.iter().enumerate() {
                let (st, id) = (s.clone(), id.clone());
                reads.spawn(async move {
                    let d = st.broker_describe(&id).await.expect("describe");
                    assert_eq!(d.broker.id, id);
                    assert_eq!(d.broker.name, format!("crowd-{i:02}"));
                    assert_eq!(d.users.len(), 1);
                    assert_eq!(d.users[0].username, format!("u{i}"));
                });
            }
            let (st, missing) = (s.clone(), missing.clone());
            reads.spawn(async move {
                assert!(matches!(
                    st.broker_describe(&missing).await,
                    Err(StoreError::NotFound("broker"))
                ));
            });
            // Pages of several sizes, from several places; many the same.
            let (st, sorted) = (s.clone(), sorted.clone());
            reads.spawn(async move {
                let start = round % 5;
                let limit = 1 + (round % 4) as i64;
                let after = (start > 0).then(|| sorted[start - 1].as_str().to_owned());
                let page = st
                    .broker_list_summaries(after.as_deref(), limit)
                    .await
                    .expect("list");
                let want: Vec<&str> = sorted[start..]
                    .iter()
                    .take(limit as usize)
                    .map(BrokerId::as_str)
                    .collect();
                let got: Vec<&str> = page.iter().map(|b| b.id.as_str()).collect();
                assert_eq!(got, want, "page after {after:?} of {limit}");
            });
        }
        while let Some(r) = reads.join_next().await {
            r.unwrap_or_else(|e| panic!("{}: {e}", t.backend));
        }

        // A write that finished before the reads began shows in every one of them.
        s.user_create(&ids[0], &user("late"), None)
            .await
            .expect("create");
        let mut reads = tokio::task::JoinSet::new();
        for _ in 0..16 {
            let (st, id) = (s.clone(), ids[0].clone());
            reads
                .spawn(async move { st.broker_describe(&id).await.expect("describe").users.len() });
        }
        while let Some(r) = reads.join_next().await {
            assert_eq!(r.expect("read"), 2, "{}", t.backend);
        }
    }
}

/// CreateUser coalesces concurrent creations on Postgres (one statement and one commit for
/// a batch, one generation bump per broker): under a crowd of concurrent creations each
/// gets exactly its own answer. A user asked for twice at once is created once (the other
/// is told it exists); a missing broker and one being deleted are not found; every
/// created user is stored with the generation its creation answered, no later than its
/// broker's. Each request's audit record is in the trail exactly when its user was
/// created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_user_creations_each_get_their_own_answer() {
    // The record of the request `id`, as the HTTP layer would hand it over.
    fn record(id: &str) -> Option<NewAuditEvent> {
        Some(NewAuditEvent {
            occurred_at: Utc::now().trunc_subsecs(6),
            request_id: id.to_owned(),
            principal: "arn:aws:iam::000000000000:user/admin".to_owned(),
            action: Some("mq:CreateUser".to_owned()),
            resource: Some(format!("arn:aws:mq:us-east-1:000000000000:broker:x:{id}")),
            decision: AuditDecision::Allowed,
            http_status: 200,
            error_code: None,
            source_ip: id.len().is_multiple_of(2).then(|| "127.0.0.1".to_owned()),
        })
    }
    for t in common::stores().await {
        let s = &t.store;
        let mut live = Vec::new();
        for i in 0..6 {
            let b = s
                .broker_insert(new_broker(&format!("writers-{i}"), None), vec![])
                .await
                .expect("insert");
            live.push(b.id);
        }
        let deleting = s
            .broker_insert(new_broker("writers-going", None), vec![])
            .await
            .expect("insert")
            .id;
        s.broker_set_state(
            &deleting,
            &[BrokerState::CreationInProgress],
            BrokerState::DeletionInProgress,
        )
        .await
        .expect("deleting");
        let missing = BrokerId::generate();

        let mut creations = tokio::task::JoinSet::new();
        for n in 0..60 {
            let (st, id) = (s.clone(), live[n % live.len()].clone());
            let name = format!("user-{n}");
            creations.spawn(async move {
                let audit = record(&format!("req-{name}"));
                let generation = st
                    .user_create(&id, &user(&name), audit.as_ref())
                    .await
                    .expect("created");
                (id, name, generation)
            });
        }
        // The same user, eight times at once: one creation, seven "exists".
        let mut twins = tokio::task::JoinSet::new();
        for n in 0..8 {
            let (st, id) = (s.clone(), live[0].clone());
            let audit = record(&format!("req-twin-{n}"));
            twins.spawn(async move { st.user_create(&id, &user("twin"), audit.as_ref()).await });
        }
        for id in [deleting.clone(), missing.clone()] {
            let st = s.clone();
            twins.spawn(async move {
                let audit = record(&format!("req-nobody-{id}"));
                let outcome = st.user_create(&id, &user("nobody"), audit.as_ref()).await;
                assert!(
                    matches!(outcome, Err(StoreError::NotFound("broker"))),
                    "{outcome:?}"
                );
                Err(StoreError::NotFound("broker"))
            });
        }
        let mut created = Vec::new();
        while let Some(r) = creations.join_next().await {
            created.push(r.unwrap_or_else(|e| panic!("{}: {e}", t.backend)));
        }
        let (mut ok, mut exists) = (0, 0);
        while let Some(r) = twins.join_next().await {
            match r.expect("twin task") {
                Ok(_) => ok += 1,
                Err(StoreError::Constraint(Constraint::BrokerUser)) => exists += 1,
                Err(StoreError::NotFound("broker")) => {}
                Err(e) => panic!("{}: {e:?}", t.backend),
            }
        }
        assert_eq!((ok, exists), (1, 7), "{}", t.backend);

        for (id, name, generation) in &created {
            let stored = s.user_get(id, name).await.expect("stored");
            assert_eq!(
                stored.pending_generation, *generation,
                "{}: {name}",
                t.backend
            );
            assert_eq!(stored.pending_change, Some(ChangeType::Create));
            let broker = s.broker_get(id).await.expect("broker");
            assert!(broker.generation >= *generation, "{}", t.backend);
        }
        for id in &live {
            let users = s.user_list(id, None, 100).await.expect("list");
            let want = 10 + usize::from(*id == live[0]);
            assert_eq!(users.len(), want, "{}: users of {id}", t.backend);
        }
        assert!(s
            .user_list(&deleting, None, 100)
            .await
            .expect("list")
            .is_empty());

        // Sixty creations and one twin were recorded, each once and as handed over.
        let trail = s
            .audit_list(&AuditFilter::default(), 1000)
            .await
            .expect("trail");
        let mut recorded: Vec<&str> = trail.iter().map(|r| r.event.request_id.as_str()).collect();
        recorded.sort_unstable();
        let twins_recorded = recorded
            .iter()
            .filter(|id| id.starts_with("req-twin-"))
            .count();
        assert_eq!(twins_recorded, 1, "{}: {recorded:?}", t.backend);
        assert!(
            !recorded.iter().any(|id| id.starts_with("req-nobody-")),
            "{}",
            t.backend
        );
        assert_eq!(recorded.len(), 61, "{}: {recorded:?}", t.backend);
        recorded.dedup();
        assert_eq!(recorded.len(), 61, "{}: a record written twice", t.backend);
        for (_, name, _) in &created {
            let id = format!("req-{name}");
            let stored = trail
                .iter()
                .find(|r| r.event.request_id == id)
                .unwrap_or_else(|| panic!("{}: no record of {id}", t.backend));
            assert_eq!(
                Some(stored.event.clone()),
                record(&id).map(|mut e| {
                    e.occurred_at = stored.event.occurred_at;
                    e
                }),
                "{}",
                t.backend
            );
        }
    }
}
