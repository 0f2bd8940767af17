//! The maintenance reconciler's decisions, without a database.

use super::*;
use crate::model::*;
use chrono::TimeZone;

fn t(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap()
}

/// A RUNNING single-instance broker on 3.13 with a Monday 02:00 UTC window.
fn broker() -> BrokerRecord {
    let at = t(2026, 11, 2, 0, 0);
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
        generation: 4,
        reboot_generation: None,
        version: 7,
        created_at: at,
        updated_at: at,
    }
}

fn row(b: &BrokerRecord, kind: ActionKind, target: &str, source: ActionSource) -> ActionRecord {
    ActionRecord {
        broker_id: b.id.clone(),
        kind,
        target: target.into(),
        source,
        scheduled_at: t(2026, 11, 9, 2, 0),
        window_spec: window_spec(b),
        created_at: t(2026, 11, 3, 10, 0),
    }
}

const CATALOG: &[&str] = &["3.13.2", "3.13.1", "3.13", "3.12.9", "3.12"];

#[test]
fn auto_upgrade_fills_follows_and_withdraws_only_its_own() {
    use ActionSource::*;
    struct Case {
        what: &'static str,
        flag: bool,
        current: &'static str,
        pending: Option<&'static str>,
        row: Option<(&'static str, ActionSource)>,
        want: Option<Option<&'static str>>,
    }
    let cases = [
        Case {
            what: "newest patch of the same minor",
            flag: true,
            current: "3.13",
            pending: None,
            row: None,
            want: Some(Some("3.13.2")),
        },
        Case {
            what: "3.12 stays on 3.12",
            flag: true,
            current: "3.12",
            pending: None,
            row: None,
            want: Some(Some("3.12.9")),
        },
        Case {
            what: "already newest",
            flag: true,
            current: "3.13.2",
            pending: None,
            row: None,
            want: None,
        },
        Case {
            what: "flag off",
            flag: false,
            current: "3.13",
            pending: None,
            row: None,
            want: None,
        },
        Case {
            what: "already pending",
            flag: true,
            current: "3.13",
            pending: Some("3.13.2"),
            row: Some(("3.13.2", AutoMinorVersionUpgrade)),
            want: None,
        },
        Case {
            what: "a newer patch replaces ours",
            flag: true,
            current: "3.13",
            pending: Some("3.13.1"),
            row: Some(("3.13.1", AutoMinorVersionUpgrade)),
            want: Some(Some("3.13.2")),
        },
        Case {
            what: "the user's choice is kept",
            flag: true,
            current: "3.12",
            pending: Some("3.13"),
            row: Some(("3.13", User)),
            want: None,
        },
        Case {
            what: "the user's choice, not yet scheduled",
            flag: true,
            current: "3.12",
            pending: Some("3.13"),
            row: None,
            want: None,
        },
        Case {
            what: "flag turned off withdraws ours",
            flag: false,
            current: "3.13",
            pending: Some("3.13.2"),
            row: Some(("3.13.2", AutoMinorVersionUpgrade)),
            want: Some(None),
        },
        Case {
            what: "flag turned off keeps the user's",
            flag: false,
            current: "3.13",
            pending: Some("3.13.2"),
            row: Some(("3.13.2", User)),
            want: None,
        },
    ];
    for c in cases {
        let mut b = broker();
        b.auto_minor_version_upgrade = c.flag;
        b.engine_version = c.current.into();
        b.pending_engine_version = c.pending.map(Into::into);
        let rows: Vec<ActionRecord> = c
            .row
            .iter()
            .map(|(target, source)| row(&b, ActionKind::EngineVersion, target, *source))
            .collect();
        let got = auto_upgrade_change(&b, CATALOG, &rows);
        assert_eq!(got, c.want.map(|w| w.map(String::from)), "{}", c.what);
    }
}

#[test]
fn schedules_follow_the_row_and_the_window() {
    // Tuesday: the next Monday 02:00 UTC is 2026-11-09.
    let now = t(2026, 11, 3, 10, 0);
    let next = t(2026, 11, 9, 2, 0);
    let mut b = broker();
    let (up, del) = schedule_changes(&b, CATALOG, &[], None, now).expect("valid window");
    assert!(
        up.is_empty() && del.is_empty(),
        "nothing pending, nothing scheduled"
    );

    b.pending_engine_version = Some("3.13.2".into());
    b.pending_host_instance_type = Some("mq.m5.xlarge".into());
    let (up, del) = schedule_changes(&b, CATALOG, &[], None, now).expect("valid window");
    assert!(del.is_empty());
    assert_eq!(up.len(), 2);
    assert_eq!(
        (up[0].kind, up[0].source, up[0].scheduled_at),
        (
            ActionKind::EngineVersion,
            ActionSource::AutoMinorVersionUpgrade,
            next
        )
    );
    assert_eq!(
        (up[1].kind, up[1].source),
        (ActionKind::HostInstanceType, ActionSource::User)
    );

    // Scheduled already: a second pass changes nothing (idempotent).
    let (again, del) = schedule_changes(&b, CATALOG, &up, None, now).expect("valid window");
    assert!(again.is_empty() && del.is_empty());

    // Found while the window is open: due at once.
    let open = t(2026, 11, 9, 2, 30);
    let (up_open, _) = schedule_changes(&b, CATALOG, &[], None, open).expect("valid window");
    assert_eq!(up_open[0].scheduled_at, open);

    // The window moves: rescheduled, keeping the source.
    let mut moved = b.clone();
    moved.maintenance_day = DayOfWeek::Wednesday;
    let (re, _) = schedule_changes(&moved, CATALOG, &up, None, now).expect("valid window");
    assert_eq!(re.len(), 2);
    assert_eq!(re[0].scheduled_at, t(2026, 11, 4, 2, 0));
    assert_eq!(re[1].source, ActionSource::User);

    // Applied by a reboot (or undone): the schedule goes.
    let mut applied = b.clone();
    applied.pending_engine_version = None;
    applied.pending_host_instance_type = None;
    let (up2, del) = schedule_changes(&applied, CATALOG, &up, None, now).expect("valid window");
    assert!(up2.is_empty());
    assert_eq!(
        del,
        vec![ActionKind::EngineVersion, ActionKind::HostInstanceType]
    );
}

#[test]
fn agent_version_is_pending_while_a_node_reports_another() {
    use crate::app::maintenance::agent_version_pending;
    let v = |s: &[&str]| s.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
    struct Case {
        what: &'static str,
        reported: Vec<String>,
        current: Option<&'static str>,
        want: Option<&'static str>,
    }
    let cases = [
        Case {
            what: "every node on the binary's version",
            reported: v(&["0.2.0"]),
            current: Some("0.2.0"),
            want: None,
        },
        Case {
            what: "one node on an older agent",
            reported: v(&["0.1.0", "0.2.0"]),
            current: Some("0.2.0"),
            want: Some("0.2.0"),
        },
        Case {
            what: "every node older",
            reported: v(&["0.1.0"]),
            current: Some("0.2.0"),
            want: Some("0.2.0"),
        },
        Case {
            what: "a binary rolled back",
            reported: v(&["0.3.0"]),
            current: Some("0.2.0"),
            want: Some("0.2.0"),
        },
        Case {
            what: "the binary cannot be asked",
            reported: v(&["0.1.0"]),
            current: None,
            want: None,
        },
        Case {
            what: "no node registered yet",
            reported: v(&[]),
            current: Some("0.2.0"),
            want: None,
        },
    ];
    for c in cases {
        assert_eq!(
            agent_version_pending(&c.reported, c.current).as_deref(),
            c.want,
            "{}",
            c.what
        );
    }
}

#[test]
fn an_agent_version_is_scheduled_in_the_window_and_goes_once_applied() {
    let now = t(2026, 11, 3, 10, 0);
    let next = t(2026, 11, 9, 2, 0);
    let b = broker();
    let (up, del) = schedule_changes(&b, CATALOG, &[], Some("0.2.0"), now).expect("valid window");
    assert!(del.is_empty());
    assert_eq!(up.len(), 1);
    assert_eq!(
        (
            up[0].kind,
            up[0].target.as_str(),
            up[0].source,
            up[0].scheduled_at
        ),
        (ActionKind::AgentVersion, "0.2.0", ActionSource::Agent, next)
    );
    // Still pending: nothing changes.
    let (again, del) =
        schedule_changes(&b, CATALOG, &up, Some("0.2.0"), now).expect("valid window");
    assert!(again.is_empty() && del.is_empty());
    // A newer binary installed meanwhile: the target moves.
    let (moved, _) = schedule_changes(&b, CATALOG, &up, Some("0.3.0"), now).expect("valid window");
    assert_eq!(moved[0].target, "0.3.0");
    // Every node reports the new version: the action goes.
    let (none, del) = schedule_changes(&b, CATALOG, &up, None, now).expect("valid window");
    assert!(none.is_empty());
    assert_eq!(del, vec![ActionKind::AgentVersion]);
}

#[test]
fn run_progress_tells_applied_from_interrupted() {
    let b = broker();
    let run = RunRecord {
        broker_id: b.id.clone(),
        generation: 5,
        actions: vec![("ENGINE_VERSION".into(), "3.13.2".into())],
        started_at: t(2026, 11, 9, 2, 0),
    };
    let just = run.started_at + TimeDelta::seconds(1);
    let late = run.started_at + TimeDelta::minutes(5);
    let fresh = RestartFacts {
        restart_generation: 5,
        ready: true,
    };
    let old = RestartFacts {
        restart_generation: 0,
        ready: true,
    };
    let booting = RestartFacts {
        restart_generation: 5,
        ready: false,
    };

    let mut unapplied = b.clone();
    unapplied.reboot_generation = Some(2);
    assert_eq!(
        run_progress(&unapplied, &run, &[old], just),
        RunProgress::Starting
    );
    assert_eq!(
        run_progress(&unapplied, &run, &[old], late),
        RunProgress::Abandoned
    );

    let mut rebooting = b.clone();
    rebooting.reboot_generation = Some(5);
    rebooting.state = BrokerState::RebootInProgress;
    assert_eq!(
        run_progress(&rebooting, &run, &[old], late),
        RunProgress::Restarting
    );
    assert_eq!(
        run_progress(&rebooting, &run, &[fresh], late),
        RunProgress::Restarting
    );

    let mut running = rebooting.clone();
    running.state = BrokerState::Running;
    // RUNNING set by a pass that read the broker before the reboot request: the node
    // itself must have restarted.
    assert_eq!(
        run_progress(&running, &run, &[old], late),
        RunProgress::Restarting
    );
    assert_eq!(
        run_progress(&running, &run, &[booting], late),
        RunProgress::Restarting
    );
    assert_eq!(
        run_progress(&running, &run, &[fresh], late),
        RunProgress::Done
    );
    assert_eq!(
        run_progress(&running, &run, &[], late),
        RunProgress::Restarting
    );

    // A later RebootBroker (higher reboot generation) also satisfies the run.
    running.reboot_generation = Some(9);
    let later = RestartFacts {
        restart_generation: 9,
        ready: true,
    };
    assert_eq!(
        run_progress(&running, &run, &[later], late),
        RunProgress::Done
    );
}

#[test]
fn apply_pending_is_what_reboot_does() {
    let mut b = broker();
    b.pending_engine_version = Some("3.13.2".into());
    b.pending_host_instance_type = Some("mq.m5.xlarge".into());
    let mut spec = b.spec();
    apply_pending(&mut spec);
    assert_eq!(spec.state, BrokerState::RebootInProgress);
    assert_eq!(spec.engine_version, "3.13.2");
    assert_eq!(spec.host_instance_type, "mq.m5.xlarge");
    assert!(spec.pending_engine_version.is_none() && spec.pending_host_instance_type.is_none());
    assert!(spec.request_reboot);
}

/// The window is read on the test clock, heartbeats on the real one: a node that beat a
/// moment ago is alive however far the clock was moved.
#[test]
fn single_instance_starts_in_the_window_on_a_moved_clock() {
    let real_now = Utc::now();
    let schedule_now = real_now + TimeDelta::days(3);
    let skew = schedule_now - real_now;
    let heartbeat = Some(real_now - TimeDelta::milliseconds(500));
    let node = |hb: Option<DateTime<Utc>>| PatchNode {
        replica: ReplicaFacts {
            id: mooring_agent_protocol::NodeId("b-1-1".into()),
            zone: "us-east-1a".into(),
            role: Role::Leader,
            in_sync: true,
            acked: LogPosition::default(),
            last_heartbeat: hb.map(|t| t + skew),
        },
        patched: false,
    };
    let pending = [PendingAction {
        kind: PendingKind::EngineVersion {
            to: "3.13.2".into(),
        },
        scheduled_at: Some(schedule_now - TimeDelta::minutes(1)),
    }];
    let open = Trigger {
        window_open: true,
        apply_now: false,
        in_progress: false,
    };
    let gate = |paused, elsewhere| FleetGate {
        paused,
        max_in_maintenance: 2,
        in_maintenance_elsewhere: elsewhere,
    };
    let step = |n: PatchNode, trigger, g| {
        next_step(
            &pending,
            &[n],
            trigger,
            g,
            schedule_now,
            &policy(),
            schedule_now,
        )
    };
    assert!(matches!(
        step(node(heartbeat), open, gate(false, 0)),
        MaintenanceStep::RestartSingleInstance { .. }
    ));
    assert_eq!(
        step(node(heartbeat), open, gate(true, 0)),
        MaintenanceStep::Nothing,
        "paused"
    );
    assert_eq!(
        step(node(heartbeat), open, gate(false, 2)),
        MaintenanceStep::Nothing,
        "fleet full"
    );
    let closed = Trigger {
        window_open: false,
        ..open
    };
    assert_eq!(
        step(node(heartbeat), closed, gate(false, 0)),
        MaintenanceStep::Nothing,
        "closed"
    );
    assert!(
        matches!(
            step(
                node(Some(real_now - TimeDelta::minutes(1))),
                open,
                gate(false, 0)
            ),
            MaintenanceStep::WaitUntilInSync { .. }
        ),
        "a silent node is not restarted for maintenance"
    );
}
