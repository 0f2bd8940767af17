//! CreateUser on Postgres, coalesced (see [`super::coalesce`]): concurrent creations share
//! one statement and one commit.
//!
//! The statement locks the batch's live brokers (in id order), inserts every user whose
//! broker is live, and bumps each such broker's generation once: all the users a batch
//! adds to one broker are pending at that new generation, as if one request had added
//! them. Each request's answer is its own: created (with the generation), broker missing
//! or being deleted, or the user already exists.
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
use super::{json_list, BrokerId, Constraint, NewUser, StoreError};
use crate::model::{BrokerState, ChangeType};

/// Batch statements running at once: one, so batches never lock brokers against each other.
const BATCHES_RUNNING: usize = 1;

/// A user to create on a broker, at the request's time.
pub type CreateKey = (BrokerId, NewUser, DateTime<Utc>);

/// What one creation in a batch came to.
#[derive(Debug)]
pub enum Created {
    Done(Result<i64, StoreError>),
    /// Run it alone (see the module's failure rules).
    RunAlone,
}

pub type CreateUserBatches = Coalescer<CreateKey, Created>;

pub fn create_user_batches(fast: &FastPool) -> CreateUserBatches {
    let fast = fast.clone();
    Coalescer::new(BATCHES_RUNNING, move |wanted| {
        let fast = fast.clone();
        async move { Ok(create_users(&fast, wanted).await) }
    })
}

const SQL: &str = "WITH req AS ( \
         SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bool[], $5::text[], \
             $6::bool[], $7::timestamptz[]) \
         WITH ORDINALITY AS r(broker_id, username, password_hash, console_access, groups, \
             replication_user, asked_at, ord) \
     ), broker AS ( \
         SELECT id, generation + 1 AS generation FROM brokers \
         WHERE id IN (SELECT broker_id FROM req) AND state <> $9 \
         ORDER BY id FOR UPDATE \
     ), added AS ( \
         INSERT INTO broker_users (broker_id, username, password_hash, console_access, \
             groups, replication_user, pending_change, pending_generation, created_at) \
         SELECT req.broker_id, req.username, req.password_hash, req.console_access, \
             req.groups, req.replication_user, $8, broker.generation, req.asked_at \
         FROM req JOIN broker ON broker.id = req.broker_id ORDER BY req.ord \
         ON CONFLICT (broker_id, username) DO UPDATE SET \
             password_hash = EXCLUDED.password_hash, \
             console_access = EXCLUDED.console_access, groups = EXCLUDED.groups, \
             replication_user = EXCLUDED.replication_user, \
             pending_change = EXCLUDED.pending_change, \
             pending_generation = EXCLUDED.pending_generation \
         WHERE broker_users.pending_change = 'DELETE' \
         RETURNING broker_id, username, pending_generation \
     ), bumped AS ( \
         UPDATE brokers SET generation = broker.generation, updated_at = $10 \
         FROM broker WHERE brokers.id = broker.id \
             AND broker.id IN (SELECT broker_id FROM added) \
         RETURNING brokers.id \
     ) \
     SELECT req.ord, broker.id IS NOT NULL AS live, added.pending_generation \
     FROM req LEFT JOIN broker ON broker.id = req.broker_id \
     LEFT JOIN added ON added.broker_id = req.broker_id AND added.username = req.username";

/// Runs one batch: an answer per entry of `wanted`, in order.
async fn create_users(fast: &FastPool, wanted: Vec<CreateKey>) -> Vec<Created> {
    // The first of each (broker, user) goes in; repeats run alone afterwards.
    let mut seen = HashSet::new();
    let first: Vec<bool> = wanted
        .iter()
        .map(|(broker, user, _)| seen.insert((broker.as_str(), user.username.as_str())))
        .collect();
    let batch: Vec<&CreateKey> = wanted
        .iter()
        .zip(&first)
        .filter_map(|(key, first)| first.then_some(key))
        .collect();
    let now = batch
        .iter()
        .map(|(_, _, at)| *at)
        .max()
        .unwrap_or_else(Utc::now);
    let query = sqlx::query_as(SQL)
        .bind(batch.iter().map(|(b, _, _)| b.as_str()).collect::<Vec<_>>())
        .bind(
            batch
                .iter()
                .map(|(_, u, _)| u.username.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            batch
                .iter()
                .map(|(_, u, _)| u.password_hash.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            batch
                .iter()
                .map(|(_, u, _)| u.console_access)
                .collect::<Vec<_>>(),
        )
        .bind(
            batch
                .iter()
                .map(|(_, u, _)| json_list(&u.groups))
                .collect::<Vec<_>>(),
        )
        .bind(
            batch
                .iter()
                .map(|(_, u, _)| u.replication_user)
                .collect::<Vec<_>>(),
        )
        .bind(batch.iter().map(|(_, _, at)| *at).collect::<Vec<_>>())
        .bind(ChangeType::Create.as_str())
        .bind(BrokerState::DeletionInProgress.as_str())
        .bind(now);
    let rows: Result<Vec<(i64, bool, Option<i64>)>, sqlx::Error> =
        on_fast!(fast, conn => query.fetch_all(conn)).await;
    let rows = match rows {
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
    for (ord, live, generation) in rows {
        let slot = usize::try_from(ord - 1)
            .ok()
            .and_then(|i| answers.get_mut(i));
        if let Some(slot) = slot {
            *slot = Some(match (live, generation) {
                (false, _) => Err(StoreError::NotFound("broker")),
                (true, None) => Err(StoreError::Constraint(Constraint::BrokerUser)),
                (true, Some(generation)) => Ok(generation),
            });
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
