//! The `broker_events` table: what happened to a broker's leadership and nodes (failovers,
//! switchovers, in-sync changes, patch steps), newest last, for the events API.
//!
//! Events are facts written by the loops that caused them, in the same transaction as the
//! change where there is one (a promotion), so the log never claims what did not happen.

use chrono::{DateTime, Utc};
use mooring_agent_protocol::NodeId;
use sqlx::FromRow;

use super::{with_pool, BrokerId, Store, StoreError};

/// Kinds of events, as stored and as the API shows them.
pub mod kind {
    /// The leader was lost and a follower promoted.
    pub const FAILOVER: &str = "failover";
    /// A planned change of leader (RebootBroker, the switchover route, maintenance).
    pub const SWITCHOVER: &str = "switchover";
    /// A requested switchover could not go ahead.
    pub const SWITCHOVER_REFUSED: &str = "switchover-refused";
    /// The recorded in-sync set changed at the leader's request.
    pub const IN_SYNC_CHANGE: &str = "in-sync-change";
    /// One node restarted as part of a rolling restart or patch.
    pub const PATCH_STEP: &str = "patch-step";
    /// The leader is gone and no follower can take over without losing data.
    pub const NO_CANDIDATE: &str = "no-candidate";
}

/// An event to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    pub broker_id: BrokerId,
    pub at: DateTime<Utc>,
    /// One of [`kind`].
    pub kind: &'static str,
    pub from_node: Option<NodeId>,
    pub to_node: Option<NodeId>,
    /// The epoch the event led to (promotions) or happened under.
    pub epoch: Option<u64>,
    pub reason: String,
    pub duration_ms: Option<u64>,
}

/// A recorded event. `id` orders events of a broker and pages them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRecord {
    pub id: i64,
    pub broker_id: BrokerId,
    pub at: DateTime<Utc>,
    pub kind: String,
    pub from_node: Option<NodeId>,
    pub to_node: Option<NodeId>,
    pub epoch: Option<u64>,
    pub reason: String,
    pub duration_ms: Option<u64>,
}

#[derive(FromRow)]
struct EventRow {
    id: i64,
    broker_id: String,
    at: DateTime<Utc>,
    kind: String,
    from_node: Option<String>,
    to_node: Option<String>,
    epoch: Option<i64>,
    reason: String,
    duration_ms: Option<i64>,
}

impl From<EventRow> for EventRecord {
    fn from(r: EventRow) -> Self {
        EventRecord {
            id: r.id,
            broker_id: BrokerId::from_db(r.broker_id),
            at: r.at,
            kind: r.kind,
            from_node: r.from_node.map(NodeId),
            to_node: r.to_node.map(NodeId),
            epoch: r.epoch.and_then(|e| u64::try_from(e).ok()),
            reason: r.reason,
            duration_ms: r.duration_ms.and_then(|d| u64::try_from(d).ok()),
        }
    }
}

pub(crate) const INSERT_SQL: &str = "INSERT INTO broker_events (broker_id, at, kind, from_node, \
    to_node, epoch, reason, duration_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";

/// Inserts `$event` with `$executor` (a pool or a transaction), inside `with_pool!`.
macro_rules! insert_event {
    ($executor:expr, $event:expr) => {{
        let e: &$crate::store::events::NewEvent = $event;
        sqlx::query($crate::store::events::INSERT_SQL)
            .bind(e.broker_id.as_str())
            .bind(e.at)
            .bind(e.kind)
            .bind(e.from_node.as_ref().map(|n| n.0.as_str()))
            .bind(e.to_node.as_ref().map(|n| n.0.as_str()))
            .bind(e.epoch.map(|v| i64::try_from(v).unwrap_or(i64::MAX)))
            .bind(&e.reason)
            .bind(e.duration_ms.map(|v| i64::try_from(v).unwrap_or(i64::MAX)))
            .execute($executor)
            .await?;
    }};
}
pub(crate) use insert_event;

impl Store {
    pub async fn event_insert(&self, event: &NewEvent) -> Result<(), StoreError> {
        with_pool!(self, pool => insert_event!(pool, event));
        Ok(())
    }

    /// The broker's latest event of `kind`, if any.
    pub async fn event_last_of_kind(
        &self,
        broker_id: &BrokerId,
        kind: &str,
    ) -> Result<Option<EventRecord>, StoreError> {
        let row: Option<EventRow> = with_pool!(self, pool => {
            sqlx::query_as(
                "SELECT id, broker_id, at, kind, from_node, to_node, epoch, reason, duration_ms \
                 FROM broker_events WHERE broker_id = $1 AND kind = $2 ORDER BY id DESC LIMIT 1",
            )
            .bind(broker_id.as_str())
            .bind(kind)
            .fetch_optional(pool)
            .await?
        });
        Ok(row.map(Into::into))
    }

    /// A broker's events, oldest first, with ids strictly above `after` (keyset paging).
    pub async fn event_list(
        &self,
        broker_id: &BrokerId,
        after: Option<i64>,
        limit: i64,
    ) -> Result<Vec<EventRecord>, StoreError> {
        let rows: Vec<EventRow> = with_pool!(self, pool => {
            sqlx::query_as(
                "SELECT id, broker_id, at, kind, from_node, to_node, epoch, reason, duration_ms \
                 FROM broker_events WHERE broker_id = $1 AND id > $2 ORDER BY id LIMIT $3",
            )
            .bind(broker_id.as_str())
            .bind(after.unwrap_or(0))
            .bind(limit)
            .fetch_all(pool)
            .await?
        });
        Ok(rows.into_iter().map(Into::into).collect())
    }
}
