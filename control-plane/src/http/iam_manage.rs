//! The rest of the IAM Query subset on users, groups and policies: paged
//! listings (`Marker` / `MaxItems` / `IsTruncated`), deletes that refuse while
//! something still hangs on the entity (DeleteConflict, as IAM does), inline
//! and managed policies of users, groups and roles (get, list, delete, detach,
//! and put/attach for roles), group membership, and access key status.

use std::collections::HashMap;
use std::fmt::Write as _;

use axum::http::StatusCode;
use axum::response::Response;

use super::auth::VerifiedCaller;
use super::iam::{authorize, date, escape, param, success, user_xml, validate, IamError};
use crate::app::principals::iam_arn;
use crate::app::AppState;
use crate::store::{
    Constraint, IamEntityRecord, ManagedPolicyRecord, PrincipalKind, PrincipalUsage, StoreError,
};

/// IAM's default and largest `MaxItems`.
const DEFAULT_MAX_ITEMS: i64 = 100;
const LARGEST_MAX_ITEMS: i64 = 1000;

/// The `Marker` (the last name of the previous page) and `MaxItems` of a listing.
pub(super) fn paging(params: &HashMap<String, String>) -> Result<(Option<String>, i64), IamError> {
    let max_items = match params.get("MaxItems") {
        None => DEFAULT_MAX_ITEMS,
        Some(v) => v
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=LARGEST_MAX_ITEMS).contains(n))
            .ok_or_else(|| {
                IamError(
                    StatusCode::BAD_REQUEST,
                    "ValidationError",
                    format!("1 validation error detected: Value '{v}' at 'maxItems' failed to satisfy constraint: Member must have value between 1 and {LARGEST_MAX_ITEMS}"),
                )
            })?,
    };
    let marker = params.get("Marker").filter(|m| !m.is_empty()).cloned();
    Ok((marker, max_items))
}

/// Cuts `rows` (read with `max_items + 1`) to a page; returns it with the
/// `IsTruncated` (and `Marker`) elements that end the result.
pub(super) fn page_of<T>(
    mut rows: Vec<T>,
    max_items: i64,
    name: impl Fn(&T) -> String,
) -> (Vec<T>, String) {
    let max = usize::try_from(max_items).unwrap_or(usize::MAX);
    if rows.len() > max {
        rows.truncate(max);
        let marker = rows.last().map(&name).unwrap_or_default();
        let tail = format!(
            "<IsTruncated>true</IsTruncated><Marker>{}</Marker>",
            escape(&marker)
        );
        (rows, tail)
    } else {
        (rows, "<IsTruncated>false</IsTruncated>".to_owned())
    }
}

/// A policy document as IAM returns it: URL-encoded JSON (the AWS CLI decodes it).
pub(super) fn policy_document_xml(element: &str, document: &str) -> String {
    let mut encoded = String::with_capacity(document.len() * 3 / 2);
    for b in document.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            encoded.push(char::from(b));
        } else {
            let _ = write!(encoded, "%{b:02X}");
        }
    }
    format!("<{element}>{encoded}</{element}>")
}

/// Refuses to delete a principal that still holds keys, policies or members.
pub(super) fn delete_conflict(kind: PrincipalKind, usage: &PrincipalUsage) -> Result<(), IamError> {
    let reason = if usage.access_keys > 0 {
        "must delete access keys first"
    } else if usage.inline_policies > 0 {
        "must delete policies first"
    } else if usage.attached_policies > 0 {
        "must detach all policies first"
    } else if usage.memberships > 0 && kind == PrincipalKind::Group {
        "must remove users from group first"
    } else if usage.memberships > 0 {
        "must remove user from all groups first"
    } else {
        return Ok(());
    };
    Err(IamError(
        StatusCode::CONFLICT,
        "DeleteConflict",
        format!("Cannot delete entity, {reason}."),
    ))
}

fn group_xml(g: &IamEntityRecord) -> String {
    format!(
        "<Path>{}</Path><GroupName>{}</GroupName><GroupId>{}</GroupId><Arn>{}</Arn>\
         <CreateDate>{}</CreateDate>",
        escape(&g.path),
        escape(&g.name),
        escape(&g.id),
        escape(&g.arn),
        date(g.created_at)
    )
}

fn policy_xml(p: &ManagedPolicyRecord) -> String {
    let e = &p.entity;
    format!(
        "<PolicyName>{}</PolicyName><PolicyId>{}</PolicyId><Arn>{}</Arn><Path>{}</Path>\
         <DefaultVersionId>v1</DefaultVersionId><AttachmentCount>{}</AttachmentCount>\
         <IsAttachable>true</IsAttachable><CreateDate>{}</CreateDate><UpdateDate>{}</UpdateDate>",
        escape(&e.name),
        escape(&e.id),
        escape(&e.arn),
        escape(&e.path),
        p.attachment_count,
        date(e.created_at),
        date(e.created_at)
    )
}

/// Which principal kind a per-kind action (`GetUserPolicy`, `DetachRolePolicy`, ...) is about.
fn kind_of(action: &str) -> PrincipalKind {
    if action.contains("Group") {
        PrincipalKind::Group
    } else if action.contains("Role") {
        PrincipalKind::Role
    } else {
        PrincipalKind::User
    }
}

/// `UserName`, `GroupName` or `RoleName`, and IAM's word for the kind.
fn name_param(kind: PrincipalKind) -> (&'static str, &'static str) {
    match kind {
        PrincipalKind::User => ("UserName", "user"),
        PrincipalKind::Group => ("GroupName", "group"),
        PrincipalKind::Role => ("RoleName", "role"),
    }
}

fn no_such(what: &str, name: &str) -> IamError {
    IamError(
        StatusCode::NOT_FOUND,
        "NoSuchEntity",
        format!("The {what} with name {name} cannot be found."),
    )
}

struct Ctx<'a> {
    state: &'a AppState,
    caller: &'a VerifiedCaller,
    action: &'a str,
    params: &'a HashMap<String, String>,
}

impl Ctx<'_> {
    fn account(&self) -> &str {
        &self.caller.user.account_id
    }

    fn arn(&self, kind: PrincipalKind, name: &str) -> String {
        iam_arn(
            &self.state.config.partition,
            self.account(),
            kind.as_str(),
            "/",
            name,
        )
    }

    /// The principal the action names, after authorizing `iam:<Action>` on it.
    /// `UserName` may be left out where IAM lets it default to the caller.
    async fn principal(
        &self,
        kind: PrincipalKind,
        user_defaults_to_caller: bool,
    ) -> Result<IamEntityRecord, IamError> {
        let (param_name, what) = name_param(kind);
        let name = match self.params.get(param_name).filter(|v| !v.is_empty()) {
            Some(name) => name.clone(),
            None if user_defaults_to_caller && kind == PrincipalKind::User => {
                self.caller.user.name.clone()
            }
            None => return Err(IamError::missing(&lower_first(param_name))),
        };
        authorize(
            self.caller,
            &format!("iam:{}", self.action),
            &self.arn(kind, &name),
        )?;
        let store = &self.state.store;
        let found = match kind {
            PrincipalKind::Role => store
                .role_get_by_name(self.account(), &name)
                .await?
                .map(|r| r.entity),
            _ => {
                store
                    .iam_entity_get_by_name(kind, self.account(), &name)
                    .await?
            }
        };
        found.ok_or_else(|| no_such(what, &name))
    }
}

fn lower_first(s: &str) -> String {
    let mut chars = s.chars();
    chars
        .next()
        .map(|c| c.to_ascii_lowercase().to_string() + chars.as_str())
        .unwrap_or_default()
}

/// Handles the actions of this module; `None` for any other action.
pub(super) async fn dispatch(
    state: &AppState,
    caller: &VerifiedCaller,
    action: &str,
    params: &HashMap<String, String>,
) -> Option<Result<Response, IamError>> {
    let cx = Ctx {
        state,
        caller,
        action,
        params,
    };
    let result = match action {
        "ListUsers" | "ListGroups" | "ListPolicies" => list(&cx).await,
        "ListAccessKeys" | "UpdateAccessKey" => access_keys(&cx).await,
        "DeleteUser" | "DeleteGroup" => delete_principal(&cx).await,
        "DeletePolicy" | "GetPolicy" => managed_policy(&cx).await,
        "GetGroup" | "RemoveUserFromGroup" | "ListGroupsForUser" => groups(&cx).await,
        "GetUserPolicy" | "GetGroupPolicy" | "GetRolePolicy" | "DeleteUserPolicy"
        | "DeleteGroupPolicy" | "DeleteRolePolicy" | "ListUserPolicies" | "ListGroupPolicies"
        | "ListRolePolicies" | "PutRolePolicy" => inline_policy(&cx).await,
        "AttachRolePolicy"
        | "DetachUserPolicy"
        | "DetachGroupPolicy"
        | "DetachRolePolicy"
        | "ListAttachedUserPolicies"
        | "ListAttachedGroupPolicies"
        | "ListAttachedRolePolicies" => attached_policy(&cx).await,
        _ => return None,
    };
    Some(result)
}

async fn list(cx: &Ctx<'_>) -> Result<Response, IamError> {
    authorize(cx.caller, &format!("iam:{}", cx.action), "*")?;
    let (marker, max_items) = paging(cx.params)?;
    let store = &cx.state.store;
    let marker = marker.as_deref();
    let body = match cx.action {
        "ListUsers" | "ListGroups" => {
            let (kind, element) = if cx.action == "ListUsers" {
                (PrincipalKind::User, "Users")
            } else {
                (PrincipalKind::Group, "Groups")
            };
            let rows = store
                .iam_entity_page(kind, cx.account(), marker, max_items + 1)
                .await?;
            let (rows, tail) = page_of(rows, max_items, |r| r.name.clone());
            let mut members = String::new();
            for r in &rows {
                let xml = if kind == PrincipalKind::User {
                    user_xml(r)
                } else {
                    group_xml(r)
                };
                let _ = write!(members, "<member>{xml}</member>");
            }
            format!("<{element}>{members}</{element}>{tail}")
        }
        _ => {
            // Only customer-managed policies exist here: Scope=AWS lists none.
            let scope = cx.params.get("Scope").map_or("All", String::as_str);
            let only_attached = cx
                .params
                .get("OnlyAttached")
                .is_some_and(|v| v.eq_ignore_ascii_case("true"));
            let rows = if scope == "AWS" {
                Vec::new()
            } else {
                store
                    .managed_policy_page(cx.account(), marker, max_items + 1, only_attached)
                    .await?
            };
            let (rows, tail) = page_of(rows, max_items, |r| r.entity.name.clone());
            let mut members = String::new();
            for r in &rows {
                let _ = write!(members, "<member>{}</member>", policy_xml(r));
            }
            format!("<Policies>{members}</Policies>{tail}")
        }
    };
    Ok(success(cx.action, Some(body)))
}

async fn access_keys(cx: &Ctx<'_>) -> Result<Response, IamError> {
    let user = cx.principal(PrincipalKind::User, true).await?;
    let store = &cx.state.store;
    if cx.action == "UpdateAccessKey" {
        let key_id = param(cx.params, "AccessKeyId")?;
        let status = param(cx.params, "Status")?;
        if !matches!(status, "Active" | "Inactive") {
            return Err(IamError(
                StatusCode::BAD_REQUEST,
                "ValidationError",
                format!("1 validation error detected: Value '{status}' at 'status' failed to satisfy constraint: Member must satisfy enum value set: [Active, Inactive]"),
            ));
        }
        store
            .access_key_set_status(&user.id, key_id, status)
            .await
            .map_err(|e| match e {
                StoreError::NotFound(_) => IamError(
                    StatusCode::NOT_FOUND,
                    "NoSuchEntity",
                    format!("The Access Key with id {key_id} cannot be found."),
                ),
                other => other.into(),
            })?;
        return Ok(success(cx.action, None));
    }
    let (marker, max_items) = paging(cx.params)?;
    let keys: Vec<_> = store
        .access_key_list(&user.id)
        .await?
        .into_iter()
        .filter(|k| {
            marker
                .as_deref()
                .is_none_or(|m| k.access_key_id.as_str() > m)
        })
        .collect();
    let (keys, tail) = page_of(keys, max_items, |k| k.access_key_id.clone());
    let mut members = String::new();
    for k in &keys {
        let _ = write!(
            members,
            "<member><UserName>{}</UserName><AccessKeyId>{}</AccessKeyId>\
             <Status>{}</Status><CreateDate>{}</CreateDate></member>",
            escape(&user.name),
            escape(&k.access_key_id),
            escape(&k.status),
            date(k.created_at)
        );
    }
    Ok(success(
        cx.action,
        Some(format!(
            "<AccessKeyMetadata>{members}</AccessKeyMetadata>{tail}"
        )),
    ))
}

async fn delete_principal(cx: &Ctx<'_>) -> Result<Response, IamError> {
    let kind = kind_of(cx.action);
    let entity = cx.principal(kind, false).await?;
    let store = &cx.state.store;
    delete_conflict(kind, &store.principal_usage(kind, &entity.id).await?)?;
    match store.iam_entity_delete(kind, &entity.id).await {
        // Deleted meanwhile by someone else: the outcome asked for.
        Ok(()) | Err(StoreError::NotFound(_)) => Ok(success(cx.action, None)),
        Err(e) => Err(e.into()),
    }
}

async fn managed_policy(cx: &Ctx<'_>) -> Result<Response, IamError> {
    let arn = param(cx.params, "PolicyArn")?;
    authorize(cx.caller, &format!("iam:{}", cx.action), arn)?;
    let store = &cx.state.store;
    let not_found = || {
        IamError(
            StatusCode::NOT_FOUND,
            "NoSuchEntity",
            format!("Policy {arn} was not found."),
        )
    };
    if cx.action == "GetPolicy" {
        let policy = store.managed_policy_get(arn).await?.ok_or_else(not_found)?;
        return Ok(success(
            cx.action,
            Some(format!("<Policy>{}</Policy>", policy_xml(&policy))),
        ));
    }
    store
        .managed_policy_delete(arn)
        .await
        .map_err(|e| match e {
            StoreError::NotFound(_) => not_found(),
            StoreError::Constraint(Constraint::Other) => IamError(
                StatusCode::CONFLICT,
                "DeleteConflict",
                "Cannot delete a policy attached to entities.".to_owned(),
            ),
            other => other.into(),
        })?;
    Ok(success(cx.action, None))
}

async fn groups(cx: &Ctx<'_>) -> Result<Response, IamError> {
    let store = &cx.state.store;
    match cx.action {
        "GetGroup" => {
            let group = cx.principal(PrincipalKind::Group, false).await?;
            let mut members = String::new();
            for u in store.iam_group_users(&group.id).await? {
                let _ = write!(members, "<member>{}</member>", user_xml(&u));
            }
            Ok(success(
                cx.action,
                Some(format!(
                    "<Group>{}</Group><Users>{members}</Users><IsTruncated>false</IsTruncated>",
                    group_xml(&group)
                )),
            ))
        }
        "ListGroupsForUser" => {
            let user = cx.principal(PrincipalKind::User, false).await?;
            let mut members = String::new();
            for g in store.iam_groups_for_user(&user.id).await? {
                let _ = write!(members, "<member>{}</member>", group_xml(&g));
            }
            Ok(success(
                cx.action,
                Some(format!(
                    "<Groups>{members}</Groups><IsTruncated>false</IsTruncated>"
                )),
            ))
        }
        _ => {
            // RemoveUserFromGroup: authorized on the group, as IAM does.
            let group = cx.principal(PrincipalKind::Group, false).await?;
            let user_name = param(cx.params, "UserName")?;
            let user = store
                .iam_entity_get_by_name(PrincipalKind::User, cx.account(), user_name)
                .await?
                .ok_or_else(|| no_such("user", user_name))?;
            match store.iam_group_remove_user(&group.id, &user.id).await {
                Ok(()) | Err(StoreError::NotFound(_)) => Ok(success(cx.action, None)),
                Err(e) => Err(e.into()),
            }
        }
    }
}

async fn inline_policy(cx: &Ctx<'_>) -> Result<Response, IamError> {
    let kind = kind_of(cx.action);
    let (param_name, what) = name_param(kind);
    let store = &cx.state.store;
    if cx.action == "PutRolePolicy" {
        let policy_name = param(cx.params, "PolicyName")?;
        let document = param(cx.params, "PolicyDocument")?;
        let role = cx.principal(kind, false).await?;
        validate(document)?;
        store
            .inline_policy_put(kind, &role.id, policy_name, document)
            .await?;
        return Ok(success(cx.action, None));
    }
    if cx.action.starts_with("List") {
        let entity = cx.principal(kind, false).await?;
        let mut members = String::new();
        for name in store.inline_policy_names(kind, &entity.id).await? {
            let _ = write!(members, "<member>{}</member>", escape(&name));
        }
        return Ok(success(
            cx.action,
            Some(format!(
                "<PolicyNames>{members}</PolicyNames><IsTruncated>false</IsTruncated>"
            )),
        ));
    }
    let policy_name = param(cx.params, "PolicyName")?;
    let entity = cx.principal(kind, false).await?;
    let not_found = || {
        IamError(
            StatusCode::NOT_FOUND,
            "NoSuchEntity",
            format!("The {what} policy with name {policy_name} cannot be found."),
        )
    };
    if cx.action.starts_with("Get") {
        let document = store
            .inline_policy_get(kind, &entity.id, policy_name)
            .await?
            .ok_or_else(not_found)?;
        return Ok(success(
            cx.action,
            Some(format!(
                "<{param_name}>{}</{param_name}><PolicyName>{}</PolicyName>{}",
                escape(&entity.name),
                escape(policy_name),
                policy_document_xml("PolicyDocument", &document)
            )),
        ));
    }
    store
        .inline_policy_delete(kind, &entity.id, policy_name)
        .await
        .map_err(|e| match e {
            StoreError::NotFound(_) => not_found(),
            other => other.into(),
        })?;
    Ok(success(cx.action, None))
}

async fn attached_policy(cx: &Ctx<'_>) -> Result<Response, IamError> {
    let kind = kind_of(cx.action);
    let entity = cx.principal(kind, false).await?;
    let store = &cx.state.store;
    if cx.action.starts_with("ListAttached") {
        let mut members = String::new();
        for (name, arn) in store.policy_attached_list(kind, &entity.id).await? {
            let _ = write!(
                members,
                "<member><PolicyName>{}</PolicyName><PolicyArn>{}</PolicyArn></member>",
                escape(&name),
                escape(&arn)
            );
        }
        return Ok(success(
            cx.action,
            Some(format!(
                "<AttachedPolicies>{members}</AttachedPolicies><IsTruncated>false</IsTruncated>"
            )),
        ));
    }
    let policy_arn = param(cx.params, "PolicyArn")?;
    let result = if cx.action == "AttachRolePolicy" {
        store.policy_attach(kind, &entity.id, policy_arn).await
    } else {
        store.policy_detach(kind, &entity.id, policy_arn).await
    };
    result.map_err(|e| match e {
        StoreError::NotFound(_) => IamError(
            StatusCode::NOT_FOUND,
            "NoSuchEntity",
            format!("Policy {policy_arn} was not found."),
        ),
        other => other.into(),
    })?;
    Ok(success(cx.action, None))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_end_with_a_marker_only_when_truncated() {
        let (rows, tail) = page_of(vec!["a", "b", "c"], 2, |s| (*s).to_owned());
        assert_eq!(rows, vec!["a", "b"]);
        assert_eq!(tail, "<IsTruncated>true</IsTruncated><Marker>b</Marker>");
        let (rows, tail) = page_of(vec!["a", "b"], 2, |s| (*s).to_owned());
        assert_eq!(rows.len(), 2);
        assert_eq!(tail, "<IsTruncated>false</IsTruncated>");
    }

    #[test]
    fn policy_documents_are_url_encoded() {
        assert_eq!(
            policy_document_xml("PolicyDocument", r#"{"a": "b/c"}"#),
            "<PolicyDocument>%7B%22a%22%3A%20%22b%2Fc%22%7D</PolicyDocument>"
        );
    }

    #[test]
    fn deletes_name_what_is_left() {
        let blocked = |usage: PrincipalUsage, kind| {
            delete_conflict(kind, &usage)
                .err()
                .map(|e| e.2)
                .unwrap_or_default()
        };
        assert!(blocked(
            PrincipalUsage {
                access_keys: 1,
                inline_policies: 1,
                ..Default::default()
            },
            PrincipalKind::User
        )
        .contains("access keys"));
        assert!(blocked(
            PrincipalUsage {
                memberships: 2,
                ..Default::default()
            },
            PrincipalKind::Group
        )
        .contains("remove users from group"));
        assert!(delete_conflict(PrincipalKind::Role, &PrincipalUsage::default()).is_ok());
    }
}
