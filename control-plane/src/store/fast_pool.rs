//! A few dedicated Postgres connections for the hottest single statements
//! (DescribeBroker, ListBrokers' page, CreateUser).
//!
//! sqlx 0.8's pool pings every connection as it goes back to the pool
//! (`Floating::return_to_pool`, unconditional): one extra Postgres round trip per query,
//! about as costly as the query itself on this path. This pool hands connections out and
//! takes them back without that ping. It stays correct without it because a connection
//! only goes back when the statement it ran *finished*: the caller reports the result
//! with [`FastConn::finish`]; a connection whose future was dropped mid-way (client gone,
//! timeout) or whose statement failed with anything but an ordinary SQL error (I/O,
//! protocol, a FATAL such as `pg_terminate_backend`) is closed, never reused. The
//! statements run here are single autocommitted statements, so a finished one leaves no
//! transaction or pending rows behind.
//!
//! Connections are opened lazily, at most `size` exist at once (a semaphore; waiting for
//! one is bounded by the same acquire timeout as the main pool), and one idle for
//! [`PING_IDLE_AFTER`](super::PING_IDLE_AFTER) or longer is pinged before it is handed out,
//! as the main pool does.
//!
//! Its sessions always use a statement's generic plan (`plan_cache_mode`). Postgres
//! otherwise weighs the generic plan against custom ones, and for a statement over an
//! array parameter (the batched DescribeBroker, the audit batch) the custom plan, which
//! knows the array's length, always looks cheaper: every execution was planned afresh,
//! which cost more than running it.
//!
//! Its sessions never pick a whole-table scan where an index serves (`enable_seqscan`;
//! a scan stays possible where no index does). Every statement run here reaches its rows
//! through an index (primary keys, a page of ids), but a generic plan costed for a small
//! table preferred reading it whole: CreateUser's batch bumped its brokers' generations
//! through a scan of `brokers`, whose pages fill with the dead row versions of those very
//! bumps, and ran about 6 % slower for it (`make bench-api`, side by side).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgConnection, PgDatabaseError, PgSeverity};
use sqlx::{ConnectOptions as _, Connection as _};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A bounded set of Postgres connections returned without sqlx's release ping.
#[derive(Clone)]
pub struct FastPool {
    inner: Arc<Inner>,
}

struct Inner {
    options: PgConnectOptions,
    acquire_timeout: Duration,
    ping_idle_after: Duration,
    /// One permit per connection that may exist (idle or handed out).
    permits: Arc<Semaphore>,
    /// Idle connections with the time each went idle; the most recent is reused first.
    idle: Mutex<Vec<(PgConnection, Instant)>>,
}

impl std::fmt::Debug for FastPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FastPool")
            .field("idle", &self.idle_count())
            .field("available", &self.inner.permits.available_permits())
            .finish()
    }
}

impl FastPool {
    pub fn new(
        options: PgConnectOptions,
        size: usize,
        acquire_timeout: Duration,
        ping_idle_after: Duration,
    ) -> Self {
        let options = options.options([
            ("plan_cache_mode", "force_generic_plan"),
            ("enable_seqscan", "off"),
        ]);
        FastPool {
            inner: Arc::new(Inner {
                options,
                acquire_timeout,
                ping_idle_after,
                permits: Arc::new(Semaphore::new(size)),
                idle: Mutex::new(Vec::with_capacity(size)),
            }),
        }
    }

    /// A connection, reused when one is idle, else opened. Fails with
    /// [`sqlx::Error::PoolTimedOut`] when none is free within the acquire timeout, and
    /// with [`sqlx::Error::PoolClosed`] after [`FastPool::close`].
    pub async fn acquire(&self) -> Result<FastConn, sqlx::Error> {
        let inner = &self.inner;
        match tokio::time::timeout(inner.acquire_timeout, self.acquire_inner()).await {
            Ok(result) => result,
            Err(_) => Err(sqlx::Error::PoolTimedOut),
        }
    }

    async fn acquire_inner(&self) -> Result<FastConn, sqlx::Error> {
        let inner = &self.inner;
        let permit = Arc::clone(&inner.permits)
            .acquire_owned()
            .await
            .map_err(|_| sqlx::Error::PoolClosed)?;
        loop {
            let popped = inner.idle.lock().expect("fast pool lock").pop();
            let Some((mut conn, since)) = popped else {
                break;
            };
            if since.elapsed() < inner.ping_idle_after || conn.ping().await.is_ok() {
                return Ok(FastConn::new(conn, permit, self));
            }
            // Dead while idle (Postgres restarted, the backend was terminated): drop it.
        }
        let conn = inner.options.connect().await?;
        Ok(FastConn::new(conn, permit, self))
    }

    /// Closes the idle connections; connections handed out are closed when dropped, and
    /// later acquires fail.
    pub async fn close(&self) {
        self.inner.permits.close();
        let idle: Vec<_> = std::mem::take(&mut *self.inner.idle.lock().expect("fast pool lock"));
        for (conn, _) in idle {
            let _ = conn.close().await;
        }
    }

    /// Idle connections (tests and the debug output).
    pub fn idle_count(&self) -> usize {
        self.inner.idle.lock().expect("fast pool lock").len()
    }
}

/// A connection handed out by [`FastPool`]. It goes back to the pool only through
/// [`FastConn::finish`] with a result that leaves it usable; dropped any other way it is
/// closed, and its slot is freed for a new one.
pub struct FastConn {
    conn: Option<PgConnection>,
    pool: Arc<Inner>,
    _permit: OwnedSemaphorePermit,
    reusable: bool,
}

impl FastConn {
    fn new(conn: PgConnection, permit: OwnedSemaphorePermit, pool: &FastPool) -> Self {
        FastConn {
            conn: Some(conn),
            pool: Arc::clone(&pool.inner),
            _permit: permit,
            reusable: false,
        }
    }

    /// Reports how the statement run on this connection ended, and releases it: back to
    /// the pool when it finished or failed with an ordinary SQL error (the server answered
    /// and is ready for the next statement), closed otherwise. Returns `result`.
    pub fn finish<T>(mut self, result: Result<T, sqlx::Error>) -> Result<T, sqlx::Error> {
        self.reusable = match &result {
            Ok(_) | Err(sqlx::Error::RowNotFound) => true,
            Err(sqlx::Error::Database(db)) => db
                .try_downcast_ref::<PgDatabaseError>()
                .is_some_and(|e| e.severity() == PgSeverity::Error),
            Err(_) => false,
        };
        result
    }
}

impl std::ops::Deref for FastConn {
    type Target = PgConnection;
    fn deref(&self) -> &PgConnection {
        self.conn.as_ref().expect("present until dropped")
    }
}

impl std::ops::DerefMut for FastConn {
    fn deref_mut(&mut self) -> &mut PgConnection {
        self.conn.as_mut().expect("present until dropped")
    }
}

impl Drop for FastConn {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else { return };
        if self.reusable && !self.pool.permits.is_closed() {
            let mut idle = self.pool.idle.lock().expect("fast pool lock");
            idle.push((conn, Instant::now()));
        }
        // Otherwise `conn` drops here: its socket closes and the Postgres backend exits.
        // The permit is released after the connection is back (field order).
    }
}

/// Runs one statement on a [`FastPool`] connection: acquires, runs `$run` with `$conn`
/// bound to `&mut PgConnection`, and reports the result so a connection that did not
/// finish cleanly is not reused. Evaluates to `Result<T, sqlx::Error>`.
macro_rules! on_fast {
    ($fast:expr, $conn:ident => $run:expr) => {
        async {
            let mut guard = $fast.acquire().await?;
            let $conn: &mut sqlx::PgConnection = &mut guard;
            let result = $run.await;
            guard.finish(result)
        }
    };
}
pub(crate) use on_fast;

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    const PG_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

    /// The test server's options, or `None` (skip) when it is unreachable outside CI.
    async fn pg_options() -> Option<PgConnectOptions> {
        let url = std::env::var("MOORING_TEST_POSTGRES").unwrap_or_else(|_| PG_URL.to_owned());
        let options = PgConnectOptions::from_str(&url).expect("test URL parses");
        match options.connect().await {
            Ok(conn) => {
                let _ = conn.close().await;
                Some(options)
            }
            Err(e) if std::env::var("CI").as_deref() == Ok("true") => {
                panic!("Postgres is required under CI: {e}")
            }
            Err(e) => {
                eprintln!("skipping (Postgres unreachable): {e}");
                None
            }
        }
    }

    async fn backend_pid(pool: &FastPool) -> Result<i32, sqlx::Error> {
        on_fast!(pool, conn => sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(conn)).await
    }

    fn pool(options: PgConnectOptions, size: usize) -> FastPool {
        FastPool::new(
            options,
            size,
            Duration::from_secs(5),
            Duration::from_secs(60),
        )
    }

    #[tokio::test]
    async fn a_finished_connection_is_reused_without_reconnecting() {
        let Some(options) = pg_options().await else {
            return;
        };
        let pool = pool(options, 2);
        let first = backend_pid(&pool).await.expect("query runs");
        assert_eq!(pool.idle_count(), 1);
        let second = backend_pid(&pool).await.expect("query runs");
        assert_eq!(first, second, "the idle connection is reused");
        // An ordinary SQL error leaves the connection usable, so it is kept.
        let failed: Result<i32, _> =
            on_fast!(pool, conn => sqlx::query_scalar("SELECT 1/0").fetch_one(conn)).await;
        assert!(matches!(failed, Err(sqlx::Error::Database(_))));
        assert_eq!(backend_pid(&pool).await.expect("query runs"), first);
        pool.close().await;
    }

    #[tokio::test]
    async fn a_cancelled_query_s_connection_is_not_reused() {
        let Some(options) = pg_options().await else {
            return;
        };
        let pool = pool(options, 1);
        let before = backend_pid(&pool).await.expect("query runs");
        let cancelled = tokio::time::timeout(
            Duration::from_millis(200),
            on_fast!(pool, conn => sqlx::query("SELECT pg_sleep(5)").execute(conn)),
        )
        .await;
        assert!(cancelled.is_err(), "the sleep outlasts the timeout");
        assert_eq!(
            pool.idle_count(),
            0,
            "the interrupted connection is dropped"
        );
        // The single slot is free again, and the next query gets a new backend at once
        // (a reused one would first have to wait out the 5 s sleep).
        let started = Instant::now();
        let after = backend_pid(&pool).await.expect("query runs");
        assert_ne!(before, after, "a new connection, not the interrupted one");
        assert!(started.elapsed() < Duration::from_secs(3));
        pool.close().await;
    }

    #[tokio::test]
    async fn a_terminated_backend_fails_at_most_one_request_and_is_replaced() {
        let Some(options) = pg_options().await else {
            return;
        };
        let pool = pool(options.clone(), 2);
        let victim = backend_pid(&pool).await.expect("query runs");
        let mut admin = options.connect().await.expect("admin connects");
        let terminated: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
            .bind(victim)
            .fetch_one(&mut admin)
            .await
            .expect("terminate runs");
        assert!(terminated);
        // Give the backend a moment to exit and its FATAL message to arrive.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut failures = 0;
        let mut pids = Vec::new();
        for _ in 0..4 {
            match backend_pid(&pool).await {
                Ok(pid) => pids.push(pid),
                Err(_) => failures += 1,
            }
        }
        assert!(failures <= 1, "{failures} requests failed after one kill");
        assert!(pids.len() >= 3);
        assert!(
            pids.iter().all(|&pid| pid != victim),
            "{pids:?} reuses {victim}"
        );
        assert!(
            pids.windows(2).all(|w| w[0] == w[1]),
            "the replacement is kept: {pids:?}"
        );
        let _ = admin.close().await;
        pool.close().await;
    }

    #[tokio::test]
    async fn acquire_waits_for_a_free_slot_and_times_out() {
        let Some(options) = pg_options().await else {
            return;
        };
        let pool = FastPool::new(
            options,
            1,
            Duration::from_millis(300),
            Duration::from_secs(60),
        );
        let held = pool.acquire().await.expect("first acquire");
        let started = Instant::now();
        let second = pool.acquire().await;
        assert!(matches!(second, Err(sqlx::Error::PoolTimedOut)));
        assert!(started.elapsed() >= Duration::from_millis(300));
        drop(held.finish(Ok::<(), sqlx::Error>(())));
        let again = pool.acquire().await.expect("the slot is free again");
        drop(again);
        pool.close().await;
        assert!(matches!(pool.acquire().await, Err(sqlx::Error::PoolClosed)));
    }
}
