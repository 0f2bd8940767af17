//! The policy evaluation corpus (`tests/data/policy_cases.json`): AWS's
//! documented example policies and our own cases, each group a set of
//! policies and requests with the expected decision.

use std::collections::BTreeSet;

use mooring_control_plane::auth::policy::{evaluate, Policy, PolicyIndex, RequestContext};
use serde_json::Value;

fn load() -> Vec<Value> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/policy_cases.json");
    let text = std::fs::read_to_string(path).expect("corpus file");
    serde_json::from_str(&text).expect("corpus is JSON")
}

fn context(case: &Value) -> RequestContext {
    context_without(case, |_| false)
}

/// The case's context without the keys `skip` names.
fn context_without(case: &Value, skip: impl Fn(&str) -> bool) -> RequestContext {
    let s = |k: &str| case[k].as_str().expect("string field");
    let mut ctx = RequestContext::new(s("action"), s("resource"));
    if let Some(keys) = case["context"].as_object() {
        for (key, value) in keys.iter().filter(|(k, _)| !skip(k)) {
            match value {
                Value::Array(values) => {
                    for v in values {
                        ctx.add(key, v.as_str().expect("string value"));
                    }
                }
                v => {
                    ctx.set(key, v.as_str().expect("string value"));
                }
            }
        }
    }
    ctx
}

/// Every condition operator name used anywhere in the corpus, with its
/// `ForAnyValue:`/`ForAllValues:` prefix and `IfExists` suffix removed.
fn operators_used(groups: &[Value]) -> (BTreeSet<String>, BTreeSet<&'static str>) {
    let mut ops = BTreeSet::new();
    let mut forms = BTreeSet::new();
    for group in groups {
        for policy in group["policies"].as_array().expect("policies") {
            let statements = match &policy["Statement"] {
                Value::Array(a) => a.clone(),
                s => vec![s.clone()],
            };
            for st in statements {
                if let Some(conds) = st["Condition"].as_object() {
                    for op in conds.keys() {
                        let mut name = op.as_str();
                        for (prefix, form) in [
                            ("ForAnyValue:", "ForAnyValue"),
                            ("ForAllValues:", "ForAllValues"),
                        ] {
                            if let Some(rest) = name.strip_prefix(prefix) {
                                forms.insert(form);
                                name = rest;
                            }
                        }
                        if let Some(rest) = name.strip_suffix("IfExists") {
                            forms.insert("IfExists");
                            name = rest;
                        }
                        ops.insert(name.to_owned());
                    }
                }
                for element in ["NotAction", "NotResource"] {
                    if st.get(element).is_some() {
                        forms.insert(if element == "NotAction" {
                            "NotAction"
                        } else {
                            "NotResource"
                        });
                    }
                }
            }
        }
    }
    (ops, forms)
}

#[test]
fn corpus_decisions_match() {
    let groups = load();
    let mut failures = Vec::new();
    let mut count = 0;
    for group in &groups {
        let name = group["group"].as_str().expect("group name");
        let policies: Vec<Policy> = group["policies"]
            .as_array()
            .expect("policies")
            .iter()
            .map(|p| Policy::from_json(p).unwrap_or_else(|e| panic!("{name}: policy refused: {e}")))
            .collect();
        let refs: Vec<&Policy> = policies.iter().collect();
        for case in group["cases"].as_array().expect("cases") {
            count += 1;
            let ctx = context(case);
            let got = evaluate(&refs, &ctx).as_str();
            let want = case["expect"].as_str().expect("expect");
            if got != want {
                failures.push(format!("{name}: {case} -> {got}"));
            }
            // The API evaluates through an index of the statements per action: it
            // must decide the same, and when it says no statement reads resource
            // tags, the decision must not change without them.
            let index = PolicyIndex::new(&policies, [ctx.action()]);
            let indexed = index.evaluate(&policies, &ctx).as_str();
            if indexed != got {
                failures.push(format!("{name}: {case} -> indexed {indexed}, full {got}"));
            }
            if !index.reads_resource_tags(ctx.action()) {
                let untagged = context_without(case, |k| {
                    k.to_ascii_lowercase().starts_with("aws:resourcetag/")
                });
                let without = evaluate(&refs, &untagged).as_str();
                if without != got {
                    failures.push(format!(
                        "{name}: {case} -> {without} without resource tags, {got} with"
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(count >= 100, "only {count} cases");
}

#[test]
fn corpus_covers_every_operator_and_form() {
    let (ops, forms) = operators_used(&load());
    for op in [
        "StringEquals",
        "StringNotEquals",
        "StringEqualsIgnoreCase",
        "StringNotEqualsIgnoreCase",
        "StringLike",
        "StringNotLike",
        "NumericEquals",
        "NumericNotEquals",
        "NumericLessThan",
        "NumericLessThanEquals",
        "NumericGreaterThan",
        "NumericGreaterThanEquals",
        "DateEquals",
        "DateNotEquals",
        "DateLessThan",
        "DateLessThanEquals",
        "DateGreaterThan",
        "DateGreaterThanEquals",
        "Bool",
        "BinaryEquals",
        "IpAddress",
        "NotIpAddress",
        "ArnEquals",
        "ArnLike",
        "ArnNotEquals",
        "ArnNotLike",
        "Null",
    ] {
        assert!(ops.contains(op), "no case uses {op}");
    }
    for form in [
        "IfExists",
        "ForAnyValue",
        "ForAllValues",
        "NotAction",
        "NotResource",
    ] {
        assert!(forms.contains(form), "no case uses {form}");
    }
}
