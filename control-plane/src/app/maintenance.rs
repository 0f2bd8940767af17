//! Maintenance rules shared by the API and the maintenance reconciler: which pending
//! actions a broker has, when each is due, and the fleet-wide pause switch.
//!
//! What is pending lives in the broker row (`pending_engine_version`,
//! `pending_host_instance_type`, `pending_configuration`, written by UpdateBroker or by the
//! automatic minor version upgrade); when it is due lives in `maintenance_actions`, written
//! by the reconciler. DescribeBroker shows the union: an action the reconciler has not
//! scheduled yet (it runs within a second) shows the time it will get.

use chrono::{DateTime, Utc};

use super::AppState;
use crate::error::ApiError;
use crate::plan::maintenance::auto_minor_upgrade;
use crate::plan::window::{schedule_at, MaintenanceWindow};
use crate::store::{ActionKind, ActionRecord, ActionSource, BrokerId, BrokerRecord};

/// A pending action as DescribeBroker shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingActionView {
    pub kind: ActionKind,
    pub target: String,
    pub source: ActionSource,
    /// `None` only if the broker's stored window cannot be read (a hand-edited row).
    pub scheduled_at: Option<DateTime<Utc>>,
}

/// The broker's window, as stored.
pub fn broker_window(b: &BrokerRecord) -> Result<MaintenanceWindow, String> {
    MaintenanceWindow::new(
        b.maintenance_day,
        &b.maintenance_time,
        &b.maintenance_time_zone,
    )
    .map_err(|e| format!("broker {}: stored maintenance window: {e}", b.id))
}

/// The window as one string, recorded with each schedule: a changed window reschedules.
pub fn window_spec(b: &BrokerRecord) -> String {
    format!(
        "{} {} {}",
        b.maintenance_day, b.maintenance_time, b.maintenance_time_zone
    )
}

/// The disruptive changes the broker row holds, as `(kind, target)`.
pub fn pending_in_row(b: &BrokerRecord) -> Vec<(ActionKind, String)> {
    let mut out = Vec::new();
    if let Some(v) = &b.pending_engine_version {
        out.push((ActionKind::EngineVersion, v.clone()));
    }
    if let Some(t) = &b.pending_host_instance_type {
        out.push((ActionKind::HostInstanceType, t.clone()));
    }
    if let Some((id, rev)) = &b.pending_configuration {
        out.push((ActionKind::Configuration, format!("{id}:{rev}")));
    }
    out
}

/// The agent version a broker's nodes should be restarted onto, if any: the version of the
/// binary a node started now would run (`current`, asked of the binary), when some node
/// reported another one at its latest registration. Derived, not stored: it is applied by
/// restarting every node (a maintenance run or RebootBroker), and it is gone once every node
/// reports `current`. Any difference counts, so a binary rolled back is rolled out too.
pub fn agent_version_pending(reported: &[String], current: Option<&str>) -> Option<String> {
    let current = current?;
    reported
        .iter()
        .any(|v| v != current)
        .then(|| current.to_owned())
}

/// Who asked for a pending change not yet scheduled: the automatic minor version upgrade
/// when it is exactly what that rule picks (also after a crash between setting it and
/// scheduling it), else whoever asked for the same target before, else the user.
pub fn action_source(
    b: &BrokerRecord,
    kind: ActionKind,
    target: &str,
    catalog: &[&str],
    current: Option<&ActionRecord>,
) -> ActionSource {
    if kind == ActionKind::AgentVersion {
        return ActionSource::Agent;
    }
    let auto = kind == ActionKind::EngineVersion
        && b.auto_minor_version_upgrade
        && auto_minor_upgrade(catalog.iter().copied(), &b.engine_version) == Some(target);
    match current {
        _ if auto => ActionSource::AutoMinorVersionUpgrade,
        Some(r) if r.target == target => r.source,
        _ => ActionSource::User,
    }
}

/// The broker's pending actions with their times: the recorded schedule where it matches
/// the row (same target, same window), else the source and time the reconciler will
/// record (`catalog`: the engine's versions, for the automatic upgrade rule).
pub fn pending_actions(
    b: &BrokerRecord,
    scheduled: &[ActionRecord],
    catalog: &[&str],
    now: DateTime<Utc>,
) -> Vec<PendingActionView> {
    let window = broker_window(b);
    let spec = window_spec(b);
    let mut views: Vec<PendingActionView> = pending_in_row(b)
        .into_iter()
        .map(|(kind, target)| {
            let recorded = scheduled
                .iter()
                .find(|a| a.kind == kind && a.target == target && a.window_spec == spec);
            match recorded {
                Some(a) => PendingActionView {
                    kind,
                    target,
                    source: a.source,
                    scheduled_at: Some(a.scheduled_at),
                },
                None => PendingActionView {
                    source: action_source(
                        b,
                        kind,
                        &target,
                        catalog,
                        scheduled.iter().find(|a| a.kind == kind),
                    ),
                    kind,
                    target,
                    scheduled_at: window.as_ref().ok().map(|w| schedule_at(w, now)),
                },
            }
        })
        .collect();
    // An agent version has no column: it is pending while the reconciler's schedule row says
    // so (written within a pass of a node reporting another version than the installed
    // binary's, deleted once every node reports it).
    views.extend(
        scheduled
            .iter()
            .filter(|a| a.kind == ActionKind::AgentVersion)
            .map(|a| PendingActionView {
                kind: a.kind,
                target: a.target.clone(),
                source: a.source,
                scheduled_at: Some(a.scheduled_at),
            }),
    );
    views
}

/// One broker's pending actions for DescribeBroker.
pub async fn broker_pending_actions(
    state: &AppState,
    broker: &BrokerRecord,
    scheduled: &[ActionRecord],
) -> Vec<PendingActionView> {
    let versions = state.catalog.engine_versions(broker.engine_type);
    let catalog: Vec<&str> = versions.iter().map(|v| v.version).collect();
    pending_actions(broker, scheduled, &catalog, state.clock.now())
}

/// The fleet's maintenance switch and load, for `GET`/`PUT /v1/maintenance`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaintenanceStatus {
    /// The operator's switch (`PUT /v1/maintenance`).
    pub paused: bool,
    /// `--maintenance-paused`: paused from the command line, whatever the switch says.
    pub paused_by_configuration: bool,
    pub max_concurrent: u32,
    /// Brokers whose maintenance is in progress.
    pub in_progress: Vec<BrokerId>,
}

pub async fn status(state: &AppState) -> Result<MaintenanceStatus, ApiError> {
    let paused = state.store.maintenance_paused().await?;
    let runs = state.store.maintenance_run_list().await?;
    Ok(MaintenanceStatus {
        paused,
        paused_by_configuration: state.config.maintenance_paused,
        max_concurrent: state.config.maintenance_max_concurrent,
        in_progress: runs.into_iter().map(|r| r.broker_id).collect(),
    })
}

/// Pauses or resumes window-driven maintenance for the whole fleet. A run already started
/// stops between steps; RebootBroker still applies pending actions at once.
pub async fn set_paused(state: &AppState, paused: bool) -> Result<MaintenanceStatus, ApiError> {
    state
        .store
        .maintenance_set_paused(paused, Utc::now())
        .await?;
    tracing::info!(paused, "maintenance switch set");
    state.wake_reconcilers();
    status(state).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::*;
    use crate::store::ConfigurationId;
    use chrono::TimeZone;

    fn broker() -> BrokerRecord {
        let t = Utc.with_ymd_and_hms(2026, 11, 2, 0, 0, 0).unwrap();
        BrokerRecord {
            id: BrokerId::from_db("b-00000000-0000-0000-0000-000000000001".into()),
            name: "b".into(),
            arn: "arn".into(),
            state: BrokerState::Running,
            engine_type: EngineType::Rabbitmq,
            engine_version: "3.13".into(),
            host_instance_type: "mq.m5.large".into(),
            deployment_mode: DeploymentMode::SingleInstance,
            authentication_strategy: AuthenticationStrategy::Simple,
            storage_type: StorageType::Ebs,
            publicly_accessible: false,
            auto_minor_version_upgrade: true,
            maintenance_day: DayOfWeek::Monday,
            maintenance_time: "02:00".into(),
            maintenance_time_zone: "UTC".into(),
            logs_general: false,
            logs_audit: false,
            security_groups: vec![],
            subnet_ids: vec![],
            configuration: None,
            configuration_history: vec![],
            pending_engine_version: None,
            pending_host_instance_type: None,
            pending_configuration: None,
            creator_request_id: None,
            generation: 1,
            reboot_generation: None,
            version: 1,
            created_at: t,
            updated_at: t,
        }
    }

    #[test]
    fn pending_actions_merge_row_and_schedule() {
        // Tuesday 2026-11-03 10:00 UTC: the next Monday 02:00 is 2026-11-09.
        let now = Utc.with_ymd_and_hms(2026, 11, 3, 10, 0, 0).unwrap();
        let next = Utc.with_ymd_and_hms(2026, 11, 9, 2, 0, 0).unwrap();
        let mut b = broker();
        assert!(pending_actions(&b, &[], &[], now).is_empty());

        b.pending_engine_version = Some("3.13.1".into());
        b.pending_configuration = Some((
            ConfigurationId::from_db("c-00000000-0000-0000-0000-000000000001".into()),
            2,
        ));
        let shown = pending_actions(&b, &[], &[], now);
        assert_eq!(shown.len(), 2);
        assert_eq!(shown[0].kind, ActionKind::EngineVersion);
        assert_eq!(
            shown[0].scheduled_at,
            Some(next),
            "unscheduled: the next window"
        );
        assert_eq!(shown[1].target, "c-00000000-0000-0000-0000-000000000001:2");
        assert_eq!(
            shown[0].source,
            ActionSource::User,
            "not what the rule picks"
        );
        let by_rule = pending_actions(&b, &[], &["3.13.1"], now);
        assert_eq!(
            by_rule[0].source,
            ActionSource::AutoMinorVersionUpgrade,
            "set by the upgrade rule, not scheduled yet: shown as the reconciler will record it"
        );

        let recorded = ActionRecord {
            broker_id: b.id.clone(),
            kind: ActionKind::EngineVersion,
            target: "3.13.1".into(),
            source: ActionSource::AutoMinorVersionUpgrade,
            scheduled_at: next - chrono::TimeDelta::weeks(1),
            window_spec: window_spec(&b),
            created_at: now,
        };
        let shown = pending_actions(&b, std::slice::from_ref(&recorded), &[], now);
        assert_eq!(
            shown[0].scheduled_at,
            Some(recorded.scheduled_at),
            "recorded time wins"
        );
        assert_eq!(shown[0].source, ActionSource::AutoMinorVersionUpgrade);

        // A moved window or another target makes the record stale.
        let mut moved = b.clone();
        moved.maintenance_day = DayOfWeek::Wednesday;
        let shown = pending_actions(&moved, std::slice::from_ref(&recorded), &[], now);
        assert_eq!(
            shown[0].scheduled_at,
            Some(Utc.with_ymd_and_hms(2026, 11, 4, 2, 0, 0).unwrap())
        );
        let mut other = b.clone();
        other.pending_engine_version = Some("3.13.2".into());
        let shown = pending_actions(&other, &[recorded], &[], now);
        assert_eq!(shown[0].source, ActionSource::User);
        assert_eq!(shown[0].scheduled_at, Some(next));
    }
}
