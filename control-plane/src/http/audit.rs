//! The audit trail at the HTTP edge: [`record`] wraps every public API request
//! (the Amazon MQ routes and the IAM/STS Query endpoint `POST /`), and appends one
//! record per request through `app::audit` once the answer is known; and
//! `GET /v1/audit-events` reads the trail back.
//!
//! What authentication decided reaches [`record`] through a request-scoped note (a
//! task-local set around the inner layers): [`note_principal`],
//! [`note_decision`] and [`note_throttled`] are one-line hooks in `auth.rs`,
//! `iam.rs` and `throttle.rs`, so none of them passes audit state around. The same
//! scope carries the connection's facts (peer address, TLS) to the policy context
//! ([`source_ip`], [`secure_transport`]), which `iam.rs` has no request to read from.
//!
//! A handler whose store write can carry the record (CreateUser) takes it from the scope
//! ([`change_record`]) and commits it with its change; [`record`] then writes no other.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::extract::ApiQuery;
use super::observe;
use super::tls::SecureTransport;
use crate::api::ErrorBody;
use crate::app::audit::{self as app_audit, AuditQuery};
use crate::app::AppState;
use crate::auth::policy::Decision;
use crate::error::ApiError;
use crate::store::{AuditDecision, NewAuditEvent};

/// The largest Query API body read to learn its `Action` (the same bound
/// authentication reads bodies with).
const MAX_QUERY_BODY_BYTES: usize = 8 << 20;
/// The largest error body read to learn a Query API error's `<Code>`.
const MAX_ERROR_BODY_BYTES: usize = 64 << 10;

/// What the inner layers learned about the request, for its record.
#[derive(Debug, Default, Clone)]
struct Note {
    principal: Option<String>,
    action: Option<String>,
    resource: Option<String>,
    decision: Option<AuditDecision>,
    /// An allowed action that may change state: answered only once recorded.
    durable: bool,
    /// The handler committed the request's success record with its change
    /// ([`change_record`]), so no other is written if it succeeds.
    recorded_with_change: bool,
}

#[derive(Clone)]
struct Scope {
    note: Arc<Mutex<Note>>,
    occurred_at: DateTime<Utc>,
    request_id: RequestId,
    source_ip: Option<IpAddr>,
    secure_transport: bool,
    /// Whether the audit trail can be written (see `AuditLog::healthy`).
    audit: app_audit::AuditLog,
}

tokio::task_local! {
    static SCOPE: Scope;
}

fn with_note(f: impl FnOnce(&mut Note)) {
    let _ = SCOPE.try_with(|scope| f(&mut scope.note.lock()));
}

/// The request was signed by `principal_arn` (hook in authentication).
pub(super) fn note_principal(principal_arn: &str) {
    with_note(|n| n.principal = Some(principal_arn.to_owned()));
}

/// The principal's rate limit refused the request.
pub(super) fn note_throttled() {
    with_note(|n| n.decision = Some(AuditDecision::Throttled));
}

/// The audit trail cannot be written, so a mutating request must not run.
#[derive(Debug)]
pub(super) struct AuditUnavailable;

/// Policy evaluation decided `decision` for `action` on `resource` (hook in
/// authorization). An allowed mutating action is refused (`Err`) while the audit
/// trail cannot be written: nothing may change unaudited.
pub(super) fn note_decision(
    action: &str,
    resource: &str,
    decision: &Decision<'_>,
) -> Result<(), AuditUnavailable> {
    let allowed = matches!(decision, Decision::Allow(_));
    let durable = allowed && !app_audit::is_read_only(action);
    with_note(|n| {
        n.action = Some(action.to_owned());
        n.resource = Some(resource.to_owned());
        n.decision = Some(if allowed {
            AuditDecision::Allowed
        } else {
            AuditDecision::Denied
        });
        n.durable = durable;
    });
    let healthy = SCOPE
        .try_with(|scope| scope.audit.healthy())
        .unwrap_or(true);
    if durable && !healthy {
        return Err(AuditUnavailable);
    }
    Ok(())
}

impl From<AuditUnavailable> for ApiError {
    fn from(_: AuditUnavailable) -> Self {
        ApiError::internal(anyhow::anyhow!(
            "refusing a mutating request: the audit trail cannot be written"
        ))
    }
}

/// The request's id, chosen here (the audit layer is outermost) and answered as
/// `x-amzn-RequestId` by `observe::request_id`.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// The record the allowed mutating request in scope gets if it succeeds (status 200), for
/// a handler whose store write commits it together with the change: cheaper than a
/// separate commit, and the change cannot commit without its record. The handler calls
/// [`note_recorded_with_change`] once that write committed. `None` outside an audited
/// request, or when the request is not an authenticated, allowed, mutating one.
pub(super) fn change_record() -> Option<NewAuditEvent> {
    SCOPE
        .try_with(|scope| {
            let note = scope.note.lock();
            if !note.durable || note.decision != Some(AuditDecision::Allowed) {
                return None;
            }
            Some(NewAuditEvent {
                occurred_at: scope.occurred_at,
                request_id: scope.request_id.0.clone(),
                principal: note.principal.clone()?,
                action: note.action.clone(),
                resource: note.resource.clone(),
                decision: AuditDecision::Allowed,
                http_status: StatusCode::OK.as_u16(),
                error_code: None,
                source_ip: scope.source_ip.map(|ip| ip.to_string()),
            })
        })
        .ok()
        .flatten()
}

/// The record from [`change_record`] committed with the request's change.
pub(super) fn note_recorded_with_change() {
    with_note(|n| n.recorded_with_change = true);
}

/// The peer's address, when the server knows it (`aws:SourceIp`).
pub(super) fn source_ip() -> Option<IpAddr> {
    SCOPE.try_with(|s| s.source_ip).ok().flatten()
}

/// Whether the request arrived over TLS (`aws:SecureTransport`).
pub(super) fn secure_transport() -> bool {
    SCOPE.try_with(|s| s.secure_transport).unwrap_or(false)
}

fn is_query_api(method: &Method, path: &str) -> bool {
    method == Method::POST && path == "/"
}

/// The access key id a request names (header or presigned form), whether or not it
/// verified: what the trail calls an unauthenticated caller.
fn claimed_key_id(headers: &HeaderMap, query: Option<&str>) -> Option<String> {
    let from_header = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once("Credential="))
        .map(|(_, rest)| rest.split(['/', ',', ' ']).next().unwrap_or(""));
    let from_query = || {
        query?
            .split('&')
            .find_map(|pair| pair.strip_prefix("X-Amz-Credential="))
            .map(|v| v.split(['/', '%']).next().unwrap_or(""))
    };
    let id = from_header.or_else(from_query)?;
    let plausible =
        !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_alphanumeric());
    Some(if plausible {
        id.to_owned()
    } else {
        "invalid-access-key-id".to_owned()
    })
}

/// The Query API action a form body names, with its service prefix.
fn query_action(body: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    let name = text
        .split('&')
        .find_map(|pair| pair.strip_prefix("Action="))?;
    if name.is_empty() || name.len() > 64 || !name.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return None;
    }
    let sts = matches!(
        name,
        "AssumeRole"
            | "AssumeRoleWithSAML"
            | "AssumeRoleWithWebIdentity"
            | "DecodeAuthorizationMessage"
            | "GetAccessKeyInfo"
            | "GetCallerIdentity"
            | "GetFederationToken"
            | "GetSessionToken"
    );
    Some(format!("{}:{name}", if sts { "sts" } else { "iam" }))
}

/// The error name in a Query API error document (`<Code>…</Code>`).
fn xml_error_code(body: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    let start = text.find("<Code>")? + "<Code>".len();
    let len = text[start..].find("</Code>")?;
    Some(text[start..start + len].to_owned())
}

/// The audit layer: see the module doc. `/healthz` and `/metrics` are not audited.
pub async fn record(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned());
    if matches!(route.as_deref(), Some("/healthz" | "/metrics")) {
        return next.run(request).await;
    }
    let occurred_at = app_audit::now();
    let query_api = is_query_api(request.method(), request.uri().path());
    let source_ip = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip());
    let secure_transport = request.extensions().get::<SecureTransport>().is_some();
    let claimed = claimed_key_id(request.headers(), request.uri().query());
    // Picked here, the outermost layer, so the handler's record can name it;
    // `observe::request_id` answers with it.
    let request_id = RequestId(observe::new_request_id());
    let mut action = route
        .as_deref()
        .and_then(|r| super::auth::operation(request.method(), r))
        .map(|op| op.action().to_owned());

    let mut request = if query_api {
        let (parts, body) = request.into_parts();
        match axum::body::to_bytes(body, MAX_QUERY_BODY_BYTES).await {
            Ok(bytes) => {
                action = query_action(&bytes);
                Request::from_parts(parts, Body::from(bytes))
            }
            Err(_) => {
                let mut response = super::iam::error_response(
                    StatusCode::BAD_REQUEST,
                    "ValidationError",
                    "The request body is too large or could not be read.",
                );
                // Answered before the request-id layer runs: it gets its header here.
                if let Ok(value) = HeaderValue::from_str(&request_id.0) {
                    response.headers_mut().insert("x-amzn-RequestId", value);
                }
                let event = NewAuditEvent {
                    occurred_at,
                    request_id: request_id.0,
                    principal: claimed.unwrap_or_else(|| "anonymous".to_owned()),
                    action: None,
                    resource: None,
                    decision: AuditDecision::Unauthenticated,
                    http_status: response.status().as_u16(),
                    error_code: Some("ValidationError".to_owned()),
                    source_ip: source_ip.map(|ip| ip.to_string()),
                };
                state.audit.append(event).await;
                return response;
            }
        }
    } else {
        request
    };

    request.extensions_mut().insert(request_id.clone());
    let scope = Scope {
        note: Arc::new(Mutex::new(Note::default())),
        occurred_at,
        request_id,
        source_ip,
        secure_transport,
        audit: state.audit.clone(),
    };
    let response = SCOPE.scope(scope.clone(), next.run(request)).await;
    let note = scope.note.lock().clone();

    // A Query API error names itself in its XML body; read it (error documents are
    // small) and put it back.
    let (response, error_code) = if query_api && !response.status().is_success() {
        let (parts, body) = response.into_parts();
        let bytes = axum::body::to_bytes(body, MAX_ERROR_BODY_BYTES)
            .await
            .unwrap_or_default();
        let code = xml_error_code(&bytes);
        (Response::from_parts(parts, Body::from(bytes)), code)
    } else {
        let code = response
            .headers()
            .get("x-amzn-ErrorType")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        (response, code)
    };
    let decision = note.decision.unwrap_or(if note.principal.is_some() {
        // Verified, and no policy consulted (STS GetCallerIdentity, an unknown
        // route, a request refused before authorization for being malformed).
        AuditDecision::Allowed
    } else {
        AuditDecision::Unauthenticated
    });
    let request_id = response
        .headers()
        .get("x-amzn-RequestId")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let event = NewAuditEvent {
        occurred_at,
        request_id,
        principal: note
            .principal
            .or(claimed)
            .unwrap_or_else(|| "anonymous".to_owned()),
        action: note.action.or(action),
        resource: note.resource,
        decision,
        http_status: response.status().as_u16(),
        error_code,
        source_ip: source_ip.map(|ip| ip.to_string()),
    };
    if note.recorded_with_change && event.http_status == StatusCode::OK.as_u16() {
        // Already committed, exactly as `change_record` built it.
        return response;
    }
    if !note.durable {
        state.audit.append(event).await;
        return response;
    }
    let failure_code = if query_api {
        "ServiceFailure"
    } else {
        "InternalServerErrorException"
    };
    match state.audit.append_durable(event, failure_code).await {
        Ok(()) => response,
        Err(e) => {
            tracing::error!(error = %e, "answering 500: the request's audit record was not committed");
            let mut failed = if query_api {
                super::iam::error_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    failure_code,
                    "An internal error occurred. Try again later.",
                )
            } else {
                ApiError::internal(e).into_response()
            };
            if let Some(id) = response.headers().get("x-amzn-RequestId") {
                failed.headers_mut().insert("x-amzn-RequestId", id.clone());
            }
            failed
        }
    }
}

/// `GET /v1/audit-events` query parameters.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct ListAuditEventsQuery {
    /// Events at or after this time (ISO 8601, or seconds since the epoch).
    pub start_time: Option<String>,
    /// Events before this time (ISO 8601, or seconds since the epoch).
    pub end_time: Option<String>,
    /// The principal's ARN (or, for unauthenticated requests, the access key id named,
    /// or `anonymous`).
    pub principal: Option<String>,
    /// The IAM action, e.g. `mq:DeleteBroker`.
    pub action: Option<String>,
    /// The resource ARN.
    pub resource: Option<String>,
    /// `allowed`, `denied`, `unauthenticated` or `throttled`.
    pub decision: Option<String>,
    /// 1-100.
    pub max_results: Option<String>,
    /// Opaque token from the previous page.
    pub next_token: Option<String>,
}

/// One audited API request.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AuditEvent {
    /// When the request arrived (ISO 8601, UTC).
    pub event_time: String,
    /// The request's `x-amzn-RequestId`.
    pub request_id: String,
    pub principal: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    /// `allowed`, `denied`, `unauthenticated` or `throttled`.
    pub decision: String,
    pub http_status: u16,
    /// The error name answered; absent on success.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_ip: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ListAuditEventsResponse {
    /// Newest first.
    pub audit_events: Vec<AuditEvent>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
}

#[utoipa::path(get, path = "/v1/audit-events", operation_id = "ListAuditEvents", tag = "audit",
    params(ListAuditEventsQuery),
    responses((status = 200, body = ListAuditEventsResponse),
              (status = 400, body = ErrorBody, description = "BadRequestException"),
              (status = 403, body = ErrorBody, description = "ForbiddenException")))]
pub async fn list_audit_events(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<ListAuditEventsQuery>,
) -> Result<Json<ListAuditEventsResponse>, ApiError> {
    let query = AuditQuery {
        start_time: q.start_time,
        end_time: q.end_time,
        principal: q.principal,
        action: q.action,
        resource: q.resource,
        decision: q.decision,
        max_results: q.max_results,
        next_token: q.next_token,
    };
    let (rows, next_token) = app_audit::list_events(&state.store, &query).await?;
    Ok(Json(ListAuditEventsResponse {
        audit_events: rows
            .into_iter()
            .map(|r| {
                let e = r.event;
                AuditEvent {
                    event_time: e
                        .occurred_at
                        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                    request_id: e.request_id,
                    principal: e.principal,
                    action: e.action,
                    resource: e.resource,
                    decision: e.decision.as_str().to_owned(),
                    http_status: e.http_status,
                    error_code: e.error_code,
                    source_ip: e.source_ip,
                }
            })
            .collect(),
        next_token,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_ids_are_read_from_either_signature_form() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "authorization",
            HeaderValue::from_static(
                "AWS4-HMAC-SHA256 Credential=AKIAEXAMPLE/20261128/us-east-1/mq/aws4_request, SignedHeaders=host, Signature=00",
            ),
        );
        assert_eq!(
            claimed_key_id(&headers, None).as_deref(),
            Some("AKIAEXAMPLE")
        );
        let empty = HeaderMap::new();
        assert_eq!(
            claimed_key_id(
                &empty,
                Some("X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAQ%2F20261128%2Fus-east-1%2Fmq%2Faws4_request")
            )
            .as_deref(),
            Some("AKIAQ")
        );
        assert_eq!(claimed_key_id(&empty, Some("a=b")), None);
        let mut junk = HeaderMap::new();
        junk.insert(
            "authorization",
            HeaderValue::from_static("AWS4-HMAC-SHA256 Credential=<script>/x"),
        );
        assert_eq!(
            claimed_key_id(&junk, None).as_deref(),
            Some("invalid-access-key-id")
        );
    }

    #[test]
    fn query_actions_carry_their_service() {
        assert_eq!(
            query_action(b"Action=CreateUser&UserName=a&Version=2010-05-08").as_deref(),
            Some("iam:CreateUser")
        );
        assert_eq!(
            query_action(b"Version=2011-06-15&Action=GetCallerIdentity").as_deref(),
            Some("sts:GetCallerIdentity")
        );
        assert_eq!(query_action(b"Action=%3Cx%3E"), None);
        assert_eq!(query_action(b"\xff"), None);
    }

    #[test]
    fn xml_error_codes_are_found() {
        assert_eq!(
            xml_error_code(b"<ErrorResponse><Error><Type>Sender</Type><Code>AccessDenied</Code><Message>m</Message></Error></ErrorResponse>").as_deref(),
            Some("AccessDenied")
        );
        assert_eq!(xml_error_code(b"<x/>"), None);
    }
}
