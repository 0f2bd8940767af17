//! The audit trail's rules: a group-commit writer that appends every API request's
//! record to the store, the query behind `GET /v1/audit-events`, and retention.
//!
//! Durability. A request that may change state (an allowed non-read action) is
//! answered only after its record is committed ([`AuditLog::append_durable`]): an
//! acknowledged change is never missing from the trail, even after kill -9. (A crash
//! after the change commits and before its record does loses that record, but the
//! client was never told the change succeeded.) Every other record (reads, refused
//! requests) is handed to the writer without waiting and committed within
//! [`READ_FLUSH_DELAY`]: a crash may lose the last ~100 ms of those.
//!
//! A handler may instead commit its request's success record with the change itself
//! (CreateUser does, `http::audit::change_record`): one commit instead of two, and the change
//! cannot commit without its record. Such rows take their `seq` from the same sequence, so
//! `seq` orders rows by when they were inserted, which can differ from commit order by one
//! in-flight transaction.
//!
//! Group commit. One writer task owns the rest of the database side. It takes whatever records
//! are queued and writes them in one INSERT, so concurrent requests share one commit
//! instead of paying one each; durable records flush at once, others wait at most
//! [`READ_FLUSH_DELAY`] for company. Records nobody waits for do not wake the writer
//! while it holds some already (see [`AuditLog`]).
//!
//! Store outage. When a write fails, waiting requests fail (the HTTP layer answers
//! InternalServerErrorException), their records are kept with status 500, and the
//! log turns unhealthy: allowed mutating requests are then refused before they run
//! (see [`AuditLog::healthy`]) until a retry, every [`RETRY_DELAY`], succeeds. At most
//! [`MAX_PENDING`] unwritten records are kept meanwhile; older ones are dropped
//! and counted in the log.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::paging;
use crate::error::ApiError;
use crate::store::{AuditDecision, AuditEventRecord, AuditFilter, NewAuditEvent, Store};

/// The longest a non-durable record waits in memory before it is written.
pub const READ_FLUSH_DELAY: Duration = Duration::from_millis(100);
/// Records held that make a group commit due at the writer's next wake-up, whatever
/// [`READ_FLUSH_DELAY`] says.
pub const MAX_BATCH: usize = 1000;
/// Records queued between the requests and the writer.
pub const CHANNEL_CAPACITY: usize = 8192;
/// Unwritten records kept while the store is failing.
pub const MAX_PENDING: usize = 10_000;
/// How long the writer waits before retrying after a failed write.
pub const RETRY_DELAY: Duration = Duration::from_secs(1);
/// How long a request waits for room in the queue, then for its commit.
const ENQUEUE_TIMEOUT: Duration = Duration::from_secs(2);
const COMMIT_TIMEOUT: Duration = Duration::from_secs(20);
/// How often retention runs, and how many rows one DELETE removes.
pub const RETENTION_INTERVAL: Duration = Duration::from_secs(3600);
const RETENTION_BATCH: i64 = 10_000;
/// `maxResults` when a query names none.
const LIST_DEFAULT: i64 = 100;

/// Why a durable append failed: the request must not be reported as done.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("the audit trail cannot be written")]
    Unavailable,
}

enum Job {
    Append {
        event: NewAuditEvent,
        /// Set for durable records: told once the record is committed (or not).
        ack: Option<Ack>,
    },
    /// Flush everything queued, then stop.
    Shutdown(oneshot::Sender<()>),
}

struct Ack {
    tx: oneshot::Sender<Result<(), AuditError>>,
    /// The error name the client gets if the commit fails, recorded instead of the
    /// original outcome.
    failure_code: &'static str,
}

/// The handle requests append through; cheap to clone.
///
/// Two queues: records nobody waits for, and durable records and shutdown, which wake the
/// writer at once. The writer listens on the first only while it holds nothing, so a
/// stream of reads wakes it once per [`READ_FLUSH_DELAY`] rather than once per record
/// (a wake-up is a futex call and often a context switch: per request, on the API's
/// hottest paths).
#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Job>,
    urgent_tx: mpsc::Sender<Job>,
    healthy: Arc<AtomicBool>,
    dropped: Arc<AtomicU64>,
}

impl AuditLog {
    /// Starts the writer task on the current Tokio runtime.
    pub fn start(store: Store) -> Self {
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        let (urgent_tx, urgent_rx) = mpsc::channel(CHANNEL_CAPACITY);
        let healthy = Arc::new(AtomicBool::new(true));
        let dropped = Arc::new(AtomicU64::new(0));
        let writer = Writer {
            store,
            rx,
            urgent_rx,
            healthy: healthy.clone(),
            dropped: dropped.clone(),
            pending: Vec::new(),
            first_pending: None,
            retry_at: None,
        };
        tokio::spawn(writer.run());
        AuditLog {
            tx,
            urgent_tx,
            healthy,
            dropped,
        }
    }

    /// False after a failed write until a retry succeeds: mutating requests are then
    /// refused rather than run unaudited.
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    /// Records lost so far (queue full for too long, or dropped during an outage).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Hands `event` to the writer without waiting for its commit.
    pub async fn append(&self, event: NewAuditEvent) {
        let job = Job::Append { event, ack: None };
        let sent = match self.tx.try_send(job) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(job)) => {
                match tokio::time::timeout(ENQUEUE_TIMEOUT, self.tx.send(job)).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(_)) | Err(_) => Err(()),
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(()),
        };
        if sent.is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::error!("audit record dropped: the writer is stopped or overloaded");
        }
    }

    /// Appends `event` and returns once it is committed. On `Err` the caller answers
    /// `failure_code` (status 500), and that is what the trail records, if the
    /// record can be written later.
    pub async fn append_durable(
        &self,
        event: NewAuditEvent,
        failure_code: &'static str,
    ) -> Result<(), AuditError> {
        let (tx, rx) = oneshot::channel();
        let job = Job::Append {
            event,
            ack: Some(Ack { tx, failure_code }),
        };
        match tokio::time::timeout(ENQUEUE_TIMEOUT, self.urgent_tx.send(job)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) | Err(_) => return Err(AuditError::Unavailable),
        }
        match tokio::time::timeout(COMMIT_TIMEOUT, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) | Err(_) => Err(AuditError::Unavailable),
        }
    }

    /// Writes what is queued and stops the writer (at shutdown). Later appends fail.
    pub async fn shutdown(&self) {
        let (tx, rx) = oneshot::channel();
        if self.urgent_tx.send(Job::Shutdown(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

/// The writer task's state. Invariant: `first_pending` is set iff `pending` is
/// non-empty, and is when the oldest of them arrived.
struct Writer {
    store: Store,
    /// Records nobody waits for.
    rx: mpsc::Receiver<Job>,
    /// Durable records and shutdown.
    urgent_rx: mpsc::Receiver<Job>,
    healthy: Arc<AtomicBool>,
    dropped: Arc<AtomicU64>,
    pending: Vec<(NewAuditEvent, Option<Ack>)>,
    first_pending: Option<Instant>,
    /// Set after a failed write: no write is attempted before it.
    retry_at: Option<Instant>,
}

impl Writer {
    async fn run(mut self) {
        loop {
            let deadline = match (self.retry_at, self.first_pending) {
                (Some(retry), _) => Some(retry),
                (None, Some(first)) => Some(first + READ_FLUSH_DELAY),
                (None, None) => None,
            };
            let holding = !self.pending.is_empty();
            let job = tokio::select! {
                biased;
                job = self.urgent_rx.recv() => job,
                // Holding records, the writer waits for their deadline (or an urgent job)
                // and picks up the others then.
                job = self.rx.recv(), if !holding => job,
                () = sleep_until(deadline) => {
                    let stop = self.take_queued();
                    self.flush().await;
                    if let Some(done) = stop {
                        self.finish(done).await;
                        return;
                    }
                    continue;
                }
            };
            let mut stop = None;
            match job {
                Some(job) => {
                    if let Some(done) = self.accept(job) {
                        stop = Some(Some(done));
                    }
                }
                // Every handle is gone: write what is left and end.
                None => stop = Some(None),
            }
            // Take whatever else is already queued: these share the commit.
            if stop.is_none() {
                stop = self.take_queued().map(Some);
            }
            if let Some(done) = stop {
                match done {
                    Some(done) => self.finish(done).await,
                    None => {
                        self.retry_at = None;
                        self.flush().await;
                    }
                }
                return;
            }
            let urgent = self.pending.iter().any(|(_, ack)| ack.is_some());
            let due = self.pending.len() >= MAX_BATCH
                || self
                    .first_pending
                    .is_some_and(|t| t.elapsed() >= READ_FLUSH_DELAY);
            if self.retry_at.is_some() {
                // While the store is failing, durable requests are not kept waiting
                // for the next retry: they fail now.
                if urgent {
                    self.fail_waiters();
                }
                if self.retry_at.is_some_and(|t| Instant::now() >= t) {
                    self.flush().await;
                }
            } else if urgent || due {
                self.flush().await;
            }
        }
    }

    /// Writes what is left (one last attempt even while the store is failing) and tells
    /// the shutdown request.
    async fn finish(&mut self, done: oneshot::Sender<()>) {
        self.retry_at = None;
        self.flush().await;
        let _ = done.send(());
    }

    /// Moves what both queues hold into `pending` (each is bounded by
    /// [`CHANNEL_CAPACITY`]), the records nobody waits for first; returns the reply
    /// channel of a shutdown request, after which nothing more is taken.
    fn take_queued(&mut self) -> Option<oneshot::Sender<()>> {
        for urgent in [false, true] {
            loop {
                let queue = if urgent {
                    &mut self.urgent_rx
                } else {
                    &mut self.rx
                };
                let Ok(job) = queue.try_recv() else {
                    break;
                };
                if let Some(done) = self.accept(job) {
                    return Some(done);
                }
            }
        }
        None
    }

    /// Queues an append; returns the reply channel of a shutdown request.
    fn accept(&mut self, job: Job) -> Option<oneshot::Sender<()>> {
        match job {
            Job::Append { event, ack } => {
                if self.pending.is_empty() {
                    self.first_pending = Some(Instant::now());
                }
                self.pending.push((event, ack));
                None
            }
            Job::Shutdown(done) => Some(done),
        }
    }

    /// Writes every pending record in one transaction (several statements when more
    /// than one INSERT's worth) and tells the waiters.
    async fn flush(&mut self) {
        if self.pending.is_empty() {
            self.retry_at = None;
            self.healthy.store(true, Ordering::Release);
            return;
        }
        // In the order the requests arrived: a durable record is taken before the others
        // queued with it, and `seq` would otherwise put a request before an earlier one.
        self.pending.sort_by_key(|(event, _)| event.occurred_at);
        let events: Vec<NewAuditEvent> = self.pending.iter().map(|(e, _)| e.clone()).collect();
        match self.store.audit_insert(&events).await {
            Ok(()) => {
                for (_, ack) in self.pending.drain(..) {
                    if let Some(ack) = ack {
                        let _ = ack.tx.send(Ok(()));
                    }
                }
                self.first_pending = None;
                self.retry_at = None;
                if !self.healthy.swap(true, Ordering::AcqRel) {
                    tracing::info!("audit trail writable again");
                }
            }
            Err(e) => {
                tracing::error!(
                    error = format!("{:#}", anyhow::Error::new(e)),
                    records = events.len(),
                    "writing the audit trail failed; mutating requests are refused until it recovers"
                );
                self.healthy.store(false, Ordering::Release);
                self.retry_at = Some(Instant::now() + RETRY_DELAY);
                self.fail_waiters();
                self.bound_pending();
            }
        }
    }

    /// Answers every waiting durable request with failure; their records now say
    /// what the client will be told, and stay queued for the next retry.
    fn fail_waiters(&mut self) {
        for (event, ack) in &mut self.pending {
            if let Some(ack) = ack.take() {
                event.http_status = 500;
                event.error_code = Some(ack.failure_code.to_owned());
                let _ = ack.tx.send(Err(AuditError::Unavailable));
            }
        }
    }

    fn bound_pending(&mut self) {
        if self.pending.len() > MAX_PENDING {
            let excess = self.pending.len() - MAX_PENDING;
            self.pending.drain(..excess);
            self.dropped
                .fetch_add(u64::try_from(excess).unwrap_or(u64::MAX), Ordering::Relaxed);
            tracing::error!(
                dropped = excess,
                "audit records dropped: the store has been failing for too long"
            );
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// Whether an action only reads (`Describe*`, `List*`, `Get*`): its record need not
/// be committed before the answer.
pub fn is_read_only(action: &str) -> bool {
    let name = action.split_once(':').map_or(action, |(_, name)| name);
    ["Describe", "List", "Get"]
        .iter()
        .any(|prefix| name.starts_with(prefix))
}

/// The current time at the precision both stores keep (microseconds), so a record
/// reads back equal to what was written.
pub fn now() -> DateTime<Utc> {
    let t = Utc::now();
    DateTime::from_timestamp_micros(t.timestamp_micros()).unwrap_or(t)
}

/// `GET /v1/audit-events` parameters, as received.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    pub start_time: Option<String>,
    pub end_time: Option<String>,
    pub principal: Option<String>,
    pub action: Option<String>,
    pub resource: Option<String>,
    pub decision: Option<String>,
    pub max_results: Option<String>,
    pub next_token: Option<String>,
}

/// A time parameter: RFC 3339 (`2026-11-28T06:00:00Z`) or seconds since the epoch.
fn parse_time(name: &str, raw: Option<&str>) -> Result<Option<DateTime<Utc>>, ApiError> {
    let Some(raw) = raw.filter(|r| !r.is_empty()) else {
        return Ok(None);
    };
    if let Ok(t) = DateTime::parse_from_rfc3339(raw) {
        return Ok(Some(t.with_timezone(&Utc)));
    }
    if let Some(t) = raw
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite())
        .and_then(|s| DateTime::from_timestamp_micros((s * 1e6) as i64))
    {
        return Ok(Some(t));
    }
    Err(ApiError::bad_request(
        name,
        format!("The {name} must be an ISO 8601 timestamp or seconds since the epoch."),
    ))
}

fn non_empty(s: &Option<String>) -> Option<String> {
    s.clone().filter(|s| !s.is_empty())
}

/// One page of events matching `q`, newest first, and the token of the next page.
pub async fn list_events(
    store: &Store,
    q: &AuditQuery,
) -> Result<(Vec<AuditEventRecord>, Option<String>), ApiError> {
    let limit = paging::max_results(q.max_results.as_deref(), LIST_DEFAULT)?;
    let start_time = parse_time("startTime", q.start_time.as_deref())?;
    let end_time = parse_time("endTime", q.end_time.as_deref())?;
    if let (Some(s), Some(e)) = (start_time, end_time) {
        if s > e {
            return Err(ApiError::bad_request(
                "startTime",
                "The startTime must not be after the endTime.",
            ));
        }
    }
    let decision = match non_empty(&q.decision) {
        None => None,
        Some(d) => Some(AuditDecision::parse(&d).ok_or_else(|| {
            ApiError::bad_request(
                "decision",
                "The decision must be one of allowed, denied, unauthenticated, throttled.",
            )
        })?),
    };
    let before_seq = match paging::decode_token(q.next_token.as_deref())? {
        None => None,
        Some(key) => Some(
            key.parse::<i64>()
                .map_err(|_| ApiError::bad_request("nextToken", "The nextToken is invalid."))?,
        ),
    };
    let filter = AuditFilter {
        start_time,
        end_time,
        principal: non_empty(&q.principal),
        action: non_empty(&q.action),
        resource: non_empty(&q.resource),
        decision,
        before_seq,
    };
    let rows = store.audit_list(&filter, limit + 1).await?;
    Ok(paging::page(rows, limit, |r| r.seq.to_string()))
}

/// Deletes events older than `retention` until none is left; returns how many.
pub async fn purge_expired(
    store: &Store,
    retention: chrono::Duration,
    now: DateTime<Utc>,
) -> Result<u64, crate::store::StoreError> {
    let cutoff = now - retention;
    let mut total = 0;
    loop {
        let n = store.audit_delete_before(cutoff, RETENTION_BATCH).await?;
        total += n;
        if n < u64::try_from(RETENTION_BATCH).unwrap_or(u64::MAX) {
            return Ok(total);
        }
    }
}

/// Runs retention at start and every [`RETENTION_INTERVAL`] until `stop` turns true;
/// `retention_days` 0 keeps everything (no task).
pub fn spawn_retention(
    store: Store,
    retention_days: u32,
    mut stop: watch::Receiver<bool>,
) -> Option<JoinHandle<()>> {
    if retention_days == 0 {
        return None;
    }
    let retention = chrono::Duration::days(i64::from(retention_days));
    Some(tokio::spawn(async move {
        loop {
            match purge_expired(&store, retention, Utc::now()).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(deleted = n, "audit events past retention deleted"),
                Err(e) => tracing::warn!(
                    error = format!("{:#}", anyhow::Error::new(e)),
                    "audit retention failed; retrying next interval"
                ),
            }
            tokio::select! {
                () = tokio::time::sleep(RETENTION_INTERVAL) => {}
                _ = stop.wait_for(|stopped| *stopped) => return,
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_told_apart_from_changes() {
        assert!(is_read_only("mq:DescribeBroker"));
        assert!(is_read_only("mq:ListAuditEvents"));
        assert!(is_read_only("iam:GetUser"));
        assert!(!is_read_only("mq:DeleteBroker"));
        assert!(!is_read_only("iam:CreateAccessKey"));
        assert!(!is_read_only("sts:AssumeRole"));
    }

    #[test]
    fn times_parse_in_both_forms_and_garbage_is_refused() {
        let t = parse_time("startTime", Some("2026-11-28T06:00:00Z"))
            .expect("rfc3339")
            .expect("some");
        assert_eq!(t.timestamp(), 1_795_845_600);
        let e = parse_time("startTime", Some("1795845600"))
            .expect("epoch")
            .expect("some");
        assert_eq!(e, t);
        assert!(parse_time("startTime", None).expect("none").is_none());
        assert!(parse_time("endTime", Some("yesterday")).is_err());
    }

    #[test]
    fn now_has_microsecond_precision() {
        assert_eq!(now().timestamp_subsec_nanos() % 1000, 0);
    }
}
