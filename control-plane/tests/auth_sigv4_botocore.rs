//! Requests signed by botocore, the signer the AWS CLI and boto3 use
//! (`tests/data/sigv4/botocore/generate.py` made them): each verifies as sent,
//! and the failures the CLI must see are the ones AWS gives.

use chrono::{Duration, Utc};
use mooring_control_plane::auth::sigv4::{
    parse_amz_date, verify, AuthError, Credential, Payload, Protocol, RequestParts, VerifyConfig,
};
use serde_json::Value;

struct Fixture {
    akid: String,
    secret: String,
    region: String,
    cases: Vec<(String, Value)>,
}

fn load() -> Fixture {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/sigv4/botocore/requests.json"
    );
    let v: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("fixture")).expect("json");
    let s = |k: &str| v[k].as_str().expect("string").to_owned();
    Fixture {
        akid: s("access_key_id"),
        secret: s("secret_access_key"),
        region: s("region"),
        cases: v["cases"]
            .as_object()
            .expect("cases")
            .iter()
            .map(|(k, c)| (k.clone(), c.clone()))
            .collect(),
    }
}

struct Req {
    method: String,
    path: String,
    query: String,
    headers: Vec<(String, String)>,
    body: String,
    service: String,
    token: Option<String>,
}

fn req(c: &Value) -> Req {
    let s = |k: &str| c[k].as_str().expect("string field").to_owned();
    Req {
        method: s("method"),
        path: s("path"),
        query: s("query"),
        headers: c["headers"]
            .as_array()
            .expect("headers")
            .iter()
            .map(|h| {
                (
                    h[0].as_str().expect("name").to_owned(),
                    h[1].as_str().expect("value").to_owned(),
                )
            })
            .collect(),
        body: s("body"),
        service: s("service"),
        token: c["token"].as_str().map(str::to_owned),
    }
}

fn run(f: &Fixture, r: &Req, secret: &str, now: chrono::DateTime<Utc>) -> Result<(), AuthError> {
    let pairs: Vec<(&str, &str)> = r
        .headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let parts = RequestParts {
        method: &r.method,
        path: &r.path,
        query: &r.query,
        headers: &pairs,
        payload: Payload::Bytes(r.body.as_bytes()),
    };
    let cfg = VerifyConfig::new(&f.region, &["mq", "iam", "sts"]);
    let secrets = |akid: &str| {
        (akid == f.akid).then(|| Credential {
            secret_access_key: secret.to_owned(),
            session_token: r.token.clone(),
        })
    };
    verify(&parts, &secrets, &cfg, now).map(|_| ())
}

fn signed_at(c: &Value) -> chrono::DateTime<Utc> {
    parse_amz_date(c["amz_date"].as_str().expect("date")).expect("valid date")
}

#[test]
fn botocore_requests_verify() {
    let f = load();
    assert!(f.cases.len() >= 10);
    for (name, c) in &f.cases {
        let r = req(c);
        assert_eq!(
            run(&f, &r, &f.secret, signed_at(c)),
            Ok(()),
            "{name} ({})",
            r.service
        );
        // Five minutes of clock skew either way is fine.
        assert_eq!(
            run(&f, &r, &f.secret, signed_at(c) + Duration::minutes(5)),
            Ok(()),
            "{name}"
        );
        assert_eq!(
            run(&f, &r, &f.secret, signed_at(c) - Duration::minutes(5)),
            Ok(()),
            "{name}"
        );
    }
}

#[test]
fn botocore_requests_fail_as_aws_does() {
    let f = load();
    for (name, c) in &f.cases {
        let r = req(c);
        let t = signed_at(c);
        let presigned = r.query.contains("X-Amz-Signature=");

        let wrong = run(&f, &r, "not-the-secret", t).expect_err("wrong secret");
        assert_eq!(
            wrong.code(Protocol::RestJson),
            "InvalidSignatureException",
            "{name}"
        );
        assert_eq!(
            wrong.code(Protocol::Query),
            "SignatureDoesNotMatch",
            "{name}"
        );

        // Signed 20 minutes before the server's clock: expired (a presigned
        // URL lives for its X-Amz-Expires, 15 minutes here).
        let late = run(&f, &r, &f.secret, t + Duration::minutes(20)).expect_err("expired");
        assert!(
            matches!(late, AuthError::Expired { .. }),
            "{name}: {late:?}"
        );
        assert!(late.message().starts_with("Signature expired: "), "{name}");

        let mut tampered = req(c);
        tampered.body.push(' ');
        assert_eq!(
            run(&f, &tampered, &f.secret, t),
            Err(AuthError::SignatureMismatch),
            "{name}"
        );

        let mut extra = req(c);
        extra
            .headers
            .push(("X-Amz-Target".into(), "mq.DeleteBroker".into()));
        assert_eq!(
            run(&f, &extra, &f.secret, t),
            Err(AuthError::HeadersNotSigned),
            "{name}"
        );

        if !presigned {
            let mut no_host = req(c);
            for (n, v) in &mut no_host.headers {
                if n.eq_ignore_ascii_case("authorization") {
                    *v = v
                        .replace(
                            "SignedHeaders=content-type;host;",
                            "SignedHeaders=content-type;",
                        )
                        .replace("SignedHeaders=host;", "SignedHeaders=");
                }
            }
            assert_eq!(
                run(&f, &no_host, &f.secret, t),
                Err(AuthError::HostNotSigned),
                "{name}"
            );

            let mut unsigned = req(c);
            unsigned
                .headers
                .retain(|(n, _)| !n.eq_ignore_ascii_case("authorization"));
            let err = run(&f, &unsigned, &f.secret, t).expect_err("unsigned");
            assert_eq!(
                err.code(Protocol::RestJson),
                "MissingAuthenticationTokenException",
                "{name}"
            );
        }
    }
}
