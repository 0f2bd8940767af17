//! What authentication and authorization cost per request: SigV4
//! verification, building the request context, and evaluating the policies
//! of a principal that has every one of the account's 1,000 policies attached
//! (the worst case: the evaluator only ever looks at the caller's policies),
//! through the per-action index the API builds once per cached principal.
//!
//! Run: `cargo test --release -p mooring-control-plane --test auth_bench -- --ignored --nocapture`
//!
//! Each request is timed twice: wall clock, and the thread's own CPU time
//! (`CLOCK_THREAD_CPUTIME_ID`), which does not count time spent descheduled.
//! On a shared machine the wall-clock tail is the scheduler's (a request that
//! loses its CPU to another process takes milliseconds), so the p99 target
//! (50 µs, asserted in release builds) applies to the CPU time; the wall-clock
//! figures are printed beside it. Reading the CPU clock is a system call
//! (~0.3 µs), included in each CPU sample.

use std::time::Instant;

use chrono::{TimeZone, Utc};
use mooring_control_plane::auth::actions::{broker_arn, MqOperation};
use mooring_control_plane::auth::policy::{
    evaluate, Decision, Policy, PolicyIndex, RequestContext,
};
use mooring_control_plane::auth::sigv4::{
    parse_request, sign_request, verify, verify_parsed_cached, Credential, Payload, RequestParts,
    SigningKeyCache, SigningParams, VerifyConfig,
};

const POLICIES: usize = 1_000;
const ITERATIONS: usize = 20_000;

/// A realistic spread: tag-scoped operators, per-broker grants, IP-limited
/// readers and denies that do not apply to the measured request. Only the
/// last policy allows it, so every statement is looked at.
fn policy(i: usize) -> String {
    let broker = broker_arn(
        "aws",
        "us-east-1",
        "111122223333",
        &format!("b{i}"),
        &format!("b-{i:04}"),
    );
    match i % 4 {
        0 => format!(
            r#"{{"Version":"2012-10-17","Statement":[
                {{"Sid":"Own{i}","Effect":"Allow","Action":["mq:RebootBroker","mq:UpdateBroker"],"Resource":"{broker}"}},
                {{"Effect":"Deny","Action":"mq:Delete*","Resource":"{broker}","Condition":{{"StringEquals":{{"aws:ResourceTag/env":"prod"}}}}}}]}}"#
        ),
        1 => format!(
            r#"{{"Version":"2012-10-17","Statement":{{"Sid":"Team{i}","Effect":"Allow","Action":"mq:*",
                "Resource":"arn:aws:mq:*:111122223333:broker:team{i}-*",
                "Condition":{{"StringEquals":{{"aws:PrincipalTag/team":"team{i}"}}}}}}}}"#
        ),
        2 => format!(
            r#"{{"Version":"2012-10-17","Statement":{{"Sid":"Read{i}","Effect":"Allow","Action":["mq:Describe*","mq:List*"],
                "Resource":"arn:aws:mq:eu-west-1:111122223333:broker:*",
                "Condition":{{"IpAddress":{{"aws:SourceIp":"10.{}.0.0/16"}}}}}}}}"#,
            i % 250
        ),
        _ => format!(
            r#"{{"Version":"2012-10-17","Statement":{{"Sid":"Home{i}","Effect":"Allow","Action":"mq:DescribeUser",
                "Resource":"arn:aws:mq:us-east-1:111122223333:broker:${{aws:username}}-{i}:*"}}}}"#
        ),
    }
}

/// This thread's CPU time so far, in microseconds.
#[allow(unsafe_code)] // one libc call, no safe wrapper in std
fn thread_cpu_micros() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    ts.tv_sec as f64 * 1e6 + ts.tv_nsec as f64 / 1e3
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

/// Wall-clock and CPU-time samples of one measured step.
#[derive(Default)]
struct Samples {
    wall: Vec<f64>,
    cpu: Vec<f64>,
}

impl Samples {
    /// Runs `f` `ITERATIONS` times after 1,000 uncounted warm-up runs.
    fn measure(mut f: impl FnMut()) -> Samples {
        let mut s = Samples::default();
        for i in 0..ITERATIONS + 1_000 {
            let cpu0 = thread_cpu_micros();
            let start = Instant::now();
            f();
            let wall = start.elapsed().as_secs_f64() * 1e6;
            let cpu = thread_cpu_micros() - cpu0;
            if i >= 1_000 {
                s.wall.push(wall);
                s.cpu.push(cpu);
            }
        }
        s.wall.sort_by(f64::total_cmp);
        s.cpu.sort_by(f64::total_cmp);
        s
    }

    fn line(&self, what: &str) -> String {
        format!(
            "{what}: CPU p50 {:.1} µs, p99 {:.1} µs; wall p50 {:.1} µs, p99 {:.1} µs, max {:.0} µs",
            percentile(&self.cpu, 0.50),
            percentile(&self.cpu, 0.99),
            percentile(&self.wall, 0.50),
            percentile(&self.wall, 0.99),
            percentile(&self.wall, 1.0),
        )
    }
}

#[test]
#[ignore = "benchmark: run with --release -- --ignored"]
fn sigv4_plus_policy_evaluation_per_request() {
    let mut policies: Vec<Policy> = (0..POLICIES - 1)
        .map(|i| Policy::parse(&policy(i)).expect("benchmark policy parses"))
        .collect();
    policies.push(
        Policy::parse(
            r#"{"Version":"2012-10-17","Statement":[
                {"Sid":"Operate","Effect":"Allow","Action":["mq:Describe*","mq:List*","mq:DeleteBroker"],"Resource":"*"},
                {"Sid":"KeepProd","Effect":"Deny","Action":"mq:DeleteBroker","Resource":"arn:aws:mq:*:*:broker:*",
                 "Condition":{"StringEquals":{"aws:ResourceTag/env":"prod"}}}]}"#,
        )
        .expect("final policy parses"),
    );
    // Built once per cached principal by the API (app::principals::VerifiedPrincipal).
    let built = Instant::now();
    let index = PolicyIndex::new(
        &policies,
        MqOperation::ALL.into_iter().map(MqOperation::action),
    );
    let index_ms = built.elapsed().as_secs_f64() * 1e3;
    let attached: Vec<&Policy> = policies.iter().collect();

    let now = Utc
        .with_ymd_and_hms(2026, 11, 28, 4, 0, 0)
        .single()
        .expect("date");
    let body = b"";
    let base = [
        ("host", "mooring.example:8443"),
        ("content-type", "application/json"),
    ];
    let signed = sign_request(
        "DELETE",
        "/v1/brokers/b-dev",
        "",
        &base,
        body,
        &SigningParams {
            access_key_id: "AKIAMOORINGBENCH",
            secret_access_key: "bench/secret+key",
            session_token: None,
            region: "us-east-1",
            service: "mq",
            time: now,
        },
    );
    let mut headers: Vec<(&str, &str)> = base.to_vec();
    headers.extend(signed.iter().map(|(n, v)| (n.as_str(), v.as_str())));
    headers.push(("user-agent", "aws-cli/2.15.0"));
    let cfg = VerifyConfig::new("us-east-1", &["mq"]);
    let secrets = |akid: &str| {
        (akid == "AKIAMOORINGBENCH").then(|| Credential {
            secret_access_key: "bench/secret+key".into(),
            session_token: None,
        })
    };
    let op = MqOperation::DeleteBroker;
    let resource = broker_arn("aws", "us-east-1", "111122223333", "dev", "b-dev");
    let parts = RequestParts {
        method: "DELETE",
        path: "/v1/brokers/b-dev",
        query: "",
        headers: &headers,
        payload: Payload::Bytes(body),
    };
    // What http::auth builds per request.
    let context = || {
        let mut ctx = RequestContext::new(op.action(), &resource);
        ctx.set_current_time(now)
            .set_secure_transport(true)
            .set_principal(
                Some("alice"),
                "AIDAALICE",
                "arn:aws:iam::111122223333:user/alice",
            )
            .set_source_ip("192.0.2.1".parse().expect("ip"))
            .set_resource_tag("env", "dev");
        ctx
    };
    assert!(index.reads_resource_tags(op.action()));
    // The API keeps the credential, with its signing keys, in the principal cache.
    let credential = secrets("AKIAMOORINGBENCH").expect("known key");
    let keys = SigningKeyCache::default();
    let server_verify = || {
        let signed = parse_request(&parts).expect("parses");
        verify_parsed_cached(&parts, &signed, Some((&credential, &keys)), &cfg, now)
            .expect("benchmark request verifies")
    };

    let sigv4 = Samples::measure(|| {
        server_verify();
    });
    let sigv4_uncached = Samples::measure(|| {
        verify(&parts, &secrets, &cfg, now).expect("verifies");
    });
    let contexts = Samples::measure(|| {
        std::hint::black_box(context());
    });
    let ctx = context();
    let indexed = Samples::measure(|| {
        assert!(index.evaluate(&policies, &ctx).is_allowed());
    });
    let scan = Samples::measure(|| {
        assert!(evaluate(&attached, &ctx).is_allowed());
    });
    let whole = Samples::measure(|| {
        let caller = server_verify();
        assert_eq!(caller.access_key_id, "AKIAMOORINGBENCH");
        let ctx = context();
        let decision = index.evaluate(&policies, &ctx);
        assert!(matches!(decision, Decision::Allow(_)), "{decision:?}");
    });
    println!("auth bench: {POLICIES} attached policies, {ITERATIONS} requests per line; index built in {index_ms:.1} ms");
    println!(
        "{}",
        whole.line("sigv4 + context + indexed evaluation (the request path)")
    );
    println!(
        "{}",
        sigv4.line("  sigv4 verification alone (signing key cached)")
    );
    println!(
        "{}",
        sigv4_uncached.line("  sigv4 verification, key derived each time")
    );
    println!("{}", contexts.line("  request context alone"));
    println!("{}", indexed.line("  indexed evaluation alone"));
    println!(
        "{}",
        scan.line("  full-scan evaluation alone (before the index)")
    );
    let p99 = percentile(&whole.cpu, 0.99);
    if !cfg!(debug_assertions) {
        assert!(p99 < 50.0, "CPU p99 {p99:.1} µs exceeds the 50 µs target");
    }
}
