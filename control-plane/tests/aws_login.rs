//! AWS login end to end in one process, with a stand-in STS (an axum server that
//! answers what the test sets and records what it was sent), on both store backends.
//! The real peer is moto, in `tests/python/control_plane/test_aws_login.py`; this
//! one pins down how each STS answer becomes a login result.

mod common;

use std::sync::Arc;

use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use mooring_control_plane::app::aws_login::{self, AwsLogin, LoginError, LoginRequest};
use mooring_control_plane::app::principals;
use mooring_control_plane::auth::keys::MasterKey;
use mooring_control_plane::config::AwsLoginConfig;
use mooring_control_plane::store::{PrincipalKind, Store};
use parking_lot::Mutex;

const SERVER_ID: &str = "mooring-under-test";
const ACCOUNT: &str = "000000000000";

/// What the stand-in STS answers, and the `X-Mooring-Server-ID` values it saw.
#[derive(Default)]
struct Sts {
    answer: Mutex<(u16, String)>,
    seen_server_ids: Mutex<Vec<String>>,
}

async fn start_sts(sts: Arc<Sts>) -> String {
    let app = Router::new().route(
        "/",
        post(move |headers: HeaderMap, _body: String| {
            let sts = sts.clone();
            async move {
                if let Some(id) = headers.get("x-mooring-server-id") {
                    sts.seen_server_ids
                        .lock()
                        .push(id.to_str().unwrap_or_default().to_owned());
                }
                let (status, body) = sts.answer.lock().clone();
                (
                    StatusCode::from_u16(status).expect("a valid status"),
                    [("content-type", "text/xml")],
                    body,
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/")
}

fn identity(arn: &str, account: &str) -> String {
    format!(
        "<GetCallerIdentityResponse><GetCallerIdentityResult><Arn>{arn}</Arn>\
         <UserId>AIDAEXAMPLE</UserId><Account>{account}</Account></GetCallerIdentityResult>\
         </GetCallerIdentityResponse>"
    )
}

fn login_request(url: &str) -> LoginRequest {
    LoginRequest {
        method: "POST".to_owned(),
        url: url.to_owned(),
        headers: vec![
            (
                "Content-Type".to_owned(),
                "application/x-www-form-urlencoded; charset=utf-8".to_owned(),
            ),
            ("X-Amz-Date".to_owned(), "20261128T060000Z".to_owned()),
            ("X-Mooring-Server-ID".to_owned(), SERVER_ID.to_owned()),
            (
                "Authorization".to_owned(),
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261128/us-east-1/sts/aws4_request, \
                 SignedHeaders=content-type;host;x-amz-date;x-mooring-server-id, Signature=00"
                    .to_owned(),
            ),
        ],
        body: b"Action=GetCallerIdentity&Version=2011-06-15".to_vec(),
        duration: None,
    }
}

fn settings(url: &str) -> AwsLogin {
    let config = AwsLoginConfig {
        aws_login_sts_endpoint: Some(url.to_owned()),
        aws_login_server_id: Some(SERVER_ID.to_owned()),
        ..AwsLoginConfig::default()
    };
    AwsLogin::from_config(&config)
        .expect("valid settings")
        .expect("on")
}

#[tokio::test]
async fn sts_answers_become_login_results() {
    let sts = Arc::new(Sts::default());
    let url = start_sts(sts.clone()).await;
    let login = settings(&url);
    let master = MasterKey::generate().0;
    for t in common::stores().await {
        let s: &Store = &t.store;
        let b = t.backend;
        principals::entity_create(s, PrincipalKind::Role, "aws", ACCOUNT, "readers")
            .await
            .expect("role");
        aws_login::mapping_put(
            Some(&login),
            s,
            ACCOUNT,
            "arn:aws:iam::123456789012:role/Readers",
            "readers",
            false,
        )
        .await
        .expect("mapping");
        let attempt = || aws_login::login(Some(&login), s, &master, "aws", login_request(&url));

        // A mapped assumed role: credentials for the Mooring role.
        *sts.answer.lock() = (
            200,
            identity(
                "arn:aws:sts::123456789012:assumed-role/Readers/ci-job",
                "123456789012",
            ),
        );
        let outcome = attempt().await.expect("mapped identity logs in");
        assert_eq!(
            outcome.role_arn, "arn:aws:iam::000000000000:role/readers",
            "{b}"
        );
        assert_eq!(
            outcome.credentials.arn, "arn:aws:sts::000000000000:assumed-role/readers/aws-ci-job",
            "{b}"
        );
        assert!(outcome.credentials.access_key_id.starts_with("ASIA"), "{b}");
        assert_eq!(
            sts.seen_server_ids.lock().last().map(String::as_str),
            Some(SERVER_ID),
            "{b}: forwarded with the header"
        );
        // The credentials resolve to the role session.
        let caller = mooring_control_plane::app::sessions::caller_for_session(
            s,
            &master,
            &outcome.credentials.access_key_id,
        )
        .await
        .expect("store")
        .expect("the session exists");
        assert_eq!(caller.user.arn, outcome.credentials.arn, "{b}");

        // Unmapped: refused, nothing issued.
        *sts.answer.lock() = (
            200,
            identity("arn:aws:iam::123456789012:user/mallory", "123456789012"),
        );
        let e = attempt().await.expect_err("unmapped");
        assert!(
            matches!(&e, LoginError::Forbidden(m) if m.contains("not mapped")),
            "{b}: {e:?}"
        );

        // STS refuses the signature: the caller's fault, with STS's code.
        *sts.answer.lock() = (
            403,
            "<ErrorResponse><Error><Code>SignatureDoesNotMatch</Code><Message>bad</Message></Error></ErrorResponse>"
                .to_owned(),
        );
        let e = attempt().await.expect_err("refused by STS");
        assert!(
            matches!(&e, LoginError::Unauthenticated(m) if m.contains("SignatureDoesNotMatch")),
            "{b}: {e:?}"
        );

        // STS fails, or answers nonsense: unavailable, not a login.
        *sts.answer.lock() = (500, "<ErrorResponse/>".to_owned());
        let e = attempt().await.expect_err("STS failing");
        assert!(matches!(e, LoginError::Unavailable(_)), "{b}: {e:?}");
        *sts.answer.lock() = (200, "<html>captive portal</html>".to_owned());
        let e = attempt().await.expect_err("not an STS answer");
        assert!(matches!(e, LoginError::Unavailable(_)), "{b}: {e:?}");
        // An ARN whose account is not the one STS reports is not trusted.
        *sts.answer.lock() = (
            200,
            identity(
                "arn:aws:sts::123456789012:assumed-role/Readers/x",
                "999999999999",
            ),
        );
        let e = attempt().await.expect_err("inconsistent answer");
        assert!(matches!(e, LoginError::Unavailable(_)), "{b}: {e:?}");

        // A mapping to a role that was deleted since.
        s.aws_login_mapping_put(&mooring_control_plane::store::AwsLoginMappingRecord {
            arn_pattern: "arn:aws:iam::123456789012:user/ghost".to_owned(),
            account_id: ACCOUNT.to_owned(),
            role_name: "gone".to_owned(),
            import_policies: false,
            created_at: chrono::Utc::now(),
        })
        .await
        .expect("mapping");
        *sts.answer.lock() = (
            200,
            identity("arn:aws:iam::123456789012:user/ghost", "123456789012"),
        );
        let e = attempt().await.expect_err("no such role");
        assert!(
            matches!(&e, LoginError::Forbidden(m) if m.contains("does not exist")),
            "{b}: {e:?}"
        );

        // Off: nothing is forwarded.
        let before = sts.seen_server_ids.lock().len();
        let e = aws_login::login(None, s, &master, "aws", login_request(&url))
            .await
            .expect_err("off");
        assert!(matches!(e, LoginError::Disabled), "{b}");
        // A request without the header never reaches STS.
        let mut stripped = login_request(&url);
        stripped
            .headers
            .retain(|(n, _)| !n.eq_ignore_ascii_case("x-mooring-server-id"));
        let e = aws_login::login(Some(&login), s, &master, "aws", stripped)
            .await
            .expect_err("no header");
        assert!(matches!(e, LoginError::Unauthenticated(_)), "{b}");
        assert_eq!(
            sts.seen_server_ids.lock().len(),
            before,
            "{b}: nothing forwarded"
        );
        t.finish().await;
    }
}

#[test]
fn settings_are_checked_at_start() {
    let on = |f: &dyn Fn(&mut AwsLoginConfig)| {
        let mut c = AwsLoginConfig {
            aws_login_sts_endpoint: Some("https://sts.us-east-1.amazonaws.com/".to_owned()),
            aws_login_server_id: Some(SERVER_ID.to_owned()),
            ..AwsLoginConfig::default()
        };
        f(&mut c);
        AwsLogin::from_config(&c).map(|l| l.is_some())
    };
    assert_eq!(
        AwsLogin::from_config(&AwsLoginConfig::default()).map(|l| l.is_some()),
        Ok(false)
    );
    assert_eq!(on(&|_| {}), Ok(true));
    let refused: [&dyn Fn(&mut AwsLoginConfig); 5] = [
        &|c| c.aws_login_server_id = None,
        &|c| c.aws_login_server_id = Some("bad\nid".to_owned()),
        &|c| c.aws_login_sts_endpoint = Some("ftp://sts.example/".to_owned()),
        &|c| c.aws_login_sts_endpoint = Some("https://sts.example/?Action=AssumeRole".to_owned()),
        &|c| c.aws_login_iam_endpoint = Some("https://iam.amazonaws.com/".to_owned()),
    ];
    for (i, f) in refused.iter().enumerate() {
        assert!(on(*f).is_err(), "case {i} must be refused");
    }
}
