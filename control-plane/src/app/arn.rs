//! ARNs of Mooring's resources, in the configured partition, region and account.

use crate::config::ServeConfig;
use crate::store::{BrokerId, ConfigurationId};

pub fn broker_arn(config: &ServeConfig, name: &str, id: &BrokerId) -> String {
    format!(
        "arn:{}:mq:{}:{}:broker:{name}:{id}",
        config.partition, config.region, config.account_id
    )
}

pub fn configuration_arn(config: &ServeConfig, id: &ConfigurationId) -> String {
    format!(
        "arn:{}:mq:{}:{}:configuration:{id}",
        config.partition, config.region, config.account_id
    )
}

/// The resource an ARN names, when it is one of ours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resource {
    Broker(BrokerId),
    Configuration(ConfigurationId),
}

/// Parses an ARN of this control plane; `None` for anything else (another partition,
/// region, account or service, or not an ARN at all).
pub fn parse(config: &ServeConfig, arn: &str) -> Option<Resource> {
    let parts: Vec<&str> = arn.split(':').collect();
    match parts.as_slice() {
        ["arn", partition, "mq", region, account, kind, rest @ ..]
            if *partition == config.partition
                && *region == config.region
                && *account == config.account_id =>
        {
            match (*kind, rest) {
                ("broker", [_name, id]) => BrokerId::parse(id).map(Resource::Broker),
                ("configuration", [id]) => ConfigurationId::parse(id).map(Resource::Configuration),
                _ => None,
            }
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arns_round_trip_and_foreign_ones_are_refused() {
        let config = ServeConfig::for_tests(".".into(), None);
        let b = BrokerId::generate();
        let arn = broker_arn(&config, "orders", &b);
        assert_eq!(
            arn,
            format!("arn:aws:mq:us-east-1:000000000000:broker:orders:{b}")
        );
        assert_eq!(parse(&config, &arn), Some(Resource::Broker(b.clone())));
        let c = ConfigurationId::generate();
        assert_eq!(
            parse(&config, &configuration_arn(&config, &c)),
            Some(Resource::Configuration(c))
        );
        assert_eq!(parse(&config, &arn.replace("us-east-1", "eu-west-1")), None);
        assert_eq!(
            parse(&config, "arn:aws:sqs:us-east-1:000000000000:queue"),
            None
        );
        assert_eq!(parse(&config, "nonsense"), None);
    }
}
