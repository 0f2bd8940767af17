//! The datastore: desired state in Postgres (production, several replicas) or SQLite
//! (the embedded default). All SQL lives under this module, one file per table.
//!
//! Every query is written once, with `$n` placeholders that both databases accept, and
//! [`with_pool!`] compiles it for each backend. Database errors become [`StoreError`]
//! here, once, naming the constraint that fired.

mod audit;
mod aws_login;
mod batches;
mod brokers;
mod coalesce;
mod configurations;
mod cp_lease;
mod detail_cache;
mod error;
pub mod events;
mod fast_pool;
mod ids;
mod maintenance;
mod nodes;
mod principals;
mod replication;
mod sessions;
mod tags;
mod user_batches;
mod users;

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{ConnectOptions as _, PgPool, SqlitePool};

use batches::Batches;
use detail_cache::DetailCache;
use fast_pool::FastPool;

pub use audit::{
    AuditDecision, AuditEventRecord, AuditFilter, NewAuditEvent, AUDIT_INSERT_MAX_ROWS,
};
pub use aws_login::{
    AwsLoginMappingRecord, ImportedInline, ImportedManaged, IMPORTED_INLINE_PREFIX,
    IMPORTED_POLICY_PATH,
};
pub use brokers::{
    BrokerDetail, BrokerRecord, BrokerSpecUpdate, BrokerStateCount, BrokerSummaryRecord,
    DescribedLeadership, DescribedNode, NewBroker,
};
pub use configurations::{ConfigurationRecord, NewConfiguration, RevisionRecord};
pub use cp_lease::CpLease;
pub use error::{Constraint, StoreError};
pub use events::{EventRecord, NewEvent};
pub use ids::{BrokerId, ConfigurationId};
pub use maintenance::{ActionKind, ActionRecord, ActionSource, RunRecord};
pub use nodes::{NewNode, NodeAuth, NodeRecord, ObservedState, ReportedReplication};
pub use principals::{
    AccessKeyRecord, IamEntityRecord, KeyInsert, ManagedPolicyRecord, PrincipalKind,
    PrincipalUsage, MAX_PRINCIPAL_TAGS,
};
pub use replication::{
    HeartbeatAnswer, Leave, Leaving, Promotion, ReplicationRecord, SwitchoverRequest,
};
pub use sessions::{RoleRecord, SessionRecord};
pub use users::{NewUser, UserRecord, UserUpdate};

static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");
static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");

/// How long a SQLite writer waits for another writer before giving up.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(10);
const SQLITE_SLOW_STATEMENT: Duration = Duration::from_millis(250);
/// A pooled Postgres connection idle for this long is tested before it is handed out.
const PING_IDLE_AFTER: Duration = Duration::from_secs(5);
/// How long acquiring a pooled connection may take before the request fails.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);
/// Dedicated connections for the hottest statements (see [`fast_pool`]), besides the
/// main pool's 16.
const FAST_POOL_SIZE: usize = 8;

/// A handle on the database; cheap to clone (the pools are reference counted).
/// Postgres also carries a few dedicated connections for the hottest statements, the
/// batches that coalesce them ([`batches`]) and DescribeBroker's memory
/// ([`detail_cache`]), used only by the store's own code; `with_pool!` and tests see the
/// main pool.
#[derive(Clone, Debug)]
pub enum Store {
    Postgres(PgPool, FastPool, Arc<DetailCache>, Arc<Batches>),
    Sqlite(SqlitePool),
}

/// Runs `$body` with `$pool` bound to the concrete pool of either backend. The body is
/// compiled twice, so generic sqlx calls (`query_as::<_, Row>`) work for both.
#[macro_export]
macro_rules! with_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match $store {
            $crate::store::Store::Postgres($pool, ..) => $body,
            $crate::store::Store::Sqlite($pool) => $body,
        }
    };
}
pub(crate) use with_pool;

impl Store {
    /// Connects to `url` (`postgres://…` or `sqlite://…`); a SQLite file is created
    /// when missing. Does not migrate: call [`Store::migrate`].
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let options = PgConnectOptions::from_str(url).context("parsing the Postgres URL")?;
            let fast = FastPool::new(
                options.clone(),
                FAST_POOL_SIZE,
                ACQUIRE_TIMEOUT,
                PING_IDLE_AFTER,
            );
            let pool = PgPoolOptions::new()
                .max_connections(16)
                .acquire_timeout(ACQUIRE_TIMEOUT)
                // sqlx tests a connection when it goes back to the pool (a round trip) and,
                // by default, again when it comes out: two round trips besides the query.
                // A connection that was tested as it was released moments ago is not tested
                // again; one idle for longer is, as before.
                .test_before_acquire(false)
                .before_acquire(|conn, meta| {
                    Box::pin(async move {
                        if meta.idle_for >= PING_IDLE_AFTER {
                            sqlx::Connection::ping(conn).await?;
                        }
                        Ok(true)
                    })
                })
                .connect_with(options)
                .await
                .context("connecting to Postgres")?;
            let batches = Arc::new(Batches::new(&fast));
            Ok(Store::Postgres(pool, fast, Arc::default(), batches))
        } else if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)
                .context("parsing the SQLite URL")?
                .create_if_missing(true)
                .foreign_keys(true)
                // WAL lets readers proceed while one writer commits.
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(SQLITE_BUSY_TIMEOUT)
                // A statement this slow on the embedded store means lock contention
                // between writers or a slow disk: worth a line in the log.
                .log_slow_statements(log::LevelFilter::Warn, SQLITE_SLOW_STATEMENT);
            let pool = SqlitePoolOptions::new()
                .max_connections(8)
                .acquire_timeout(ACQUIRE_TIMEOUT)
                .connect_with(options)
                .await
                .context("opening the SQLite database")?;
            Ok(Store::Sqlite(pool))
        } else {
            anyhow::bail!("unsupported database URL {url:?}: use postgres://… or sqlite://…")
        }
    }

    /// The default embedded database: `<data_dir>/mooring.db`.
    pub fn sqlite_url_in(data_dir: &Path) -> String {
        format!("sqlite://{}", data_dir.join("mooring.db").display())
    }

    /// Applies every pending migration; safe to run concurrently from several replicas
    /// (sqlx takes an advisory lock on Postgres).
    pub async fn migrate(&self) -> anyhow::Result<()> {
        match self {
            Store::Postgres(pool, ..) => POSTGRES_MIGRATIONS.run(pool).await,
            Store::Sqlite(pool) => SQLITE_MIGRATIONS.run(pool).await,
        }
        .context("applying database migrations")
    }

    /// A cheap round trip, for health checks.
    pub async fn ping(&self) -> Result<(), StoreError> {
        with_pool!(self, pool => {
            sqlx::query("SELECT 1").execute(pool).await.map_err(StoreError::from)?;
        });
        Ok(())
    }

    pub async fn close(&self) {
        if let Store::Postgres(_, fast, ..) = self {
            fast.close().await;
        }
        with_pool!(self, pool => pool.close().await)
    }
}

/// Lists and text columns holding JSON arrays of strings.
pub(crate) fn json_list(items: &[String]) -> String {
    serde_json::to_string(items).expect("a list of strings always serializes")
}

pub(crate) fn parse_json_list(text: &str) -> Result<Vec<String>, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("list column: {e}")))
}
