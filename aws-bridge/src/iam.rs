//! Reading the identity policies of an AWS role or user with `aws-sdk-iam`, for
//! importing them into Mooring: managed policies (their default version) and inline
//! policies, and for a user those of its groups too. Documents come back decoded
//! (IAM returns them URL-encoded) and otherwise untouched; the control plane parses
//! and validates them.
//!
//! A principal with a permissions boundary is refused: the boundary caps what its
//! policies grant, and Mooring cannot express that cap, so importing the policies
//! alone would grant more in Mooring than in AWS.

use std::time::Duration;

use aws_sdk_iam::config::retry::RetryConfig;
use aws_sdk_iam::config::timeout::TimeoutConfig;
use aws_sdk_iam::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_iam::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};

/// The most list pages read for one principal: IAM allows at most 20 attached
/// managed policies and 10 groups, so this only bounds a misbehaving endpoint.
const MAX_PAGES: usize = 50;
/// A whole IAM call, retries included, may take this long.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(30);
const ATTEMPTS: u32 = 3;

/// How to reach IAM: its endpoint, and the credentials Mooring reads policies with.
#[derive(Clone)]
pub struct IamConfig {
    pub endpoint_url: String,
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl std::fmt::Debug for IamConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IamConfig")
            .field("endpoint_url", &self.endpoint_url)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .finish()
    }
}

/// The AWS principal whose policies are read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AwsPrincipal {
    Role { name: String },
    User { name: String },
}

/// Where an imported policy came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicySource {
    /// A managed policy attached to the principal (or to one of its groups).
    Managed { arn: String, version_id: String },
    /// An inline policy of the principal itself.
    Inline,
    /// An inline policy of one of the user's groups.
    GroupInline { group: String },
}

/// One identity policy, its document decoded to JSON text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedPolicy {
    pub name: String,
    pub source: PolicySource,
    pub document: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// IAM says there is no such role, user or policy.
    #[error("{0}")]
    NotFound(String),
    /// The principal has a permissions boundary (see the module documentation).
    #[error("{0}")]
    Unsupported(String),
    /// IAM answered with another error (access denied, throttled, …) or not at all.
    #[error("IAM call {operation} failed: {detail}")]
    Call {
        operation: &'static str,
        detail: String,
    },
    /// IAM answered with something that cannot be used.
    #[error("{0}")]
    BadAnswer(String),
}

/// Reads policies through one IAM client; cheap to clone.
#[derive(Clone, Debug)]
pub struct PolicyReader {
    client: aws_sdk_iam::Client,
}

impl PolicyReader {
    /// A client with static credentials and an explicit endpoint: nothing is read
    /// from the environment or from instance metadata.
    pub fn new(config: &IamConfig) -> Self {
        let credentials = Credentials::new(
            config.access_key_id.clone(),
            config.secret_access_key.clone(),
            config.session_token.clone(),
            None,
            "mooring-aws-login",
        );
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
            .build_https();
        let sdk_config = aws_sdk_iam::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(config.region.clone()))
            .credentials_provider(credentials)
            .endpoint_url(config.endpoint_url.clone())
            .http_client(http)
            .timeout_config(
                TimeoutConfig::builder()
                    .operation_timeout(OPERATION_TIMEOUT)
                    .build(),
            )
            .retry_config(RetryConfig::standard().with_max_attempts(ATTEMPTS))
            .build();
        PolicyReader {
            client: aws_sdk_iam::Client::from_conf(sdk_config),
        }
    }

    /// Every identity policy of `principal`, managed ones first, each list in IAM's order.
    pub async fn policies_of(
        &self,
        principal: &AwsPrincipal,
    ) -> Result<Vec<FetchedPolicy>, ImportError> {
        match principal {
            AwsPrincipal::Role { name } => self.role_policies(name).await,
            AwsPrincipal::User { name } => self.user_policies(name).await,
        }
    }

    async fn role_policies(&self, role: &str) -> Result<Vec<FetchedPolicy>, ImportError> {
        let got = self
            .client
            .get_role()
            .role_name(role)
            .send()
            .await
            .map_err(|e| call_error("GetRole", e))?;
        if got.role().and_then(|r| r.permissions_boundary()).is_some() {
            return Err(ImportError::Unsupported(format!(
                "AWS role {role} has a permissions boundary, which Mooring cannot import"
            )));
        }
        let mut out = Vec::new();
        let mut marker: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let page = self
                .client
                .list_attached_role_policies()
                .role_name(role)
                .set_marker(marker.take())
                .send()
                .await
                .map_err(|e| call_error("ListAttachedRolePolicies", e))?;
            for attached in page.attached_policies() {
                out.push(
                    self.managed(attached.policy_arn(), attached.policy_name())
                        .await?,
                );
            }
            marker = next_marker(page.is_truncated(), page.marker());
            if marker.is_none() {
                break;
            }
        }
        for name in self.role_inline_names(role).await? {
            let got = self
                .client
                .get_role_policy()
                .role_name(role)
                .policy_name(&name)
                .send()
                .await
                .map_err(|e| call_error("GetRolePolicy", e))?;
            out.push(FetchedPolicy {
                document: decode_document(got.policy_document())?,
                name,
                source: PolicySource::Inline,
            });
        }
        Ok(out)
    }

    async fn role_inline_names(&self, role: &str) -> Result<Vec<String>, ImportError> {
        let mut names = Vec::new();
        let mut marker: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let page = self
                .client
                .list_role_policies()
                .role_name(role)
                .set_marker(marker.take())
                .send()
                .await
                .map_err(|e| call_error("ListRolePolicies", e))?;
            names.extend(page.policy_names().iter().cloned());
            marker = next_marker(page.is_truncated(), page.marker());
            if marker.is_none() {
                break;
            }
        }
        Ok(names)
    }

    async fn user_policies(&self, user: &str) -> Result<Vec<FetchedPolicy>, ImportError> {
        let got = self
            .client
            .get_user()
            .user_name(user)
            .send()
            .await
            .map_err(|e| call_error("GetUser", e))?;
        if got.user().and_then(|u| u.permissions_boundary()).is_some() {
            return Err(ImportError::Unsupported(format!(
                "AWS user {user} has a permissions boundary, which Mooring cannot import"
            )));
        }
        let mut out = Vec::new();
        let mut marker: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let page = self
                .client
                .list_attached_user_policies()
                .user_name(user)
                .set_marker(marker.take())
                .send()
                .await
                .map_err(|e| call_error("ListAttachedUserPolicies", e))?;
            for attached in page.attached_policies() {
                out.push(
                    self.managed(attached.policy_arn(), attached.policy_name())
                        .await?,
                );
            }
            marker = next_marker(page.is_truncated(), page.marker());
            if marker.is_none() {
                break;
            }
        }
        let mut names = Vec::new();
        for _ in 0..MAX_PAGES {
            let page = self
                .client
                .list_user_policies()
                .user_name(user)
                .set_marker(marker.take())
                .send()
                .await
                .map_err(|e| call_error("ListUserPolicies", e))?;
            names.extend(page.policy_names().iter().cloned());
            marker = next_marker(page.is_truncated(), page.marker());
            if marker.is_none() {
                break;
            }
        }
        for name in names {
            let got = self
                .client
                .get_user_policy()
                .user_name(user)
                .policy_name(&name)
                .send()
                .await
                .map_err(|e| call_error("GetUserPolicy", e))?;
            out.push(FetchedPolicy {
                document: decode_document(got.policy_document())?,
                name,
                source: PolicySource::Inline,
            });
        }
        // A user's groups grant (and deny) too: leaving them out could grant more
        // than AWS does, when a group carries a Deny.
        for group in self.user_groups(user).await? {
            out.extend(self.group_policies(&group).await?);
        }
        Ok(out)
    }

    async fn user_groups(&self, user: &str) -> Result<Vec<String>, ImportError> {
        let mut groups = Vec::new();
        let mut marker: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let page = self
                .client
                .list_groups_for_user()
                .user_name(user)
                .set_marker(marker.take())
                .send()
                .await
                .map_err(|e| call_error("ListGroupsForUser", e))?;
            groups.extend(page.groups().iter().map(|g| g.group_name().to_owned()));
            marker = next_marker(page.is_truncated(), page.marker());
            if marker.is_none() {
                break;
            }
        }
        Ok(groups)
    }

    async fn group_policies(&self, group: &str) -> Result<Vec<FetchedPolicy>, ImportError> {
        let mut out = Vec::new();
        let mut marker: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let page = self
                .client
                .list_attached_group_policies()
                .group_name(group)
                .set_marker(marker.take())
                .send()
                .await
                .map_err(|e| call_error("ListAttachedGroupPolicies", e))?;
            for attached in page.attached_policies() {
                out.push(
                    self.managed(attached.policy_arn(), attached.policy_name())
                        .await?,
                );
            }
            marker = next_marker(page.is_truncated(), page.marker());
            if marker.is_none() {
                break;
            }
        }
        let mut names = Vec::new();
        for _ in 0..MAX_PAGES {
            let page = self
                .client
                .list_group_policies()
                .group_name(group)
                .set_marker(marker.take())
                .send()
                .await
                .map_err(|e| call_error("ListGroupPolicies", e))?;
            names.extend(page.policy_names().iter().cloned());
            marker = next_marker(page.is_truncated(), page.marker());
            if marker.is_none() {
                break;
            }
        }
        for name in names {
            let got = self
                .client
                .get_group_policy()
                .group_name(group)
                .policy_name(&name)
                .send()
                .await
                .map_err(|e| call_error("GetGroupPolicy", e))?;
            out.push(FetchedPolicy {
                document: decode_document(got.policy_document())?,
                name,
                source: PolicySource::GroupInline {
                    group: group.to_owned(),
                },
            });
        }
        Ok(out)
    }

    /// A managed policy's default version.
    async fn managed(
        &self,
        arn: Option<&str>,
        name: Option<&str>,
    ) -> Result<FetchedPolicy, ImportError> {
        let arn = arn.ok_or_else(|| {
            ImportError::BadAnswer("IAM listed an attached policy without its ARN".to_owned())
        })?;
        let policy = self
            .client
            .get_policy()
            .policy_arn(arn)
            .send()
            .await
            .map_err(|e| call_error("GetPolicy", e))?;
        let version_id = policy
            .policy()
            .and_then(|p| p.default_version_id())
            .ok_or_else(|| {
                ImportError::BadAnswer(format!("IAM gave no default version for policy {arn}"))
            })?
            .to_owned();
        let version = self
            .client
            .get_policy_version()
            .policy_arn(arn)
            .version_id(&version_id)
            .send()
            .await
            .map_err(|e| call_error("GetPolicyVersion", e))?;
        let document = version
            .policy_version()
            .and_then(|v| v.document())
            .ok_or_else(|| {
                ImportError::BadAnswer(format!(
                    "IAM gave no document for policy {arn} version {version_id}"
                ))
            })?;
        let name = match name {
            Some(n) => n.to_owned(),
            // The name is the ARN's last path segment.
            None => arn.rsplit('/').next().unwrap_or(arn).to_owned(),
        };
        Ok(FetchedPolicy {
            name,
            source: PolicySource::Managed {
                arn: arn.to_owned(),
                version_id,
            },
            document: decode_document(document)?,
        })
    }
}

/// The marker of the next page, when there is one.
fn next_marker(truncated: bool, marker: Option<&str>) -> Option<String> {
    marker.filter(|_| truncated).map(str::to_owned)
}

/// The JSON text of a policy document as IAM returns it: URL-encoded (RFC 3986), as
/// the API documents. Some IAM implementations (moto among them) return it plain;
/// a document that already reads as a JSON object is taken as is, since a
/// URL-encoded one starts with `%7B`.
pub fn decode_document(raw: &str) -> Result<String, ImportError> {
    let trimmed = raw.trim();
    if trimmed.starts_with('{') {
        return Ok(trimmed.to_owned());
    }
    percent_encoding::percent_decode_str(trimmed)
        .decode_utf8()
        .map(|text| text.into_owned())
        .map_err(|_| {
            ImportError::BadAnswer("a policy document is not URL-encoded UTF-8".to_owned())
        })
}

/// An SDK error as [`ImportError`], naming the operation and IAM's own error code.
fn call_error<E, R>(operation: &'static str, e: aws_sdk_iam::error::SdkError<E, R>) -> ImportError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    if let Some(service) = e.as_service_error() {
        if service.code() == Some("NoSuchEntity") {
            return ImportError::NotFound(format!(
                "IAM {operation}: {}",
                service.message().unwrap_or("no such entity")
            ));
        }
    }
    ImportError::Call {
        operation,
        detail: DisplayErrorContext(&e).to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_are_url_decoded_unless_already_json() {
        let encoded = "%7B%22Version%22%3A%222012-10-17%22%2C%22Statement%22%3A%5B%5D%7D";
        assert_eq!(
            decode_document(encoded).expect("decodes"),
            r#"{"Version":"2012-10-17","Statement":[]}"#
        );
        // A literal '%' inside a plain document must survive.
        let plain = r#" {"Sid":"100%"} "#;
        assert_eq!(decode_document(plain).expect("plain"), r#"{"Sid":"100%"}"#);
        assert!(matches!(
            decode_document("%FF%FE"),
            Err(ImportError::BadAnswer(_))
        ));
    }

    #[test]
    fn pages_continue_only_when_truncated() {
        assert_eq!(next_marker(true, Some("m")), Some("m".to_owned()));
        assert_eq!(next_marker(false, Some("m")), None);
        assert_eq!(next_marker(true, None), None);
    }

    #[test]
    fn the_secret_is_not_in_debug_output() {
        let config = IamConfig {
            endpoint_url: "http://127.0.0.1:1".to_owned(),
            region: "us-east-1".to_owned(),
            access_key_id: "AKIDEXAMPLE".to_owned(),
            secret_access_key: "very-secret".to_owned(),
            session_token: None,
        };
        assert!(!format!("{config:?}").contains("very-secret"));
    }
}
