//! IAM policy documents: JSON in, a compiled [`Policy`] out, or the reason
//! the document is refused (MalformedPolicyDocument).

use serde_json::{Map, Value as Json};

use super::arn::ArnPattern;
use super::condition::Condition;
use super::variables::Template;
use super::wildcard::Glob;
use super::PolicyError;

/// The largest document accepted here. IAM's own quotas (2 KiB inline,
/// 6 KiB managed) are smaller and belong to the API that stores policies;
/// this bound only keeps parsing cheap whatever the input.
pub const MAX_POLICY_BYTES: usize = 128 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// No policy variables: `${...}` is literal text.
    V2008_10_17,
    V2012_10_17,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    Allow,
    Deny,
}

/// A `Resource`/`NotResource` entry: compiled now, or per request when it
/// holds policy variables.
#[derive(Debug, Clone)]
pub(super) enum ResourcePattern {
    Static(ArnPattern),
    Templated(Template),
}

#[derive(Debug, Clone)]
pub struct Statement {
    pub sid: Option<String>,
    pub effect: Effect,
    /// `NotAction` when true.
    pub(super) not_action: bool,
    /// Lowercased: actions match case-insensitively.
    pub(super) actions: Vec<Glob>,
    /// `NotResource` when true.
    pub(super) not_resource: bool,
    pub(super) resources: Vec<ResourcePattern>,
    pub(super) conditions: Vec<Condition>,
    /// Whether any resource pattern or condition may read `aws:ResourceTag/*`
    /// (found conservatively, by name, in every string of those elements).
    pub(super) reads_resource_tags: bool,
}

#[derive(Debug, Clone)]
pub struct Policy {
    pub version: Version,
    pub id: Option<String>,
    pub statements: Vec<Statement>,
}

fn err(msg: impl Into<String>) -> PolicyError {
    PolicyError::new(msg)
}

/// A string or an array of strings (`Action`, `Resource`, condition values).
/// Condition values may also be JSON numbers and booleans, read as text.
fn strings(v: &Json, what: &str, scalars: bool) -> Result<Vec<String>, PolicyError> {
    let one = |x: &Json| -> Result<String, PolicyError> {
        match x {
            Json::String(s) => Ok(s.clone()),
            Json::Number(n) if scalars => Ok(n.to_string()),
            Json::Bool(b) if scalars => Ok(b.to_string()),
            _ => Err(err(format!(
                "{what} must be a string or an array of strings."
            ))),
        }
    };
    match v {
        Json::Array(items) => {
            if items.is_empty() {
                return Err(err(format!("{what} must not be empty.")));
            }
            items.iter().map(one).collect()
        }
        x => Ok(vec![one(x)?]),
    }
}

fn parse_action(s: &str) -> Result<Glob, PolicyError> {
    let valid = s == "*"
        || s.split_once(':')
            .is_some_and(|(vendor, name)| !vendor.is_empty() && !name.is_empty());
    if !valid {
        return Err(err(format!(
            "Action '{s}' must be '*' or prefixed by a service, e.g. 'mq:DescribeBroker'."
        )));
    }
    Ok(Glob::new(&s.to_ascii_lowercase()))
}

fn parse_resource(s: &str, version: Version) -> Result<ResourcePattern, PolicyError> {
    if s != "*" && !s.starts_with("arn:") {
        return Err(err(format!(
            "Resource '{s}' must be in ARN format or \"*\"."
        )));
    }
    let template = Template::parse(s, version == Version::V2012_10_17);
    match template.as_static() {
        Some(text) => {
            let pattern = ArnPattern::new(text);
            if text != "*" && pattern.component_count() < 6 && !pattern.is_open_ended() {
                return Err(err(format!(
                    "Resource '{s}' must be in ARN format (arn:partition:service:region:account:resource)."
                )));
            }
            Ok(ResourcePattern::Static(pattern))
        }
        None => Ok(ResourcePattern::Templated(template)),
    }
}

fn parse_conditions(v: &Json, version: Version) -> Result<Vec<Condition>, PolicyError> {
    let Json::Object(ops) = v else {
        return Err(err("Condition must be an object of operators."));
    };
    let mut out = Vec::new();
    for (op, keys) in ops {
        let Json::Object(keys) = keys else {
            return Err(err(format!(
                "Condition operator '{op}' must map keys to values."
            )));
        };
        for (key, values) in keys {
            let values = strings(values, &format!("Condition key '{key}'"), true)?;
            out.push(Condition::parse(
                op,
                key,
                &values,
                version == Version::V2012_10_17,
            )?);
        }
    }
    Ok(out)
}

/// Exactly one of `a`/`b` must be present.
fn one_of<'a>(
    obj: &'a Map<String, Json>,
    a: &str,
    b: &str,
) -> Result<(bool, &'a Json), PolicyError> {
    match (obj.get(a), obj.get(b)) {
        (Some(v), None) => Ok((false, v)),
        (None, Some(v)) => Ok((true, v)),
        (Some(_), Some(_)) => Err(err(format!("A statement cannot have both {a} and {b}."))),
        (None, None) => Err(err(format!("A statement must have {a} or {b}."))),
    }
}

fn parse_statement(v: &Json, version: Version) -> Result<Statement, PolicyError> {
    let Json::Object(obj) = v else {
        return Err(err("Each statement must be an object."));
    };
    for key in obj.keys() {
        if !matches!(
            key.as_str(),
            "Sid"
                | "Effect"
                | "Action"
                | "NotAction"
                | "Resource"
                | "NotResource"
                | "Condition"
                | "Principal"
                | "NotPrincipal"
        ) {
            return Err(err(format!("Statement has an unknown element '{key}'.")));
        }
    }
    let sid = match obj.get("Sid") {
        None => None,
        Some(Json::String(s)) => Some(s.clone()),
        Some(_) => return Err(err("Sid must be a string.")),
    };
    let effect = match obj.get("Effect") {
        Some(Json::String(s)) if s == "Allow" => Effect::Allow,
        Some(Json::String(s)) if s == "Deny" => Effect::Deny,
        Some(_) => return Err(err("Effect must be \"Allow\" or \"Deny\".")),
        None => return Err(err("Missing required field Effect.")),
    };
    let (not_action, actions) = one_of(obj, "Action", "NotAction")?;
    let actions = strings(actions, "Action", false)?
        .iter()
        .map(|a| parse_action(a))
        .collect::<Result<Vec<_>, _>>()?;
    let (not_resource, resources) = one_of(obj, "Resource", "NotResource")?;
    let resources = strings(resources, "Resource", false)?
        .iter()
        .map(|r| parse_resource(r, version))
        .collect::<Result<Vec<_>, _>>()?;
    let conditions = match obj.get("Condition") {
        Some(c) => parse_conditions(c, version)?,
        None => Vec::new(),
    };
    let reads_resource_tags = ["Resource", "NotResource", "Condition"]
        .iter()
        .filter_map(|k| obj.get(*k))
        .any(mentions_resource_tags);
    // Principal and NotPrincipal only mean something in resource-based
    // policies; identity policies evaluated here ignore them.
    Ok(Statement {
        sid,
        effect,
        not_action,
        actions,
        not_resource,
        resources,
        conditions,
        reads_resource_tags,
    })
}

/// Whether any string in `v` (object keys included) names a resource tag key,
/// in any case: as a condition key, or as a policy variable.
fn mentions_resource_tags(v: &Json) -> bool {
    const NEEDLE: &[u8] = b"resourcetag";
    let names = |s: &str| {
        s.as_bytes()
            .windows(NEEDLE.len())
            .any(|w| w.eq_ignore_ascii_case(NEEDLE))
    };
    match v {
        Json::String(s) => names(s),
        Json::Array(items) => items.iter().any(mentions_resource_tags),
        Json::Object(map) => map
            .iter()
            .any(|(k, v)| names(k) || mentions_resource_tags(v)),
        _ => false,
    }
}

impl Policy {
    /// Parses and compiles a policy document; the error says why it is refused.
    pub fn parse(document: &str) -> Result<Policy, PolicyError> {
        if document.len() > MAX_POLICY_BYTES {
            return Err(err("Policy document is too large."));
        }
        let json: Json = serde_json::from_str(document)
            .map_err(|e| err(format!("Syntax errors in policy: {e}.")))?;
        Self::from_json(&json)
    }

    pub fn from_json(json: &Json) -> Result<Policy, PolicyError> {
        let Json::Object(obj) = json else {
            return Err(err("The policy must be a JSON object."));
        };
        for key in obj.keys() {
            if !matches!(key.as_str(), "Version" | "Id" | "Statement") {
                return Err(err(format!("Policy has an unknown element '{key}'.")));
            }
        }
        let version = match obj.get("Version") {
            None => Version::V2008_10_17,
            Some(Json::String(v)) if v == "2012-10-17" => Version::V2012_10_17,
            Some(Json::String(v)) if v == "2008-10-17" => Version::V2008_10_17,
            Some(_) => return Err(err("Version must be \"2012-10-17\" or \"2008-10-17\".")),
        };
        let id = match obj.get("Id") {
            None => None,
            Some(Json::String(s)) => Some(s.clone()),
            Some(_) => return Err(err("Id must be a string.")),
        };
        let statements = match obj.get("Statement") {
            None => return Err(err("Missing required field Statement.")),
            Some(Json::Array(items)) if items.is_empty() => {
                return Err(err("Statement must not be empty."))
            }
            Some(Json::Array(items)) => items
                .iter()
                .map(|s| parse_statement(s, version))
                .collect::<Result<Vec<_>, _>>()?,
            Some(single) => vec![parse_statement(single, version)?],
        };
        Ok(Policy {
            version,
            id,
            statements,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(doc: &str) -> String {
        Policy::parse(doc).expect_err("refused").to_string()
    }

    #[test]
    fn accepts_single_statement_object_and_arrays() {
        let p = Policy::parse(
            r#"{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":"mq:*","Resource":"*"}}"#,
        )
        .expect("valid");
        assert_eq!(p.statements.len(), 1);
        assert_eq!(p.version, Version::V2012_10_17);
        let p = Policy::parse(
            r#"{"Statement":[{"Sid":"a","Effect":"Deny","NotAction":["mq:List*"],"NotResource":"arn:aws:mq:*"}]}"#,
        )
        .expect("valid");
        assert_eq!(p.version, Version::V2008_10_17);
        assert_eq!(p.statements[0].sid.as_deref(), Some("a"));
    }

    #[test]
    fn refuses_with_a_reason() {
        assert!(refused(r#"{"Statement":{"Action":"*","Resource":"*"}}"#).contains("Effect"));
        assert!(refused(
            r#"{"Statement":{"Effect":"Allow","Action":"*","NotAction":"*","Resource":"*"}}"#
        )
        .contains("both Action and NotAction"));
        assert!(refused(r#"{"Statement":{"Effect":"Allow","Resource":"*"}}"#).contains("Action"));
        assert!(
            refused(r#"{"Statement":{"Effect":"allow","Action":"*","Resource":"*"}}"#)
                .contains("Effect")
        );
        assert!(refused(r#"{"Version":"2012-10-18","Statement":[]}"#).contains("Version"));
        assert!(refused(r#"{"Statement":[]}"#).contains("empty"));
        assert!(refused(
            r#"{"Statement":{"Effect":"Allow","Action":"DescribeBroker","Resource":"*"}}"#
        )
        .contains("prefixed"));
        assert!(
            refused(r#"{"Statement":{"Effect":"Allow","Action":"*","Resource":"broker"}}"#)
                .contains("ARN")
        );
        assert!(refused(
            r#"{"Statement":{"Effect":"Allow","Action":"*","Resource":"arn:aws:mq"}}"#
        )
        .contains("ARN"));
        assert!(refused(
            r#"{"Statement":{"Effect":"Allow","Action":"*","Resource":"*","Condition":{"IpAddress":{"aws:SourceIp":"10.0.0.0/99"}}}}"#
        )
        .contains("not valid"));
        assert!(refused(
            r#"{"Statement":{"Effect":"Allow","Action":"*","Resource":"*","Condition":{"StringFoo":{"aws:username":"a"}}}}"#
        )
        .contains("Unknown condition operator"));
        assert!(refused(
            r#"{"Statement":{"Effect":"Allow","Action":"*","Resource":"*","Extra":1}}"#
        )
        .contains("unknown element"));
        assert!(refused("not json").contains("Syntax"));
        assert!(refused(&" ".repeat(MAX_POLICY_BYTES + 1)).contains("too large"));
    }
}
