//! The API's hottest statements on Postgres, coalesced (see [`super::coalesce`]):
//! concurrent DescribeBroker requests share one statement, and so do ListBrokers pages and
//! CreateUser's writes ([`super::user_batches`]).
//!
//! Each batch statement takes its keys as arrays and answers every key with a lateral
//! primary-key lookup (`LIMIT` keeps each lookup an index probe rather than letting the
//! plan hash the whole table). Identical ListBrokers pages asked together (a dashboard's
//! first page, say) are read once and shared: they were all asked before the statement
//! started, so each still sees every write committed before it asked.

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use super::brokers::{
    summary_from_row, BrokerDetailVersionedRow, SummaryRow, DESCRIBE_SQL_POSTGRES,
    DESCRIBE_USERS_MAX,
};
use super::coalesce::Coalescer;
use super::fast_pool::{on_fast, FastPool};
use super::user_batches::{create_user_batches, CreateUserBatches};
use super::{BrokerSummaryRecord, StoreError};

/// Batch statements of one kind running at once. One: reads queue behind the running
/// batch and share the next (a read waits for at most one batch ahead of it). Measured
/// against two at 16 clients, batches were larger and Postgres's CPU per DescribeBroker
/// fell by a third, at the same p99.
const BATCHES_RUNNING: usize = 1;

/// A DescribeBroker read: the broker's id and the detail version and generation remembered
/// of it.
pub type DescribeKey = (String, Option<(i64, i64)>);
/// A ListBrokers read: the page's `after` id ("" for the first) and its row limit.
pub type ListKey = (String, i64);
type Page = Result<Vec<BrokerSummaryRecord>, StoreError>;

pub struct Batches {
    pub describe: Coalescer<DescribeKey, Option<BrokerDetailVersionedRow>>,
    pub list: Coalescer<ListKey, Page>,
    pub create_user: CreateUserBatches,
}

impl std::fmt::Debug for Batches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batches")
            .field("describe", &self.describe)
            .field("list", &self.list)
            .field("create_user", &self.create_user)
            .finish()
    }
}

impl Batches {
    pub fn new(fast: &FastPool) -> Self {
        let (describe_fast, list_fast) = (fast.clone(), fast.clone());
        Batches {
            describe: Coalescer::new(BATCHES_RUNNING, move |wanted| {
                describe_rows_postgres(describe_fast.clone(), wanted)
            }),
            list: Coalescer::new(BATCHES_RUNNING, move |wanted| {
                list_page_postgres(list_fast.clone(), wanted)
            }),
            create_user: create_user_batches(fast),
        }
    }
}

/// Runs [`DESCRIBE_SQL_POSTGRES`] for `wanted`: one answer per entry, in order, `None` for
/// a broker that does not exist.
pub async fn describe_rows_postgres(
    fast: FastPool,
    wanted: Vec<DescribeKey>,
) -> Result<Vec<Option<BrokerDetailVersionedRow>>, StoreError> {
    let (ids, known): (Vec<String>, Vec<Option<(i64, i64)>>) = wanted.into_iter().unzip();
    let (versions, generations): (Vec<Option<i64>>, Vec<Option<i64>>) =
        known.into_iter().map(Option::unzip).unzip();
    let rows: Vec<BrokerDetailVersionedRow> =
        on_fast!(fast, conn => sqlx::query_as(DESCRIBE_SQL_POSTGRES.as_str())
            .bind(&ids)
            .bind(DESCRIBE_USERS_MAX)
            .bind(&versions)
            .bind(&generations)
            .fetch_all(conn))
        .await?;
    let mut answers: Vec<Option<BrokerDetailVersionedRow>> = ids.iter().map(|_| None).collect();
    for row in rows {
        let ord = row.ord;
        *slot(&mut answers, ord)? = Some(row);
    }
    Ok(answers)
}

/// ListBrokers' pages for `wanted`, one per entry and in order, each page read once
/// however many entries ask for it.
pub async fn list_page_postgres(
    fast: FastPool,
    wanted: Vec<ListKey>,
) -> Result<Vec<Page>, StoreError> {
    const SQL: &str = "SELECT q.ord, b.id, b.name, b.arn, b.state, b.engine_type, \
         b.host_instance_type, b.deployment_mode, b.created_at \
         FROM unnest($1::text[], $2::int8[]) WITH ORDINALITY AS q(after, lim, ord) \
         CROSS JOIN LATERAL (SELECT id, name, arn, state, engine_type, host_instance_type, \
             deployment_mode, created_at FROM brokers WHERE id > q.after \
             ORDER BY id LIMIT q.lim) b \
         ORDER BY q.ord, b.id";
    // Each distinct page once; `asked[i]` is the distinct page entry `i` wants.
    let mut distinct: Vec<&ListKey> = Vec::new();
    let mut index: HashMap<&ListKey, usize> = HashMap::new();
    let asked: Vec<usize> = wanted
        .iter()
        .map(|key| {
            *index.entry(key).or_insert_with(|| {
                distinct.push(key);
                distinct.len() - 1
            })
        })
        .collect();
    let afters: Vec<&str> = distinct.iter().map(|(after, _)| after.as_str()).collect();
    let limits: Vec<i64> = distinct.iter().map(|(_, limit)| *limit).collect();
    let rows: Vec<PageRow> = on_fast!(fast, conn => sqlx::query_as(SQL)
            .bind(&afters)
            .bind(&limits)
            .fetch_all(conn))
    .await?;
    let mut pages: Vec<Vec<SummaryRow>> = distinct.iter().map(|_| Vec::new()).collect();
    for r in rows {
        slot(&mut pages, r.ord)?.push((
            r.id,
            r.name,
            r.arn,
            r.state,
            r.engine_type,
            r.host_instance_type,
            r.deployment_mode,
            r.created_at,
        ));
    }
    let pages: Vec<Page> = pages
        .into_iter()
        .map(|rows| rows.into_iter().map(summary_from_row).collect())
        .collect();
    Ok(asked
        .into_iter()
        .map(|i| match &pages[i] {
            Ok(page) => Ok(page.clone()),
            Err(e) => Err(StoreError::Corrupt(e.to_string())),
        })
        .collect())
}

/// A row of [`list_page_postgres`]'s statement: `ord` is the page it belongs to.
#[derive(sqlx::FromRow)]
struct PageRow {
    ord: i64,
    id: String,
    name: String,
    arn: String,
    state: String,
    engine_type: String,
    host_instance_type: String,
    deployment_mode: String,
    created_at: DateTime<Utc>,
}

/// The answer for 1-based batch position `ord`.
fn slot<T>(answers: &mut [T], ord: i64) -> Result<&mut T, StoreError> {
    usize::try_from(ord - 1)
        .ok()
        .and_then(|i| answers.get_mut(i))
        .ok_or_else(|| StoreError::Corrupt(format!("batch row for position {ord}")))
}
