//! The IAM Query actions on roles (CreateRole, GetRole, ListRoles, DeleteRole,
//! UpdateAssumeRolePolicy), STS AssumeRole, and the tags of users and roles
//! (Tag/Untag/List{User,Role}Tags). Parsing and answering only: the rules are
//! in `app::roles` and `app::sessions`. Policies of roles (put, attach, ...) are
//! handled with those of users and groups in [`super::iam_manage`].

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::Response;

use super::auth::VerifiedCaller;
use super::iam::{authorize, date, escape, param, success, taken, IamError};
use super::iam_manage::{delete_conflict, page_of, paging, policy_document_xml};
use crate::app::principals::iam_arn;
use crate::app::roles::{self, Assumer, NewRole};
use crate::app::sessions::{self, SessionError, SessionPrincipal};
use crate::app::AppState;
use crate::auth::policy::{Decision, Policy, PolicyError};
use crate::store::{PrincipalKind, RoleRecord, StoreError, MAX_PRINCIPAL_TAGS};

/// The longest session a role session may get by assuming another role.
const ROLE_CHAINING_LIMIT: Duration = Duration::from_secs(3600);
/// Longest tag key and value IAM accepts, in characters.
const MAX_TAG_KEY_CHARS: usize = 128;
const MAX_TAG_VALUE_CHARS: usize = 256;

fn validation(message: impl Into<String>) -> IamError {
    IamError(StatusCode::BAD_REQUEST, "ValidationError", message.into())
}

fn malformed(e: &PolicyError) -> IamError {
    IamError(StatusCode::BAD_REQUEST, PolicyError::CODE, e.to_string())
}

fn no_such_role(name: &str) -> IamError {
    IamError(
        StatusCode::NOT_FOUND,
        "NoSuchEntity",
        format!("The role with name {name} cannot be found."),
    )
}

/// `Name.member.1`, `Name.member.2`, ... in order, until the first gap.
pub(super) fn members(params: &HashMap<String, String>, name: &str) -> Vec<String> {
    (1..)
        .map_while(|i| params.get(&format!("{name}.member.{i}")).cloned())
        .collect()
}

/// `Tags.member.N.Key` / `.Value`, validated as IAM does.
fn tags_param(params: &HashMap<String, String>) -> Result<Vec<(String, String)>, IamError> {
    let mut tags = Vec::new();
    for i in 1.. {
        let Some(key) = params.get(&format!("Tags.member.{i}.Key")) else {
            break;
        };
        let value = params
            .get(&format!("Tags.member.{i}.Value"))
            .cloned()
            .unwrap_or_default();
        if key.is_empty() || key.chars().count() > MAX_TAG_KEY_CHARS {
            return Err(validation(format!(
                "1 validation error detected: Value '{key}' at 'tags.{i}.member.key' failed to satisfy constraint: Member must have length between 1 and {MAX_TAG_KEY_CHARS}"
            )));
        }
        if value.chars().count() > MAX_TAG_VALUE_CHARS {
            return Err(validation(format!(
                "1 validation error detected: Value at 'tags.{i}.member.value' failed to satisfy constraint: Member must have length less than or equal to {MAX_TAG_VALUE_CHARS}"
            )));
        }
        if key.to_ascii_lowercase().starts_with("aws:") {
            return Err(IamError(
                StatusCode::BAD_REQUEST,
                "InvalidInput",
                "Tag keys starting with 'aws:' are reserved for AWS.".to_owned(),
            ));
        }
        tags.push((key.clone(), value));
    }
    Ok(tags)
}

fn tags_xml(tags: &[(String, String)]) -> String {
    let mut out = String::new();
    for (k, v) in tags {
        let _ = write!(
            out,
            "<member><Key>{}</Key><Value>{}</Value></member>",
            escape(k),
            escape(v)
        );
    }
    out
}

fn role_xml(role: &RoleRecord, tags: Option<&[(String, String)]>) -> String {
    let e = &role.entity;
    let mut out = format!(
        "<Path>{}</Path><RoleName>{}</RoleName><RoleId>{}</RoleId><Arn>{}</Arn>\
         <CreateDate>{}</CreateDate>{}<MaxSessionDuration>{}</MaxSessionDuration>",
        escape(&e.path),
        escape(&e.name),
        escape(&e.id),
        escape(&e.arn),
        date(e.created_at),
        policy_document_xml("AssumeRolePolicyDocument", &role.assume_role_policy),
        role.max_session_duration
    );
    if !role.description.is_empty() {
        let _ = write!(
            out,
            "<Description>{}</Description>",
            escape(&role.description)
        );
    }
    if let Some(tags) = tags.filter(|t| !t.is_empty()) {
        let _ = write!(out, "<Tags>{}</Tags>", tags_xml(tags));
    }
    out
}

fn tag_limit() -> IamError {
    IamError(
        StatusCode::CONFLICT,
        "LimitExceeded",
        format!("The number of tags has reached the maximum limit of {MAX_PRINCIPAL_TAGS}."),
    )
}

/// Handles the actions of this module; `None` for any other action.
pub(super) async fn dispatch(
    state: &AppState,
    caller: &VerifiedCaller,
    action: &str,
    params: &HashMap<String, String>,
) -> Option<Result<Response, IamError>> {
    let result = match action {
        "CreateRole" | "GetRole" | "ListRoles" | "DeleteRole" | "UpdateAssumeRolePolicy" => {
            role_action(state, caller, action, params).await
        }
        "AssumeRole" => assume_role(state, caller, params).await,
        "TagUser" | "UntagUser" | "ListUserTags" | "TagRole" | "UntagRole" | "ListRoleTags" => {
            tag_action(state, caller, action, params).await
        }
        _ => return None,
    };
    Some(result)
}

async fn find_role(state: &AppState, account: &str, name: &str) -> Result<RoleRecord, IamError> {
    state
        .store
        .role_get_by_name(account, name)
        .await?
        .ok_or_else(|| no_such_role(name))
}

async fn role_action(
    state: &AppState,
    caller: &VerifiedCaller,
    action: &str,
    params: &HashMap<String, String>,
) -> Result<Response, IamError> {
    let config = &state.config;
    let store = &state.store;
    let account = caller.user.account_id.as_str();
    let iam_action = format!("iam:{action}");
    let role_arn = |name: &str| iam_arn(&config.partition, account, "role", "/", name);
    match action {
        "CreateRole" => {
            let name = param(params, "RoleName")?;
            let document = param(params, "AssumeRolePolicyDocument")?;
            authorize(caller, &iam_action, &role_arn(name))?;
            roles::validate_trust_policy(document).map_err(|e| malformed(&e))?;
            let max_session_duration = match params.get("MaxSessionDuration") {
                None => roles::DEFAULT_MAX_SESSION_SECS,
                Some(v) => v
                    .parse::<i32>()
                    .ok()
                    .filter(|v| roles::MAX_SESSION_SECS_RANGE.contains(v))
                    .ok_or_else(|| {
                        validation(format!(
                            "1 validation error detected: Value '{v}' at 'maxSessionDuration' failed to satisfy constraint: Member must have value between 3600 and 43200"
                        ))
                    })?,
            };
            let tags = tags_param(params)?;
            if tags.len() > MAX_PRINCIPAL_TAGS {
                return Err(tag_limit());
            }
            let role = roles::role_create(
                store,
                &NewRole {
                    partition: &config.partition,
                    account_id: account,
                    name,
                    assume_role_policy: document,
                    max_session_duration,
                    description: params.get("Description").map_or("", String::as_str),
                },
            )
            .await
            .map_err(|e| taken(e, "Role", name))?;
            if !tags.is_empty() {
                store
                    .principal_tags_put(PrincipalKind::Role, &role.entity.id, &tags)
                    .await?;
            }
            Ok(success(
                action,
                Some(format!("<Role>{}</Role>", role_xml(&role, Some(&tags)))),
            ))
        }
        "GetRole" => {
            let name = param(params, "RoleName")?;
            authorize(caller, &iam_action, &role_arn(name))?;
            let role = find_role(state, account, name).await?;
            let tags = store
                .principal_tags_list(PrincipalKind::Role, &role.entity.id)
                .await?;
            Ok(success(
                action,
                Some(format!("<Role>{}</Role>", role_xml(&role, Some(&tags)))),
            ))
        }
        "ListRoles" => {
            authorize(caller, &iam_action, "*")?;
            let (marker, max_items) = paging(params)?;
            let rows = store
                .role_page(account, marker.as_deref(), max_items + 1)
                .await?;
            let (rows, tail) = page_of(rows, max_items, |r| r.entity.name.clone());
            let mut members = String::new();
            for r in &rows {
                let _ = write!(members, "<member>{}</member>", role_xml(r, None));
            }
            Ok(success(
                action,
                Some(format!("<Roles>{members}</Roles>{tail}")),
            ))
        }
        "UpdateAssumeRolePolicy" => {
            let name = param(params, "RoleName")?;
            let document = param(params, "PolicyDocument")?;
            authorize(caller, &iam_action, &role_arn(name))?;
            roles::validate_trust_policy(document).map_err(|e| malformed(&e))?;
            let role = find_role(state, account, name).await?;
            store
                .role_set_trust_policy(&role.entity.id, document)
                .await?;
            Ok(success(action, None))
        }
        "DeleteRole" => {
            let name = param(params, "RoleName")?;
            authorize(caller, &iam_action, &role_arn(name))?;
            let role = find_role(state, account, name).await?;
            let usage = store
                .principal_usage(PrincipalKind::Role, &role.entity.id)
                .await?;
            delete_conflict(PrincipalKind::Role, &usage)?;
            match store
                .iam_entity_delete(PrincipalKind::Role, &role.entity.id)
                .await
            {
                Ok(()) | Err(StoreError::NotFound(_)) => Ok(success(action, None)),
                Err(e) => Err(e.into()),
            }
        }
        _ => unreachable!("dispatch routes only role actions here"),
    }
}

/// STS AssumeRole: allowed when the caller's identity policies allow
/// `sts:AssumeRole` on the role and the role's trust policy names the caller.
/// A role that does not exist is refused like one that does not trust the
/// caller, so that the answer does not reveal which roles exist.
async fn assume_role(
    state: &AppState,
    caller: &VerifiedCaller,
    params: &HashMap<String, String>,
) -> Result<Response, IamError> {
    const ACTION: &str = "sts:AssumeRole";
    let role_arn = param(params, "RoleArn")?;
    let session_name = param(params, "RoleSessionName")?;
    let duration = match params.get("DurationSeconds") {
        None => sessions::DEFAULT_SESSION,
        Some(v) => Duration::from_secs(v.parse::<u64>().map_err(|_| {
            validation(format!(
                "1 validation error detected: Value '{v}' at 'durationSeconds' failed to satisfy constraint: Member must be a number"
            ))
        })?),
    };
    // Role chaining: a role session may assume a role for at most an hour, as in AWS.
    let chained = caller.session.as_ref().is_some_and(|s| s.role.is_some());
    if chained && duration > ROLE_CHAINING_LIMIT {
        return Err(validation(
            "The requested DurationSeconds exceeds the 1 hour session limit for roles assumed by role chaining.",
        ));
    }
    let session_policy = params.get("Policy").filter(|p| !p.is_empty());
    if let Some(doc) = session_policy {
        Policy::parse(doc).map_err(|e| malformed(&e))?;
    }
    if roles::parse_role_arn(role_arn).is_none() {
        return Err(validation(format!(
            "{role_arn} is invalid: the role ARN must be arn:<partition>:iam::<account>:role/<name>"
        )));
    }
    let denied = || {
        // The identity policy allowed it (and was recorded so): record the refusal.
        let _ = super::audit::note_decision(ACTION, role_arn, &Decision::ImplicitDeny);
        IamError(
            StatusCode::FORBIDDEN,
            "AccessDenied",
            format!(
                "User: {} is not authorized to perform: {ACTION} on resource: {role_arn}",
                caller.user.arn
            ),
        )
    };
    authorize(caller, ACTION, role_arn)?;
    let (account, name) = roles::parse_role_arn(role_arn).expect("checked above");
    let role = match state.store.role_get_by_name(account, name).await? {
        Some(role) if role.entity.arn == role_arn => role,
        _ => return Err(denied()),
    };
    let assumer = Assumer {
        arn: &caller.user.arn,
        role_arn: caller
            .session
            .as_ref()
            .and_then(|s| s.role.as_ref())
            .map(|r| r.arn.as_str()),
        account_id: &caller.user.account_id,
    };
    if !roles::trust_allows(&role, &assumer, &caller.context(ACTION, role_arn)) {
        tracing::info!(principal = %caller.user.arn, role = %role_arn, "AssumeRole refused by the trust policy");
        return Err(denied());
    }
    let credentials = sessions::issue_session(
        &state.store,
        &state.master_key,
        SessionPrincipal::Role {
            role: &role,
            session_name,
        },
        duration,
        session_policy.map(String::as_str),
        &caller.user.arn,
    )
    .await
    .map_err(|e| match e {
        SessionError::InvalidDuration { .. } | SessionError::InvalidSessionName(_) => {
            validation(e.to_string())
        }
        SessionError::MalformedPolicy(p) => malformed(&p),
        SessionError::Store(s) => s.into(),
    })?;
    Ok(success(
        "AssumeRole",
        Some(format!(
            "<Credentials><AccessKeyId>{}</AccessKeyId><SecretAccessKey>{}</SecretAccessKey>\
             <SessionToken>{}</SessionToken><Expiration>{}</Expiration></Credentials>\
             <AssumedRoleUser><AssumedRoleId>{}</AssumedRoleId><Arn>{}</Arn></AssumedRoleUser>",
            credentials.access_key_id,
            escape(&credentials.secret_access_key),
            escape(&credentials.session_token),
            date(credentials.expiration),
            escape(&credentials.principal_id),
            escape(&credentials.arn)
        )),
    ))
}

async fn tag_action(
    state: &AppState,
    caller: &VerifiedCaller,
    action: &str,
    params: &HashMap<String, String>,
) -> Result<Response, IamError> {
    let config = &state.config;
    let store = &state.store;
    let account = caller.user.account_id.as_str();
    let iam_action = format!("iam:{action}");
    let (kind, name) = if action.ends_with("UserTags") || action.ends_with("User") {
        (PrincipalKind::User, param(params, "UserName")?)
    } else {
        (PrincipalKind::Role, param(params, "RoleName")?)
    };
    authorize(
        caller,
        &iam_action,
        &iam_arn(&config.partition, account, kind.as_str(), "/", name),
    )?;
    let id = match kind {
        PrincipalKind::Role => find_role(state, account, name).await?.entity.id,
        _ => {
            store
                .iam_entity_get_by_name(kind, account, name)
                .await?
                .ok_or_else(|| IamError::no_such_user(name))?
                .id
        }
    };
    match action {
        "TagUser" | "TagRole" => {
            let tags = tags_param(params)?;
            if tags.is_empty() {
                return Err(IamError::missing("tags"));
            }
            if !store.principal_tags_put(kind, &id, &tags).await? {
                return Err(tag_limit());
            }
            Ok(success(action, None))
        }
        "UntagUser" | "UntagRole" => {
            let keys = members(params, "TagKeys");
            if keys.is_empty() {
                return Err(IamError::missing("tagKeys"));
            }
            store.principal_tags_remove(kind, &id, &keys).await?;
            Ok(success(action, None))
        }
        _ => {
            let tags = store.principal_tags_list(kind, &id).await?;
            Ok(success(
                action,
                Some(format!(
                    "<Tags>{}</Tags><IsTruncated>false</IsTruncated>",
                    tags_xml(&tags)
                )),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn tags_and_members_are_read_in_order() {
        let p = params(&[
            ("Tags.member.1.Key", "team"),
            ("Tags.member.1.Value", "mq"),
            ("Tags.member.2.Key", "env"),
            ("TagKeys.member.1", "a"),
            ("TagKeys.member.2", "b"),
            ("TagKeys.member.4", "gap"),
        ]);
        let tags = tags_param(&p).ok().expect("valid tags");
        assert_eq!(
            tags,
            vec![
                ("team".to_owned(), "mq".to_owned()),
                ("env".to_owned(), String::new())
            ]
        );
        assert_eq!(members(&p, "TagKeys"), vec!["a", "b"]);
    }

    #[test]
    fn reserved_and_oversized_tags_are_refused() {
        let reserved = params(&[("Tags.member.1.Key", "aws:x"), ("Tags.member.1.Value", "v")]);
        assert_eq!(
            tags_param(&reserved).err().map(|e| e.1),
            Some("InvalidInput")
        );
        let long = "k".repeat(MAX_TAG_KEY_CHARS + 1);
        let oversized = params(&[("Tags.member.1.Key", long.as_str())]);
        assert_eq!(
            tags_param(&oversized).err().map(|e| e.1),
            Some("ValidationError")
        );
    }
}
