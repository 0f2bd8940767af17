//! The rules of the public API, per resource. Each operation validates, writes intent
//! to the store, wakes the reconcilers and returns at once; nodes converge later.
//!
//! Concurrency: broker changes are read-modify-write guarded by the row's `version`.
//! A writer that loses the race re-reads and re-applies its change (re-validating it
//! against the fresh state) up to [`UPDATE_ATTEMPTS`] times, then answers
//! ConflictException; so two concurrent updates never silently lose one.

pub mod arn;
pub mod audit;
pub mod aws_login;
pub mod brokers;
pub mod catalog;
pub mod configurations;
pub mod events;
pub mod maintenance;
pub mod paging;
pub mod password;
pub mod principals;
pub mod roles;
pub mod sessions;
pub mod tags;
pub mod users;
pub mod validate;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::auth::cache::AuthCaches;
use crate::auth::keys::MasterKey;
use crate::auth::ratelimit::RateLimiter;
use crate::catalog::Catalog;
use crate::clock::{Clock, OffsetFileClock, SystemClock};
use crate::config::ServeConfig;
use crate::metrics::Metrics;
use crate::store::Store;

/// How often a broker update re-reads and retries after losing a race.
pub const UPDATE_ATTEMPTS: usize = 5;

/// Everything request handlers and background tasks share: one `Arc`, so a clone (axum
/// clones the state for every handler and middleware layer of every request) is one
/// reference count, not one per field.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// What [`AppState`] holds.
#[derive(Clone)]
pub struct Shared {
    pub store: Store,
    pub config: Arc<ServeConfig>,
    pub metrics: Arc<Metrics>,
    /// Seals and opens the access-key secrets in the store. [`AppState::new`] makes a
    /// random one (enough for tests); `serve` installs the persistent one with
    /// [`AppState::with_master_key`].
    pub master_key: Arc<MasterKey>,
    /// Appends every API request to the audit trail (group commit; see `audit`).
    pub audit: audit::AuditLog,
    /// Per-principal request rate limits (`--rate-limit-*`).
    pub rate_limiter: Arc<RateLimiter>,
    /// Verified principals and resource ARNs the authentication layer reuses between
    /// requests (`--auth-cache-ttl-ms`; see `auth::cache` for the staleness bound).
    pub auth_caches: Arc<AuthCaches<principals::VerifiedPrincipal>>,
    /// A counter bumped after every write of intent; each reconciler holds a receiver
    /// (from [`AppState::reconcile_wakeups`]) and runs a pass when it changes. A watch
    /// channel never loses a wake-up that arrives while a pass is running.
    reconcile_wake: Arc<watch::Sender<u64>>,
    /// Wakes the failover loop (see [`AppState::wake_failover`]).
    failover_wake: Arc<watch::Sender<u64>>,
    /// "Now" for schedules (maintenance windows): the system clock, or in tests the one
    /// `--clock-offset-file` moves (see [`crate::clock`]).
    pub clock: Arc<dyn Clock>,
    /// Engine versions (built-in and `<data-dir>/catalog/engine-versions.json`) and
    /// instance types.
    pub catalog: Arc<Catalog>,
    /// Logging in with an AWS identity; `None` when off (the default).
    pub aws_login: Option<Arc<aws_login::AwsLogin>>,
}

impl AppState {
    /// Must be called within a Tokio runtime: it starts the audit writer task.
    pub fn new(store: Store, config: ServeConfig) -> Self {
        let (wake, _) = watch::channel(0);
        let audit = audit::AuditLog::start(store.clone());
        let rate_limiter = Arc::new(RateLimiter::new(
            config.rate_limit_burst,
            config.rate_limit_per_second,
        ));
        let clock: Arc<dyn Clock> = match &config.clock_offset_file {
            Some(path) => Arc::new(OffsetFileClock::new(path.clone())),
            None => Arc::new(SystemClock),
        };
        let catalog = Arc::new(
            Catalog::new(&config.database.data_dir).with_agent_binary(config.agent_binary()),
        );
        let auth_caches = Arc::new(AuthCaches::new(Duration::from_millis(
            config.auth_cache_ttl_ms,
        )));
        // `ServeConfig::validate` refused bad AWS login settings before `serve` got
        // here; a test that skips it gets AWS login off, and says so.
        let aws_login = aws_login::AwsLogin::from_config(&config.aws_login)
            .unwrap_or_else(|e| {
                tracing::error!(error = %e, "AWS login is off");
                None
            })
            .map(Arc::new);
        AppState(Arc::new(Shared {
            aws_login,
            store,
            config: Arc::new(config),
            metrics: Arc::new(Metrics::new()),
            master_key: Arc::new(MasterKey::generate().0),
            reconcile_wake: Arc::new(wake),
            failover_wake: Arc::new(watch::channel(0).0),
            audit,
            rate_limiter,
            auth_caches,
            clock,
            catalog,
        }))
    }

    /// Replaces the master key (before any secret is sealed under the old one).
    pub fn with_master_key(self, key: MasterKey) -> Self {
        let mut shared = Arc::try_unwrap(self.0).unwrap_or_else(|arc| (*arc).clone());
        shared.master_key = Arc::new(key);
        AppState(Arc::new(shared))
    }

    /// Tells the reconcilers that intent changed.
    pub fn wake_reconcilers(&self) {
        self.reconcile_wake.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A receiver that sees every later [`AppState::wake_reconcilers`].
    pub fn reconcile_wakeups(&self) -> watch::Receiver<u64> {
        self.reconcile_wake.subscribe()
    }

    /// Tells the failover loop that a leadership fact changed (a lease released, the
    /// in-sync set), so that it decides now rather than at its next tick.
    pub fn wake_failover(&self) {
        self.failover_wake.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A receiver that sees every later [`AppState::wake_failover`].
    pub fn failover_wakeups(&self) -> watch::Receiver<u64> {
        self.failover_wake.subscribe()
    }
}
