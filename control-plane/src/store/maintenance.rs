//! The maintenance tables: `maintenance_actions` (when each broker's pending disruptive
//! changes are due), `maintenance_runs` (brokers being patched now; the fleet limit counts
//! them) and `maintenance_settings` (the fleet-wide pause switch).

use chrono::{DateTime, Utc};
use sqlx::FromRow;

use super::{with_pool, BrokerId, Store, StoreError};

/// What a pending action changes. The wire spelling is the stored one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ActionKind {
    EngineVersion,
    HostInstanceType,
    Configuration,
    AgentVersion,
}

impl ActionKind {
    pub const ALL: &'static [ActionKind] = &[
        ActionKind::EngineVersion,
        ActionKind::HostInstanceType,
        ActionKind::Configuration,
        ActionKind::AgentVersion,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ActionKind::EngineVersion => "ENGINE_VERSION",
            ActionKind::HostInstanceType => "HOST_INSTANCE_TYPE",
            ActionKind::Configuration => "CONFIGURATION",
            ActionKind::AgentVersion => "AGENT_VERSION",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|k| k.as_str() == s)
    }
}

/// Who asked for a pending action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActionSource {
    /// UpdateBroker.
    User,
    /// `autoMinorVersionUpgrade` and a newer patch version in the catalog.
    AutoMinorVersionUpgrade,
    /// A node runs another agent version than the one configured.
    Agent,
}

impl ActionSource {
    pub fn as_str(self) -> &'static str {
        match self {
            ActionSource::User => "USER",
            ActionSource::AutoMinorVersionUpgrade => "AUTO_MINOR_VERSION_UPGRADE",
            ActionSource::Agent => "AGENT",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            ActionSource::User,
            ActionSource::AutoMinorVersionUpgrade,
            ActionSource::Agent,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// One scheduled pending action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionRecord {
    pub broker_id: BrokerId,
    pub kind: ActionKind,
    pub target: String,
    pub source: ActionSource,
    pub scheduled_at: DateTime<Utc>,
    /// The window `scheduled_at` was computed from (`DAY HH:MM ZONE`).
    pub window_spec: String,
    pub created_at: DateTime<Utc>,
}

/// A broker whose maintenance has started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRecord {
    pub broker_id: BrokerId,
    /// The generation the run's reboot request bumps the broker to.
    pub generation: i64,
    /// The actions applied, as `(kind, target)`.
    pub actions: Vec<(String, String)>,
    pub started_at: DateTime<Utc>,
}

/// Also read from JSON (DescribeBroker aggregates a broker's actions into one column).
#[derive(FromRow, serde::Deserialize)]
pub(super) struct ActionRow {
    broker_id: String,
    kind: String,
    target: String,
    source: String,
    scheduled_at: DateTime<Utc>,
    window_spec: String,
    created_at: DateTime<Utc>,
}

impl TryFrom<ActionRow> for ActionRecord {
    type Error = StoreError;

    fn try_from(r: ActionRow) -> Result<Self, StoreError> {
        Ok(ActionRecord {
            broker_id: BrokerId::from_db(r.broker_id),
            kind: ActionKind::parse(&r.kind).ok_or_else(|| {
                StoreError::Corrupt(format!("maintenance_actions.kind = {:?}", r.kind))
            })?,
            target: r.target,
            source: ActionSource::parse(&r.source).ok_or_else(|| {
                StoreError::Corrupt(format!("maintenance_actions.source = {:?}", r.source))
            })?,
            scheduled_at: r.scheduled_at,
            window_spec: r.window_spec,
            created_at: r.created_at,
        })
    }
}

#[derive(FromRow)]
struct RunRow {
    broker_id: String,
    generation: i64,
    actions: String,
    started_at: DateTime<Utc>,
}

impl TryFrom<RunRow> for RunRecord {
    type Error = StoreError;

    fn try_from(r: RunRow) -> Result<Self, StoreError> {
        Ok(RunRecord {
            broker_id: BrokerId::from_db(r.broker_id),
            generation: r.generation,
            actions: serde_json::from_str(&r.actions)
                .map_err(|e| StoreError::Corrupt(format!("maintenance_runs.actions: {e}")))?,
            started_at: r.started_at,
        })
    }
}

pub(super) const ACTION_COLUMNS: &str =
    "broker_id, kind, target, source, scheduled_at, window_spec, created_at";

impl Store {
    /// Every scheduled action of every broker, by broker then kind (one query per pass of
    /// the maintenance reconciler, however large the fleet).
    pub async fn maintenance_action_list_all(&self) -> Result<Vec<ActionRecord>, StoreError> {
        let sql =
            format!("SELECT {ACTION_COLUMNS} FROM maintenance_actions ORDER BY broker_id, kind");
        let rows: Vec<ActionRow> = with_pool!(self, pool => {
            sqlx::query_as(&sql).fetch_all(pool).await?
        });
        rows.into_iter().map(TryInto::try_into).collect()
    }

    /// The agent versions each broker's nodes reported at their latest registration, as
    /// `(broker, version)` once each (one query per pass; nodes that never registered
    /// report nothing).
    pub async fn maintenance_agent_versions(&self) -> Result<Vec<(BrokerId, String)>, StoreError> {
        let rows: Vec<(String, String)> = with_pool!(self, pool => {
            sqlx::query_as(
                "SELECT DISTINCT broker_id, agent_version FROM broker_nodes \
                 WHERE agent_version IS NOT NULL ORDER BY broker_id, agent_version",
            )
            .fetch_all(pool)
            .await?
        });
        Ok(rows
            .into_iter()
            .map(|(b, v)| (BrokerId::from_db(b), v))
            .collect())
    }

    /// One broker's scheduled actions, by kind.
    pub async fn maintenance_action_list(
        &self,
        broker_id: &BrokerId,
    ) -> Result<Vec<ActionRecord>, StoreError> {
        let sql = format!(
            "SELECT {ACTION_COLUMNS} FROM maintenance_actions WHERE broker_id = $1 ORDER BY kind"
        );
        let rows: Vec<ActionRow> = with_pool!(self, pool => {
            sqlx::query_as(&sql).bind(broker_id.as_str()).fetch_all(pool).await?
        });
        rows.into_iter().map(TryInto::try_into).collect()
    }

    /// Records (or replaces) the schedule of one kind of action of a broker. A broker that
    /// no longer exists is [`StoreError::NotFound`] (its row went between read and write).
    pub async fn maintenance_action_upsert(&self, a: &ActionRecord) -> Result<(), StoreError> {
        let result = with_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO maintenance_actions (broker_id, kind, target, source, scheduled_at, \
                 window_spec, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7) \
                 ON CONFLICT (broker_id, kind) DO UPDATE SET target = excluded.target, \
                 source = excluded.source, scheduled_at = excluded.scheduled_at, \
                 window_spec = excluded.window_spec, created_at = excluded.created_at",
            )
            .bind(a.broker_id.as_str())
            .bind(a.kind.as_str())
            .bind(&a.target)
            .bind(a.source.as_str())
            .bind(a.scheduled_at)
            .bind(&a.window_spec)
            .bind(a.created_at)
            .execute(pool)
            .await
            .map(|r| r.rows_affected())
        });
        match result.map_err(StoreError::from) {
            Ok(_) => Ok(()),
            Err(StoreError::Constraint(_)) => Err(StoreError::NotFound("broker")),
            Err(e) => Err(e),
        }
    }

    /// Removes one kind of scheduled action; removing a missing one is success.
    pub async fn maintenance_action_delete(
        &self,
        broker_id: &BrokerId,
        kind: ActionKind,
    ) -> Result<(), StoreError> {
        with_pool!(self, pool => {
            sqlx::query("DELETE FROM maintenance_actions WHERE broker_id = $1 AND kind = $2")
                .bind(broker_id.as_str())
                .bind(kind.as_str())
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// Every maintenance run in progress.
    pub async fn maintenance_run_list(&self) -> Result<Vec<RunRecord>, StoreError> {
        let rows: Vec<RunRow> = with_pool!(self, pool => {
            sqlx::query_as(
                "SELECT broker_id, generation, actions, started_at FROM maintenance_runs \
                 ORDER BY broker_id",
            )
            .fetch_all(pool)
            .await?
        });
        rows.into_iter().map(TryInto::try_into).collect()
    }

    /// Starts a run unless `max_concurrent` runs (this broker's excluded) are already in
    /// progress or this broker has one. Returns whether it was recorded. The count and the
    /// insert are one statement; two control-plane replicas racing on Postgres may still
    /// both pass it (READ COMMITTED), so the limit is exact per replica and approximate
    /// across replicas — it is a brake on load, not a safety property.
    pub async fn maintenance_run_begin(
        &self,
        run: &RunRecord,
        max_concurrent: i64,
    ) -> Result<bool, StoreError> {
        let actions =
            serde_json::to_string(&run.actions).expect("pairs of strings always serialize");
        let result = with_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO maintenance_runs (broker_id, generation, actions, started_at) \
                 SELECT $1, $2, $3, $4 WHERE (SELECT COUNT(*) FROM maintenance_runs) < $5 \
                 ON CONFLICT (broker_id) DO NOTHING",
            )
            .bind(run.broker_id.as_str())
            .bind(run.generation)
            .bind(&actions)
            .bind(run.started_at)
            .bind(max_concurrent)
            .execute(pool)
            .await
            .map(|r| r.rows_affected())
        });
        match result.map_err(StoreError::from) {
            Ok(done) => Ok(done > 0),
            Err(StoreError::Constraint(_)) => Err(StoreError::NotFound("broker")),
            Err(e) => Err(e),
        }
    }

    /// Ends a run; ending a missing one is success.
    pub async fn maintenance_run_end(&self, broker_id: &BrokerId) -> Result<(), StoreError> {
        with_pool!(self, pool => {
            sqlx::query("DELETE FROM maintenance_runs WHERE broker_id = $1")
                .bind(broker_id.as_str())
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// The operator's pause switch; off until first set.
    pub async fn maintenance_paused(&self) -> Result<bool, StoreError> {
        let paused: Option<bool> = with_pool!(self, pool => {
            sqlx::query_scalar("SELECT paused FROM maintenance_settings WHERE id = 1")
                .fetch_optional(pool)
                .await?
        });
        Ok(paused.unwrap_or(false))
    }

    pub async fn maintenance_set_paused(
        &self,
        paused: bool,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        with_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO maintenance_settings (id, paused, updated_at) VALUES (1, $1, $2) \
                 ON CONFLICT (id) DO UPDATE SET paused = excluded.paused, \
                 updated_at = excluded.updated_at",
            )
            .bind(paused)
            .bind(now)
            .execute(pool)
            .await?;
        });
        Ok(())
    }
}
