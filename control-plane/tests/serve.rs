//! `serve` end to end in process: binds port 0, publishes its address, answers, and
//! shuts down gracefully; migrations are idempotent; the OpenAPI document covers every
//! operation.

mod common;

use std::time::Duration;

use mooring_control_plane::config::ServeConfig;

#[tokio::test]
async fn serve_publishes_its_address_answers_and_stops_on_signal() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = ServeConfig::for_tests(dir.path().join("data"), None);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(mooring_control_plane::serve(config, async {
        let _ = stopped.await;
    }));

    let listen_file = dir.path().join("data").join("listen");
    let addr = common::wait_for("the listen file", Duration::from_secs(20), || {
        let path = listen_file.clone();
        async move {
            std::fs::read_to_string(path)
                .ok()
                .map(|s| s.trim().to_owned())
        }
    })
    .await;
    assert!(
        addr.starts_with("127.0.0.1:") && !addr.ends_with(":0"),
        "{addr}"
    );

    let client = reqwest::Client::new();
    let health = client
        .get(format!("http://{addr}/healthz"))
        .send()
        .await
        .expect("healthz answers");
    assert_eq!(health.status(), 200);
    let path = "/v1/brokers/b-00000000-0000-0000-0000-000000000000";
    let unsigned = client
        .get(format!("http://{addr}{path}"))
        .send()
        .await
        .expect("describe answers");
    assert_eq!(unsigned.status(), 403);
    assert_eq!(
        unsigned.headers()["x-amzn-ErrorType"],
        "MissingAuthenticationTokenException"
    );

    // The first start wrote the admin's credentials; signed with them, it answers.
    let credentials = std::fs::read_to_string(dir.path().join("data").join("credentials"))
        .expect("the credentials file");
    let field = |name: &str| {
        credentials
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} = ")))
            .expect("field present")
            .to_owned()
    };
    let (key_id, secret) = (field("aws_access_key_id"), field("aws_secret_access_key"));
    let signed = mooring_control_plane::auth::sigv4::sign_request(
        "GET",
        path,
        "",
        &[("host", addr.as_str())],
        b"",
        &mooring_control_plane::auth::sigv4::SigningParams {
            access_key_id: &key_id,
            secret_access_key: &secret,
            session_token: None,
            region: "us-east-1",
            service: "mq",
            time: chrono::Utc::now(),
        },
    );
    let mut request = client.get(format!("http://{addr}{path}"));
    for (name, value) in signed {
        request = request.header(name, value);
    }
    let missing = request.send().await.expect("describe answers");
    assert_eq!(missing.status(), 404);
    assert_eq!(missing.headers()["x-amzn-ErrorType"], "NotFoundException");

    stop.send(()).expect("server still running");
    let result = tokio::time::timeout(Duration::from_secs(20), server)
        .await
        .expect("stops within 20 s");
    result.expect("task joined").expect("serve returns Ok");
    assert!(
        client
            .get(format!("http://{addr}/healthz"))
            .send()
            .await
            .is_err(),
        "no longer listening"
    );
}

#[tokio::test]
async fn serve_refuses_a_malformed_account_id() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = ServeConfig::for_tests(dir.path().to_owned(), None);
    config.account_id = "12345".to_owned();
    let err = mooring_control_plane::serve(config, std::future::pending())
        .await
        .expect_err("refused");
    assert!(format!("{err:#}").contains("12 digits"), "{err:#}");
}

#[tokio::test]
async fn migrations_are_idempotent_on_both_backends() {
    for t in common::stores().await {
        t.store
            .migrate()
            .await
            .unwrap_or_else(|e| panic!("{}: second migrate: {e:#}", t.backend));
        t.store.ping().await.expect("ping");
        t.finish().await;
    }
}

#[test]
fn openapi_documents_every_amazon_mq_operation() {
    let doc: serde_json::Value =
        serde_json::from_str(&mooring_control_plane::http::openapi::document())
            .expect("valid JSON");
    let mut ids: Vec<&str> = doc["paths"]
        .as_object()
        .expect("paths")
        .values()
        .flat_map(|item| item.as_object().expect("path item").values())
        .filter_map(|op| op["operationId"].as_str())
        .collect();
    ids.sort_unstable();
    let mut expected = vec![
        "CreateBroker",
        "DescribeBroker",
        "ListBrokers",
        "UpdateBroker",
        "RebootBroker",
        "DeleteBroker",
        "CreateUser",
        "DescribeUser",
        "UpdateUser",
        "DeleteUser",
        "ListUsers",
        "CreateConfiguration",
        "DescribeConfiguration",
        "UpdateConfiguration",
        "ListConfigurations",
        "DescribeConfigurationRevision",
        "ListConfigurationRevisions",
        "DeleteConfiguration",
        "CreateTags",
        "DeleteTags",
        "ListTags",
        "DescribeBrokerEngineTypes",
        "DescribeBrokerInstanceOptions",
        // Mooring's extension: the audit trail.
        "ListAuditEvents",
        // Mooring's extensions: replicated brokers, maintenance, AWS login.
        "ListBrokerEvents",
        "SwitchoverBroker",
        "DescribeMaintenance",
        "UpdateMaintenance",
        "LoginWithAws",
    ];
    expected.sort_unstable();
    assert_eq!(ids, expected);
    assert_eq!(
        mooring_control_plane::http::openapi::document(),
        mooring_control_plane::http::openapi::document(),
        "deterministic"
    );
}
