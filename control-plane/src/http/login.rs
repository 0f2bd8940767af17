//! Logging in with a real AWS identity over HTTP (a Mooring extension; the rules
//! are in `app::aws_login`):
//!
//! - `POST /v1/login/aws` trades a signed `sts:GetCallerIdentity` request for
//!   temporary Mooring credentials. It is not SigV4-authenticated by Mooring: the
//!   body is the proof. It is rate limited per source address.
//! - The IAM Query actions `CreateAwsLoginMapping`, `DeleteAwsLoginMapping` and
//!   `ListAwsLoginMappings` (at `POST /`, signed for service `iam`, authorized as
//!   `iam:<Action>`) manage which AWS principals may log in as which Mooring role.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::VerifiedCaller;
use crate::api::{timestamp, ErrorBody};
use crate::app::aws_login::{self, LoginError, LoginRequest, MappingError};
use crate::app::principals::iam_arn;
use crate::app::AppState;
use crate::auth::policy::Decision;
use crate::error::ApiError;

/// The largest login body read: a signed request is well under 8 KiB.
pub const MAX_LOGIN_BYTES: usize = 64 * 1024;

/// A signed `sts:GetCallerIdentity` request, not sent: the shape of HashiCorp
/// Vault's aws auth login (`iam_http_request_method`, `iam_request_url`, ...),
/// camelCased.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AwsLoginInput {
    /// `POST`.
    pub iam_http_request_method: String,
    /// Base64 of the request URL: this server's configured STS endpoint.
    pub iam_request_url: String,
    /// Base64 of a JSON object of the request's headers (a value may be a string or
    /// a list of strings). Must include a signed `X-Mooring-Server-ID`.
    pub iam_request_headers: String,
    /// Base64 of the request body: `Action=GetCallerIdentity&Version=2011-06-15`.
    pub iam_request_body: String,
    /// How long the Mooring credentials last, 900 up to the role's maximum session
    /// duration; default 3600.
    pub duration_seconds: Option<u64>,
}

/// Temporary Mooring credentials, as STS's `Credentials` (camelCased).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LoginCredentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: String,
    /// ISO 8601, UTC.
    pub expiration: String,
}

/// Who STS said signed the request.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AwsIdentity {
    pub arn: String,
    pub account: String,
    pub user_id: String,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AwsLoginOutput {
    pub credentials: LoginCredentials,
    /// The Mooring role the credentials act as.
    pub role_arn: String,
    /// The ARN requests signed with the credentials act as (`assumed-role/<role>/aws-<name>`).
    pub assumed_role_arn: String,
    pub aws_identity: AwsIdentity,
    /// Mooring names of the policies copied from AWS at this login (empty unless the
    /// mapping imports policies).
    pub imported_policies: Vec<String>,
}

#[utoipa::path(
    post,
    path = "/v1/login/aws",
    tag = "Mooring extensions",
    operation_id = "LoginWithAws",
    description = "Trades a signed sts:GetCallerIdentity request (carrying a signed \
                   X-Mooring-Server-ID header) for temporary Mooring credentials of the \
                   Mooring role its AWS identity is mapped to. Off unless the server runs \
                   with --aws-login-sts-endpoint. Not SigV4-signed itself.",
    request_body = AwsLoginInput,
    responses(
        (status = 200, body = AwsLoginOutput),
        (status = 400, description = "BadRequestException: not a GetCallerIdentity to this server's STS endpoint", body = ErrorBody),
        (status = 401, description = "UnauthorizedException: the server id is missing, unsigned or wrong, or STS refused the signature", body = ErrorBody),
        (status = 403, description = "ForbiddenException: the AWS identity is not mapped, or its policies cannot be imported", body = ErrorBody),
        (status = 404, description = "NotFoundException: AWS login is off", body = ErrorBody),
        (status = 429, description = "ThrottlingException", body = ErrorBody),
        (status = 503, description = "ServiceUnavailableException: STS or IAM cannot be reached", body = ErrorBody),
    )
)]
pub async fn login(State(state): State<AppState>, body: Bytes) -> Response {
    // Unauthenticated: the per-principal limiter keys on the source address instead.
    let source = super::audit::source_ip()
        .map(|ip| ip.to_string())
        .unwrap_or_else(|| "unknown".to_owned());
    if let Some(throttled) = super::throttle::check(&state, &format!("aws-login:{source}"), false) {
        return throttled;
    }
    let request = match parse_input(&body) {
        Ok(request) => request,
        Err(e) => return login_error(e),
    };
    let outcome = aws_login::login(
        state.aws_login.as_deref(),
        &state.store,
        &state.master_key,
        &state.config.partition,
        request,
    )
    .await;
    match outcome {
        Ok(outcome) => {
            super::audit::note_principal(&outcome.aws_identity.arn);
            let c = outcome.credentials;
            Json(AwsLoginOutput {
                credentials: LoginCredentials {
                    access_key_id: c.access_key_id,
                    secret_access_key: c.secret_access_key,
                    session_token: c.session_token,
                    expiration: timestamp(c.expiration),
                },
                role_arn: outcome.role_arn,
                assumed_role_arn: c.arn,
                aws_identity: AwsIdentity {
                    arn: outcome.aws_identity.arn,
                    account: outcome.aws_identity.account,
                    user_id: outcome.aws_identity.user_id,
                },
                imported_policies: outcome.imported_policies,
            })
            .into_response()
        }
        Err(e) => login_error(e),
    }
}

/// Decodes the JSON body into the signed request it carries.
fn parse_input(body: &[u8]) -> Result<LoginRequest, LoginError> {
    if body.len() > MAX_LOGIN_BYTES {
        return Err(LoginError::BadRequest(format!(
            "The login body is larger than {MAX_LOGIN_BYTES} bytes."
        )));
    }
    let input: AwsLoginInput = serde_json::from_slice(body).map_err(|e| {
        LoginError::BadRequest(format!(
            "The login body must be JSON with iamHttpRequestMethod, iamRequestUrl, \
             iamRequestHeaders and iamRequestBody: {e}"
        ))
    })?;
    let decode = |member: &str, text: &str| {
        base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|_| LoginError::BadRequest(format!("{member} is not valid base64.")))
    };
    let url = String::from_utf8(decode("iamRequestUrl", &input.iam_request_url)?)
        .map_err(|_| LoginError::BadRequest("iamRequestUrl is not UTF-8.".to_owned()))?;
    let headers_json = decode("iamRequestHeaders", &input.iam_request_headers)?;
    let headers = parse_headers(&headers_json)?;
    let body = decode("iamRequestBody", &input.iam_request_body)?;
    Ok(LoginRequest {
        method: input.iam_http_request_method,
        url,
        headers,
        body,
        duration: input.duration_seconds.map(Duration::from_secs),
    })
}

/// `{"Name": "value", "Other": ["a", "b"]}` as header pairs; a list becomes one
/// pair per value, in order.
fn parse_headers(json: &[u8]) -> Result<Vec<(String, String)>, LoginError> {
    let bad = || {
        LoginError::BadRequest(
            "iamRequestHeaders must be base64 of a JSON object of header names to a string \
             or a list of strings."
                .to_owned(),
        )
    };
    let object: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(json).map_err(|_| bad())?;
    let mut headers = Vec::new();
    for (name, value) in object {
        match value {
            serde_json::Value::String(v) => headers.push((name, v)),
            serde_json::Value::Array(values) => {
                for v in values {
                    let serde_json::Value::String(v) = v else {
                        return Err(bad());
                    };
                    headers.push((name.clone(), v));
                }
            }
            _ => return Err(bad()),
        }
    }
    Ok(headers)
}

/// A login error as an Amazon MQ-style error: name in `x-amzn-ErrorType`, message
/// in the body. Internal details are logged, never returned.
fn login_error(e: LoginError) -> Response {
    tracing::info!(error = %e, "AWS login refused");
    let api = match e {
        LoginError::Disabled => ApiError::NotFound {
            attribute: None,
            message: e.to_string(),
        },
        LoginError::BadRequest(message) => ApiError::BadRequest {
            attribute: None,
            message,
        },
        LoginError::Unauthenticated(message) => ApiError::Unauthorized { message },
        LoginError::Forbidden(message) => ApiError::Forbidden { message },
        LoginError::Internal(e) => ApiError::Internal(e),
        LoginError::Unavailable(message) => {
            tracing::warn!(%message, "AWS login: a peer is unavailable");
            let mut response = (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(ErrorBody {
                    error_attribute: None,
                    message,
                }),
            )
                .into_response();
            response.headers_mut().insert(
                "x-amzn-ErrorType",
                HeaderValue::from_static("ServiceUnavailableException"),
            );
            return response;
        }
    };
    api.into_response()
}

const XMLNS: &str = "https://iam.amazonaws.com/doc/2010-05-08/";

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

fn success(action: &str, result: &str) -> Response {
    (
        StatusCode::OK,
        [(axum::http::header::CONTENT_TYPE, "text/xml")],
        format!(
            "<{action}Response xmlns=\"{XMLNS}\"><{action}Result>{result}</{action}Result>\
             <ResponseMetadata><RequestId>{}</RequestId></ResponseMetadata></{action}Response>",
            uuid::Uuid::new_v4()
        ),
    )
        .into_response()
}

/// An IAM-shaped error of a mapping action: status, IAM's code, message.
struct QueryError(StatusCode, &'static str, String);

impl QueryError {
    fn into_response(self) -> Response {
        super::iam::error_response(self.0, self.1, &self.2)
    }
}

fn error(status: StatusCode, code: &'static str, message: &str) -> QueryError {
    QueryError(status, code, message.to_owned())
}

fn mapping_xml(m: &crate::store::AwsLoginMappingRecord) -> String {
    format!(
        "<AwsArnPattern>{}</AwsArnPattern><RoleName>{}</RoleName>\
         <ImportPolicies>{}</ImportPolicies><CreateDate>{}</CreateDate>",
        escape(&m.arn_pattern),
        escape(&m.role_name),
        m.import_policies,
        m.created_at
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    )
}

/// Mooring's IAM Query actions for AWS login mappings; `None` for any other action
/// (the IAM handler answers InvalidAction).
pub(super) async fn query_action(
    state: &AppState,
    caller: &VerifiedCaller,
    action: &str,
    params: &HashMap<String, String>,
) -> Option<Response> {
    if !matches!(
        action,
        "CreateAwsLoginMapping" | "DeleteAwsLoginMapping" | "ListAwsLoginMappings"
    ) {
        return None;
    }
    Some(match mapping_action(state, caller, action, params).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    })
}

fn required<'a>(params: &'a HashMap<String, String>, name: &str) -> Result<&'a str, QueryError> {
    params
        .get(name)
        .map(String::as_str)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| {
            error(
                StatusCode::BAD_REQUEST,
                "ValidationError",
                &format!("1 validation error detected: Value null at '{name}' failed to satisfy constraint: Member must not be null"),
            )
        })
}

/// Refuses `action` on `resource` unless the caller's policies allow it, as the
/// IAM actions are authorized, and records the decision in the audit trail.
fn authorize(caller: &VerifiedCaller, action: &str, resource: &str) -> Result<(), QueryError> {
    let decision = caller.decide(action, resource, |_| {});
    if super::audit::note_decision(action, resource, &decision).is_err() {
        return Err(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "ServiceFailure",
            "An internal error occurred. Try again later.",
        ));
    }
    match decision {
        Decision::Allow(_) => Ok(()),
        Decision::ExplicitDeny(_) | Decision::ImplicitDeny => Err(error(
            StatusCode::FORBIDDEN,
            "AccessDenied",
            &format!(
                "User: {} is not authorized to perform: {action} on resource: {resource}",
                caller.user.arn
            ),
        )),
    }
}

async fn mapping_action(
    state: &AppState,
    caller: &VerifiedCaller,
    action: &str,
    params: &HashMap<String, String>,
) -> Result<Response, QueryError> {
    let account = caller.user.account_id.as_str();
    let iam_action = format!("iam:{action}");
    let store_failed = |e: crate::store::StoreError| {
        tracing::error!(
            error = format!("{:#}", anyhow::Error::new(e)),
            "AWS login mapping request failed"
        );
        error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "ServiceFailure",
            "An internal error occurred. Try again later.",
        )
    };
    let mapping_failed = |e: MappingError| match e {
        MappingError::Invalid(m) => error(StatusCode::BAD_REQUEST, "ValidationError", &m),
        e @ MappingError::NoSuchRole(_) | e @ MappingError::NotFound(_) => {
            error(StatusCode::NOT_FOUND, "NoSuchEntity", &e.to_string())
        }
        e @ MappingError::ImportTaken(_) => {
            error(StatusCode::CONFLICT, "EntityAlreadyExists", &e.to_string())
        }
        MappingError::Store(e) => store_failed(e),
    };
    match action {
        "CreateAwsLoginMapping" => {
            let pattern = required(params, "AwsArnPattern")?;
            let role_name = required(params, "RoleName")?;
            let import = match params.get("ImportPolicies").map(String::as_str) {
                None | Some("") | Some("false") => false,
                Some("true") => true,
                Some(other) => {
                    return Err(error(
                        StatusCode::BAD_REQUEST,
                        "ValidationError",
                        &format!("ImportPolicies must be true or false, not {other:?}"),
                    ))
                }
            };
            let role_arn = iam_arn(&state.config.partition, account, "role", "/", role_name);
            authorize(caller, &iam_action, &role_arn)?;
            let mapping = aws_login::mapping_put(
                state.aws_login.as_deref(),
                &state.store,
                account,
                pattern,
                role_name,
                import,
            )
            .await
            .map_err(mapping_failed)?;
            Ok(success(
                action,
                &format!(
                    "<AwsLoginMapping>{}</AwsLoginMapping>",
                    mapping_xml(&mapping)
                ),
            ))
        }
        "DeleteAwsLoginMapping" => {
            let pattern = required(params, "AwsArnPattern")?;
            let found = aws_login::mapping_list(&state.store, account)
                .await
                .map_err(store_failed)?
                .into_iter()
                .find(|m| m.arn_pattern == pattern);
            // Authorized on the role the mapping grants; an unknown mapping on `*`.
            let resource = found
                .as_ref()
                .map(|m| iam_arn(&state.config.partition, account, "role", "/", &m.role_name))
                .unwrap_or_else(|| "*".to_owned());
            authorize(caller, &iam_action, &resource)?;
            if found.is_none() {
                return Err(mapping_failed(MappingError::NotFound(pattern.to_owned())));
            }
            aws_login::mapping_delete(&state.store, pattern)
                .await
                .map_err(mapping_failed)?;
            Ok(success(action, ""))
        }
        _ => {
            authorize(caller, &iam_action, "*")?;
            let mappings = aws_login::mapping_list(&state.store, account)
                .await
                .map_err(store_failed)?;
            let mut members = String::new();
            for m in &mappings {
                let _ = write!(members, "<member>{}</member>", mapping_xml(m));
            }
            Ok(success(
                action,
                &format!(
                    "<AwsLoginMappings>{members}</AwsLoginMappings><IsTruncated>false</IsTruncated>"
                ),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(text: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(text)
    }

    #[test]
    fn login_bodies_decode() {
        let body = serde_json::json!({
            "iamHttpRequestMethod": "POST",
            "iamRequestUrl": b64("https://sts.amazonaws.com/"),
            "iamRequestHeaders": b64(r#"{"Host":"sts.amazonaws.com","X-Multi":["a","b"]}"#),
            "iamRequestBody": b64("Action=GetCallerIdentity&Version=2011-06-15"),
            "durationSeconds": 900
        });
        let request = parse_input(body.to_string().as_bytes()).expect("decodes");
        assert_eq!(request.url, "https://sts.amazonaws.com/");
        assert_eq!(
            request.headers,
            [
                ("Host".to_owned(), "sts.amazonaws.com".to_owned()),
                ("X-Multi".to_owned(), "a".to_owned()),
                ("X-Multi".to_owned(), "b".to_owned()),
            ]
        );
        assert_eq!(request.body, b"Action=GetCallerIdentity&Version=2011-06-15");
        assert_eq!(request.duration, Some(Duration::from_secs(900)));
    }

    #[test]
    fn malformed_login_bodies_are_bad_requests() {
        let bad = [
            "not json".to_owned(),
            serde_json::json!({"iamHttpRequestMethod": "POST"}).to_string(),
            serde_json::json!({
                "iamHttpRequestMethod": "POST", "iamRequestUrl": "!!!",
                "iamRequestHeaders": b64("{}"), "iamRequestBody": ""
            })
            .to_string(),
            serde_json::json!({
                "iamHttpRequestMethod": "POST", "iamRequestUrl": b64("http://x/"),
                "iamRequestHeaders": b64(r#"{"A":1}"#), "iamRequestBody": ""
            })
            .to_string(),
            serde_json::json!({
                "iamHttpRequestMethod": "POST", "iamRequestUrl": b64("http://x/"),
                "iamRequestHeaders": b64("[]"), "iamRequestBody": ""
            })
            .to_string(),
        ];
        for body in bad {
            assert!(
                matches!(parse_input(body.as_bytes()), Err(LoginError::BadRequest(_))),
                "{body}"
            );
        }
    }

    #[test]
    fn login_errors_carry_their_names() {
        let cases = [
            (LoginError::Disabled, 404, "NotFoundException"),
            (
                LoginError::BadRequest("x".into()),
                400,
                "BadRequestException",
            ),
            (
                LoginError::Unauthenticated("x".into()),
                401,
                "UnauthorizedException",
            ),
            (LoginError::Forbidden("x".into()), 403, "ForbiddenException"),
            (
                LoginError::Unavailable("x".into()),
                503,
                "ServiceUnavailableException",
            ),
        ];
        for (e, status, name) in cases {
            let r = login_error(e);
            assert_eq!(r.status().as_u16(), status);
            assert_eq!(r.headers()["x-amzn-ErrorType"], name);
        }
    }
}
