//! Amazon MQ's enumerations, shared by every layer: the wire format spells them
//! exactly as the database stores them (`RUNNING`, `SINGLE_INSTANCE`, ...).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

macro_rules! wire_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
        pub enum $name {
            $(#[serde(rename = $text)] $variant),+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            pub fn parse(s: &str) -> Option<Self> {
                match s { $($text => Some($name::$variant),)+ _ => None }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

wire_enum!(
    /// A broker's lifecycle state.
    BrokerState {
        CreationInProgress => "CREATION_IN_PROGRESS",
        CreationFailed => "CREATION_FAILED",
        DeletionInProgress => "DELETION_IN_PROGRESS",
        Running => "RUNNING",
        RebootInProgress => "REBOOT_IN_PROGRESS",
        CriticalActionRequired => "CRITICAL_ACTION_REQUIRED",
        Replica => "REPLICA",
    }
);

wire_enum!(
    /// How many nodes a broker runs and how they relate.
    DeploymentMode {
        SingleInstance => "SINGLE_INSTANCE",
        ActiveStandbyMultiAz => "ACTIVE_STANDBY_MULTI_AZ",
        ClusterMultiAz => "CLUSTER_MULTI_AZ",
    }
);

wire_enum!(
    /// The broker engine. Only `RABBITMQ` (our engine) is served.
    EngineType {
        Activemq => "ACTIVEMQ",
        Rabbitmq => "RABBITMQ",
    }
);

wire_enum!(
    /// How brokers authenticate users. Only `SIMPLE` (users held by Mooring) is served.
    AuthenticationStrategy {
        Simple => "SIMPLE",
        Ldap => "LDAP",
        ConfigManaged => "CONFIG_MANAGED",
    }
);

wire_enum!(
    /// Storage backing a broker node.
    StorageType {
        Ebs => "EBS",
        Efs => "EFS",
    }
);

wire_enum!(
    /// Day of the weekly maintenance window.
    DayOfWeek {
        Monday => "MONDAY",
        Tuesday => "TUESDAY",
        Wednesday => "WEDNESDAY",
        Thursday => "THURSDAY",
        Friday => "FRIDAY",
        Saturday => "SATURDAY",
        Sunday => "SUNDAY",
    }
);

wire_enum!(
    /// A user change recorded but not yet applied on the broker's nodes.
    ChangeType {
        Create => "CREATE",
        Update => "UPDATE",
        Delete => "DELETE",
    }
);

wire_enum!(
    /// Cross-region data replication; only `NONE` is served.
    DataReplicationMode {
        None => "NONE",
        Crdr => "CRDR",
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trips_for_every_variant() {
        for s in BrokerState::ALL {
            assert_eq!(BrokerState::parse(s.as_str()), Some(*s));
            let json = serde_json::to_string(s).expect("enum serializes");
            assert_eq!(json, format!("\"{}\"", s.as_str()));
        }
        assert_eq!(DeploymentMode::parse("single_instance"), None);
    }
}
