//! The `audit_events` table: the append-only audit trail of API requests. Rows
//! arrive in batches (one multi-row INSERT per group commit, see `app::audit`),
//! are read newest first by `seq`, and leave only through retention.

use chrono::{DateTime, Utc};
use sqlx::FromRow;

use super::fast_pool::{on_fast, FastPool};
use super::{with_pool, Store, StoreError};

/// Rows per INSERT statement on SQLite: 9 binds each keeps a statement far below its
/// 32,766 bind limit. (Postgres takes any batch as one statement of arrays.)
pub const AUDIT_INSERT_MAX_ROWS: usize = 500;

/// What authentication and authorization decided about a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuditDecision {
    /// Authenticated and allowed by policy (or needing no permission); the status
    /// says whether the operation then succeeded.
    Allowed,
    /// Authenticated, refused by policy (explicit or implicit deny).
    Denied,
    /// The signature, key or request did not verify.
    Unauthenticated,
    /// Authenticated, refused by the principal's rate limit.
    Throttled,
}

impl AuditDecision {
    pub const ALL: [AuditDecision; 4] = [
        AuditDecision::Allowed,
        AuditDecision::Denied,
        AuditDecision::Unauthenticated,
        AuditDecision::Throttled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AuditDecision::Allowed => "allowed",
            AuditDecision::Denied => "denied",
            AuditDecision::Unauthenticated => "unauthenticated",
            AuditDecision::Throttled => "throttled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.as_str() == s)
    }
}

/// One audited request, as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAuditEvent {
    pub occurred_at: DateTime<Utc>,
    pub request_id: String,
    pub principal: String,
    pub action: Option<String>,
    pub resource: Option<String>,
    pub decision: AuditDecision,
    pub http_status: u16,
    pub error_code: Option<String>,
    pub source_ip: Option<String>,
}

/// One audited request, as read back; `seq` orders rows (larger is later).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEventRecord {
    pub seq: i64,
    pub event: NewAuditEvent,
}

#[derive(FromRow)]
struct AuditRow {
    seq: i64,
    occurred_at: DateTime<Utc>,
    request_id: String,
    principal: String,
    action: Option<String>,
    resource: Option<String>,
    decision: String,
    http_status: i32,
    error_code: Option<String>,
    source_ip: Option<String>,
}

impl TryFrom<AuditRow> for AuditEventRecord {
    type Error = StoreError;

    fn try_from(r: AuditRow) -> Result<Self, StoreError> {
        let decision = AuditDecision::parse(&r.decision)
            .ok_or_else(|| StoreError::Corrupt(format!("audit decision {:?}", r.decision)))?;
        let http_status = u16::try_from(r.http_status)
            .map_err(|_| StoreError::Corrupt(format!("audit http_status {}", r.http_status)))?;
        Ok(AuditEventRecord {
            seq: r.seq,
            event: NewAuditEvent {
                occurred_at: r.occurred_at,
                request_id: r.request_id,
                principal: r.principal,
                action: r.action,
                resource: r.resource,
                decision,
                http_status,
                error_code: r.error_code,
                source_ip: r.source_ip,
            },
        })
    }
}

/// Which events to read; every set field must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    /// Inclusive.
    pub start_time: Option<DateTime<Utc>>,
    /// Exclusive.
    pub end_time: Option<DateTime<Utc>>,
    pub principal: Option<String>,
    pub action: Option<String>,
    pub resource: Option<String>,
    pub decision: Option<AuditDecision>,
    /// Only rows with a smaller `seq` (the previous page's last).
    pub before_seq: Option<i64>,
}

const COLUMNS: &str = "seq, occurred_at, request_id, principal, action, resource, decision, \
                       http_status, error_code, source_ip";

impl Store {
    /// Appends `events` atomically: all of them are durable when this returns `Ok`,
    /// none otherwise.
    pub async fn audit_insert(&self, events: &[NewAuditEvent]) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        match self {
            Store::Postgres(_, fast, ..) => audit_insert_postgres(fast, events).await,
            Store::Sqlite(pool) => {
                let mut tx = pool.begin().await?;
                audit_insert_sqlite(&mut tx, events).await?;
                tx.commit().await?;
                Ok(())
            }
        }
    }

    /// Up to `limit` events matching `filter`, newest (largest `seq`) first.
    pub async fn audit_list(
        &self,
        filter: &AuditFilter,
        limit: i64,
    ) -> Result<Vec<AuditEventRecord>, StoreError> {
        let rows: Vec<AuditRow> = with_pool!(self, pool => {
            let mut q = sqlx::QueryBuilder::new(format!("SELECT {COLUMNS} FROM audit_events WHERE TRUE"));
            if let Some(t) = filter.start_time {
                q.push(" AND occurred_at >= ").push_bind(t);
            }
            if let Some(t) = filter.end_time {
                q.push(" AND occurred_at < ").push_bind(t);
            }
            if let Some(p) = &filter.principal {
                q.push(" AND principal = ").push_bind(p.as_str());
            }
            if let Some(a) = &filter.action {
                q.push(" AND action = ").push_bind(a.as_str());
            }
            if let Some(r) = &filter.resource {
                q.push(" AND resource = ").push_bind(r.as_str());
            }
            if let Some(d) = filter.decision {
                q.push(" AND decision = ").push_bind(d.as_str());
            }
            if let Some(seq) = filter.before_seq {
                q.push(" AND seq < ").push_bind(seq);
            }
            q.push(" ORDER BY seq DESC LIMIT ").push_bind(limit);
            q.build_query_as().fetch_all(pool).await?
        });
        rows.into_iter().map(AuditEventRecord::try_from).collect()
    }

    /// Deletes up to `limit` of the oldest events that happened before `cutoff`;
    /// returns how many went. Callers loop while it returns `limit`, so no single
    /// statement holds locks for long.
    pub async fn audit_delete_before(
        &self,
        cutoff: DateTime<Utc>,
        limit: i64,
    ) -> Result<u64, StoreError> {
        let deleted = with_pool!(self, pool => {
            sqlx::query(
                "DELETE FROM audit_events WHERE seq IN \
                 (SELECT seq FROM audit_events WHERE occurred_at < $1 ORDER BY seq LIMIT $2)",
            )
            .bind(cutoff)
            .bind(limit)
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(deleted)
    }
}

/// Appends `events` inside the caller's SQLite transaction, in as few statements as
/// [`AUDIT_INSERT_MAX_ROWS`] allows (SQLite has no arrays to bind a batch as).
pub(super) async fn audit_insert_sqlite(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    events: &[NewAuditEvent],
) -> Result<(), StoreError> {
    for chunk in events.chunks(AUDIT_INSERT_MAX_ROWS) {
        let mut insert = sqlx::QueryBuilder::new(
            "INSERT INTO audit_events (occurred_at, request_id, principal, action, resource, \
             decision, http_status, error_code, source_ip) ",
        );
        insert.push_values(chunk, |mut row, e| {
            row.push_bind(e.occurred_at)
                .push_bind(e.request_id.as_str())
                .push_bind(e.principal.as_str())
                .push_bind(e.action.as_deref())
                .push_bind(e.resource.as_deref())
                .push_bind(e.decision.as_str())
                .push_bind(i32::from(e.http_status))
                .push_bind(e.error_code.as_deref())
                .push_bind(e.source_ip.as_deref());
        });
        insert.build().execute(&mut **tx).await?;
    }
    Ok(())
}

/// A batch on Postgres: one autocommitted statement binding one array per column, on the
/// fast pool. The same statement for every batch size (a multi-row VALUES list would be a
/// new statement to parse and plan for each size, crowding the connection's statement
/// cache), and one round trip where BEGIN, INSERT, COMMIT and the pool's release ping
/// were four: durable requests (CreateUser and the other writes) wait for this commit.
async fn audit_insert_postgres(
    fast: &FastPool,
    events: &[NewAuditEvent],
) -> Result<(), StoreError> {
    let column = |f: fn(&NewAuditEvent) -> Option<&str>| -> Vec<Option<&str>> {
        events.iter().map(f).collect()
    };
    let query = sqlx::query(
        "INSERT INTO audit_events (occurred_at, request_id, principal, action, resource, \
         decision, http_status, error_code, source_ip) \
         SELECT * FROM UNNEST($1::timestamptz[], $2::text[], $3::text[], $4::text[], \
         $5::text[], $6::text[], $7::int4[], $8::text[], $9::text[])",
    )
    .bind(events.iter().map(|e| e.occurred_at).collect::<Vec<_>>())
    .bind(column(|e| Some(e.request_id.as_str())))
    .bind(column(|e| Some(e.principal.as_str())))
    .bind(column(|e| e.action.as_deref()))
    .bind(column(|e| e.resource.as_deref()))
    .bind(column(|e| Some(e.decision.as_str())))
    .bind(
        events
            .iter()
            .map(|e| i32::from(e.http_status))
            .collect::<Vec<_>>(),
    )
    .bind(column(|e| e.error_code.as_deref()))
    .bind(column(|e| e.source_ip.as_deref()));
    on_fast!(fast, conn => query.execute(conn)).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions_round_trip() {
        for d in AuditDecision::ALL {
            assert_eq!(AuditDecision::parse(d.as_str()), Some(d));
        }
        assert_eq!(AuditDecision::parse("maybe"), None);
    }
}
