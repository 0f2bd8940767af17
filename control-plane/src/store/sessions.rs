//! Roles (with their trust policy and session limit) and the temporary
//! credentials issued for them: the `iam_roles` columns beyond the shared
//! entity ones, and the `iam_sessions` table (migration 0102).

use chrono::{DateTime, Utc};
use sqlx::FromRow;

use super::{with_pool, Constraint, IamEntityRecord, Store, StoreError};

/// An IAM role: the entity columns, who may assume it, and for how long.
#[derive(Debug, Clone, PartialEq, Eq, FromRow)]
pub struct RoleRecord {
    #[sqlx(flatten)]
    pub entity: IamEntityRecord,
    /// The trust policy (`AssumeRolePolicyDocument`), validated when written.
    pub assume_role_policy: String,
    /// The longest session AssumeRole may grant, in seconds (3600..=43200).
    pub max_session_duration: i32,
    pub description: String,
}

/// Temporary credentials as stored. Exactly one of `role_id` / `user_id` is set.
#[derive(Debug, Clone, FromRow)]
pub struct SessionRecord {
    pub access_key_id: String,
    pub account_id: String,
    pub role_id: Option<String>,
    pub user_id: Option<String>,
    pub session_name: String,
    /// Sealed under the master key; never the plain secret.
    pub secret_sealed: String,
    /// Sealed under the master key; never the plain token.
    pub token_sealed: String,
    pub session_policy: Option<String>,
    pub source_arn: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

const ROLE_COLUMNS: &str = "id, account_id, name, path, arn, created_at, \
                            assume_role_policy, max_session_duration, description";
const SESSION_COLUMNS: &str = "access_key_id, account_id, role_id, user_id, session_name, \
                               secret_sealed, token_sealed, session_policy, source_arn, \
                               created_at, expires_at";

impl Store {
    /// Creates a role; a taken name is [`Constraint::IamEntityName`].
    pub async fn role_insert(&self, role: &RoleRecord) -> Result<(), StoreError> {
        let sql = format!(
            "INSERT INTO iam_roles ({ROLE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
        );
        let e = &role.entity;
        let result = with_pool!(self, pool => {
            sqlx::query(&sql)
                .bind(&e.id)
                .bind(&e.account_id)
                .bind(&e.name)
                .bind(&e.path)
                .bind(&e.arn)
                .bind(e.created_at)
                .bind(&role.assume_role_policy)
                .bind(role.max_session_duration)
                .bind(&role.description)
                .execute(pool)
                .await
                .map(|_| ())
        });
        result.map_err(|e| match StoreError::from(e) {
            StoreError::Constraint(_) => StoreError::Constraint(Constraint::IamEntityName),
            other => other,
        })
    }

    pub async fn role_get_by_name(
        &self,
        account_id: &str,
        name: &str,
    ) -> Result<Option<RoleRecord>, StoreError> {
        let sql =
            format!("SELECT {ROLE_COLUMNS} FROM iam_roles WHERE account_id = $1 AND name = $2");
        Ok(with_pool!(self, pool => {
            sqlx::query_as(&sql).bind(account_id).bind(name).fetch_optional(pool).await?
        }))
    }

    pub async fn role_get(&self, id: &str) -> Result<Option<RoleRecord>, StoreError> {
        let sql = format!("SELECT {ROLE_COLUMNS} FROM iam_roles WHERE id = $1");
        Ok(with_pool!(self, pool => {
            sqlx::query_as(&sql).bind(id).fetch_optional(pool).await?
        }))
    }

    /// Up to `limit` roles of an account whose name sorts after `after`, by name.
    pub async fn role_page(
        &self,
        account_id: &str,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<RoleRecord>, StoreError> {
        let sql = format!(
            "SELECT {ROLE_COLUMNS} FROM iam_roles WHERE account_id = $1 AND name > $2 \
             ORDER BY name LIMIT $3"
        );
        Ok(with_pool!(self, pool => {
            sqlx::query_as(&sql)
                .bind(account_id)
                .bind(after.unwrap_or(""))
                .bind(limit)
                .fetch_all(pool)
                .await?
        }))
    }

    /// Replaces a role's trust policy (validated by the caller).
    pub async fn role_set_trust_policy(&self, id: &str, document: &str) -> Result<(), StoreError> {
        let affected = with_pool!(self, pool => {
            sqlx::query("UPDATE iam_roles SET assume_role_policy = $2 WHERE id = $1")
                .bind(id)
                .bind(document)
                .execute(pool)
                .await?
                .rows_affected()
        });
        if affected == 0 {
            return Err(StoreError::NotFound("role"));
        }
        Ok(())
    }

    /// Every policy document that applies to a role: its inline and attached policies.
    pub async fn policy_documents_for_role(
        &self,
        role_id: &str,
    ) -> Result<Vec<String>, StoreError> {
        Ok(with_pool!(self, pool => {
            sqlx::query_scalar(
                "SELECT document FROM iam_inline_policies \
                   WHERE principal_kind = 'role' AND principal_id = $1 \
                 UNION ALL \
                 SELECT p.document FROM iam_policy_attachments a \
                   JOIN iam_managed_policies p ON p.arn = a.policy_arn \
                   WHERE a.principal_kind = 'role' AND a.principal_id = $1",
            )
            .bind(role_id)
            .fetch_all(pool)
            .await?
        }))
    }

    pub async fn session_insert(&self, session: &SessionRecord) -> Result<(), StoreError> {
        let sql = format!(
            "INSERT INTO iam_sessions ({SESSION_COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
        );
        with_pool!(self, pool => {
            sqlx::query(&sql)
                .bind(&session.access_key_id)
                .bind(&session.account_id)
                .bind(&session.role_id)
                .bind(&session.user_id)
                .bind(&session.session_name)
                .bind(&session.secret_sealed)
                .bind(&session.token_sealed)
                .bind(&session.session_policy)
                .bind(&session.source_arn)
                .bind(session.created_at)
                .bind(session.expires_at)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// The session behind a temporary access key id, expired or not.
    pub async fn session_get(
        &self,
        access_key_id: &str,
    ) -> Result<Option<SessionRecord>, StoreError> {
        let sql = format!("SELECT {SESSION_COLUMNS} FROM iam_sessions WHERE access_key_id = $1");
        Ok(with_pool!(self, pool => {
            sqlx::query_as(&sql).bind(access_key_id).fetch_optional(pool).await?
        }))
    }

    /// Removes the sessions that expired before `before`; returns how many.
    pub async fn session_delete_expired(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        Ok(with_pool!(self, pool => {
            sqlx::query("DELETE FROM iam_sessions WHERE expires_at < $1")
                .bind(before)
                .execute(pool)
                .await?
                .rows_affected()
        }))
    }
}
