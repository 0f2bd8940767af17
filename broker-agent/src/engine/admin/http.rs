//! The admin HTTP server: routes, and the hop from async handlers to the blocking view.

use std::future::Future;
use std::io;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use tokio::net::TcpListener;

use super::metrics;
use super::view::AdminView;

type SharedView = Arc<dyn AdminView>;

/// Serves the admin API on `listener` until `shutdown` resolves, then finishes the requests in
/// flight and returns.
pub async fn serve(
    listener: TcpListener,
    view: SharedView,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    axum::serve(listener, router(view))
        .with_graceful_shutdown(shutdown)
        .await
}

pub(super) fn router(view: SharedView) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(prometheus))
        .route("/api/overview", get(overview))
        .route("/api/queues", get(queues))
        .route("/api/queues/{vhost}", get(queues_in_vhost))
        .route("/api/connections", get(connections))
        .with_state(view)
}

/// Runs `f` on a blocking thread: the view may take engine locks, and a long listing must not
/// stall the runtime that also serves AMQP connections.
async fn snapshot<T: Send + 'static>(
    view: &SharedView,
    f: impl FnOnce(&dyn AdminView) -> T + Send + 'static,
) -> Result<T, StatusCode> {
    let view = Arc::clone(view);
    tokio::task::spawn_blocking(move || f(&*view))
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "admin view panicked");
            StatusCode::INTERNAL_SERVER_ERROR
        })
}

async fn healthz(State(view): State<SharedView>) -> Result<Json<serde_json::Value>, StatusCode> {
    let alarms = snapshot(&view, |v| v.overview().alarms).await?;
    Ok(Json(json!({ "status": "ok", "alarms": alarms })))
}

async fn prometheus(State(view): State<SharedView>) -> Result<Response, StatusCode> {
    let text = snapshot(&view, |v| {
        metrics::render(&v.overview(), &v.storage_stats(), &v.queues())
    })
    .await?;
    Ok(([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response())
}

/// RabbitMQ's `/api/overview` shape, trimmed to what the engine counts.
async fn overview(State(view): State<SharedView>) -> Result<Json<serde_json::Value>, StatusCode> {
    let (o, s) = snapshot(&view, |v| (v.overview(), v.storage_stats())).await?;
    Ok(Json(json!({
        "product_name": "Mooring",
        "object_totals": {
            "connections": o.connections,
            "channels": o.channels,
            "queues": o.queues,
            "consumers": o.consumers,
        },
        "queue_totals": {
            "messages": o.messages_ready + o.messages_unacknowledged,
            "messages_ready": o.messages_ready,
            "messages_unacknowledged": o.messages_unacknowledged,
        },
        "message_stats": {
            "publish": o.published_total,
            "deliver_get": o.delivered_total,
            "ack": o.acked_total,
            "confirm": o.confirmed_total,
            "return_unroutable": o.returned_total,
        },
        "alarms": o.alarms,
        "storage": {
            "bytes_on_disk": s.bytes_on_disk,
            "fsyncs_total": s.fsyncs_total,
            "segments": s.segments,
        },
    })))
}

async fn queues(State(view): State<SharedView>) -> Result<Response, StatusCode> {
    let queues = snapshot(&view, |v| v.queues()).await?;
    Ok(Json(queues).into_response())
}

/// `/api/queues/%2F` lists the queues of vhost `/`, as in RabbitMQ.
async fn queues_in_vhost(
    State(view): State<SharedView>,
    Path(vhost): Path<String>,
) -> Result<Response, StatusCode> {
    let mut queues = snapshot(&view, |v| v.queues()).await?;
    queues.retain(|q| q.vhost == vhost);
    Ok(Json(queues).into_response())
}

async fn connections(State(view): State<SharedView>) -> Result<Response, StatusCode> {
    let connections = snapshot(&view, |v| v.connections()).await?;
    Ok(Json(connections).into_response())
}
