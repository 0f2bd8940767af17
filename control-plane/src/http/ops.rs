//! `/healthz` and `/metrics`.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;

use crate::app::AppState;

/// 200 when the database answers, 503 otherwise.
pub async fn healthz(State(state): State<AppState>) -> impl IntoResponse {
    match state.store.ping().await {
        Ok(()) => (StatusCode::OK, "ok\n"),
        Err(e) => {
            tracing::warn!(
                error = format!("{e:#}"),
                "health check: database unreachable"
            );
            (StatusCode::SERVICE_UNAVAILABLE, "database unreachable\n")
        }
    }
}

pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let brokers = match state.store.broker_count_by_state().await {
        Ok(counts) => counts,
        Err(e) => {
            // Latency and reconcile metrics are still worth serving without the gauge.
            tracing::warn!(error = format!("{e:#}"), "metrics: counting brokers failed");
            Vec::new()
        }
    };
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(&brokers),
    )
}
