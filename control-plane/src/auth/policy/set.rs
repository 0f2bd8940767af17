//! An index over the policies of one principal, built once for many requests:
//! for each action the HTTP layer will ask about, the statements whose
//! `Action` / `NotAction` clause applies to it, in evaluation order, and
//! whether any of them may read the resource's tags.
//!
//! [`PolicyIndex::evaluate`] decides exactly as [`super::evaluate`] does over
//! the same policies (the corpus test checks both); it only skips statements
//! that cannot apply to the action. [`PolicyIndex::reads_resource_tags`] lets
//! the caller skip fetching the resource's tags when no applicable statement
//! could look at them. The index does not own the policies, so whoever holds
//! them keeps its own type; it checks it is used with what it was built from.
//!
//! Each indexed statement also carries the prefix checks of its `Resource`
//! patterns ([`PrefixCheck`]), stored side by side, so that a statement about
//! other resources (the common per-broker grant) is passed over without its
//! own memory being touched: with 1,000 policies that is most of the cost.

use std::collections::HashMap;

use super::arn::{PrefixCheck, SplitArn};
use super::context::RequestContext;
use super::evaluate::{action_applies, evaluate, resolve, Decision, StatementRef};
use super::parse::{Policy, ResourcePattern, Statement};

/// One statement whose action clause applies.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    policy: u32,
    statement: u32,
    /// `checks[first..first + count]`: the statement's resource clause can only
    /// hold when one of them passes. `count` 0: always look at the statement.
    first: u32,
    count: u32,
}

/// Statements that apply to one action.
#[derive(Debug, Clone, Default)]
struct ActionEntry {
    /// In evaluation order.
    candidates: Vec<Candidate>,
    checks: Vec<PrefixCheck>,
    reads_resource_tags: bool,
}

impl ActionEntry {
    fn push(&mut self, policy: usize, statement: usize, st: &Statement) {
        let first = self.checks.len();
        // Only a plain `Resource` list of static patterns, none of them `*`, can
        // be pre-checked; anything else is looked at in full.
        let checks: Option<Vec<PrefixCheck>> = if st.not_resource {
            None
        } else {
            st.resources
                .iter()
                .map(|r| match r {
                    ResourcePattern::Static(p) => p.prefix_check(),
                    ResourcePattern::Templated(_) => None,
                })
                .collect()
        };
        let count = match checks {
            Some(checks) if !checks.is_empty() => {
                self.checks.extend_from_slice(&checks);
                checks.len()
            }
            _ => 0,
        };
        self.candidates.push(Candidate {
            policy: to_u32(policy),
            statement: to_u32(statement),
            first: to_u32(first),
            count: to_u32(count),
        });
        self.reads_resource_tags |= st.reads_resource_tags;
    }

    /// False only when the candidate's resource clause cannot hold for `arn`.
    fn may_apply(&self, c: &Candidate, arn: &SplitArn<'_>) -> bool {
        if c.count == 0 {
            return true;
        }
        let (first, count) = (c.first as usize, c.count as usize);
        self.checks[first..first + count]
            .iter()
            .any(|check| check.may_match(arn))
    }
}

#[derive(Debug, Clone, Default)]
pub struct PolicyIndex {
    /// Keyed by the lowercased action.
    by_action: HashMap<String, ActionEntry>,
    /// Whether any statement at all may read resource tags (unindexed actions).
    any_reads_resource_tags: bool,
    /// Statements per policy when built: a different slice is never trusted.
    shape: Vec<usize>,
}

impl PolicyIndex {
    /// Indexes `policies` for `actions` (any other action is still evaluated,
    /// by looking at every statement).
    pub fn new<'a>(policies: &[Policy], actions: impl IntoIterator<Item = &'a str>) -> Self {
        let any_reads_resource_tags = policies
            .iter()
            .flat_map(|p| &p.statements)
            .any(|st| st.reads_resource_tags);
        let mut by_action = HashMap::new();
        for action in actions {
            let ctx = RequestContext::new(action, "");
            let mut entry = ActionEntry::default();
            for (pi, policy) in policies.iter().enumerate() {
                for (si, st) in policy.statements.iter().enumerate() {
                    if action_applies(st, &ctx) {
                        entry.push(pi, si, st);
                    }
                }
            }
            by_action.insert(ctx.action().to_owned(), entry);
        }
        PolicyIndex {
            by_action,
            any_reads_resource_tags,
            shape: policies.iter().map(|p| p.statements.len()).collect(),
        }
    }

    /// Whether a decision on `action` may depend on the resource's tags; when
    /// false, evaluating without them gives the same decision.
    pub fn reads_resource_tags(&self, action: &str) -> bool {
        match self.by_action.get(&action.to_ascii_lowercase()) {
            Some(entry) => entry.reads_resource_tags,
            None => self.any_reads_resource_tags,
        }
    }

    /// The decision for the request under `policies` (those the index was
    /// built from), as [`super::evaluate`] gives it.
    pub fn evaluate<'p>(&self, policies: &'p [Policy], ctx: &RequestContext) -> Decision<'p> {
        let same = self.shape.len() == policies.len()
            && self
                .shape
                .iter()
                .zip(policies)
                .all(|(n, p)| *n == p.statements.len());
        let entry = self.by_action.get(ctx.action()).filter(|_| same);
        let Some(entry) = entry else {
            let all: Vec<&Policy> = policies.iter().collect();
            return evaluate(&all, ctx);
        };
        let arn = SplitArn::new(ctx.resource());
        let candidates = entry.candidates.iter();
        let statements = candidates.filter(|c| entry.may_apply(c, &arn)).map(|c| {
            let (pi, si) = (c.policy as usize, c.statement as usize);
            let st = &policies[pi].statements[si];
            let at = StatementRef {
                policy_index: pi,
                statement_index: si,
                sid: st.sid.as_deref(),
            };
            (st, at)
        });
        // The action clause is known to apply, and the prefix checks only passed
        // over statements that cannot apply: `resolve` checks the rest.
        resolve(statements, ctx, &arn, false)
    }
}

fn to_u32(i: usize) -> u32 {
    u32::try_from(i).expect("fewer than 2^32 policies and statements")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(doc: &str) -> Policy {
        Policy::parse(doc).expect("valid policy")
    }

    #[test]
    fn indexed_decisions_equal_the_full_scan() {
        let policies = vec![
            policy(
                r#"{"Version":"2012-10-17","Statement":[{"Sid":"r","Effect":"Allow","Action":["mq:Describe*","mq:List*"],"Resource":"*"},
                {"Sid":"d","Effect":"Allow","Action":"mq:DeleteBroker","Resource":"*"},
                {"Sid":"p","Effect":"Deny","Action":"mq:DeleteBroker","Resource":"*","Condition":{"StringEquals":{"aws:ResourceTag/env":"prod"}}}]}"#,
            ),
            policy(
                r#"{"Version":"2012-10-17","Statement":{"Effect":"Deny","NotAction":"mq:Describe*","Resource":"arn:aws:mq:*:*:configuration:*"}}"#,
            ),
        ];
        let actions = [
            "mq:DescribeBroker",
            "mq:DeleteBroker",
            "mq:UpdateConfiguration",
        ];
        let set = PolicyIndex::new(&policies, actions);
        let refs: Vec<&Policy> = policies.iter().collect();
        let broker = "arn:aws:mq:us-east-1:1:broker:b:b-1";
        let config = "arn:aws:mq:us-east-1:1:configuration:c-1";
        for action in actions.iter().copied().chain(["mq:RebootBroker"]) {
            for resource in [broker, config, "*"] {
                for env in [None, Some("prod"), Some("dev")] {
                    let mut ctx = RequestContext::new(action, resource);
                    if let Some(env) = env {
                        ctx.set_resource_tag("env", env);
                    }
                    assert_eq!(
                        set.evaluate(&policies, &ctx),
                        evaluate(&refs, &ctx),
                        "{action} {resource} {env:?}"
                    );
                }
            }
        }
        assert!(set.reads_resource_tags("mq:DeleteBroker"));
        assert!(set.reads_resource_tags("MQ:deletebroker"));
        assert!(!set.reads_resource_tags("mq:DescribeBroker"));
        assert!(!set.reads_resource_tags("mq:UpdateConfiguration"));
        // Not indexed: any statement may apply.
        assert!(set.reads_resource_tags("mq:RebootBroker"));
    }

    #[test]
    fn tag_reads_are_found_in_variables_and_keys_of_any_case() {
        for doc in [
            r#"{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":"mq:*","Resource":"arn:aws:mq:*:*:broker:${aws:resourcetag/name}:*"}}"#,
            r#"{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":"mq:*","Resource":"*","Condition":{"Null":{"AWS:RESOURCETAG/x":"true"}}}}"#,
            r#"{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":"mq:*","Resource":"*","Condition":{"StringEquals":{"aws:username":"${aws:ResourceTag/owner}"}}}}"#,
            r#"{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":"mq:*","Resource":"*","Condition":{"StringEquals":{"aws:Resource\u0054ag/x":"y"}}}}"#,
        ] {
            let set = PolicyIndex::new(&[policy(doc)], ["mq:DescribeBroker"]);
            assert!(set.reads_resource_tags("mq:DescribeBroker"), "{doc}");
        }
        let set = PolicyIndex::new(
            &[policy(
                r#"{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":"mq:*","Resource":"*","Condition":{"StringEquals":{"aws:RequestTag/env":"dev"}}}}"#,
            )],
            ["mq:CreateBroker"],
        );
        assert!(!set.reads_resource_tags("mq:CreateBroker"));
    }

    #[test]
    fn resource_prefix_checks_keep_decisions() {
        let doc = |effect: &str, resource: &str| {
            policy(&format!(
                r#"{{"Version":"2012-10-17","Statement":{{"Effect":"{effect}","Action":"mq:*",{resource}}}}}"#
            ))
        };
        let policies = [
            doc(
                "Allow",
                r#""Resource":"arn:aws:mq:us-east-1:1:broker:b:b-1""#,
            ),
            doc(
                "Allow",
                r#""Resource":["arn:aws:mq:*:1:broker:team-*","arn:aws:mq:*:1:configuration:c-?"]"#,
            ),
            doc("Deny", r#""Resource":"arn:aws:mq:eu-*""#),
            doc("Deny", r#""NotResource":"arn:aws:mq:*:1:broker:*""#),
            doc(
                "Allow",
                r#""Resource":"arn:aws:mq:*:1:broker:${aws:username}:*""#,
            ),
            doc("Allow", r#""Resource":"arn:aws:mq:us-east-1:1:*""#),
            doc("Deny", r#""Resource":["arn:aws:mq:*:1:broker:x:b-9","*"]"#),
        ];
        let resources = [
            "arn:aws:mq:us-east-1:1:broker:b:b-1",
            "arn:aws:mq:us-east-1:1:broker:b:b-2",
            "arn:aws:mq:us-west-2:1:broker:team-a:b-3",
            "arn:aws:mq:us-west-2:1:broker:alice:b-4",
            "arn:aws:mq:eu-west-1:1:broker:team-a:b-5",
            "arn:aws:mq:us-west-2:1:configuration:c-7",
            "arn:aws:mq:us-west-2:2:configuration:c-7",
            "*",
        ];
        // Every prefix of the list, so each policy is the deciding one somewhere.
        for n in 1..=policies.len() {
            let some = &policies[..n];
            let refs: Vec<&Policy> = some.iter().collect();
            let index = PolicyIndex::new(some, ["mq:RebootBroker"]);
            for resource in resources {
                let mut ctx = RequestContext::new("mq:RebootBroker", resource);
                ctx.set_principal(Some("alice"), "AIDA", "arn:aws:iam::1:user/alice");
                assert_eq!(
                    index.evaluate(some, &ctx),
                    evaluate(&refs, &ctx),
                    "{n} policies, {resource}"
                );
            }
        }
    }

    #[test]
    fn a_different_policy_slice_is_evaluated_in_full() {
        let allow = vec![policy(
            r#"{"Statement":{"Effect":"Allow","Action":"mq:*","Resource":"*"}}"#,
        )];
        let index = PolicyIndex::new(&[], ["mq:DescribeBroker"]);
        let ctx = RequestContext::new("mq:DescribeBroker", "*");
        assert!(index.evaluate(&allow, &ctx).is_allowed());
    }
}
