//! Chaos tooling for replicated brokers: producers that publish with confirms through
//! failovers and record every confirm, a drain that checks the queue against those records,
//! and the arithmetic of failover times and confirm gaps.
//!
//! A producer's message body is `<producer>:<seq>`. It resends everything from its first
//! unconfirmed sequence number after any failure, so the queue may hold duplicates but, once
//! duplicates are removed, each producer's sequence numbers must appear in increasing order
//! and every confirmed one must be there.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::Confirmation;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};

/// How long one connection attempt (TCP + AMQP handshake) may take; a frozen node accepts
/// TCP and then never answers.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(1000);
/// How long a producer waits for a confirm before it gives the connection up. Long enough
/// for the leader to drop a dead follower from the in-sync set.
pub const CONFIRM_TIMEOUT: Duration = Duration::from_secs(4);
/// Messages a producer has in flight at once.
pub const WINDOW: u64 = 8;

/// One confirm a producer received.
#[derive(Debug, Clone, Copy)]
pub struct ConfirmEvent {
    pub at: Instant,
    /// Index of the endpoint (node) that confirmed it, into the producer's endpoints.
    pub endpoint: usize,
    pub seq: u64,
}

/// What a producer did, shared with the test while it runs.
#[derive(Debug, Default)]
pub struct ProducerLog {
    pub confirmed: BTreeSet<u64>,
    pub confirms: Vec<ConfirmEvent>,
    /// Publishes sent, counting resends.
    pub published: u64,
    pub reconnects: u64,
    /// Negative acknowledgements (the message is resent).
    pub nacks: u64,
}

/// A publisher with confirms that survives failovers by reconnecting to whichever endpoint
/// accepts it (followers refuse clients, naming the leader).
pub struct Producer {
    pub id: String,
    pub endpoints: Vec<String>,
    pub user: (String, String),
    pub queue: String,
    pub log: Arc<Mutex<ProducerLog>>,
    pub stop: Arc<AtomicBool>,
}

pub fn amqp_uri(endpoint: &str, user: &(String, String)) -> String {
    format!("amqp://{}:{}@{endpoint}/%2f", user.0, user.1)
}

/// Connects to `endpoint` within [`CONNECT_TIMEOUT`].
pub async fn connect(endpoint: &str, user: &(String, String)) -> Result<Connection> {
    tokio::time::timeout(
        CONNECT_TIMEOUT,
        Connection::connect(&amqp_uri(endpoint, user), ConnectionProperties::default()),
    )
    .await
    .with_context(|| format!("connecting to {endpoint} timed out"))?
    .with_context(|| format!("connecting to {endpoint}"))
}

/// A confirm-mode channel with `queue` declared durable.
pub async fn confirm_channel(conn: &Connection, queue: &str) -> Result<Channel> {
    let setup = async {
        let ch = conn.create_channel().await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        ch.queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
        Ok::<_, lapin::Error>(ch)
    };
    tokio::time::timeout(CONFIRM_TIMEOUT, setup)
        .await
        .context("channel set-up timed out")?
        .context("channel set-up")
}

pub fn persistent() -> BasicProperties {
    BasicProperties::default().with_delivery_mode(2)
}

impl Producer {
    /// Publishes until `stop` is set, moving to the next endpoint whenever one refuses or
    /// fails (a follower refuses clients; a dead node refuses TCP; a frozen one times out).
    pub async fn run(self) {
        let mut next = 0u64; // first sequence number not yet confirmed
        let mut index = 0usize;
        let mut failures_in_a_row = 0usize;
        while !self.stop.load(Ordering::Relaxed) {
            let endpoint = &self.endpoints[index];
            let conn = match connect(endpoint, &self.user).await {
                Ok(c) => c,
                Err(_) => {
                    index = (index + 1) % self.endpoints.len();
                    failures_in_a_row += 1;
                    // Every endpoint refused: nobody leads yet; do not spin.
                    if failures_in_a_row.is_multiple_of(self.endpoints.len()) {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    continue;
                }
            };
            failures_in_a_row = 0;
            let result = self.publish_on(&conn, index, &mut next).await;
            if result.is_err() {
                self.log.lock().expect("log lock").reconnects += 1;
            }
            let _ = tokio::time::timeout(Duration::from_millis(200), conn.close(200, "bye".into()))
                .await;
        }
    }

    /// Publishes windows of messages on one connection until a failure or `stop`.
    async fn publish_on(&self, conn: &Connection, endpoint: usize, next: &mut u64) -> Result<()> {
        let ch = confirm_channel(conn, &self.queue).await?;
        while !self.stop.load(Ordering::Relaxed) {
            let mut pending = Vec::with_capacity(WINDOW as usize);
            for seq in *next..*next + WINDOW {
                let body = format!("{}:{seq}", self.id);
                let confirm = ch
                    .basic_publish(
                        "".into(),
                        self.queue.as_str().into(),
                        BasicPublishOptions::default(),
                        body.as_bytes(),
                        persistent(),
                    )
                    .await
                    .context("publish")?;
                pending.push((seq, confirm));
            }
            self.log.lock().expect("log lock").published += WINDOW;
            // Confirms come in order: the first one missing ends this connection, and
            // everything from it is sent again on the next.
            for (seq, confirm) in pending {
                let outcome = tokio::time::timeout(CONFIRM_TIMEOUT, confirm)
                    .await
                    .context("confirm timed out")?
                    .context("confirm")?;
                let mut log = self.log.lock().expect("log lock");
                match outcome {
                    Confirmation::Ack(_) => {
                        log.confirmed.insert(seq);
                        log.confirms.push(ConfirmEvent {
                            at: Instant::now(),
                            endpoint,
                            seq,
                        });
                        if seq == *next {
                            *next += 1;
                        }
                    }
                    Confirmation::Nack(_) => {
                        log.nacks += 1;
                        bail!("message {seq} nacked");
                    }
                    Confirmation::NotRequested => bail!("confirms were not enabled"),
                }
            }
        }
        Ok(())
    }
}

/// Takes every message from `queue` on `endpoint`: per producer, the sequence numbers in
/// queue order.
pub async fn drain(
    endpoint: &str,
    user: &(String, String),
    queue: &str,
) -> Result<BTreeMap<String, Vec<u64>>> {
    let conn = connect(endpoint, user).await?;
    let ch = conn.create_channel().await?;
    let declared = ch
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .context("passive declare")?;
    let total = declared.message_count();
    ch.basic_qos(1000, Default::default()).await?;
    let mut consumer = ch
        .basic_consume(
            queue.into(),
            "drain".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    let mut by_producer: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    use futures::StreamExt;
    for n in 0..total {
        let delivery = tokio::time::timeout(Duration::from_secs(20), consumer.next())
            .await
            .with_context(|| format!("delivery {n} of {total} did not come"))?
            .context("consumer ended")??;
        let body = std::str::from_utf8(&delivery.data).context("body is not UTF-8")?;
        let (producer, seq) = body
            .rsplit_once(':')
            .with_context(|| format!("unexpected body {body:?}"))?;
        by_producer
            .entry(producer.to_owned())
            .or_default()
            .push(seq.parse().with_context(|| format!("body {body:?}"))?);
    }
    let _ = conn.close(200, "drained".into()).await;
    Ok(by_producer)
}

/// What a drained queue says about one producer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub confirmed: usize,
    pub delivered: usize,
    pub duplicates: usize,
    /// Confirmed sequence numbers absent from the queue (must be empty).
    pub lost: Vec<u64>,
    /// Positions where a first occurrence came after a larger one (must be empty).
    pub out_of_order: Vec<(u64, u64)>,
}

/// Checks one producer's drained sequence numbers against what it saw confirmed.
pub fn verify(confirmed: &BTreeSet<u64>, delivered: &[u64]) -> Verdict {
    let mut seen = BTreeSet::new();
    let mut duplicates = 0;
    let mut out_of_order = Vec::new();
    let mut highest: Option<u64> = None;
    for &seq in delivered {
        if !seen.insert(seq) {
            duplicates += 1;
            continue;
        }
        if let Some(h) = highest {
            if seq < h {
                out_of_order.push((h, seq));
            }
        }
        highest = Some(highest.map_or(seq, |h| h.max(seq)));
    }
    Verdict {
        confirmed: confirmed.len(),
        delivered: delivered.len(),
        duplicates,
        lost: confirmed.difference(&seen).copied().collect(),
        out_of_order,
    }
}

/// The `q`-quantile (0..=1) of `samples` by nearest rank; `None` when empty.
pub fn quantile(samples: &[Duration], q: f64) -> Option<Duration> {
    if samples.is_empty() {
        return None;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    // Nearest rank: the smallest sample with at least q of them at or below it.
    let rank = (q * sorted.len() as f64).ceil().max(1.0) as usize;
    Some(sorted[rank.min(sorted.len()) - 1])
}

/// The longest time without a confirm within `[from, to]`, counting from `from` to the
/// first confirm and from the last one to `to`.
pub fn longest_gap(confirms: &[Instant], from: Instant, to: Instant) -> Duration {
    let mut times: Vec<Instant> = confirms
        .iter()
        .copied()
        .filter(|t| *t >= from && *t <= to)
        .collect();
    times.sort_unstable();
    let mut previous = from;
    let mut longest = Duration::ZERO;
    for t in times.into_iter().chain(std::iter::once(to)) {
        longest = longest.max(t.duration_since(previous));
        previous = t;
    }
    longest
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_counts_duplicates_and_finds_losses_and_reordering() {
        let confirmed: BTreeSet<u64> = [0, 1, 2, 3].into();
        let v = verify(&confirmed, &[0, 1, 2, 1, 2, 3, 4]);
        assert_eq!(v.duplicates, 2);
        assert!(v.lost.is_empty() && v.out_of_order.is_empty(), "{v:?}");
        let v = verify(&confirmed, &[0, 2, 1, 4]);
        assert_eq!(v.lost, vec![3]);
        assert_eq!(v.out_of_order, vec![(2, 1)]);
    }

    #[test]
    fn quantiles_and_gaps() {
        let ms = Duration::from_millis;
        let samples: Vec<Duration> = (1..=100).map(ms).collect();
        assert_eq!(quantile(&samples, 0.5), Some(ms(50)));
        assert_eq!(quantile(&samples, 0.99), Some(ms(99)));
        assert_eq!(quantile(&[], 0.5), None);
        let t0 = Instant::now();
        let confirms = [t0 + ms(10), t0 + ms(500), t0 + ms(600)];
        assert_eq!(longest_gap(&confirms, t0, t0 + ms(700)), ms(490));
        assert_eq!(longest_gap(&confirms, t0, t0 + ms(2000)), ms(1400));
    }
}
