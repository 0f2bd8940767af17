//! Records every request's latency by route template and status.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;

use super::audit::RequestId;
use crate::app::AppState;

pub async fn record_latency(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let method = request.method().as_str().to_owned();
    // The template, not the raw path: ids must not become label values.
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let response = next.run(request).await;
    state.metrics.observe_api(
        &method,
        &route,
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

/// A fresh request id: a v4 UUID from the thread's RNG (`Uuid::new_v4` asks the kernel, a
/// system call per request).
pub fn new_request_id() -> String {
    uuid::Builder::from_random_bytes(rand::random())
        .into_uuid()
        .to_string()
}

/// Gives every response an `x-amzn-RequestId`, as AWS services do (SDKs surface it in
/// their response metadata and error messages), and logs requests with it.
pub async fn request_id(request: Request, next: Next) -> Response {
    // Chosen by the audit layer around this one, which records it.
    let id = match request.extensions().get::<RequestId>() {
        Some(RequestId(id)) => id.clone(),
        None => new_request_id(),
    };
    let span = tracing::debug_span!("request", request_id = %id, method = %request.method(), path = %request.uri().path());
    let mut response = tracing::Instrument::instrument(next.run(request), span).await;
    if let Ok(value) = axum::http::HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-amzn-RequestId", value);
    }
    response
}
