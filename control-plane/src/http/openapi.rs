//! The OpenAPI document of the public API, generated from the handlers' annotations.
//! `mooring openapi` prints it; `openapi/mooring.json` is its committed copy.

use utoipa::OpenApi;

use super::{audit, brokers, catalog, configurations, login, tags, users};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Mooring",
        description = "Amazon MQ's REST-JSON API (service `mq`, version 2017-11-27), served by Mooring. \
                       Errors carry their name in the `x-amzn-ErrorType` header.",
        license(name = "Apache-2.0"),
        version = "2017-11-27"
    ),
    paths(
        brokers::create_broker,
        brokers::describe_broker,
        brokers::list_brokers,
        brokers::update_broker,
        brokers::reboot_broker,
        super::switchover::switchover_broker,
        super::events::list_broker_events,
        brokers::delete_broker,
        users::create_user,
        users::describe_user,
        users::update_user,
        users::delete_user,
        users::list_users,
        configurations::create_configuration,
        configurations::describe_configuration,
        configurations::update_configuration,
        configurations::list_configurations,
        configurations::describe_revision,
        configurations::list_revisions,
        configurations::delete_configuration,
        tags::create_tags,
        tags::delete_tags,
        tags::list_tags,
        catalog::engine_types,
        catalog::instance_options,
        super::maintenance::describe_maintenance,
        super::maintenance::update_maintenance,
        audit::list_audit_events,
        login::login,
    )
)]
pub struct ApiDoc;

/// The document as pretty JSON, byte-for-byte stable between runs.
pub fn document() -> String {
    let mut text = ApiDoc::openapi()
        .to_pretty_json()
        .expect("the OpenAPI document always serializes");
    text.push('\n');
    text
}
