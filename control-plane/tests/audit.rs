//! The audit trail: the store's table on both backends (insert, filters, paging,
//! retention), and the API in process (every request recorded with its decision;
//! a mutating request answered only once recorded; a store that cannot take audit
//! records stops mutating requests).

mod common;

use std::time::Duration;

use chrono::{TimeZone, Utc};
use common::{create_iam_user, stores, wait_for, TestApi};
use mooring_control_plane::app::audit::{self, AuditQuery};
use mooring_control_plane::store::{AuditDecision, AuditFilter, NewAuditEvent, Store};
use serde_json::{json, Value};

fn event(n: u32, principal: &str, action: &str, decision: AuditDecision) -> NewAuditEvent {
    NewAuditEvent {
        occurred_at: Utc
            .with_ymd_and_hms(2026, 11, 1, 0, 0, 0)
            .single()
            .expect("a valid date")
            + chrono::Duration::minutes(i64::from(n)),
        request_id: format!("req-{n}"),
        principal: principal.to_owned(),
        action: Some(action.to_owned()),
        resource: Some(format!("arn:aws:mq:us-east-1:000000000000:broker:b:b-{n}")),
        decision,
        http_status: if decision == AuditDecision::Allowed {
            200
        } else {
            403
        },
        error_code: (decision != AuditDecision::Allowed).then(|| "ForbiddenException".to_owned()),
        source_ip: Some("127.0.0.1".to_owned()),
    }
}

#[tokio::test]
async fn store_appends_filters_pages_and_expires_events() {
    for t in stores().await {
        let store = &t.store;
        let alice = "arn:aws:iam::000000000000:user/alice";
        let bob = "arn:aws:iam::000000000000:user/bob";
        // 1,200 rows in one call: more than one INSERT statement's worth on SQLite, one
        // statement of arrays on Postgres.
        let mut events: Vec<NewAuditEvent> = (0..1200)
            .map(|n| {
                let (who, decision) = if n % 3 == 0 {
                    (bob, AuditDecision::Denied)
                } else {
                    (alice, AuditDecision::Allowed)
                };
                event(n, who, "mq:DescribeBroker", decision)
            })
            .collect();
        events[7].action = Some("mq:DeleteBroker".to_owned());
        events[7].source_ip = None;
        events[7].error_code = None;
        store.audit_insert(&events).await.expect("insert");

        // Newest first, and every column reads back as written.
        let all = store
            .audit_list(&AuditFilter::default(), 5)
            .await
            .expect("list");
        assert_eq!(all.len(), 5, "{}", t.backend);
        assert_eq!(all[0].event, events[1199], "{}", t.backend);
        assert!(all.windows(2).all(|w| w[0].seq > w[1].seq));

        let deletes = store
            .audit_list(
                &AuditFilter {
                    action: Some("mq:DeleteBroker".to_owned()),
                    ..AuditFilter::default()
                },
                10,
            )
            .await
            .expect("by action");
        assert_eq!(deletes.len(), 1, "{}", t.backend);
        assert_eq!(deletes[0].event, events[7], "{}", t.backend);

        let bobs = store
            .audit_list(
                &AuditFilter {
                    principal: Some(bob.to_owned()),
                    decision: Some(AuditDecision::Denied),
                    ..AuditFilter::default()
                },
                1000,
            )
            .await
            .expect("by principal");
        assert_eq!(bobs.len(), 400, "{}", t.backend);
        assert!(bobs.iter().all(|r| r.event.principal == bob));

        let by_resource = store
            .audit_list(
                &AuditFilter {
                    resource: events[42].resource.clone(),
                    ..AuditFilter::default()
                },
                10,
            )
            .await
            .expect("by resource");
        assert_eq!(by_resource.len(), 1);
        assert_eq!(by_resource[0].event.request_id, "req-42");

        // [start, end): minutes 10..20.
        let window = store
            .audit_list(
                &AuditFilter {
                    start_time: Some(events[10].occurred_at),
                    end_time: Some(events[20].occurred_at),
                    ..AuditFilter::default()
                },
                100,
            )
            .await
            .expect("by time");
        let ids: Vec<&str> = window.iter().map(|r| r.event.request_id.as_str()).collect();
        let expected: Vec<String> = (10..20).rev().map(|n| format!("req-{n}")).collect();
        assert_eq!(ids, expected, "{}", t.backend);

        // Paging by seq visits every row once.
        let mut seen = 0;
        let mut before = None;
        loop {
            let page = store
                .audit_list(
                    &AuditFilter {
                        before_seq: before,
                        ..AuditFilter::default()
                    },
                    500,
                )
                .await
                .expect("page");
            if page.is_empty() {
                break;
            }
            seen += page.len();
            before = page.last().map(|r| r.seq);
        }
        assert_eq!(seen, 1200, "{}", t.backend);

        // Retention: everything before minute 1000 goes, in batches; the rest stays.
        let now = events[1000].occurred_at + chrono::Duration::days(90);
        let deleted = audit::purge_expired(store, chrono::Duration::days(90), now)
            .await
            .expect("purge");
        assert_eq!(deleted, 1000, "{}", t.backend);
        let left = store
            .audit_list(&AuditFilter::default(), 1000)
            .await
            .expect("left");
        assert_eq!(left.len(), 200, "{}", t.backend);
        assert_eq!(
            left.last().map(|r| r.event.request_id.as_str()),
            Some("req-1000")
        );
        let again = audit::purge_expired(store, chrono::Duration::days(90), now)
            .await
            .expect("purge again");
        assert_eq!(again, 0, "idempotent");
        t.finish().await;
    }
}

#[tokio::test]
async fn list_events_validates_its_parameters() {
    let t = common::sqlite_store().await;
    let bad = [
        AuditQuery {
            max_results: Some("0".to_owned()),
            ..AuditQuery::default()
        },
        AuditQuery {
            start_time: Some("yesterday".to_owned()),
            ..AuditQuery::default()
        },
        AuditQuery {
            start_time: Some("2026-11-02T00:00:00Z".to_owned()),
            end_time: Some("2026-11-01T00:00:00Z".to_owned()),
            ..AuditQuery::default()
        },
        AuditQuery {
            decision: Some("perhaps".to_owned()),
            ..AuditQuery::default()
        },
        AuditQuery {
            next_token: Some("bm90LWEtbnVtYmVy".to_owned()), // "not-a-number"
            ..AuditQuery::default()
        },
    ];
    for q in bad {
        let err = audit::list_events(&t.store, &q).await.expect_err("refused");
        assert_eq!(err.name(), "BadRequestException", "{q:?}");
    }
    t.finish().await;
}

/// Issue 4, point 4: Describe/List everywhere, DeleteBroker except on env=prod.
const OPERATOR_POLICY: &str = r#"{
  "Version": "2012-10-17",
  "Statement": [
    {"Effect": "Allow", "Action": ["mq:Describe*", "mq:List*", "mq:DeleteBroker"], "Resource": "*"},
    {"Effect": "Deny", "Action": "mq:DeleteBroker", "Resource": "*",
     "Condition": {"StringEquals": {"aws:ResourceTag/env": "prod"}}}
  ]
}"#;

async fn create_broker(api: &TestApi, name: &str, env: &str) -> (String, String) {
    let mut body = common::broker_body(name);
    body["tags"] = json!({ "env": env });
    let created = api.post("/v1/brokers", body).await.ok();
    (
        created["brokerId"].as_str().expect("brokerId").to_owned(),
        created["brokerArn"].as_str().expect("brokerArn").to_owned(),
    )
}

fn events(page: &Value) -> Vec<Value> {
    page["auditEvents"].as_array().expect("auditEvents").clone()
}

#[tokio::test]
async fn every_request_is_recorded_with_its_decision() {
    for store in stores().await {
        let mut api = TestApi::new(store).await;
        let admin = api.key.clone();
        let (prod, prod_arn) = create_broker(&api, "prod-1", "prod").await;
        let (dev, dev_arn) = create_broker(&api, "dev-1", "dev").await;
        let operator = create_iam_user(&api.state, "operator", OPERATOR_POLICY).await;
        let operator_arn = "arn:aws:iam::000000000000:user/operator";

        api.key = Some(operator.clone());
        let denied = api.delete(&format!("/v1/brokers/{prod}")).await;
        let denied_id = denied.request_id.clone().expect("a request id");
        denied.error("ForbiddenException", 403);
        let allowed = api.delete(&format!("/v1/brokers/{dev}")).await;
        let allowed_id = allowed.request_id.clone().expect("a request id");
        allowed.ok();

        // Mutating requests were answered only once recorded: no waiting here.
        api.key = admin.clone();
        let page = api
            .get(&format!(
                "/v1/audit-events?principal={operator_arn}&action=mq:DeleteBroker"
            ))
            .await
            .ok();
        let found = events(&page);
        assert_eq!(found.len(), 2, "{}: {page}", api.store.backend);
        let (newest, oldest) = (&found[0], &found[1]);
        assert_eq!(newest["requestId"], allowed_id.as_str());
        assert_eq!(newest["decision"], "allowed");
        assert_eq!(newest["resource"], dev_arn.as_str());
        assert_eq!(newest["httpStatus"], 200);
        assert!(newest.get("errorCode").is_none(), "{newest}");
        assert_eq!(oldest["requestId"], denied_id.as_str());
        assert_eq!(oldest["decision"], "denied");
        assert_eq!(oldest["resource"], prod_arn.as_str());
        assert_eq!(oldest["httpStatus"], 403);
        assert_eq!(oldest["errorCode"], "ForbiddenException");
        assert!(oldest["eventTime"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')));

        // An unsigned request and an unknown key: unauthenticated, named by the key
        // id they claimed (or anonymous). Reads are flushed within ~100 ms.
        api.key = None;
        api.get("/v1/brokers")
            .await
            .error("MissingAuthenticationTokenException", 403);
        api.key = Some(common::TestKey {
            access_key_id: "AKIANOSUCHKEY0000000".to_owned(),
            secret_access_key: "x".to_owned(),
        });
        api.get("/v1/brokers")
            .await
            .error("UnrecognizedClientException", 403);
        api.key = admin.clone();
        let api_ref = &api;
        let refused = wait_for(
            "the refused reads' records",
            Duration::from_secs(5),
            || async move {
                let page = api_ref
                    .get("/v1/audit-events?decision=unauthenticated")
                    .await
                    .ok();
                let found = events(&page);
                (found.len() == 2).then_some(found)
            },
        )
        .await;
        assert_eq!(refused[0]["principal"], "AKIANOSUCHKEY0000000");
        assert_eq!(refused[0]["errorCode"], "UnrecognizedClientException");
        assert_eq!(refused[0]["action"], "mq:ListBrokers");
        assert_eq!(refused[1]["principal"], "anonymous");
        assert!(refused[1].get("resource").is_none());

        // Paging: one at a time, newest first, no repeats.
        let mut ids = Vec::new();
        let mut token: Option<String> = None;
        for _ in 0..10 {
            let uri = match &token {
                None => format!("/v1/audit-events?principal={operator_arn}&maxResults=1"),
                Some(t) => {
                    format!("/v1/audit-events?principal={operator_arn}&maxResults=1&nextToken={t}")
                }
            };
            let page = api.get(&uri).await.ok();
            ids.extend(
                events(&page)
                    .iter()
                    .map(|e| e["requestId"].as_str().expect("id").to_owned()),
            );
            token = page["nextToken"].as_str().map(str::to_owned);
            if token.is_none() {
                break;
            }
        }
        assert_eq!(ids, vec![allowed_id.clone(), denied_id.clone()]);

        // Reading the trail is itself an action: a user without it is refused.
        api.key = Some(
            create_iam_user(
                &api.state,
                "nobody",
                r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"mq:ListBrokers","Resource":"*"}]}"#,
            )
            .await,
        );
        api.get("/v1/audit-events")
            .await
            .error("ForbiddenException", 403);
        api.key = admin;
        api.get("/v1/audit-events?startTime=tomorrow")
            .await
            .error("BadRequestException", 400);
        api.store.finish().await;
    }
}

#[tokio::test]
async fn the_query_api_is_recorded_with_iam_action_names() {
    let mut api = TestApi::sqlite().await;
    let admin = api.key.clone().expect("admin key");
    let user = create_iam_user(
        &api.state,
        "reader",
        r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"mq:*","Resource":"*"}]}"#,
    )
    .await;
    let form = |key: &common::TestKey, body: &str| {
        let signed = mooring_control_plane::auth::sigv4::sign_request(
            "POST",
            "/",
            "",
            &[
                ("host", "localhost"),
                ("content-type", "application/x-www-form-urlencoded"),
            ],
            body.as_bytes(),
            &mooring_control_plane::auth::sigv4::SigningParams {
                access_key_id: &key.access_key_id,
                secret_access_key: &key.secret_access_key,
                session_token: None,
                region: "us-east-1",
                service: "iam",
                time: Utc::now(),
            },
        );
        let mut builder = axum::http::Request::builder()
            .method("POST")
            .uri("/")
            .header("host", "localhost")
            .header("content-type", "application/x-www-form-urlencoded");
        for (name, value) in signed {
            builder = builder.header(name, value);
        }
        builder
            .body(axum::body::Body::from(body.to_owned()))
            .expect("request")
    };
    use tower::ServiceExt as _;
    let refused = api
        .router
        .clone()
        .oneshot(form(
            &user,
            "Action=CreateUser&UserName=mallory&Version=2010-05-08",
        ))
        .await
        .expect("answers");
    assert_eq!(refused.status(), 403);
    let created = api
        .router
        .clone()
        .oneshot(form(
            &admin,
            "Action=CreateUser&UserName=alice&Version=2010-05-08",
        ))
        .await
        .expect("answers");
    assert_eq!(created.status(), 200);

    api.key = Some(admin);
    let page = api.get("/v1/audit-events?action=iam:CreateUser").await.ok();
    let found = events(&page);
    assert_eq!(found.len(), 2, "{page}");
    assert_eq!(found[0]["decision"], "allowed");
    assert_eq!(found[0]["resource"], "arn:aws:iam::000000000000:user/alice");
    assert_eq!(found[1]["decision"], "denied");
    assert_eq!(found[1]["errorCode"], "AccessDenied");
    assert_eq!(
        found[1]["principal"],
        "arn:aws:iam::000000000000:user/reader"
    );
    api.store.finish().await;
}

const AUDIT_TABLE_SQLITE: &str = include_str!("../../migrations/sqlite/0101_audit.sql");

#[tokio::test]
async fn mutating_requests_fail_rather_than_run_unaudited() {
    let api = TestApi::sqlite().await;
    let Store::Sqlite(pool) = &api.state.store else {
        unreachable!("a SQLite store")
    };
    // The audit table breaks; the rest of the store works.
    sqlx::query("DROP TABLE audit_events")
        .execute(pool)
        .await
        .expect("drop");

    // The change itself ran, but its record could not be written: 500, not 200.
    api.post("/v1/brokers", common::broker_body("first"))
        .await
        .error("InternalServerErrorException", 500);
    // From now on, mutating requests are refused before they run.
    api.post("/v1/brokers", common::broker_body("second"))
        .await
        .error("InternalServerErrorException", 500);
    let listed = api.get("/v1/brokers").await.ok();
    let names: Vec<&str> = listed["brokerSummaries"]
        .as_array()
        .expect("summaries")
        .iter()
        .filter_map(|b| b["brokerName"].as_str())
        .collect();
    assert_eq!(names, vec!["first"], "the refused request changed nothing");
    assert!(!api.state.audit.healthy());

    // The table comes back: after the writer's retry, changes are accepted and the
    // records kept in memory meanwhile are written, the failed one as a 500.
    sqlx::raw_sql(AUDIT_TABLE_SQLITE)
        .execute(pool)
        .await
        .expect("recreate");
    let state = &api.state;
    wait_for(
        "the audit trail to recover",
        Duration::from_secs(10),
        || async move { state.audit.healthy().then_some(()) },
    )
    .await;
    api.post("/v1/brokers", common::broker_body("third"))
        .await
        .ok();
    let page = api
        .get("/v1/audit-events?action=mq:CreateBroker")
        .await
        .ok();
    let statuses: Vec<i64> = events(&page)
        .iter()
        .map(|e| e["httpStatus"].as_i64().expect("status"))
        .collect();
    // Newest first: "third", then "second" (refused), then "first" (ran, answered 500).
    assert_eq!(statuses, vec![200, 500, 500], "{page}");
    api.store.finish().await;
}

/// CreateUser's success record commits with the user (one commit, not two): it is in the
/// trail once, under the request id the client was answered with, and a refused creation
/// is recorded with its error as any request is.
#[tokio::test]
async fn a_created_user_is_recorded_once_with_its_creation() {
    for store in stores().await {
        let api = TestApi::new(store).await;
        let (broker, broker_arn) = create_broker(&api, "users-1", "dev").await;
        let uri = format!("/v1/brokers/{broker}/users/alice");
        let body = json!({ "password": "correct-horse-battery" });
        let created = api.post(&uri, body.clone()).await;
        let created_id = created.request_id.clone().expect("a request id");
        created.ok();
        let twice = api.post(&uri, body.clone()).await;
        let twice_id = twice.request_id.clone().expect("a request id");
        twice.error("ConflictException", 409);
        let missing = api
            .post(
                "/v1/brokers/b-00000000-0000-4000-8000-000000000000/users/alice",
                body,
            )
            .await;
        let missing_id = missing.request_id.clone().expect("a request id");
        missing.error("NotFoundException", 404);

        let page = api.get("/v1/audit-events?action=mq:CreateUser").await.ok();
        let found = events(&page);
        let ids: Vec<&str> = found
            .iter()
            .map(|e| e["requestId"].as_str().expect("id"))
            .collect();
        assert_eq!(
            ids,
            [missing_id.as_str(), twice_id.as_str(), created_id.as_str()],
            "{}: {page}",
            api.store.backend
        );
        let (missing, twice, created) = (&found[0], &found[1], &found[2]);
        assert_eq!(created["decision"], "allowed");
        assert_eq!(created["httpStatus"], 200);
        assert_eq!(created["resource"], broker_arn.as_str());
        assert_eq!(
            created["principal"],
            "arn:aws:iam::000000000000:user/test-admin"
        );
        assert!(created.get("errorCode").is_none(), "{created}");
        assert_eq!(twice["httpStatus"], 409);
        assert_eq!(twice["errorCode"], "ConflictException");
        assert_eq!(missing["httpStatus"], 404);
        assert_eq!(missing["errorCode"], "NotFoundException");
        api.store.finish().await;
    }
}
