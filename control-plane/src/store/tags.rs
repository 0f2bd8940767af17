//! The `tags` table: key/value tags on any resource, keyed by its ARN.

use std::collections::BTreeMap;

use super::{with_pool, Store, StoreError};

/// Sets one tag inside a transaction, replacing its value when the key exists.
macro_rules! upsert_tag {
    ($tx:expr, $arn:expr, $key:expr, $value:expr) => {
        sqlx::query(
            "INSERT INTO tags (resource_arn, key, value) VALUES ($1, $2, $3) \
             ON CONFLICT (resource_arn, key) DO UPDATE SET value = $3",
        )
        .bind($arn)
        .bind($key)
        .bind($value)
        .execute($tx)
        .await?
    };
}
pub(super) use upsert_tag;

impl Store {
    pub async fn tag_list(&self, arn: &str) -> Result<BTreeMap<String, String>, StoreError> {
        let rows: Vec<(String, String)> = with_pool!(self, pool => {
            sqlx::query_as("SELECT key, value FROM tags WHERE resource_arn = $1 ORDER BY key")
                .bind(arn)
                .fetch_all(pool)
                .await?
        });
        Ok(rows.into_iter().collect())
    }

    /// Adds or replaces the given tags, all or none.
    pub async fn tag_put(
        &self,
        arn: &str,
        tags: &BTreeMap<String, String>,
    ) -> Result<(), StoreError> {
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            for (key, value) in tags {
                upsert_tag!(&mut *tx, arn, key, value);
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// Removes the given keys; keys that are not set are ignored, as in Amazon MQ.
    pub async fn tag_delete(&self, arn: &str, keys: &[String]) -> Result<(), StoreError> {
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            for key in keys {
                sqlx::query("DELETE FROM tags WHERE resource_arn = $1 AND key = $2")
                    .bind(arn)
                    .bind(key)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }
}
