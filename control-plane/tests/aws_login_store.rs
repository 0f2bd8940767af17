//! The AWS login tables on both backends (SQLite always, Postgres when reachable,
//! always under CI): mappings, the one-importer-per-role rule, and replacing a role's
//! imported policies without touching the ones an administrator wrote.

mod common;

use chrono::{SubsecRound as _, Utc};
use mooring_control_plane::app::principals;
use mooring_control_plane::store::{
    AwsLoginMappingRecord, ImportedInline, ImportedManaged, PrincipalKind, StoreError,
    IMPORTED_POLICY_PATH,
};

const ACCOUNT: &str = "000000000000";

fn mapping(pattern: &str, role: &str, import: bool) -> AwsLoginMappingRecord {
    AwsLoginMappingRecord {
        arn_pattern: pattern.to_owned(),
        account_id: ACCOUNT.to_owned(),
        role_name: role.to_owned(),
        import_policies: import,
        created_at: Utc::now().trunc_subsecs(3),
    }
}

fn doc(action: &str) -> String {
    format!(
        r#"{{"Version":"2012-10-17","Statement":[{{"Effect":"Allow","Action":"{action}","Resource":"*"}}]}}"#
    )
}

fn managed(name: &str, action: &str) -> ImportedManaged {
    ImportedManaged {
        arn: principals::iam_arn("aws", ACCOUNT, "policy", IMPORTED_POLICY_PATH, name),
        id: format!("ANPA{name}"),
        name: name.to_owned(),
        document: doc(action),
    }
}

fn inline(name: &str, action: &str) -> ImportedInline {
    ImportedInline {
        name: name.to_owned(),
        document: doc(action),
    }
}

#[tokio::test]
async fn mappings_are_written_replaced_listed_and_deleted() {
    for t in common::stores().await {
        let s = &t.store;
        let b = t.backend;
        s.iam_account_ensure(ACCOUNT).await.expect("account");
        let users = mapping("arn:aws:iam::123456789012:user/*", "users", false);
        s.aws_login_mapping_put(&users).await.expect("insert");
        let readers = mapping("arn:aws:iam::123456789012:role/Readers", "readers", true);
        s.aws_login_mapping_put(&readers).await.expect("insert");
        assert_eq!(
            s.aws_login_mapping_list().await.expect("list"),
            [readers.clone(), users.clone()],
            "{b}: listed by pattern"
        );

        // The same pattern again replaces its row.
        let users_again = mapping("arn:aws:iam::123456789012:user/*", "others", false);
        s.aws_login_mapping_put(&users_again)
            .await
            .expect("replace");
        let listed = s.aws_login_mapping_list().await.expect("list");
        assert_eq!(listed.len(), 2, "{b}");
        assert_eq!(listed[1].role_name, "others", "{b}");

        // A second importing mapping into the same role is refused by the schema;
        // a non-importing one is not.
        let second = mapping("arn:aws:iam::123456789012:role/Other", "readers", true);
        assert!(
            matches!(
                s.aws_login_mapping_put(&second).await,
                Err(StoreError::Constraint(_))
            ),
            "{b}: two importers into one role"
        );
        let plain = mapping("arn:aws:iam::123456789012:role/Other", "readers", false);
        s.aws_login_mapping_put(&plain)
            .await
            .expect("non-importing");

        s.aws_login_mapping_delete(&plain.arn_pattern)
            .await
            .expect("delete");
        assert!(
            matches!(
                s.aws_login_mapping_delete(&plain.arn_pattern).await,
                Err(StoreError::NotFound(_))
            ),
            "{b}: deleting twice"
        );
        assert_eq!(s.aws_login_mapping_list().await.expect("list").len(), 2);
        t.finish().await;
    }
}

#[tokio::test]
async fn an_import_replaces_only_the_previous_import() {
    for t in common::stores().await {
        let s = &t.store;
        let b = t.backend;
        let role = principals::entity_create(s, PrincipalKind::Role, "aws", ACCOUNT, "readers")
            .await
            .expect("role");
        // What an administrator gave the role: must survive every import.
        s.inline_policy_put(
            PrincipalKind::Role,
            &role.id,
            "admin-written",
            &doc("mq:Admin"),
        )
        .await
        .expect("inline");
        let own = principals::managed_policy_create(s, "aws", ACCOUNT, "Own", &doc("mq:Own"))
            .await
            .expect("managed");
        s.policy_attach(PrincipalKind::Role, &role.id, &own.arn)
            .await
            .expect("attach");

        let documents = |wanted: &[&str]| {
            let mut v: Vec<String> = wanted.iter().map(|a| doc(a)).collect();
            v.sort();
            v
        };
        let read = || async {
            let mut v = s
                .policy_documents_for_role(&role.id)
                .await
                .expect("documents");
            v.sort();
            v
        };

        s.aws_import_replace(
            ACCOUNT,
            &role.id,
            &[
                managed("aws-import.1.A", "mq:A"),
                managed("aws-import.1.B", "mq:B"),
            ],
            &[inline("aws-import.inline.C", "mq:C")],
        )
        .await
        .expect("first import");
        assert_eq!(
            read().await,
            documents(&["mq:Admin", "mq:Own", "mq:A", "mq:B", "mq:C"]),
            "{b}: first import"
        );

        // B detached and C deleted in AWS, A changed: the next import says so.
        s.aws_import_replace(
            ACCOUNT,
            &role.id,
            &[managed("aws-import.1.A", "mq:A2")],
            &[],
        )
        .await
        .expect("second import");
        assert_eq!(
            read().await,
            documents(&["mq:Admin", "mq:Own", "mq:A2"]),
            "{b}: second import"
        );

        // A managed name taken by an administrator's policy refuses the import whole.
        let taken =
            principals::managed_policy_create(s, "aws", ACCOUNT, "aws-import.1.X", &doc("mq:X"))
                .await
                .expect("admin policy with an import-like name");
        assert_ne!(taken.arn, managed("aws-import.1.X", "mq:X").arn);
        let refused = s
            .aws_import_replace(
                ACCOUNT,
                &role.id,
                &[managed("aws-import.1.X", "mq:Y")],
                &[inline("aws-import.inline.D", "mq:D")],
            )
            .await;
        assert!(
            matches!(refused, Err(StoreError::Constraint(_))),
            "{b}: {refused:?}"
        );
        assert_eq!(
            read().await,
            documents(&["mq:Admin", "mq:Own", "mq:A2"]),
            "{b}: a refused import changes nothing"
        );
        t.finish().await;
    }
}
