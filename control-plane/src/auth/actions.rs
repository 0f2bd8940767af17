//! Amazon MQ's API operations, the IAM action each one is authorized as, and
//! the resource its policy check applies to, as AWS's Service Authorization
//! Reference for Amazon MQ lists them (service prefix `mq`).
//!
//! Resource ARNs: the reference names the resource *types* in the plural
//! (`brokers`, `configurations`) but the ARNs themselves use the singular, in
//! IAM policies and in API responses alike:
//! `arn:${Partition}:mq:${Region}:${Account}:broker:${BrokerName}:${BrokerId}` and
//! `arn:${Partition}:mq:${Region}:${Account}:configuration:${ConfigurationId}`.
//! Actions without resource-level permissions (create and list operations,
//! the catalog) are checked against `*`.

/// What an operation's authorization check is made against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResourceKind {
    /// No resource-level permissions: the request's resource is `*`.
    All,
    /// The broker named in the path (`{broker-id}`).
    Broker,
    /// The configuration named in the path (`{configuration-id}`).
    Configuration,
    /// The ARN in the path of the tagging routes (`{resource-arn}`), a broker
    /// or a configuration.
    TaggedResource,
}

/// Every operation of the Amazon MQ API (2017-11-27).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MqOperation {
    CreateBroker,
    CreateConfiguration,
    CreateTags,
    CreateUser,
    DeleteBroker,
    DeleteConfiguration,
    DeleteTags,
    DeleteUser,
    DescribeBroker,
    DescribeBrokerEngineTypes,
    DescribeBrokerInstanceOptions,
    DescribeConfiguration,
    DescribeConfigurationRevision,
    DescribeUser,
    ListBrokers,
    ListConfigurationRevisions,
    ListConfigurations,
    ListTags,
    ListUsers,
    /// Mooring's extension: reading the audit trail (`GET /v1/audit-events`).
    ListAuditEvents,
    /// Mooring extensions: the fleet maintenance switch (`GET`/`PUT /v1/maintenance`).
    DescribeMaintenance,
    UpdateMaintenance,
    Promote,
    RebootBroker,
    /// Mooring's extension: a planned change of leader of a replicated broker
    /// (`POST /v1/brokers/{broker-id}/switchover`).
    SwitchoverBroker,
    /// Mooring's extension: a broker's failover, switchover and patch events
    /// (`GET /v1/brokers/{broker-id}/events`).
    ListBrokerEvents,
    UpdateBroker,
    UpdateConfiguration,
    UpdateUser,
}

impl MqOperation {
    pub const ALL: [MqOperation; 29] = [
        Self::CreateBroker,
        Self::CreateConfiguration,
        Self::CreateTags,
        Self::CreateUser,
        Self::DeleteBroker,
        Self::DeleteConfiguration,
        Self::DeleteTags,
        Self::DeleteUser,
        Self::DescribeBroker,
        Self::DescribeBrokerEngineTypes,
        Self::DescribeBrokerInstanceOptions,
        Self::DescribeConfiguration,
        Self::DescribeConfigurationRevision,
        Self::DescribeUser,
        Self::ListBrokers,
        Self::ListConfigurationRevisions,
        Self::ListConfigurations,
        Self::ListTags,
        Self::ListUsers,
        Self::ListAuditEvents,
        Self::DescribeMaintenance,
        Self::UpdateMaintenance,
        Self::Promote,
        Self::RebootBroker,
        Self::SwitchoverBroker,
        Self::ListBrokerEvents,
        Self::UpdateBroker,
        Self::UpdateConfiguration,
        Self::UpdateUser,
    ];

    /// The IAM action, e.g. `mq:CreateBroker`. Every Amazon MQ operation is
    /// authorized by the action of the same name.
    pub fn action(self) -> &'static str {
        use MqOperation::*;
        match self {
            CreateBroker => "mq:CreateBroker",
            CreateConfiguration => "mq:CreateConfiguration",
            CreateTags => "mq:CreateTags",
            CreateUser => "mq:CreateUser",
            DeleteBroker => "mq:DeleteBroker",
            DeleteConfiguration => "mq:DeleteConfiguration",
            DeleteTags => "mq:DeleteTags",
            DeleteUser => "mq:DeleteUser",
            DescribeBroker => "mq:DescribeBroker",
            DescribeBrokerEngineTypes => "mq:DescribeBrokerEngineTypes",
            DescribeBrokerInstanceOptions => "mq:DescribeBrokerInstanceOptions",
            DescribeConfiguration => "mq:DescribeConfiguration",
            DescribeConfigurationRevision => "mq:DescribeConfigurationRevision",
            DescribeUser => "mq:DescribeUser",
            ListBrokers => "mq:ListBrokers",
            ListConfigurationRevisions => "mq:ListConfigurationRevisions",
            ListConfigurations => "mq:ListConfigurations",
            ListTags => "mq:ListTags",
            ListUsers => "mq:ListUsers",
            ListAuditEvents => "mq:ListAuditEvents",
            DescribeMaintenance => "mq:DescribeMaintenance",
            UpdateMaintenance => "mq:UpdateMaintenance",
            Promote => "mq:Promote",
            RebootBroker => "mq:RebootBroker",
            SwitchoverBroker => "mq:SwitchoverBroker",
            ListBrokerEvents => "mq:ListBrokerEvents",
            UpdateBroker => "mq:UpdateBroker",
            UpdateConfiguration => "mq:UpdateConfiguration",
            UpdateUser => "mq:UpdateUser",
        }
    }

    /// The operation's name in the API (and the action without its prefix).
    pub fn name(self) -> &'static str {
        let action = self.action();
        &action["mq:".len()..]
    }

    /// Looks an operation up by its API name, e.g. `"DescribeBroker"`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|op| op.name() == name)
    }

    /// The resource the action is checked against.
    pub fn resource_kind(self) -> ResourceKind {
        use MqOperation::*;
        match self {
            CreateBroker
            | CreateConfiguration
            | DescribeBrokerEngineTypes
            | DescribeBrokerInstanceOptions
            | ListAuditEvents
            | ListBrokers
            | DescribeMaintenance
            | UpdateMaintenance
            | ListConfigurations => ResourceKind::All,
            CreateUser | DeleteBroker | DeleteUser | DescribeBroker | DescribeUser | ListUsers
            | Promote | RebootBroker | UpdateBroker | UpdateUser | SwitchoverBroker
            | ListBrokerEvents => ResourceKind::Broker,
            DeleteConfiguration
            | DescribeConfiguration
            | DescribeConfigurationRevision
            | ListConfigurationRevisions
            | UpdateConfiguration => ResourceKind::Configuration,
            CreateTags | DeleteTags | ListTags => ResourceKind::TaggedResource,
        }
    }

    /// Whether requests of this operation carry tags that policies see as
    /// `aws:RequestTag/*` and `aws:TagKeys` (those that create or add tags),
    /// or only tag keys (DeleteTags).
    pub fn takes_request_tags(self) -> bool {
        matches!(
            self,
            Self::CreateBroker | Self::CreateConfiguration | Self::CreateTags | Self::DeleteTags
        )
    }
}

/// `arn:${Partition}:mq:${Region}:${Account}:broker:${BrokerName}:${BrokerId}`
pub fn broker_arn(partition: &str, region: &str, account: &str, name: &str, id: &str) -> String {
    format!("arn:{partition}:mq:{region}:{account}:broker:{name}:{id}")
}

/// `arn:${Partition}:mq:${Region}:${Account}:configuration:${ConfigurationId}`
pub fn configuration_arn(partition: &str, region: &str, account: &str, id: &str) -> String {
    format!("arn:{partition}:mq:{region}:{account}:configuration:{id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operation_round_trips_by_name() {
        for op in MqOperation::ALL {
            assert_eq!(MqOperation::from_name(op.name()), Some(op));
            assert!(op.action().starts_with("mq:"));
        }
        assert_eq!(MqOperation::from_name("DescribeBrokers"), None);
    }

    #[test]
    fn list_and_create_actions_apply_to_star() {
        assert_eq!(MqOperation::ListBrokers.resource_kind(), ResourceKind::All);
        assert_eq!(MqOperation::CreateBroker.resource_kind(), ResourceKind::All);
        assert_eq!(
            MqOperation::DeleteBroker.resource_kind(),
            ResourceKind::Broker
        );
        assert_eq!(
            MqOperation::DescribeConfigurationRevision.resource_kind(),
            ResourceKind::Configuration
        );
        assert_eq!(
            MqOperation::ListTags.resource_kind(),
            ResourceKind::TaggedResource
        );
    }

    #[test]
    fn arns_use_the_singular_resource_type() {
        assert_eq!(
            broker_arn("aws", "us-east-2", "123456789012", "MyBroker", "b-1234"),
            "arn:aws:mq:us-east-2:123456789012:broker:MyBroker:b-1234"
        );
        assert_eq!(
            configuration_arn("aws", "us-east-2", "123456789012", "c-1234"),
            "arn:aws:mq:us-east-2:123456789012:configuration:c-1234"
        );
    }
}
