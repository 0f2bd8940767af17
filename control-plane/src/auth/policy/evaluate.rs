//! The decision for a request under a set of identity policies: an explicit
//! Deny anywhere wins, otherwise any Allow allows, otherwise it is denied.
//!
//! The caller passes only the policies that apply to the principal (its own,
//! its groups', its role's), so the cost grows with what the principal has,
//! not with the account. Within a statement the cheap checks come first:
//! action, then resource, then conditions.

use super::arn::{ArnPattern, SplitArn};
use super::context::RequestContext;
use super::parse::{Effect, Policy, ResourcePattern, Statement};

/// Which statement decided, for the audit trail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatementRef<'p> {
    /// Index into the slice given to [`evaluate`].
    pub policy_index: usize,
    /// Index into that policy's statements.
    pub statement_index: usize,
    pub sid: Option<&'p str>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision<'p> {
    Allow(StatementRef<'p>),
    ExplicitDeny(StatementRef<'p>),
    /// No statement allowed the request.
    ImplicitDeny,
}

impl Decision<'_> {
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allow(_))
    }

    /// A short name for logs and the audit trail.
    pub fn as_str(&self) -> &'static str {
        match self {
            Decision::Allow(_) => "Allow",
            Decision::ExplicitDeny(_) => "ExplicitDeny",
            Decision::ImplicitDeny => "ImplicitDeny",
        }
    }
}

pub(super) fn action_applies(st: &Statement, ctx: &RequestContext) -> bool {
    let hit = st
        .actions
        .iter()
        .any(|g| g.matches_hashed(ctx.action(), ctx.action_hashes()));
    hit != st.not_action
}

fn resource_applies(st: &Statement, ctx: &RequestContext, arn: &SplitArn<'_>) -> bool {
    let hit = st.resources.iter().any(|r| match r {
        ResourcePattern::Static(p) => p.matches_split(arn),
        // A variable without a value makes the entry match nothing.
        ResourcePattern::Templated(t) => t
            .resolve_tokens(ctx)
            .is_some_and(|toks| ArnPattern::from_tokens(&toks).matches(ctx.resource())),
    });
    hit != st.not_resource
}

/// Whether a statement applies to the request (its effect aside).
pub fn statement_applies(st: &Statement, ctx: &RequestContext) -> bool {
    applies(st, ctx, &SplitArn::new(ctx.resource()))
}

fn applies(st: &Statement, ctx: &RequestContext, arn: &SplitArn<'_>) -> bool {
    action_applies(st, ctx)
        && resource_applies(st, ctx, arn)
        && st.conditions.iter().all(|c| c.evaluate(ctx))
}

/// Evaluates the request against every statement of every policy.
pub fn evaluate<'p>(policies: &[&'p Policy], ctx: &RequestContext) -> Decision<'p> {
    let arn = SplitArn::new(ctx.resource());
    let statements = policies
        .iter()
        .enumerate()
        .flat_map(|(policy_index, policy)| {
            policy
                .statements
                .iter()
                .enumerate()
                .map(move |(statement_index, st)| {
                    let at = StatementRef {
                        policy_index,
                        statement_index,
                        sid: st.sid.as_deref(),
                    };
                    (st, at)
                })
        });
    resolve(statements, ctx, &arn, true)
}

/// The decision over `statements` in order: the first applicable Deny, else
/// the first applicable Allow, else an implicit deny. `check_action` false
/// when the caller already knows each statement's action clause applies.
pub(super) fn resolve<'p>(
    statements: impl Iterator<Item = (&'p Statement, StatementRef<'p>)>,
    ctx: &RequestContext,
    arn: &SplitArn<'_>,
    check_action: bool,
) -> Decision<'p> {
    let mut allowed = None;
    for (st, at) in statements {
        // Once allowed, only a Deny can change the answer.
        if allowed.is_some() && st.effect == Effect::Allow {
            continue;
        }
        if check_action && !action_applies(st, ctx) {
            continue;
        }
        if !(resource_applies(st, ctx, arn) && st.conditions.iter().all(|c| c.evaluate(ctx))) {
            continue;
        }
        match st.effect {
            Effect::Deny => return Decision::ExplicitDeny(at),
            Effect::Allow => allowed = Some(at),
        }
    }
    allowed.map_or(Decision::ImplicitDeny, Decision::Allow)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(doc: &str) -> Policy {
        Policy::parse(doc).expect("valid policy")
    }

    #[test]
    fn deny_beats_allow_and_default_is_deny() {
        let allow = policy(
            r#"{"Version":"2012-10-17","Statement":{"Sid":"all","Effect":"Allow","Action":"mq:*","Resource":"*"}}"#,
        );
        let deny = policy(
            r#"{"Version":"2012-10-17","Statement":{"Sid":"nodelete","Effect":"Deny","Action":"mq:DeleteBroker","Resource":"*"}}"#,
        );
        let ctx = RequestContext::new("mq:DeleteBroker", "arn:aws:mq:us-east-1:1:broker:b:b-1");
        assert_eq!(evaluate(&[&allow], &ctx).as_str(), "Allow");
        let d = evaluate(&[&allow, &deny], &ctx);
        assert_eq!(
            d,
            Decision::ExplicitDeny(StatementRef {
                policy_index: 1,
                statement_index: 0,
                sid: Some("nodelete")
            })
        );
        assert_eq!(evaluate(&[], &ctx), Decision::ImplicitDeny);
        let ctx = RequestContext::new("iam:CreateUser", "*");
        assert_eq!(evaluate(&[&allow, &deny], &ctx), Decision::ImplicitDeny);
    }

    #[test]
    fn actions_are_case_insensitive() {
        let p =
            policy(r#"{"Statement":{"Effect":"Allow","Action":"MQ:describe*","Resource":"*"}}"#);
        assert!(evaluate(&[&p], &RequestContext::new("mq:DescribeBroker", "*")).is_allowed());
    }
}
