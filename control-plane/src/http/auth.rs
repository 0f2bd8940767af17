//! Authentication and authorization of public API requests (DESIGN.md decision 7).
//! This layer sees every public API request before any handler: it verifies the
//! SigV4 signature (service `mq`, the configured region) against the access key's
//! secret from the store, then evaluates the caller's identity policies for the
//! operation's IAM action on its resource ARN, with the resource's tags from the store.
//! `/healthz`, `/metrics` and the agent API are routed outside it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;

use crate::app::principals::{caller_for_key_cached, Caller, CallerError, VerifiedPrincipal};
use crate::app::AppState;
use crate::auth::actions::{MqOperation, ResourceKind};
use crate::auth::policy::{evaluate, Decision, RequestContext};
use crate::auth::sigv4::{
    header_pairs, parse_request, verify_parsed_cached, AuthError, Payload, Protocol, RequestParts,
    VerifyConfig,
};
use crate::error::ApiError;
use crate::store::{BrokerId, ConfigurationId, StoreError};

/// The largest request body read for signature verification. Amazon MQ's largest
/// bodies are configuration documents, far below this.
const MAX_BODY_BYTES: usize = 8 << 20;

/// The SigV4 service name of the Amazon MQ API.
const SERVICE: &str = "mq";

/// Whether a request is for the IAM/STS Query endpoint (`POST /`) rather than the
/// Amazon MQ REST-JSON routes: the two differ in signing service and error shapes.
fn is_query_api(parts: &axum::http::request::Parts) -> bool {
    parts.method == Method::POST && parts.uri.path() == "/"
}

pub async fn authenticate(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let (mut parts, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, MAX_BODY_BYTES).await {
        Ok(bytes) => bytes,
        Err(_) => {
            return ApiError::BadRequest {
                attribute: None,
                message: "The request body is too large or could not be read.".to_owned(),
            }
            .into_response()
        }
    };
    let query_api = is_query_api(&parts);
    let protocol = if query_api {
        Protocol::Query
    } else {
        Protocol::RestJson
    };

    let caller = match verify(&state, &parts, &body, query_api).await {
        Ok(caller) => caller,
        Err(Refusal::Auth(e)) => {
            tracing::info!(code = e.code(protocol), reason = %e, "request refused: authentication");
            return if query_api {
                super::iam::error_response(
                    StatusCode::from_u16(e.http_status(protocol)).unwrap_or(StatusCode::FORBIDDEN),
                    e.code(protocol),
                    &e.message(),
                )
            } else {
                auth_error_response(&e)
            };
        }
        Err(Refusal::Api(e)) => return e.into_response(),
    };
    super::audit::note_principal(&caller.user.arn);
    if let Some(throttled) = super::throttle::check(&state, &caller.user.arn, query_api) {
        return throttled;
    }

    if query_api {
        // IAM actions depend on the form body: the handler authorizes them.
        parts.extensions.insert(std::sync::Arc::new(caller));
    } else if let Err(e) = authorize(&state, &parts, &body, &caller).await {
        return e.into_response();
    }
    next.run(Request::from_parts(parts, Body::from(body))).await
}

enum Refusal {
    Auth(AuthError),
    Api(ApiError),
}

/// Who signed a request that verified, with the identity policies that apply to them:
/// a [`Caller`] (`user`, `policies`, `tags`, `session`), shared with the principal cache
/// rather than copied per request.
#[derive(Debug)]
pub struct VerifiedCaller {
    principal: Arc<VerifiedPrincipal>,
}

impl std::ops::Deref for VerifiedCaller {
    type Target = Caller;

    fn deref(&self) -> &Caller {
        &self.principal.caller
    }
}

impl VerifiedCaller {
    /// Whether deciding `action` may need the resource's tags (else they need not be read).
    fn reads_resource_tags(&self, action: &str) -> bool {
        // A session policy is not indexed: assume it may.
        self.principal.index.reads_resource_tags(action)
            || self
                .session
                .as_ref()
                .is_some_and(|s| s.session_policy.is_some())
    }

    /// Evaluates the caller's policies for `action` on `resource`; the context holds
    /// the principal's keys and the time, and `extend` adds request-specific keys.
    pub fn decide(
        &self,
        action: &str,
        resource: &str,
        extend: impl FnOnce(&mut RequestContext),
    ) -> Decision<'_> {
        let mut ctx = self.context(action, resource);
        extend(&mut ctx);
        let decision = self.principal.index.evaluate(&self.policies, &ctx);
        // A session policy narrows: both it and the identity policies must allow.
        match self
            .session
            .as_ref()
            .and_then(|s| s.session_policy.as_ref())
        {
            Some(session_policy) if decision.is_allowed() => {
                match evaluate(&[session_policy], &ctx) {
                    Decision::Allow(_) => decision,
                    narrowed => narrowed,
                }
            }
            _ => decision,
        }
    }

    /// The context every decision about this caller starts from: the time, the
    /// transport, the principal's keys and tags, the source address. Also what a
    /// role's trust policy is evaluated against.
    pub fn context(&self, action: &str, resource: &str) -> RequestContext {
        let mut ctx = RequestContext::new(action, resource);
        ctx.set_current_time(Utc::now())
            .set_secure_transport(super::audit::secure_transport());
        match self.session.as_ref().and_then(|s| s.role.as_ref()) {
            // A role session has no aws:username; aws:PrincipalArn is the role's ARN.
            Some(role) => ctx.set_principal(None, &self.user.id, &role.arn),
            None => ctx.set_principal(Some(&self.user.name), &self.user.id, &self.user.arn),
        };
        for (key, value) in &self.tags {
            ctx.set_principal_tag(key, value);
        }
        // The connection's peer, for every decision (the IAM Query actions included).
        if let Some(ip) = super::audit::source_ip() {
            ctx.set_source_ip(ip);
        }
        ctx
    }
}

async fn verify(
    state: &AppState,
    parts: &axum::http::request::Parts,
    body: &[u8],
    query_api: bool,
) -> Result<VerifiedCaller, Refusal> {
    let headers = header_pairs(&parts.headers, parts.uri.authority().map(|a| a.as_str()));
    let request = RequestParts {
        method: parts.method.as_str(),
        path: parts.uri.path(),
        query: parts.uri.query().unwrap_or(""),
        headers: &headers,
        payload: Payload::Bytes(body),
    };
    let signed = parse_request(&request).map_err(Refusal::Auth)?;
    let caller = match caller_for_key_cached(
        &state.auth_caches.principals,
        &state.store,
        &state.master_key,
        &signed.access_key_id,
    )
    .await
    {
        Ok(caller) => caller,
        Err(CallerError::Store(e)) => return Err(Refusal::Api(ApiError::from(e))),
        Err(e @ CallerError::Unusable(_)) => {
            return Err(Refusal::Api(ApiError::internal(anyhow::Error::new(e))))
        }
    };
    let services: &[&str] = if query_api {
        &["iam", "sts"]
    } else {
        &[SERVICE]
    };
    let config = VerifyConfig::new(state.config.region.clone(), services);
    let credential = caller
        .as_ref()
        .map(|c| (&c.caller.credential, &c.signing_keys));
    verify_parsed_cached(&request, &signed, credential, &config, Utc::now())
        .map_err(Refusal::Auth)?;
    let caller = caller.ok_or(Refusal::Auth(AuthError::UnrecognizedClient))?;
    // Checked after the signature, so only the holder of the secret learns it.
    if caller
        .caller
        .session
        .as_ref()
        .is_some_and(|s| s.expires_at <= Utc::now())
    {
        return Err(Refusal::Auth(AuthError::ExpiredToken));
    }
    Ok(VerifiedCaller { principal: caller })
}

/// AWS's answer to a request that failed authentication: the error name in
/// `x-amzn-ErrorType`, its message in the body.
fn auth_error_response(e: &AuthError) -> Response {
    let status =
        StatusCode::from_u16(e.http_status(Protocol::RestJson)).unwrap_or(StatusCode::FORBIDDEN);
    let mut response =
        (status, Json(serde_json::json!({ "message": e.message() }))).into_response();
    response.headers_mut().insert(
        "x-amzn-ErrorType",
        HeaderValue::from_static(e.code(Protocol::RestJson)),
    );
    response
}

/// The Amazon MQ operation a matched route and method stand for; `None` for a
/// method the route does not serve (answered by the fallback).
pub(super) fn operation(method: &Method, route: &str) -> Option<MqOperation> {
    use MqOperation::*;
    let op = match (route, method.as_str()) {
        ("/v1/brokers", "POST") => CreateBroker,
        ("/v1/brokers", "GET") => ListBrokers,
        ("/v1/brokers/{broker-id}", "GET") => DescribeBroker,
        ("/v1/brokers/{broker-id}", "PUT") => UpdateBroker,
        ("/v1/brokers/{broker-id}", "DELETE") => DeleteBroker,
        ("/v1/brokers/{broker-id}/reboot", "POST") => RebootBroker,
        ("/v1/brokers/{broker-id}/switchover", "POST") => SwitchoverBroker,
        ("/v1/brokers/{broker-id}/events", "GET") => ListBrokerEvents,
        ("/v1/brokers/{broker-id}/users", "GET") => ListUsers,
        ("/v1/brokers/{broker-id}/users/{username}", "POST") => CreateUser,
        ("/v1/brokers/{broker-id}/users/{username}", "GET") => DescribeUser,
        ("/v1/brokers/{broker-id}/users/{username}", "PUT") => UpdateUser,
        ("/v1/brokers/{broker-id}/users/{username}", "DELETE") => DeleteUser,
        ("/v1/configurations", "POST") => CreateConfiguration,
        ("/v1/configurations", "GET") => ListConfigurations,
        ("/v1/configurations/{configuration-id}", "GET") => DescribeConfiguration,
        ("/v1/configurations/{configuration-id}", "PUT") => UpdateConfiguration,
        ("/v1/configurations/{configuration-id}", "DELETE") => DeleteConfiguration,
        ("/v1/configurations/{configuration-id}/revisions", "GET") => ListConfigurationRevisions,
        ("/v1/configurations/{configuration-id}/revisions/{configuration-revision}", "GET") => {
            DescribeConfigurationRevision
        }
        ("/v1/tags/{resource-arn}", "POST") => CreateTags,
        ("/v1/tags/{resource-arn}", "GET") => ListTags,
        ("/v1/tags/{resource-arn}", "DELETE") => DeleteTags,
        ("/v1/broker-engine-types", "GET") => DescribeBrokerEngineTypes,
        ("/v1/broker-instance-options", "GET") => DescribeBrokerInstanceOptions,
        ("/v1/maintenance", "GET") => DescribeMaintenance,
        ("/v1/maintenance", "PUT") => UpdateMaintenance,
        ("/v1/audit-events", "GET") => ListAuditEvents,
        _ => return None,
    };
    Some(op)
}

/// The value of `{name}` in `route` for this request path, percent-decoded.
fn path_param(route: &str, path: &str, name: &str) -> Option<String> {
    let wanted = format!("{{{name}}}");
    route
        .split('/')
        .zip(path.split('/'))
        .find(|(template, _)| *template == wanted)
        .map(|(_, value)| percent_decode(value))
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push(u8::try_from(h * 16 + l).expect("two hex digits fit a byte"));
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The resource ARN of the request, and that resource's tags when `with_tags` (only
/// read when a policy that applies could look at them). A broker's or configuration's
/// ARN never changes for its id, so it is read from the store once per id.
async fn resource(
    state: &AppState,
    op: MqOperation,
    route: &str,
    path: &str,
    with_tags: bool,
) -> Result<(String, BTreeMap<String, String>), StoreError> {
    let config = &state.config;
    let arns = &state.auth_caches.arns;
    let arn = match op.resource_kind() {
        ResourceKind::All => return Ok(("*".to_owned(), BTreeMap::new())),
        ResourceKind::Broker => {
            let id = path_param(route, path, "broker-id").unwrap_or_default();
            let found = match (arns.get(&id), BrokerId::parse(&id)) {
                (Some(arn), _) => Some(arn.to_string()),
                (None, Some(broker_id)) => match state.store.broker_get(&broker_id).await {
                    Ok(b) => {
                        arns.insert(&id, Arc::from(b.arn.as_str()));
                        Some(b.arn)
                    }
                    Err(StoreError::NotFound(_)) => None,
                    Err(e) => return Err(e),
                },
                (None, None) => None,
            };
            // A broker that does not exist has no name: a policy on all brokers
            // still lets the caller learn that (NotFound), a policy on named ones not.
            found.unwrap_or_else(|| {
                crate::auth::actions::broker_arn(
                    &config.partition,
                    &config.region,
                    &config.account_id,
                    "",
                    &id,
                )
            })
        }
        ResourceKind::Configuration => {
            let id = path_param(route, path, "configuration-id").unwrap_or_default();
            let found = match (arns.get(&id), ConfigurationId::parse(&id)) {
                (Some(arn), _) => Some(arn.to_string()),
                (None, Some(cid)) => match state.store.configuration_get(&cid).await {
                    Ok(c) => {
                        arns.insert(&id, Arc::from(c.arn.as_str()));
                        Some(c.arn)
                    }
                    Err(StoreError::NotFound(_)) => None,
                    Err(e) => return Err(e),
                },
                (None, None) => None,
            };
            found.unwrap_or_else(|| {
                crate::auth::actions::configuration_arn(
                    &config.partition,
                    &config.region,
                    &config.account_id,
                    &id,
                )
            })
        }
        ResourceKind::TaggedResource => path_param(route, path, "resource-arn").unwrap_or_default(),
    };
    let tags = if with_tags {
        state.store.tag_list(&arn).await?
    } else {
        BTreeMap::new()
    };
    Ok((arn, tags))
}

/// Tags the request would set: the `tags` object of a create or tag body.
fn request_tags(body: &[u8]) -> BTreeMap<String, String> {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("tags").and_then(|t| t.as_object()).cloned())
        .map(|tags| {
            tags.into_iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k, v.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

async fn authorize(
    state: &AppState,
    parts: &axum::http::request::Parts,
    body: &[u8],
    caller: &VerifiedCaller,
) -> Result<(), ApiError> {
    // A route that is not an operation (unknown path or method) is answered by the
    // fallback: an authenticated caller may learn that it does not exist.
    let Some(route) = parts
        .extensions
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned())
    else {
        return Ok(());
    };
    let Some(op) = operation(&parts.method, &route) else {
        return Ok(());
    };
    let with_tags = caller.reads_resource_tags(op.action());
    let (arn, resource_tags) = resource(state, op, &route, parts.uri.path(), with_tags).await?;

    let source = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip());
    let decision = caller.decide(op.action(), &arn, |ctx| {
        if let Some(ip) = source {
            ctx.set_source_ip(ip);
        }
        for (key, value) in &resource_tags {
            ctx.set_resource_tag(key, value);
        }
        if op.takes_request_tags() {
            for (key, value) in &request_tags(body) {
                ctx.set_request_tag(key, value);
            }
        }
    });
    tracing::debug!(principal = %caller.user.arn, action = op.action(), resource = %arn, decision = decision.as_str(), "authorization");
    super::audit::note_decision(op.action(), &arn, &decision)?;
    match decision {
        Decision::Allow(_) => Ok(()),
        Decision::ExplicitDeny(_) => Err(ApiError::Forbidden {
            message: format!(
                "User: {} is not authorized to perform: {} on resource: {} with an explicit deny",
                caller.user.arn,
                op.action(),
                arn
            ),
        }),
        Decision::ImplicitDeny => Err(ApiError::Forbidden {
            message: format!(
                "User: {} is not authorized to perform: {} on resource: {}",
                caller.user.arn,
                op.action(),
                arn
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_method_names_an_operation() {
        assert_eq!(
            operation(&Method::DELETE, "/v1/brokers/{broker-id}"),
            Some(MqOperation::DeleteBroker)
        );
        assert_eq!(
            operation(&Method::GET, "/v1/tags/{resource-arn}"),
            Some(MqOperation::ListTags)
        );
        assert_eq!(operation(&Method::PATCH, "/v1/brokers"), None);
        // Every operation Mooring routes is reachable (Promote is not routed yet).
        let routed: Vec<_> = MqOperation::ALL
            .into_iter()
            .filter(|op| *op != MqOperation::Promote)
            .collect();
        for op in routed {
            let found = [
                "/v1/brokers",
                "/v1/brokers/{broker-id}",
                "/v1/brokers/{broker-id}/reboot",
                "/v1/brokers/{broker-id}/switchover",
                "/v1/brokers/{broker-id}/events",
                "/v1/brokers/{broker-id}/users",
                "/v1/brokers/{broker-id}/users/{username}",
                "/v1/configurations",
                "/v1/configurations/{configuration-id}",
                "/v1/configurations/{configuration-id}/revisions",
                "/v1/configurations/{configuration-id}/revisions/{configuration-revision}",
                "/v1/tags/{resource-arn}",
                "/v1/broker-engine-types",
                "/v1/broker-instance-options",
                "/v1/maintenance",
                "/v1/audit-events",
            ]
            .iter()
            .any(|route| {
                [Method::GET, Method::POST, Method::PUT, Method::DELETE]
                    .iter()
                    .any(|m| operation(m, route) == Some(op))
            });
            assert!(found, "{op:?} has no route");
        }
    }

    #[test]
    fn path_params_are_found_and_decoded() {
        let route = "/v1/tags/{resource-arn}";
        assert_eq!(
            path_param(
                route,
                "/v1/tags/arn%3Aaws%3Amq%3Aus-east-1%3A1%3Abroker%3Ax%3Ab-1",
                "resource-arn"
            )
            .as_deref(),
            Some("arn:aws:mq:us-east-1:1:broker:x:b-1")
        );
        assert_eq!(
            path_param("/v1/brokers/{broker-id}", "/v1/brokers/b-1", "broker-id").as_deref(),
            Some("b-1")
        );
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%4"), "%4");
        assert_eq!(percent_decode("%zz%41"), "%zzA");
    }

    #[test]
    fn request_tags_come_from_the_body() {
        let tags = request_tags(br#"{"brokerName":"b","tags":{"env":"prod","n":1}}"#);
        assert_eq!(tags.get("env").map(String::as_str), Some("prod"));
        assert_eq!(tags.len(), 1);
        assert!(request_tags(b"not json").is_empty());
    }

    #[test]
    fn auth_errors_carry_aws_names() {
        let r = auth_error_response(&AuthError::SignatureMismatch);
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        assert_eq!(r.headers()["x-amzn-ErrorType"], "InvalidSignatureException");
    }
}
