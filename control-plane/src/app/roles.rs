//! IAM roles: creating them with a trust policy (who may assume them), and
//! deciding whether a caller may assume one. The identity-policy half of that
//! decision (`sts:AssumeRole` allowed on the role's ARN) is the caller's own
//! policies, evaluated by the HTTP layer like any other action.
//!
//! A trust policy is an IAM policy whose statements name a `Principal` (or
//! `NotPrincipal`) instead of a `Resource`. It is evaluated here by keeping the
//! statements whose principal matches the caller, giving them the role as their
//! resource, and handing them to the identity-policy engine: conditions,
//! wildcards and explicit denies then mean what they mean everywhere else.

use chrono::{SubsecRound as _, Utc};
use serde_json::{Map, Value as Json};

use crate::auth::keys;
use crate::auth::policy::{evaluate, Policy, PolicyError, RequestContext};
use crate::store::{IamEntityRecord, RoleRecord, Store, StoreError};

/// A role's MaxSessionDuration when none is given, and IAM's bounds for it, in seconds.
pub const DEFAULT_MAX_SESSION_SECS: i32 = 3600;
pub const MAX_SESSION_SECS_RANGE: std::ops::RangeInclusive<i32> = 3600..=43_200;

fn err(msg: impl Into<String>) -> PolicyError {
    PolicyError::new(msg)
}

/// The principal values one statement names, by type (`AWS`, `Service`, ...);
/// `"*"` alone is `{"AWS": ["*"]}`.
fn principal_values(v: &Json) -> Result<Vec<(String, Vec<String>)>, PolicyError> {
    match v {
        Json::String(s) if s == "*" => Ok(vec![("AWS".to_owned(), vec!["*".to_owned()])]),
        Json::Object(map) if !map.is_empty() => map
            .iter()
            .map(|(kind, values)| {
                if !matches!(
                    kind.as_str(),
                    "AWS" | "Service" | "Federated" | "CanonicalUser"
                ) {
                    return Err(err(format!("Invalid principal type '{kind}' in policy.")));
                }
                let values = match values {
                    Json::String(s) => vec![s.clone()],
                    Json::Array(items) if !items.is_empty() => items
                        .iter()
                        .map(|i| i.as_str().map(str::to_owned))
                        .collect::<Option<Vec<_>>>()
                        .ok_or_else(|| err("Principal values must be strings."))?,
                    _ => {
                        return Err(err(
                            "Principal values must be a string or an array of strings.",
                        ))
                    }
                };
                if kind == "AWS" {
                    for value in &values {
                        let account =
                            value.len() == 12 && value.bytes().all(|b| b.is_ascii_digit());
                        if value != "*" && !account && !value.starts_with("arn:") {
                            return Err(err(format!(
                                "Invalid principal in policy: \"AWS\":\"{value}\""
                            )));
                        }
                    }
                }
                Ok((kind.clone(), values))
            })
            .collect(),
        _ => Err(err(
            "Principal must be \"*\" or an object such as {\"AWS\": \"<arn>\"}.",
        )),
    }
}

/// Who is asking to assume a role.
#[derive(Debug, Clone, Copy)]
pub struct Assumer<'a> {
    /// The caller's ARN (a user, or an assumed-role session).
    pub arn: &'a str,
    /// For an assumed-role session, the role's own ARN (trust policies name roles).
    pub role_arn: Option<&'a str>,
    pub account_id: &'a str,
}

/// Whether one `AWS` principal value names the assumer: `*`, its ARN, its
/// account (`<id>` or `arn:<p>:iam::<id>:root`), or its role.
fn names(value: &str, who: &Assumer<'_>) -> bool {
    if value == "*" || value == who.arn || Some(value) == who.role_arn {
        return true;
    }
    if value == who.account_id {
        return true;
    }
    let mut parts = value.splitn(6, ':');
    let (arn, _partition, service, region, account, resource) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    );
    arn == Some("arn")
        && service == Some("iam")
        && region == Some("")
        && account == Some(who.account_id)
        && resource == Some("root")
}

/// The statements of a trust document, each split into its principal clause
/// (`NotPrincipal` when the flag is true) and the rest of the statement.
type TrustStatement = (bool, Vec<(String, Vec<String>)>, Map<String, Json>);

fn split(document: &str) -> Result<(Map<String, Json>, Vec<TrustStatement>), PolicyError> {
    if document.len() > crate::auth::policy::MAX_POLICY_BYTES {
        return Err(err("Policy document is too large."));
    }
    let json: Json = serde_json::from_str(document)
        .map_err(|e| err(format!("Syntax errors in policy: {e}.")))?;
    let Json::Object(mut top) = json else {
        return Err(err("The policy must be a JSON object."));
    };
    let statements = match top.remove("Statement") {
        Some(Json::Array(items)) => items,
        Some(single @ Json::Object(_)) => vec![single],
        Some(_) => return Err(err("Statement must be an object or an array of objects.")),
        None => return Err(err("Missing required field Statement.")),
    };
    let mut out = Vec::with_capacity(statements.len());
    for st in statements {
        let Json::Object(mut st) = st else {
            return Err(err("Each statement must be an object."));
        };
        if st.contains_key("Resource") || st.contains_key("NotResource") {
            return Err(err("Has prohibited field Resource"));
        }
        let (not, principal) = match (st.remove("Principal"), st.remove("NotPrincipal")) {
            (Some(p), None) => (false, p),
            (None, Some(p)) => (true, p),
            (Some(_), Some(_)) => {
                return Err(err(
                    "A statement cannot have both Principal and NotPrincipal.",
                ))
            }
            (None, None) => return Err(err("Missing required field Principal")),
        };
        out.push((not, principal_values(&principal)?, st));
    }
    Ok((top, out))
}

/// An identity policy made of `statements`, each applying to `resource`.
fn as_identity_policy(
    top: &Map<String, Json>,
    statements: Vec<Map<String, Json>>,
    resource: &str,
) -> Result<Policy, PolicyError> {
    let statements: Vec<Json> = statements
        .into_iter()
        .map(|mut st| {
            st.insert("Resource".to_owned(), Json::String(resource.to_owned()));
            Json::Object(st)
        })
        .collect();
    let mut top = top.clone();
    top.insert("Statement".to_owned(), Json::Array(statements));
    Policy::from_json(&Json::Object(top))
}

/// Refuses a trust policy that cannot be evaluated (MalformedPolicyDocument),
/// as IAM does when it is written: every statement names a principal and no
/// resource, and the rest is a valid policy.
pub fn validate_trust_policy(document: &str) -> Result<(), PolicyError> {
    let (top, statements) = split(document)?;
    let rest = statements.into_iter().map(|(_, _, st)| st).collect();
    as_identity_policy(&top, rest, "*").map(|_| ())
}

/// Whether `role`'s trust policy lets `who` assume it. `ctx` is the request's
/// context (principal keys, time, source address) for action `sts:AssumeRole`
/// on the role's ARN. A stored policy that no longer parses trusts nobody.
pub fn trust_allows(role: &RoleRecord, who: &Assumer<'_>, ctx: &RequestContext) -> bool {
    let Ok((top, statements)) = split(&role.assume_role_policy) else {
        tracing::error!(role = %role.entity.arn, "a stored trust policy no longer parses");
        return false;
    };
    let applying: Vec<Map<String, Json>> = statements
        .into_iter()
        .filter(|(not, principals, _)| {
            let named = principals
                .iter()
                .any(|(kind, values)| kind == "AWS" && values.iter().any(|v| names(v, who)));
            named != *not
        })
        .map(|(_, _, st)| st)
        .collect();
    if applying.is_empty() {
        return false;
    }
    match as_identity_policy(&top, applying, &role.entity.arn) {
        Ok(policy) => evaluate(&[&policy], ctx).is_allowed(),
        Err(_) => false,
    }
}

/// The account and role name an ARN (`arn:<p>:iam::<account>:role/<path/>name`) names.
pub fn parse_role_arn(arn: &str) -> Option<(&str, &str)> {
    let mut parts = arn.splitn(6, ':');
    let (Some("arn"), Some(_), Some("iam"), Some(""), Some(account), Some(resource)) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return None;
    };
    let path_and_name = resource.strip_prefix("role/")?;
    let name = path_and_name.rsplit('/').next()?;
    (!name.is_empty()).then_some((account, name))
}

/// What CreateRole asks for.
#[derive(Debug, Clone)]
pub struct NewRole<'a> {
    pub partition: &'a str,
    pub account_id: &'a str,
    pub name: &'a str,
    /// The trust policy; validated with [`validate_trust_policy`] by the caller.
    pub assume_role_policy: &'a str,
    pub max_session_duration: i32,
    pub description: &'a str,
}

/// Creates a role; `Constraint::IamEntityName` when the name is taken.
pub async fn role_create(store: &Store, new: &NewRole<'_>) -> Result<RoleRecord, StoreError> {
    store.iam_account_ensure(new.account_id).await?;
    let role = RoleRecord {
        entity: IamEntityRecord {
            id: keys::new_entity_id("AROA"),
            account_id: new.account_id.to_owned(),
            name: new.name.to_owned(),
            path: "/".to_owned(),
            arn: super::principals::iam_arn(new.partition, new.account_id, "role", "/", new.name),
            // Postgres keeps microseconds: what is returned is what is stored.
            created_at: Utc::now().trunc_subsecs(6),
        },
        assume_role_policy: new.assume_role_policy.to_owned(),
        max_session_duration: new.max_session_duration,
        description: new.description.to_owned(),
    };
    store.role_insert(&role).await?;
    Ok(role)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ACCOUNT: &str = "000000000000";

    fn role(trust: &str) -> RoleRecord {
        RoleRecord {
            entity: IamEntityRecord {
                id: "AROAEXAMPLE".into(),
                account_id: ACCOUNT.into(),
                name: "ops".into(),
                path: "/".into(),
                arn: format!("arn:aws:iam::{ACCOUNT}:role/ops"),
                created_at: Utc::now(),
            },
            assume_role_policy: trust.into(),
            max_session_duration: 3600,
            description: String::new(),
        }
    }

    fn allows(trust: &str, arn: &str) -> bool {
        let r = role(trust);
        let mut ctx = RequestContext::new("sts:AssumeRole", &r.entity.arn);
        ctx.set_principal(None, "AIDA", arn);
        let who = Assumer {
            arn,
            role_arn: None,
            account_id: ACCOUNT,
        };
        trust_allows(&r, &who, &ctx)
    }

    const ALICE: &str = "arn:aws:iam::000000000000:user/alice";
    const BOB: &str = "arn:aws:iam::000000000000:user/bob";

    #[test]
    fn trust_names_users_accounts_and_everyone() {
        let user = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::000000000000:user/alice"},"Action":"sts:AssumeRole"}]}"#;
        assert!(allows(user, ALICE));
        assert!(!allows(user, BOB));
        let root = r#"{"Statement":{"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::000000000000:root"},"Action":"sts:AssumeRole"}}"#;
        assert!(allows(root, BOB));
        let other_root = r#"{"Statement":{"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::111111111111:root"},"Action":"sts:AssumeRole"}}"#;
        assert!(!allows(other_root, BOB));
        let bare = r#"{"Statement":{"Effect":"Allow","Principal":{"AWS":["000000000000"]},"Action":"sts:*"}}"#;
        assert!(allows(bare, BOB));
        let star = r#"{"Statement":{"Effect":"Allow","Principal":"*","Action":"sts:AssumeRole"}}"#;
        assert!(allows(star, BOB));
        let service = r#"{"Statement":{"Effect":"Allow","Principal":{"Service":"ec2.amazonaws.com"},"Action":"sts:AssumeRole"}}"#;
        assert!(!allows(service, ALICE));
    }

    #[test]
    fn trust_honours_action_deny_and_conditions() {
        let wrong_action =
            r#"{"Statement":{"Effect":"Allow","Principal":"*","Action":"sts:TagSession"}}"#;
        assert!(!allows(wrong_action, ALICE));
        let deny_bob = r#"{"Statement":[{"Effect":"Allow","Principal":"*","Action":"sts:AssumeRole"},{"Effect":"Deny","Principal":{"AWS":"arn:aws:iam::000000000000:user/bob"},"Action":"*"}]}"#;
        assert!(allows(deny_bob, ALICE));
        assert!(!allows(deny_bob, BOB));
        let not_principal = r#"{"Statement":{"Effect":"Allow","NotPrincipal":{"AWS":"arn:aws:iam::000000000000:user/bob"},"Action":"sts:AssumeRole"}}"#;
        assert!(allows(not_principal, ALICE));
        assert!(!allows(not_principal, BOB));
        let condition = r#"{"Version":"2012-10-17","Statement":{"Effect":"Allow","Principal":"*","Action":"sts:AssumeRole","Condition":{"StringLike":{"aws:PrincipalArn":"*:user/a*"}}}}"#;
        assert!(allows(condition, ALICE));
        assert!(!allows(condition, BOB));
    }

    #[test]
    fn malformed_trust_policies_are_refused() {
        let refused = |doc: &str| validate_trust_policy(doc).expect_err(doc).to_string();
        assert!(
            refused(r#"{"Statement":{"Effect":"Allow","Action":"sts:AssumeRole"}}"#)
                .contains("Principal")
        );
        assert!(refused(
            r#"{"Statement":{"Effect":"Allow","Principal":"*","Action":"sts:AssumeRole","Resource":"*"}}"#
        )
        .contains("prohibited field Resource"));
        assert!(refused(
            r#"{"Statement":{"Effect":"Allow","Principal":{"AWS":"alice"},"Action":"sts:AssumeRole"}}"#
        )
        .contains("Invalid principal"));
        assert!(refused(
            r#"{"Statement":{"Effect":"Allow","Principal":{"Bogus":"x"},"Action":"sts:AssumeRole"}}"#
        )
        .contains("principal type"));
        assert!(refused(
            r#"{"Statement":{"Effect":"Maybe","Principal":"*","Action":"sts:AssumeRole"}}"#
        )
        .contains("Effect"));
        assert!(refused("{").contains("Syntax"));
        validate_trust_policy(
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":["arn:aws:iam::000000000000:root","000000000000"],"Service":"ec2.amazonaws.com"},"Action":"sts:AssumeRole"}]}"#,
        )
        .expect("valid");
    }

    #[test]
    fn role_arns_name_account_and_role() {
        assert_eq!(
            parse_role_arn("arn:aws:iam::000000000000:role/ops"),
            Some(("000000000000", "ops"))
        );
        assert_eq!(
            parse_role_arn("arn:aws:iam::000000000000:role/team/a/ops"),
            Some(("000000000000", "ops"))
        );
        assert_eq!(parse_role_arn("arn:aws:iam::000000000000:user/ops"), None);
        assert_eq!(parse_role_arn("arn:aws:iam::0:role/"), None);
        assert_eq!(parse_role_arn("ops"), None);
    }
}
