//! IAM principals: the master key that seals their secrets, the first-start
//! bootstrap of the root account's admin credentials, access keys, and
//! resolving the caller behind an access key id for authentication.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use chrono::Utc;

use crate::auth::actions::MqOperation;
use crate::auth::cache::{self as auth_cache, PrincipalCache};
use crate::auth::keys::{self, MasterKey};
use crate::auth::policy::{Policy, PolicyIndex};
use crate::auth::sigv4::{Credential, SigningKeyCache};
use crate::store::{AccessKeyRecord, IamEntityRecord, KeyInsert, PrincipalKind, Store, StoreError};

/// The IAM user the bootstrap creates in the root account.
pub const ADMIN_USER: &str = "mooring-admin";
/// Its inline policy: everything, everywhere.
pub const ADMIN_POLICY_NAME: &str = "AdministratorAccess";
const ADMIN_POLICY: &str =
    r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}"#;
/// Access key status IAM reports for a usable key.
pub const KEY_ACTIVE: &str = "Active";

/// Loads the master key from `explicit` (which must exist), or from
/// `<data_dir>/master.key`, generating that file (mode 0600) when absent.
pub fn load_master_key(explicit: Option<&Path>, data_dir: &Path) -> anyhow::Result<MasterKey> {
    let path: PathBuf = match explicit {
        Some(p) => p.to_owned(),
        None => data_dir.join("master.key"),
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => MasterKey::from_hex(&text).with_context(|| {
            format!(
                "{} must hold 64 hex characters (a 32-byte key)",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && explicit.is_none() => {
            let (key, text) = MasterKey::generate();
            write_private_new(&path, &format!("{text}\n"))?;
            tracing::info!(path = %path.display(), "generated a new master key for stored secrets");
            Ok(key)
        }
        Err(e) => Err(e).with_context(|| format!("reading the master key {}", path.display())),
    }
}

/// Creates `path` with mode 0600 and writes `text`; refuses to replace an existing
/// file, so two starts racing never leave a key that differs from the one in use.
fn write_private_new(path: &Path, text: &str) -> anyhow::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}

/// An access key just issued: the only moment its secret exists in the clear.
pub struct IssuedKey {
    pub access_key_id: String,
    pub secret_access_key: String,
}

impl std::fmt::Debug for IssuedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedKey")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("Cannot exceed quota for AccessKeysPerUser: 2")]
    LimitExceeded,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Issues a new access key for a user, its secret sealed under `master`.
pub async fn access_key_create(
    store: &Store,
    master: &MasterKey,
    user_id: &str,
) -> Result<IssuedKey, KeyError> {
    let issued = IssuedKey {
        access_key_id: keys::new_access_key_id(),
        secret_access_key: keys::new_secret_access_key(),
    };
    let record = AccessKeyRecord {
        access_key_id: issued.access_key_id.clone(),
        user_id: user_id.to_owned(),
        secret_sealed: master.seal(&issued.secret_access_key),
        status: KEY_ACTIVE.to_owned(),
        created_at: Utc::now(),
    };
    match store.access_key_insert(&record).await? {
        KeyInsert::Inserted => Ok(issued),
        KeyInsert::LimitReached => Err(KeyError::LimitExceeded),
    }
}

/// The ARN of an IAM entity, as IAM forms it.
pub fn iam_arn(partition: &str, account_id: &str, kind: &str, path: &str, name: &str) -> String {
    format!("arn:{partition}:iam::{account_id}:{kind}{path}{name}")
}

/// Creates an IAM user in `account_id`; `Constraint::IamEntityName` when taken.
pub async fn user_create(
    store: &Store,
    partition: &str,
    account_id: &str,
    name: &str,
) -> Result<IamEntityRecord, StoreError> {
    entity_create(store, PrincipalKind::User, partition, account_id, name).await
}

/// Creates an IAM user or group; `Constraint::IamEntityName` when taken.
pub async fn entity_create(
    store: &Store,
    kind: PrincipalKind,
    partition: &str,
    account_id: &str,
    name: &str,
) -> Result<IamEntityRecord, StoreError> {
    let (id_prefix, arn_kind) = match kind {
        PrincipalKind::User => ("AIDA", "user"),
        PrincipalKind::Group => ("AGPA", "group"),
        PrincipalKind::Role => ("AROA", "role"),
    };
    store.iam_account_ensure(account_id).await?;
    let entity = IamEntityRecord {
        id: keys::new_entity_id(id_prefix),
        account_id: account_id.to_owned(),
        name: name.to_owned(),
        path: "/".to_owned(),
        arn: iam_arn(partition, account_id, arn_kind, "/", name),
        created_at: Utc::now(),
    };
    store.iam_entity_insert(kind, &entity).await?;
    Ok(entity)
}

/// Creates a customer-managed policy; `Constraint::IamEntityName` when taken. The
/// document must have been validated by the caller.
pub async fn managed_policy_create(
    store: &Store,
    partition: &str,
    account_id: &str,
    name: &str,
    document: &str,
) -> Result<IamEntityRecord, StoreError> {
    store.iam_account_ensure(account_id).await?;
    let policy = IamEntityRecord {
        id: keys::new_entity_id("ANPA"),
        account_id: account_id.to_owned(),
        name: name.to_owned(),
        path: "/".to_owned(),
        arn: iam_arn(partition, account_id, "policy", "/", name),
        created_at: Utc::now(),
    };
    store.managed_policy_insert(&policy, document).await?;
    Ok(policy)
}

/// On first start, creates the root account's admin user with full access and
/// one access key, and writes that key to `<data_dir>/credentials` (mode 0600)
/// as an AWS shared-credentials file. Later starts find the user and do nothing.
/// Returns the path written, when it wrote one.
pub async fn bootstrap(
    store: &Store,
    master: &MasterKey,
    partition: &str,
    account_id: &str,
    data_dir: &Path,
) -> anyhow::Result<Option<PathBuf>> {
    let credentials_path = data_dir.join("credentials");
    if store
        .iam_entity_get_by_name(PrincipalKind::User, account_id, ADMIN_USER)
        .await?
        .is_some()
    {
        if !credentials_path.exists() {
            tracing::warn!(
                path = %credentials_path.display(),
                "the admin user exists but its credentials file is gone; it is not recreated"
            );
        }
        return Ok(None);
    }
    let user = match user_create(store, partition, account_id, ADMIN_USER).await {
        Ok(user) => user,
        // Another replica bootstrapped between our check and insert: it owns the file.
        Err(StoreError::Constraint(_)) => return Ok(None),
        Err(e) => return Err(e).context("creating the admin user"),
    };
    store
        .inline_policy_put(
            PrincipalKind::User,
            &user.id,
            ADMIN_POLICY_NAME,
            ADMIN_POLICY,
        )
        .await
        .context("granting the admin user full access")?;
    let key = access_key_create(store, master, &user.id)
        .await
        .context("issuing the admin access key")?;
    let text = format!(
        "[default]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
        key.access_key_id, key.secret_access_key
    );
    // A leftover file from an older database would hold dead keys: replace it.
    let tmp = data_dir.join("credentials.tmp");
    let _ = std::fs::remove_file(&tmp);
    write_private_new(&tmp, &text)?;
    std::fs::rename(&tmp, &credentials_path).context("publishing the credentials file")?;
    tracing::info!(
        path = %credentials_path.display(),
        access_key_id = %key.access_key_id,
        "created the root account's admin credentials; use them with \
         AWS_SHARED_CREDENTIALS_FILE={} aws mq list-brokers --endpoint-url http://<listen>",
        credentials_path.display()
    );
    Ok(Some(credentials_path))
}

/// Who is behind an access key, with what they may do.
#[derive(Debug)]
pub struct Caller {
    pub credential: Credential,
    /// The identity requests act as: the user, or for an assumed role a record
    /// whose `arn` is the `assumed-role/<role>/<session>` ARN and `id` is
    /// `<role id>:<session>` (what GetCallerIdentity reports).
    pub user: IamEntityRecord,
    /// The identity policies of the user (with its groups') or of the role.
    pub policies: Vec<Policy>,
    /// The user's or role's tags, for `aws:PrincipalTag/*`.
    pub tags: Vec<(String, String)>,
    /// Set when the access key is temporary (see `app::sessions`).
    pub session: Option<SessionInfo>,
}

/// What temporary credentials add to a caller.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    /// The role assumed; `None` for a user's own short-lived credentials.
    pub role: Option<IamEntityRecord>,
    pub session_name: String,
    /// After this the credentials are refused with ExpiredToken.
    pub expires_at: chrono::DateTime<Utc>,
    /// The session policy given when the session was issued: the caller may do
    /// only what both it and `policies` allow.
    pub session_policy: Option<Policy>,
}

#[derive(Debug, thiserror::Error)]
pub enum CallerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored secret or policy cannot be used: a different master key, or a
    /// corrupt row. Never the caller's fault, so never told to the caller.
    #[error("{0}")]
    Unusable(String),
}

/// Resolves an access key id to its user, secret and policies; `None` when the key
/// is unknown or inactive.
pub async fn caller_for_key(
    store: &Store,
    master: &MasterKey,
    access_key_id: &str,
) -> Result<Option<Caller>, CallerError> {
    if super::sessions::is_temporary_key_id(access_key_id) {
        return super::sessions::caller_for_session(store, master, access_key_id).await;
    }
    let Some(key) = store.access_key_get(access_key_id).await? else {
        return Ok(None);
    };
    if key.status != KEY_ACTIVE {
        return Ok(None);
    }
    let Some(user) = store
        .iam_entity_get(PrincipalKind::User, &key.user_id)
        .await?
    else {
        return Ok(None);
    };
    let secret = master
        .open(&key.secret_sealed)
        .map_err(|e| CallerError::Unusable(format!("access key {access_key_id}: {e}")))?;
    let documents = store.policy_documents_for_user(&user.id).await?;
    let policies = documents
        .iter()
        .map(|doc| {
            Policy::parse(doc).map_err(|e| {
                CallerError::Unusable(format!(
                    "a stored policy of {} no longer parses: {e}",
                    user.arn
                ))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let tags = store
        .principal_tags_list(PrincipalKind::User, &user.id)
        .await?;
    Ok(Some(Caller {
        credential: Credential {
            secret_access_key: secret,
            session_token: None,
        },
        user,
        policies,
        tags,
        session: None,
    }))
}

/// A caller as the authentication layer keeps it between requests: with its
/// identity policies indexed for the Amazon MQ actions.
#[derive(Debug)]
pub struct VerifiedPrincipal {
    pub caller: Caller,
    /// Built from `caller.policies`.
    pub index: PolicyIndex,
    /// SigV4 signing keys of `caller.credential`, kept for the day's scope.
    pub signing_keys: SigningKeyCache,
}

impl VerifiedPrincipal {
    pub fn new(caller: Caller) -> Self {
        let index = PolicyIndex::new(
            &caller.policies,
            MqOperation::ALL.into_iter().map(MqOperation::action),
        );
        VerifiedPrincipal {
            caller,
            index,
            signing_keys: SigningKeyCache::default(),
        }
    }
}

/// [`caller_for_key`] through `cache`: no store read while an entry is fresh.
/// `auth::cache` says how stale an entry can be (no IAM write in this process
/// since it was read, and younger than the TTL). Unknown keys are not cached.
pub async fn caller_for_key_cached(
    cache: &PrincipalCache<VerifiedPrincipal>,
    store: &Store,
    master: &MasterKey,
    access_key_id: &str,
) -> Result<Option<Arc<VerifiedPrincipal>>, CallerError> {
    let generation = auth_cache::iam_generation();
    if let Some(hit) = cache.get(access_key_id, generation, Instant::now()) {
        return Ok(Some(hit));
    }
    // Taken before the read: the TTL bounds the age of what was read.
    let fetched_at = Instant::now();
    let Some(caller) = caller_for_key(store, master, access_key_id).await? else {
        return Ok(None);
    };
    let principal = Arc::new(VerifiedPrincipal::new(caller));
    cache.insert(
        access_key_id,
        principal.clone(),
        generation,
        auth_cache::iam_generation(),
        fetched_at,
    );
    Ok(Some(principal))
}
