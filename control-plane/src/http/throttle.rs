//! Answers a request over its principal's rate limit (`auth::ratelimit`) the way AWS
//! does, so SDKs and the AWS CLI back off and retry: HTTP 429 with
//! `x-amzn-ErrorType: ThrottlingException` on the Amazon MQ routes, and the Query
//! API's `Throttling` error (HTTP 400, as IAM and STS send it) on `POST /`.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::app::AppState;

const MESSAGE: &str = "Rate exceeded";

/// `None` when `principal` may proceed; otherwise the answer to send.
pub(super) fn check(state: &AppState, principal: &str, query_api: bool) -> Option<Response> {
    let retry_after = state.rate_limiter.check(principal).err()?;
    super::audit::note_throttled();
    tracing::info!(principal, ?retry_after, "request throttled");
    let mut response = if query_api {
        super::iam::error_response(StatusCode::BAD_REQUEST, "Throttling", MESSAGE)
    } else {
        let mut r = (
            StatusCode::TOO_MANY_REQUESTS,
            Json(serde_json::json!({ "message": MESSAGE })),
        )
            .into_response();
        r.headers_mut().insert(
            "x-amzn-ErrorType",
            HeaderValue::from_static("ThrottlingException"),
        );
        r
    };
    // Whole seconds, rounded up: a client that honours it finds a token.
    let seconds = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
    response
        .headers_mut()
        .insert("Retry-After", HeaderValue::from(seconds.max(1)));
    Some(response)
}
