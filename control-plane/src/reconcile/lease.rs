//! The control-plane lease: several `mooring serve` replicas may share one database, and
//! only one of them at a time acts on the world — as kube-controller-manager's leader
//! election does.
//!
//! Every replica serves the public API (its writes are optimistic, guarded by row versions)
//! and the agent API (an agent may heartbeat to any replica). Only the holder of the lease
//! (one row, `store::cp_lease`) runs the loops that start, stop and promote nodes: the
//! provisioning reconciler with its provider, the failover loop and the maintenance loop.
//! Session and audit-retention cleanups are plain idempotent deletes and run everywhere.
//!
//! **Rules** ([`next`], pure): a standby tries to acquire every quarter lease; the holder
//! renews as often. The holder counts its tenure from the moment it *sent* the renewal
//! that succeeded, and acts for three quarters of a lease from then ([`Settings::act_for`]):
//! the database counts the full lease from a later moment (when it ran the statement), so
//! the holder stops at least a quarter lease before anyone else may start. A holder whose
//! renewal is refused (another replica took over) or does not come back in time stops at
//! once.
//!
//! **Stopping** is by abort: when the tenure ends, the loops are cancelled at their next
//! await, mid-pass if need be — the reconcilers are written to survive a crash at any
//! point, and this is one. On top of that the provider given to the loops ([`Fenced`])
//! checks the tenure before every start, stop and delete, so no node is touched by a
//! replica whose tenure has ended even if a task was slow to notice.
//!
//! **Taking over**: a new holder starts fresh loops; the provisioning reconciler adopts the
//! running agents by their pid files (never starting a duplicate), and the failover loop
//! decides from the recorded leadership, as after a restart. On a clean shutdown the holder
//! releases the lease, so a standby takes over within a quarter lease instead of a lease.
//!
//! **Timing trade-off** (`--control-plane-lease-ms`, 2 s by default): when the holder dies,
//! brokers keep serving (their agents heartbeat to any replica), but nothing is promoted
//! until a standby holds the lease: at most a lease plus a quarter after the holder's last
//! renewal. A broker leader dying in that very moment fails over that much later. A shorter
//! lease shortens this and costs more renewals and a holder that steps down when its
//! database is slow for more than half a lease.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt as _;
use mooring_agent_protocol::NodeId;
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::app::AppState;
use crate::metrics::LeaseGauge;
use crate::provider::{Endpoint, NodeSpec, ProcessState, Provider, StartOutcome};
use crate::store::{CpLease, Store};

/// How long the lease lasts and how its holder and the standbys pace themselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Granted by each acquisition or renewal, counted by the database.
    pub lease: Duration,
    /// Between two attempts (renewals by the holder, acquisitions by a standby).
    pub renew_every: Duration,
    /// How long after sending a successful renewal the holder may act.
    pub act_for: Duration,
}

impl Settings {
    pub fn from_lease_ms(lease_ms: u64) -> Self {
        let lease = Duration::from_millis(lease_ms);
        Settings {
            lease,
            renew_every: lease / 4,
            act_for: lease * 3 / 4,
        }
    }

    fn lease_ms(&self) -> i64 {
        i64::try_from(self.lease.as_millis()).unwrap_or(i64::MAX)
    }
}

/// What this replica knows of its own standing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tenure {
    Standby,
    /// Holds the lease under `term` and may act until `until`.
    Holding {
        term: i64,
        until: Instant,
    },
}

/// How one trip to the store went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// Acquired (from standby) or renewed (while holding) under `term`.
    Granted { term: i64 },
    /// Another replica holds it.
    Refused,
    /// No answer in time, or an error.
    Failed,
}

/// A change of tenure, to log and to act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Acquired { term: i64 },
    Lost { term: i64, why: &'static str },
}

/// The rules: the tenure after an attempt sent at `sent` that came back at `now`.
pub fn next(
    tenure: Tenure,
    attempt: Attempt,
    sent: Instant,
    now: Instant,
    settings: &Settings,
) -> (Tenure, Option<Transition>) {
    let until = sent + settings.act_for;
    match (tenure, attempt) {
        // Granted, but the answer came so late that no time to act is left: stay out (the
        // row expires and is taken again, under a new term).
        (Tenure::Standby, Attempt::Granted { .. }) if now >= until => (Tenure::Standby, None),
        (Tenure::Standby, Attempt::Granted { term }) => (
            Tenure::Holding { term, until },
            Some(Transition::Acquired { term }),
        ),
        (Tenure::Standby, Attempt::Refused | Attempt::Failed) => (Tenure::Standby, None),
        (Tenure::Holding { term, .. }, Attempt::Granted { .. }) if now >= until => (
            Tenure::Standby,
            Some(Transition::Lost {
                term,
                why: "the renewal came back too late",
            }),
        ),
        (Tenure::Holding { term, .. }, Attempt::Granted { .. }) => {
            (Tenure::Holding { term, until }, None)
        }
        (Tenure::Holding { term, .. }, Attempt::Refused) => (
            Tenure::Standby,
            Some(Transition::Lost {
                term,
                why: "another replica took it",
            }),
        ),
        (Tenure::Holding { term, until }, Attempt::Failed) if now >= until => (
            Tenure::Standby,
            Some(Transition::Lost {
                term,
                why: "it could not be renewed in time",
            }),
        ),
        (held @ Tenure::Holding { .. }, Attempt::Failed) => (held, None),
    }
}

/// Whether a replica in `tenure` may act at `now`.
pub fn may_act(tenure: Tenure, now: Instant) -> bool {
    matches!(tenure, Tenure::Holding { until, .. } if now < until)
}

/// This replica's name in the lease row: host, process, API address, and a random tag (a
/// restarted process reusing a pid is still another replica).
pub fn replica_id(listen: std::net::SocketAddr) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned());
    format!(
        "{host}/{}/{listen}/{:04x}",
        std::process::id(),
        rand::random::<u16>()
    )
}

/// The current tenure, shared with whatever must check it before acting.
#[derive(Debug, Clone)]
pub struct Acting(Arc<Mutex<Tenure>>);

impl Default for Acting {
    fn default() -> Self {
        Acting(Arc::new(Mutex::new(Tenure::Standby)))
    }
}

impl Acting {
    pub fn may_act(&self) -> bool {
        may_act(*self.0.lock(), Instant::now())
    }

    /// An error unless this replica may act now.
    pub fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.may_act(),
            "this control-plane replica does not hold the control-plane lease"
        );
        Ok(())
    }

    fn set(&self, tenure: Tenure) {
        *self.0.lock() = tenure;
    }
}

/// Takes, holds and gives up the lease until `stop` turns true (or its sender is dropped),
/// running `start_loops` for each tenure: they get the tenure to check and a receiver that
/// turns true when they should wind down; at the end of a tenure they are aborted.
pub async fn run<F>(
    state: AppState,
    replica: String,
    settings: Settings,
    mut stop: watch::Receiver<bool>,
    start_loops: F,
) where
    F: Fn(Acting, watch::Receiver<bool>) -> Vec<JoinHandle<()>> + Send + 'static,
{
    let store = &state.store;
    let acting = Acting::default();
    let mut tenure = Tenure::Standby;
    let mut loops: Option<(watch::Sender<bool>, Vec<JoinHandle<()>>)> = None;
    let mut gauge = LeaseGauge {
        replica: replica.clone(),
        ..LeaseGauge::default()
    };
    tracing::info!(%replica, lease_ms = settings.lease.as_millis(), "control-plane replica: waiting for the lease");
    loop {
        let sent = Instant::now();
        let (attempt, seen) = try_once(store, &replica, tenure, &settings, sent).await;
        let (after, transition) = next(tenure, attempt, sent, Instant::now(), &settings);
        tenure = after;
        acting.set(tenure);
        match transition {
            Some(Transition::Acquired { term }) => {
                tracing::info!(%replica, term, "acquired the control-plane lease: running the reconcilers");
                gauge.acquired += 1;
                let (tx, rx) = watch::channel(false);
                loops = Some((tx, start_loops(acting.clone(), rx)));
            }
            Some(Transition::Lost { term, why }) => {
                tracing::warn!(%replica, term, why, "lost the control-plane lease: stopping the reconcilers");
                gauge.lost += 1;
                if let Some((tx, tasks)) = loops.take() {
                    let _ = tx.send(true);
                    abort_all(tasks).await;
                }
            }
            None => {}
        }
        gauge.held = matches!(tenure, Tenure::Holding { .. });
        if let Some(seen) = seen {
            gauge.holder = if seen.is_live() {
                seen.holder
            } else {
                String::new()
            };
            gauge.term = seen.term;
        }
        state.metrics.set_lease(gauge.clone());

        tokio::select! {
            _ = stop.wait_for(|stopped| *stopped) => break,
            _ = tokio::time::sleep_until(sent + settings.renew_every) => {}
        }
    }
    // Shutting down: let the loops finish their pass while the tenure lasts, then give the
    // lease up so that a standby need not wait for it to expire.
    if let Some((tx, mut tasks)) = loops.take() {
        let _ = tx.send(true);
        let until = match tenure {
            Tenure::Holding { until, .. } => until,
            Tenure::Standby => Instant::now(),
        };
        let _ = tokio::time::timeout_at(until, async {
            for task in &mut tasks {
                let _ = task.await;
            }
        })
        .await;
        // A handle awaited to completion must not be awaited again.
        abort_all(tasks.into_iter().filter(|t| !t.is_finished()).collect()).await;
    }
    acting.set(Tenure::Standby);
    if let Tenure::Holding { term, .. } = tenure {
        match store.cp_lease_release(&replica, term).await {
            Ok(true) => tracing::info!(%replica, term, "released the control-plane lease"),
            Ok(false) => {}
            Err(e) => tracing::warn!("releasing the control-plane lease failed: {e:#}"),
        }
    }
}

/// One acquisition (standby) or renewal (holder), bounded in time; with the row as seen
/// when it says who else holds it.
async fn try_once(
    store: &Store,
    replica: &str,
    tenure: Tenure,
    settings: &Settings,
    sent: Instant,
) -> (Attempt, Option<CpLease>) {
    let lease_ms = settings.lease_ms();
    let answer = match tenure {
        Tenure::Standby => {
            tokio::time::timeout(
                settings.renew_every,
                store.cp_lease_acquire(replica, lease_ms),
            )
            .await
        }
        // A renewal is worth waiting for only while the tenure lasts.
        Tenure::Holding { term, until } => {
            tokio::time::timeout(
                until.saturating_duration_since(sent),
                store.cp_lease_renew(replica, term, lease_ms),
            )
            .await
        }
    };
    match answer {
        Ok(Ok(Some(row))) => (Attempt::Granted { term: row.term }, Some(row)),
        Ok(Ok(None)) => {
            let seen = store.cp_lease_get().await.ok().flatten();
            (Attempt::Refused, seen)
        }
        Ok(Err(e)) => {
            tracing::warn!("control-plane lease: the store failed: {e:#}");
            (Attempt::Failed, None)
        }
        Err(_) => (Attempt::Failed, None),
    }
}

async fn abort_all(tasks: Vec<JoinHandle<()>>) {
    for task in &tasks {
        task.abort();
    }
    for task in tasks {
        // Cancelled (or already finished): either way it acts no more.
        let _ = task.await;
    }
}

/// A provider that refuses to start, stop or delete nodes unless this replica holds the
/// lease at that moment. Reads (status, listing, port choices) pass through.
pub struct Fenced {
    inner: Arc<dyn Provider>,
    acting: Acting,
}

impl Fenced {
    pub fn new(inner: Arc<dyn Provider>, acting: Acting) -> Self {
        Fenced { inner, acting }
    }
}

impl Provider for Fenced {
    fn allocate_endpoint(&self) -> anyhow::Result<Endpoint> {
        self.inner.allocate_endpoint()
    }

    fn allocate_replication_port(&self) -> anyhow::Result<u16> {
        self.inner.allocate_replication_port()
    }

    fn start<'a>(
        &'a self,
        spec: &'a NodeSpec,
        token: &'a str,
    ) -> BoxFuture<'a, anyhow::Result<StartOutcome>> {
        async move {
            self.acting.check()?;
            self.inner.start(spec, token).await
        }
        .boxed()
    }

    fn status<'a>(&'a self, node: &'a NodeId) -> BoxFuture<'a, anyhow::Result<ProcessState>> {
        self.inner.status(node)
    }

    fn stop<'a>(&'a self, node: &'a NodeId) -> BoxFuture<'a, anyhow::Result<()>> {
        async move {
            self.acting.check()?;
            self.inner.stop(node).await
        }
        .boxed()
    }

    fn delete<'a>(&'a self, node: &'a NodeId) -> BoxFuture<'a, anyhow::Result<()>> {
        async move {
            self.acting.check()?;
            self.inner.delete(node).await
        }
        .boxed()
    }

    fn list<'a>(&'a self) -> BoxFuture<'a, anyhow::Result<Vec<NodeId>>> {
        self.inner.list()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings::from_lease_ms(2000)
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn pacing_leaves_a_quarter_lease_between_the_holder_stopping_and_the_expiry() {
        let s = settings();
        assert_eq!(s.renew_every, ms(500));
        assert_eq!(s.act_for, ms(1500));
        assert!(s.renew_every < s.act_for && s.act_for < s.lease);
    }

    #[test]
    fn the_tenure_follows_each_attempt() {
        let s = settings();
        let t0 = Instant::now();
        let holding = |term, sent: Instant| Tenure::Holding {
            term,
            until: sent + s.act_for,
        };
        // (before, attempt, sent after t0, answered after t0) -> (after, transition)
        let cases: Vec<(Tenure, Attempt, u64, u64, Tenure, Option<Transition>)> = vec![
            // A standby that wins acts for three quarters of a lease from sending.
            (
                Tenure::Standby,
                Attempt::Granted { term: 4 },
                0,
                30,
                holding(4, t0),
                Some(Transition::Acquired { term: 4 }),
            ),
            // ... unless the answer came after that.
            (
                Tenure::Standby,
                Attempt::Granted { term: 4 },
                0,
                1500,
                Tenure::Standby,
                None,
            ),
            (
                Tenure::Standby,
                Attempt::Refused,
                0,
                10,
                Tenure::Standby,
                None,
            ),
            (
                Tenure::Standby,
                Attempt::Failed,
                0,
                10,
                Tenure::Standby,
                None,
            ),
            // A renewal extends the tenure from its own sending.
            (
                holding(4, t0),
                Attempt::Granted { term: 4 },
                500,
                520,
                holding(4, t0 + ms(500)),
                None,
            ),
            // Another replica took it: stop at once, even with time left.
            (
                holding(4, t0),
                Attempt::Refused,
                500,
                510,
                Tenure::Standby,
                Some(Transition::Lost {
                    term: 4,
                    why: "another replica took it",
                }),
            ),
            // A failed renewal is retried while time is left ...
            (
                holding(4, t0),
                Attempt::Failed,
                500,
                900,
                holding(4, t0),
                None,
            ),
            // ... and ends the tenure when none is.
            (
                holding(4, t0),
                Attempt::Failed,
                1000,
                1500,
                Tenure::Standby,
                Some(Transition::Lost {
                    term: 4,
                    why: "it could not be renewed in time",
                }),
            ),
            // A renewal answered too late is no renewal.
            (
                holding(4, t0),
                Attempt::Granted { term: 4 },
                0,
                1600,
                Tenure::Standby,
                Some(Transition::Lost {
                    term: 4,
                    why: "the renewal came back too late",
                }),
            ),
        ];
        for (i, (before, attempt, sent, answered, after, transition)) in
            cases.into_iter().enumerate()
        {
            let got = next(before, attempt, t0 + ms(sent), t0 + ms(answered), &s);
            assert_eq!(got, (after, transition), "case {i}");
        }
    }

    #[test]
    fn only_a_holder_within_its_tenure_may_act() {
        let t0 = Instant::now();
        let held = Tenure::Holding {
            term: 1,
            until: t0 + ms(1500),
        };
        assert!(may_act(held, t0));
        assert!(may_act(held, t0 + ms(1499)));
        assert!(!may_act(held, t0 + ms(1500)));
        assert!(!may_act(Tenure::Standby, t0));
    }

    #[test]
    fn the_fenced_provider_refuses_to_act_without_the_lease() {
        let acting = Acting::default();
        assert!(acting.check().is_err());
        acting.set(Tenure::Holding {
            term: 1,
            until: Instant::now() + ms(60_000),
        });
        assert!(acting.check().is_ok());
        acting.set(Tenure::Holding {
            term: 1,
            until: Instant::now(),
        });
        assert!(acting.check().is_err());
    }

    /// Two lease tasks on one SQLite database: one runs loops at a time; a killed holder
    /// (no release) is replaced after expiry, a stopped one (released) at once.
    #[tokio::test]
    async fn two_replicas_take_turns_and_never_act_together() {
        use std::sync::atomic::{AtomicUsize, Ordering};

        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::connect(&Store::sqlite_url_in(dir.path()))
            .await
            .expect("SQLite opens");
        store.migrate().await.expect("migrates");
        let state = AppState::new(
            store,
            crate::config::ServeConfig::for_tests(dir.path().to_path_buf(), None),
        );
        let settings = Settings::from_lease_ms(400);
        // Loops running now in each replica; each counts while its tenure lasts.
        let running: Arc<[AtomicUsize; 2]> = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
        let spawn_replica = |i: usize| {
            let (stop_tx, stop_rx) = watch::channel(false);
            let running = running.clone();
            let task = tokio::spawn(run(
                state.clone(),
                format!("replica-{i}"),
                settings,
                stop_rx,
                move |acting, mut stop| {
                    let running = running.clone();
                    vec![tokio::spawn(async move {
                        struct Guard(Arc<[AtomicUsize; 2]>, usize);
                        impl Drop for Guard {
                            fn drop(&mut self) {
                                self.0[self.1].fetch_sub(1, Ordering::SeqCst);
                            }
                        }
                        running[i].fetch_add(1, Ordering::SeqCst);
                        let _guard = Guard(running.clone(), i);
                        while acting.may_act() {
                            tokio::select! {
                                _ = stop.wait_for(|s| *s) => return,
                                _ = tokio::time::sleep(Duration::from_millis(5)) => {}
                            }
                        }
                    })]
                },
            ));
            (stop_tx, task)
        };
        let active = || {
            (
                running[0].load(Ordering::SeqCst),
                running[1].load(Ordering::SeqCst),
            )
        };
        let (stop0, task0) = spawn_replica(0);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (stop1, task1) = spawn_replica(1);
        let mut watched = Duration::ZERO;
        while watched < Duration::from_millis(1500) {
            assert_eq!(active(), (1, 0), "the first replica holds it");
            tokio::time::sleep(Duration::from_millis(10)).await;
            watched += Duration::from_millis(10);
        }
        // Killed (no release): the other takes over once the lease has expired, never
        // while the first may still act.
        task0.abort();
        let _ = task0.await;
        drop(stop0);
        let killed = Instant::now();
        let mut taken = None;
        while killed.elapsed() < Duration::from_secs(5)
            && taken.is_none_or(|t| killed.elapsed() < t + Duration::from_millis(500))
        {
            let (a, b) = active();
            assert!(a + b <= 1, "both act at once");
            if b == 1 && taken.is_none() {
                taken = Some(killed.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let taken = taken.expect("the standby took over");
        assert!(
            taken <= settings.lease + settings.renew_every * 2,
            "{taken:?}"
        );
        // Stopped: the lease is released and the holder's loops end.
        let _ = stop1.send(true);
        task1.await.expect("ends");
        assert_eq!(active(), (0, 0));
        let row = state
            .store
            .cp_lease_get()
            .await
            .expect("read")
            .expect("row");
        assert!(!row.is_live(), "released: {row:?}");
        assert_eq!((row.holder.as_str(), row.term), ("replica-1", 2));
    }

    #[test]
    fn replica_ids_differ_between_replicas_of_one_process() {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 7878));
        let ids: std::collections::BTreeSet<String> = (0..20).map(|_| replica_id(addr)).collect();
        assert!(ids.len() > 1, "{ids:?}");
        assert!(ids.iter().all(|id| id.contains("127.0.0.1:7878")));
    }
}
