//! Authentication and authorization, pure and I/O-free: the HTTP layer hands
//! in what it received and what it looked up, and gets a decision back.
//!
//! # Using it from the HTTP layer
//!
//! 1. **Who is calling.** Build a [`sigv4::RequestParts`] from the request
//!    (raw path and query as received, headers via [`sigv4::header_pairs`],
//!    the body or its SHA-256) and call
//!    [`sigv4::verify`]`(&parts, &secrets, &config, now)` with a
//!    [`sigv4::SecretLookup`] (any `Fn(&str) -> Option<Credential>`) and a
//!    [`sigv4::VerifyConfig`] (region, accepted services: `["mq"]` for the
//!    Amazon MQ routes, `["iam", "sts"]` for the Query endpoint). When the
//!    secret must be fetched asynchronously, call [`sigv4::parse_request`]
//!    first, look up `signed.access_key_id`, then [`sigv4::verify_parsed`].
//!    On error, answer `err.http_status(protocol)` with
//!    `x-amzn-ErrorType: err.code(protocol)` and `err.message()`.
//! 2. **What they ask.** [`actions::MqOperation`] gives the IAM action
//!    (`mq:DeleteBroker`) and which ARN it applies to
//!    ([`actions::ResourceKind`]); [`actions::broker_arn`] and
//!    [`actions::configuration_arn`] build it (`*` for `ResourceKind::All`).
//! 3. **May they.** Fill a [`policy::RequestContext`] (action, resource,
//!    principal, source IP, time, TLS, tags) and call
//!    [`policy::evaluate`]`(&principal_policies, &ctx)`; anything but
//!    [`policy::Decision::Allow`] answers AccessDenied / ForbiddenException.
//!    The decision names the statement that decided, for the audit trail.
//! 4. **Storing policies.** [`policy::Policy::parse`] refuses a document
//!    that cannot be evaluated, with the reason for MalformedPolicyDocument.

pub mod actions;
pub mod cache;
pub mod keys;
pub mod policy;
pub mod ratelimit;
pub mod sigv4;
