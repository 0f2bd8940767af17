//! The `configurations` and `configuration_revisions` tables. A configuration's data
//! never changes in place: each update appends a revision and bumps `latest_revision`.

use chrono::{DateTime, Utc};
use sqlx::FromRow;

use super::tags::upsert_tag;
use super::{with_pool, ConfigurationId, Store, StoreError};
use crate::model::{AuthenticationStrategy, EngineType};

#[derive(Debug, Clone, PartialEq)]
pub struct ConfigurationRecord {
    pub id: ConfigurationId,
    pub arn: String,
    pub name: String,
    /// The description of the latest revision.
    pub description: Option<String>,
    pub engine_type: EngineType,
    pub engine_version: String,
    pub authentication_strategy: AuthenticationStrategy,
    pub latest_revision: i64,
    /// When the latest revision was created.
    pub latest_revision_created_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RevisionRecord {
    pub configuration_id: ConfigurationId,
    pub revision: i64,
    pub description: Option<String>,
    /// Base64 of the configuration file, as the API carries it.
    pub data: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone)]
pub struct NewConfiguration {
    pub id: ConfigurationId,
    pub arn: String,
    pub name: String,
    pub engine_type: EngineType,
    pub engine_version: String,
    pub authentication_strategy: AuthenticationStrategy,
    /// Revision 1's data (base64) and description.
    pub data: String,
    pub description: Option<String>,
    pub tags: Vec<(String, String)>,
    pub now: DateTime<Utc>,
}

const COLUMNS: &str = "c.id, c.arn, c.name, r.description, c.engine_type, c.engine_version, \
    c.authentication_strategy, c.latest_revision, r.created_at AS latest_revision_created_at, \
    c.created_at";
const FROM: &str = "FROM configurations c JOIN configuration_revisions r \
    ON r.configuration_id = c.id AND r.revision = c.latest_revision";

#[derive(FromRow)]
struct ConfigurationRow {
    id: String,
    arn: String,
    name: String,
    description: Option<String>,
    engine_type: String,
    engine_version: String,
    authentication_strategy: String,
    latest_revision: i64,
    latest_revision_created_at: DateTime<Utc>,
    created_at: DateTime<Utc>,
}

impl TryFrom<ConfigurationRow> for ConfigurationRecord {
    type Error = StoreError;

    fn try_from(r: ConfigurationRow) -> Result<Self, StoreError> {
        let corrupt =
            |col: &str, v: &str| StoreError::Corrupt(format!("configurations.{col} = {v:?}"));
        Ok(ConfigurationRecord {
            engine_type: EngineType::parse(&r.engine_type)
                .ok_or_else(|| corrupt("engine_type", &r.engine_type))?,
            authentication_strategy: AuthenticationStrategy::parse(&r.authentication_strategy)
                .ok_or_else(|| corrupt("authentication_strategy", &r.authentication_strategy))?,
            id: ConfigurationId::from_db(r.id),
            arn: r.arn,
            name: r.name,
            description: r.description,
            engine_version: r.engine_version,
            latest_revision: r.latest_revision,
            latest_revision_created_at: r.latest_revision_created_at,
            created_at: r.created_at,
        })
    }
}

#[derive(FromRow)]
struct RevisionRow {
    configuration_id: String,
    revision: i64,
    description: Option<String>,
    data: String,
    created_at: DateTime<Utc>,
}

impl From<RevisionRow> for RevisionRecord {
    fn from(r: RevisionRow) -> Self {
        RevisionRecord {
            configuration_id: ConfigurationId::from_db(r.configuration_id),
            revision: r.revision,
            description: r.description,
            data: r.data,
            created_at: r.created_at,
        }
    }
}

impl Store {
    /// Inserts a configuration with its revision 1 and tags, in one transaction.
    pub async fn configuration_insert(
        &self,
        c: NewConfiguration,
    ) -> Result<ConfigurationRecord, StoreError> {
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            sqlx::query(
                "INSERT INTO configurations (id, arn, name, description, engine_type, engine_version, \
                 authentication_strategy, latest_revision, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, 1, $8)",
            )
            .bind(c.id.as_str())
            .bind(&c.arn)
            .bind(&c.name)
            .bind(&c.description)
            .bind(c.engine_type.as_str())
            .bind(&c.engine_version)
            .bind(c.authentication_strategy.as_str())
            .bind(c.now)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO configuration_revisions (configuration_id, revision, description, data, created_at) \
                 VALUES ($1, 1, $2, $3, $4)",
            )
            .bind(c.id.as_str())
            .bind(&c.description)
            .bind(&c.data)
            .bind(c.now)
            .execute(&mut *tx)
            .await?;
            for (key, value) in &c.tags {
                upsert_tag!(&mut *tx, &c.arn, key, value);
            }
            tx.commit().await?;
        });
        self.configuration_get(&c.id).await
    }

    pub async fn configuration_get(
        &self,
        id: &ConfigurationId,
    ) -> Result<ConfigurationRecord, StoreError> {
        let sql = format!("SELECT {COLUMNS} {FROM} WHERE c.id = $1");
        let row: Option<ConfigurationRow> = with_pool!(self, pool => {
            sqlx::query_as(&sql).bind(id.as_str()).fetch_optional(pool).await?
        });
        row.ok_or(StoreError::NotFound("configuration"))?.try_into()
    }

    /// Configurations ordered by id, after `after` (keyset paging).
    pub async fn configuration_list(
        &self,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<ConfigurationRecord>, StoreError> {
        let sql = format!("SELECT {COLUMNS} {FROM} WHERE c.id > $1 ORDER BY c.id LIMIT $2");
        let rows: Vec<ConfigurationRow> = with_pool!(self, pool => {
            sqlx::query_as(&sql).bind(after.unwrap_or("")).bind(limit).fetch_all(pool).await?
        });
        rows.into_iter().map(TryInto::try_into).collect()
    }

    /// Appends a revision; concurrent updates each get their own revision number
    /// (the counter is bumped in SQL, first, under the row lock).
    pub async fn configuration_add_revision(
        &self,
        id: &ConfigurationId,
        data: &str,
        description: Option<&str>,
    ) -> Result<ConfigurationRecord, StoreError> {
        let now = Utc::now();
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let revision: Option<i64> = sqlx::query_scalar(
                "UPDATE configurations SET latest_revision = latest_revision + 1, \
                 description = COALESCE($2, description) WHERE id = $1 RETURNING latest_revision",
            )
            .bind(id.as_str())
            .bind(description)
            .fetch_optional(&mut *tx)
            .await?;
            let revision = revision.ok_or(StoreError::NotFound("configuration"))?;
            sqlx::query(
                "INSERT INTO configuration_revisions (configuration_id, revision, description, data, created_at) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(id.as_str())
            .bind(revision)
            .bind(description)
            .bind(data)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
        });
        self.configuration_get(id).await
    }

    pub async fn configuration_revision_get(
        &self,
        id: &ConfigurationId,
        revision: i64,
    ) -> Result<RevisionRecord, StoreError> {
        let row: Option<RevisionRow> = with_pool!(self, pool => {
            sqlx::query_as(
                "SELECT configuration_id, revision, description, data, created_at \
                 FROM configuration_revisions WHERE configuration_id = $1 AND revision = $2",
            )
            .bind(id.as_str())
            .bind(revision)
            .fetch_optional(pool)
            .await?
        });
        Ok(row
            .ok_or(StoreError::NotFound("configuration revision"))?
            .into())
    }

    /// Revisions in ascending order, after revision `after` (keyset paging).
    pub async fn configuration_revision_list(
        &self,
        id: &ConfigurationId,
        after: i64,
        limit: i64,
    ) -> Result<Vec<RevisionRecord>, StoreError> {
        let rows: Vec<RevisionRow> = with_pool!(self, pool => {
            sqlx::query_as(
                "SELECT configuration_id, revision, description, data, created_at \
                 FROM configuration_revisions WHERE configuration_id = $1 AND revision > $2 \
                 ORDER BY revision LIMIT $3",
            )
            .bind(id.as_str())
            .bind(after)
            .bind(limit)
            .fetch_all(pool)
            .await?
        });
        Ok(rows.into_iter().map(Into::into).collect())
    }

    /// Deletes a configuration no broker runs or is about to run (checked in the same
    /// statement, so a broker cannot adopt it in between). Errors: `NotFound`, or
    /// `Constraint(ConfigurationInUse)` when a broker uses it.
    pub async fn configuration_delete(&self, id: &ConfigurationId) -> Result<(), StoreError> {
        let config = self.configuration_get(id).await?;
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let affected = sqlx::query(
                "DELETE FROM configurations WHERE id = $1 AND NOT EXISTS \
                 (SELECT 1 FROM brokers WHERE configuration_id = $1 OR pending_configuration_id = $1)",
            )
            .bind(id.as_str())
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if affected == 0 {
                return Err(StoreError::Constraint(super::Constraint::ConfigurationInUse));
            }
            sqlx::query("DELETE FROM tags WHERE resource_arn = $1").bind(&config.arn).execute(&mut *tx).await?;
            tx.commit().await?;
        });
        Ok(())
    }
}
