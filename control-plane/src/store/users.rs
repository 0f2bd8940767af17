//! The `broker_users` table: the users each broker's nodes must have. A change is
//! recorded with `pending_change` and the broker generation it was made at; the
//! provisioning side clears it once a node reports that generation applied
//! ([`Store::user_mark_applied`]). A deleted user stays, pending DELETE, until then.

use chrono::{DateTime, Utc};
use sqlx::FromRow;

use super::audit::audit_insert_sqlite;
use super::coalesce::Batched;
use super::user_batches::{create_user_alone, Created, UserCreation};
use super::{json_list, parse_json_list, with_pool, BrokerId, NewAuditEvent, Store, StoreError};
use crate::model::{BrokerState, ChangeType};

#[derive(Debug, Clone, PartialEq)]
pub struct UserRecord {
    pub broker_id: BrokerId,
    pub username: String,
    /// RabbitMQ's `rabbit_password_hashing_sha256` format; never the plaintext.
    pub password_hash: String,
    pub console_access: bool,
    pub groups: Vec<String>,
    pub replication_user: bool,
    /// `None` once the nodes run this user as recorded.
    pub pending_change: Option<ChangeType>,
    /// The broker generation of the latest change to this user.
    pub pending_generation: i64,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone)]
pub struct NewUser {
    pub username: String,
    pub password_hash: String,
    pub console_access: bool,
    pub groups: Vec<String>,
    pub replication_user: bool,
}

/// UpdateUser's fields; `None` keeps the stored value.
#[derive(Debug, Clone, Default)]
pub struct UserUpdate {
    pub password_hash: Option<String>,
    pub console_access: Option<bool>,
    pub groups: Option<Vec<String>>,
    pub replication_user: Option<bool>,
}

pub(super) const COLUMNS: &str = "broker_id, username, password_hash, console_access, groups, \
    replication_user, pending_change, pending_generation, created_at";

/// Inserts a user row inside a transaction; reviving a user that is pending deletion
/// (an insert onto a live user is a [`super::Constraint::BrokerUser`] violation).
macro_rules! insert_user {
    ($tx:expr, $broker_id:expr, $user:expr, $change:expr, $generation:expr, $now:expr) => {{
        let affected = sqlx::query(
            "INSERT INTO broker_users (broker_id, username, password_hash, console_access, \
             groups, replication_user, pending_change, pending_generation, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
             ON CONFLICT (broker_id, username) DO UPDATE SET password_hash = $3, \
             console_access = $4, groups = $5, replication_user = $6, pending_change = $7, \
             pending_generation = $8 WHERE broker_users.pending_change = 'DELETE'",
        )
        .bind($broker_id.as_str())
        .bind(&$user.username)
        .bind(&$user.password_hash)
        .bind($user.console_access)
        .bind($crate::store::json_list(&$user.groups))
        .bind($user.replication_user)
        .bind($change.as_str())
        .bind($generation)
        .bind($now)
        .execute($tx)
        .await?
        .rows_affected();
        if affected == 0 {
            return Err($crate::store::StoreError::Constraint(
                $crate::store::Constraint::BrokerUser,
            ));
        }
    }};
}
pub(super) use insert_user;

/// Also read from JSON (DescribeBroker aggregates a broker's users into one column).
#[derive(FromRow, serde::Deserialize)]
pub(super) struct UserRow {
    broker_id: String,
    username: String,
    password_hash: String,
    console_access: bool,
    groups: String,
    replication_user: bool,
    pending_change: Option<String>,
    pending_generation: i64,
    created_at: DateTime<Utc>,
}

impl TryFrom<UserRow> for UserRecord {
    type Error = StoreError;

    fn try_from(r: UserRow) -> Result<Self, StoreError> {
        let pending_change = match r.pending_change {
            None => None,
            Some(text) => Some(ChangeType::parse(&text).ok_or_else(|| {
                StoreError::Corrupt(format!("broker_users.pending_change = {text:?}"))
            })?),
        };
        Ok(UserRecord {
            broker_id: BrokerId::from_db(r.broker_id),
            username: r.username,
            password_hash: r.password_hash,
            console_access: r.console_access,
            groups: parse_json_list(&r.groups)?,
            replication_user: r.replication_user,
            pending_change,
            pending_generation: r.pending_generation,
            created_at: r.created_at,
        })
    }
}

/// Bumps the broker's generation as the first statement of a transaction (so SQLite
/// takes its write lock at once) and returns the new generation; `NotFound` when the
/// broker is missing or being deleted.
macro_rules! bump_generation {
    ($tx:expr, $broker_id:expr) => {{
        let generation: Option<i64> = sqlx::query_scalar(
            "UPDATE brokers SET generation = generation + 1, updated_at = $3 \
             WHERE id = $1 AND state <> $2 RETURNING generation",
        )
        .bind($broker_id.as_str())
        .bind(BrokerState::DeletionInProgress.as_str())
        .bind(Utc::now())
        .fetch_optional($tx)
        .await?;
        generation.ok_or(StoreError::NotFound("broker"))?
    }};
}

impl Store {
    /// Records a new user, pending CREATE, and bumps the broker's generation.
    /// Returns the generation the nodes must reach for the user to exist. `audit`, the
    /// request's record, commits with the user (and is not written if the user is not
    /// created), so a created user is never missing from the audit trail.
    pub async fn user_create(
        &self,
        broker_id: &BrokerId,
        user: &NewUser,
        audit: Option<&NewAuditEvent>,
    ) -> Result<i64, StoreError> {
        let now = Utc::now();
        let pool = match self {
            Store::Postgres(_, fast, _, batches) => {
                let creation = || UserCreation {
                    broker_id: broker_id.clone(),
                    user: user.clone(),
                    at: now,
                    audit: audit.cloned(),
                };
                return match batches.create_user.read(creation()).await {
                    Batched::Answer(Created::Done(result)) => result,
                    Batched::Answer(Created::RunAlone) => {
                        create_user_alone(fast, &creation()).await
                    }
                    // The batch task panicked, perhaps after its commit: not rerun.
                    Batched::RunAlone => Err(StoreError::Corrupt(
                        "a batch of user creations failed".to_owned(),
                    )),
                };
            }
            Store::Sqlite(pool) => pool,
        };
        let mut tx = pool.begin().await?;
        let generation = bump_generation!(&mut *tx, broker_id);
        insert_user!(
            &mut *tx,
            broker_id,
            user,
            ChangeType::Create,
            generation,
            now
        );
        if let Some(event) = audit {
            audit_insert_sqlite(&mut tx, std::slice::from_ref(event)).await?;
        }
        tx.commit().await?;
        Ok(generation)
    }

    pub async fn user_get(
        &self,
        broker_id: &BrokerId,
        username: &str,
    ) -> Result<UserRecord, StoreError> {
        let sql =
            format!("SELECT {COLUMNS} FROM broker_users WHERE broker_id = $1 AND username = $2");
        let row: Option<UserRow> = with_pool!(self, pool => {
            sqlx::query_as(&sql).bind(broker_id.as_str()).bind(username).fetch_optional(pool).await?
        });
        row.ok_or(StoreError::NotFound("user"))?.try_into()
    }

    /// A broker's users by name, after `after` (keyset paging), including those pending
    /// deletion (Amazon MQ lists them with `pendingChange: DELETE`).
    pub async fn user_list(
        &self,
        broker_id: &BrokerId,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<UserRecord>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM broker_users WHERE broker_id = $1 AND username > $2 \
             ORDER BY username LIMIT $3"
        );
        let rows: Vec<UserRow> = with_pool!(self, pool => {
            sqlx::query_as(&sql)
                .bind(broker_id.as_str())
                .bind(after.unwrap_or(""))
                .bind(limit)
                .fetch_all(pool)
                .await?
        });
        rows.into_iter().map(TryInto::try_into).collect()
    }

    /// The users the broker's nodes must have: every user not pending deletion.
    pub async fn user_list_desired(
        &self,
        broker_id: &BrokerId,
    ) -> Result<Vec<UserRecord>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM broker_users WHERE broker_id = $1 \
             AND (pending_change IS NULL OR pending_change <> 'DELETE') ORDER BY username"
        );
        let rows: Vec<UserRow> = with_pool!(self, pool => {
            sqlx::query_as(&sql).bind(broker_id.as_str()).fetch_all(pool).await?
        });
        rows.into_iter().map(TryInto::try_into).collect()
    }

    /// Applies the given fields to a live user, pending UPDATE (a user still pending
    /// CREATE stays so), and bumps the broker's generation. Each field is set in SQL,
    /// so concurrent updates of different fields both land.
    pub async fn user_update(
        &self,
        broker_id: &BrokerId,
        username: &str,
        update: &UserUpdate,
    ) -> Result<i64, StoreError> {
        let groups = update.groups.as_deref().map(json_list);
        Ok(with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let generation = bump_generation!(&mut *tx, broker_id);
            let affected = sqlx::query(
                "UPDATE broker_users SET password_hash = COALESCE($3, password_hash), \
                 console_access = COALESCE($4, console_access), groups = COALESCE($5, groups), \
                 replication_user = COALESCE($6, replication_user), \
                 pending_change = CASE WHEN pending_change = 'CREATE' THEN 'CREATE' ELSE 'UPDATE' END, \
                 pending_generation = $7 \
                 WHERE broker_id = $1 AND username = $2 \
                 AND (pending_change IS NULL OR pending_change <> 'DELETE')",
            )
            .bind(broker_id.as_str())
            .bind(username)
            .bind(&update.password_hash)
            .bind(update.console_access)
            .bind(&groups)
            .bind(update.replication_user)
            .bind(generation)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if affected == 0 {
                return Err(StoreError::NotFound("user"));
            }
            tx.commit().await?;
            generation
        }))
    }

    /// Marks a live user pending DELETE and bumps the broker's generation; the row goes
    /// once the nodes have applied that generation.
    pub async fn user_delete(
        &self,
        broker_id: &BrokerId,
        username: &str,
    ) -> Result<i64, StoreError> {
        Ok(with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let generation = bump_generation!(&mut *tx, broker_id);
            let affected = sqlx::query(
                "UPDATE broker_users SET pending_change = 'DELETE', pending_generation = $3 \
                 WHERE broker_id = $1 AND username = $2 \
                 AND (pending_change IS NULL OR pending_change <> 'DELETE')",
            )
            .bind(broker_id.as_str())
            .bind(username)
            .bind(generation)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if affected == 0 {
                return Err(StoreError::NotFound("user"));
            }
            tx.commit().await?;
            generation
        }))
    }

    /// For the provisioning side, once the broker's nodes report `applied_generation`:
    /// clears every user change made at or before it and drops users deleted by then.
    /// Changes made at a later generation stay pending. Idempotent.
    pub async fn user_mark_applied(
        &self,
        broker_id: &BrokerId,
        applied_generation: i64,
    ) -> Result<(), StoreError> {
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            sqlx::query(
                "DELETE FROM broker_users WHERE broker_id = $1 AND pending_change = 'DELETE' \
                 AND pending_generation <= $2",
            )
            .bind(broker_id.as_str())
            .bind(applied_generation)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "UPDATE broker_users SET pending_change = NULL WHERE broker_id = $1 \
                 AND pending_change IS NOT NULL AND pending_generation <= $2",
            )
            .bind(broker_id.as_str())
            .bind(applied_generation)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
        });
        Ok(())
    }
}
