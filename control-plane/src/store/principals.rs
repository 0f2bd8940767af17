//! The `iam_*` tables: accounts, users, groups, roles, access keys, and the
//! identity policies that apply to each principal.
//!
//! Every function that writes holds an `auth::cache::IamWrite` for its body, so
//! that cached principals are dropped once the write is done (see `auth::cache`).

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
        let _changed = crate::auth::cache::IamWrite;
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
        let _changed = crate::auth::cache::IamWrite;
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
        let _changed = crate::auth::cache::IamWrite;
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
        let _changed = crate::auth::cache::IamWrite;
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
        let _changed = crate::auth::cache::IamWrite;
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
        let _changed = crate::auth::cache::IamWrite;
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
        let _changed = crate::auth::cache::IamWrite;
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

/// A customer-managed policy as listed: its entity columns and how many
/// principals it is attached to.
#[derive(Debug, Clone, PartialEq, Eq, FromRow)]
pub struct ManagedPolicyRecord {
    #[sqlx(flatten)]
    pub entity: IamEntityRecord,
    pub document: String,
    pub attachment_count: i64,
}

/// What still hangs on a principal, which IAM requires removed before deleting it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PrincipalUsage {
    pub access_keys: i64,
    pub inline_policies: i64,
    pub attached_policies: i64,
    /// Groups a user is in, or users in a group.
    pub memberships: i64,
}

/// How many tags a user or role may carry, as IAM allows.
pub const MAX_PRINCIPAL_TAGS: usize = 50;

impl Store {
    /// Up to `limit` users or groups of an account whose name sorts after `after`.
    pub async fn iam_entity_page(
        &self,
        kind: PrincipalKind,
        account_id: &str,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<IamEntityRecord>, StoreError> {
        let sql = format!(
            "SELECT {ENTITY_COLUMNS} FROM {} WHERE account_id = $1 AND name > $2 \
             ORDER BY name LIMIT $3",
            entity_table(kind)
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

    /// What still refers to a principal: keys, inline and attached policies,
    /// group memberships.
    pub async fn principal_usage(
        &self,
        kind: PrincipalKind,
        id: &str,
    ) -> Result<PrincipalUsage, StoreError> {
        let membership_sql = match kind {
            PrincipalKind::User => "SELECT COUNT(*) FROM iam_group_members WHERE user_id = $1",
            PrincipalKind::Group => "SELECT COUNT(*) FROM iam_group_members WHERE group_id = $1",
            PrincipalKind::Role => "SELECT COUNT(*) FROM iam_roles WHERE id = $1 AND 1 = 0",
        };
        let (access_keys, inline_policies, attached_policies, memberships) = with_pool!(self, pool => {
            let keys: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM iam_access_keys WHERE user_id = $1")
                .bind(id)
                .fetch_one(pool)
                .await?;
            let inline: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM iam_inline_policies WHERE principal_kind = $1 AND principal_id = $2",
            )
            .bind(kind.as_str())
            .bind(id)
            .fetch_one(pool)
            .await?;
            let attached: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM iam_policy_attachments WHERE principal_kind = $1 AND principal_id = $2",
            )
            .bind(kind.as_str())
            .bind(id)
            .fetch_one(pool)
            .await?;
            let members: i64 = sqlx::query_scalar(membership_sql).bind(id).fetch_one(pool).await?;
            (keys, inline, attached, members)
        });
        Ok(PrincipalUsage {
            access_keys: if kind == PrincipalKind::User {
                access_keys
            } else {
                0
            },
            inline_policies,
            attached_policies,
            memberships,
        })
    }

    /// Deletes a user, group or role with its tags, inline policies and
    /// attachments (its keys, memberships and sessions go by cascade), in one
    /// transaction. `NotFound` when it does not exist.
    pub async fn iam_entity_delete(&self, kind: PrincipalKind, id: &str) -> Result<(), StoreError> {
        let _changed = crate::auth::cache::IamWrite;
        let delete_entity = format!("DELETE FROM {} WHERE id = $1", entity_table(kind));
        let affected = with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            for sql in [
                "DELETE FROM iam_inline_policies WHERE principal_kind = $1 AND principal_id = $2",
                "DELETE FROM iam_policy_attachments WHERE principal_kind = $1 AND principal_id = $2",
                "DELETE FROM iam_principal_tags WHERE principal_kind = $1 AND principal_id = $2",
            ] {
                sqlx::query(sql).bind(kind.as_str()).bind(id).execute(&mut *tx).await?;
            }
            let n = sqlx::query(&delete_entity).bind(id).execute(&mut *tx).await?.rows_affected();
            tx.commit().await?;
            n
        });
        if affected == 0 {
            return Err(StoreError::NotFound("IAM entity"));
        }
        Ok(())
    }

    /// Removes a user from a group; `NotFound` when not a member.
    pub async fn iam_group_remove_user(
        &self,
        group_id: &str,
        user_id: &str,
    ) -> Result<(), StoreError> {
        let _changed = crate::auth::cache::IamWrite;
        let affected = with_pool!(self, pool => {
            sqlx::query("DELETE FROM iam_group_members WHERE group_id = $1 AND user_id = $2")
                .bind(group_id)
                .bind(user_id)
                .execute(pool)
                .await?
                .rows_affected()
        });
        if affected == 0 {
            return Err(StoreError::NotFound("group member"));
        }
        Ok(())
    }

    /// The groups a user belongs to, by name.
    pub async fn iam_groups_for_user(
        &self,
        user_id: &str,
    ) -> Result<Vec<IamEntityRecord>, StoreError> {
        Ok(with_pool!(self, pool => {
            sqlx::query_as(
                "SELECT g.id, g.account_id, g.name, g.path, g.arn, g.created_at \
                 FROM iam_group_members m JOIN iam_groups g ON g.id = m.group_id \
                 WHERE m.user_id = $1 ORDER BY g.name",
            )
            .bind(user_id)
            .fetch_all(pool)
            .await?
        }))
    }

    /// The users in a group, by name.
    pub async fn iam_group_users(
        &self,
        group_id: &str,
    ) -> Result<Vec<IamEntityRecord>, StoreError> {
        Ok(with_pool!(self, pool => {
            sqlx::query_as(
                "SELECT u.id, u.account_id, u.name, u.path, u.arn, u.created_at \
                 FROM iam_group_members m JOIN iam_users u ON u.id = m.user_id \
                 WHERE m.group_id = $1 ORDER BY u.name",
            )
            .bind(group_id)
            .fetch_all(pool)
            .await?
        }))
    }

    /// Sets a key's status (`Active` / `Inactive`); `NotFound` when the user holds no such key.
    pub async fn access_key_set_status(
        &self,
        user_id: &str,
        access_key_id: &str,
        status: &str,
    ) -> Result<(), StoreError> {
        let _changed = crate::auth::cache::IamWrite;
        let affected = with_pool!(self, pool => {
            sqlx::query("UPDATE iam_access_keys SET status = $3 WHERE user_id = $1 AND access_key_id = $2")
                .bind(user_id)
                .bind(access_key_id)
                .bind(status)
                .execute(pool)
                .await?
                .rows_affected()
        });
        if affected == 0 {
            return Err(StoreError::NotFound("access key"));
        }
        Ok(())
    }

    /// One inline policy's document, when it exists.
    pub async fn inline_policy_get(
        &self,
        kind: PrincipalKind,
        principal_id: &str,
        name: &str,
    ) -> Result<Option<String>, StoreError> {
        Ok(with_pool!(self, pool => {
            sqlx::query_scalar(
                "SELECT document FROM iam_inline_policies \
                 WHERE principal_kind = $1 AND principal_id = $2 AND name = $3",
            )
            .bind(kind.as_str())
            .bind(principal_id)
            .bind(name)
            .fetch_optional(pool)
            .await?
        }))
    }

    /// The names of a principal's inline policies, sorted.
    pub async fn inline_policy_names(
        &self,
        kind: PrincipalKind,
        principal_id: &str,
    ) -> Result<Vec<String>, StoreError> {
        Ok(with_pool!(self, pool => {
            sqlx::query_scalar(
                "SELECT name FROM iam_inline_policies \
                 WHERE principal_kind = $1 AND principal_id = $2 ORDER BY name",
            )
            .bind(kind.as_str())
            .bind(principal_id)
            .fetch_all(pool)
            .await?
        }))
    }

    /// Removes an inline policy; `NotFound` when there is none by that name.
    pub async fn inline_policy_delete(
        &self,
        kind: PrincipalKind,
        principal_id: &str,
        name: &str,
    ) -> Result<(), StoreError> {
        let _changed = crate::auth::cache::IamWrite;
        let affected = with_pool!(self, pool => {
            sqlx::query(
                "DELETE FROM iam_inline_policies \
                 WHERE principal_kind = $1 AND principal_id = $2 AND name = $3",
            )
            .bind(kind.as_str())
            .bind(principal_id)
            .bind(name)
            .execute(pool)
            .await?
            .rows_affected()
        });
        if affected == 0 {
            return Err(StoreError::NotFound("inline policy"));
        }
        Ok(())
    }

    /// Detaches a managed policy; `NotFound` when it was not attached.
    pub async fn policy_detach(
        &self,
        kind: PrincipalKind,
        principal_id: &str,
        policy_arn: &str,
    ) -> Result<(), StoreError> {
        let _changed = crate::auth::cache::IamWrite;
        let affected = with_pool!(self, pool => {
            sqlx::query(
                "DELETE FROM iam_policy_attachments \
                 WHERE principal_kind = $1 AND principal_id = $2 AND policy_arn = $3",
            )
            .bind(kind.as_str())
            .bind(principal_id)
            .bind(policy_arn)
            .execute(pool)
            .await?
            .rows_affected()
        });
        if affected == 0 {
            return Err(StoreError::NotFound("policy attachment"));
        }
        Ok(())
    }

    /// The managed policies attached to a principal: (name, ARN), by name.
    pub async fn policy_attached_list(
        &self,
        kind: PrincipalKind,
        principal_id: &str,
    ) -> Result<Vec<(String, String)>, StoreError> {
        Ok(with_pool!(self, pool => {
            sqlx::query_as(
                "SELECT p.name, p.arn FROM iam_policy_attachments a \
                 JOIN iam_managed_policies p ON p.arn = a.policy_arn \
                 WHERE a.principal_kind = $1 AND a.principal_id = $2 ORDER BY p.name",
            )
            .bind(kind.as_str())
            .bind(principal_id)
            .fetch_all(pool)
            .await?
        }))
    }

    /// Up to `limit` managed policies of an account named after `after`, with
    /// their attachment counts; only attached ones when `only_attached`.
    pub async fn managed_policy_page(
        &self,
        account_id: &str,
        after: Option<&str>,
        limit: i64,
        only_attached: bool,
    ) -> Result<Vec<ManagedPolicyRecord>, StoreError> {
        let sql = format!(
            "SELECT p.id, p.account_id, p.name, p.path, p.arn, p.created_at, p.document, \
               (SELECT COUNT(*) FROM iam_policy_attachments a WHERE a.policy_arn = p.arn) \
                 AS attachment_count \
             FROM iam_managed_policies p WHERE p.account_id = $1 AND p.name > $2 {} \
             ORDER BY p.name LIMIT $3",
            if only_attached {
                "AND EXISTS (SELECT 1 FROM iam_policy_attachments a WHERE a.policy_arn = p.arn)"
            } else {
                ""
            }
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

    /// One managed policy by ARN, with its attachment count.
    pub async fn managed_policy_get(
        &self,
        arn: &str,
    ) -> Result<Option<ManagedPolicyRecord>, StoreError> {
        Ok(with_pool!(self, pool => {
            sqlx::query_as(
                "SELECT p.id, p.account_id, p.name, p.path, p.arn, p.created_at, p.document, \
                   (SELECT COUNT(*) FROM iam_policy_attachments a WHERE a.policy_arn = p.arn) \
                     AS attachment_count \
                 FROM iam_managed_policies p WHERE p.arn = $1",
            )
            .bind(arn)
            .fetch_optional(pool)
            .await?
        }))
    }

    /// Deletes a managed policy that is attached to nobody: `NotFound` when there
    /// is no such policy, `Constraint::Other` while it is attached (IAM's
    /// DeleteConflict). The check and delete are one statement, so a concurrent
    /// attach either lands first (and the delete refuses) or fails on the
    /// foreign key.
    pub async fn managed_policy_delete(&self, arn: &str) -> Result<(), StoreError> {
        let _changed = crate::auth::cache::IamWrite;
        let affected = with_pool!(self, pool => {
            sqlx::query(
                "DELETE FROM iam_managed_policies WHERE arn = $1 AND NOT EXISTS \
                 (SELECT 1 FROM iam_policy_attachments a WHERE a.policy_arn = $1)",
            )
            .bind(arn)
            .execute(pool)
            .await?
            .rows_affected()
        });
        if affected == 0 {
            return match self.managed_policy_get(arn).await? {
                Some(_) => Err(StoreError::Constraint(Constraint::Other)),
                None => Err(StoreError::NotFound("policy")),
            };
        }
        Ok(())
    }

    /// A user's or role's tags, by key.
    pub async fn principal_tags_list(
        &self,
        kind: PrincipalKind,
        principal_id: &str,
    ) -> Result<Vec<(String, String)>, StoreError> {
        Ok(with_pool!(self, pool => {
            sqlx::query_as(
                "SELECT tag_key, tag_value FROM iam_principal_tags \
                 WHERE principal_kind = $1 AND principal_id = $2 ORDER BY tag_key",
            )
            .bind(kind.as_str())
            .bind(principal_id)
            .fetch_all(pool)
            .await?
        }))
    }

    /// Adds or replaces tags on a user or role, all or none. Returns `false`
    /// (and changes nothing) when the principal would then carry more than
    /// [`MAX_PRINCIPAL_TAGS`].
    pub async fn principal_tags_put(
        &self,
        kind: PrincipalKind,
        principal_id: &str,
        tags: &[(String, String)],
    ) -> Result<bool, StoreError> {
        let _changed = crate::auth::cache::IamWrite;
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            for (key, value) in tags {
                sqlx::query(
                    "INSERT INTO iam_principal_tags (principal_kind, principal_id, tag_key, tag_value) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT (principal_kind, principal_id, tag_key) \
                     DO UPDATE SET tag_value = $4",
                )
                .bind(kind.as_str())
                .bind(principal_id)
                .bind(key)
                .bind(value)
                .execute(&mut *tx)
                .await?;
            }
            let count: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM iam_principal_tags WHERE principal_kind = $1 AND principal_id = $2",
            )
            .bind(kind.as_str())
            .bind(principal_id)
            .fetch_one(&mut *tx)
            .await?;
            if usize::try_from(count).unwrap_or(usize::MAX) > MAX_PRINCIPAL_TAGS {
                tx.rollback().await?;
                return Ok(false);
            }
            tx.commit().await?;
        });
        Ok(true)
    }

    /// Removes tags by key from a user or role; absent keys are ignored, as IAM does.
    pub async fn principal_tags_remove(
        &self,
        kind: PrincipalKind,
        principal_id: &str,
        keys: &[String],
    ) -> Result<(), StoreError> {
        let _changed = crate::auth::cache::IamWrite;
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            for key in keys {
                sqlx::query(
                    "DELETE FROM iam_principal_tags \
                     WHERE principal_kind = $1 AND principal_id = $2 AND tag_key = $3",
                )
                .bind(kind.as_str())
                .bind(principal_id)
                .bind(key)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }
}
