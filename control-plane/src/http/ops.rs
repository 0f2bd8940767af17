//! `/healthz` and `/metrics`.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;

use crate::app::AppState;

/// 200 when the database answers, 503 otherwise. The body's first line is `ok`; a second
/// says who holds the control-plane lease (whether this replica runs the reconcilers).
pub async fn healthz(State(state): State<AppState>) -> impl IntoResponse {
    match state.store.ping().await {
        Ok(()) => (StatusCode::OK, format!("ok\n{}", lease_line(&state))),
        Err(e) => {
            tracing::warn!(
                error = format!("{e:#}"),
                "health check: database unreachable"
            );
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "database unreachable\n".to_owned(),
            )
        }
    }
}

fn lease_line(state: &AppState) -> String {
    match state.metrics.lease() {
        None => String::new(),
        Some(l) if l.held => format!(
            "control-plane lease: held by this replica ({}), term {}\n",
            l.replica, l.term
        ),
        Some(l) if l.holder.is_empty() => format!(
            "control-plane lease: standby ({}); nobody holds it\n",
            l.replica
        ),
        Some(l) => format!(
            "control-plane lease: standby ({}); held by {}, term {}\n",
            l.replica, l.holder, l.term
        ),
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
