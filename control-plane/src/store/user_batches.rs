//! CreateUser on Postgres, coalesced (see [`super::coalesce`]): concurrent creations share
//! one statement and one commit.
//!
//! The statement locks the batch's live brokers (in id order), inserts every user whose
//! broker is live, and bumps each such broker's generation once: all the users a batch
//! adds to one broker are pending at that new generation, as if one request had added
//! them. Each request's answer is its own: created (with the generation), broker missing
//! or being deleted, or the user already exists.
//!
//! The request's audit record goes in with its user, in the same statement: a created user
//! and the record of its creation commit together or not at all.
//!
//! Failure rules:
//! - The same user twice in one batch: only the first is in it; the others run alone
//!   after it (and so see it, and answer that the user exists).
//! - The statement failed inside Postgres (an error answered by the server): nothing was
//!   committed, so every request runs alone and gets its own answer.
//! - Anything else (the connection broke, the pool timed out): whether the commit happened
//!   is unknown, so every request fails, as a lone statement would, and is not rerun.

use std::collections::HashSet;

use chrono::{DateTime, Utc};

use super::coalesce::Coalescer;
use super::fast_pool::{on_fast, FastPool};
use super::{json_list, BrokerId, Constraint, NewAuditEvent, NewUser, StoreError};
use crate::model::{BrokerState, ChangeType};

/// Batch statements running at once: one, so batches never lock brokers against each other.
const BATCHES_RUNNING: usize = 1;

/// One CreateUser: the user, its broker, the request's time, and the request's audit
/// record, committed with the user (and only if the user is created).
#[derive(Debug)]
pub struct UserCreation {
    pub broker_id: BrokerId,
    pub user: NewUser,
    pub at: DateTime<Utc>,
    pub audit: Option<NewAuditEvent>,
}

/// What one creation in a batch came to.
#[derive(Debug)]
pub enum Created {
    Done(Result<i64, StoreError>),
    /// Run it alone (see the module's failure rules).
    RunAlone,
}

pub type CreateUserBatches = Coalescer<UserCreation, Created>;

pub fn create_user_batches(fast: &FastPool) -> CreateUserBatches {
    let fast = fast.clone();
    Coalescer::new(BATCHES_RUNNING, move |wanted| {
        let fast = fast.clone();
        async move { Ok(create_users(&fast, wanted).await) }
    })
}

/// Brokers are found with `= ANY` (an index probe each, however many brokers there are:
/// the fast pool never plans a whole-table scan). No detail version is bumped beside the
/// generation: DescribeBroker's memory compares the generation (migration 0110). The audit
/// records go in only for the users that went in.
const SQL: &str = "WITH req AS ( \
         SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bool[], $5::text[], \
             $6::bool[], $7::timestamptz[], $8::timestamptz[], $9::text[], $10::text[], \
             $11::text[], $12::text[], $13::text[], $14::int4[], $15::text[], $16::text[]) \
         WITH ORDINALITY AS r(broker_id, username, password_hash, console_access, groups, \
             replication_user, asked_at, occurred_at, request_id, principal, action, \
             resource, decision, http_status, error_code, source_ip, ord) \
     ), broker AS ( \
         SELECT id, generation + 1 AS generation FROM brokers \
         WHERE id = ANY ($1::text[]) AND state <> $18 \
         ORDER BY id FOR UPDATE \
     ), added AS ( \
         INSERT INTO broker_users (broker_id, username, password_hash, console_access, \
             groups, replication_user, pending_change, pending_generation, created_at) \
         SELECT req.broker_id, req.username, req.password_hash, req.console_access, \
             req.groups, req.replication_user, $17, broker.generation, req.asked_at \
         FROM req JOIN broker ON broker.id = req.broker_id \
         ON CONFLICT (broker_id, username) DO UPDATE SET \
             password_hash = EXCLUDED.password_hash, \
             console_access = EXCLUDED.console_access, groups = EXCLUDED.groups, \
             replication_user = EXCLUDED.replication_user, \
             pending_change = EXCLUDED.pending_change, \
             pending_generation = EXCLUDED.pending_generation \
         WHERE broker_users.pending_change = 'DELETE' \
         RETURNING broker_id, username, pending_generation \
     ), bumped AS ( \
         UPDATE brokers SET generation = broker.generation, updated_at = $19 \
         FROM broker WHERE brokers.id = broker.id \
             AND broker.id IN (SELECT broker_id FROM added) \
         RETURNING brokers.id \
     ), audited AS ( \
         INSERT INTO audit_events (occurred_at, request_id, principal, action, resource, \
             decision, http_status, error_code, source_ip) \
         SELECT req.occurred_at, req.request_id, req.principal, req.action, req.resource, \
             req.decision, req.http_status, req.error_code, req.source_ip \
         FROM req JOIN added ON added.broker_id = req.broker_id \
             AND added.username = req.username \
         WHERE req.decision IS NOT NULL \
     ) \
     SELECT req.ord, broker.id IS NOT NULL AS live, added.pending_generation \
     FROM req LEFT JOIN broker ON broker.id = req.broker_id \
     LEFT JOIN added ON added.broker_id = req.broker_id AND added.username = req.username";

/// One row per creation asked: its 1-based position, whether its broker is live, and the
/// generation it was created at (`None`: the user exists).
type Row = (i64, bool, Option<i64>);

/// Runs [`SQL`] for `batch`, which holds each (broker, user) at most once.
async fn run(fast: &FastPool, batch: &[&UserCreation]) -> Result<Vec<Row>, sqlx::Error> {
    fn column<'a, T>(batch: &[&'a UserCreation], f: impl Fn(&'a UserCreation) -> T) -> Vec<T> {
        batch.iter().map(|c| f(c)).collect()
    }
    let audit = |f: fn(&NewAuditEvent) -> Option<&str>| {
        column(batch, move |c| c.audit.as_ref().and_then(f))
    };
    let now = batch.iter().map(|c| c.at).max().unwrap_or_else(Utc::now);
    let query = sqlx::query_as(SQL)
        .bind(column(batch, |c| c.broker_id.as_str()))
        .bind(column(batch, |c| c.user.username.as_str()))
        .bind(column(batch, |c| c.user.password_hash.as_str()))
        .bind(column(batch, |c| c.user.console_access))
        .bind(column(batch, |c| json_list(&c.user.groups)))
        .bind(column(batch, |c| c.user.replication_user))
        .bind(column(batch, |c| c.at))
        .bind(column(batch, |c| c.audit.as_ref().map(|a| a.occurred_at)))
        .bind(audit(|a| Some(a.request_id.as_str())))
        .bind(audit(|a| Some(a.principal.as_str())))
        .bind(audit(|a| a.action.as_deref()))
        .bind(audit(|a| a.resource.as_deref()))
        .bind(audit(|a| Some(a.decision.as_str())))
        .bind(column(batch, |c| {
            c.audit.as_ref().map(|a| i32::from(a.http_status))
        }))
        .bind(audit(|a| a.error_code.as_deref()))
        .bind(audit(|a| a.source_ip.as_deref()))
        .bind(ChangeType::Create.as_str())
        .bind(BrokerState::DeletionInProgress.as_str())
        .bind(now);
    on_fast!(fast, conn => query.fetch_all(conn)).await
}

/// What a creation's row says.
fn answer((_, live, generation): Row) -> Result<i64, StoreError> {
    match (live, generation) {
        (false, _) => Err(StoreError::NotFound("broker")),
        (true, None) => Err(StoreError::Constraint(Constraint::BrokerUser)),
        (true, Some(generation)) => Ok(generation),
    }
}

/// One creation on its own (after its batch sent it here): the same statement, with its
/// own error.
pub async fn create_user_alone(
    fast: &FastPool,
    creation: &UserCreation,
) -> Result<i64, StoreError> {
    let rows = run(fast, &[creation]).await?;
    let row = rows.into_iter().next().ok_or_else(|| {
        StoreError::Corrupt("a user creation missing from its statement's answer".to_owned())
    })?;
    answer(row)
}

/// Runs one batch: an answer per entry of `wanted`, in order.
async fn create_users(fast: &FastPool, wanted: Vec<UserCreation>) -> Vec<Created> {
    // The first of each (broker, user) goes in; repeats run alone afterwards.
    let mut seen = HashSet::new();
    let first: Vec<bool> = wanted
        .iter()
        .map(|c| seen.insert((c.broker_id.as_str(), c.user.username.as_str())))
        .collect();
    let batch: Vec<&UserCreation> = wanted
        .iter()
        .zip(&first)
        .filter_map(|(c, first)| first.then_some(c))
        .collect();
    let rows = match run(fast, &batch).await {
        Ok(rows) => rows,
        Err(sqlx::Error::Database(e)) => {
            tracing::warn!("a batch of user creations failed; each runs alone: {e}");
            return wanted.iter().map(|_| Created::RunAlone).collect();
        }
        Err(e) => {
            return wanted
                .iter()
                .map(|_| Created::Done(Err(StoreError::Database(same_error(&e)))))
                .collect();
        }
    };
    let mut answers: Vec<Option<Result<i64, StoreError>>> = batch.iter().map(|_| None).collect();
    for row in rows {
        let slot = usize::try_from(row.0 - 1)
            .ok()
            .and_then(|i| answers.get_mut(i));
        if let Some(slot) = slot {
            *slot = Some(answer(row));
        }
    }
    let mut answers = answers.into_iter();
    first
        .into_iter()
        .map(|first| match first {
            // A row missing from the answer is a bug; its request is not told it succeeded.
            true => answers.next().flatten().map_or(
                Created::Done(Err(StoreError::Corrupt(
                    "a user creation missing from its batch's answer".to_owned(),
                ))),
                Created::Done,
            ),
            false => Created::RunAlone,
        })
        .collect()
}

/// `e` again, for every request of a failed batch (`sqlx::Error` is not `Clone`).
fn same_error(e: &sqlx::Error) -> sqlx::Error {
    match e {
        sqlx::Error::PoolTimedOut => sqlx::Error::PoolTimedOut,
        sqlx::Error::PoolClosed => sqlx::Error::PoolClosed,
        sqlx::Error::Io(io) => sqlx::Error::Io(std::io::Error::new(io.kind(), io.to_string())),
        other => sqlx::Error::Protocol(other.to_string()),
    }
}
