//! IAM identity policies: the grammar ([`Policy::parse`]), the request
//! context ([`RequestContext`]) and the decision ([`evaluate`]).

mod arn;
mod condition;
mod context;
mod evaluate;
mod parse;
mod set;
mod variables;
pub mod wildcard;

pub use arn::ArnPattern;
pub use condition::{parse_date, Cidr};
pub use context::RequestContext;
pub use evaluate::{evaluate, statement_applies, Decision, StatementRef};
pub use parse::{Effect, Policy, Statement, Version, MAX_POLICY_BYTES};
pub use set::PolicyIndex;

/// Why a policy document is refused; IAM answers MalformedPolicyDocument
/// with this message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PolicyError(String);

impl PolicyError {
    pub fn new(msg: impl Into<String>) -> Self {
        PolicyError(msg.into())
    }

    /// The IAM error code for a refused policy.
    pub const CODE: &'static str = "MalformedPolicyDocument";
}
