//! Amazon MQ's documented input rules for RabbitMQ brokers, as pure functions.
//! Each failure names the offending request member as Amazon MQ would.

use std::collections::{BTreeMap, BTreeSet};

use crate::error::ApiError;

/// Broker names: 1-50 letters, digits, `-` or `_`.
pub fn broker_name(name: &str) -> Result<(), ApiError> {
    let ok = (1..=50).contains(&name.chars().count())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "brokerName",
            "Broker name must be 1-50 characters long and contain only letters, numbers, dashes and underscores.",
        ))
    }
}

/// RabbitMQ usernames: 2-100 letters, digits, `-`, `.` or `_` (no `~`), never `guest`.
pub fn username(name: &str) -> Result<(), ApiError> {
    let ok = (2..=100).contains(&name.chars().count())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
    if !ok {
        return Err(ApiError::bad_request(
            "username",
            "Username must be 2-100 characters long and contain only letters, numbers, dashes, periods and underscores.",
        ));
    }
    if name == "guest" {
        return Err(ApiError::bad_request(
            "username",
            "The username guest is reserved; choose another.",
        ));
    }
    Ok(())
}

/// Passwords: at least 12 characters, at least 4 distinct ones, none of `,:=`.
pub fn password(password: &str) -> Result<(), ApiError> {
    let distinct: BTreeSet<char> = password.chars().collect();
    let ok = password.chars().count() >= 12
        && distinct.len() >= 4
        && !password.contains([',', ':', '='])
        && password.len() <= 250;
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "password",
            "Password must be at least 12 characters long, contain at least 4 unique characters, \
             and must not contain commas, colons, or equal signs (,:=).",
        ))
    }
}

/// Tags: at most 50; keys 1-128 characters and not `aws:`-prefixed; values up to 256.
pub fn tags(tags: &BTreeMap<String, String>) -> Result<(), ApiError> {
    if tags.len() > 50 {
        return Err(ApiError::bad_request(
            "tags",
            "A resource can have at most 50 tags.",
        ));
    }
    for (key, value) in tags {
        if !(1..=128).contains(&key.chars().count()) || key.starts_with("aws:") {
            return Err(ApiError::bad_request(
                "tags",
                format!(
                    "Tag key {key:?} must be 1-128 characters long and must not start with aws:."
                ),
            ));
        }
        if value.chars().count() > 256 {
            return Err(ApiError::bad_request(
                "tags",
                format!("The value of tag {key:?} is longer than 256 characters."),
            ));
        }
    }
    Ok(())
}

/// Maintenance window time: `HH:MM`, 24-hour; zone: an IANA name (or `UTC`).
pub fn time_of_day(time: &str) -> Result<(), ApiError> {
    let ok = time.len() == 5
        && time.as_bytes()[2] == b':'
        && matches!(time[..2].parse::<u8>(), Ok(h) if h < 24)
        && matches!(time[3..].parse::<u8>(), Ok(m) if m < 60);
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "maintenanceWindowStartTime",
            "timeOfDay must be HH:MM in 24-hour format.",
        ))
    }
}

pub fn time_zone(zone: &str) -> Result<(), ApiError> {
    if zone == "UTC" || zone.parse::<chrono_tz::Tz>().is_ok() {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "maintenanceWindowStartTime",
            format!("Unknown time zone {zone:?}."),
        ))
    }
}

/// Configuration names: 1-150 letters, digits, `-`, `.`, `_` or `~`.
pub fn configuration_name(name: &str) -> Result<(), ApiError> {
    let ok = (1..=150).contains(&name.chars().count())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '~'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "name",
            "Configuration name must be 1-150 characters long and contain only letters, numbers, dashes, periods, underscores and tildes.",
        ))
    }
}

/// The `rabbitmq.conf` keys a configuration may set (the ones Amazon MQ allows for
/// RabbitMQ, including the resource limits).
pub const CONFIGURATION_KEYS: &[&str] = &[
    "consumer_timeout",
    "heartbeat",
    "management.restrictions.operator_policy_changes.disabled",
    "quorum_queue.property_equivalence.relaxed_checks_on_redeclaration",
    "connection_max",
    "channel_max_per_node",
    "cluster_queue_limit",
    "vhost_max",
    "consumer_max_per_channel",
    "max_message_size",
];

/// Configuration data: base64 of a cuttlefish-style `key = value` file using only
/// [`CONFIGURATION_KEYS`]. Returns the parsed pairs.
pub fn configuration_data(data_base64: &str) -> Result<Vec<(String, String)>, ApiError> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data_base64.trim())
        .map_err(|_| ApiError::bad_request("data", "Configuration data must be base64-encoded."))?;
    let text = String::from_utf8(bytes)
        .map_err(|_| ApiError::bad_request("data", "Configuration data must be UTF-8 text."))?;
    let mut pairs = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(ApiError::bad_request(
                "data",
                format!("Line {} is not of the form key = value.", n + 1),
            ));
        };
        let (key, value) = (key.trim(), value.trim());
        if !CONFIGURATION_KEYS.contains(&key) {
            return Err(ApiError::bad_request(
                "data",
                format!(
                    "Configuration key {key:?} is not supported; supported keys: {}.",
                    CONFIGURATION_KEYS.join(", ")
                ),
            ));
        }
        if value.is_empty() {
            return Err(ApiError::bad_request(
                "data",
                format!("Configuration key {key:?} has no value."),
            ));
        }
        pairs.push((key.to_owned(), value.to_owned()));
    }
    Ok(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_names() {
        for ok in ["a", "orders_prod-1", &"x".repeat(50)] {
            assert!(broker_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "has space",
            "dot.ted",
            "brack[et]",
            "star*",
            &"x".repeat(51),
            "é",
        ] {
            assert!(broker_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn usernames() {
        assert!(username("app.user-1_x").is_ok());
        for bad in ["a", "guest", "til~de", "sp ace", "co:lon", &"u".repeat(101)] {
            assert!(username(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn passwords() {
        assert!(password("abcdabcdabcd").is_ok());
        for bad in [
            "short1234",
            "aaaaaaaaaaaaaaaa",
            "abababcccccc",
            "abcdefghijk,",
            "abcdefghijk:",
            "abcdefghijk=",
        ] {
            assert!(password(bad).is_err(), "{bad}");
        }
        // exactly three distinct characters is too few
        assert!(password("abcabcabcabc").is_err());
    }

    #[test]
    fn maintenance_windows() {
        assert!(time_of_day("00:00").is_ok() && time_of_day("23:59").is_ok());
        for bad in ["24:00", "12:60", "1:00", "12-00", "noon!"] {
            assert!(time_of_day(bad).is_err(), "{bad}");
        }
        assert!(time_zone("UTC").is_ok() && time_zone("Europe/Paris").is_ok());
        assert!(time_zone("Mars/Olympus").is_err());
    }

    #[test]
    fn configuration_data_rules() {
        use base64::Engine as _;
        let enc = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let pairs = configuration_data(&enc("# c\nconsumer_timeout = 60000\n\nheartbeat=30\n"))
            .expect("valid");
        assert_eq!(
            pairs,
            vec![
                ("consumer_timeout".into(), "60000".into()),
                ("heartbeat".into(), "30".into())
            ]
        );
        assert!(configuration_data("not base64!!").is_err());
        assert!(configuration_data(&enc("loopback_users = none")).is_err());
        assert!(configuration_data(&enc("heartbeat")).is_err());
        assert!(configuration_data(&enc("heartbeat = ")).is_err());
    }

    #[test]
    fn tag_rules() {
        let mut t = BTreeMap::new();
        t.insert("env".to_owned(), "prod".to_owned());
        assert!(tags(&t).is_ok());
        t.insert("aws:x".to_owned(), String::new());
        assert!(tags(&t).is_err());
    }
}
