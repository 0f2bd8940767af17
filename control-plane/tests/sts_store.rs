//! Roles, temporary credentials and principal tags in the store, on SQLite and
//! on Postgres (when reachable; always under CI): issuing a session and
//! resolving its key back to a caller, expiry and the sweep of old sessions,
//! deletes that cascade, tag limits, delete conflicts and paging.

mod common;

use std::time::Duration;

use chrono::Utc;
use mooring_control_plane::app::principals::{self, caller_for_key};
use mooring_control_plane::app::roles::{self, NewRole};
use mooring_control_plane::app::sessions::{
    self, issue_session, issue_session_at, SessionError, SessionPrincipal,
};
use mooring_control_plane::auth::keys::MasterKey;
use mooring_control_plane::store::{
    Constraint, PrincipalKind, RoleRecord, Store, StoreError, MAX_PRINCIPAL_TAGS,
};

const ACCOUNT: &str = "000000000000";
const TRUST: &str = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::000000000000:root"},"Action":"sts:AssumeRole"}]}"#;
const LIST: &str = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"mq:List*","Resource":"*"}]}"#;

async fn role(store: &Store, name: &str) -> RoleRecord {
    roles::role_create(
        store,
        &NewRole {
            partition: "aws",
            account_id: ACCOUNT,
            name,
            assume_role_policy: TRUST,
            max_session_duration: 3600,
            description: "",
        },
    )
    .await
    .expect("role created")
}

#[tokio::test]
async fn sessions_resolve_to_the_assumed_role_until_they_expire() {
    for t in common::stores().await {
        let s = &t.store;
        let (master, _) = MasterKey::generate();
        let ops = role(s, "ops").await;
        s.inline_policy_put(PrincipalKind::Role, &ops.entity.id, "list", LIST)
            .await
            .expect("role policy");
        s.principal_tags_put(
            PrincipalKind::Role,
            &ops.entity.id,
            &[("team".to_owned(), "mq".to_owned())],
        )
        .await
        .expect("tags");
        let session_policy =
            r#"{"Statement":{"Effect":"Allow","Action":"mq:ListBrokers","Resource":"*"}}"#;
        let creds = issue_session(
            s,
            &master,
            SessionPrincipal::Role {
                role: &ops,
                session_name: "ci-run",
            },
            Duration::from_secs(900),
            Some(session_policy),
            "arn:aws:iam::000000000000:user/alice",
        )
        .await
        .expect("issued");
        assert!(creds.access_key_id.starts_with("ASIA"), "{}", t.backend);
        assert_eq!(
            creds.arn,
            "arn:aws:sts::000000000000:assumed-role/ops/ci-run"
        );
        let left = creds.expiration - Utc::now();
        assert!(left.num_seconds() > 890 && left.num_seconds() <= 900);

        // The store holds neither the secret nor the token in the clear.
        let row = s
            .session_get(&creds.access_key_id)
            .await
            .expect("read")
            .expect("stored");
        assert!(!row.secret_sealed.contains(&creds.secret_access_key));
        assert!(!row.token_sealed.contains(&creds.session_token));

        let caller = caller_for_key(s, &master, &creds.access_key_id)
            .await
            .expect("lookup")
            .expect("known");
        assert_eq!(caller.user.arn, creds.arn, "{}", t.backend);
        assert_eq!(caller.user.id, format!("{}:ci-run", ops.entity.id));
        assert_eq!(caller.credential.secret_access_key, creds.secret_access_key);
        assert_eq!(
            caller.credential.session_token.as_deref(),
            Some(creds.session_token.as_str())
        );
        assert_eq!(caller.policies.len(), 1);
        assert_eq!(caller.tags, vec![("team".to_owned(), "mq".to_owned())]);
        let session = caller.session.expect("a session");
        assert_eq!(session.role.map(|r| r.arn), Some(ops.entity.arn.clone()));
        assert!(session.session_policy.is_some());
        assert!(session.expires_at > Utc::now());

        // Another master key opens nothing: the lookup fails, it does not guess.
        let (other, _) = MasterKey::generate();
        assert!(caller_for_key(s, &other, &creds.access_key_id)
            .await
            .is_err());
        // An unknown temporary key is unknown.
        assert!(caller_for_key(s, &master, "ASIAAAAAAAAAAAAAAAAA")
            .await
            .expect("lookup")
            .is_none());

        // A session issued two hours ago has expired: still resolved (so the HTTP
        // layer answers ExpiredToken), then swept once past the retention.
        let old = issue_session_at(
            s,
            &master,
            SessionPrincipal::Role {
                role: &ops,
                session_name: "old",
            },
            Duration::from_secs(900),
            None,
            "arn:aws:iam::000000000000:user/alice",
            Utc::now() - chrono::Duration::hours(2),
        )
        .await
        .expect("issued in the past");
        let expired = caller_for_key(s, &master, &old.access_key_id)
            .await
            .expect("lookup")
            .expect("still known");
        assert!(expired.session.expect("session").expires_at < Utc::now());
        let cutoff =
            Utc::now() - chrono::Duration::from_std(sessions::EXPIRED_RETENTION).expect("fits");
        assert_eq!(s.session_delete_expired(cutoff).await.expect("sweep"), 1);
        assert!(s
            .session_get(&old.access_key_id)
            .await
            .expect("read")
            .is_none());
        assert!(s
            .session_get(&creds.access_key_id)
            .await
            .expect("read")
            .is_some());

        // Deleting the role ends its sessions.
        s.inline_policy_delete(PrincipalKind::Role, &ops.entity.id, "list")
            .await
            .expect("policy removed");
        s.iam_entity_delete(PrincipalKind::Role, &ops.entity.id)
            .await
            .expect("role deleted");
        assert!(caller_for_key(s, &master, &creds.access_key_id)
            .await
            .expect("lookup")
            .is_none());
        assert!(s
            .principal_tags_list(PrincipalKind::Role, &ops.entity.id)
            .await
            .expect("tags")
            .is_empty());
        t.finish().await;
    }
}

#[tokio::test]
async fn sessions_refuse_bad_durations_names_and_policies() {
    let t = common::sqlite_store().await;
    let s = &t.store;
    let (master, _) = MasterKey::generate();
    let ops = role(s, "ops").await;
    let issue = |secs: u64, name: &'static str, policy: Option<&'static str>| {
        let ops = ops.clone();
        let master = master.clone();
        async move {
            issue_session(
                s,
                &master,
                SessionPrincipal::Role {
                    role: &ops,
                    session_name: name,
                },
                Duration::from_secs(secs),
                policy,
                "arn:aws:iam::000000000000:root",
            )
            .await
        }
    };
    assert!(matches!(
        issue(899, "ok", None).await,
        Err(SessionError::InvalidDuration { .. })
    ));
    assert!(matches!(
        issue(3601, "ok", None).await,
        Err(SessionError::InvalidDuration { max: 3600, .. })
    ));
    assert!(matches!(
        issue(900, "no spaces", None).await,
        Err(SessionError::InvalidSessionName(_))
    ));
    assert!(matches!(
        issue(900, "ok", Some("{\"Statement\":1}")).await,
        Err(SessionError::MalformedPolicy(_))
    ));
    issue(3600, "ok", None).await.expect("within bounds");

    // A user's own short-lived credentials act as the user.
    let user = principals::user_create(s, "aws", ACCOUNT, "alice")
        .await
        .expect("user");
    let creds = issue_session(
        s,
        &master,
        SessionPrincipal::User {
            user: &user,
            session_name: "login",
        },
        Duration::from_secs(3600),
        None,
        "arn:aws:iam::123456789012:user/alice",
    )
    .await
    .expect("issued");
    assert_eq!(creds.arn, user.arn);
    let caller = caller_for_key(s, &master, &creds.access_key_id)
        .await
        .expect("lookup")
        .expect("known");
    assert_eq!(caller.user.id, user.id);
    assert!(caller.session.expect("session").role.is_none());
    t.finish().await;
}

#[tokio::test]
async fn roles_tags_conflicts_and_paging() {
    for t in common::stores().await {
        let s = &t.store;
        let first = role(s, "a-role").await;
        assert!(matches!(
            roles::role_create(
                s,
                &NewRole {
                    partition: "aws",
                    account_id: ACCOUNT,
                    name: "a-role",
                    assume_role_policy: TRUST,
                    max_session_duration: 3600,
                    description: "",
                },
            )
            .await,
            Err(StoreError::Constraint(Constraint::IamEntityName))
        ));
        let got = s
            .role_get_by_name(ACCOUNT, "a-role")
            .await
            .expect("read")
            .expect("found");
        assert_eq!(got, first, "{}", t.backend);
        role(s, "b-role").await;
        role(s, "c-role").await;
        let page = s.role_page(ACCOUNT, None, 2).await.expect("page");
        assert_eq!(
            page.iter()
                .map(|r| r.entity.name.as_str())
                .collect::<Vec<_>>(),
            ["a-role", "b-role"]
        );
        let rest = s.role_page(ACCOUNT, Some("b-role"), 2).await.expect("page");
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].entity.name, "c-role");
        s.role_set_trust_policy(&first.entity.id, "{}")
            .await
            .expect("updated");

        // Tags: replaced by key, all-or-nothing past the limit.
        let id = &first.entity.id;
        let tag = |k: usize| (format!("k{k:02}"), format!("v{k}"));
        let forty: Vec<_> = (0..40).map(tag).collect();
        assert!(s
            .principal_tags_put(PrincipalKind::Role, id, &forty)
            .await
            .expect("put"));
        let too_many: Vec<_> = (40..=MAX_PRINCIPAL_TAGS).map(tag).collect();
        assert!(!s
            .principal_tags_put(PrincipalKind::Role, id, &too_many)
            .await
            .expect("put"));
        assert_eq!(
            s.principal_tags_list(PrincipalKind::Role, id)
                .await
                .expect("list")
                .len(),
            40
        );
        s.principal_tags_put(
            PrincipalKind::Role,
            id,
            &[("k00".to_owned(), "new".to_owned())],
        )
        .await
        .expect("replace");
        s.principal_tags_remove(
            PrincipalKind::Role,
            id,
            &["k01".to_owned(), "none".to_owned()],
        )
        .await
        .expect("remove");
        let tags = s
            .principal_tags_list(PrincipalKind::Role, id)
            .await
            .expect("list");
        assert_eq!(tags.len(), 39);
        assert_eq!(tags[0], ("k00".to_owned(), "new".to_owned()));

        // Usage, detach, and a managed policy that cannot go while attached.
        let user = principals::user_create(s, "aws", ACCOUNT, "bob")
            .await
            .expect("user");
        let policy = principals::managed_policy_create(s, "aws", ACCOUNT, "list", LIST)
            .await
            .expect("policy");
        s.policy_attach(PrincipalKind::User, &user.id, &policy.arn)
            .await
            .expect("attach");
        let usage = s
            .principal_usage(PrincipalKind::User, &user.id)
            .await
            .expect("usage");
        assert_eq!(usage.attached_policies, 1);
        assert!(matches!(
            s.managed_policy_delete(&policy.arn).await,
            Err(StoreError::Constraint(Constraint::Other))
        ));
        let listed = s
            .managed_policy_page(ACCOUNT, None, 10, true)
            .await
            .expect("page");
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].attachment_count, 1);
        s.policy_detach(PrincipalKind::User, &user.id, &policy.arn)
            .await
            .expect("detach");
        assert!(matches!(
            s.policy_detach(PrincipalKind::User, &user.id, &policy.arn)
                .await,
            Err(StoreError::NotFound(_))
        ));
        s.managed_policy_delete(&policy.arn).await.expect("delete");
        assert!(matches!(
            s.managed_policy_delete(&policy.arn).await,
            Err(StoreError::NotFound(_))
        ));

        // Access key status.
        let master = MasterKey::generate().0;
        let key = principals::access_key_create(s, &master, &user.id)
            .await
            .expect("key");
        s.access_key_set_status(&user.id, &key.access_key_id, "Inactive")
            .await
            .expect("status");
        assert!(caller_for_key(s, &master, &key.access_key_id)
            .await
            .expect("lookup")
            .is_none());
        assert!(matches!(
            s.access_key_set_status(&user.id, "AKIANONE", "Active")
                .await,
            Err(StoreError::NotFound(_))
        ));
        t.finish().await;
    }
}

#[tokio::test]
async fn the_cleanup_loop_sweeps_old_sessions_and_stops() {
    let t = common::sqlite_store().await;
    let s = &t.store;
    let (master, _) = MasterKey::generate();
    let ops = role(s, "ops").await;
    let issue = |hours_ago: i64| {
        let (ops, master) = (ops.clone(), master.clone());
        async move {
            issue_session_at(
                s,
                &master,
                SessionPrincipal::Role {
                    role: &ops,
                    session_name: "sweep",
                },
                Duration::from_secs(900),
                None,
                "arn:aws:iam::000000000000:root",
                Utc::now() - chrono::Duration::hours(hours_ago),
            )
            .await
            .expect("issued")
        }
    };
    let long_gone = issue(3).await;
    // Expired 45 minutes ago: kept, so that it still answers "expired".
    let recent = issue(1).await;
    let live = issue(0).await;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let sweeper = tokio::spawn(sessions::cleanup_loop(s.clone(), stop_rx));
    // The first sweep runs at once; wait for it with a deadline.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while s
        .session_get(&long_gone.access_key_id)
        .await
        .expect("read")
        .is_some()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the sweep did not remove the old session within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for kept in [&recent, &live] {
        assert!(s
            .session_get(&kept.access_key_id)
            .await
            .expect("read")
            .is_some());
    }
    stop_tx.send(true).expect("the loop listens");
    tokio::time::timeout(Duration::from_secs(5), sweeper)
        .await
        .expect("the loop stops when told")
        .expect("the loop did not panic");
    t.finish().await;
}
