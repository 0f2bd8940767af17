//! Shared by the engine's crash tests: deterministic messages (so that any delivery can be
//! checked byte for byte against what was published) and a ledger of what the broker
//! confirmed, what a consumer acked, and what came back.

#![allow(dead_code)] // each test binary uses a different subset

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties};

/// Bound on connecting to a freshly started agent.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on any single broker round trip.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// The random seed of a run: MOORING_CRASH_SEED to replay one, else fresh.
pub fn seed() -> u64 {
    std::env::var("MOORING_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random)
}

pub async fn connect(uri: &str) -> Result<Connection> {
    tokio::time::timeout(
        CONNECT_TIMEOUT,
        Connection::connect(uri, ConnectionProperties::default()),
    )
    .await
    .context("connect timed out")?
    .with_context(|| format!("connecting to {uri}"))
}

/// The body of message `seq` for queue `queue`: its identity first, then a padding whose length
/// and bytes both depend on `seq`. Every 97th message is larger than a 128 KiB frame, so that
/// bodies split over several frames are covered too.
pub fn body(queue: &str, seq: u64) -> Vec<u8> {
    let mut out = format!("{queue}|{seq}|").into_bytes();
    let pad = if seq.is_multiple_of(97) {
        140 * 1024
    } else {
        (seq.wrapping_mul(7919) % 1500) as usize
    };
    out.extend((0..pad).map(|i| (seq as usize).wrapping_mul(31).wrapping_add(i) as u8));
    out
}

/// The properties of message `seq`: most fields set, headers of several types.
pub fn properties(queue: &str, seq: u64) -> BasicProperties {
    let mut nested = FieldTable::default();
    nested.insert("mod".into(), AMQPValue::LongInt((seq % 1000) as i32));
    let mut headers = FieldTable::default();
    headers.insert("seq".into(), AMQPValue::LongLongInt(seq as i64));
    headers.insert(
        "queue".into(),
        AMQPValue::LongString(LongString::from(queue.to_string())),
    );
    headers.insert("even".into(), AMQPValue::Boolean(seq.is_multiple_of(2)));
    headers.insert("nested".into(), AMQPValue::FieldTable(nested));
    headers.insert(
        "list".into(),
        AMQPValue::FieldArray(FieldArray::from(vec![
            AMQPValue::LongInt(1),
            AMQPValue::LongString(LongString::from("two")),
        ])),
    );
    BasicProperties::default()
        .with_content_type("application/x-mooring-crash".into())
        .with_content_encoding("identity".into())
        .with_headers(headers)
        .with_delivery_mode(2)
        .with_priority((seq % 10) as u8)
        .with_correlation_id(format!("corr-{seq}").into())
        .with_reply_to("replies".into())
        .with_message_id(seq.to_string().into())
        .with_timestamp(1_700_000_000 + seq)
        .with_type("crash-test".into())
        .with_app_id("mooring-tests".into())
}

/// The sequence number a delivered message claims (from its message id), after checking that
/// its body and properties are exactly what was published under that number.
pub fn check_delivery(queue: &str, data: &[u8], props: &BasicProperties) -> Result<u64> {
    let seq: u64 = props
        .message_id()
        .as_ref()
        .map(ShortString::as_str)
        .context("delivery without message_id")?
        .parse()
        .context("message_id is not a sequence number")?;
    let expected = body(queue, seq);
    ensure!(
        data == expected.as_slice(),
        "{queue} seq {seq}: body differs (got {} bytes, expected {})",
        data.len(),
        expected.len()
    );
    let expected = properties(queue, seq);
    ensure!(
        *props == expected,
        "{queue} seq {seq}: properties differ:\n got      {props:?}\n expected {expected:?}"
    );
    Ok(seq)
}

/// What happened to one queue's messages over the whole test.
#[derive(Debug, Default)]
pub struct QueueLedger {
    /// Next sequence number to publish; numbers are never reused.
    pub next_seq: u64,
    /// Publishes the broker acked (confirmed).
    pub confirmed: BTreeSet<u64>,
    /// Publishes the broker nacked.
    pub nacked: BTreeSet<u64>,
    /// Messages a consumer acked on a channel that then closed cleanly.
    pub acked: BTreeSet<u64>,
    /// Every number delivered at least once.
    pub delivered: BTreeSet<u64>,
    /// The largest number delivered so far.
    pub max_delivered: Option<u64>,
    /// Deliveries of a number seen before (allowed only for unconfirmed messages).
    pub duplicates: u64,
}

impl QueueLedger {
    /// Records a delivery, checking that order is kept: every new number is larger than any
    /// seen before, and a number seen again must be an unconfirmed one that was never acked.
    pub fn record_delivery(&mut self, queue: &str, seq: u64) -> Result<()> {
        if self.acked.contains(&seq) {
            bail!("{queue}: seq {seq} was acked and came back");
        }
        if let Some(last) = self.max_delivered {
            if seq <= last {
                if self.delivered.contains(&seq) && !self.confirmed.contains(&seq) {
                    self.duplicates += 1;
                    return Ok(());
                }
                bail!("{queue}: order broken, seq {seq} delivered after seq {last}");
            }
        }
        self.delivered.insert(seq);
        self.max_delivered = Some(seq);
        Ok(())
    }

    /// After the final drain: every confirmed message was delivered at some point.
    pub fn check_complete(&self, queue: &str) -> Result<()> {
        let lost: Vec<u64> = self
            .confirmed
            .difference(&self.delivered)
            .copied()
            .collect();
        ensure!(
            lost.is_empty(),
            "{queue}: {} confirmed messages lost, first ones: {:?}",
            lost.len(),
            &lost[..lost.len().min(20)]
        );
        let phantom: Vec<u64> = self
            .delivered
            .iter()
            .filter(|s| **s >= self.next_seq)
            .copied()
            .collect();
        ensure!(
            phantom.is_empty(),
            "{queue}: never published but delivered: {phantom:?}"
        );
        Ok(())
    }
}

/// Publishes `seqs` into `queue` and waits until every one is confirmed.
pub async fn publish_confirmed(
    conn: &Connection,
    queue: &str,
    seqs: std::ops::Range<u64>,
) -> Result<()> {
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let mut confirms = Vec::new();
    for seq in seqs {
        let confirm = ch
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                &body(queue, seq),
                properties(queue, seq),
            )
            .await?;
        confirms.push((seq, confirm));
    }
    for (seq, confirm) in confirms {
        let confirmation = tokio::time::timeout(STEP_TIMEOUT, confirm)
            .await
            .context("confirm timed out")??;
        ensure!(
            matches!(confirmation, Confirmation::Ack(None)),
            "seq {seq} not confirmed: {confirmation:?}"
        );
    }
    ch.close(200, "published".into()).await?;
    Ok(())
}
