//! Properties of policy evaluation over generated policies and requests.

use mooring_control_plane::auth::policy::{evaluate, Decision, Policy, RequestContext};
use proptest::prelude::*;
use serde_json::{json, Value};

const ACTIONS: &[&str] = &[
    "*",
    "mq:*",
    "mq:Describe*",
    "mq:List*",
    "mq:DeleteBroker",
    "mq:RebootBroker",
    "mq:*Broker",
    "mq:Describe?roker",
    "iam:*",
];
const RESOURCES: &[&str] = &[
    "*",
    "arn:aws:mq:*",
    "arn:aws:mq:*:*:broker:*",
    "arn:aws:mq:us-east-1:111122223333:broker:orders:*",
    "arn:aws:mq:us-east-1:111122223333:broker:${aws:username}:*",
    "arn:aws:mq:us-east-1:111122223333:configuration:*",
];
const REQUEST_ACTIONS: &[&str] = &[
    "mq:DescribeBroker",
    "mq:ListBrokers",
    "mq:DeleteBroker",
    "mq:RebootBroker",
    "mq:CreateBroker",
    "iam:CreateUser",
];
const REQUEST_RESOURCES: &[&str] = &[
    "*",
    "arn:aws:mq:us-east-1:111122223333:broker:orders:b-1",
    "arn:aws:mq:us-east-1:111122223333:broker:alice:b-2",
    "arn:aws:mq:eu-west-1:111122223333:broker:billing:b-3",
    "arn:aws:mq:us-east-1:111122223333:configuration:c-1",
];

fn condition() -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        Just(None),
        Just(Some(
            json!({"StringEquals": {"aws:ResourceTag/env": "prod"}})
        )),
        Just(Some(
            json!({"StringNotEquals": {"aws:ResourceTag/env": ["prod", "staging"]}})
        )),
        Just(Some(
            json!({"StringLikeIfExists": {"aws:PrincipalTag/team": "blue*"}})
        )),
        Just(Some(json!({"IpAddress": {"aws:SourceIp": "10.0.0.0/8"}}))),
        Just(Some(
            json!({"NotIpAddress": {"aws:SourceIp": ["10.0.0.0/8", "2001:db8::/32"]}})
        )),
        Just(Some(json!({"Bool": {"aws:SecureTransport": "true"}}))),
        Just(Some(
            json!({"DateLessThan": {"aws:CurrentTime": "2026-01-01T00:00:00Z"}})
        )),
        Just(Some(
            json!({"NumericGreaterThan": {"aws:EpochTime": 1700000000}})
        )),
        Just(Some(json!({"Null": {"aws:username": "true"}}))),
        Just(Some(
            json!({"ForAllValues:StringEquals": {"aws:TagKeys": ["env", "team"]}})
        )),
        Just(Some(
            json!({"ForAnyValue:StringLike": {"aws:TagKeys": "aws:*"}})
        )),
        Just(Some(
            json!({"ArnNotLike": {"aws:PrincipalArn": "arn:aws:iam::*:role/*"}})
        )),
    ]
}

fn statement(effect: &'static str) -> impl Strategy<Value = Value> {
    (
        prop::sample::subsequence(ACTIONS, 1..3),
        any::<bool>(),
        prop::sample::subsequence(RESOURCES, 1..3),
        any::<bool>(),
        condition(),
    )
        .prop_map(
            move |(actions, not_action, resources, not_resource, cond)| {
                let mut st = json!({ "Effect": effect });
                st[if not_action { "NotAction" } else { "Action" }] = json!(actions);
                st[if not_resource {
                    "NotResource"
                } else {
                    "Resource"
                }] = json!(resources);
                if let Some(c) = cond {
                    st["Condition"] = c;
                }
                st
            },
        )
}

fn policy(effect_any: bool) -> impl Strategy<Value = Policy> {
    let st = if effect_any {
        prop_oneof![statement("Allow"), statement("Deny")].boxed()
    } else {
        statement("Deny").boxed()
    };
    prop::collection::vec(st, 1..4).prop_map(|statements| {
        Policy::from_json(&json!({"Version": "2012-10-17", "Statement": statements}))
            .expect("generated policies are valid")
    })
}

fn request() -> impl Strategy<Value = RequestContext> {
    (
        prop::sample::select(REQUEST_ACTIONS),
        prop::sample::select(REQUEST_RESOURCES),
        prop::option::of(prop::sample::select(&["alice", "bob"][..])),
        prop::option::of(prop::sample::select(&["prod", "dev"][..])),
        prop::option::of(prop::sample::select(
            &["10.1.2.3", "192.0.2.1", "2001:db8::1"][..],
        )),
        any::<bool>(),
        prop::sample::subsequence(&["env", "team", "aws:x"][..], 0..3),
    )
        .prop_map(|(action, resource, user, env, ip, tls, tag_keys)| {
            let mut ctx = RequestContext::new(action, resource);
            if let Some(u) = user {
                ctx.set("aws:username", u);
            }
            if let Some(e) = env {
                ctx.set_resource_tag("env", e);
            }
            if let Some(ip) = ip {
                ctx.set("aws:SourceIp", ip);
            }
            ctx.set_secure_transport(tls);
            ctx.set("aws:CurrentTime", "2025-06-01T00:00:00Z");
            ctx.set("aws:EpochTime", "1748736000");
            for k in tag_keys {
                ctx.add("aws:TagKeys", k);
            }
            ctx
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    /// Adding a policy of Deny statements never grants more: an Allow may
    /// become a Deny, a Deny never becomes an Allow, an explicit Deny stays.
    #[test]
    fn adding_deny_never_grants_more(
        base in prop::collection::vec(policy(true), 0..5),
        extra in policy(false),
        ctx in request(),
    ) {
        let mut refs: Vec<&Policy> = base.iter().collect();
        let before = evaluate(&refs, &ctx);
        refs.push(&extra);
        let after = evaluate(&refs, &ctx);
        if after.is_allowed() {
            prop_assert!(before.is_allowed(), "{before:?} became {after:?}");
        }
        if matches!(before, Decision::ExplicitDeny(_)) {
            prop_assert!(matches!(after, Decision::ExplicitDeny(_)), "{before:?} became {after:?}");
        }
    }

    /// The order of policies does not change whether a request is allowed.
    #[test]
    fn policy_order_does_not_matter(
        base in prop::collection::vec(policy(true), 0..5),
        ctx in request(),
    ) {
        let forward: Vec<&Policy> = base.iter().collect();
        let backward: Vec<&Policy> = base.iter().rev().collect();
        prop_assert_eq!(
            evaluate(&forward, &ctx).as_str(),
            evaluate(&backward, &ctx).as_str()
        );
    }
}
