//! Logging in with a real AWS identity (issue 4; DESIGN.md decision 7), the way
//! HashiCorp Vault's `aws` auth method does it (its "iam" type):
//!
//! 1. The client signs an `sts:GetCallerIdentity` request with its own AWS
//!    credentials, adding an `X-Mooring-Server-ID` header to the signed headers,
//!    and hands Mooring the method, URL, headers and body instead of sending it.
//! 2. Mooring checks that it is exactly that request, to the configured STS endpoint,
//!    signed for this server ([`check_request`]); the server id stops a request
//!    signed for some other service from being replayed here. It never forwards
//!    anything else, anywhere else (no SSRF).
//! 3. Mooring forwards it verbatim to STS (`mooring_aws_bridge::sts`). STS verifies
//!    the signature and answers who signed it; only the holder of the AWS secret
//!    can have produced a request STS accepts.
//! 4. The ARN, an assumed-role ARN normalised to its role's ARN ([`normalize_arn`]),
//!    is looked up in the mappings table ([`choose_mapping`]) to find the Mooring
//!    role; if the mapping says so, the AWS principal's IAM policies are copied onto
//!    that role first ([`import_policies`]).
//! 5. Mooring issues temporary credentials for the role (`app::sessions`).
//!
//! Everything before the forward is a pure function of the request and the
//! settings, tested by tables below.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::Utc;
use mooring_aws_bridge::iam::{
    AwsPrincipal, FetchedPolicy, IamConfig, ImportError, PolicyReader, PolicySource,
};
use mooring_aws_bridge::sts::{self, CallerIdentity, StsError};
use reqwest::Url;

use super::principals::iam_arn;
use super::sessions::{self, SessionError, SessionPrincipal};
use crate::auth::keys::{self, MasterKey};
use crate::auth::policy::{ArnPattern, Policy};
use crate::auth::sigv4::{parse_authorization_header, parse_credential, parse_signed_headers};
use crate::config::AwsLoginConfig;
use crate::store::{
    AwsLoginMappingRecord, Constraint, ImportedInline, ImportedManaged, Store, StoreError,
    IMPORTED_INLINE_PREFIX, IMPORTED_POLICY_PATH,
};

/// The header that binds a signed request to this server. It must be signed.
pub const SERVER_ID_HEADER: &str = "x-mooring-server-id";
/// The only request body accepted, as botocore and the other SDKs write it (the
/// parameters may come in either order).
const ACTION: &str = "GetCallerIdentity";
const STS_VERSION: &str = "2011-06-15";
/// Bounds on what a login may carry; a real one has about ten short headers.
const MAX_HEADERS: usize = 64;
const MAX_BODY_BYTES: usize = 1024;

/// AWS login's settings, checked: present only when it is turned on.
pub struct AwsLogin {
    sts_url: Url,
    server_id: String,
    region: String,
    sts_client: reqwest::Client,
    /// Reads AWS principals' policies; `None` without `--aws-login-iam-endpoint`.
    iam: Option<PolicyReader>,
}

impl std::fmt::Debug for AwsLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsLogin")
            .field("sts_url", &self.sts_url.as_str())
            .field("region", &self.region)
            .field("policy_import", &self.iam.is_some())
            .finish()
    }
}

impl AwsLogin {
    /// `Ok(None)` when AWS login is off (no STS endpoint); an error names the flag
    /// that is wrong.
    pub fn from_config(config: &AwsLoginConfig) -> Result<Option<AwsLogin>, String> {
        let Some(endpoint) = config.aws_login_sts_endpoint.as_deref() else {
            if config.aws_login_iam_endpoint.is_some() {
                return Err(
                    "--aws-login-iam-endpoint needs --aws-login-sts-endpoint (AWS login is off)"
                        .to_owned(),
                );
            }
            return Ok(None);
        };
        let sts_url = endpoint_url(endpoint, "--aws-login-sts-endpoint")?;
        let server_id = match config.aws_login_server_id.as_deref() {
            Some(id) if valid_server_id(id) => id.to_owned(),
            Some(_) => {
                return Err(
                    "--aws-login-server-id must be 1 to 128 visible ASCII characters \
                     (it travels in an HTTP header)"
                        .to_owned(),
                )
            }
            None => {
                return Err(
                    "--aws-login-server-id is required with --aws-login-sts-endpoint: \
                     without it a request signed for another service could be replayed here"
                        .to_owned(),
                )
            }
        };
        let region = config.aws_login_region.clone();
        if region.is_empty()
            || !region
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(format!(
                "--aws-login-region {region:?} is not a region name"
            ));
        }
        let timeout = Duration::from_secs(config.aws_login_timeout_secs.max(1));
        let iam = match config.aws_login_iam_endpoint.as_deref() {
            None => None,
            Some(endpoint) => {
                let url = endpoint_url(endpoint, "--aws-login-iam-endpoint")?;
                let (Some(access_key_id), Some(secret_access_key)) = (
                    config.aws_login_iam_access_key_id.clone(),
                    config.aws_login_iam_secret_access_key.clone(),
                ) else {
                    return Err(
                        "--aws-login-iam-endpoint needs --aws-login-iam-access-key-id \
                         and MOORING_AWS_LOGIN_IAM_SECRET_ACCESS_KEY (the credentials Mooring \
                         reads policies with)"
                            .to_owned(),
                    );
                };
                Some(PolicyReader::new(&IamConfig {
                    endpoint_url: url.as_str().trim_end_matches('/').to_owned(),
                    region: region.clone(),
                    access_key_id,
                    secret_access_key,
                    session_token: config.aws_login_iam_session_token.clone(),
                }))
            }
        };
        Ok(Some(AwsLogin {
            sts_url,
            server_id,
            region,
            sts_client: sts::client(timeout),
            iam,
        }))
    }

    /// Whether mappings may import policies (an IAM endpoint is configured).
    pub fn can_import(&self) -> bool {
        self.iam.is_some()
    }

    pub fn sts_url(&self) -> &Url {
        &self.sts_url
    }
}

fn valid_server_id(id: &str) -> bool {
    (1..=128).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
}

/// An `http(s)://host[:port][/path]` endpoint, without query, fragment or user info.
fn endpoint_url(text: &str, flag: &str) -> Result<Url, String> {
    let url = Url::parse(text).map_err(|e| format!("{flag} {text:?} is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https")
        || url.host_str().is_none()
        || url.query().is_some()
        || url.fragment().is_some()
        || !url.username().is_empty()
        || url.password().is_some()
    {
        return Err(format!(
            "{flag} {text:?} must be an http(s) URL with a host and no query, fragment or user"
        ));
    }
    Ok(url)
}

/// A login as the client sent it: a signed request, not yet sent.
#[derive(Debug, Clone)]
pub struct LoginRequest {
    pub method: String,
    pub url: String,
    /// In the client's order; a name may repeat.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// How long the Mooring credentials should last; the default is an hour.
    pub duration: Option<Duration>,
}

/// What a successful login hands back.
#[derive(Debug)]
pub struct LoginOutcome {
    pub credentials: sessions::TemporaryCredentials,
    /// Who STS said signed the request.
    pub aws_identity: CallerIdentity,
    /// The Mooring role the credentials act as.
    pub role_arn: String,
    /// Names (in Mooring) of the policies copied from AWS at this login.
    pub imported_policies: Vec<String>,
}

/// Why a login failed. The HTTP layer maps each to an Amazon MQ-style error.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    /// AWS login is off on this server.
    #[error("AWS login is not enabled on this server (see --aws-login-sts-endpoint).")]
    Disabled,
    /// The request is not a well-formed GetCallerIdentity to the configured endpoint.
    #[error("{0}")]
    BadRequest(String),
    /// The proof does not hold: the server id is missing, unsigned or wrong, or STS
    /// refused the signature.
    #[error("{0}")]
    Unauthenticated(String),
    /// The AWS identity is real but may not log in (no mapping, no role, or its
    /// policies cannot be imported safely).
    #[error("{0}")]
    Forbidden(String),
    /// STS or IAM could not be reached or answered nonsense.
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<StoreError> for LoginError {
    fn from(e: StoreError) -> Self {
        LoginError::Internal(anyhow::Error::new(e).context("AWS login: store"))
    }
}

/// Checks that `request` is exactly a signed `sts:GetCallerIdentity` POST to
/// `login.sts_url`, whose signature covers the `X-Mooring-Server-ID` header with
/// this server's id. Returns the URL to forward to (the configured one).
///
/// What is not checked here is checked by STS: the signature itself, the key, the
/// date (STS allows 15 minutes of skew), and the body against the signature.
pub fn check_request(
    request: &LoginRequest,
    sts_url: &Url,
    server_id: &str,
    region: &str,
) -> Result<(), LoginError> {
    let bad = |m: String| Err(LoginError::BadRequest(m));
    if request.method != "POST" {
        return bad(format!(
            "The signed request must be a POST, not {:?}.",
            request.method
        ));
    }
    let url = Url::parse(&request.url)
        .map_err(|e| LoginError::BadRequest(format!("The signed request's URL is invalid: {e}")))?;
    if !same_endpoint(&url, sts_url) {
        return bad(format!(
            "The signed request must be sent to this server's STS endpoint {sts_url}, not {url}."
        ));
    }
    check_body(&request.body)?;
    if request.headers.len() > MAX_HEADERS {
        return bad(format!(
            "The signed request has more than {MAX_HEADERS} headers."
        ));
    }
    for (name, value) in &request.headers {
        if http::HeaderName::from_bytes(name.as_bytes()).is_err()
            || http::HeaderValue::from_str(value).is_err()
        {
            return bad(format!(
                "The signed request's header {name:?} is malformed."
            ));
        }
    }
    let single = |wanted: &str| -> Result<Option<&str>, LoginError> {
        let mut found = request
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(wanted))
            .map(|(_, v)| v.as_str());
        let first = found.next();
        if found.next().is_some() {
            return Err(LoginError::BadRequest(format!(
                "The signed request repeats the {wanted} header."
            )));
        }
        Ok(first)
    };
    if let Some(host) = single("host")? {
        if !host.eq_ignore_ascii_case(&authority(&url)) {
            return bad(format!(
                "The signed request's Host header {host:?} does not name its URL's host."
            ));
        }
    }
    if let Some(content_type) = single("content-type")? {
        let media = content_type.split(';').next().unwrap_or("").trim();
        if !media.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
            return bad(format!(
                "The signed request's Content-Type must be application/x-www-form-urlencoded, \
                 not {content_type:?}."
            ));
        }
    }

    let Some(sent_id) = single(SERVER_ID_HEADER)? else {
        return Err(LoginError::Unauthenticated(
            "The signed request has no X-Mooring-Server-ID header; sign it with this \
             server's id."
                .to_owned(),
        ));
    };
    if sent_id != server_id {
        return Err(LoginError::Unauthenticated(
            "The signed request's X-Mooring-Server-ID does not name this server.".to_owned(),
        ));
    }
    let Some(authorization) = single("authorization")? else {
        return Err(LoginError::Unauthenticated(
            "The signed request has no Authorization header (SigV4 header signing is required)."
                .to_owned(),
        ));
    };
    let parsed = parse_authorization_header(authorization).map_err(|e| {
        LoginError::Unauthenticated(format!(
            "The signed request's Authorization header is malformed: {}",
            e.message()
        ))
    })?;
    let signed = parse_signed_headers(parsed.signed_headers).map_err(|e| {
        LoginError::Unauthenticated(format!(
            "The signed request's SignedHeaders are malformed: {}",
            e.message()
        ))
    })?;
    if !signed.iter().any(|h| h == SERVER_ID_HEADER) {
        return Err(LoginError::Unauthenticated(
            "The signed request's X-Mooring-Server-ID header is not among its SignedHeaders: \
             it must be signed."
                .to_owned(),
        ));
    }
    if !signed.iter().any(|h| h == "host") {
        return Err(LoginError::Unauthenticated(
            "The signed request's SignedHeaders must include host.".to_owned(),
        ));
    }
    let (_, scope) = parse_credential(parsed.credential).map_err(|e| {
        LoginError::Unauthenticated(format!(
            "The signed request's Credential is malformed: {}",
            e.message()
        ))
    })?;
    if scope.service != "sts" || scope.region != region || scope.terminator != "aws4_request" {
        return Err(LoginError::Unauthenticated(format!(
            "The signed request must be signed for service sts in region {region}, not {}/{}.",
            scope.service, scope.region
        )));
    }
    Ok(())
}

/// Same scheme, host, port and path (an empty path is `/`), no query, no fragment,
/// no user info: anything else could point the forward somewhere unchecked.
fn same_endpoint(url: &Url, configured: &Url) -> bool {
    let path = |u: &Url| {
        let p = u.path();
        if p.is_empty() {
            "/".to_owned()
        } else {
            p.to_owned()
        }
    };
    url.scheme() == configured.scheme()
        && url.host_str().map(str::to_ascii_lowercase)
            == configured.host_str().map(str::to_ascii_lowercase)
        && url.port_or_known_default() == configured.port_or_known_default()
        && path(url) == path(configured)
        && url.query().is_none()
        && url.fragment().is_none()
        && url.username().is_empty()
        && url.password().is_none()
}

/// `host[:port]` as an HTTP client writes it in `Host` (no default port).
fn authority(url: &Url) -> String {
    let host = url.host_str().unwrap_or_default();
    match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    }
}

/// The body must be the two parameters of GetCallerIdentity and nothing else: any
/// other action (AssumeRole, say) would make Mooring act with the client's
/// credentials, or read a different answer.
fn check_body(body: &[u8]) -> Result<(), LoginError> {
    let bad = || {
        LoginError::BadRequest(format!(
            "The signed request's body must be exactly Action={ACTION}&Version={STS_VERSION}."
        ))
    };
    if body.len() > MAX_BODY_BYTES {
        return Err(bad());
    }
    let text = std::str::from_utf8(body).map_err(|_| bad())?;
    let mut seen = BTreeSet::new();
    for pair in text.split('&') {
        let (key, value) = pair.split_once('=').ok_or_else(bad)?;
        let (key, value) = (
            form_decode(key).ok_or_else(bad)?,
            form_decode(value).ok_or_else(bad)?,
        );
        let ok = match key.as_str() {
            "Action" => value == ACTION,
            "Version" => value == STS_VERSION,
            _ => false,
        };
        if !ok || !seen.insert(key) {
            return Err(bad());
        }
    }
    if seen.len() != 2 {
        return Err(bad());
    }
    Ok(())
}

/// `application/x-www-form-urlencoded` decoding of one key or value.
fn form_decode(text: &str) -> Option<String> {
    let plus_as_space = text.replace('+', " ");
    percent_encoding::percent_decode_str(&plus_as_space)
        .decode_utf8()
        .ok()
        .map(|s| s.into_owned())
}

/// The ARN mappings are matched against: an assumed-role session
/// (`arn:aws:sts::123456789012:assumed-role/Role/session`) stands for its role
/// (`arn:aws:iam::123456789012:role/Role`; STS drops the role's path); every other
/// ARN is kept. `None` for text that is not a principal ARN.
pub fn normalize_arn(arn: &str) -> Option<String> {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    let [prefix, partition, service, _region, account, resource] = parts[..] else {
        return None;
    };
    if prefix != "arn" || partition.is_empty() || account.is_empty() || resource.is_empty() {
        return None;
    }
    if service == "sts" {
        if let Some(rest) = resource.strip_prefix("assumed-role/") {
            let (role, session) = rest.split_once('/')?;
            if role.is_empty() || session.is_empty() {
                return None;
            }
            return Some(format!("arn:{partition}:iam::{account}:role/{role}"));
        }
    }
    Some(arn.to_owned())
}

/// The AWS role or user an ARN (normalised) names, for reading its policies.
pub fn aws_principal(normalized_arn: &str) -> Option<AwsPrincipal> {
    let parts: Vec<&str> = normalized_arn.splitn(6, ':').collect();
    let [_, _, service, _, _, resource] = parts[..] else {
        return None;
    };
    if service != "iam" {
        return None;
    }
    let (kind, path_and_name) = resource.split_once('/')?;
    let name = path_and_name.rsplit('/').next()?.to_owned();
    if name.is_empty() {
        return None;
    }
    match kind {
        "role" => Some(AwsPrincipal::Role { name }),
        "user" => Some(AwsPrincipal::User { name }),
        _ => None,
    }
}

/// Refuses a mapping pattern that would trust more than its writer can mean:
/// it must be a principal ARN (six components), its account must be written out
/// (a wildcard there would let any AWS account in), and a role pattern must not
/// carry a path (the assumed-role ARNs logins arrive with have none). An importing
/// mapping must name exactly one principal, a role or a user.
pub fn validate_pattern(pattern: &str, import: bool) -> Result<(), String> {
    let parts: Vec<&str> = pattern.splitn(6, ':').collect();
    let [prefix, partition, service, region, account, resource] = parts[..] else {
        return Err(format!(
            "{pattern:?} is not an ARN: write arn:<partition>:iam::<account>:role/<name> \
             or .../user/<name>"
        ));
    };
    if prefix != "arn" || partition.is_empty() || partition.contains(['*', '?']) {
        return Err(format!("{pattern:?} must start with arn:<partition>:"));
    }
    if !matches!(service, "iam" | "sts") || !region.is_empty() {
        return Err(format!(
            "{pattern:?} must name an IAM principal (arn:<partition>:iam::<account>:...)"
        ));
    }
    if account.len() != 12 || !account.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "{pattern:?} must name one AWS account (12 digits, no wildcard)"
        ));
    }
    if resource.is_empty() {
        return Err(format!("{pattern:?} names no principal"));
    }
    if let Some(rest) = resource.strip_prefix("role/") {
        if rest.contains('/') {
            return Err(format!(
                "{pattern:?} has a role path: logins by an assumed role arrive as \
                 arn:<partition>:iam::<account>:role/<name> (STS drops the path); write it so"
            ));
        }
    }
    if import {
        if pattern.contains(['*', '?']) {
            return Err(format!(
                "{pattern:?} has a wildcard: a mapping that imports policies must name one \
                 AWS principal exactly"
            ));
        }
        if aws_principal(pattern).is_none() {
            return Err(format!(
                "{pattern:?} is not an IAM role or user: only their policies can be imported"
            ));
        }
    }
    Ok(())
}

/// The mapping for `normalized_arn`: an exact pattern wins; among wildcard
/// patterns the one with the most literal characters (the most specific), then
/// the first by pattern text, so the choice never depends on table order.
pub fn choose_mapping<'a>(
    normalized_arn: &str,
    mappings: &'a [AwsLoginMappingRecord],
) -> Option<&'a AwsLoginMappingRecord> {
    let literal_chars = |p: &str| p.chars().filter(|c| !matches!(c, '*' | '?')).count();
    mappings
        .iter()
        .filter(|m| ArnPattern::new(&m.arn_pattern).matches(normalized_arn))
        .min_by(|a, b| {
            let exact = |m: &AwsLoginMappingRecord| m.arn_pattern == normalized_arn;
            exact(b)
                .cmp(&exact(a))
                .then(literal_chars(&b.arn_pattern).cmp(&literal_chars(&a.arn_pattern)))
                .then(a.arn_pattern.cmp(&b.arn_pattern))
        })
}

/// A Mooring session name for an AWS identity: `aws-` and the last part of its ARN
/// (the user name or the assumed-role session name), in STS's `[\w+=,.@-]{2,64}`.
pub fn session_name(aws_arn: &str) -> String {
    let last = aws_arn.rsplit(['/', ':']).next().unwrap_or_default();
    let cleaned: String = last
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_+=,.@-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    let mut name = format!("aws-{cleaned}");
    name.truncate(64);
    name
}

/// Logs an AWS identity in: checks and forwards the signed request, maps the
/// identity to a Mooring role, imports its policies when the mapping says so, and
/// issues temporary credentials for the role.
pub async fn login(
    login: Option<&AwsLogin>,
    store: &Store,
    master: &MasterKey,
    partition: &str,
    request: LoginRequest,
) -> Result<LoginOutcome, LoginError> {
    let login = login.ok_or(LoginError::Disabled)?;
    check_request(&request, &login.sts_url, &login.server_id, &login.region)?;

    let identity = sts::get_caller_identity(
        &login.sts_client,
        login.sts_url.clone(),
        &request.headers,
        request.body,
    )
    .await
    .map_err(|e| match e {
        StsError::Unreachable(cause) => LoginError::Unavailable(format!(
            "AWS login could not reach STS at {}: {cause}",
            login.sts_url
        )),
        StsError::BadAnswer(what) => LoginError::Unavailable(format!(
            "AWS login could not read STS's answer from {}: {what}",
            login.sts_url
        )),
        StsError::Rejected {
            status,
            code,
            message,
        } if status < 500 => LoginError::Unauthenticated(format!(
            "STS refused the signed request: {code}: {message}"
        )),
        e @ StsError::Rejected { .. } => LoginError::Unavailable(format!("AWS login: {e}")),
    })?;

    let normalized = normalize_arn(&identity.arn).ok_or_else(|| {
        LoginError::Unavailable(format!(
            "STS answered an ARN Mooring cannot read: {:?}",
            identity.arn
        ))
    })?;
    // The ARN's account must be the one STS reports: both come from STS, so a
    // mismatch means the answer is not to be trusted.
    if normalized.split(':').nth(4) != Some(identity.account.as_str()) {
        return Err(LoginError::Unavailable(format!(
            "STS answered ARN {} for account {}: inconsistent",
            identity.arn, identity.account
        )));
    }
    let mappings = store.aws_login_mapping_list().await?;
    let Some(mapping) = choose_mapping(&normalized, &mappings).cloned() else {
        tracing::info!(aws_arn = %identity.arn, "AWS login refused: no mapping");
        return Err(LoginError::Forbidden(format!(
            "AWS identity {} is not mapped to any Mooring role.",
            identity.arn
        )));
    };
    let Some(role) = store
        .role_get_by_name(&mapping.account_id, &mapping.role_name)
        .await?
    else {
        return Err(LoginError::Forbidden(format!(
            "AWS identity {} maps to Mooring role {}, which does not exist.",
            identity.arn, mapping.role_name
        )));
    };

    let imported_policies = if mapping.import_policies {
        let reader = login.iam.as_ref().ok_or_else(|| {
            LoginError::Forbidden(format!(
                "The mapping of {} imports policies, but this server has no \
                 --aws-login-iam-endpoint to read them from.",
                mapping.arn_pattern
            ))
        })?;
        let principal = aws_principal(&normalized).ok_or_else(|| {
            LoginError::Forbidden(format!(
                "The policies of {} cannot be imported: it is not an IAM role or user.",
                identity.arn
            ))
        })?;
        import_policies(
            reader,
            store,
            partition,
            &role.entity.account_id,
            &role.entity.id,
            &principal,
        )
        .await?
    } else {
        Vec::new()
    };

    let duration = request.duration.unwrap_or(sessions::DEFAULT_SESSION);
    let session_name = session_name(&identity.arn);
    let credentials = sessions::issue_session(
        store,
        master,
        SessionPrincipal::Role {
            role: &role,
            session_name: &session_name,
        },
        duration,
        None,
        &identity.arn,
    )
    .await
    .map_err(|e| match e {
        e @ (SessionError::InvalidDuration { .. } | SessionError::InvalidSessionName(_)) => {
            LoginError::BadRequest(e.to_string())
        }
        SessionError::MalformedPolicy(e) => {
            LoginError::Internal(anyhow::Error::new(e).context("AWS login: no session policy"))
        }
        SessionError::Store(e) => e.into(),
    })?;
    tracing::info!(
        aws_arn = %identity.arn,
        role = %role.entity.arn,
        access_key_id = %credentials.access_key_id,
        imported = imported_policies.len(),
        "AWS login"
    );
    Ok(LoginOutcome {
        credentials,
        aws_identity: identity,
        role_arn: role.entity.arn.clone(),
        imported_policies,
    })
}

/// Reads `principal`'s policies from IAM, validates every one, and replaces the
/// Mooring role's imported policies with them, all or nothing. One document that
/// Mooring cannot evaluate refuses the whole login: leaving out a policy could
/// leave out a Deny, and grant more than AWS does.
async fn import_policies(
    reader: &PolicyReader,
    store: &Store,
    partition: &str,
    account_id: &str,
    role_id: &str,
    principal: &AwsPrincipal,
) -> Result<Vec<String>, LoginError> {
    let fetched = reader.policies_of(principal).await.map_err(|e| match e {
        e @ (ImportError::NotFound(_) | ImportError::Unsupported(_)) => LoginError::Forbidden(
            format!("The AWS principal's policies cannot be imported: {e}"),
        ),
        e @ (ImportError::Call { .. } | ImportError::BadAnswer(_)) => LoginError::Unavailable(
            format!("Importing the AWS principal's policies failed: {e}"),
        ),
    })?;
    let (managed, inline) = plan_import(&fetched, partition, account_id)?;
    let names: Vec<String> = managed
        .iter()
        .map(|m| m.name.clone())
        .chain(inline.iter().map(|i| i.name.clone()))
        .collect();
    store
        .aws_import_replace(account_id, role_id, &managed, &inline)
        .await
        .map_err(|e| match e {
            StoreError::Constraint(Constraint::Other | Constraint::IamEntityName) => {
                LoginError::Forbidden(
                    "An imported policy's name is taken by a managed policy that was not \
                     imported; rename that policy."
                        .to_owned(),
                )
            }
            other => other.into(),
        })?;
    Ok(names)
}

/// Names and validates what was fetched (pure). Managed policies become
/// `aws-import.<aws account>.<name>` under [`IMPORTED_POLICY_PATH`] (shared by
/// every role that imports them); inline ones `aws-import.inline.<name>` or
/// `aws-import.group.<group>.<name>` on the role.
pub fn plan_import(
    fetched: &[FetchedPolicy],
    partition: &str,
    account_id: &str,
) -> Result<(Vec<ImportedManaged>, Vec<ImportedInline>), LoginError> {
    let mut managed: Vec<ImportedManaged> = Vec::new();
    let mut inline: Vec<ImportedInline> = Vec::new();
    for policy in fetched {
        Policy::parse(&policy.document).map_err(|e| {
            LoginError::Forbidden(format!(
                "AWS policy {} cannot be imported: {e}",
                describe(policy)
            ))
        })?;
        match &policy.source {
            PolicySource::Managed { arn, .. } => {
                let owner = arn.split(':').nth(4).unwrap_or("aws");
                let owner = if owner.is_empty() { "aws" } else { owner };
                let name = format!("{IMPORTED_INLINE_PREFIX}{owner}.{}", policy.name);
                if managed.iter().any(|m| m.name == name) {
                    continue; // attached to the user and to one of its groups
                }
                managed.push(ImportedManaged {
                    arn: iam_arn(partition, account_id, "policy", IMPORTED_POLICY_PATH, &name),
                    id: keys::new_entity_id("ANPA"),
                    name,
                    document: policy.document.clone(),
                });
            }
            PolicySource::Inline | PolicySource::GroupInline { .. } => {
                let name = match &policy.source {
                    PolicySource::GroupInline { group } => {
                        format!("{IMPORTED_INLINE_PREFIX}group.{group}.{}", policy.name)
                    }
                    _ => format!("{IMPORTED_INLINE_PREFIX}inline.{}", policy.name),
                };
                if inline.iter().any(|i| i.name == name) {
                    return Err(LoginError::Forbidden(format!(
                        "Two AWS inline policies would both be imported as {name}."
                    )));
                }
                inline.push(ImportedInline {
                    name,
                    document: policy.document.clone(),
                });
            }
        }
    }
    Ok((managed, inline))
}

fn describe(policy: &FetchedPolicy) -> String {
    match &policy.source {
        PolicySource::Managed { arn, version_id } => format!("{arn} ({version_id})"),
        PolicySource::Inline => format!("{} (inline)", policy.name),
        PolicySource::GroupInline { group } => {
            format!("{} (inline, of group {group})", policy.name)
        }
    }
}

/// Why a mapping could not be written.
#[derive(Debug, thiserror::Error)]
pub enum MappingError {
    #[error("{0}")]
    Invalid(String),
    #[error("The Mooring role {0} does not exist.")]
    NoSuchRole(String),
    #[error("The Mooring role {0} already imports the policies of another AWS principal; a role imports from one only.")]
    ImportTaken(String),
    #[error("There is no AWS login mapping for {0}.")]
    NotFound(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Creates or replaces the mapping of `arn_pattern` to Mooring role `role_name` of
/// `account_id`. The role must exist; an importing mapping needs an IAM endpoint.
pub async fn mapping_put(
    login: Option<&AwsLogin>,
    store: &Store,
    account_id: &str,
    arn_pattern: &str,
    role_name: &str,
    import_policies: bool,
) -> Result<AwsLoginMappingRecord, MappingError> {
    validate_pattern(arn_pattern, import_policies).map_err(MappingError::Invalid)?;
    if import_policies && !login.is_some_and(AwsLogin::can_import) {
        return Err(MappingError::Invalid(
            "ImportPolicies needs AWS login with --aws-login-iam-endpoint on this server."
                .to_owned(),
        ));
    }
    if store
        .role_get_by_name(account_id, role_name)
        .await?
        .is_none()
    {
        return Err(MappingError::NoSuchRole(role_name.to_owned()));
    }
    let record = AwsLoginMappingRecord {
        arn_pattern: arn_pattern.to_owned(),
        account_id: account_id.to_owned(),
        role_name: role_name.to_owned(),
        import_policies,
        created_at: Utc::now(),
    };
    store
        .aws_login_mapping_put(&record)
        .await
        .map_err(|e| match e {
            StoreError::Constraint(_) => MappingError::ImportTaken(role_name.to_owned()),
            other => other.into(),
        })?;
    Ok(record)
}

pub async fn mapping_delete(store: &Store, arn_pattern: &str) -> Result<(), MappingError> {
    store
        .aws_login_mapping_delete(arn_pattern)
        .await
        .map_err(|e| match e {
            StoreError::NotFound(_) => MappingError::NotFound(arn_pattern.to_owned()),
            other => other.into(),
        })
}

/// The mappings of one Mooring account.
pub async fn mapping_list(
    store: &Store,
    account_id: &str,
) -> Result<Vec<AwsLoginMappingRecord>, StoreError> {
    let mut all = store.aws_login_mapping_list().await?;
    all.retain(|m| m.account_id == account_id);
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVER_ID: &str = "mooring.example";
    const AUTH: &str =
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261128/us-east-1/sts/aws4_request, \
         SignedHeaders=content-type;host;x-amz-date;x-mooring-server-id, Signature=abcd";

    fn sts_url() -> Url {
        Url::parse("http://127.0.0.1:45666/").expect("url")
    }

    fn request() -> LoginRequest {
        LoginRequest {
            method: "POST".to_owned(),
            url: "http://127.0.0.1:45666/".to_owned(),
            headers: vec![
                (
                    "Content-Type".to_owned(),
                    "application/x-www-form-urlencoded; charset=utf-8".to_owned(),
                ),
                ("Host".to_owned(), "127.0.0.1:45666".to_owned()),
                ("X-Amz-Date".to_owned(), "20261128T060000Z".to_owned()),
                ("X-Mooring-Server-ID".to_owned(), SERVER_ID.to_owned()),
                ("Authorization".to_owned(), AUTH.to_owned()),
            ],
            body: b"Action=GetCallerIdentity&Version=2011-06-15".to_vec(),
            duration: None,
        }
    }

    fn check(r: &LoginRequest) -> Result<(), LoginError> {
        check_request(r, &sts_url(), SERVER_ID, "us-east-1")
    }

    fn set_header(r: &mut LoginRequest, name: &str, value: Option<&str>) {
        r.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        if let Some(v) = value {
            r.headers.push((name.to_owned(), v.to_owned()));
        }
    }

    #[test]
    fn a_well_formed_login_passes() {
        check(&request()).expect("the reference request is acceptable");
        // Parameter order and an absent Host header (the forward sets it) are fine.
        let mut r = request();
        r.body = b"Version=2011-06-15&Action=GetCallerIdentity".to_vec();
        set_header(&mut r, "host", None);
        check(&r).expect("reordered body");
        // A URL without the trailing slash names the same endpoint.
        r.url = "http://127.0.0.1:45666".to_owned();
        check(&r).expect("no trailing slash");
    }

    #[test]
    fn only_the_configured_endpoint_is_accepted() {
        for url in [
            "http://169.254.169.254/",
            "http://127.0.0.1:45667/",
            "https://127.0.0.1:45666/",
            "http://127.0.0.1:45666/other",
            "http://127.0.0.1:45666/?Action=AssumeRole",
            "http://user@127.0.0.1:45666/",
            "http://127.0.0.1:45666/#x",
            "not a url",
        ] {
            let mut r = request();
            r.url = url.to_owned();
            assert!(
                matches!(check(&r), Err(LoginError::BadRequest(_))),
                "{url} must be refused"
            );
        }
        let mut r = request();
        set_header(&mut r, "Host", Some("evil.example"));
        assert!(matches!(check(&r), Err(LoginError::BadRequest(m)) if m.contains("Host")));
    }

    #[test]
    fn only_get_caller_identity_is_accepted() {
        for body in [
            "Action=AssumeRole&Version=2011-06-15",
            "Action=GetCallerIdentity",
            "Action=GetCallerIdentity&Version=2011-06-15&RoleArn=x",
            "Action=GetCallerIdentity&Action=GetCallerIdentity&Version=2011-06-15",
            "Action=GetCallerIdentity&Version=2010-05-08",
            "",
            "garbage",
        ] {
            let mut r = request();
            r.body = body.as_bytes().to_vec();
            assert!(
                matches!(check(&r), Err(LoginError::BadRequest(_))),
                "{body:?} must be refused"
            );
        }
        let mut r = request();
        r.method = "GET".to_owned();
        assert!(matches!(check(&r), Err(LoginError::BadRequest(_))));
        let mut r = request();
        set_header(&mut r, "Content-Type", Some("application/json"));
        assert!(matches!(check(&r), Err(LoginError::BadRequest(_))));
        // Percent-encoded parameters decode to the same thing.
        let mut r = request();
        r.body = b"Action=GetCaller%49dentity&Version=2011-06-15".to_vec();
        check(&r).expect("percent-encoded body");
    }

    #[test]
    fn the_server_id_must_be_present_right_and_signed() {
        let mut r = request();
        set_header(&mut r, "X-Mooring-Server-ID", None);
        assert!(
            matches!(check(&r), Err(LoginError::Unauthenticated(m)) if m.contains("no X-Mooring-Server-ID"))
        );

        let mut r = request();
        set_header(&mut r, "x-mooring-server-id", Some("someone.else"));
        assert!(
            matches!(check(&r), Err(LoginError::Unauthenticated(m)) if m.contains("does not name"))
        );

        let mut r = request();
        r.headers
            .push(("X-Mooring-Server-Id".to_owned(), SERVER_ID.to_owned()));
        assert!(matches!(check(&r), Err(LoginError::BadRequest(m)) if m.contains("repeats")));

        let mut r = request();
        set_header(
            &mut r,
            "Authorization",
            Some(&AUTH.replace(";x-mooring-server-id", "")),
        );
        assert!(
            matches!(check(&r), Err(LoginError::Unauthenticated(m)) if m.contains("not among its SignedHeaders"))
        );

        let mut r = request();
        set_header(
            &mut r,
            "Authorization",
            Some(&AUTH.replace("content-type;host;", "content-type;")),
        );
        assert!(matches!(check(&r), Err(LoginError::Unauthenticated(m)) if m.contains("host")));

        let mut r = request();
        set_header(&mut r, "Authorization", None);
        assert!(matches!(check(&r), Err(LoginError::Unauthenticated(_))));

        let mut r = request();
        set_header(&mut r, "Authorization", Some("Basic dXNlcjpwYXNz"));
        assert!(matches!(check(&r), Err(LoginError::Unauthenticated(_))));
    }

    #[test]
    fn the_signature_must_be_for_sts_in_the_region() {
        for (from, to) in [("/sts/", "/iam/"), ("/us-east-1/", "/eu-west-1/")] {
            let mut r = request();
            set_header(&mut r, "Authorization", Some(&AUTH.replace(from, to)));
            assert!(
                matches!(check(&r), Err(LoginError::Unauthenticated(m)) if m.contains("service sts")),
                "{to}"
            );
        }
    }

    #[test]
    fn malformed_headers_are_refused() {
        let mut r = request();
        r.headers
            .push(("X-Bad".to_owned(), "a\r\nInjected: 1".to_owned()));
        assert!(matches!(check(&r), Err(LoginError::BadRequest(_))));
        let mut r = request();
        r.headers.push(("bad name".to_owned(), "v".to_owned()));
        assert!(matches!(check(&r), Err(LoginError::BadRequest(_))));
        let mut r = request();
        for i in 0..MAX_HEADERS {
            r.headers.push((format!("x-extra-{i}"), "v".to_owned()));
        }
        assert!(matches!(check(&r), Err(LoginError::BadRequest(_))));
    }

    #[test]
    fn assumed_roles_normalize_to_their_role() {
        let cases = [
            (
                "arn:aws:sts::123456789012:assumed-role/Readers/alice",
                Some("arn:aws:iam::123456789012:role/Readers"),
            ),
            (
                "arn:aws:sts::123456789012:assumed-role/Readers/alice/extra",
                Some("arn:aws:iam::123456789012:role/Readers"),
            ),
            (
                "arn:aws-cn:sts::123456789012:assumed-role/R/s",
                Some("arn:aws-cn:iam::123456789012:role/R"),
            ),
            (
                "arn:aws:iam::123456789012:user/team/bob",
                Some("arn:aws:iam::123456789012:user/team/bob"),
            ),
            (
                "arn:aws:sts::123456789012:federated-user/carol",
                Some("arn:aws:sts::123456789012:federated-user/carol"),
            ),
            (
                "arn:aws:iam::123456789012:root",
                Some("arn:aws:iam::123456789012:root"),
            ),
            ("arn:aws:sts::123456789012:assumed-role/NoSession", None),
            ("arn:aws:sts::123456789012:assumed-role//s", None),
            ("not-an-arn", None),
            ("arn:aws:iam::123456789012", None),
        ];
        for (arn, want) in cases {
            assert_eq!(normalize_arn(arn).as_deref(), want, "{arn}");
        }
    }

    #[test]
    fn principals_to_import_from() {
        assert_eq!(
            aws_principal("arn:aws:iam::123456789012:role/Readers"),
            Some(AwsPrincipal::Role {
                name: "Readers".to_owned()
            })
        );
        assert_eq!(
            aws_principal("arn:aws:iam::123456789012:user/team/bob"),
            Some(AwsPrincipal::User {
                name: "bob".to_owned()
            })
        );
        assert_eq!(aws_principal("arn:aws:iam::123456789012:root"), None);
        assert_eq!(
            aws_principal("arn:aws:sts::123456789012:federated-user/c"),
            None
        );
    }

    fn mapping(pattern: &str, role: &str) -> AwsLoginMappingRecord {
        AwsLoginMappingRecord {
            arn_pattern: pattern.to_owned(),
            account_id: "000000000000".to_owned(),
            role_name: role.to_owned(),
            import_policies: false,
            created_at: Utc::now(),
        }
    }

    #[test]
    fn the_most_specific_mapping_wins() {
        let table = vec![
            mapping("arn:aws:iam::123456789012:role/*", "any-role"),
            mapping("arn:aws:iam::123456789012:role/Read*", "readers"),
            mapping("arn:aws:iam::123456789012:role/Readers", "exact"),
            mapping("arn:aws:iam::123456789012:user/*", "users"),
            mapping("arn:aws:iam::210987654321:role/*", "other-account"),
        ];
        let pick = |arn: &str| choose_mapping(arn, &table).map(|m| m.role_name.as_str());
        assert_eq!(
            pick("arn:aws:iam::123456789012:role/Readers"),
            Some("exact")
        );
        assert_eq!(
            pick("arn:aws:iam::123456789012:role/ReadOnly"),
            Some("readers")
        );
        assert_eq!(
            pick("arn:aws:iam::123456789012:role/Admin"),
            Some("any-role")
        );
        assert_eq!(
            pick("arn:aws:iam::123456789012:user/team/bob"),
            Some("users")
        );
        assert_eq!(
            pick("arn:aws:iam::210987654321:role/Readers"),
            Some("other-account")
        );
        // Wildcards stay within their ARN component: no other account matches.
        assert_eq!(pick("arn:aws:iam::999999999999:role/Readers"), None);
        assert_eq!(pick("arn:aws:iam::123456789012:root"), None);
        // The order of the table does not matter.
        let mut reversed = table.clone();
        reversed.reverse();
        assert_eq!(
            choose_mapping("arn:aws:iam::123456789012:role/ReadOnly", &reversed)
                .map(|m| m.role_name.as_str()),
            Some("readers")
        );
    }

    #[test]
    fn patterns_that_trust_too_much_are_refused() {
        let ok = [
            ("arn:aws:iam::123456789012:role/Readers", true),
            ("arn:aws:iam::123456789012:user/team/bob", true),
            ("arn:aws:iam::123456789012:role/*", false),
            ("arn:aws:iam::123456789012:user/*", false),
            ("arn:aws:sts::123456789012:federated-user/carol", false),
        ];
        for (p, import) in ok {
            validate_pattern(p, import).unwrap_or_else(|e| panic!("{p}: {e}"));
        }
        let refused = [
            ("*", false),
            ("arn:aws:iam::*:role/Readers", false),
            ("arn:aws:iam::12345678901?:role/Readers", false),
            ("arn:*:iam::123456789012:role/Readers", false),
            ("arn:aws:mq:us-east-1:123456789012:broker:x", false),
            ("arn:aws:iam::123456789012:", false),
            ("arn:aws:iam::123456789012:role/team/Readers", false),
            ("arn:aws:iam::123456789012:role/*", true),
            ("arn:aws:iam::123456789012:root", true),
            ("arn:aws:sts::123456789012:federated-user/carol", true),
        ];
        for (p, import) in refused {
            assert!(
                validate_pattern(p, import).is_err(),
                "{p} (import {import})"
            );
        }
    }

    #[test]
    fn session_names_fit_sts_rules() {
        assert_eq!(session_name("arn:aws:iam::1:user/team/bob"), "aws-bob");
        assert_eq!(
            session_name("arn:aws:sts::1:assumed-role/R/botocore-session-1"),
            "aws-botocore-session-1"
        );
        assert_eq!(session_name("arn:aws:iam::1:root"), "aws-root");
        let long = format!("arn:aws:iam::1:user/{}", "x".repeat(100));
        assert_eq!(session_name(&long).len(), 64);
        assert_eq!(session_name("arn:aws:iam::1:user/a b"), "aws-a-b");
        assert!(sessions::valid_session_name(&session_name(
            "arn:aws:iam::1:user/a b"
        )));
    }

    fn fetched(name: &str, source: PolicySource, document: &str) -> FetchedPolicy {
        FetchedPolicy {
            name: name.to_owned(),
            source,
            document: document.to_owned(),
        }
    }

    const ALLOW: &str = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"mq:List*","Resource":"*"}]}"#;

    #[test]
    fn imports_are_named_after_their_source_and_validated() {
        let policies = vec![
            fetched(
                "MqRead",
                PolicySource::Managed {
                    arn: "arn:aws:iam::123456789012:policy/MqRead".to_owned(),
                    version_id: "v1".to_owned(),
                },
                ALLOW,
            ),
            fetched(
                "AmazonMQReadOnlyAccess",
                PolicySource::Managed {
                    arn: "arn:aws:iam::aws:policy/AmazonMQReadOnlyAccess".to_owned(),
                    version_id: "v3".to_owned(),
                },
                ALLOW,
            ),
            fetched("Extra", PolicySource::Inline, ALLOW),
            fetched(
                "Extra",
                PolicySource::GroupInline {
                    group: "ops".to_owned(),
                },
                ALLOW,
            ),
        ];
        let (managed, inline) = plan_import(&policies, "aws", "000000000000").expect("valid");
        let names: Vec<&str> = managed.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "aws-import.123456789012.MqRead",
                "aws-import.aws.AmazonMQReadOnlyAccess"
            ]
        );
        assert_eq!(
            managed[0].arn,
            "arn:aws:iam::000000000000:policy/aws-import/aws-import.123456789012.MqRead"
        );
        let names: Vec<&str> = inline.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(
            names,
            ["aws-import.inline.Extra", "aws-import.group.ops.Extra"]
        );

        // One policy Mooring cannot evaluate refuses the whole import.
        let mut bad = policies.clone();
        bad.push(fetched(
            "Broken",
            PolicySource::Inline,
            r#"{"Statement":"nope"}"#,
        ));
        assert!(matches!(
            plan_import(&bad, "aws", "000000000000"),
            Err(LoginError::Forbidden(m)) if m.contains("Broken")
        ));
    }
}
