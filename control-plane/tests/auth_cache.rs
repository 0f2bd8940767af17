//! The cache of verified principals (`auth::cache`) against the real API and store:
//! IAM writes through this process take effect on the next request, and a write the
//! process did not see (another replica's) takes effect within the TTL.
//!
//! One test function on purpose: the IAM generation is process-wide, so IAM writes
//! of tests running in parallel in this binary would empty the cache under the
//! assertions that need an entry to survive.

mod common;

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::Request;
use common::{create_iam_user, stores, wait_for, TestApi, TestKey, ADMIN_POLICY};
use mooring_control_plane::app::AppState;
use mooring_control_plane::auth::sigv4::{sign_request, SigningParams};
use mooring_control_plane::config::ServeConfig;
use mooring_control_plane::store::{PrincipalKind, Store};
use tower::ServiceExt as _;

const TTL: Duration = Duration::from_millis(1500);

/// Sends one IAM Query API action signed by `key`; returns status and body.
async fn iam(api: &TestApi, key: &TestKey, params: &[(&str, &str)]) -> (u16, String) {
    let mut body = String::from("Version=2010-05-08");
    for (k, v) in params {
        body.push_str(&format!("&{k}={v}"));
    }
    let base = [
        ("host", "localhost"),
        ("content-type", "application/x-www-form-urlencoded"),
    ];
    let signed = sign_request(
        "POST",
        "/",
        "",
        &base,
        body.as_bytes(),
        &SigningParams {
            access_key_id: &key.access_key_id,
            secret_access_key: &key.secret_access_key,
            session_token: None,
            region: &api.state.config.region,
            service: "iam",
            time: chrono::Utc::now(),
        },
    );
    let mut builder = Request::builder().method("POST").uri("/");
    for (name, value) in base {
        builder = builder.header(name, value);
    }
    for (name, value) in signed {
        builder = builder.header(name, value);
    }
    let response = api
        .router
        .clone()
        .oneshot(builder.body(Body::from(body)).expect("request"))
        .await
        .expect("the router answers");
    let status = response.status().as_u16();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .expect("body");
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

/// Deletes a key with SQL, as another control-plane replica would: this process
/// is not told.
async fn delete_key_behind_our_back(store: &Store, access_key_id: &str) {
    let sql = "DELETE FROM iam_access_keys WHERE access_key_id = $1";
    let n = match store {
        Store::Postgres(pool, ..) => sqlx::query(sql)
            .bind(access_key_id)
            .execute(pool)
            .await
            .map(|r| r.rows_affected()),
        Store::Sqlite(pool) => sqlx::query(sql)
            .bind(access_key_id)
            .execute(pool)
            .await
            .map(|r| r.rows_affected()),
    }
    .expect("delete");
    assert_eq!(n, 1);
}

#[tokio::test]
async fn cached_principals_follow_iam_changes() {
    for store in stores().await {
        let mut config = ServeConfig::for_tests(std::env::temp_dir(), None);
        config.auth_cache_ttl_ms = u64::try_from(TTL.as_millis()).expect("small");
        let state = AppState::new(store.store.clone(), config);
        let router = mooring_control_plane::http::router(state.clone());
        let admin = create_iam_user(&state, "test-admin", ADMIN_POLICY).await;
        let mut api = TestApi {
            state,
            router,
            store,
            key: Some(admin.clone()),
        };
        let backend = api.store.backend;

        // A key deleted through the IAM API is refused on the next request.
        let alice = create_iam_user(&api.state, "alice", ADMIN_POLICY).await;
        api.key = Some(alice.clone());
        api.get("/v1/brokers").await.ok();
        assert!(
            !api.state.auth_caches.principals.is_empty(),
            "{backend}: the verified key is cached"
        );
        let (status, body) = iam(
            &api,
            &admin,
            &[
                ("Action", "DeleteAccessKey"),
                ("UserName", "alice"),
                ("AccessKeyId", &alice.access_key_id),
            ],
        )
        .await;
        assert_eq!(status, 200, "{backend}: {body}");
        api.get("/v1/brokers")
            .await
            .error("UnrecognizedClientException", 403);

        // A policy replaced through the store applies to the next request.
        let carol = create_iam_user(
            &api.state,
            "carol",
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"mq:ListBrokers","Resource":"*"}]}"#,
        )
        .await;
        api.key = Some(carol);
        api.get("/v1/brokers").await.ok();
        let user = api
            .state
            .store
            .iam_entity_get_by_name(PrincipalKind::User, "000000000000", "carol")
            .await
            .expect("read")
            .expect("carol exists");
        api.state
            .store
            .inline_policy_put(
                PrincipalKind::User,
                &user.id,
                "test-policy",
                r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"mq:DescribeBroker","Resource":"*"}]}"#,
            )
            .await
            .expect("policy replaced");
        api.get("/v1/brokers")
            .await
            .error("ForbiddenException", 403);

        // A key deleted by another replica keeps working here for at most the TTL.
        let bob = create_iam_user(&api.state, "bob", ADMIN_POLICY).await;
        api.key = Some(bob.clone());
        let cached_at = Instant::now();
        api.get("/v1/brokers").await.ok();
        delete_key_behind_our_back(&api.state.store, &bob.access_key_id).await;
        let reply = api.get("/v1/brokers").await;
        if cached_at.elapsed() < TTL {
            // Served from the cache: the store no longer has the key.
            reply.ok();
        }
        wait_for(
            "the key deleted behind the cache's back to be refused",
            TTL + Duration::from_secs(5),
            || async {
                let reply = api.get("/v1/brokers").await;
                (reply.status.as_u16() == 403).then_some(reply)
            },
        )
        .await
        .error("UnrecognizedClientException", 403);
        assert!(
            cached_at.elapsed() >= TTL,
            "{backend}: refused before the TTL: the entry was not used"
        );
        api.store.finish().await;
    }
}
