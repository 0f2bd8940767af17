//! The IAM Query API subset at `POST /` (form-encoded `Action=…&Version=2010-05-08`,
//! SigV4 service `iam`, XML answers in IAM's shapes), so that `aws iam … --endpoint-url`
//! manages Mooring's principals. The caller was authenticated by
//! [`super::auth::authenticate`]; each action is authorized here, as `iam:<Action>`
//! on the ARN of the entity it names, like the Amazon MQ operations.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Extension, Form, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, SecondsFormat, Utc};

use super::auth::VerifiedCaller;
use crate::app::principals::{self, KeyError};
use crate::app::AppState;
use crate::auth::policy::{Decision, Policy, PolicyError};
use crate::store::{Constraint, IamEntityRecord, PrincipalKind, StoreError};

const XMLNS: &str = "https://iam.amazonaws.com/doc/2010-05-08/";

/// An IAM error: HTTP status, IAM's code, and the message for the client.
pub(super) struct IamError(
    pub(super) StatusCode,
    pub(super) &'static str,
    pub(super) String,
);

impl IamError {
    pub(super) fn no_such_user(name: &str) -> Self {
        IamError(
            StatusCode::NOT_FOUND,
            "NoSuchEntity",
            format!("The user with name {name} cannot be found."),
        )
    }

    pub(super) fn missing(param: &str) -> Self {
        IamError(
            StatusCode::BAD_REQUEST,
            "ValidationError",
            format!("1 validation error detected: Value null at '{param}' failed to satisfy constraint: Member must not be null"),
        )
    }
}

impl From<StoreError> for IamError {
    fn from(e: StoreError) -> Self {
        tracing::error!(
            error = format!("{:#}", anyhow::Error::new(e)),
            "IAM request failed"
        );
        IamError(
            StatusCode::INTERNAL_SERVER_ERROR,
            "ServiceFailure",
            "An internal error occurred. Try again later.".to_owned(),
        )
    }
}

pub(super) fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

fn xml(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "text/xml")], body).into_response()
}

/// IAM's error document.
pub fn error_response(status: StatusCode, code: &str, message: &str) -> Response {
    xml(
        status,
        format!(
            "<ErrorResponse xmlns=\"{XMLNS}\"><Error><Type>Sender</Type><Code>{}</Code>\
             <Message>{}</Message></Error><RequestId>{}</RequestId></ErrorResponse>",
            escape(code),
            escape(message),
            uuid::Uuid::new_v4()
        ),
    )
}

/// IAM's success document: `<{action}Response>`, the result (if any), metadata.
pub(super) fn success(action: &str, result: Option<String>) -> Response {
    let result = result
        .map(|r| format!("<{action}Result>{r}</{action}Result>"))
        .unwrap_or_default();
    xml(
        StatusCode::OK,
        format!(
            "<{action}Response xmlns=\"{XMLNS}\">{result}<ResponseMetadata><RequestId>{}\
             </RequestId></ResponseMetadata></{action}Response>",
            uuid::Uuid::new_v4()
        ),
    )
}

pub(super) fn date(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

pub(super) fn user_xml(u: &IamEntityRecord) -> String {
    format!(
        "<Path>{}</Path><UserName>{}</UserName><UserId>{}</UserId><Arn>{}</Arn>\
         <CreateDate>{}</CreateDate>",
        escape(&u.path),
        escape(&u.name),
        escape(&u.id),
        escape(&u.arn),
        date(u.created_at)
    )
}

pub async fn query(
    State(state): State<AppState>,
    Extension(caller): Extension<Arc<VerifiedCaller>>,
    Form(params): Form<HashMap<String, String>>,
) -> Response {
    let result = dispatch(&state, &caller, &params).await;
    // Anything but a read may have changed who can do what: cached principals are
    // dropped now that the write has committed (see `auth::cache`).
    let action = params.get("Action").map_or("", String::as_str);
    // AssumeRole only adds a session, and unknown keys are never cached.
    if !(action.starts_with("Get") || action.starts_with("List") || action == "AssumeRole") {
        crate::auth::cache::iam_changed();
    }
    match result {
        Ok(response) => response,
        Err(IamError(status, code, message)) => error_response(status, code, &message),
    }
}

pub(super) fn param<'a>(
    params: &'a HashMap<String, String>,
    name: &str,
) -> Result<&'a str, IamError> {
    params
        .get(name)
        .map(String::as_str)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| IamError::missing(name))
}

/// Refuses a policy document that cannot be evaluated, as IAM does at write time.
pub(super) fn validate(document: &str) -> Result<(), IamError> {
    Policy::parse(document)
        .map(|_| ())
        .map_err(|e: PolicyError| {
            IamError(StatusCode::BAD_REQUEST, PolicyError::CODE, e.to_string())
        })
}

/// A taken name is EntityAlreadyExists; anything else is the store's failure.
pub(super) fn taken(e: StoreError, what: &str, name: &str) -> IamError {
    match e {
        StoreError::Constraint(Constraint::IamEntityName) => IamError(
            StatusCode::CONFLICT,
            "EntityAlreadyExists",
            format!("{what} with name {name} already exists."),
        ),
        other => other.into(),
    }
}

/// Refuses the action unless the caller's policies allow it on `resource`.
pub(super) fn authorize(
    caller: &VerifiedCaller,
    action: &str,
    resource: &str,
) -> Result<(), IamError> {
    let decision = caller.decide(action, resource, |_| {});
    tracing::debug!(principal = %caller.user.arn, action, resource, decision = decision.as_str(), "authorization");
    super::audit::note_decision(action, resource, &decision).map_err(|_| {
        tracing::error!("refusing an IAM change: the audit trail cannot be written");
        IamError(
            StatusCode::INTERNAL_SERVER_ERROR,
            "ServiceFailure",
            "An internal error occurred. Try again later.".to_owned(),
        )
    })?;
    match decision {
        Decision::Allow(_) => Ok(()),
        Decision::ExplicitDeny(_) | Decision::ImplicitDeny => Err(IamError(
            StatusCode::FORBIDDEN,
            "AccessDenied",
            format!(
                "User: {} is not authorized to perform: {action} on resource: {resource}",
                caller.user.arn
            ),
        )),
    }
}

async fn dispatch(
    state: &AppState,
    caller: &VerifiedCaller,
    params: &HashMap<String, String>,
) -> Result<Response, IamError> {
    let action = param(params, "Action")?;
    // Roles, STS and tags; the rest of the user, group and policy actions, with paging.
    if let Some(result) = super::iam_roles::dispatch(state, caller, action, params).await {
        return result;
    }
    if let Some(result) = super::iam_manage::dispatch(state, caller, action, params).await {
        return result;
    }
    let config = &state.config;
    let account = caller.user.account_id.as_str();
    let user_arn = |name: &str| principals::iam_arn(&config.partition, account, "user", "/", name);
    let iam_action = format!("iam:{action}");
    let store = &state.store;

    // The user an action names; `UserName` defaults to the caller for the actions
    // where IAM allows that.
    let target_user = |required: bool| -> Result<String, IamError> {
        match params.get("UserName").filter(|v| !v.is_empty()) {
            Some(name) => Ok(name.clone()),
            None if !required => Ok(caller.user.name.clone()),
            None => Err(IamError::missing("userName")),
        }
    };
    let find_user = |name: String| async move {
        store
            .iam_entity_get_by_name(PrincipalKind::User, account, &name)
            .await?
            .ok_or_else(|| IamError::no_such_user(&name))
    };

    let group_arn =
        |name: &str| principals::iam_arn(&config.partition, account, "group", "/", name);
    let find_group = |name: &str| {
        let name = name.to_owned();
        async move {
            store
                .iam_entity_get_by_name(PrincipalKind::Group, account, &name)
                .await?
                .ok_or_else(|| {
                    IamError(
                        StatusCode::NOT_FOUND,
                        "NoSuchEntity",
                        format!("The group with name {name} cannot be found."),
                    )
                })
        }
    };

    match action {
        "CreateUser" => {
            let name = target_user(true)?;
            authorize(caller, &iam_action, &user_arn(&name))?;
            let user = principals::user_create(store, &config.partition, account, &name)
                .await
                .map_err(|e| taken(e, "User", &name))?;
            Ok(success(
                action,
                Some(format!("<User>{}</User>", user_xml(&user))),
            ))
        }
        "GetUser" => {
            let name = target_user(false)?;
            authorize(caller, &iam_action, &user_arn(&name))?;
            let user = find_user(name).await?;
            Ok(success(
                action,
                Some(format!("<User>{}</User>", user_xml(&user))),
            ))
        }
        "CreateAccessKey" => {
            let name = target_user(false)?;
            authorize(caller, &iam_action, &user_arn(&name))?;
            let user = find_user(name).await?;
            let key = principals::access_key_create(store, &state.master_key, &user.id)
                .await
                .map_err(|e| match e {
                    KeyError::LimitExceeded => IamError(
                        StatusCode::CONFLICT,
                        "LimitExceeded",
                        KeyError::LimitExceeded.to_string(),
                    ),
                    KeyError::Store(e) => e.into(),
                })?;
            Ok(success(
                action,
                Some(format!(
                    "<AccessKey><UserName>{}</UserName><AccessKeyId>{}</AccessKeyId>\
                     <Status>{}</Status><SecretAccessKey>{}</SecretAccessKey>\
                     <CreateDate>{}</CreateDate></AccessKey>",
                    escape(&user.name),
                    key.access_key_id,
                    principals::KEY_ACTIVE,
                    escape(&key.secret_access_key),
                    date(Utc::now())
                )),
            ))
        }
        "DeleteAccessKey" => {
            let name = target_user(false)?;
            let key_id = param(params, "AccessKeyId")?;
            authorize(caller, &iam_action, &user_arn(&name))?;
            let user = find_user(name).await?;
            store
                .access_key_delete(&user.id, key_id)
                .await
                .map_err(|e| match e {
                    StoreError::NotFound(_) => IamError(
                        StatusCode::NOT_FOUND,
                        "NoSuchEntity",
                        format!("The Access Key with id {key_id} cannot be found."),
                    ),
                    other => other.into(),
                })?;
            Ok(success(action, None))
        }
        "PutUserPolicy" => {
            let name = target_user(true)?;
            let policy_name = param(params, "PolicyName")?;
            let document = param(params, "PolicyDocument")?;
            authorize(caller, &iam_action, &user_arn(&name))?;
            validate(document)?;
            let user = find_user(name).await?;
            store
                .inline_policy_put(PrincipalKind::User, &user.id, policy_name, document)
                .await?;
            Ok(success(action, None))
        }
        "CreateGroup" => {
            let name = param(params, "GroupName")?;
            authorize(caller, &iam_action, &group_arn(name))?;
            let group = principals::entity_create(
                store,
                PrincipalKind::Group,
                &config.partition,
                account,
                name,
            )
            .await
            .map_err(|e| taken(e, "Group", name))?;
            Ok(success(
                action,
                Some(format!(
                    "<Group><Path>{}</Path><GroupName>{}</GroupName><GroupId>{}</GroupId>                     <Arn>{}</Arn><CreateDate>{}</CreateDate></Group>",
                    escape(&group.path),
                    escape(&group.name),
                    escape(&group.id),
                    escape(&group.arn),
                    date(group.created_at)
                )),
            ))
        }
        "AddUserToGroup" => {
            let name = param(params, "GroupName")?;
            authorize(caller, &iam_action, &group_arn(name))?;
            let group = find_group(name).await?;
            let user = find_user(target_user(true)?).await?;
            store.iam_group_add_user(&group.id, &user.id).await?;
            Ok(success(action, None))
        }
        "PutGroupPolicy" => {
            let name = param(params, "GroupName")?;
            let policy_name = param(params, "PolicyName")?;
            let document = param(params, "PolicyDocument")?;
            authorize(caller, &iam_action, &group_arn(name))?;
            validate(document)?;
            let group = find_group(name).await?;
            store
                .inline_policy_put(PrincipalKind::Group, &group.id, policy_name, document)
                .await?;
            Ok(success(action, None))
        }
        "CreatePolicy" => {
            let name = param(params, "PolicyName")?;
            let document = param(params, "PolicyDocument")?;
            let arn = principals::iam_arn(&config.partition, account, "policy", "/", name);
            authorize(caller, &iam_action, &arn)?;
            validate(document)?;
            let policy = principals::managed_policy_create(
                store,
                &config.partition,
                account,
                name,
                document,
            )
            .await
            .map_err(|e| taken(e, "Policy", name))?;
            Ok(success(
                action,
                Some(format!(
                    "<Policy><PolicyName>{}</PolicyName><PolicyId>{}</PolicyId><Arn>{}</Arn>                     <Path>{}</Path><DefaultVersionId>v1</DefaultVersionId>                     <AttachmentCount>0</AttachmentCount><IsAttachable>true</IsAttachable>                     <CreateDate>{}</CreateDate><UpdateDate>{}</UpdateDate></Policy>",
                    escape(&policy.name),
                    escape(&policy.id),
                    escape(&policy.arn),
                    escape(&policy.path),
                    date(policy.created_at),
                    date(policy.created_at)
                )),
            ))
        }
        "AttachUserPolicy" | "AttachGroupPolicy" => {
            let policy_arn = param(params, "PolicyArn")?;
            let (kind, principal_id) = if action == "AttachUserPolicy" {
                let name = target_user(true)?;
                authorize(caller, &iam_action, &user_arn(&name))?;
                (PrincipalKind::User, find_user(name).await?.id)
            } else {
                let name = param(params, "GroupName")?;
                authorize(caller, &iam_action, &group_arn(name))?;
                (PrincipalKind::Group, find_group(name).await?.id)
            };
            store
                .policy_attach(kind, &principal_id, policy_arn)
                .await
                .map_err(|e| match e {
                    StoreError::NotFound(_) => IamError(
                        StatusCode::NOT_FOUND,
                        "NoSuchEntity",
                        format!("Policy {policy_arn} does not exist or is not attachable."),
                    ),
                    other => other.into(),
                })?;
            Ok(success(action, None))
        }
        // STS: needs no permission, as in AWS.
        "GetCallerIdentity" => Ok(success(
            action,
            Some(format!(
                "<Arn>{}</Arn><UserId>{}</UserId><Account>{}</Account>",
                escape(&caller.user.arn),
                escape(&caller.user.id),
                escape(account)
            )),
        )),
        // Mooring's own actions (AWS login mappings), then nothing.
        _ => match super::login::query_action(state, caller, action, params).await {
            Some(response) => Ok(response),
            None => Err(IamError(
                StatusCode::BAD_REQUEST,
                "InvalidAction",
                format!("Could not find operation {action} for version 2010-05-08"),
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xml_is_escaped() {
        assert_eq!(escape("a<b>&\"'"), "a&lt;b&gt;&amp;&quot;&apos;");
    }
}
