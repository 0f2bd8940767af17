//! The `brokers` table: each broker's desired spec, lifecycle state, `generation`
//! (bumped whenever something must reach the nodes; never decreases) and `version`
//! (bumped on every write; optimistic updates check it).

use chrono::{DateTime, Utc};
use sqlx::FromRow;

use std::collections::BTreeMap;
use std::sync::Arc;

use mooring_agent_protocol::NodeId;

use super::batches::{describe_rows_postgres, list_page_postgres};
use super::coalesce::Batched;
use super::detail_cache::DetailParts;
use super::maintenance::{ActionRow, ACTION_COLUMNS};
use super::tags::upsert_tag;
use super::users::{insert_user, UserRow, COLUMNS as USER_COLUMNS};
use super::{
    json_list, parse_json_list, with_pool, ActionRecord, BrokerId, ConfigurationId, NewUser,
    ObservedState, Store, StoreError, UserRecord,
};
use crate::model::{
    AuthenticationStrategy, BrokerState, ChangeType, DayOfWeek, DeploymentMode, EngineType,
    StorageType,
};

/// A broker as stored. `version` is the optimistic-concurrency token of this snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct BrokerRecord {
    pub id: BrokerId,
    pub name: String,
    pub arn: String,
    pub state: BrokerState,
    pub engine_type: EngineType,
    pub engine_version: String,
    pub host_instance_type: String,
    pub deployment_mode: DeploymentMode,
    pub authentication_strategy: AuthenticationStrategy,
    pub storage_type: StorageType,
    pub publicly_accessible: bool,
    pub auto_minor_version_upgrade: bool,
    pub maintenance_day: DayOfWeek,
    /// `HH:MM`, 24-hour.
    pub maintenance_time: String,
    /// An IANA zone name or `UTC`.
    pub maintenance_time_zone: String,
    pub logs_general: bool,
    pub logs_audit: bool,
    pub security_groups: Vec<String>,
    pub subnet_ids: Vec<String>,
    /// The configuration the nodes run, if any.
    pub configuration: Option<(ConfigurationId, i64)>,
    /// Configurations the broker ran before, oldest first.
    pub configuration_history: Vec<(ConfigurationId, i64)>,
    /// Changes recorded by UpdateBroker, applied by the next reboot.
    pub pending_engine_version: Option<String>,
    pub pending_host_instance_type: Option<String>,
    pub pending_configuration: Option<(ConfigurationId, i64)>,
    pub creator_request_id: Option<String>,
    /// Only grows; every change the nodes must see bumps it first.
    pub generation: i64,
    /// The generation at which the last reboot was requested; the reboot is done once
    /// the nodes have applied it.
    pub reboot_generation: Option<i64>,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// What CreateBroker stores; the store fills state, generation and version.
#[derive(Debug, Clone)]
pub struct NewBroker {
    pub id: BrokerId,
    pub name: String,
    pub arn: String,
    pub engine_type: EngineType,
    pub engine_version: String,
    pub host_instance_type: String,
    pub deployment_mode: DeploymentMode,
    pub authentication_strategy: AuthenticationStrategy,
    pub storage_type: StorageType,
    pub publicly_accessible: bool,
    pub auto_minor_version_upgrade: bool,
    pub maintenance_day: DayOfWeek,
    pub maintenance_time: String,
    pub maintenance_time_zone: String,
    pub logs_general: bool,
    pub logs_audit: bool,
    pub security_groups: Vec<String>,
    pub subnet_ids: Vec<String>,
    pub configuration: Option<(ConfigurationId, i64)>,
    pub creator_request_id: Option<String>,
    pub tags: Vec<(String, String)>,
    pub now: DateTime<Utc>,
}

/// The mutable part of a broker; written as a whole by [`Store::broker_update_spec`].
#[derive(Debug, Clone, PartialEq)]
pub struct BrokerSpecUpdate {
    pub state: BrokerState,
    pub engine_version: String,
    pub host_instance_type: String,
    pub auto_minor_version_upgrade: bool,
    pub maintenance_day: DayOfWeek,
    pub maintenance_time: String,
    pub maintenance_time_zone: String,
    pub logs_general: bool,
    pub logs_audit: bool,
    pub security_groups: Vec<String>,
    pub configuration: Option<(ConfigurationId, i64)>,
    pub configuration_history: Vec<(ConfigurationId, i64)>,
    pub pending_engine_version: Option<String>,
    pub pending_host_instance_type: Option<String>,
    pub pending_configuration: Option<(ConfigurationId, i64)>,
    /// Set by a reboot request to the generation it bumps to.
    pub request_reboot: bool,
}

impl BrokerRecord {
    /// The current spec, to be modified and written back.
    pub fn spec(&self) -> BrokerSpecUpdate {
        BrokerSpecUpdate {
            state: self.state,
            engine_version: self.engine_version.clone(),
            host_instance_type: self.host_instance_type.clone(),
            auto_minor_version_upgrade: self.auto_minor_version_upgrade,
            maintenance_day: self.maintenance_day,
            maintenance_time: self.maintenance_time.clone(),
            maintenance_time_zone: self.maintenance_time_zone.clone(),
            logs_general: self.logs_general,
            logs_audit: self.logs_audit,
            security_groups: self.security_groups.clone(),
            configuration: self.configuration.clone(),
            configuration_history: self.configuration_history.clone(),
            pending_engine_version: self.pending_engine_version.clone(),
            pending_host_instance_type: self.pending_host_instance_type.clone(),
            pending_configuration: self.pending_configuration.clone(),
            request_reboot: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerStateCount {
    pub state: BrokerState,
    pub count: i64,
}

const COLUMNS: &str = "id, name, arn, state, engine_type, engine_version, host_instance_type, \
    deployment_mode, authentication_strategy, storage_type, publicly_accessible, \
    auto_minor_version_upgrade, maintenance_day, maintenance_time, maintenance_time_zone, \
    logs_general, logs_audit, security_groups, subnet_ids, configuration_id, \
    configuration_revision, configuration_history, pending_engine_version, \
    pending_host_instance_type, pending_configuration_id, pending_configuration_revision, \
    creator_request_id, generation, reboot_generation, version, created_at, updated_at";

/// ListBrokers' page on SQLite: summaries' columns, by id, after `$1`, at most `$2`.
const LIST_SUMMARIES_SQL: &str = "SELECT id, name, arn, state, engine_type, host_instance_type, \
     deployment_mode, created_at FROM brokers WHERE id > $1 ORDER BY id LIMIT $2";

/// A summary's columns: id, name, arn, state, engine type, instance type, deployment mode,
/// creation time.
pub(super) type SummaryRow = (
    String,
    String,
    String,
    String,
    String,
    String,
    String,
    DateTime<Utc>,
);

pub(super) fn summary_from_row(row: SummaryRow) -> Result<BrokerSummaryRecord, StoreError> {
    let (id, name, arn, state, engine_type, host_instance_type, mode, created_at) = row;
    Ok(BrokerSummaryRecord {
        id: BrokerId::from_db(id),
        name,
        arn,
        state: enum_col(BrokerState::parse, "state", &state)?,
        engine_type: enum_col(EngineType::parse, "engine_type", &engine_type)?,
        host_instance_type,
        deployment_mode: enum_col(DeploymentMode::parse, "deployment_mode", &mode)?,
        created_at,
    })
}

/// What ListBrokers shows of a broker.
#[derive(Debug, Clone, PartialEq)]
pub struct BrokerSummaryRecord {
    pub id: BrokerId,
    pub name: String,
    pub arn: String,
    pub state: BrokerState,
    pub engine_type: EngineType,
    pub host_instance_type: String,
    pub deployment_mode: DeploymentMode,
    pub created_at: DateTime<Utc>,
}

/// Everything DescribeBroker reads about a broker, from one statement
/// ([`Store::broker_describe`]): the broker, its users (by name, those pending deletion
/// included), its tags, its nodes, its scheduled maintenance actions and, for a replicated
/// broker, its leadership.
#[derive(Debug, Clone)]
pub struct BrokerDetail {
    pub broker: BrokerRecord,
    pub users: Vec<UserRecord>,
    pub tags: BTreeMap<String, String>,
    /// By ordinal.
    pub nodes: Vec<DescribedNode>,
    /// By kind.
    pub scheduled: Vec<ActionRecord>,
    pub leadership: Option<DescribedLeadership>,
}

/// The part of a node DescribeBroker shows.
#[derive(Debug, Clone, PartialEq)]
pub struct DescribedNode {
    pub id: NodeId,
    pub zone: String,
    pub host: String,
    pub amqp_port: u16,
    pub admin_port: u16,
    pub observed: ObservedState,
}

impl DescribedNode {
    /// As [`super::NodeRecord::amqp_endpoint`].
    pub fn amqp_endpoint(&self) -> String {
        format!("amqp://{}:{}", self.host, self.amqp_port)
    }

    /// As [`super::NodeRecord::console_url`].
    pub fn console_url(&self) -> String {
        format!("http://{}:{}", self.host, self.admin_port)
    }
}

/// The part of a replicated broker's leadership DescribeBroker shows.
#[derive(Debug, Clone, PartialEq)]
pub struct DescribedLeadership {
    /// The leader under the current epoch.
    pub leader: NodeId,
    /// The `actionRequiredCode` the broker shows while CRITICAL_ACTION_REQUIRED.
    pub action_required: Option<String>,
}

/// A node as DescribeBroker's statement aggregates it.
type NodeColumns = (String, String, String, i64, i64, String);

/// [`BrokerDetail`] in one row: the rest aggregated as JSON.
#[derive(FromRow)]
struct BrokerDetailRow {
    #[sqlx(flatten)]
    broker: BrokerRow,
    users: sqlx::types::Json<Vec<UserRow>>,
    tags: sqlx::types::Json<Vec<(String, String)>>,
    /// `[id, zone, host, amqp_port, admin_port, observed_state]` per node.
    nodes: sqlx::types::Json<Vec<NodeColumns>>,
    actions: sqlx::types::Json<Vec<ActionRow>>,
    /// `[leader_node, action_required]`, for a replicated broker.
    leadership: Option<sqlx::types::Json<(String, Option<String>)>>,
}

/// Whether the remembered read still stands: the detail version and the generation
/// (which inserted users bump instead of the version: migration 0110) are unchanged.
const CACHED: &str = "v.detail_version = q.known AND b.generation = q.known_generation";

/// DescribeBroker's statement on Postgres, for a batch of brokers (see
/// [`super::batches`]): `$1` the ids, `$3` and `$4` the detail version and generation the
/// caller remembers of each (see [`super::detail_cache`]). One row per wanted broker that
/// exists, `ord` its 1-based place in `$1`. Where the remembered read is current the other
/// tables are not read and their columns are NULL (`detail_cached` says so; `leadership`
/// is NULL for a broker that has none, too).
fn describe_sql_postgres() -> String {
    let unless_cached =
        |subquery: &str| format!("CASE WHEN {CACHED} THEN NULL ELSE ({subquery}) END");
    format!(
        "SELECT q.ord, {COLUMNS}, v.detail_version, \
         coalesce({CACHED}, FALSE) AS detail_cached, \
         {} AS users, {} AS tags, {} AS nodes, {} AS actions, {} AS leadership \
         FROM unnest($1::text[], $3::int8[], $4::int8[]) \
             WITH ORDINALITY AS q(wanted, known, known_generation, ord) \
         CROSS JOIN LATERAL (SELECT * FROM brokers WHERE id = q.wanted LIMIT 1) b \
         LEFT JOIN broker_detail_versions v ON v.broker_id = b.id",
        unless_cached(&format!(
            "SELECT coalesce(json_agg(u ORDER BY u.username), '[]') FROM \
             (SELECT {USER_COLUMNS} FROM broker_users WHERE broker_id = b.id \
             ORDER BY username LIMIT $2) u"
        )),
        unless_cached(
            "SELECT coalesce(json_agg(json_build_array(t.key, t.value) ORDER BY t.key), '[]') \
             FROM tags t WHERE t.resource_arn = b.arn"
        ),
        unless_cached(
            "SELECT coalesce(json_agg(json_build_array(n.id, n.zone, n.host, n.amqp_port, \
             n.admin_port, n.observed_state) ORDER BY n.ordinal), '[]') \
             FROM broker_nodes n WHERE n.broker_id = b.id"
        ),
        unless_cached(&format!(
            "SELECT coalesce(json_agg(a ORDER BY a.kind), '[]') FROM \
             (SELECT {ACTION_COLUMNS} FROM maintenance_actions WHERE broker_id = b.id) a"
        )),
        unless_cached(
            "SELECT json_build_array(r.leader_node, r.action_required) \
             FROM broker_replication r WHERE r.broker_id = b.id"
        ),
    )
}

/// [`describe_sql_postgres`]'s row: [`BrokerDetailRow`]'s columns, NULL when cached.
#[derive(FromRow)]
pub struct BrokerDetailVersionedRow {
    /// The row's 1-based place in its batch.
    pub(super) ord: i64,
    #[sqlx(flatten)]
    broker: BrokerRow,
    /// NULL only for a broker created before migration 0107 ran (none: it backfills).
    detail_version: Option<i64>,
    detail_cached: bool,
    users: Option<sqlx::types::Json<Vec<UserRow>>>,
    tags: Option<sqlx::types::Json<Vec<(String, String)>>>,
    nodes: Option<sqlx::types::Json<Vec<NodeColumns>>>,
    actions: Option<sqlx::types::Json<Vec<ActionRow>>>,
    leadership: Option<sqlx::types::Json<(String, Option<String>)>>,
}

/// DescribeBroker's statement on SQLite: the same shape with SQLite's JSON functions
/// (booleans spelled as JSON booleans, aggregates ordered explicitly).
fn describe_sql_sqlite() -> String {
    fn bool_json(column: &str) -> String {
        format!("json(CASE WHEN {column} THEN 'true' ELSE 'false' END)")
    }
    let user = format!(
        "json_object('broker_id', broker_id, 'username', username, 'password_hash', \
         password_hash, 'console_access', {}, 'groups', groups, 'replication_user', {}, \
         'pending_change', pending_change, 'pending_generation', pending_generation, \
         'created_at', created_at)",
        bool_json("console_access"),
        bool_json("replication_user"),
    );
    format!(
        "SELECT {COLUMNS}, \
         (SELECT json_group_array(json({user}) ORDER BY username) FROM \
            (SELECT * FROM broker_users WHERE broker_id = b.id ORDER BY username LIMIT $2)) \
            AS users, \
         (SELECT json_group_array(json_array(t.key, t.value) ORDER BY t.key) \
            FROM tags t WHERE t.resource_arn = b.arn) AS tags, \
         (SELECT json_group_array(json_array(n.id, n.zone, n.host, n.amqp_port, \
            n.admin_port, n.observed_state) ORDER BY n.ordinal) \
            FROM broker_nodes n WHERE n.broker_id = b.id) AS nodes, \
         (SELECT json_group_array(json_object('broker_id', a.broker_id, 'kind', a.kind, \
            'target', a.target, 'source', a.source, 'scheduled_at', a.scheduled_at, \
            'window_spec', a.window_spec, 'created_at', a.created_at) ORDER BY a.kind) \
            FROM maintenance_actions a WHERE a.broker_id = b.id) AS actions, \
         (SELECT json_array(r.leader_node, r.action_required) \
            FROM broker_replication r WHERE r.broker_id = b.id) AS leadership \
         FROM brokers b WHERE id = $1"
    )
}

pub(super) static DESCRIBE_SQL_POSTGRES: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(describe_sql_postgres);
static DESCRIBE_SQL_SQLITE: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(describe_sql_sqlite);

fn described_node(
    (id, zone, host, amqp_port, admin_port, observed): NodeColumns,
) -> Result<DescribedNode, StoreError> {
    let port = |column: &str, value: i64| {
        u16::try_from(value)
            .map_err(|_| StoreError::Corrupt(format!("broker_nodes.{column} = {value}")))
    };
    Ok(DescribedNode {
        id: NodeId(id),
        zone,
        host,
        amqp_port: port("amqp_port", amqp_port)?,
        admin_port: port("admin_port", admin_port)?,
        observed: ObservedState::parse(&observed).ok_or_else(|| {
            StoreError::Corrupt(format!("broker_nodes.observed_state = {observed:?}"))
        })?,
    })
}

/// The rows DescribeBroker's statement aggregated, as records.
fn detail_parts(
    (version, generation): (i64, i64),
    users: Vec<UserRow>,
    tags: Vec<(String, String)>,
    nodes: Vec<NodeColumns>,
    actions: Vec<ActionRow>,
    leadership: Option<(String, Option<String>)>,
) -> Result<DetailParts, StoreError> {
    Ok(DetailParts {
        version,
        generation,
        users: users
            .into_iter()
            .map(TryInto::try_into)
            .collect::<Result<_, _>>()?,
        tags: tags.into_iter().collect(),
        nodes: nodes
            .into_iter()
            .map(described_node)
            .collect::<Result<_, _>>()?,
        scheduled: actions
            .into_iter()
            .map(TryInto::try_into)
            .collect::<Result<_, _>>()?,
        leadership: leadership.map(|(leader, action_required)| DescribedLeadership {
            leader: NodeId(leader),
            action_required,
        }),
    })
}

/// DescribeBroker lists users without paging; a broker's user count is bounded in practice
/// by what an operator creates by hand, and this bounds the answer regardless.
pub(super) const DESCRIBE_USERS_MAX: i64 = 10_000;

#[derive(FromRow)]
struct BrokerRow {
    id: String,
    name: String,
    arn: String,
    state: String,
    engine_type: String,
    engine_version: String,
    host_instance_type: String,
    deployment_mode: String,
    authentication_strategy: String,
    storage_type: String,
    publicly_accessible: bool,
    auto_minor_version_upgrade: bool,
    maintenance_day: String,
    maintenance_time: String,
    maintenance_time_zone: String,
    logs_general: bool,
    logs_audit: bool,
    security_groups: String,
    subnet_ids: String,
    configuration_id: Option<String>,
    configuration_revision: Option<i64>,
    configuration_history: String,
    pending_engine_version: Option<String>,
    pending_host_instance_type: Option<String>,
    pending_configuration_id: Option<String>,
    pending_configuration_revision: Option<i64>,
    creator_request_id: Option<String>,
    generation: i64,
    reboot_generation: Option<i64>,
    version: i64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

fn enum_col<T>(parse: fn(&str) -> Option<T>, column: &str, value: &str) -> Result<T, StoreError> {
    parse(value).ok_or_else(|| StoreError::Corrupt(format!("brokers.{column} = {value:?}")))
}

fn config_ref(id: Option<String>, revision: Option<i64>) -> Option<(ConfigurationId, i64)> {
    match (id, revision) {
        (Some(id), Some(rev)) => Some((ConfigurationId::from_db(id), rev)),
        _ => None,
    }
}

fn history_to_text(history: &[(ConfigurationId, i64)]) -> String {
    let pairs: Vec<(&str, i64)> = history
        .iter()
        .map(|(id, rev)| (id.as_str(), *rev))
        .collect();
    serde_json::to_string(&pairs).expect("pairs of strings and integers always serialize")
}

fn history_from_text(text: &str) -> Result<Vec<(ConfigurationId, i64)>, StoreError> {
    let pairs: Vec<(String, i64)> = serde_json::from_str(text)
        .map_err(|e| StoreError::Corrupt(format!("brokers.configuration_history: {e}")))?;
    Ok(pairs
        .into_iter()
        .map(|(id, rev)| (ConfigurationId::from_db(id), rev))
        .collect())
}

impl TryFrom<BrokerRow> for BrokerRecord {
    type Error = StoreError;

    fn try_from(r: BrokerRow) -> Result<Self, StoreError> {
        Ok(BrokerRecord {
            id: BrokerId::from_db(r.id),
            name: r.name,
            arn: r.arn,
            state: enum_col(BrokerState::parse, "state", &r.state)?,
            engine_type: enum_col(EngineType::parse, "engine_type", &r.engine_type)?,
            engine_version: r.engine_version,
            host_instance_type: r.host_instance_type,
            deployment_mode: enum_col(
                DeploymentMode::parse,
                "deployment_mode",
                &r.deployment_mode,
            )?,
            authentication_strategy: enum_col(
                AuthenticationStrategy::parse,
                "authentication_strategy",
                &r.authentication_strategy,
            )?,
            storage_type: enum_col(StorageType::parse, "storage_type", &r.storage_type)?,
            publicly_accessible: r.publicly_accessible,
            auto_minor_version_upgrade: r.auto_minor_version_upgrade,
            maintenance_day: enum_col(DayOfWeek::parse, "maintenance_day", &r.maintenance_day)?,
            maintenance_time: r.maintenance_time,
            maintenance_time_zone: r.maintenance_time_zone,
            logs_general: r.logs_general,
            logs_audit: r.logs_audit,
            security_groups: parse_json_list(&r.security_groups)?,
            subnet_ids: parse_json_list(&r.subnet_ids)?,
            configuration: config_ref(r.configuration_id, r.configuration_revision),
            configuration_history: history_from_text(&r.configuration_history)?,
            pending_engine_version: r.pending_engine_version,
            pending_host_instance_type: r.pending_host_instance_type,
            pending_configuration: config_ref(
                r.pending_configuration_id,
                r.pending_configuration_revision,
            ),
            creator_request_id: r.creator_request_id,
            generation: r.generation,
            reboot_generation: r.reboot_generation,
            version: r.version,
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
    }
}

impl Store {
    /// Inserts a broker in CREATION_IN_PROGRESS at generation 1, with its first users
    /// and tags, in one transaction.
    pub async fn broker_insert(
        &self,
        b: NewBroker,
        users: Vec<NewUser>,
    ) -> Result<BrokerRecord, StoreError> {
        let sql = format!(
            "INSERT INTO brokers ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, \
             $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, NULL, NULL, NULL, NULL, \
             $23, 1, NULL, 1, $24, $24) RETURNING {COLUMNS}"
        );
        let (config_id, config_rev) = match &b.configuration {
            Some((id, rev)) => (Some(id.as_str().to_owned()), Some(*rev)),
            None => (None, None),
        };
        let row: BrokerRow = with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let row: BrokerRow = sqlx::query_as(&sql)
                .bind(b.id.as_str())
                .bind(&b.name)
                .bind(&b.arn)
                .bind(BrokerState::CreationInProgress.as_str())
                .bind(b.engine_type.as_str())
                .bind(&b.engine_version)
                .bind(&b.host_instance_type)
                .bind(b.deployment_mode.as_str())
                .bind(b.authentication_strategy.as_str())
                .bind(b.storage_type.as_str())
                .bind(b.publicly_accessible)
                .bind(b.auto_minor_version_upgrade)
                .bind(b.maintenance_day.as_str())
                .bind(&b.maintenance_time)
                .bind(&b.maintenance_time_zone)
                .bind(b.logs_general)
                .bind(b.logs_audit)
                .bind(json_list(&b.security_groups))
                .bind(json_list(&b.subnet_ids))
                .bind(&config_id)
                .bind(config_rev)
                .bind(history_to_text(&[]))
                .bind(&b.creator_request_id)
                .bind(b.now)
                .fetch_one(&mut *tx)
                .await?;
            for user in &users {
                insert_user!(&mut *tx, &b.id, user, ChangeType::Create, 1_i64, b.now);
            }
            for (key, value) in &b.tags {
                upsert_tag!(&mut *tx, &b.arn, key, value);
            }
            tx.commit().await?;
            row
        });
        row.try_into()
    }

    pub async fn broker_get(&self, id: &BrokerId) -> Result<BrokerRecord, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM brokers WHERE id = $1");
        let row: Option<BrokerRow> = with_pool!(self, pool => {
            sqlx::query_as(&sql).bind(id.as_str()).fetch_optional(pool).await?
        });
        row.ok_or(StoreError::NotFound("broker"))?.try_into()
    }

    /// Everything DescribeBroker reads, in one statement on either store (the broker with
    /// its users, tags, nodes, scheduled maintenance actions and leadership).
    pub async fn broker_describe(&self, id: &BrokerId) -> Result<BrokerDetail, StoreError> {
        let row: BrokerDetailRow = match self {
            Store::Postgres(_, fast, cache, batches) => {
                let known = cache.get(id.as_str());
                let wanted = (
                    id.as_str().to_owned(),
                    known.as_ref().map(|k| (k.version, k.generation)),
                );
                let row = match batches.describe.read(wanted.clone()).await {
                    Batched::Answer(row) => row,
                    Batched::RunAlone => describe_rows_postgres(fast.clone(), vec![wanted])
                        .await?
                        .pop()
                        .flatten(),
                };
                let row = row.ok_or(StoreError::NotFound("broker"))?;
                let generation = row.broker.generation;
                let broker = row.broker.try_into()?;
                let parts = match known {
                    Some(known) if row.detail_cached => known,
                    _ => {
                        let parts = Arc::new(detail_parts(
                            (row.detail_version.unwrap_or(-1), generation),
                            row.users.map(|j| j.0).unwrap_or_default(),
                            row.tags.map(|j| j.0).unwrap_or_default(),
                            row.nodes.map(|j| j.0).unwrap_or_default(),
                            row.actions.map(|j| j.0).unwrap_or_default(),
                            row.leadership.map(|j| j.0),
                        )?);
                        if row.detail_version.is_some() {
                            cache.put(id.as_str(), Arc::clone(&parts));
                        }
                        parts
                    }
                };
                return Ok(BrokerDetail {
                    broker,
                    users: parts.users.clone(),
                    tags: parts.tags.clone(),
                    nodes: parts.nodes.clone(),
                    scheduled: parts.scheduled.clone(),
                    leadership: parts.leadership.clone(),
                });
            }
            Store::Sqlite(pool) => sqlx::query_as(DESCRIBE_SQL_SQLITE.as_str())
                .bind(id.as_str())
                .bind(DESCRIBE_USERS_MAX)
                .fetch_optional(pool)
                .await?
                .ok_or(StoreError::NotFound("broker"))?,
        };
        let parts = detail_parts(
            (0, 0),
            row.users.0,
            row.tags.0,
            row.nodes.0,
            row.actions.0,
            row.leadership.map(|j| j.0),
        )?;
        Ok(BrokerDetail {
            broker: row.broker.try_into()?,
            users: parts.users,
            tags: parts.tags,
            nodes: parts.nodes,
            scheduled: parts.scheduled,
            leadership: parts.leadership,
        })
    }

    /// The brokers among `ids` that exist, in no particular order.
    pub async fn broker_get_many(&self, ids: &[BrokerId]) -> Result<Vec<BrokerRecord>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let rows: Vec<BrokerRow> = with_pool!(self, pool => {
            let mut q = sqlx::QueryBuilder::new(format!("SELECT {COLUMNS} FROM brokers WHERE id IN ("));
            let mut list = q.separated(", ");
            for id in ids {
                list.push_bind(id.as_str());
            }
            q.push(")");
            q.build_query_as().fetch_all(pool).await?
        });
        rows.into_iter().map(TryInto::try_into).collect()
    }

    pub async fn broker_get_by_name(&self, name: &str) -> Result<Option<BrokerRecord>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM brokers WHERE name = $1");
        let row: Option<BrokerRow> = with_pool!(self, pool => {
            sqlx::query_as(&sql).bind(name).fetch_optional(pool).await?
        });
        row.map(TryInto::try_into).transpose()
    }

    pub async fn broker_get_by_creator_request_id(
        &self,
        token: &str,
    ) -> Result<Option<BrokerRecord>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM brokers WHERE creator_request_id = $1");
        let row: Option<BrokerRow> = with_pool!(self, pool => {
            sqlx::query_as(&sql).bind(token).fetch_optional(pool).await?
        });
        row.map(TryInto::try_into).transpose()
    }

    /// Brokers ordered by id, strictly after `after` when given (keyset paging).
    pub async fn broker_list(
        &self,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<BrokerRecord>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM brokers WHERE id > $1 ORDER BY id LIMIT $2");
        let rows: Vec<BrokerRow> = with_pool!(self, pool => {
            sqlx::query_as(&sql).bind(after.unwrap_or("")).bind(limit).fetch_all(pool).await?
        });
        rows.into_iter().map(TryInto::try_into).collect()
    }

    /// ListBrokers' page: brokers' summaries ordered by id, strictly after `after` when
    /// given (keyset paging). Reads only the columns a summary shows.
    pub async fn broker_list_summaries(
        &self,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<BrokerSummaryRecord>, StoreError> {
        let rows: Vec<SummaryRow> = match self {
            Store::Postgres(_, fast, _, batches) => {
                let wanted = (after.unwrap_or("").to_owned(), limit);
                return match batches.list.read(wanted.clone()).await {
                    Batched::Answer(page) => page,
                    Batched::RunAlone => list_page_postgres(fast.clone(), vec![wanted])
                        .await?
                        .pop()
                        .unwrap_or(Ok(Vec::new())),
                };
            }
            Store::Sqlite(pool) => {
                sqlx::query_as(LIST_SUMMARIES_SQL)
                    .bind(after.unwrap_or(""))
                    .bind(limit)
                    .fetch_all(pool)
                    .await?
            }
        };
        rows.into_iter().map(summary_from_row).collect()
    }

    /// Each broker's id, `version` and `generation`, ordered by id, strictly after `after`
    /// when given: what a reconciler pass needs to tell which brokers changed, without
    /// reading (and decoding) every row.
    pub async fn broker_list_versions(
        &self,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<(BrokerId, i64, i64)>, StoreError> {
        let sql = "SELECT id, version, generation FROM brokers WHERE id > $1 ORDER BY id LIMIT $2";
        let rows: Vec<(String, i64, i64)> = with_pool!(self, pool => {
            sqlx::query_as(sql).bind(after.unwrap_or("")).bind(limit).fetch_all(pool).await?
        });
        Ok(rows
            .into_iter()
            .map(|(id, version, generation)| (BrokerId::from_db(id), version, generation))
            .collect())
    }

    /// Writes the mutable spec of the broker snapshot `current` if nobody wrote the row
    /// since it was read (else [`StoreError::VersionConflict`]). `bump_generation` when
    /// the change must reach the nodes.
    pub async fn broker_update_spec(
        &self,
        current: &BrokerRecord,
        spec: &BrokerSpecUpdate,
        bump_generation: bool,
    ) -> Result<BrokerRecord, StoreError> {
        let sql = format!(
            "UPDATE brokers SET state = $3, engine_version = $4, host_instance_type = $5, \
             auto_minor_version_upgrade = $6, maintenance_day = $7, maintenance_time = $8, \
             maintenance_time_zone = $9, logs_general = $10, logs_audit = $11, \
             security_groups = $12, configuration_id = $13, configuration_revision = $14, \
             configuration_history = $15, pending_engine_version = $16, \
             pending_host_instance_type = $17, pending_configuration_id = $18, \
             pending_configuration_revision = $19, \
             generation = generation + $20, \
             reboot_generation = CASE WHEN $21 THEN generation + $20 ELSE reboot_generation END, \
             version = version + 1, updated_at = $22 \
             WHERE id = $1 AND version = $2 RETURNING {COLUMNS}"
        );
        let split = |c: &Option<(ConfigurationId, i64)>| match c {
            Some((id, rev)) => (Some(id.as_str().to_owned()), Some(*rev)),
            None => (None, None),
        };
        let (config_id, config_rev) = split(&spec.configuration);
        let (pending_id, pending_rev) = split(&spec.pending_configuration);
        let row: Option<BrokerRow> = with_pool!(self, pool => {
            sqlx::query_as(&sql)
                .bind(current.id.as_str())
                .bind(current.version)
                .bind(spec.state.as_str())
                .bind(&spec.engine_version)
                .bind(&spec.host_instance_type)
                .bind(spec.auto_minor_version_upgrade)
                .bind(spec.maintenance_day.as_str())
                .bind(&spec.maintenance_time)
                .bind(&spec.maintenance_time_zone)
                .bind(spec.logs_general)
                .bind(spec.logs_audit)
                .bind(json_list(&spec.security_groups))
                .bind(&config_id)
                .bind(config_rev)
                .bind(history_to_text(&spec.configuration_history))
                .bind(&spec.pending_engine_version)
                .bind(&spec.pending_host_instance_type)
                .bind(&pending_id)
                .bind(pending_rev)
                .bind(i64::from(bump_generation))
                .bind(spec.request_reboot)
                .bind(Utc::now())
                .fetch_optional(pool)
                .await?
        });
        match row {
            Some(row) => row.try_into(),
            // Tell "gone" from "changed" so the caller retries only the latter.
            None => match self.broker_get(&current.id).await {
                Ok(_) => Err(StoreError::VersionConflict),
                Err(e) => Err(e),
            },
        }
    }

    /// For reconcilers: moves a broker to `to` if it is in one of `from`; bumps the
    /// version so an API read-modify-write that raced with it retries. Returns whether
    /// the state changed.
    pub async fn broker_set_state(
        &self,
        id: &BrokerId,
        from: &[BrokerState],
        to: BrokerState,
    ) -> Result<bool, StoreError> {
        let mut changed = false;
        for state in from {
            let done = with_pool!(self, pool => {
                sqlx::query(
                    "UPDATE brokers SET state = $2, version = version + 1, updated_at = $4 \
                     WHERE id = $1 AND state = $3",
                )
                .bind(id.as_str())
                .bind(to.as_str())
                .bind(state.as_str())
                .bind(Utc::now())
                .execute(pool)
                .await?
                .rows_affected()
            });
            if done > 0 {
                changed = true;
                break;
            }
        }
        Ok(changed)
    }

    /// For the reconciler that deletes brokers: removes the row, its users (cascade)
    /// and its tags once every node is gone. Removing a missing broker is success.
    pub async fn broker_remove(&self, id: &BrokerId) -> Result<(), StoreError> {
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let arn: Option<String> = sqlx::query_scalar("DELETE FROM brokers WHERE id = $1 RETURNING arn")
                .bind(id.as_str())
                .fetch_optional(&mut *tx)
                .await?;
            if let Some(arn) = arn {
                sqlx::query("DELETE FROM tags WHERE resource_arn = $1").bind(arn).execute(&mut *tx).await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// How many brokers are in each state (states with none are omitted).
    pub async fn broker_count_by_state(&self) -> Result<Vec<BrokerStateCount>, StoreError> {
        let rows: Vec<(String, i64)> = with_pool!(self, pool => {
            sqlx::query_as("SELECT state, COUNT(*) FROM brokers GROUP BY state ORDER BY state")
                .fetch_all(pool)
                .await?
        });
        rows.into_iter()
            .map(|(state, count)| {
                Ok(BrokerStateCount {
                    state: enum_col(BrokerState::parse, "state", &state)?,
                    count,
                })
            })
            .collect()
    }

    /// Whether any broker runs or is about to run configuration `id`.
    pub async fn broker_uses_configuration(
        &self,
        id: &ConfigurationId,
    ) -> Result<bool, StoreError> {
        let n: i64 = with_pool!(self, pool => {
            sqlx::query_scalar(
                "SELECT COUNT(*) FROM brokers WHERE configuration_id = $1 OR pending_configuration_id = $1",
            )
            .bind(id.as_str())
            .fetch_one(pool)
            .await?
        });
        Ok(n > 0)
    }
}
