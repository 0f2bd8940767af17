//! Temporary credentials: an access key id (`ASIA…`), a secret and a session
//! token that act as a role (STS AssumeRole) or as a user (the AWS-identity
//! login) until they expire. Issuing them ([`issue_session`]), resolving them
//! back to a caller when a request is signed with them ([`caller_for_session`]),
//! and removing expired ones ([`cleanup_loop`]).
//!
//! The secret and the token are sealed under the master key, like long-term
//! secrets: a stolen database alone signs nothing.

use std::time::Duration;

use base64::Engine as _;
use chrono::{DateTime, SubsecRound as _, Utc};
use rand::RngCore as _;
use tokio::sync::watch;

use super::principals::{Caller, CallerError, SessionInfo};
use crate::auth::keys::{self, MasterKey};
use crate::auth::policy::{Policy, PolicyError};
use crate::auth::sigv4::Credential;
use crate::store::{IamEntityRecord, PrincipalKind, RoleRecord, SessionRecord, Store, StoreError};

/// The shortest session STS grants.
pub const MIN_SESSION: Duration = Duration::from_secs(900);
/// A role session's length when the caller names none.
pub const DEFAULT_SESSION: Duration = Duration::from_secs(3600);
/// The longest a role may allow (IAM's MaxSessionDuration ceiling), and the
/// longest user session issued here.
pub const MAX_SESSION: Duration = Duration::from_secs(43_200);
/// How long an expired session's row is kept, so that its key is answered
/// "expired" (ExpiredToken) rather than "unknown" for a while.
pub const EXPIRED_RETENTION: Duration = Duration::from_secs(3600);
/// Time between sweeps of expired sessions.
pub const CLEANUP_INTERVAL: Duration = Duration::from_secs(300);
/// Random bytes in a session token (base64 makes it 128 characters).
const TOKEN_BYTES: usize = 96;
/// A temporary access key id starts so; a long-term one with `AKIA`.
pub const TEMPORARY_KEY_PREFIX: &str = "ASIA";

/// Whose permissions a session carries.
#[derive(Debug, Clone, Copy)]
pub enum SessionPrincipal<'a> {
    /// An assumed role: the caller becomes
    /// `arn:<partition>:sts::<account>:assumed-role/<role>/<session_name>` and may do
    /// what the role's policies allow.
    Role {
        role: &'a RoleRecord,
        session_name: &'a str,
    },
    /// A user acting through short-lived credentials: same ARN and permissions
    /// as the user's long-term keys.
    User {
        user: &'a IamEntityRecord,
        session_name: &'a str,
    },
}

/// Credentials just issued: the only moment the secret and token exist in the clear.
pub struct TemporaryCredentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: String,
    pub expiration: DateTime<Utc>,
    /// The caller ARN requests signed with these credentials act as.
    pub arn: String,
    /// The caller's unique id (`AROA…:<session>` for a role, the user's id for a user).
    pub principal_id: String,
}

impl std::fmt::Debug for TemporaryCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TemporaryCredentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field("session_token", &"<redacted>")
            .field("expiration", &self.expiration)
            .field("arn", &self.arn)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// STS's ValidationError: the duration is outside what the principal allows.
    #[error("The requested DurationSeconds exceeds the MaxSessionDuration set for this role or is below 900 seconds: {requested} is not in [900, {max}].")]
    InvalidDuration { requested: u64, max: u64 },
    /// STS's ValidationError for `RoleSessionName`.
    #[error("1 validation error detected: Value '{0}' at 'roleSessionName' failed to satisfy constraint: Member must satisfy regular expression pattern: [\\w+=,.@-]* and have length between 2 and 64")]
    InvalidSessionName(String),
    /// The session policy cannot be evaluated (MalformedPolicyDocument).
    #[error(transparent)]
    MalformedPolicy(#[from] PolicyError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Whether a role session name is acceptable to STS: 2 to 64 of `[\w+=,.@-]`.
pub fn valid_session_name(name: &str) -> bool {
    (2..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_+=,.@-".contains(&b))
}

/// The ARN a role session acts as. STS drops the role's path.
pub fn assumed_role_arn(role: &RoleRecord, session_name: &str) -> String {
    let partition = role.entity.arn.split(':').nth(1).unwrap_or("aws");
    format!(
        "arn:{partition}:sts::{}:assumed-role/{}/{session_name}",
        role.entity.account_id, role.entity.name
    )
}

fn new_session_token() -> String {
    let mut raw = [0u8; TOKEN_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    base64::engine::general_purpose::STANDARD.encode(raw)
}

/// Whether an access key id names temporary credentials.
pub fn is_temporary_key_id(access_key_id: &str) -> bool {
    access_key_id.starts_with(TEMPORARY_KEY_PREFIX)
}

/// Mints temporary credentials for a role or a user, for AWS login (issue 4)
/// as well as STS AssumeRole. The caller has already decided that `source_arn`
/// may have them (trust policy, identity policy, or an external identity
/// mapped to this principal); this only checks the request's shape:
///
/// - `duration`: 900 s up to the role's `max_session_duration` (a user: up to
///   [`MAX_SESSION`]); otherwise [`SessionError::InvalidDuration`].
/// - `session_name`: STS's `[\w+=,.@-]{2,64}`.
/// - `session_policy`: an IAM policy document; when given, the session may do
///   only what both it and the principal's policies allow.
///
/// The credentials are stored with their secret and token sealed under `master`;
/// requests signed with them are resolved by [`caller_for_session`] until
/// `expiration`, then answered ExpiredToken.
pub async fn issue_session(
    store: &Store,
    master: &MasterKey,
    principal: SessionPrincipal<'_>,
    duration: Duration,
    session_policy: Option<&str>,
    source_arn: &str,
) -> Result<TemporaryCredentials, SessionError> {
    issue_session_at(
        store,
        master,
        principal,
        duration,
        session_policy,
        source_arn,
        Utc::now(),
    )
    .await
}

/// [`issue_session`] at a given time (tests issue sessions in the past).
pub async fn issue_session_at(
    store: &Store,
    master: &MasterKey,
    principal: SessionPrincipal<'_>,
    duration: Duration,
    session_policy: Option<&str>,
    source_arn: &str,
    now: DateTime<Utc>,
) -> Result<TemporaryCredentials, SessionError> {
    let (max, session_name) = match principal {
        SessionPrincipal::Role { role, session_name } => (
            Duration::from_secs(u64::try_from(role.max_session_duration).unwrap_or(3600)),
            session_name,
        ),
        SessionPrincipal::User { session_name, .. } => (MAX_SESSION, session_name),
    };
    if duration < MIN_SESSION || duration > max {
        return Err(SessionError::InvalidDuration {
            requested: duration.as_secs(),
            max: max.as_secs(),
        });
    }
    if !valid_session_name(session_name) {
        return Err(SessionError::InvalidSessionName(session_name.to_owned()));
    }
    if let Some(doc) = session_policy {
        Policy::parse(doc)?;
    }
    let access_key_id = format!(
        "{TEMPORARY_KEY_PREFIX}{}",
        &keys::new_access_key_id()[TEMPORARY_KEY_PREFIX.len()..]
    );
    // Postgres keeps microseconds: the expiration returned is the one stored.
    let now = now.trunc_subsecs(6);
    let secret_access_key = keys::new_secret_access_key();
    let session_token = new_session_token();
    let expiration =
        now + chrono::Duration::from_std(duration).expect("a session of at most 12 h fits chrono");
    let (account_id, role_id, user_id, arn, principal_id) = match principal {
        SessionPrincipal::Role { role, session_name } => (
            role.entity.account_id.clone(),
            Some(role.entity.id.clone()),
            None,
            assumed_role_arn(role, session_name),
            format!("{}:{session_name}", role.entity.id),
        ),
        SessionPrincipal::User { user, .. } => (
            user.account_id.clone(),
            None,
            Some(user.id.clone()),
            user.arn.clone(),
            user.id.clone(),
        ),
    };
    store
        .session_insert(&SessionRecord {
            access_key_id: access_key_id.clone(),
            account_id,
            role_id,
            user_id,
            session_name: session_name.to_owned(),
            secret_sealed: master.seal(&secret_access_key),
            token_sealed: master.seal(&session_token),
            session_policy: session_policy.map(str::to_owned),
            source_arn: source_arn.to_owned(),
            created_at: now,
            expires_at: expiration,
        })
        .await?;
    Ok(TemporaryCredentials {
        access_key_id,
        secret_access_key,
        session_token,
        expiration,
        arn,
        principal_id,
    })
}

fn parse_all(documents: &[String], whose: &str) -> Result<Vec<Policy>, CallerError> {
    documents
        .iter()
        .map(|doc| {
            Policy::parse(doc).map_err(|e| {
                CallerError::Unusable(format!("a stored policy of {whose} no longer parses: {e}"))
            })
        })
        .collect()
}

/// Resolves a temporary access key id to its caller: the assumed role (or user),
/// its policies and tags, the secret and token the request must carry, and when
/// the credentials expire (the HTTP layer refuses expired ones after checking
/// the signature). `None` when there is no such session or its principal is gone.
pub async fn caller_for_session(
    store: &Store,
    master: &MasterKey,
    access_key_id: &str,
) -> Result<Option<Caller>, CallerError> {
    let Some(session) = store.session_get(access_key_id).await? else {
        return Ok(None);
    };
    let open = |sealed: &str| {
        master
            .open(sealed)
            .map_err(|e| CallerError::Unusable(format!("session {access_key_id}: {e}")))
    };
    let credential = Credential {
        secret_access_key: open(&session.secret_sealed)?,
        session_token: Some(open(&session.token_sealed)?),
    };
    let session_policy = match &session.session_policy {
        Some(doc) => Some(parse_all(std::slice::from_ref(doc), access_key_id)?.remove(0)),
        None => None,
    };
    let (identity, policies, tags, role) = if let Some(role_id) = &session.role_id {
        let Some(role) = store.role_get(role_id).await? else {
            return Ok(None);
        };
        let policies = parse_all(
            &store.policy_documents_for_role(role_id).await?,
            &role.entity.arn,
        )?;
        let tags = store
            .principal_tags_list(PrincipalKind::Role, role_id)
            .await?;
        let identity = IamEntityRecord {
            id: format!("{}:{}", role.entity.id, session.session_name),
            account_id: role.entity.account_id.clone(),
            name: role.entity.name.clone(),
            path: role.entity.path.clone(),
            arn: assumed_role_arn(&role, &session.session_name),
            created_at: session.created_at,
        };
        (identity, policies, tags, Some(role.entity))
    } else {
        let user_id = session.user_id.as_deref().unwrap_or_default();
        let Some(user) = store.iam_entity_get(PrincipalKind::User, user_id).await? else {
            return Ok(None);
        };
        let policies = parse_all(&store.policy_documents_for_user(user_id).await?, &user.arn)?;
        let tags = store
            .principal_tags_list(PrincipalKind::User, user_id)
            .await?;
        (user, policies, tags, None)
    };
    Ok(Some(Caller {
        credential,
        user: identity,
        policies,
        tags,
        session: Some(SessionInfo {
            role,
            session_name: session.session_name,
            expires_at: session.expires_at,
            session_policy,
        }),
    }))
}

/// Removes sessions expired more than [`EXPIRED_RETENTION`] ago, every
/// [`CLEANUP_INTERVAL`], until `stop` turns true. Idempotent: several replicas
/// may sweep at once.
pub async fn cleanup_loop(store: Store, mut stop: watch::Receiver<bool>) {
    loop {
        let cutoff = Utc::now()
            - chrono::Duration::from_std(EXPIRED_RETENTION).expect("an hour fits chrono");
        match store.session_delete_expired(cutoff).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(removed = n, "removed expired sessions"),
            Err(e) => tracing::warn!(
                error = format!("{:#}", anyhow::Error::new(e)),
                "removing expired sessions failed"
            ),
        }
        tokio::select! {
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    return;
                }
            }
            _ = tokio::time::sleep(CLEANUP_INTERVAL) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_names_follow_sts() {
        assert!(valid_session_name("ci-run_1@example.com"));
        assert!(valid_session_name("ab"));
        assert!(!valid_session_name("a"));
        assert!(!valid_session_name(&"a".repeat(65)));
        assert!(!valid_session_name("has space"));
        assert!(!valid_session_name("slash/no"));
    }

    #[test]
    fn tokens_are_long_and_distinct() {
        let t = new_session_token();
        assert_eq!(t.len(), 128);
        assert_ne!(t, new_session_token());
        assert!(is_temporary_key_id("ASIAABCDEFGHIJKLMNOP"));
        assert!(!is_temporary_key_id("AKIAABCDEFGHIJKLMNOP"));
    }
}
