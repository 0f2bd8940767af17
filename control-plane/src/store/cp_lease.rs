//! The `control_plane_lease` table: which `mooring serve` replica may act on the world
//! (see `reconcile::lease`). One row, only ever written by compare-and-set:
//!
//! - acquire: `WHERE expires_at_ms <= now` — of replicas racing for a free lease exactly one
//!   wins (Postgres re-checks the condition on the row the winner committed; SQLite
//!   serializes writers); every acquisition bumps `term`, the fencing counter.
//! - renew: `WHERE holder = me AND term = mine` — once another replica has taken the
//!   lease, a stale holder's renewal fails.
//! - release: the same condition; sets the expiry to now, so a standby need not wait.
//!
//! Times are milliseconds on the **database's** clock, read inside the statement, so no two
//! replicas ever compare their clocks. A holder counts its lease from the moment it *sent*
//! the renewal, on its own monotonic clock: that is never later than the database's moment,
//! so the holder's idea of the end is never later than the real one.

use sqlx::FromRow;

use super::{with_pool, Store, StoreError};

/// Now in milliseconds since the Unix epoch on each database's clock (fixed for the
/// duration of one statement).
const PG_NOW_MS: &str = "(EXTRACT(EPOCH FROM statement_timestamp()) * 1000)::BIGINT";
const SQLITE_NOW_MS: &str = "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)";

/// The lease row as read or just written.
#[derive(Debug, Clone, PartialEq, Eq, FromRow)]
pub struct CpLease {
    /// The replica holding it, or last holding it when it has expired ('' before anyone).
    pub holder: String,
    /// Fencing counter: bumped at every acquisition.
    pub term: i64,
    pub acquired_at_ms: i64,
    pub expires_at_ms: i64,
    /// The database's clock when the row was read or written.
    pub now_ms: i64,
}

impl CpLease {
    /// Whether someone holds it at `now_ms` (the moment it was read).
    pub fn is_live(&self) -> bool {
        !self.holder.is_empty() && self.expires_at_ms > self.now_ms
    }
}

impl Store {
    fn now_ms_sql(&self) -> &'static str {
        match self {
            Store::Postgres(..) => PG_NOW_MS,
            Store::Sqlite(_) => SQLITE_NOW_MS,
        }
    }

    /// Takes the lease for `holder` for `lease_ms` if it is free (never taken, expired or
    /// released). `None` when another replica holds it.
    pub async fn cp_lease_acquire(
        &self,
        holder: &str,
        lease_ms: i64,
    ) -> Result<Option<CpLease>, StoreError> {
        let sql = format!(
            "UPDATE control_plane_lease SET holder = $1, term = term + 1, \
             acquired_at_ms = {now}, renewed_at_ms = {now}, expires_at_ms = {now} + $2 \
             WHERE id = 1 AND expires_at_ms <= {now} \
             RETURNING holder, term, acquired_at_ms, expires_at_ms, {now} AS now_ms",
            now = self.now_ms_sql()
        );
        with_pool!(self, pool => sqlx::query_as::<_, CpLease>(&sql)
            .bind(holder)
            .bind(lease_ms)
            .fetch_optional(pool)
            .await
            .map_err(StoreError::from))
    }

    /// Extends the lease `holder` took under `term` to `lease_ms` from now. `None` when it
    /// no longer holds it (another replica acquired it since).
    pub async fn cp_lease_renew(
        &self,
        holder: &str,
        term: i64,
        lease_ms: i64,
    ) -> Result<Option<CpLease>, StoreError> {
        let sql = format!(
            "UPDATE control_plane_lease SET renewed_at_ms = {now}, expires_at_ms = {now} + $3 \
             WHERE id = 1 AND holder = $1 AND term = $2 \
             RETURNING holder, term, acquired_at_ms, expires_at_ms, {now} AS now_ms",
            now = self.now_ms_sql()
        );
        with_pool!(self, pool => sqlx::query_as::<_, CpLease>(&sql)
            .bind(holder)
            .bind(term)
            .bind(lease_ms)
            .fetch_optional(pool)
            .await
            .map_err(StoreError::from))
    }

    /// Gives the lease up (on shutdown), so a standby takes it at once. False when `holder`
    /// did not hold it under `term`.
    pub async fn cp_lease_release(&self, holder: &str, term: i64) -> Result<bool, StoreError> {
        let sql = format!(
            "UPDATE control_plane_lease SET expires_at_ms = {now} \
             WHERE id = 1 AND holder = $1 AND term = $2",
            now = self.now_ms_sql()
        );
        let done = with_pool!(self, pool => sqlx::query(&sql)
            .bind(holder)
            .bind(term)
            .execute(pool)
            .await
            .map_err(StoreError::from)?
            .rows_affected());
        Ok(done == 1)
    }

    /// The lease row as it is now.
    pub async fn cp_lease_get(&self) -> Result<Option<CpLease>, StoreError> {
        let sql = format!(
            "SELECT holder, term, acquired_at_ms, expires_at_ms, {now} AS now_ms \
             FROM control_plane_lease WHERE id = 1",
            now = self.now_ms_sql()
        );
        with_pool!(self, pool => sqlx::query_as::<_, CpLease>(&sql)
            .fetch_optional(pool)
            .await
            .map_err(StoreError::from))
    }
}
