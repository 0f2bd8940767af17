//! The request context a policy is evaluated against: the action, the
//! resource ARN, and the condition keys with their values.

use std::collections::HashMap;
use std::net::IpAddr;

use chrono::{DateTime, SecondsFormat, Utc};

/// Condition keys are case-insensitive; they are stored lowercased. Every
/// value is a string, as in IAM: operators give it a type when comparing.
#[derive(Debug, Clone)]
pub struct RequestContext {
    /// Lowercased: actions match case-insensitively.
    action: String,
    /// `prefix_hashes(action)`, for fast rejection of action patterns.
    action_hashes: Vec<u64>,
    resource: String,
    keys: HashMap<String, Vec<String>>,
}

impl Default for RequestContext {
    fn default() -> Self {
        Self::new("", "")
    }
}

impl RequestContext {
    pub fn new(action: &str, resource: &str) -> Self {
        let action = action.to_ascii_lowercase();
        RequestContext {
            action_hashes: super::wildcard::prefix_hashes(&action),
            action,
            resource: resource.to_owned(),
            keys: HashMap::new(),
        }
    }

    /// The action, lowercased.
    pub fn action(&self) -> &str {
        &self.action
    }

    pub(super) fn action_hashes(&self) -> &[u64] {
        &self.action_hashes
    }

    pub fn resource(&self) -> &str {
        &self.resource
    }

    /// Sets a single-valued key, replacing any value.
    pub fn set(&mut self, key: &str, value: impl Into<String>) -> &mut Self {
        self.keys
            .insert(key.to_ascii_lowercase(), vec![value.into()]);
        self
    }

    /// Adds a value to a multi-valued key.
    pub fn add(&mut self, key: &str, value: impl Into<String>) -> &mut Self {
        self.keys
            .entry(key.to_ascii_lowercase())
            .or_default()
            .push(value.into());
        self
    }

    /// The values of a key, by its lowercased name.
    pub fn values(&self, key_lowercase: &str) -> Option<&[String]> {
        self.keys.get(key_lowercase).map(Vec::as_slice)
    }

    /// `aws:SourceIp`.
    pub fn set_source_ip(&mut self, ip: IpAddr) -> &mut Self {
        self.set("aws:SourceIp", ip.to_string())
    }

    /// `aws:CurrentTime` (ISO 8601) and `aws:EpochTime` (seconds).
    pub fn set_current_time(&mut self, now: DateTime<Utc>) -> &mut Self {
        self.set(
            "aws:CurrentTime",
            now.to_rfc3339_opts(SecondsFormat::Secs, true),
        );
        self.set("aws:EpochTime", now.timestamp().to_string())
    }

    /// `aws:SecureTransport`.
    pub fn set_secure_transport(&mut self, tls: bool) -> &mut Self {
        self.set("aws:SecureTransport", if tls { "true" } else { "false" })
    }

    /// `aws:username` (IAM users only), `aws:userid` and `aws:PrincipalArn`.
    pub fn set_principal(&mut self, username: Option<&str>, userid: &str, arn: &str) -> &mut Self {
        if let Some(name) = username {
            self.set("aws:username", name);
        }
        self.set("aws:userid", userid);
        self.set("aws:PrincipalArn", arn)
    }

    /// `aws:PrincipalTag/<key>`.
    pub fn set_principal_tag(&mut self, key: &str, value: &str) -> &mut Self {
        self.set(&format!("aws:PrincipalTag/{key}"), value)
    }

    /// `aws:ResourceTag/<key>`.
    pub fn set_resource_tag(&mut self, key: &str, value: &str) -> &mut Self {
        self.set(&format!("aws:ResourceTag/{key}"), value)
    }

    /// `aws:RequestTag/<key>`, and `<key>` added to `aws:TagKeys`.
    pub fn set_request_tag(&mut self, key: &str, value: &str) -> &mut Self {
        self.set(&format!("aws:RequestTag/{key}"), value);
        self.add("aws:TagKeys", key)
    }
}
