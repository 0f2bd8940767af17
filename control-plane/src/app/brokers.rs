//! CreateBroker, DescribeBroker, ListBrokers, UpdateBroker, RebootBroker, DeleteBroker.

use std::collections::BTreeMap;

use chrono::{SubsecRound as _, Utc};

use super::{arn, paging, password, validate, AppState, UPDATE_ATTEMPTS};
use crate::api::{
    ConfigurationRef, CreateBrokerRequest, PageQuery, UpdateBrokerRequest, WeeklyStartTime,
};
use crate::catalog;
use crate::config::ServeConfig;
use crate::error::ApiError;
use crate::model::{
    AuthenticationStrategy, BrokerState, DataReplicationMode, DayOfWeek, EngineType, StorageType,
};
use crate::store::{
    BrokerId, BrokerRecord, BrokerSpecUpdate, BrokerSummaryRecord, ConfigurationId, Constraint,
    DescribedLeadership, DescribedNode, NewBroker, NewUser, ObservedState, StoreError, UserRecord,
};

/// Default page size of ListBrokers (Amazon MQ's).
const LIST_DEFAULT: i64 = 20;

/// A node's public face in DescribeBroker.
#[derive(Debug, Clone, PartialEq)]
pub struct BrokerInstanceView {
    pub console_url: Option<String>,
    pub endpoints: Vec<String>,
    pub ip_address: Option<String>,
    /// Mooring extensions (AWS SDKs ignore unknown members): the node, its zone and, for
    /// replicated brokers, its role under the current epoch.
    pub node_id: String,
    pub availability_zone: String,
    pub role: Option<&'static str>,
}

/// Everything DescribeBroker shows.
#[derive(Debug, Clone)]
pub struct BrokerView {
    pub broker: BrokerRecord,
    pub users: Vec<UserRecord>,
    pub tags: BTreeMap<String, String>,
    pub instances: Vec<BrokerInstanceView>,
    /// `actionsRequired`: why the broker is CRITICAL_ACTION_REQUIRED, as (code, info).
    pub actions_required: Vec<(String, String)>,
    /// Disruptive changes waiting for the maintenance window or a reboot.
    pub pending_actions: Vec<super::maintenance::PendingActionView>,
}

pub(super) fn broker_not_found(id: &str) -> ApiError {
    ApiError::not_found(
        "broker-id",
        format!("Can't find requested broker [{id}]. Make sure your broker exists."),
    )
}

/// Parses a broker id from a path; ids not of our shape cannot exist.
pub(super) fn parse_broker_id(id: &str) -> Result<BrokerId, ApiError> {
    BrokerId::parse(id).ok_or_else(|| broker_not_found(id))
}

pub(super) async fn get_broker(state: &AppState, id: &str) -> Result<BrokerRecord, ApiError> {
    let id = parse_broker_id(id)?;
    match state.store.broker_get(&id).await {
        Ok(b) => Ok(b),
        Err(StoreError::NotFound(_)) => Err(broker_not_found(id.as_str())),
        Err(e) => Err(e.into()),
    }
}

fn required<T>(value: Option<T>, member: &str) -> Result<T, ApiError> {
    value.ok_or_else(|| {
        ApiError::bad_request(
            member,
            format!("The request is missing the required member {member}."),
        )
    })
}

fn check_engine_type(engine: EngineType, member: &str) -> Result<(), ApiError> {
    match engine {
        EngineType::Rabbitmq => Ok(()),
        EngineType::Activemq => Err(ApiError::bad_request(
            member,
            "Engine type ACTIVEMQ is not supported: Mooring serves RABBITMQ brokers only.",
        )),
    }
}

fn check_authentication(
    strategy: Option<AuthenticationStrategy>,
    ldap: bool,
) -> Result<(), ApiError> {
    if ldap {
        return Err(ApiError::bad_request(
            "ldapServerMetadata",
            "LDAP authentication is not supported.",
        ));
    }
    match strategy {
        None | Some(AuthenticationStrategy::Simple) => Ok(()),
        Some(other) => Err(ApiError::bad_request(
            "authenticationStrategy",
            format!("Authentication strategy {other} is not supported; use SIMPLE."),
        )),
    }
}

fn check_data_replication(mode: Option<DataReplicationMode>) -> Result<(), ApiError> {
    match mode {
        None | Some(DataReplicationMode::None) => Ok(()),
        Some(DataReplicationMode::Crdr) => Err(ApiError::bad_request(
            "dataReplicationMode",
            "Cross-region data replication is not supported.",
        )),
    }
}

/// Validates a maintenance window and fills Amazon MQ's defaults (zone UTC).
fn maintenance_window(w: &WeeklyStartTime) -> Result<(DayOfWeek, String, String), ApiError> {
    let day = required(w.day_of_week, "maintenanceWindowStartTime")?;
    let time = required(w.time_of_day.clone(), "maintenanceWindowStartTime")?;
    let zone = w.time_zone.clone().unwrap_or_else(|| "UTC".to_owned());
    // The maintenance reconciler reads the window with the same parser, so whatever is
    // accepted here can be scheduled (IANA zones and UTC offsets, as Amazon MQ documents).
    crate::plan::window::MaintenanceWindow::new(day, &time, &zone)
        .map_err(|e| ApiError::bad_request("maintenanceWindowStartTime", format!("{e}.")))?;
    Ok((day, time, zone))
}

/// Resolves a configuration reference (revision defaults to the latest) for `engine`.
async fn resolve_configuration(
    state: &AppState,
    reference: &ConfigurationRef,
    engine: EngineType,
) -> Result<(ConfigurationId, i64), ApiError> {
    let raw = required(reference.id.clone(), "configuration")?;
    let not_found = || {
        ApiError::not_found(
            "configuration",
            format!("Can't find requested configuration [{raw}]."),
        )
    };
    let id = ConfigurationId::parse(&raw).ok_or_else(not_found)?;
    let config = match state.store.configuration_get(&id).await {
        Ok(c) => c,
        Err(StoreError::NotFound(_)) => return Err(not_found()),
        Err(e) => return Err(e.into()),
    };
    if config.engine_type != engine {
        return Err(ApiError::bad_request(
            "configuration",
            "The configuration is for another engine type.",
        ));
    }
    let revision = reference.revision.unwrap_or(config.latest_revision);
    if !(1..=config.latest_revision).contains(&revision) {
        return Err(ApiError::bad_request(
            "configuration",
            format!(
                "Configuration {raw} has no revision {revision} (latest is {}).",
                config.latest_revision
            ),
        ));
    }
    Ok((id, revision))
}

fn version_key(v: &str) -> Vec<u32> {
    v.split('.').map(|p| p.parse().unwrap_or(0)).collect()
}

/// Every CreateBroker rule that needs no I/O; the broker to insert (without its
/// configuration, resolved against the store by the caller) and its first users.
fn checked_new_broker(
    req: &CreateBrokerRequest,
    config: &ServeConfig,
    catalog: &catalog::Catalog,
) -> Result<(NewBroker, Vec<NewUser>), ApiError> {
    let name = required(req.broker_name.clone(), "brokerName")?;
    validate::broker_name(&name)?;
    let engine_type = required(req.engine_type, "engineType")?;
    check_engine_type(engine_type, "engineType")?;
    // SINGLE_INSTANCE (1 node), ACTIVE_STANDBY_MULTI_AZ (2) and CLUSTER_MULTI_AZ (3) are all
    // served; the instance type check below refuses mq.t3.micro for the replicated modes,
    // as Amazon MQ does.
    let deployment_mode = required(req.deployment_mode, "deploymentMode")?;
    let host_instance_type = required(req.host_instance_type.clone(), "hostInstanceType")?;
    let instance = catalog::instance_type(&host_instance_type).ok_or_else(|| {
        ApiError::bad_request(
            "hostInstanceType",
            format!("Host instance type {host_instance_type} is not supported."),
        )
    })?;
    if !instance.deployment_modes.contains(&deployment_mode) {
        return Err(ApiError::bad_request(
            "hostInstanceType",
            format!("Host instance type {host_instance_type} does not support deployment mode {deployment_mode}."),
        ));
    }
    let publicly_accessible = required(req.publicly_accessible, "publiclyAccessible")?;
    let engine_version = match &req.engine_version {
        Some(v) => catalog.engine_version(engine_type, v).ok_or_else(|| {
            ApiError::bad_request(
                "engineVersion",
                format!("Engine version {v} is not supported."),
            )
        })?,
        None => catalog.default_engine_version(engine_type).ok_or_else(|| {
            ApiError::internal(anyhow::anyhow!("the catalog has no {engine_type} version"))
        })?,
    };
    check_authentication(
        req.authentication_strategy,
        req.ldap_server_metadata.is_some(),
    )?;
    check_data_replication(req.data_replication_mode)?;
    if req.data_replication_primary_broker_arn.is_some() {
        return Err(ApiError::bad_request(
            "dataReplicationPrimaryBrokerArn",
            "Data replication is not supported.",
        ));
    }
    let storage_type = req.storage_type.unwrap_or(StorageType::Ebs);
    if storage_type == StorageType::Efs {
        return Err(ApiError::bad_request(
            "storageType",
            "EFS storage is not supported for RabbitMQ brokers.",
        ));
    }
    let (maintenance_day, maintenance_time, maintenance_time_zone) =
        match &req.maintenance_window_start_time {
            Some(w) => maintenance_window(w)?,
            None => (DayOfWeek::Sunday, "00:00".to_owned(), "UTC".to_owned()),
        };
    let tags = req.tags.clone().unwrap_or_default();
    validate::tags(&tags)?;
    let users = new_users(req.users.as_deref().unwrap_or_default())?;
    let id = BrokerId::generate();
    let new = NewBroker {
        arn: arn::broker_arn(config, &name, &id),
        id,
        name,
        engine_type,
        engine_version: engine_version.version.to_owned(),
        host_instance_type,
        deployment_mode,
        authentication_strategy: AuthenticationStrategy::Simple,
        storage_type,
        publicly_accessible,
        auto_minor_version_upgrade: req.auto_minor_version_upgrade.unwrap_or(true),
        maintenance_day,
        maintenance_time,
        maintenance_time_zone,
        logs_general: req.logs.as_ref().and_then(|l| l.general).unwrap_or(false),
        logs_audit: req.logs.as_ref().and_then(|l| l.audit).unwrap_or(false),
        security_groups: req.security_groups.clone().unwrap_or_default(),
        subnet_ids: req.subnet_ids.clone().unwrap_or_default(),
        configuration: None,
        creator_request_id: req.creator_request_id.clone(),
        tags: tags.into_iter().collect(),
        now: Utc::now().trunc_subsecs(3),
    };
    Ok((new, users))
}

pub async fn create_broker(
    state: &AppState,
    req: CreateBrokerRequest,
) -> Result<BrokerRecord, ApiError> {
    let (mut new, users) = checked_new_broker(&req, &state.config, &state.catalog)?;
    let name = new.name.clone();
    new.configuration = match &req.configuration {
        Some(reference) => Some(resolve_configuration(state, reference, new.engine_type).await?),
        None => None,
    };

    if let Some(token) = &req.creator_request_id {
        if let Some(existing) = state.store.broker_get_by_creator_request_id(token).await? {
            return idempotent_replay(existing, &name);
        }
    }

    match state.store.broker_insert(new, users).await {
        Ok(broker) => {
            tracing::info!(broker_id = %broker.id, name = %broker.name, "broker created");
            state.wake_reconcilers();
            Ok(broker)
        }
        Err(StoreError::Constraint(Constraint::BrokerName)) => Err(ApiError::conflict(
            "brokerName",
            format!("Broker name {name} is already in use."),
        )),
        // A concurrent request with the same creatorRequestId won the insert.
        Err(StoreError::Constraint(Constraint::BrokerCreatorRequestId)) => {
            let token = req.creator_request_id.as_deref().unwrap_or_default();
            match state.store.broker_get_by_creator_request_id(token).await? {
                Some(existing) => idempotent_replay(existing, &name),
                None => Err(ApiError::conflict(
                    "creatorRequestId",
                    "The request was retried concurrently; retry.",
                )),
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// A retried CreateBroker answers with the broker the first attempt made; reusing the
/// token for a different broker is a conflict.
fn idempotent_replay(existing: BrokerRecord, name: &str) -> Result<BrokerRecord, ApiError> {
    if existing.name == name {
        Ok(existing)
    } else {
        Err(ApiError::conflict(
            "creatorRequestId",
            "The creatorRequestId was already used to create a different broker.",
        ))
    }
}

/// CreateBroker's users: for RabbitMQ exactly one, the administrative user.
fn new_users(users: &[crate::api::User]) -> Result<Vec<NewUser>, ApiError> {
    if users.len() != 1 {
        return Err(ApiError::bad_request(
            "users",
            "RabbitMQ brokers are created with exactly one user; add more with CreateUser.",
        ));
    }
    users
        .iter()
        .map(|u| {
            let username = required(u.username.clone(), "username")?;
            validate::username(&username)?;
            let pw = required(u.password.clone(), "password")?;
            validate::password(&pw)?;
            let groups = u.groups.clone().unwrap_or_default();
            super::users::check_groups(&groups)?;
            super::users::check_replication_user(u.replication_user)?;
            Ok(NewUser {
                username,
                password_hash: password::hash(&pw),
                console_access: u.console_access.unwrap_or(false),
                groups,
                replication_user: false,
            })
        })
        .collect()
}

pub async fn describe_broker(state: &AppState, id: &str) -> Result<BrokerView, ApiError> {
    let broker_id = parse_broker_id(id)?;
    // One statement: the broker, users, tags, nodes, scheduled actions and leadership.
    let detail = match state.store.broker_describe(&broker_id).await {
        Ok(d) => d,
        Err(StoreError::NotFound(_)) => return Err(broker_not_found(broker_id.as_str())),
        Err(e) => return Err(e.into()),
    };
    let pending_actions =
        super::maintenance::broker_pending_actions(state, &detail.broker, &detail.scheduled).await;
    let leadership = detail.leadership.as_ref();
    let actions_required = actions_required(&detail.broker, leadership);
    let instances = broker_instances(detail.nodes, leadership);
    Ok(BrokerView {
        broker: detail.broker,
        users: detail.users,
        tags: detail.tags,
        instances,
        actions_required,
        pending_actions,
    })
}

/// The broker's nodes as DescribeBroker shows them: every node that has been started
/// (its ports are fixed at provisioning), none while pending or being removed. For a
/// replicated broker the leader of the current epoch comes first, with its role, so clients
/// taking the first endpoint reach it.
fn broker_instances(
    nodes: Vec<DescribedNode>,
    leadership: Option<&DescribedLeadership>,
) -> Vec<BrokerInstanceView> {
    let mut instances: Vec<BrokerInstanceView> = nodes
        .into_iter()
        .filter(|n| !matches!(n.observed, ObservedState::Pending | ObservedState::Deleting))
        .map(|n| BrokerInstanceView {
            console_url: Some(n.console_url()),
            endpoints: vec![n.amqp_endpoint()],
            ip_address: Some(n.host.clone()),
            role: leadership.map(|l| {
                if l.leader == n.id {
                    "LEADER"
                } else {
                    "FOLLOWER"
                }
            }),
            node_id: n.id.0,
            availability_zone: n.zone,
        })
        .collect();
    // Stable: followers keep their ordinal order.
    instances.sort_by_key(|i| i.role != Some("LEADER"));
    instances
}

/// Amazon MQ's `actionsRequired` for a broker in CRITICAL_ACTION_REQUIRED: the reason the
/// failover loop recorded.
fn actions_required(
    broker: &BrokerRecord,
    leadership: Option<&DescribedLeadership>,
) -> Vec<(String, String)> {
    if broker.state != BrokerState::CriticalActionRequired {
        return Vec::new();
    }
    leadership
        .and_then(|l| l.action_required.as_deref())
        .and_then(crate::plan::failover::ActionRequired::from_code)
        .map(|a| vec![(a.code().to_owned(), a.info().to_owned())])
        .unwrap_or_default()
}

pub async fn list_brokers(
    state: &AppState,
    q: &PageQuery,
) -> Result<(Vec<BrokerSummaryRecord>, Option<String>), ApiError> {
    let limit = paging::max_results(q.max_results.as_deref(), LIST_DEFAULT)?;
    let after = paging::decode_token(q.next_token.as_deref())?;
    let rows = state
        .store
        .broker_list_summaries(after.as_deref(), limit + 1)
        .await?;
    Ok(paging::page(rows, limit, |b| b.id.to_string()))
}

/// Runs `change` on a fresh snapshot until its write wins the optimistic check;
/// `change` returns the new spec and whether the nodes must see it (generation bump),
/// or `None` when there is nothing to write.
async fn update_with_retry<F>(
    state: &AppState,
    id: &str,
    mut change: F,
) -> Result<BrokerRecord, ApiError>
where
    F: FnMut(&BrokerRecord) -> Result<Option<(BrokerSpecUpdate, bool)>, ApiError>,
{
    for _ in 0..UPDATE_ATTEMPTS {
        let current = get_broker(state, id).await?;
        let Some((spec, bump)) = change(&current)? else {
            return Ok(current);
        };
        match state.store.broker_update_spec(&current, &spec, bump).await {
            Ok(updated) => return Ok(updated),
            Err(StoreError::VersionConflict) => continue,
            Err(StoreError::NotFound(_)) => return Err(broker_not_found(id)),
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::conflict(
        "broker-id",
        "The broker is being changed concurrently; retry the request.",
    ))
}

fn refuse_if_deleting(b: &BrokerRecord) -> Result<(), ApiError> {
    if b.state == BrokerState::DeletionInProgress {
        Err(ApiError::conflict(
            "broker-id",
            format!("Broker {} is being deleted.", b.id),
        ))
    } else {
        Ok(())
    }
}

pub async fn update_broker(
    state: &AppState,
    id: &str,
    req: UpdateBrokerRequest,
) -> Result<BrokerRecord, ApiError> {
    check_authentication(
        req.authentication_strategy,
        req.ldap_server_metadata.is_some(),
    )?;
    check_data_replication(req.data_replication_mode)?;
    if let Some(v) = &req.engine_version {
        state
            .catalog
            .engine_version(EngineType::Rabbitmq, v)
            .ok_or_else(|| {
                ApiError::bad_request(
                    "engineVersion",
                    format!("Engine version {v} is not supported."),
                )
            })?;
    }
    if let Some(t) = &req.host_instance_type {
        catalog::instance_type(t).ok_or_else(|| {
            ApiError::bad_request(
                "hostInstanceType",
                format!("Host instance type {t} is not supported."),
            )
        })?;
    }
    let window = req
        .maintenance_window_start_time
        .as_ref()
        .map(maintenance_window)
        .transpose()?;
    // Resolved once, outside the retry loop: configurations are immutable per revision.
    let configuration = match &req.configuration {
        Some(reference) => {
            Some(resolve_configuration(state, reference, EngineType::Rabbitmq).await?)
        }
        None => None,
    };

    let updated = update_with_retry(state, id, |current| {
        refuse_if_deleting(current)?;
        let mut spec = current.spec();
        if let Some(v) = &req.engine_version {
            if version_key(v) < version_key(&current.engine_version) {
                return Err(ApiError::bad_request(
                    "engineVersion",
                    format!(
                        "Downgrading from {} to {v} is not supported.",
                        current.engine_version
                    ),
                ));
            }
            spec.pending_engine_version = (*v != current.engine_version).then(|| v.clone());
        }
        if let Some(t) = &req.host_instance_type {
            if t == "mq.t3.micro" && current.host_instance_type != "mq.t3.micro" {
                return Err(ApiError::bad_request(
                    "hostInstanceType",
                    "A broker cannot be moved to mq.t3.micro from a larger instance type.",
                ));
            }
            spec.pending_host_instance_type = (*t != current.host_instance_type).then(|| t.clone());
        }
        if let Some(c) = &configuration {
            spec.pending_configuration =
                (current.configuration.as_ref() != Some(c)).then(|| c.clone());
        }
        if let Some(v) = req.auto_minor_version_upgrade {
            spec.auto_minor_version_upgrade = v;
        }
        if let Some((day, time, zone)) = &window {
            spec.maintenance_day = *day;
            spec.maintenance_time = time.clone();
            spec.maintenance_time_zone = zone.clone();
        }
        if let Some(logs) = &req.logs {
            spec.logs_general = logs.general.unwrap_or(spec.logs_general);
            spec.logs_audit = logs.audit.unwrap_or(spec.logs_audit);
        }
        if let Some(groups) = &req.security_groups {
            spec.security_groups = groups.clone();
        }
        // Pending changes wait for a reboot: nothing new reaches the nodes yet.
        Ok((spec != current.spec()).then_some((spec, false)))
    })
    .await?;
    tracing::info!(broker_id = %updated.id, "broker updated");
    // The maintenance reconciler schedules new pending changes for the window.
    state.wake_reconcilers();
    Ok(updated)
}

pub async fn reboot_broker(state: &AppState, id: &str) -> Result<BrokerRecord, ApiError> {
    let rebooted = update_with_retry(state, id, |current| {
        if current.state != BrokerState::Running {
            return Err(ApiError::bad_request(
                "broker-id",
                format!(
                    "Broker {} is {}; only RUNNING brokers can be rebooted.",
                    current.id, current.state
                ),
            ));
        }
        // The reboot applies what UpdateBroker left pending: the desired spec changes
        // now, and the nodes restart onto it.
        let mut spec = current.spec();
        spec.state = BrokerState::RebootInProgress;
        if let Some(v) = spec.pending_engine_version.take() {
            spec.engine_version = v;
        }
        if let Some(t) = spec.pending_host_instance_type.take() {
            spec.host_instance_type = t;
        }
        if let Some(c) = spec.pending_configuration.take() {
            if let Some(old) = spec.configuration.replace(c) {
                spec.configuration_history.push(old);
            }
        }
        spec.request_reboot = true;
        Ok(Some((spec, true)))
    })
    .await?;
    tracing::info!(broker_id = %rebooted.id, generation = rebooted.generation, "broker reboot requested");
    state.wake_reconcilers();
    Ok(rebooted)
}

pub async fn delete_broker(state: &AppState, id: &str) -> Result<BrokerRecord, ApiError> {
    let deleted = update_with_retry(state, id, |current| {
        if current.state == BrokerState::DeletionInProgress {
            return Ok(None);
        }
        let mut spec = current.spec();
        spec.state = BrokerState::DeletionInProgress;
        Ok(Some((spec, true)))
    })
    .await?;
    tracing::info!(broker_id = %deleted.id, "broker deletion requested");
    state.wake_reconcilers();
    Ok(deleted)
}
