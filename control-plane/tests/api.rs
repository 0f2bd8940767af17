//! The public API in process (axum router + `oneshot`): every operation and its error
//! paths, as Amazon MQ shapes them.

mod common;

use common::{broker_body, TestApi};
use mooring_control_plane::app::password;
use mooring_control_plane::model::BrokerState;
use mooring_control_plane::store::BrokerId;
use serde_json::{json, Value};

async fn create(api: &TestApi, name: &str) -> String {
    let body = api.post("/v1/brokers", broker_body(name)).await.ok();
    body["brokerId"].as_str().expect("brokerId").to_owned()
}

async fn set_running(api: &TestApi, id: &str) {
    let id = BrokerId::parse(id).expect("our id");
    let moved = api
        .state
        .store
        .broker_set_state(
            &id,
            &[
                BrokerState::CreationInProgress,
                BrokerState::RebootInProgress,
            ],
            BrokerState::Running,
        )
        .await
        .expect("set state");
    assert!(moved);
}

#[tokio::test]
async fn create_and_describe_broker() {
    let api = TestApi::sqlite().await;
    let mut body = broker_body("orders");
    body["tags"] = json!({"env": "prod"});
    body["someFutureMember"] = json!({"ignored": true}); // unknown members are ignored, as AWS does
    let created = api.post("/v1/brokers", body).await.ok();
    let id = created["brokerId"].as_str().expect("id");
    assert!(
        id.starts_with("b-") && BrokerId::parse(id).is_some(),
        "{id}"
    );
    assert_eq!(
        created["brokerArn"],
        format!("arn:aws:mq:us-east-1:000000000000:broker:orders:{id}")
    );

    let d = api.get(&format!("/v1/brokers/{id}")).await.ok();
    assert_eq!(d["brokerState"], "CREATION_IN_PROGRESS");
    assert_eq!(d["brokerName"], "orders");
    assert_eq!(d["engineType"], "RABBITMQ");
    assert_eq!(d["engineVersion"], "3.13", "the newest version by default");
    assert_eq!(d["deploymentMode"], "SINGLE_INSTANCE");
    assert_eq!(d["hostInstanceType"], "mq.m5.large");
    assert_eq!(d["brokerInstances"], json!([]));
    assert_eq!(
        d["users"],
        json!([{"pendingChange": "CREATE", "username": "admin"}])
    );
    assert_eq!(d["tags"], json!({"env": "prod"}));
    assert_eq!(d["maintenanceWindowStartTime"]["dayOfWeek"], "SUNDAY");
    assert!(
        d["created"].as_str().is_some_and(|c| c.ends_with('Z')),
        "{d}"
    );

    // The password is stored as RabbitMQ's salted SHA-256, never in the clear.
    let stored = api
        .state
        .store
        .user_get(&BrokerId::parse(id).expect("id"), "admin")
        .await
        .expect("user");
    assert_ne!(stored.password_hash, "correct-horse-1");
    assert!(password::verify("correct-horse-1", &stored.password_hash));
}

#[tokio::test]
async fn create_broker_validation_errors() {
    let api = TestApi::sqlite().await;
    let cases: Vec<(&str, Value, &str)> = vec![
        ("missing name", json!({"brokerName": null}), "brokerName"),
        ("bad name", json!({"brokerName": "has space"}), "brokerName"),
        (
            "long name",
            json!({"brokerName": "x".repeat(51)}),
            "brokerName",
        ),
        (
            "no deployment mode",
            json!({"deploymentMode": null}),
            "deploymentMode",
        ),
        (
            "replicated on mq.t3.micro",
            json!({"deploymentMode": "CLUSTER_MULTI_AZ", "hostInstanceType": "mq.t3.micro"}),
            "hostInstanceType",
        ),
        ("activemq", json!({"engineType": "ACTIVEMQ"}), "engineType"),
        (
            "instance",
            json!({"hostInstanceType": "mq.m4.huge"}),
            "hostInstanceType",
        ),
        ("version", json!({"engineVersion": "2.0"}), "engineVersion"),
        (
            "public flag",
            json!({"publiclyAccessible": null}),
            "publiclyAccessible",
        ),
        ("efs", json!({"storageType": "EFS"}), "storageType"),
        (
            "ldap",
            json!({"authenticationStrategy": "LDAP"}),
            "authenticationStrategy",
        ),
        ("no users", json!({"users": []}), "users"),
        (
            "two users",
            json!({"users": [{"username": "aa", "password": "correct-horse-1"}, {"username": "bb", "password": "correct-horse-1"}]}),
            "users",
        ),
        (
            "short password",
            json!({"users": [{"username": "admin", "password": "short"}]}),
            "password",
        ),
        (
            "colon password",
            json!({"users": [{"username": "admin", "password": "correct:horse-1"}]}),
            "password",
        ),
        (
            "guest",
            json!({"users": [{"username": "guest", "password": "correct-horse-1"}]}),
            "username",
        ),
        (
            "tilde user",
            json!({"users": [{"username": "a~b", "password": "correct-horse-1"}]}),
            "username",
        ),
        (
            "window",
            json!({"maintenanceWindowStartTime": {"dayOfWeek": "MONDAY", "timeOfDay": "25:00"}}),
            "maintenanceWindowStartTime",
        ),
        ("aws tag", json!({"tags": {"aws:owner": "x"}}), "tags"),
        (
            "unknown configuration",
            json!({"configuration": {"id": "c-00000000-0000-0000-0000-000000000000"}}),
            "configuration",
        ),
    ];
    for (what, patch, attribute) in cases {
        let mut body = broker_body("valid-name");
        for (k, v) in patch.as_object().expect("object") {
            body[k] = v.clone();
        }
        let reply = api.post("/v1/brokers", body).await;
        let (status, name) = if what == "unknown configuration" {
            (404, "NotFoundException")
        } else {
            (400, "BadRequestException")
        };
        let err = reply.error(name, status);
        assert_eq!(err["errorAttribute"], attribute, "{what}: {err}");
    }
    let err = api.post("/v1/brokers", json!({"brokerName": "b", "deploymentMode": "CLUSTER_MULTI_AZ", "engineType": "RABBITMQ", "hostInstanceType": "mq.m5.large", "publiclyAccessible": false, "users": []})).await.error("BadRequestException", 400);
    assert!(
        err["message"]
            .as_str()
            .is_some_and(|m| m.contains("exactly one user")),
        "{err}"
    );
    let err = api.post("/v1/brokers", json!({"brokerName": "b", "deploymentMode": "SINGLE_INSTANCE", "engineType": "ACTIVEMQ"})).await.error("BadRequestException", 400);
    assert!(
        err["message"]
            .as_str()
            .is_some_and(|m| m.contains("RABBITMQ")),
        "{err}"
    );
    // Nothing was created by any of these.
    assert_eq!(
        api.get("/v1/brokers").await.ok()["brokerSummaries"],
        json!([])
    );
}

#[tokio::test]
async fn malformed_json_and_unknown_enums_are_bad_requests() {
    let api = TestApi::sqlite().await;
    for body in [
        "{not json",
        "[]",
        "{\"brokerName\": 5}",
        "{\"engineType\": \"POSTGRES\"}",
        "{\"deploymentMode\": \"single_instance\"}",
    ] {
        let reply = api.call("POST", "/v1/brokers", Some(body)).await;
        reply.error("BadRequestException", 400);
    }
    api.call(
        "PUT",
        "/v1/configurations/c-00000000-0000-0000-0000-000000000000",
        Some("{"),
    )
    .await
    .error("BadRequestException", 400);
    api.get("/v1/brokers?maxResults=abc")
        .await
        .error("BadRequestException", 400);
}

#[tokio::test]
async fn duplicate_names_conflict_and_creator_request_id_is_idempotent() {
    let api = TestApi::sqlite().await;
    create(&api, "dup").await;
    let err = api
        .post("/v1/brokers", broker_body("dup"))
        .await
        .error("ConflictException", 409);
    assert_eq!(err["errorAttribute"], "brokerName");

    let mut body = broker_body("idem");
    body["creatorRequestId"] = json!("token-1");
    let first = api.post("/v1/brokers", body.clone()).await.ok();
    let again = api.post("/v1/brokers", body).await.ok();
    assert_eq!(
        first, again,
        "a retried create answers with the same broker"
    );
    let mut other = broker_body("idem-other");
    other["creatorRequestId"] = json!("token-1");
    api.post("/v1/brokers", other)
        .await
        .error("ConflictException", 409);
    assert_eq!(
        api.get("/v1/brokers").await.ok()["brokerSummaries"]
            .as_array()
            .map(Vec::len),
        Some(2)
    );
}

#[tokio::test]
async fn unknown_brokers_are_not_found() {
    let api = TestApi::sqlite().await;
    for id in [
        "b-00000000-0000-0000-0000-000000000000",
        "nonsense",
        "c-00000000-0000-0000-0000-000000000000",
    ] {
        let err = api
            .get(&format!("/v1/brokers/{id}"))
            .await
            .error("NotFoundException", 404);
        assert_eq!(err["errorAttribute"], "broker-id");
        api.put(&format!("/v1/brokers/{id}"), json!({}))
            .await
            .error("NotFoundException", 404);
        api.delete(&format!("/v1/brokers/{id}"))
            .await
            .error("NotFoundException", 404);
        api.post(&format!("/v1/brokers/{id}/reboot"), json!({}))
            .await
            .error("NotFoundException", 404);
        api.get(&format!("/v1/brokers/{id}/users"))
            .await
            .error("NotFoundException", 404);
    }
    api.get("/v1/no-such-thing")
        .await
        .error("NotFoundException", 404);
}

#[tokio::test]
async fn list_brokers_pages_through_everything_once() {
    let api = TestApi::sqlite().await;
    let mut ids: Vec<String> = Vec::new();
    for i in 0..25 {
        ids.push(create(&api, &format!("page-{i:02}")).await);
    }
    let default_page = api.get("/v1/brokers").await.ok();
    assert_eq!(
        default_page["brokerSummaries"].as_array().map(Vec::len),
        Some(20),
        "Amazon MQ's default page is 20"
    );

    let mut seen = Vec::new();
    let mut token: Option<String> = None;
    for _ in 0..10 {
        let uri = match &token {
            Some(t) => format!("/v1/brokers?maxResults=10&nextToken={t}"),
            None => "/v1/brokers?maxResults=10".to_owned(),
        };
        let page = api.get(&uri).await.ok();
        for b in page["brokerSummaries"].as_array().expect("list") {
            seen.push(b["brokerId"].as_str().expect("id").to_owned());
            assert_eq!(b["brokerState"], "CREATION_IN_PROGRESS");
        }
        token = page["nextToken"].as_str().map(str::to_owned);
        if token.is_none() {
            break;
        }
    }
    seen.sort();
    ids.sort();
    assert_eq!(seen, ids, "every broker exactly once");
    api.get("/v1/brokers?maxResults=0")
        .await
        .error("BadRequestException", 400);
    api.get("/v1/brokers?maxResults=101")
        .await
        .error("BadRequestException", 400);
    api.get("/v1/brokers?nextToken=%25%25")
        .await
        .error("BadRequestException", 400);
}

#[tokio::test]
async fn update_records_pending_changes_that_reboot_applies() {
    let api = TestApi::sqlite().await;
    let id = create(&api, "upd").await;
    let config = api
        .post(
            "/v1/configurations",
            json!({"name": "cfg", "engineType": "RABBITMQ"}),
        )
        .await
        .ok();
    let config_id = config["id"].as_str().expect("config id");

    let updated = api
        .put(
            &format!("/v1/brokers/{id}"),
            json!({
                "engineVersion": "3.13",
                "hostInstanceType": "mq.m5.xlarge",
                "configuration": {"id": config_id},
                "autoMinorVersionUpgrade": false,
                "maintenanceWindowStartTime": {"dayOfWeek": "MONDAY", "timeOfDay": "03:30", "timeZone": "Europe/Paris"},
                "logs": {"general": true},
                "securityGroups": ["sg-1"],
            }),
        )
        .await
        .ok();
    assert_eq!(updated["hostInstanceType"], "mq.m5.xlarge");
    assert_eq!(
        updated["configuration"],
        json!({"id": config_id, "revision": 1})
    );

    let d = api.get(&format!("/v1/brokers/{id}")).await.ok();
    assert_eq!(
        d["hostInstanceType"], "mq.m5.large",
        "instance type changes wait for a reboot"
    );
    assert_eq!(d["pendingHostInstanceType"], "mq.m5.xlarge");
    assert!(
        d.get("pendingEngineVersion").is_none(),
        "same version is no change: {d}"
    );
    assert_eq!(
        d["configurations"]["pending"],
        json!({"id": config_id, "revision": 1})
    );
    assert_eq!(d["autoMinorVersionUpgrade"], false);
    assert_eq!(
        d["maintenanceWindowStartTime"],
        json!({"dayOfWeek": "MONDAY", "timeOfDay": "03:30", "timeZone": "Europe/Paris"})
    );
    assert_eq!(d["logs"]["general"], true);
    assert_eq!(d["securityGroups"], json!(["sg-1"]));

    let err = api
        .put(
            &format!("/v1/brokers/{id}"),
            json!({"engineVersion": "3.12"}),
        )
        .await
        .error("BadRequestException", 400);
    assert_eq!(err["errorAttribute"], "engineVersion");
    api.put(
        &format!("/v1/brokers/{id}"),
        json!({"hostInstanceType": "mq.t3.micro"}),
    )
    .await
    .error("BadRequestException", 400);
    api.put(
        &format!("/v1/brokers/{id}"),
        json!({"engineVersion": "9.9"}),
    )
    .await
    .error("BadRequestException", 400);
    api.put(
        &format!("/v1/brokers/{id}"),
        json!({"authenticationStrategy": "LDAP"}),
    )
    .await
    .error("BadRequestException", 400);

    // Reboot only from RUNNING; it applies the pending changes and bumps the generation.
    let err = api
        .post(&format!("/v1/brokers/{id}/reboot"), json!({}))
        .await
        .error("BadRequestException", 400);
    assert!(
        err["message"]
            .as_str()
            .is_some_and(|m| m.contains("RUNNING")),
        "{err}"
    );
    set_running(&api, &id).await;
    let before = api
        .state
        .store
        .broker_get(&BrokerId::parse(&id).expect("id"))
        .await
        .expect("get");
    api.post(&format!("/v1/brokers/{id}/reboot"), json!({}))
        .await
        .ok();
    let d = api.get(&format!("/v1/brokers/{id}")).await.ok();
    assert_eq!(d["brokerState"], "REBOOT_IN_PROGRESS");
    assert_eq!(d["hostInstanceType"], "mq.m5.xlarge");
    assert!(d.get("pendingHostInstanceType").is_none(), "{d}");
    assert_eq!(
        d["configurations"]["current"],
        json!({"id": config_id, "revision": 1})
    );
    assert!(d["configurations"].get("pending").is_none(), "{d}");
    let after = api
        .state
        .store
        .broker_get(&BrokerId::parse(&id).expect("id"))
        .await
        .expect("get");
    assert_eq!(after.generation, before.generation + 1);
    assert_eq!(after.reboot_generation, Some(after.generation));

    // A configuration a broker runs cannot be deleted.
    api.delete(&format!("/v1/configurations/{config_id}"))
        .await
        .error("ConflictException", 409);
}

/// Concurrent UpdateBroker calls touching different fields: all of them land (the
/// losers of each optimistic race re-read and re-apply).
#[tokio::test]
async fn concurrent_updates_are_all_kept() {
    let api = TestApi::sqlite().await;
    let id = create(&api, "concurrent").await;
    let bodies = [
        json!({"hostInstanceType": "mq.m5.2xlarge"}),
        json!({"autoMinorVersionUpgrade": false}),
        json!({"logs": {"audit": true}}),
        json!({"securityGroups": ["sg-a"]}),
        json!({"maintenanceWindowStartTime": {"dayOfWeek": "FRIDAY", "timeOfDay": "12:00"}}),
    ];
    let uri = format!("/v1/brokers/{id}");
    let calls = bodies.iter().map(|b| api.put(&uri, b.clone()));
    for reply in futures::future::join_all(calls).await {
        reply.ok();
    }
    let d = api.get(&format!("/v1/brokers/{id}")).await.ok();
    assert_eq!(d["pendingHostInstanceType"], "mq.m5.2xlarge");
    assert_eq!(d["autoMinorVersionUpgrade"], false);
    assert_eq!(d["logs"]["audit"], true);
    assert_eq!(d["securityGroups"], json!(["sg-a"]));
    assert_eq!(d["maintenanceWindowStartTime"]["dayOfWeek"], "FRIDAY");
}

#[tokio::test]
async fn delete_is_idempotent_and_freezes_the_broker() {
    let api = TestApi::sqlite().await;
    let id = create(&api, "doomed").await;
    let before = api
        .state
        .store
        .broker_get(&BrokerId::parse(&id).expect("id"))
        .await
        .expect("get");
    let wake = api.state.reconcile_wakeups();
    let d = api.delete(&format!("/v1/brokers/{id}")).await.ok();
    assert_eq!(d["brokerId"], id);
    assert!(
        wake.has_changed().expect("sender alive"),
        "deleting wakes the reconcilers"
    );
    api.delete(&format!("/v1/brokers/{id}")).await.ok();
    let after = api
        .state
        .store
        .broker_get(&BrokerId::parse(&id).expect("id"))
        .await
        .expect("get");
    assert_eq!(after.state, BrokerState::DeletionInProgress);
    assert_eq!(
        after.generation,
        before.generation + 1,
        "a repeated delete bumps nothing"
    );
    api.put(
        &format!("/v1/brokers/{id}"),
        json!({"autoMinorVersionUpgrade": false}),
    )
    .await
    .error("ConflictException", 409);
    api.post(
        &format!("/v1/brokers/{id}/users/late-user"),
        json!({"password": "correct-horse-1"}),
    )
    .await
    .error("BadRequestException", 400);
    api.post(&format!("/v1/brokers/{id}/reboot"), json!({}))
        .await
        .error("BadRequestException", 400);
}

#[tokio::test]
async fn users_lifecycle_and_errors() {
    let api = TestApi::sqlite().await;
    let id = create(&api, "with-users").await;
    let base = format!("/v1/brokers/{id}/users");
    let wake = api.state.reconcile_wakeups();
    api.post(
        &format!("{base}/app-1"),
        json!({"password": "app-password-1", "consoleAccess": true}),
    )
    .await
    .ok();
    assert!(
        wake.has_changed().expect("sender alive"),
        "a user change wakes the reconcilers"
    );

    let u = api.get(&format!("{base}/app-1")).await.ok();
    assert_eq!(u["username"], "app-1");
    assert_eq!(u["consoleAccess"], true);
    assert_eq!(u["pending"]["pendingChange"], "CREATE");
    assert_eq!(u["brokerId"], id.as_str());

    api.post(
        &format!("{base}/app-1"),
        json!({"password": "app-password-1"}),
    )
    .await
    .error("ConflictException", 409);
    api.post(&format!("{base}/app-2"), json!({"password": "short"}))
        .await
        .error("BadRequestException", 400);
    api.post(&format!("{base}/app-2"), json!({}))
        .await
        .error("BadRequestException", 400);
    api.post(
        &format!("{base}/guest"),
        json!({"password": "app-password-1"}),
    )
    .await
    .error("BadRequestException", 400);
    api.post(&format!("{base}/x"), json!({"password": "app-password-1"}))
        .await
        .error("BadRequestException", 400);
    api.post(
        &format!("{base}/app-2"),
        json!({"password": "app-password-1", "groups": ["g"]}),
    )
    .await
    .error("BadRequestException", 400);

    // The agent applies generation N: changes up to N are no longer pending.
    let broker_id = BrokerId::parse(&id).expect("id");
    let generation = api
        .state
        .store
        .broker_get(&broker_id)
        .await
        .expect("get")
        .generation;
    api.state
        .store
        .user_mark_applied(&broker_id, generation)
        .await
        .expect("applied");
    let u = api.get(&format!("{base}/app-1")).await.ok();
    assert!(u.get("pending").is_none(), "{u}");

    let old_hash = api
        .state
        .store
        .user_get(&broker_id, "app-1")
        .await
        .expect("user")
        .password_hash;
    api.put(
        &format!("{base}/app-1"),
        json!({"password": "new-password-22"}),
    )
    .await
    .ok();
    let stored = api
        .state
        .store
        .user_get(&broker_id, "app-1")
        .await
        .expect("user");
    assert_ne!(stored.password_hash, old_hash);
    assert!(password::verify("new-password-22", &stored.password_hash));
    assert_eq!(
        api.get(&format!("{base}/app-1")).await.ok()["pending"]["pendingChange"],
        "UPDATE"
    );
    api.put(
        &format!("{base}/app-1"),
        json!({"password": "a,b,c,d,e,f,g"}),
    )
    .await
    .error("BadRequestException", 400);
    api.put(&format!("{base}/nobody"), json!({"consoleAccess": true}))
        .await
        .error("NotFoundException", 404);

    let list = api.get(&base).await.ok();
    assert_eq!(list["brokerId"], id.as_str());
    let names: Vec<&str> = list["users"]
        .as_array()
        .expect("users")
        .iter()
        .map(|u| u["username"].as_str().expect("name"))
        .collect();
    assert_eq!(names, vec!["admin", "app-1"]);
    let page = api.get(&format!("{base}?maxResults=1")).await.ok();
    assert_eq!(page["users"].as_array().map(Vec::len), Some(1));
    let next = page["nextToken"].as_str().expect("a second page");
    let page2 = api
        .get(&format!("{base}?maxResults=1&nextToken={next}"))
        .await
        .ok();
    assert_eq!(page2["users"][0]["username"], "app-1");

    api.delete(&format!("{base}/app-1")).await.ok();
    let d = api.get(&format!("/v1/brokers/{id}")).await.ok();
    assert!(
        d["users"]
            .as_array()
            .expect("users")
            .contains(&json!({"username": "app-1", "pendingChange": "DELETE"})),
        "{d}"
    );
    api.delete(&format!("{base}/app-1"))
        .await
        .error("NotFoundException", 404);
    let err = api
        .get(&format!("{base}/nobody"))
        .await
        .error("NotFoundException", 404);
    assert_eq!(err["errorAttribute"], "username");
}

#[tokio::test]
async fn configurations_lifecycle_and_errors() {
    use base64::Engine as _;
    let api = TestApi::sqlite().await;
    let created = api
        .post(
            "/v1/configurations",
            json!({"name": "cfg-1", "engineType": "RABBITMQ", "tags": {"t": "1"}}),
        )
        .await
        .ok();
    let id = created["id"].as_str().expect("id").to_owned();
    assert!(id.starts_with("c-"));
    assert_eq!(
        created["arn"],
        format!("arn:aws:mq:us-east-1:000000000000:configuration:{id}")
    );
    assert_eq!(created["latestRevision"]["revision"], 1);

    let data = base64::engine::general_purpose::STANDARD
        .encode("consumer_timeout = 60000\nheartbeat = 30\n");
    let updated = api
        .put(
            &format!("/v1/configurations/{id}"),
            json!({"data": data, "description": "faster"}),
        )
        .await
        .ok();
    assert_eq!(updated["latestRevision"]["revision"], 2);
    assert_eq!(updated["warnings"], json!([]));

    let d = api.get(&format!("/v1/configurations/{id}")).await.ok();
    assert_eq!(d["latestRevision"]["revision"], 2);
    assert_eq!(d["description"], "faster");
    assert_eq!(d["tags"], json!({"t": "1"}));
    assert_eq!(d["engineVersion"], "3.13");

    let rev = api
        .get(&format!("/v1/configurations/{id}/revisions/2"))
        .await
        .ok();
    assert_eq!(rev["data"], data.as_str());
    assert_eq!(rev["configurationId"], id.as_str());
    let rev1 = api
        .get(&format!("/v1/configurations/{id}/revisions/1"))
        .await
        .ok();
    let default = base64::engine::general_purpose::STANDARD
        .decode(rev1["data"].as_str().expect("data"))
        .expect("base64");
    assert!(String::from_utf8(default)
        .expect("utf-8")
        .contains("consumer_timeout"));
    api.get(&format!("/v1/configurations/{id}/revisions/3"))
        .await
        .error("NotFoundException", 404);
    api.get(&format!("/v1/configurations/{id}/revisions/x"))
        .await
        .error("NotFoundException", 404);

    let revs = api
        .get(&format!("/v1/configurations/{id}/revisions?maxResults=1"))
        .await
        .ok();
    assert_eq!(revs["revisions"][0]["revision"], 1);
    let next = revs["nextToken"].as_str().expect("more revisions");
    let revs2 = api
        .get(&format!(
            "/v1/configurations/{id}/revisions?maxResults=1&nextToken={next}"
        ))
        .await
        .ok();
    assert_eq!(revs2["revisions"][0]["revision"], 2);
    assert!(revs2.get("nextToken").is_none(), "{revs2}");

    api.post(
        "/v1/configurations",
        json!({"name": "cfg-2", "engineType": "RABBITMQ"}),
    )
    .await
    .ok();
    let list = api.get("/v1/configurations").await.ok();
    assert_eq!(list["configurations"].as_array().map(Vec::len), Some(2));

    let bad = |data: &str| json!({"data": data});
    api.put(&format!("/v1/configurations/{id}"), bad("%%%"))
        .await
        .error("BadRequestException", 400);
    let unknown_key =
        base64::engine::general_purpose::STANDARD.encode("loopback_users.guest = false");
    api.put(&format!("/v1/configurations/{id}"), bad(&unknown_key))
        .await
        .error("BadRequestException", 400);
    api.put(&format!("/v1/configurations/{id}"), json!({}))
        .await
        .error("BadRequestException", 400);
    api.post(
        "/v1/configurations",
        json!({"name": "x", "engineType": "ACTIVEMQ"}),
    )
    .await
    .error("BadRequestException", 400);
    api.post(
        "/v1/configurations",
        json!({"name": "bad name!", "engineType": "RABBITMQ"}),
    )
    .await
    .error("BadRequestException", 400);
    api.post("/v1/configurations", json!({"engineType": "RABBITMQ"}))
        .await
        .error("BadRequestException", 400);
    api.get("/v1/configurations/c-00000000-0000-0000-0000-000000000000")
        .await
        .error("NotFoundException", 404);

    let deleted = api.delete(&format!("/v1/configurations/{id}")).await.ok();
    assert_eq!(deleted["configurationId"], id.as_str());
    api.get(&format!("/v1/configurations/{id}"))
        .await
        .error("NotFoundException", 404);
    api.delete(&format!("/v1/configurations/{id}"))
        .await
        .error("NotFoundException", 404);
}

#[tokio::test]
async fn tags_on_brokers_and_configurations() {
    let api = TestApi::sqlite().await;
    let id = create(&api, "tagged").await;
    let arn = api.get(&format!("/v1/brokers/{id}")).await.ok()["brokerArn"]
        .as_str()
        .expect("arn")
        .to_owned();
    let path = format!("/v1/tags/{}", arn.replace(':', "%3A"));

    let reply = api.post(&path, json!({"tags": {"a": "1", "b": "2"}})).await;
    assert_eq!(reply.status.as_u16(), 204);
    assert_eq!(
        api.get(&path).await.ok()["tags"],
        json!({"a": "1", "b": "2"})
    );
    assert_eq!(
        api.delete(&format!("{path}?tagKeys=a&tagKeys=missing"))
            .await
            .status
            .as_u16(),
        204
    );
    assert_eq!(api.get(&path).await.ok()["tags"], json!({"b": "2"}));
    assert_eq!(
        api.get(&format!("/v1/brokers/{id}")).await.ok()["tags"],
        json!({"b": "2"})
    );

    api.delete(&path).await.error("BadRequestException", 400);
    api.post(&path, json!({}))
        .await
        .error("BadRequestException", 400);
    api.post(&path, json!({"tags": {"aws:x": "1"}}))
        .await
        .error("BadRequestException", 400);
    let ghost =
        "arn:aws:mq:us-east-1:000000000000:broker:ghost:b-00000000-0000-0000-0000-000000000000";
    api.get(&format!("/v1/tags/{ghost}"))
        .await
        .error("NotFoundException", 404);
    api.get("/v1/tags/arn:aws:sqs:us-east-1:000000000000:queue")
        .await
        .error("NotFoundException", 404);
    // The broker's id with another name is not this broker's ARN.
    api.get(&format!("/v1/tags/{}", arn.replace(":tagged:", ":other:")))
        .await
        .error("NotFoundException", 404);

    let config = api
        .post(
            "/v1/configurations",
            json!({"name": "c", "engineType": "RABBITMQ"}),
        )
        .await
        .ok();
    let config_arn = config["arn"].as_str().expect("arn");
    api.post(
        &format!("/v1/tags/{config_arn}"),
        json!({"tags": {"k": "v"}}),
    )
    .await;
    assert_eq!(
        api.get(&format!("/v1/tags/{config_arn}")).await.ok()["tags"],
        json!({"k": "v"})
    );
}

#[tokio::test]
async fn catalog_operations() {
    let api = TestApi::sqlite().await;
    let e = api.get("/v1/broker-engine-types").await.ok();
    assert_eq!(
        e["brokerEngineTypes"],
        json!([{"engineType": "RABBITMQ", "engineVersions": [{"name": "3.13"}, {"name": "3.12"}]}])
    );
    assert_eq!(
        api.get("/v1/broker-engine-types?engineType=ACTIVEMQ")
            .await
            .ok()["brokerEngineTypes"],
        json!([])
    );
    api.get("/v1/broker-engine-types?engineType=KAFKA")
        .await
        .error("BadRequestException", 400);

    let all = api.get("/v1/broker-instance-options").await.ok();
    let types: Vec<&str> = all["brokerInstanceOptions"]
        .as_array()
        .expect("list")
        .iter()
        .map(|o| o["hostInstanceType"].as_str().expect("t"))
        .collect();
    assert_eq!(
        types,
        vec![
            "mq.t3.micro",
            "mq.m5.large",
            "mq.m5.xlarge",
            "mq.m5.2xlarge",
            "mq.m5.4xlarge"
        ]
    );
    assert_eq!(
        all["brokerInstanceOptions"][0]["supportedDeploymentModes"],
        json!(["SINGLE_INSTANCE"])
    );
    assert_eq!(
        all["brokerInstanceOptions"][0]["supportedEngineVersions"],
        json!(["3.13", "3.12"])
    );
    let one = api
        .get("/v1/broker-instance-options?hostInstanceType=mq.m5.large")
        .await
        .ok();
    assert_eq!(
        one["brokerInstanceOptions"].as_array().map(Vec::len),
        Some(1)
    );
    let efs = api
        .get("/v1/broker-instance-options?storageType=EFS")
        .await
        .ok();
    assert_eq!(efs["brokerInstanceOptions"], json!([]));
    let page = api
        .get("/v1/broker-instance-options?maxResults=2")
        .await
        .ok();
    assert_eq!(
        page["brokerInstanceOptions"].as_array().map(Vec::len),
        Some(2)
    );
    let next = page["nextToken"].as_str().expect("more");
    let page2 = api
        .get(&format!(
            "/v1/broker-instance-options?maxResults=2&nextToken={next}"
        ))
        .await
        .ok();
    assert_eq!(
        page2["brokerInstanceOptions"][0]["hostInstanceType"],
        "mq.m5.xlarge"
    );
}

#[tokio::test]
async fn health_and_metrics() {
    let api = TestApi::sqlite().await;
    create(&api, "metered").await;
    api.get("/v1/brokers/b-00000000-0000-0000-0000-000000000000")
        .await;
    let health = api.get("/healthz").await;
    assert!(
        health
            .request_id
            .as_deref()
            .is_some_and(|id| id.len() == 36),
        "{health:?}"
    );
    assert_eq!(health.status.as_u16(), 200);
    let metrics = api.get("/metrics").await;
    let text = metrics.json.as_str().expect("text").to_owned();
    assert!(text.contains(r#"mooring_api_request_duration_seconds_count{method="POST",route="/v1/brokers",status="200"} 1"#), "{text}");
    assert!(
        text.contains(r#"route="/v1/brokers/{broker-id}",status="404""#),
        "{text}"
    );
    assert!(
        text.contains(r#"mooring_brokers{state="CREATION_IN_PROGRESS"} 1"#),
        "{text}"
    );
}

#[tokio::test]
async fn api_works_on_postgres_too() {
    let Some(store) = common::postgres_store().await else {
        return;
    };
    let api = TestApi::new(store).await;
    let id = create(&api, "pg-broker").await;
    api.post("/v1/brokers", broker_body("pg-broker"))
        .await
        .error("ConflictException", 409);
    api.post(
        &format!("/v1/brokers/{id}/users/pg-user"),
        json!({"password": "pg-password-1"}),
    )
    .await
    .ok();
    let d = api.get(&format!("/v1/brokers/{id}")).await.ok();
    assert_eq!(d["users"].as_array().map(Vec::len), Some(2));
    api.delete(&format!("/v1/brokers/{id}")).await.ok();
    assert_eq!(
        api.get(&format!("/v1/brokers/{id}")).await.ok()["brokerState"],
        "DELETION_IN_PROGRESS"
    );
    api.store.finish().await;
}

#[tokio::test]
async fn describe_broker_shows_started_nodes() {
    use mooring_agent_protocol::NodeId;
    use mooring_control_plane::store::NewNode;
    let api = TestApi::sqlite().await;
    let id = create(&api, "with-nodes").await;
    let broker_id = BrokerId::parse(&id).expect("id");
    let node = NewNode {
        id: NodeId(format!("{id}-1")),
        broker_id: broker_id.clone(),
        ordinal: 1,
        zone: "us-east-1a".to_owned(),
        host: "127.0.0.1".to_owned(),
        amqp_port: 45672,
        admin_port: 45673,
        replication_port: None,
    };
    api.state
        .store
        .node_insert(&node, chrono::Utc::now())
        .await
        .expect("insert node");
    let d = api.get(&format!("/v1/brokers/{id}")).await.ok();
    assert_eq!(
        d["brokerInstances"],
        json!([]),
        "a node not yet started is not shown"
    );
    api.state
        .store
        .node_mark_started(&node.id, Some(1), 0, chrono::Utc::now())
        .await
        .expect("started");
    let d = api.get(&format!("/v1/brokers/{id}")).await.ok();
    assert_eq!(
        d["brokerInstances"],
        json!([{"consoleURL": "http://127.0.0.1:45673", "endpoints": ["amqp://127.0.0.1:45672"], "ipAddress": "127.0.0.1",
                "nodeId": format!("{id}-1"), "availabilityZone": "us-east-1a"}])
    );
}
