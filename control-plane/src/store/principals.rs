//! The `iam_*` tables: accounts, users, groups, roles, access keys, and the
//! identity policies that apply to each principal.

use chrono::{DateTime, Utc};
use sqlx::FromRow;

use super::{with_pool, Constraint, Store, StoreError};

/// Which kind of principal an inline policy or attachment belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrincipalKind {
    User,
    Group,
    Role,
}

impl PrincipalKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PrincipalKind::User => "user",
            PrincipalKind::Group => "group",
            PrincipalKind::Role => "role",
        }
    }
}

/// An IAM user, group or role: the columns they share.
#[derive(Debug, Clone, PartialEq, Eq, FromRow)]
pub struct IamEntityRecord {
    pub id: String,
    pub account_id: String,
    pub name: String,
    pub path: String,
    pub arn: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, FromRow)]
pub struct AccessKeyRecord {
    pub access_key_id: String,
    pub user_id: String,
    /// Sealed under the master key (`auth::keys`); never the plain secret.
    pub secret_sealed: String,
    pub status: String,
    pub created_at: DateTime<Utc>,
}

/// Whether a key could be added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyInsert {
    Inserted,
    /// The user already holds two keys.
    LimitReached,
}

const ENTITY_COLUMNS: &str = "id, account_id, name, path, arn, created_at";

/// The three entity tables; the name never comes from a client.
fn entity_table(kind: PrincipalKind) -> &'static str {
    match kind {
        PrincipalKind::User => "iam_users",
        PrincipalKind::Group => "iam_groups",
        PrincipalKind::Role => "iam_roles",
    }
}

impl Store {
    /// Creates the account row when missing.
    pub async fn iam_account_ensure(&self, account_id: &str) -> Result<(), StoreError> {
        with_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO iam_accounts (id, created_at) VALUES ($1, $2) \
                 ON CONFLICT (id) DO NOTHING",
            )
            .bind(account_id)
            .bind(Utc::now())
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Inserts a user or group; a taken name is `Constraint::Other` from the
    /// database, reported here as [`Constraint::IamEntityName`].
    pub async fn iam_entity_insert(
        &self,
        kind: PrincipalKind,
        entity: &IamEntityRecord,
    ) -> Result<(), StoreError> {
        let table = entity_table(kind);
        let sql = match kind {
            PrincipalKind::Role => format!(
                "INSERT INTO {table} ({ENTITY_COLUMNS}, assume_role_policy) \
                 VALUES ($1, $2, $3, $4, $5, $6, '{{}}')"
            ),
            _ => format!("INSERT INTO {table} ({ENTITY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6)"),
        };
        let result = with_pool!(self, pool => {
            sqlx::query(&sql)
                .bind(&entity.id)
                .bind(&entity.account_id)
                .bind(&entity.name)
                .bind(&entity.path)
                .bind(&entity.arn)
                .bind(entity.created_at)
                .execute(pool)
                .await
                .map(|_| ())
        });
        result.map_err(|e| match StoreError::from(e) {
            StoreError::Constraint(_) => StoreError::Constraint(Constraint::IamEntityName),
            other => other,
        })
    }

    pub async fn iam_entity_get_by_name(
        &self,
        kind: PrincipalKind,
        account_id: &str,
        name: &str,
    ) -> Result<Option<IamEntityRecord>, StoreError> {
        let sql = format!(
            "SELECT {ENTITY_COLUMNS} FROM {} WHERE account_id = $1 AND name = $2",
            entity_table(kind)
        );
        Ok(with_pool!(self, pool => {
            sqlx::query_as(&sql).bind(account_id).bind(name).fetch_optional(pool).await?
        }))
    }

    pub async fn iam_entity_get(
        &self,
        kind: PrincipalKind,
        id: &str,
    ) -> Result<Option<IamEntityRecord>, StoreError> {
        let sql = format!(
            "SELECT {ENTITY_COLUMNS} FROM {} WHERE id = $1",
            entity_table(kind)
        );
        Ok(with_pool!(self, pool => {
            sqlx::query_as(&sql).bind(id).fetch_optional(pool).await?
        }))
    }

    /// Every user, group or role of an account, by name.
    pub async fn iam_entity_list(
        &self,
        kind: PrincipalKind,
        account_id: &str,
    ) -> Result<Vec<IamEntityRecord>, StoreError> {
        let sql = format!(
            "SELECT {ENTITY_COLUMNS} FROM {} WHERE account_id = $1 ORDER BY name",
            entity_table(kind)
        );
        Ok(with_pool!(self, pool => {
            sqlx::query_as(&sql).bind(account_id).fetch_all(pool).await?
        }))
    }

    pub async fn iam_group_add_user(
        &self,
        group_id: &str,
        user_id: &str,
    ) -> Result<(), StoreError> {
        with_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO iam_group_members (group_id, user_id) VALUES ($1, $2) \
                 ON CONFLICT (group_id, user_id) DO NOTHING",
            )
            .bind(group_id)
            .bind(user_id)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Adds an access key in a free slot. Two concurrent callers can both see a
    /// free slot; the unique (user, slot) constraint lets only one of them in,
    /// and the other tries the next slot, so a user never holds three keys.
    pub async fn access_key_insert(&self, key: &AccessKeyRecord) -> Result<KeyInsert, StoreError> {
        for slot in [1i32, 2] {
            let result = with_pool!(self, pool => {
                sqlx::query(
                    "INSERT INTO iam_access_keys \
                     (access_key_id, user_id, slot, secret_sealed, status, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(&key.access_key_id)
                .bind(&key.user_id)
                .bind(slot)
                .bind(&key.secret_sealed)
                .bind(&key.status)
                .bind(key.created_at)
                .execute(pool)
                .await
                .map(|_| ())
            });
            match result.map_err(StoreError::from) {
                Ok(_) => return Ok(KeyInsert::Inserted),
                Err(StoreError::Constraint(_)) => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(KeyInsert::LimitReached)
    }

    pub async fn access_key_get(
        &self,
        access_key_id: &str,
    ) -> Result<Option<AccessKeyRecord>, StoreError> {
        Ok(with_pool!(self, pool => {
            sqlx::query_as(
                "SELECT access_key_id, user_id, secret_sealed, status, created_at \
                 FROM iam_access_keys WHERE access_key_id = $1",
            )
            .bind(access_key_id)
            .fetch_optional(pool)
            .await?
        }))
    }

    pub async fn access_key_list(&self, user_id: &str) -> Result<Vec<AccessKeyRecord>, StoreError> {
        Ok(with_pool!(self, pool => {
            sqlx::query_as(
                "SELECT access_key_id, user_id, secret_sealed, status, created_at \
                 FROM iam_access_keys WHERE user_id = $1 ORDER BY slot",
            )
            .bind(user_id)
            .fetch_all(pool)
            .await?
        }))
    }

    /// Removes a key; `NotFound` when the user holds no such key.
    pub async fn access_key_delete(
        &self,
        user_id: &str,
        access_key_id: &str,
    ) -> Result<(), StoreError> {
        let affected = with_pool!(self, pool => {
            sqlx::query("DELETE FROM iam_access_keys WHERE user_id = $1 AND access_key_id = $2")
                .bind(user_id)
                .bind(access_key_id)
                .execute(pool)
                .await?
                .rows_affected()
        });
        if affected == 0 {
            return Err(StoreError::NotFound("access key"));
        }
        Ok(())
    }

    /// Sets (creates or replaces) an inline policy of a principal.
    pub async fn inline_policy_put(
        &self,
        kind: PrincipalKind,
        principal_id: &str,
        name: &str,
        document: &str,
    ) -> Result<(), StoreError> {
        with_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO iam_inline_policies (principal_kind, principal_id, name, document) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (principal_kind, principal_id, name) \
                 DO UPDATE SET document = $4",
            )
            .bind(kind.as_str())
            .bind(principal_id)
            .bind(name)
            .bind(document)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Creates a managed policy; a taken name is [`Constraint::IamEntityName`].
    pub async fn managed_policy_insert(
        &self,
        policy: &IamEntityRecord,
        document: &str,
    ) -> Result<(), StoreError> {
        let result = with_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO iam_managed_policies \
                 (arn, id, account_id, name, path, document, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(&policy.arn)
            .bind(&policy.id)
            .bind(&policy.account_id)
            .bind(&policy.name)
            .bind(&policy.path)
            .bind(document)
            .bind(policy.created_at)
            .execute(pool)
            .await
            .map(|_| ())
        });
        result.map_err(|e| match StoreError::from(e) {
            StoreError::Constraint(_) => StoreError::Constraint(Constraint::IamEntityName),
            other => other,
        })
    }

    /// Attaches a managed policy; `NotFound` when there is no such policy.
    pub async fn policy_attach(
        &self,
        kind: PrincipalKind,
        principal_id: &str,
        policy_arn: &str,
    ) -> Result<(), StoreError> {
        let result = with_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO iam_policy_attachments (principal_kind, principal_id, policy_arn) \
                 VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            )
            .bind(kind.as_str())
            .bind(principal_id)
            .bind(policy_arn)
            .execute(pool)
            .await
            .map(|_| ())
        });
        result.map_err(|e| match StoreError::from(e) {
            StoreError::Constraint(_) => StoreError::NotFound("policy"),
            other => other,
        })
    }

    /// Every policy document that applies to a user: its inline and attached
    /// policies, and those of every group it belongs to.
    pub async fn policy_documents_for_user(
        &self,
        user_id: &str,
    ) -> Result<Vec<String>, StoreError> {
        Ok(with_pool!(self, pool => {
            sqlx::query_scalar(
                "SELECT document FROM iam_inline_policies \
                   WHERE principal_kind = 'user' AND principal_id = $1 \
                 UNION ALL \
                 SELECT p.document FROM iam_policy_attachments a \
                   JOIN iam_managed_policies p ON p.arn = a.policy_arn \
                   WHERE a.principal_kind = 'user' AND a.principal_id = $1 \
                 UNION ALL \
                 SELECT i.document FROM iam_group_members m \
                   JOIN iam_inline_policies i \
                     ON i.principal_kind = 'group' AND i.principal_id = m.group_id \
                   WHERE m.user_id = $1 \
                 UNION ALL \
                 SELECT p.document FROM iam_group_members m \
                   JOIN iam_policy_attachments a \
                     ON a.principal_kind = 'group' AND a.principal_id = m.group_id \
                   JOIN iam_managed_policies p ON p.arn = a.policy_arn \
                   WHERE m.user_id = $1",
            )
            .bind(user_id)
            .fetch_all(pool)
            .await?
        }))
    }
}
