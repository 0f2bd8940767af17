//! Behaviour of the verifier on requests signed by our own signer; the AWS
//! vectors live in `control-plane/tests/auth_sigv4_vectors.rs`.

use super::*;
use chrono::TimeZone;

const AKID: &str = "AKIAMOORINGTEST";
const SECRET: &str = "s3cr3t/with+chars";

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 28, 3, 0, 0)
        .single()
        .expect("valid date")
}

fn lookup(akid: &str) -> Option<Credential> {
    (akid == AKID).then(|| Credential {
        secret_access_key: SECRET.into(),
        session_token: None,
    })
}

fn cfg() -> VerifyConfig {
    VerifyConfig::new("us-east-1", &["mq"])
}

/// A signed `POST /v1/brokers?x=1` with a JSON body, signed at `at`.
fn signed(at: DateTime<Utc>, secret: &str, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut headers = vec![
        ("host", "localhost:8080"),
        ("content-type", "application/json"),
    ];
    headers.extend_from_slice(extra);
    let mut all: Vec<(String, String)> = headers
        .iter()
        .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
        .collect();
    all.extend(sign_request(
        "POST",
        "/v1/brokers",
        "x=1",
        &headers,
        b"{\"brokerName\":\"b\"}",
        &SigningParams {
            access_key_id: AKID,
            secret_access_key: secret,
            session_token: None,
            region: "us-east-1",
            service: "mq",
            time: at,
        },
    ));
    all
}

fn check(
    headers: &[(String, String)],
    body: &[u8],
    at: DateTime<Utc>,
) -> Result<VerifiedCaller, AuthError> {
    let pairs: Vec<(&str, &str)> = headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let parts = RequestParts {
        method: "POST",
        path: "/v1/brokers",
        query: "x=1",
        headers: &pairs,
        payload: Payload::Bytes(body),
    };
    verify(&parts, &lookup, &cfg(), at)
}

const BODY: &[u8] = b"{\"brokerName\":\"b\"}";

#[test]
fn a_correctly_signed_request_verifies() {
    let caller = check(&signed(now(), SECRET, &[]), BODY, now()).expect("verifies");
    assert_eq!(caller.access_key_id, AKID);
    assert_eq!(caller.service, "mq");
    assert_eq!(caller.form, SignatureForm::Header);
}

#[test]
fn precomputed_body_hash_is_equivalent() {
    let headers = signed(now(), SECRET, &[]);
    let pairs: Vec<(&str, &str)> = headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let mut hash = [0u8; 32];
    hex::decode_to_slice(sha256_hex(BODY), &mut hash).expect("hex");
    let parts = RequestParts {
        method: "POST",
        path: "/v1/brokers",
        query: "x=1",
        headers: &pairs,
        payload: Payload::Sha256(hash),
    };
    assert!(verify(&parts, &lookup, &cfg(), now()).is_ok());
}

#[test]
fn wrong_secret_is_a_signature_mismatch() {
    let err = check(&signed(now(), "other", &[]), BODY, now()).expect_err("rejected");
    assert_eq!(err, AuthError::SignatureMismatch);
    assert_eq!(err.code(Protocol::RestJson), "InvalidSignatureException");
}

#[test]
fn unknown_key_is_unrecognized() {
    let mut headers = signed(now(), SECRET, &[]);
    for (n, v) in &mut headers {
        if n == "authorization" {
            *v = v.replace(AKID, "AKIANOBODY");
        }
    }
    let err = check(&headers, BODY, now()).expect_err("rejected");
    assert_eq!(err, AuthError::UnrecognizedClient);
    assert_eq!(
        err.message(),
        "The security token included in the request is invalid."
    );
}

#[test]
fn clock_skew_is_fifteen_minutes_each_way() {
    let at = now() - Duration::minutes(15);
    assert!(check(&signed(at, SECRET, &[]), BODY, now()).is_ok());
    let at = now() - Duration::minutes(20);
    let err = check(&signed(at, SECRET, &[]), BODY, now()).expect_err("expired");
    assert!(matches!(err, AuthError::Expired { .. }));
    assert_eq!(
        err.message(),
        "Signature expired: 20261128T024000Z is now earlier than 20261128T024500Z (20261128T030000Z - 15 min.)"
    );
    let at = now() + Duration::minutes(16);
    let err = check(&signed(at, SECRET, &[]), BODY, now()).expect_err("future");
    assert!(matches!(err, AuthError::NotYetValid { .. }));
}

#[test]
fn unsigned_amz_header_is_refused() {
    let mut headers = signed(now(), SECRET, &[]);
    headers.push(("X-Amz-Target".into(), "evil".into()));
    assert_eq!(
        check(&headers, BODY, now()),
        Err(AuthError::HeadersNotSigned)
    );
    // x-amzn-* (trace ids added by proxies) is another prefix and is fine.
    let mut headers = signed(now(), SECRET, &[]);
    headers.push(("x-amzn-trace-id".into(), "Root=1".into()));
    assert!(check(&headers, BODY, now()).is_ok());
}

#[test]
fn host_must_be_signed() {
    let mut headers = signed(now(), SECRET, &[]);
    for (n, v) in &mut headers {
        if n == "authorization" {
            *v = v.replace(
                "SignedHeaders=content-type;host;",
                "SignedHeaders=content-type;",
            );
        }
    }
    assert_eq!(check(&headers, BODY, now()), Err(AuthError::HostNotSigned));
}

#[test]
fn changed_body_is_a_mismatch() {
    let headers = signed(now(), SECRET, &[]);
    assert_eq!(
        check(&headers, b"{}", now()),
        Err(AuthError::SignatureMismatch)
    );
}

#[test]
fn declared_payload_hash_must_match_the_body() {
    let good = sha256_hex(BODY);
    let headers = signed(now(), SECRET, &[("x-amz-content-sha256", &good)]);
    assert!(check(&headers, BODY, now()).is_ok());
    assert_eq!(
        check(&headers, b"other", now()),
        Err(AuthError::PayloadHashMismatch)
    );
    let headers = signed(now(), SECRET, &[("x-amz-content-sha256", UNSIGNED_PAYLOAD)]);
    assert_eq!(
        check(&headers, BODY, now()),
        Err(AuthError::UnsignedPayload)
    );
}

#[test]
fn session_tokens_must_match_the_credential() {
    let sign_with = |token: Option<&str>| {
        let headers = [("host", "h")];
        let mut all: Vec<(String, String)> = vec![("host".into(), "h".into())];
        all.extend(sign_request(
            "GET",
            "/",
            "",
            &headers,
            b"",
            &SigningParams {
                access_key_id: "ASIATEMP",
                secret_access_key: SECRET,
                session_token: token,
                region: "us-east-1",
                service: "mq",
                time: now(),
            },
        ));
        all
    };
    let temp = |akid: &str| {
        (akid == "ASIATEMP").then(|| Credential {
            secret_access_key: SECRET.into(),
            session_token: Some("tok".into()),
        })
    };
    let run = |headers: &[(String, String)]| {
        let pairs: Vec<(&str, &str)> = headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        let parts = RequestParts {
            method: "GET",
            path: "/",
            query: "",
            headers: &pairs,
            payload: Payload::Bytes(b""),
        };
        verify(&parts, &temp, &cfg(), now())
    };
    let ok = run(&sign_with(Some("tok"))).expect("verifies");
    assert_eq!(ok.session_token.as_deref(), Some("tok"));
    assert_eq!(
        run(&sign_with(Some("bad"))),
        Err(AuthError::UnrecognizedClient)
    );
    assert_eq!(run(&sign_with(None)), Err(AuthError::UnrecognizedClient));
}

#[test]
fn scope_must_name_our_region_and_service() {
    let mut headers = signed(now(), SECRET, &[]);
    for (n, v) in &mut headers {
        if n == "authorization" {
            *v = v.replace("/us-east-1/mq/", "/eu-west-1/mq/");
        }
    }
    let err = check(&headers, BODY, now()).expect_err("region");
    assert_eq!(
        err,
        AuthError::BadScope("Credential should be scoped to a valid region.".into())
    );
    let mut headers = signed(now(), SECRET, &[]);
    for (n, v) in &mut headers {
        if n == "authorization" {
            *v = v.replace("/us-east-1/mq/", "/us-east-1/iam/");
        }
    }
    let err = check(&headers, BODY, now()).expect_err("service");
    assert!(err.message().contains("'mq'"), "{err}");
}

#[test]
fn unsigned_request_is_missing_authentication() {
    let headers = [("host", "h")];
    let parts = RequestParts {
        method: "GET",
        path: "/v1/brokers",
        query: "",
        headers: &headers,
        payload: Payload::Bytes(b""),
    };
    let err = verify(&parts, &lookup, &cfg(), now()).expect_err("unsigned");
    assert_eq!(
        err.code(Protocol::RestJson),
        "MissingAuthenticationTokenException"
    );
}

#[test]
fn credential_debug_hides_the_secret() {
    let c = Credential {
        secret_access_key: "topsecret".into(),
        session_token: Some("tok".into()),
    };
    let shown = format!("{c:?}");
    assert!(
        !shown.contains("topsecret") && !shown.contains("tok\""),
        "{shown}"
    );
}
