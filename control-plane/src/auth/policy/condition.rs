//! Condition operators: parsing (refusing anything that cannot be evaluated)
//! and evaluation against a request context.
//!
//! Rules (IAM's): within a statement, operators and the keys under an
//! operator are ANDed; the values of one key are ORed, or NORed for a negated
//! operator. A key absent from the request makes a condition false, except
//! that negated operators are then true, `...IfExists` is true, `Null` tests
//! presence, `ForAllValues:` is true and `ForAnyValue:` false.

use std::net::IpAddr;

use base64::Engine as _;
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};

use super::arn::ArnPattern;
use super::context::RequestContext;
use super::variables::Template;
use super::wildcard::Glob;
use super::PolicyError;

/// The comparison an operator makes, before negation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Base {
    StringEquals,
    StringEqualsIgnoreCase,
    StringLike,
    NumericEquals,
    NumericLessThan,
    NumericLessThanEquals,
    NumericGreaterThan,
    NumericGreaterThanEquals,
    DateEquals,
    DateLessThan,
    DateLessThanEquals,
    DateGreaterThan,
    DateGreaterThanEquals,
    Bool,
    BinaryEquals,
    IpAddress,
    ArnLike,
    Null,
}

/// Operator names (lowercased) -> (comparison, negated).
const OPERATORS: &[(&str, Base, bool)] = &[
    ("stringequals", Base::StringEquals, false),
    ("stringnotequals", Base::StringEquals, true),
    (
        "stringequalsignorecase",
        Base::StringEqualsIgnoreCase,
        false,
    ),
    (
        "stringnotequalsignorecase",
        Base::StringEqualsIgnoreCase,
        true,
    ),
    ("stringlike", Base::StringLike, false),
    ("stringnotlike", Base::StringLike, true),
    ("numericequals", Base::NumericEquals, false),
    ("numericnotequals", Base::NumericEquals, true),
    ("numericlessthan", Base::NumericLessThan, false),
    ("numericlessthanequals", Base::NumericLessThanEquals, false),
    ("numericgreaterthan", Base::NumericGreaterThan, false),
    (
        "numericgreaterthanequals",
        Base::NumericGreaterThanEquals,
        false,
    ),
    ("dateequals", Base::DateEquals, false),
    ("datenotequals", Base::DateEquals, true),
    ("datelessthan", Base::DateLessThan, false),
    ("datelessthanequals", Base::DateLessThanEquals, false),
    ("dategreaterthan", Base::DateGreaterThan, false),
    ("dategreaterthanequals", Base::DateGreaterThanEquals, false),
    ("bool", Base::Bool, false),
    ("binaryequals", Base::BinaryEquals, false),
    ("ipaddress", Base::IpAddress, false),
    ("notipaddress", Base::IpAddress, true),
    ("arnequals", Base::ArnLike, false),
    ("arnlike", Base::ArnLike, false),
    ("arnnotequals", Base::ArnLike, true),
    ("arnnotlike", Base::ArnLike, true),
    ("null", Base::Null, false),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SetQualifier {
    None,
    ForAnyValue,
    ForAllValues,
}

/// An IPv4 or IPv6 network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Option<Cidr> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a.parse::<IpAddr>().ok()?, Some(p.parse::<u8>().ok()?)),
            None => (s.parse::<IpAddr>().ok()?, None),
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        (prefix <= max).then_some(Cidr { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        fn masked(bits: u128, prefix: u8, width: u8) -> u128 {
            if prefix == 0 {
                0
            } else {
                bits >> (width - prefix)
            }
        }
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                masked(u32::from(net).into(), self.prefix, 32)
                    == masked(u32::from(ip).into(), self.prefix, 32)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                masked(u128::from(net), self.prefix, 128)
                    == masked(u128::from(ip), self.prefix, 128)
            }
            _ => false,
        }
    }
}

/// A date as IAM reads one: epoch seconds, or ISO 8601 (date, date-time with
/// `Z` or an offset, or a date-time without zone taken as UTC).
pub fn parse_date(s: &str) -> Option<DateTime<Utc>> {
    let s = s.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return DateTime::from_timestamp(s.parse().ok()?, 0);
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    for fmt in [
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%dT%H:%MZ",
        "%Y-%m-%dT%H:%M:%S%.fZ",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, fmt) {
            return Some(t.and_utc());
        }
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
}

fn parse_number(s: &str) -> Option<f64> {
    s.trim().parse::<f64>().ok().filter(|n| n.is_finite())
}

fn parse_bool(s: &str) -> Option<bool> {
    if s.eq_ignore_ascii_case("true") {
        Some(true)
    } else if s.eq_ignore_ascii_case("false") {
        Some(false)
    } else {
        None
    }
}

/// A policy value, parsed for its operator.
#[derive(Debug, Clone)]
enum Typed {
    Text(String),
    Pattern(Glob),
    Number(f64),
    Date(DateTime<Utc>),
    Bool(bool),
    Binary(Vec<u8>),
    Network(Cidr),
    Arn(ArnPattern),
}

fn typed(base: Base, template: &Template, text: &str) -> Option<Typed> {
    Some(match base {
        Base::StringEquals | Base::StringEqualsIgnoreCase => Typed::Text(text.to_owned()),
        Base::StringLike | Base::ArnLike => {
            // Wildcards come from the template's own text only.
            let toks = template.resolve_tokens_static()?;
            if base == Base::StringLike {
                Typed::Pattern(Glob::from_tokens(&toks))
            } else {
                Typed::Arn(ArnPattern::from_tokens(&toks))
            }
        }
        Base::NumericEquals
        | Base::NumericLessThan
        | Base::NumericLessThanEquals
        | Base::NumericGreaterThan
        | Base::NumericGreaterThanEquals => Typed::Number(parse_number(text)?),
        Base::DateEquals
        | Base::DateLessThan
        | Base::DateLessThanEquals
        | Base::DateGreaterThan
        | Base::DateGreaterThanEquals => Typed::Date(parse_date(text)?),
        Base::Bool | Base::Null => Typed::Bool(parse_bool(text)?),
        Base::BinaryEquals => Typed::Binary(
            base64::engine::general_purpose::STANDARD
                .decode(text)
                .ok()?,
        ),
        Base::IpAddress => Typed::Network(Cidr::parse(text)?),
    })
}

fn typed_resolved(base: Base, template: &Template, ctx: &RequestContext) -> Option<Typed> {
    match base {
        Base::StringLike => Some(Typed::Pattern(Glob::from_tokens(
            &template.resolve_tokens(ctx)?,
        ))),
        Base::ArnLike => Some(Typed::Arn(ArnPattern::from_tokens(
            &template.resolve_tokens(ctx)?,
        ))),
        _ => typed(base, template, &template.resolve_text(ctx)?),
    }
}

/// One value of a condition: parsed once when it has no variables.
#[derive(Debug, Clone)]
struct Value {
    template: Template,
    parsed: Option<Typed>,
}

/// One `operator: { key: values }` entry.
#[derive(Debug, Clone)]
pub struct Condition {
    base: Base,
    negated: bool,
    if_exists: bool,
    qualifier: SetQualifier,
    /// Lowercased.
    key: String,
    values: Vec<Value>,
}

impl Condition {
    /// Parses one operator/key/values triple. `substitute` is false for
    /// Version 2008-10-17 policies.
    pub fn parse(
        operator: &str,
        key: &str,
        values: &[String],
        substitute: bool,
    ) -> Result<Condition, PolicyError> {
        let lower = operator.to_ascii_lowercase();
        let (qualifier, rest) = if let Some(r) = lower.strip_prefix("foranyvalue:") {
            (SetQualifier::ForAnyValue, r)
        } else if let Some(r) = lower.strip_prefix("forallvalues:") {
            (SetQualifier::ForAllValues, r)
        } else {
            (SetQualifier::None, lower.as_str())
        };
        let (if_exists, name) = match rest.strip_suffix("ifexists") {
            Some(n) => (true, n),
            None => (false, rest),
        };
        let &(_, base, negated) = OPERATORS
            .iter()
            .find(|(n, _, _)| *n == name)
            .ok_or_else(|| PolicyError::new(format!("Unknown condition operator '{operator}'.")))?;
        if base == Base::Null && (if_exists || qualifier != SetQualifier::None) {
            return Err(PolicyError::new(format!(
                "Condition operator '{operator}' is not valid: Null takes neither IfExists nor a set qualifier."
            )));
        }
        if !key.contains(':') || key.starts_with(':') {
            return Err(PolicyError::new(format!(
                "Condition key '{key}' must be prefixed by a service, e.g. 'aws:'."
            )));
        }
        if values.is_empty() {
            return Err(PolicyError::new(format!(
                "Condition key '{key}' of operator '{operator}' has no value."
            )));
        }
        let mut parsed_values = Vec::with_capacity(values.len());
        for v in values {
            let template = Template::parse(v, substitute);
            let parsed = match template.as_static() {
                Some(text) => Some(typed(base, &template, text).ok_or_else(|| {
                    PolicyError::new(format!(
                        "Value '{v}' of condition key '{key}' is not valid for operator '{operator}'."
                    ))
                })?),
                None => None,
            };
            parsed_values.push(Value { template, parsed });
        }
        Ok(Condition {
            base,
            negated,
            if_exists,
            qualifier,
            key: key.to_ascii_lowercase(),
            values: parsed_values,
        })
    }

    /// Whether the condition holds for the request.
    pub fn evaluate(&self, ctx: &RequestContext) -> bool {
        let present = ctx.values(&self.key).filter(|v| !v.is_empty());
        if self.base == Base::Null {
            // "Null": true means "the key is absent".
            let absent = present.is_none();
            return self
                .values
                .iter()
                .any(|v| matches!(v.parsed, Some(Typed::Bool(b)) if b == absent));
        }
        let Some(request_values) = present else {
            return match self.qualifier {
                SetQualifier::ForAllValues => true,
                _ if self.if_exists => true,
                SetQualifier::ForAnyValue => false,
                SetQualifier::None => self.negated,
            };
        };
        // Values with variables are resolved per request; a variable without
        // a value removes that value (it can equal nothing).
        let resolved: Vec<std::borrow::Cow<'_, Typed>> = self
            .values
            .iter()
            .filter_map(|v| match &v.parsed {
                Some(t) => Some(std::borrow::Cow::Borrowed(t)),
                None => typed_resolved(self.base, &v.template, ctx).map(std::borrow::Cow::Owned),
            })
            .collect();
        let matches_any_policy_value =
            |rv: &str| resolved.iter().any(|pv| compare(self.base, rv, pv));
        match self.qualifier {
            SetQualifier::None => {
                let hit = request_values.iter().any(|rv| matches_any_policy_value(rv));
                hit != self.negated
            }
            SetQualifier::ForAnyValue => request_values
                .iter()
                .any(|rv| matches_any_policy_value(rv) != self.negated),
            SetQualifier::ForAllValues => request_values
                .iter()
                .all(|rv| matches_any_policy_value(rv) != self.negated),
        }
    }
}

fn eq_ignore_case(a: &str, b: &str) -> bool {
    a.chars()
        .flat_map(char::to_lowercase)
        .eq(b.chars().flat_map(char::to_lowercase))
}

/// Compares one request value with one policy value (before negation). A
/// request value that does not parse for the operator matches nothing.
fn compare(base: Base, request: &str, policy: &Typed) -> bool {
    match (base, policy) {
        (Base::StringEquals, Typed::Text(p)) => request == p,
        (Base::StringEqualsIgnoreCase, Typed::Text(p)) => eq_ignore_case(request, p),
        (Base::StringLike, Typed::Pattern(g)) => g.matches(request),
        (Base::ArnLike, Typed::Arn(a)) => a.matches(request),
        (Base::Bool, Typed::Bool(p)) => parse_bool(request) == Some(*p),
        (Base::BinaryEquals, Typed::Binary(p)) => base64::engine::general_purpose::STANDARD
            .decode(request)
            .is_ok_and(|r| r == *p),
        (Base::IpAddress, Typed::Network(net)) => request
            .trim()
            .parse::<IpAddr>()
            .is_ok_and(|ip| net.contains(ip)),
        (_, Typed::Number(p)) => parse_number(request).is_some_and(|r| match base {
            Base::NumericEquals => r == *p,
            Base::NumericLessThan => r < *p,
            Base::NumericLessThanEquals => r <= *p,
            Base::NumericGreaterThan => r > *p,
            Base::NumericGreaterThanEquals => r >= *p,
            _ => false,
        }),
        (_, Typed::Date(p)) => parse_date(request).is_some_and(|r| match base {
            Base::DateEquals => r == *p,
            Base::DateLessThan => r < *p,
            Base::DateLessThanEquals => r <= *p,
            Base::DateGreaterThan => r > *p,
            Base::DateGreaterThanEquals => r >= *p,
            _ => false,
        }),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cond(op: &str, key: &str, values: &[&str]) -> Condition {
        let values: Vec<String> = values.iter().map(|s| (*s).to_owned()).collect();
        Condition::parse(op, key, &values, true).expect("valid condition")
    }

    #[test]
    fn cidr_matching() {
        let net = Cidr::parse("203.0.113.0/24").expect("cidr");
        assert!(net.contains("203.0.113.7".parse().expect("ip")));
        assert!(!net.contains("203.0.114.7".parse().expect("ip")));
        let v6 = Cidr::parse("2001:db8::/32").expect("cidr");
        assert!(v6.contains("2001:db8:1::1".parse().expect("ip")));
        assert!(!v6.contains("203.0.113.7".parse().expect("ip")));
        assert!(Cidr::parse("0.0.0.0/0")
            .expect("cidr")
            .contains("1.2.3.4".parse().expect("ip")));
        assert!(Cidr::parse("10.0.0.0/33").is_none());
        assert!(Cidr::parse("10.0.0/8").is_none());
        assert_eq!(Cidr::parse("10.1.2.3").map(|c| c.prefix), Some(32));
    }

    #[test]
    fn dates_in_every_accepted_form() {
        let want = parse_date("2020-01-01T00:00:00Z").expect("date");
        assert_eq!(parse_date("2020-01-01"), Some(want));
        assert_eq!(parse_date("1577836800"), Some(want));
        assert_eq!(parse_date("2020-01-01T01:00:00+01:00"), Some(want));
        assert_eq!(parse_date("2020-01-01T00:00:00"), Some(want));
        assert_eq!(parse_date("2020-13-01"), None);
        assert_eq!(parse_date("yesterday"), None);
    }

    #[test]
    fn parse_refuses_what_cannot_be_evaluated() {
        let v = |s: &str| vec![s.to_owned()];
        assert!(Condition::parse("StringEqualz", "aws:username", &v("a"), true).is_err());
        assert!(Condition::parse("IpAddress", "aws:SourceIp", &v("300.0.0.0/8"), true).is_err());
        assert!(Condition::parse("DateLessThan", "aws:CurrentTime", &v("soon"), true).is_err());
        assert!(Condition::parse("NumericLessThan", "mq:x", &v("ten"), true).is_err());
        assert!(Condition::parse("Bool", "aws:SecureTransport", &v("yes"), true).is_err());
        assert!(Condition::parse("NullIfExists", "aws:username", &v("true"), true).is_err());
        assert!(Condition::parse("StringEquals", "username", &v("a"), true).is_err());
        assert!(Condition::parse("StringEquals", "aws:username", &[], true).is_err());
        assert!(Condition::parse("BinaryEquals", "mq:b", &v("!!!"), true).is_err());
        // Variables defer validation to evaluation.
        assert!(Condition::parse("NumericLessThan", "mq:x", &v("${mq:limit}"), true).is_ok());
    }

    #[test]
    fn absent_keys() {
        let ctx = RequestContext::new("mq:ListBrokers", "*");
        assert!(!cond("StringEquals", "aws:username", &["a"]).evaluate(&ctx));
        assert!(cond("StringNotEquals", "aws:username", &["a"]).evaluate(&ctx));
        assert!(cond("StringEqualsIfExists", "aws:username", &["a"]).evaluate(&ctx));
        assert!(cond("Null", "aws:username", &["true"]).evaluate(&ctx));
        assert!(!cond("Null", "aws:username", &["false"]).evaluate(&ctx));
        assert!(cond("ForAllValues:StringEquals", "aws:TagKeys", &["a"]).evaluate(&ctx));
        assert!(!cond("ForAnyValue:StringEquals", "aws:TagKeys", &["a"]).evaluate(&ctx));
    }

    #[test]
    fn set_qualifiers() {
        let mut ctx = RequestContext::new("mq:CreateBroker", "*");
        ctx.add("aws:TagKeys", "env").add("aws:TagKeys", "team");
        assert!(cond(
            "ForAllValues:StringEquals",
            "aws:TagKeys",
            &["env", "team", "x"]
        )
        .evaluate(&ctx));
        assert!(!cond("ForAllValues:StringEquals", "aws:TagKeys", &["env"]).evaluate(&ctx));
        assert!(cond("ForAnyValue:StringEquals", "aws:TagKeys", &["env"]).evaluate(&ctx));
        assert!(!cond("ForAnyValue:StringEquals", "aws:TagKeys", &["x"]).evaluate(&ctx));
        assert!(cond("ForAnyValue:StringNotEquals", "aws:TagKeys", &["env"]).evaluate(&ctx));
        assert!(!cond("ForAllValues:StringNotEquals", "aws:TagKeys", &["env"]).evaluate(&ctx));
    }
}
