//! SigV4 authentication and IAM policy authorization of the public API, in process,
//! on both store backends: who may call, what they may do, and how refusals read.

mod common;

use common::{create_iam_user, stores, TestApi, TestKey};
use mooring_control_plane::app::principals::{self, KeyError};
use mooring_control_plane::store::PrincipalKind;
use serde_json::json;

async fn create_broker(api: &TestApi, name: &str, env: &str) -> String {
    let mut body = common::broker_body(name);
    body["tags"] = json!({ "env": env });
    api.post("/v1/brokers", body).await.ok()["brokerId"]
        .as_str()
        .expect("brokerId")
        .to_owned()
}

/// Issue 4, point 4: Describe/List everywhere, DeleteBroker except on env=prod.
const OPERATOR_POLICY: &str = r#"{
  "Version": "2012-10-17",
  "Statement": [
    {"Effect": "Allow", "Action": ["mq:Describe*", "mq:List*", "mq:DeleteBroker"], "Resource": "*"},
    {"Effect": "Deny", "Action": "mq:DeleteBroker", "Resource": "*",
     "Condition": {"StringEquals": {"aws:ResourceTag/env": "prod"}}}
  ]
}"#;

#[tokio::test]
async fn delete_is_denied_on_prod_brokers_and_allowed_on_dev_ones() {
    for store in stores().await {
        let mut api = TestApi::new(store).await;
        let prod = create_broker(&api, "prod-1", "prod").await;
        let dev = create_broker(&api, "dev-1", "dev").await;
        api.key = Some(create_iam_user(&api.state, "operator", OPERATOR_POLICY).await);

        assert!(api.get("/v1/brokers").await.ok()["brokerSummaries"].is_array());
        let denied = api
            .delete(&format!("/v1/brokers/{prod}"))
            .await
            .error("ForbiddenException", 403);
        let message = denied["message"].as_str().expect("message");
        assert!(
            message.contains("user/operator")
                && message.contains("mq:DeleteBroker")
                && message.contains("explicit deny"),
            "{message}"
        );
        api.get(&format!("/v1/brokers/{prod}")).await.ok();
        api.delete(&format!("/v1/brokers/{dev}")).await.ok();
        // Not allowed at all: implicit deny, without "explicit".
        let denied = api
            .post("/v1/brokers", common::broker_body("new"))
            .await
            .error("ForbiddenException", 403);
        assert!(!denied["message"]
            .as_str()
            .expect("message")
            .contains("explicit"));
        api.store.finish().await;
    }
}

#[tokio::test]
async fn unsigned_unknown_and_wrongly_signed_requests_get_aws_errors() {
    let mut api = TestApi::sqlite().await;
    let admin = api.key.clone().expect("admin key");

    api.key = None;
    api.get("/v1/brokers")
        .await
        .error("MissingAuthenticationTokenException", 403);
    // Unknown routes are refused the same way before anyone learns they are unknown.
    api.get("/v1/nothing-here")
        .await
        .error("MissingAuthenticationTokenException", 403);

    api.key = Some(TestKey {
        access_key_id: "AKIAUNKNOWNUNKNOWN00".to_owned(),
        secret_access_key: admin.secret_access_key.clone(),
    });
    api.get("/v1/brokers")
        .await
        .error("UnrecognizedClientException", 403);

    api.key = Some(TestKey {
        access_key_id: admin.access_key_id.clone(),
        secret_access_key: "not-the-secret".to_owned(),
    });
    let reply = api
        .get("/v1/brokers")
        .await
        .error("InvalidSignatureException", 403);
    assert!(reply["message"]
        .as_str()
        .expect("message")
        .starts_with("The request signature we calculated does not match"));

    api.key = Some(admin);
    api.get("/v1/brokers").await.ok();
    api.store.finish().await;
}

#[tokio::test]
async fn health_and_metrics_stay_open() {
    let mut api = TestApi::sqlite().await;
    api.key = None;
    assert_eq!(api.get("/healthz").await.status.as_u16(), 200);
    assert_eq!(api.get("/metrics").await.status.as_u16(), 200);
    api.store.finish().await;
}

#[tokio::test]
async fn a_user_holds_at_most_two_keys_and_secrets_are_sealed() {
    for store in stores().await {
        let api = TestApi::new(store).await;
        let state = &api.state;
        let user = principals::user_create(&state.store, "aws", "000000000000", "two-keys")
            .await
            .expect("user");
        let first = principals::access_key_create(&state.store, &state.master_key, &user.id)
            .await
            .expect("first key");
        principals::access_key_create(&state.store, &state.master_key, &user.id)
            .await
            .expect("second key");
        let third = principals::access_key_create(&state.store, &state.master_key, &user.id).await;
        assert!(matches!(third, Err(KeyError::LimitExceeded)), "{third:?}");
        let stored = state
            .store
            .access_key_get(&first.access_key_id)
            .await
            .expect("read")
            .expect("present");
        assert!(!stored.secret_sealed.contains(&first.secret_access_key));
        assert!(!stored
            .secret_sealed
            .contains(&hex::encode(&first.secret_access_key)));
        assert_eq!(
            state.master_key.open(&stored.secret_sealed).as_deref(),
            Ok(first.secret_access_key.as_str())
        );

        // Deleting one frees its slot.
        state
            .store
            .access_key_delete(&user.id, &first.access_key_id)
            .await
            .expect("delete");
        principals::access_key_create(&state.store, &state.master_key, &user.id)
            .await
            .expect("a key again after a delete");
        api.store.finish().await;
    }
}

#[tokio::test]
async fn group_and_managed_policies_apply_to_members() {
    for store in stores().await {
        let mut api = TestApi::new(store).await;
        let state = api.state.clone();
        // Its own policy allows something else only.
        let key = create_iam_user(
            &state,
            "member",
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"mq:DescribeBroker","Resource":"*"}]}"#,
        )
        .await;
        api.key = Some(key);
        api.get("/v1/brokers")
            .await
            .error("ForbiddenException", 403);

        let member = state
            .store
            .iam_entity_get_by_name(PrincipalKind::User, "000000000000", "member")
            .await
            .expect("read")
            .expect("member exists");
        let group = mooring_control_plane::store::IamEntityRecord {
            id: "AGPATESTGROUP".to_owned(),
            account_id: "000000000000".to_owned(),
            name: "readers".to_owned(),
            path: "/".to_owned(),
            arn: "arn:aws:iam::000000000000:group/readers".to_owned(),
            created_at: chrono::Utc::now(),
        };
        state
            .store
            .iam_entity_insert(PrincipalKind::Group, &group)
            .await
            .expect("group");
        let policy = mooring_control_plane::store::IamEntityRecord {
            id: "ANPATESTPOLICY".to_owned(),
            name: "list".to_owned(),
            arn: "arn:aws:iam::000000000000:policy/list".to_owned(),
            ..group.clone()
        };
        state
            .store
            .managed_policy_insert(
                &policy,
                r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"mq:ListBrokers","Resource":"*"}]}"#,
            )
            .await
            .expect("managed policy");
        state
            .store
            .policy_attach(PrincipalKind::Group, &group.id, &policy.arn)
            .await
            .expect("attach");
        // Attached to the group, but the user is not a member yet.
        api.get("/v1/brokers")
            .await
            .error("ForbiddenException", 403);
        state
            .store
            .iam_group_add_user(&group.id, &member.id)
            .await
            .expect("membership");
        api.get("/v1/brokers").await.ok();
        api.get("/v1/configurations")
            .await
            .error("ForbiddenException", 403);
        api.store.finish().await;
    }
}

#[tokio::test]
async fn bootstrap_writes_private_credentials_once() {
    use std::os::unix::fs::PermissionsExt as _;

    let api = TestApi::sqlite().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let master = principals::load_master_key(None, dir.path()).expect("master key");
    let key_mode = std::fs::metadata(dir.path().join("master.key"))
        .expect("master.key written")
        .permissions()
        .mode();
    assert_eq!(key_mode & 0o777, 0o600);
    let written =
        principals::bootstrap(&api.state.store, &master, "aws", "000000000000", dir.path())
            .await
            .expect("bootstrap")
            .expect("first start writes the file");
    let meta = std::fs::metadata(&written).expect("credentials written");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let text = std::fs::read_to_string(&written).expect("read");
    assert!(text.starts_with("[default]\n"), "{text}");
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} = ")))
            .expect("field present")
            .to_owned()
    };
    let key_id = field("aws_access_key_id");
    let secret = field("aws_secret_access_key");
    let caller = principals::caller_for_key(&api.state.store, &master, &key_id)
        .await
        .expect("lookup")
        .expect("the written key exists");
    assert_eq!(caller.credential.secret_access_key, secret);
    assert_eq!(caller.user.name, principals::ADMIN_USER);

    // A restart changes nothing, and reloads the same master key.
    let again = principals::load_master_key(None, dir.path()).expect("reload");
    assert!(
        principals::bootstrap(&api.state.store, &again, "aws", "000000000000", dir.path())
            .await
            .expect("second bootstrap")
            .is_none()
    );
    assert_eq!(std::fs::read_to_string(&written).expect("read"), text);
    // An explicit key file must exist.
    assert!(principals::load_master_key(Some(&dir.path().join("absent")), dir.path()).is_err());
    api.store.finish().await;
}
