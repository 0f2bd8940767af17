//! The `aws_login_mappings` table (which AWS principals may log in as which Mooring
//! role), and the copy of an AWS principal's imported policies onto a Mooring role.
//! See `app/aws_login.rs` for the rules.

use chrono::{DateTime, Utc};
use sqlx::FromRow;

use super::{with_pool, Store, StoreError};

/// Imported managed policies live under this IAM path, imported inline policies
/// carry [`IMPORTED_INLINE_PREFIX`]: that is how a new import finds the previous
/// one to replace, without touching policies an administrator wrote.
pub const IMPORTED_POLICY_PATH: &str = "/aws-import/";
/// The name prefix of imported inline policies (reserved: see README "AWS login").
pub const IMPORTED_INLINE_PREFIX: &str = "aws-import.";

/// One AWS ARN pattern and the Mooring role it logs in as.
#[derive(Debug, Clone, PartialEq, Eq, FromRow)]
pub struct AwsLoginMappingRecord {
    /// An AWS principal ARN, possibly with IAM wildcards (`*`, `?`).
    pub arn_pattern: String,
    /// The Mooring account of the role.
    pub account_id: String,
    pub role_name: String,
    /// Whether each login copies the AWS principal's policies onto the role.
    pub import_policies: bool,
    pub created_at: DateTime<Utc>,
}

/// A managed policy to create or refresh under [`IMPORTED_POLICY_PATH`] and attach.
#[derive(Debug, Clone)]
pub struct ImportedManaged {
    /// Mooring's ARN for it (path included).
    pub arn: String,
    pub id: String,
    pub name: String,
    pub document: String,
}

/// An inline policy to put on the role; its name starts with [`IMPORTED_INLINE_PREFIX`].
#[derive(Debug, Clone)]
pub struct ImportedInline {
    pub name: String,
    pub document: String,
}

impl Store {
    /// Creates or replaces the mapping of `arn_pattern`. A second importing mapping
    /// into the same role violates `aws_login_mappings_import_key`:
    /// `StoreError::Constraint(Constraint::Other)`.
    pub async fn aws_login_mapping_put(
        &self,
        mapping: &AwsLoginMappingRecord,
    ) -> Result<(), StoreError> {
        with_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO aws_login_mappings \
                 (arn_pattern, account_id, role_name, import_policies, created_at) \
                 VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (arn_pattern) DO UPDATE SET account_id = $2, role_name = $3, \
                 import_policies = $4, created_at = $5",
            )
            .bind(&mapping.arn_pattern)
            .bind(&mapping.account_id)
            .bind(&mapping.role_name)
            .bind(mapping.import_policies)
            .bind(mapping.created_at)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Every mapping, by pattern. The table is small (one row per trusted AWS
    /// principal or pattern); a login reads it whole to pick the best match.
    pub async fn aws_login_mapping_list(&self) -> Result<Vec<AwsLoginMappingRecord>, StoreError> {
        Ok(with_pool!(self, pool => {
            sqlx::query_as(
                "SELECT arn_pattern, account_id, role_name, import_policies, created_at \
                 FROM aws_login_mappings ORDER BY arn_pattern",
            )
            .fetch_all(pool)
            .await?
        }))
    }

    /// Removes a mapping; `NotFound` when there is none for the pattern.
    pub async fn aws_login_mapping_delete(&self, arn_pattern: &str) -> Result<(), StoreError> {
        let affected = with_pool!(self, pool => {
            sqlx::query("DELETE FROM aws_login_mappings WHERE arn_pattern = $1")
                .bind(arn_pattern)
                .execute(pool)
                .await?
                .rows_affected()
        });
        if affected == 0 {
            return Err(StoreError::NotFound("AWS login mapping"));
        }
        Ok(())
    }

    /// Replaces the imported policies of role `role_id` with `managed` and `inline`,
    /// all or nothing: the role's attachments to imported managed policies and its
    /// imported inline policies are removed, the new ones written (managed policy
    /// documents created or refreshed), in one transaction. Policies an
    /// administrator attached or wrote are not touched. A managed policy name
    /// already taken by a policy outside [`IMPORTED_POLICY_PATH`] violates
    /// `iam_managed_policies_name_key`: `StoreError::Constraint(_)`.
    pub async fn aws_import_replace(
        &self,
        account_id: &str,
        role_id: &str,
        managed: &[ImportedManaged],
        inline: &[ImportedInline],
    ) -> Result<(), StoreError> {
        // Cached callers of this role must see the new policies (auth::cache).
        let _changed = crate::auth::cache::IamWrite;
        let now = Utc::now();
        let prefix_len = i32::try_from(IMPORTED_INLINE_PREFIX.len()).expect("a short prefix");
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            sqlx::query(
                "DELETE FROM iam_policy_attachments WHERE principal_kind = 'role' \
                 AND principal_id = $1 AND policy_arn IN \
                 (SELECT arn FROM iam_managed_policies WHERE path = $2)",
            )
            .bind(role_id)
            .bind(IMPORTED_POLICY_PATH)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "DELETE FROM iam_inline_policies WHERE principal_kind = 'role' \
                 AND principal_id = $1 AND substr(name, 1, $2) = $3",
            )
            .bind(role_id)
            .bind(prefix_len)
            .bind(IMPORTED_INLINE_PREFIX)
            .execute(&mut *tx)
            .await?;
            for policy in managed {
                sqlx::query(
                    "INSERT INTO iam_managed_policies \
                     (arn, id, account_id, name, path, document, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7) \
                     ON CONFLICT (arn) DO UPDATE SET document = $6",
                )
                .bind(&policy.arn)
                .bind(&policy.id)
                .bind(account_id)
                .bind(&policy.name)
                .bind(IMPORTED_POLICY_PATH)
                .bind(&policy.document)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                sqlx::query(
                    "INSERT INTO iam_policy_attachments (principal_kind, principal_id, policy_arn) \
                     VALUES ('role', $1, $2) ON CONFLICT DO NOTHING",
                )
                .bind(role_id)
                .bind(&policy.arn)
                .execute(&mut *tx)
                .await?;
            }
            for policy in inline {
                debug_assert!(policy.name.starts_with(IMPORTED_INLINE_PREFIX));
                sqlx::query(
                    "INSERT INTO iam_inline_policies (principal_kind, principal_id, name, document) \
                     VALUES ('role', $1, $2, $3) ON CONFLICT (principal_kind, principal_id, name) \
                     DO UPDATE SET document = $3",
                )
                .bind(role_id)
                .bind(&policy.name)
                .bind(&policy.document)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }
}
