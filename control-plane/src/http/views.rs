//! Store records as Amazon MQ's wire shapes.

use std::collections::BTreeMap;

use crate::api::{self, timestamp, ConfigurationRef};
use crate::app::brokers::BrokerView;
use crate::model::DataReplicationMode;
use crate::store::{
    BrokerRecord, BrokerSummaryRecord, ConfigurationId, ConfigurationRecord, RevisionRecord,
    UserRecord,
};

fn config_ref((id, revision): &(ConfigurationId, i64)) -> ConfigurationRef {
    ConfigurationRef {
        id: Some(id.to_string()),
        revision: Some(*revision),
    }
}

fn window(b: &BrokerRecord) -> api::WeeklyStartTime {
    api::WeeklyStartTime {
        day_of_week: Some(b.maintenance_day),
        time_of_day: Some(b.maintenance_time.clone()),
        time_zone: Some(b.maintenance_time_zone.clone()),
    }
}

pub fn user_summary(u: &UserRecord) -> api::UserSummary {
    api::UserSummary {
        pending_change: u.pending_change,
        username: u.username.clone(),
    }
}

pub fn describe_broker(v: BrokerView) -> api::DescribeBrokerResponse {
    let b = v.broker;
    api::DescribeBrokerResponse {
        actions_required: v
            .actions_required
            .into_iter()
            .map(|(code, info)| api::ActionRequired {
                action_required_code: code,
                action_required_info: info,
            })
            .collect(),
        authentication_strategy: b.authentication_strategy,
        auto_minor_version_upgrade: b.auto_minor_version_upgrade,
        broker_arn: b.arn.clone(),
        broker_id: b.id.to_string(),
        broker_instances: v
            .instances
            .into_iter()
            .map(|i| api::BrokerInstance {
                console_url: i.console_url,
                endpoints: i.endpoints,
                ip_address: i.ip_address,
                node_id: Some(i.node_id),
                availability_zone: Some(i.availability_zone),
                role: i.role.map(str::to_owned),
            })
            .collect(),
        broker_name: b.name.clone(),
        broker_state: b.state,
        configurations: api::Configurations {
            current: b.configuration.as_ref().map(config_ref),
            history: b.configuration_history.iter().map(config_ref).collect(),
            pending: b.pending_configuration.as_ref().map(config_ref),
        },
        created: timestamp(b.created_at),
        deployment_mode: b.deployment_mode,
        data_replication_mode: DataReplicationMode::None,
        encryption_options: api::EncryptionOptions {
            kms_key_id: None,
            use_aws_owned_key: Some(true),
        },
        engine_type: b.engine_type,
        engine_version: b.engine_version.clone(),
        host_instance_type: b.host_instance_type.clone(),
        logs: api::LogsSummary {
            audit: b.logs_audit,
            general: b.logs_general,
            general_log_group: format!("/aws/amazonmq/broker/{}/general", b.id),
        },
        maintenance_window_start_time: window(&b),
        pending_engine_version: b.pending_engine_version.clone(),
        pending_host_instance_type: b.pending_host_instance_type.clone(),
        pending_actions: v
            .pending_actions
            .iter()
            .map(|p| api::PendingAction {
                action: p.kind.as_str().to_owned(),
                target: p.target.clone(),
                source: p.source.as_str().to_owned(),
                scheduled_at: p.scheduled_at.map(timestamp),
            })
            .collect(),
        publicly_accessible: b.publicly_accessible,
        security_groups: b.security_groups.clone(),
        storage_type: b.storage_type,
        subnet_ids: b.subnet_ids.clone(),
        tags: v.tags,
        users: v.users.iter().map(user_summary).collect(),
    }
}

pub fn broker_summary(b: &BrokerSummaryRecord) -> api::BrokerSummary {
    api::BrokerSummary {
        broker_arn: b.arn.clone(),
        broker_id: b.id.to_string(),
        broker_name: b.name.clone(),
        broker_state: b.state,
        created: timestamp(b.created_at),
        deployment_mode: b.deployment_mode,
        engine_type: b.engine_type,
        host_instance_type: b.host_instance_type.clone(),
    }
}

pub fn update_broker(b: &BrokerRecord) -> api::UpdateBrokerResponse {
    api::UpdateBrokerResponse {
        authentication_strategy: b.authentication_strategy,
        auto_minor_version_upgrade: b.auto_minor_version_upgrade,
        broker_id: b.id.to_string(),
        // What the broker will run after its next reboot.
        configuration: b
            .pending_configuration
            .as_ref()
            .or(b.configuration.as_ref())
            .map(config_ref),
        engine_version: b
            .pending_engine_version
            .clone()
            .unwrap_or_else(|| b.engine_version.clone()),
        host_instance_type: b
            .pending_host_instance_type
            .clone()
            .unwrap_or_else(|| b.host_instance_type.clone()),
        logs: api::Logs {
            audit: Some(b.logs_audit),
            general: Some(b.logs_general),
        },
        maintenance_window_start_time: window(b),
        security_groups: b.security_groups.clone(),
        data_replication_mode: DataReplicationMode::None,
    }
}

pub fn describe_user(u: &UserRecord) -> api::DescribeUserResponse {
    api::DescribeUserResponse {
        broker_id: u.broker_id.to_string(),
        console_access: u.console_access,
        groups: u.groups.clone(),
        pending: u.pending_change.map(|change| api::UserPendingChanges {
            console_access: u.console_access,
            groups: u.groups.clone(),
            pending_change: change,
        }),
        username: u.username.clone(),
        replication_user: u.replication_user,
    }
}

pub fn revision(c: &ConfigurationRecord) -> api::ConfigurationRevision {
    api::ConfigurationRevision {
        created: timestamp(c.latest_revision_created_at),
        description: c.description.clone(),
        revision: c.latest_revision,
    }
}

pub fn revision_summary(r: &RevisionRecord) -> api::ConfigurationRevision {
    api::ConfigurationRevision {
        created: timestamp(r.created_at),
        description: r.description.clone(),
        revision: r.revision,
    }
}

pub fn configuration(
    c: &ConfigurationRecord,
    tags: BTreeMap<String, String>,
) -> api::Configuration {
    api::Configuration {
        arn: c.arn.clone(),
        authentication_strategy: c.authentication_strategy,
        created: timestamp(c.created_at),
        description: c.description.clone().unwrap_or_default(),
        engine_type: c.engine_type,
        engine_version: c.engine_version.clone(),
        id: c.id.to_string(),
        latest_revision: revision(c),
        name: c.name.clone(),
        tags,
    }
}
