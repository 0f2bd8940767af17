//! HTTP: the public API in Amazon MQ's wire format, health and metrics. Handlers only
//! parse and answer; the rules live in `app/`.
//!
//! Layers, outermost first: request tracing, the audit trail ([`audit::record`]), request
//! ids, latency metrics by route, then authentication ([`auth::authenticate`], the seam
//! where SigV4 goes, with the rate limit).

pub mod agent;
mod audit;
mod auth;
mod brokers;
mod catalog;
mod configurations;
mod events;
mod extract;
mod iam;
mod iam_manage;
mod iam_roles;
mod login;
mod maintenance;
mod observe;
pub mod openapi;
mod ops;
mod switchover;
mod tags;
mod throttle;
pub mod tls;
mod users;
mod views;

use axum::middleware;
use axum::routing::{get, post};
use axum::Router;
use tower_http::trace::TraceLayer;

use crate::app::AppState;
use crate::error::ApiError;

/// The public API (Amazon MQ routes), `/healthz` and `/metrics`.
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route(
            "/v1/brokers",
            post(brokers::create_broker).get(brokers::list_brokers),
        )
        .route(
            "/v1/brokers/{broker-id}",
            get(brokers::describe_broker)
                .put(brokers::update_broker)
                .delete(brokers::delete_broker),
        )
        .route(
            "/v1/brokers/{broker-id}/reboot",
            post(brokers::reboot_broker),
        )
        .route(
            "/v1/brokers/{broker-id}/switchover",
            post(switchover::switchover_broker),
        )
        .route(
            "/v1/brokers/{broker-id}/events",
            get(events::list_broker_events),
        )
        .route("/v1/brokers/{broker-id}/users", get(users::list_users))
        .route(
            "/v1/brokers/{broker-id}/users/{username}",
            post(users::create_user)
                .get(users::describe_user)
                .put(users::update_user)
                .delete(users::delete_user),
        )
        .route(
            "/v1/configurations",
            post(configurations::create_configuration).get(configurations::list_configurations),
        )
        .route(
            "/v1/configurations/{configuration-id}",
            get(configurations::describe_configuration)
                .put(configurations::update_configuration)
                .delete(configurations::delete_configuration),
        )
        .route(
            "/v1/configurations/{configuration-id}/revisions",
            get(configurations::list_revisions),
        )
        .route(
            "/v1/configurations/{configuration-id}/revisions/{configuration-revision}",
            get(configurations::describe_revision),
        )
        .route(
            "/v1/tags/{resource-arn}",
            post(tags::create_tags)
                .get(tags::list_tags)
                .delete(tags::delete_tags),
        )
        .route("/", post(iam::query))
        .route("/v1/audit-events", get(audit::list_audit_events))
        .route(
            "/v1/maintenance",
            get(maintenance::describe_maintenance).put(maintenance::update_maintenance),
        )
        .route("/v1/broker-engine-types", get(catalog::engine_types))
        .route(
            "/v1/broker-instance-options",
            get(catalog::instance_options),
        )
        .fallback(unknown_route)
        .method_not_allowed_fallback(unknown_route)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ));

    Router::new()
        .merge(api)
        // Outside authentication: the body (a signed STS request) is the proof.
        .route("/v1/login/aws", post(login::login))
        .route("/healthz", get(ops::healthz))
        .route("/metrics", get(ops::metrics))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            observe::record_latency,
        ))
        .layer(middleware::from_fn(observe::request_id))
        // Outside the request id (it records it), inside tracing.
        .layer(middleware::from_fn_with_state(state.clone(), audit::record))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

async fn unknown_route() -> ApiError {
    ApiError::NotFound {
        attribute: None,
        message: "No such operation.".to_owned(),
    }
}
