//! Per-principal rate limits through the API in process: a burst passes, the next
//! request is throttled the way AWS SDKs recognise (429 ThrottlingException on the
//! Amazon MQ routes, `Throttling` on the Query API), other principals are not
//! affected, the refusal is audited, and the bucket refills.

mod common;

use std::time::{Duration, Instant};

use axum::body::Body;
use common::{create_iam_user, wait_for, TestApi, ADMIN_POLICY};
use mooring_control_plane::app::AppState;
use mooring_control_plane::config::ServeConfig;
use tower::ServiceExt as _;

const BURST: u32 = 10;
const PER_SECOND: f64 = 5.0;

async fn limited_api() -> TestApi {
    let store = common::sqlite_store().await;
    let mut config = ServeConfig::for_tests(std::env::temp_dir(), None);
    config.rate_limit_burst = BURST;
    config.rate_limit_per_second = PER_SECOND;
    let state = AppState::new(store.store.clone(), config);
    let router = mooring_control_plane::http::router(state.clone());
    let key = create_iam_user(&state, "test-admin", ADMIN_POLICY).await;
    TestApi {
        state,
        router,
        store,
        key: Some(key),
    }
}

#[tokio::test]
async fn a_principal_over_its_burst_is_throttled_then_recovers() {
    let mut api = limited_api().await;
    let admin = api.key.clone();
    let started = Instant::now();
    let mut passed = 0;
    let mut throttled = None;
    for _ in 0..BURST * 3 {
        let reply = api.get("/v1/brokers").await;
        if reply.status.is_success() {
            passed += 1;
        } else {
            throttled = Some(reply);
            break;
        }
    }
    let throttled = throttled.expect("throttled within three bursts");
    // The loop is fast, but a slow machine may have refilled a token or two.
    let refill = (started.elapsed().as_secs_f64() * PER_SECOND).ceil() as u32;
    assert!(
        passed >= BURST && passed <= BURST + refill,
        "{passed} passed"
    );
    assert_eq!(throttled.status.as_u16(), 429, "{throttled:?}");
    assert_eq!(throttled.error_type.as_deref(), Some("ThrottlingException"));
    assert_eq!(throttled.json["message"], "Rate exceeded");

    // Another principal has a bucket of its own.
    api.key = Some(create_iam_user(&api.state, "other", ADMIN_POLICY).await);
    api.get("/v1/brokers").await.ok();

    // Tokens come back at PER_SECOND: the first principal gets through again soon.
    api.key = admin;
    let waited = Instant::now();
    let api_ref = &api;
    wait_for(
        "the bucket to refill",
        Duration::from_secs(5),
        || async move {
            api_ref
                .get("/v1/brokers")
                .await
                .status
                .is_success()
                .then_some(())
        },
    )
    .await;
    assert!(
        waited.elapsed() < Duration::from_secs(2),
        "{:?}",
        waited.elapsed()
    );

    // The refusal is in the audit trail. (Reading it costs a token too: wait for one.)
    let page = wait_for(
        "the throttled record",
        Duration::from_secs(5),
        || async move {
            let reply = api_ref.get("/v1/audit-events?decision=throttled").await;
            reply
                .status
                .is_success()
                .then_some(reply.json)
                .filter(|page| {
                    page["auditEvents"]
                        .as_array()
                        .is_some_and(|events| !events.is_empty())
                })
        },
    )
    .await;
    let event = &page["auditEvents"][0];
    assert_eq!(
        event["principal"],
        "arn:aws:iam::000000000000:user/test-admin"
    );
    assert_eq!(event["httpStatus"], 429);
    assert_eq!(event["errorCode"], "ThrottlingException");
    api.store.finish().await;
}

#[tokio::test]
async fn the_query_api_answers_throttling_in_its_own_shape() {
    let api = limited_api().await;
    let key = api.key.clone().expect("a key");
    let body = "Action=GetCallerIdentity&Version=2011-06-15";
    let mut last = None;
    for _ in 0..BURST * 3 {
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
                service: "sts",
                time: chrono::Utc::now(),
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
        let response = api
            .router
            .clone()
            .oneshot(builder.body(Body::from(body)).expect("request"))
            .await
            .expect("answers");
        if !response.status().is_success() {
            last = Some(response);
            break;
        }
    }
    let response = last.expect("throttled within three bursts");
    assert_eq!(response.status().as_u16(), 400);
    assert!(response.headers().contains_key("retry-after"));
    let text = String::from_utf8(
        axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .expect("body")
            .to_vec(),
    )
    .expect("utf-8");
    assert!(text.contains("<Code>Throttling</Code>"), "{text}");
    assert!(text.contains("Rate exceeded"), "{text}");
    api.store.finish().await;
}
