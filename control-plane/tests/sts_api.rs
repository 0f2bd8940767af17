//! Requests signed with temporary credentials, in process: the session token in
//! the `x-amz-security-token` header (which must be signed) or the presigned
//! `X-Amz-Security-Token` query parameter (covered by the signature), wrong or
//! missing tokens, and expired sessions answered ExpiredToken in both the
//! REST-JSON and the Query protocol.

mod common;

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use chrono::Utc;
use mooring_control_plane::app::roles::{self, NewRole};
use mooring_control_plane::app::sessions::{
    issue_session, issue_session_at, SessionPrincipal, TemporaryCredentials,
};
use mooring_control_plane::auth::sigv4::{
    canonical_request, sha256_hex, sign_request, signature, signing_key, string_to_sign,
    CanonicalInput, SigningParams, AMZ_DATE_FORMAT,
};
use mooring_control_plane::store::PrincipalKind;
use tower::ServiceExt as _;

const TRUST: &str = r#"{"Statement":{"Effect":"Allow","Principal":"*","Action":"sts:AssumeRole"}}"#;
const LIST: &str = r#"{"Statement":{"Effect":"Allow","Action":"mq:List*","Resource":"*"}}"#;

async fn session(api: &common::TestApi, hours_ago: i64) -> TemporaryCredentials {
    let state = &api.state;
    let role = match state
        .store
        .role_get_by_name(&state.config.account_id, "lister")
        .await
        .expect("read")
    {
        Some(role) => role,
        None => {
            let role = roles::role_create(
                &state.store,
                &NewRole {
                    partition: &state.config.partition,
                    account_id: &state.config.account_id,
                    name: "lister",
                    assume_role_policy: TRUST,
                    max_session_duration: 3600,
                    description: "",
                },
            )
            .await
            .expect("role");
            state
                .store
                .inline_policy_put(PrincipalKind::Role, &role.entity.id, "list", LIST)
                .await
                .expect("policy");
            role
        }
    };
    let principal = SessionPrincipal::Role {
        role: &role,
        session_name: "test",
    };
    let duration = Duration::from_secs(900);
    let source = "arn:aws:iam::000000000000:root";
    if hours_ago == 0 {
        issue_session(
            &state.store,
            &state.master_key,
            principal,
            duration,
            None,
            source,
        )
        .await
    } else {
        issue_session_at(
            &state.store,
            &state.master_key,
            principal,
            duration,
            None,
            source,
            Utc::now() - chrono::Duration::hours(hours_ago),
        )
        .await
    }
    .expect("session issued")
}

/// Sends a request; returns status, `x-amzn-ErrorType` and the body as text.
async fn send(
    api: &common::TestApi,
    method: &str,
    uri: &str,
    headers: &[(String, String)],
    body: &str,
) -> (StatusCode, Option<String>, String) {
    let mut builder = Request::builder().method(method).uri(uri);
    for (name, value) in headers {
        builder = builder.header(name.as_str(), value.as_str());
    }
    let response = api
        .router
        .clone()
        .oneshot(
            builder
                .body(Body::from(body.to_owned()))
                .expect("valid request"),
        )
        .await
        .expect("answered");
    let status = response.status();
    let error = response
        .headers()
        .get("x-amzn-ErrorType")
        .map(|v| v.to_str().expect("ascii").to_owned());
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .expect("body");
    (status, error, String::from_utf8_lossy(&bytes).into_owned())
}

/// Header-signed request with `creds`, carrying `token` (signed) when given.
async fn signed(
    api: &common::TestApi,
    method: &str,
    path: &str,
    service: &str,
    body: &str,
    creds: &TemporaryCredentials,
    token: Option<&str>,
) -> (StatusCode, Option<String>, String) {
    let content_type = if service == "mq" {
        "application/json"
    } else {
        "application/x-www-form-urlencoded"
    };
    let base = [("host", "localhost"), ("content-type", content_type)];
    let mut headers: Vec<(String, String)> = base
        .iter()
        .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
        .collect();
    headers.extend(sign_request(
        method,
        path,
        "",
        &base,
        body.as_bytes(),
        &SigningParams {
            access_key_id: &creds.access_key_id,
            secret_access_key: &creds.secret_access_key,
            session_token: token,
            region: &api.state.config.region,
            service,
            time: Utc::now(),
        },
    ));
    send(api, method, path, &headers, body).await
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A presigned GET of `path`, with the token as `X-Amz-Security-Token`.
fn presigned_uri(
    api: &common::TestApi,
    path: &str,
    creds: &TemporaryCredentials,
    token: &str,
) -> String {
    let now = Utc::now();
    let amz_date = now.format(AMZ_DATE_FORMAT).to_string();
    let date = &amz_date[..8];
    let region = &api.state.config.region;
    let scope = format!("{date}/{region}/mq/aws4_request");
    let query = format!(
        "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential={}&X-Amz-Date={amz_date}\
         &X-Amz-Expires=300&X-Amz-Security-Token={}&X-Amz-SignedHeaders=host",
        encode(&format!("{}/{scope}", creds.access_key_id)),
        encode(token)
    );
    let canonical = canonical_request(&CanonicalInput {
        method: "GET",
        raw_path: path,
        raw_query: &query,
        skip_param: Some("X-Amz-Signature"),
        headers: &[("host", "localhost")],
        signed_headers: &["host"],
        payload_hash: &sha256_hex(b""),
    })
    .expect("host is present");
    let key = signing_key(&creds.secret_access_key, date, region, "mq");
    let sig = hex::encode(signature(
        &key,
        &string_to_sign(&amz_date, &scope, &canonical),
    ));
    format!("{path}?{query}&X-Amz-Signature={sig}")
}

#[tokio::test]
async fn session_tokens_must_match_and_be_signed() {
    let api = common::TestApi::sqlite().await;
    let creds = session(&api, 0).await;
    let token = creds.session_token.clone();

    let (status, _, body) =
        signed(&api, "GET", "/v1/brokers", "mq", "", &creds, Some(&token)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // The role allows List* only.
    let (status, error, _) = signed(
        &api,
        "POST",
        "/v1/configurations",
        "mq",
        r#"{"name":"c","engineType":"RABBITMQ","engineVersion":"3.13"}"#,
        &creds,
        Some(&token),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(error.as_deref(), Some("ForbiddenException"));

    // Missing, or another (validly signed) token: the key is unrecognized.
    for wrong in [None, Some("bm90IHRoZSB0b2tlbg==")] {
        let (status, error, _) = signed(&api, "GET", "/v1/brokers", "mq", "", &creds, wrong).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(error.as_deref(), Some("UnrecognizedClientException"));
    }

    // The right token, sent beside a signature that does not cover it.
    let base = [("host", "localhost")];
    let mut headers: Vec<(String, String)> = vec![("host".into(), "localhost".into())];
    headers.extend(sign_request(
        "GET",
        "/v1/brokers",
        "",
        &base,
        b"",
        &SigningParams {
            access_key_id: &creds.access_key_id,
            secret_access_key: &creds.secret_access_key,
            session_token: None,
            region: &api.state.config.region,
            service: "mq",
            time: Utc::now(),
        },
    ));
    headers.push(("x-amz-security-token".into(), token.clone()));
    let (status, error, body) = send(&api, "GET", "/v1/brokers", &headers, "").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(error.as_deref(), Some("InvalidSignatureException"));
    assert!(body.contains("not signed"), "{body}");

    // Presigned: the token rides in the query and the signature covers it.
    let uri = presigned_uri(&api, "/v1/brokers", &creds, &token);
    let (status, _, body) = send(
        &api,
        "GET",
        &uri,
        &[("host".into(), "localhost".into())],
        "",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut tampered = token.into_bytes();
    tampered[10] = if tampered[10] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).expect("base64 is ascii");
    let uri = presigned_uri(&api, "/v1/brokers", &creds, &tampered);
    let (status, error, _) = send(
        &api,
        "GET",
        &uri,
        &[("host".into(), "localhost".into())],
        "",
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(error.as_deref(), Some("UnrecognizedClientException"));
    api.store.finish().await;
}

#[tokio::test]
async fn expired_sessions_answer_expired_token_in_both_protocols() {
    let api = common::TestApi::sqlite().await;
    let expired = session(&api, 2).await;
    let token = expired.session_token.clone();

    let (status, error, body) =
        signed(&api, "GET", "/v1/brokers", "mq", "", &expired, Some(&token)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(error.as_deref(), Some("ExpiredTokenException"));
    assert!(body.contains("expired"), "{body}");

    let form = "Action=GetCallerIdentity&Version=2011-06-15";
    let (status, _, body) = signed(&api, "POST", "/", "sts", form, &expired, Some(&token)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("<Code>ExpiredToken</Code>"), "{body}");

    // A wrong secret on an expired key is a bad signature, not "expired": only
    // the holder of the secret learns that the session existed.
    let forged = TemporaryCredentials {
        secret_access_key: "not-the-secret".into(),
        ..expired
    };
    let (status, error, _) =
        signed(&api, "GET", "/v1/brokers", "mq", "", &forged, Some(&token)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(error.as_deref(), Some("InvalidSignatureException"));

    // A live session of the same role answers GetCallerIdentity as the assumed role.
    let live = session(&api, 0).await;
    let (status, _, body) = signed(
        &api,
        "POST",
        "/",
        "sts",
        form,
        &live,
        Some(&live.session_token),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains(":assumed-role/lister/test</Arn>"), "{body}");
    api.store.finish().await;
}
