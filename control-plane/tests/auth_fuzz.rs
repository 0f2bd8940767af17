//! Fuzzing, proptest-driven and bounded so that it runs in `cargo test`: the
//! Authorization-header parser, the canonicaliser, the whole verifier and the
//! policy parser take arbitrary and mutated inputs without panicking, each
//! within a time bound.

use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use mooring_control_plane::auth::policy::wildcard::Glob;
use mooring_control_plane::auth::policy::{evaluate, Policy, RequestContext};
use mooring_control_plane::auth::sigv4::{
    canonical_headers, canonical_query, canonical_uri, parse_authorization_header, verify,
    Credential, Payload, RequestParts, VerifyConfig,
};
use proptest::prelude::*;

/// Generous: a debug build on a shared machine. Pathological inputs in a
/// super-linear implementation would take seconds or never finish.
const BOUND: Duration = Duration::from_millis(500);

const VALID_AUTH: &str = "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/mq/aws4_request, SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31";

const VALID_POLICY: &str = r#"{"Version":"2012-10-17","Statement":[{"Sid":"A","Effect":"Allow","Action":["mq:Describe*","mq:DeleteBroker"],"Resource":"arn:aws:mq:*:*:broker:${aws:username}:*","Condition":{"StringEquals":{"aws:ResourceTag/env":"dev"},"IpAddress":{"aws:SourceIp":["10.0.0.0/8","2001:db8::/32"]},"ForAllValues:StringLike":{"aws:TagKeys":"a*"},"DateLessThan":{"aws:CurrentTime":"2030-01-01T00:00:00Z"},"NumericLessThanEquals":{"mq:n":"5"},"Null":{"aws:username":"false"}}},{"Effect":"Deny","NotAction":"mq:List*","NotResource":"*"}]}"#;

/// Random edits of a valid input: byte replacements, insertions, deletions,
/// and duplicated slices.
fn mutated(base: &'static str) -> impl Strategy<Value = String> {
    let len = base.len();
    prop::collection::vec((0..4u8, 0..len.max(1), any::<u8>(), 1..32usize), 1..8).prop_map(
        move |edits| {
            let mut bytes = base.as_bytes().to_vec();
            for (kind, at, byte, n) in edits {
                let at = at.min(bytes.len());
                match kind {
                    0 if at < bytes.len() => bytes[at] = byte,
                    1 => bytes.insert(at, byte),
                    2 if at < bytes.len() => {
                        let end = (at + n).min(bytes.len());
                        bytes.drain(at..end);
                    }
                    _ => {
                        let end = (at + n).min(bytes.len());
                        let copy = bytes[at..end].to_vec();
                        bytes.splice(at..at, copy);
                    }
                }
            }
            String::from_utf8_lossy(&bytes).into_owned()
        },
    )
}

fn timed<T>(what: &str, input: &str, f: impl FnOnce() -> T) -> T {
    let start = Instant::now();
    let out = f();
    let took = start.elapsed();
    assert!(took < BOUND, "{what} took {took:?} on {input:?}");
    out
}

fn arbitrary_json() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i32>().prop_map(Value::from),
        prop::sample::select(vec![
            "2012-10-17",
            "Allow",
            "Deny",
            "*",
            "mq:*",
            "arn:aws:mq:*",
            "StringEquals",
            "aws:SourceIp",
            "10.0.0.0/8",
            "${aws:username}",
            "${*",
            "Statement",
            "Effect",
        ])
        .prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(serde_json::Value::Array),
            prop::collection::btree_map(
                prop::sample::select(vec![
                    "Version",
                    "Statement",
                    "Sid",
                    "Effect",
                    "Action",
                    "NotAction",
                    "Resource",
                    "NotResource",
                    "Condition",
                    "StringLike",
                    "ForAnyValue:StringEquals",
                    "IpAddressIfExists",
                    "Null",
                    "aws:TagKeys",
                    "DateGreaterThan",
                    "Principal",
                ])
                .prop_map(str::to_owned),
                inner,
                0..5
            )
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1_000))]

    #[test]
    fn authorization_header_parser_never_panics(s in "\\PC{0,300}") {
        timed("parse_authorization_header", &s, || { let _ = parse_authorization_header(&s); });
    }

    #[test]
    fn authorization_header_parser_on_mutations(s in mutated(VALID_AUTH)) {
        timed("parse_authorization_header", &s, || { let _ = parse_authorization_header(&s); });
    }

    #[test]
    fn canonicaliser_never_panics_and_encodes_strictly(
        path in "[/%a-zA-Z0-9.~ሴ -]{0,200}",
        query in "[=&%+a-zA-Z0-9./~ሴ -]{0,200}",
        value in "\\PC{0,100}",
    ) {
        let uri = timed("canonical_uri", &path, || canonical_uri(&path));
        prop_assert!(uri.starts_with('/'));
        prop_assert!(uri.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.~/%".contains(&b)), "{}", uri);
        let q = timed("canonical_query", &query, || canonical_query(&query, None));
        prop_assert!(q.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.~%=&".contains(&b)), "{}", q);
        let headers = [("host", value.as_str()), ("x-amz-date", "x")];
        let h = timed("canonical_headers", &value, || canonical_headers(&headers, &["host", "x-amz-date"]));
        let h = h.expect("both headers present");
        prop_assert!(h.lines().count() == 2 && h.ends_with('\n'), "{:?}", h);
    }

    #[test]
    fn verifier_never_panics(
        auth in prop_oneof![mutated(VALID_AUTH), "\\PC{0,200}"],
        date in prop_oneof![Just("20150830T123600Z".to_owned()), "\\PC{0,20}"],
        path in "\\PC{0,60}",
        query in "[=&%+a-zA-Z0-9X-]{0,80}",
        body in prop::collection::vec(any::<u8>(), 0..64),
        content_sha in prop::option::of("\\PC{0,70}"),
    ) {
        let mut headers = vec![("host", "example.amazonaws.com"), ("authorization", auth.as_str()), ("x-amz-date", date.as_str())];
        if let Some(c) = &content_sha {
            headers.push(("x-amz-content-sha256", c.as_str()));
        }
        let parts = RequestParts { method: "POST", path: &path, query: &query, headers: &headers, payload: Payload::Bytes(&body) };
        let cfg = VerifyConfig::new("us-east-1", &["mq"]);
        let now = Utc.with_ymd_and_hms(2015, 8, 30, 12, 36, 0).single().expect("date");
        let secrets = |_: &str| Some(Credential { secret_access_key: "s".into(), session_token: None });
        timed("verify", &auth, || { let _ = verify(&parts, &secrets, &cfg, now); });
    }

    #[test]
    fn policy_parser_on_arbitrary_text(s in "\\PC{0,400}") {
        timed("Policy::parse", &s, || { let _ = Policy::parse(&s); });
    }

    #[test]
    fn policy_parser_on_mutations(s in mutated(VALID_POLICY)) {
        let parsed = timed("Policy::parse", &s, || Policy::parse(&s));
        if let Ok(p) = parsed {
            // Whatever parses must also evaluate without panicking.
            let mut ctx = RequestContext::new("mq:DescribeBroker", "arn:aws:mq:us-east-1:1:broker:alice:b-1");
            ctx.set("aws:username", "alice").set("aws:SourceIp", "10.1.1.1").add("aws:TagKeys", "ab");
            timed("evaluate", &s, || { let _ = evaluate(&[&p], &ctx); });
        }
    }

    #[test]
    fn policy_parser_on_arbitrary_json(v in arbitrary_json()) {
        let text = v.to_string();
        if let Ok(p) = timed("Policy::from_json", &text, || Policy::from_json(&v)) {
            let ctx = RequestContext::new("mq:ListBrokers", "*");
            timed("evaluate", &text, || { let _ = evaluate(&[&p], &ctx); });
        }
    }

    /// Wildcard patterns built to make backtracking matchers explode.
    #[test]
    fn wildcard_matching_is_bounded(
        unit in "[ab?*]{1,4}",
        repeat in 1usize..400,
        text_len in 1usize..20_000,
    ) {
        let pattern = format!("{}c", unit.repeat(repeat));
        let text = format!("{}b", "a".repeat(text_len));
        timed("Glob::matches", &pattern, || Glob::new(&pattern).matches(&text));
    }
}

#[test]
fn deeply_nested_json_is_refused_not_overflowing() {
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    assert!(Policy::parse(&deep).is_err());
    let deep_obj = format!(r#"{{"Statement":{}}}"#, "[".repeat(10_000));
    assert!(Policy::parse(&deep_obj).is_err());
}
