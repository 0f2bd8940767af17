//! Crash safety of the engine (issue 2, "It must show" point 2).
//!
//! Publishers send persistent messages with confirms into three durable queues (one of type
//! quorum) while the agent is SIGKILLed at random moments, at least 20 times, and restarted on
//! the same data directory. Between kills a consumer takes and acks some messages, closing
//! its channel cleanly so the acks are known to be processed. At the end everything is
//! drained: every confirmed message is there, byte for byte, in order per queue, and no acked
//! message comes back. The random seed is printed; set MOORING_CRASH_SEED to replay a run.

mod engine_support;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use engine_support::{body, check_delivery, connect, properties, QueueLedger};
use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, Confirmation, Connection};
use mooring_tests::Agent;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// (queue name, x-queue-type)
const QUEUES: [(&str, &str); 3] = [
    ("crash.classic.a", "classic"),
    ("crash.classic.b", "classic"),
    ("crash.quorum", "quorum"),
];
/// SIGKILLs per run (more with MOORING_LONG=1).
const KILLS: usize = 20;
const KILLS_LONG: usize = 100;
/// Unconfirmed publishes each publisher keeps in flight.
const CONFIRM_WINDOW: usize = 32;
/// Publishing stops once a queue has this many numbers, to bound the final drain.
const MAX_PER_QUEUE: u64 = 6_000;
/// How long a publisher runs before the kill: a random point in this range (milliseconds).
const KILL_AFTER_MS: std::ops::Range<u64> = 30..400;
/// Messages a consumer phase takes from one queue.
const CONSUME_BATCH: usize = 25;
/// Bound on any single broker round trip.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

type Ledgers = Arc<Vec<Mutex<QueueLedger>>>;

fn lock(ledgers: &Ledgers, q: usize) -> std::sync::MutexGuard<'_, QueueLedger> {
    ledgers[q].lock().expect("a ledger lock holder panicked")
}

fn seed() -> u64 {
    std::env::var("MOORING_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random)
}

async fn declare_queues(ch: &Channel) -> Result<()> {
    for (name, kind) in QUEUES {
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString(LongString::from(kind)),
        );
        ch.queue_declare(
            name.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await
        .with_context(|| format!("declaring {name}"))?;
    }
    Ok(())
}

/// Publishes numbered messages into queue `q` with a window of unconfirmed publishes until the
/// connection dies (the kill) or the queue's budget is spent. Every ack is recorded the moment
/// it arrives, so whatever the broker confirmed before dying is in the ledger.
async fn publish(conn: Arc<Connection>, q: usize, ledgers: Ledgers) -> Result<()> {
    let (queue, _) = QUEUES[q];
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let mut in_flight = VecDeque::new();
    loop {
        let seq = {
            let mut ledger = lock(&ledgers, q);
            if ledger.next_seq >= MAX_PER_QUEUE {
                None
            } else {
                ledger.next_seq += 1;
                Some(ledger.next_seq - 1)
            }
        };
        let Some(seq) = seq else { break };
        let confirm = ch
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                &body(queue, seq),
                properties(queue, seq),
            )
            .await?;
        in_flight.push_back((seq, confirm));
        while in_flight.len() >= CONFIRM_WINDOW {
            let (seq, confirm) = in_flight.pop_front().expect("window is not empty");
            settle(&ledgers, q, seq, confirm).await?;
        }
    }
    while let Some((seq, confirm)) = in_flight.pop_front() {
        settle(&ledgers, q, seq, confirm).await?;
    }
    Ok(())
}

async fn settle(
    ledgers: &Ledgers,
    q: usize,
    seq: u64,
    confirm: impl std::future::IntoFuture<Output = lapin::Result<Confirmation>>,
) -> Result<()> {
    let confirmation = tokio::time::timeout(STEP_TIMEOUT, confirm)
        .await
        .context("confirm timed out")??;
    let mut ledger = lock(ledgers, q);
    match confirmation {
        Confirmation::Ack(None) => {
            ledger.confirmed.insert(seq);
        }
        Confirmation::Nack(_) => {
            ledger.nacked.insert(seq);
        }
        other => bail!("unexpected confirmation for seq {seq}: {other:?}"),
    }
    Ok(())
}

/// Takes up to `CONSUME_BATCH` messages from queue `q`, checks each, acks them all and closes
/// the channel cleanly: once close-ok arrives the broker has processed the ack.
async fn consume_some(conn: &Connection, q: usize, ledgers: &Ledgers) -> Result<usize> {
    let (queue, _) = QUEUES[q];
    let ch = conn.create_channel().await?;
    let mut seqs = Vec::new();
    let mut last_tag = None;
    for _ in 0..CONSUME_BATCH {
        let Some(msg) = ch
            .basic_get(queue.into(), BasicGetOptions { no_ack: false })
            .await?
        else {
            break;
        };
        let seq = check_delivery(queue, &msg.delivery.data, &msg.delivery.properties)?;
        seqs.push(seq);
        last_tag = Some(msg.delivery.delivery_tag);
    }
    if let Some(tag) = last_tag {
        ch.basic_ack(tag, BasicAckOptions { multiple: true })
            .await?;
    }
    tokio::time::timeout(STEP_TIMEOUT, ch.close(200, "acks done".into()))
        .await
        .context("channel close timed out")??;
    let mut ledger = lock(ledgers, q);
    for &seq in &seqs {
        ledger.record_delivery(queue, seq)?;
    }
    ledger.acked.extend(seqs.iter().copied());
    Ok(seqs.len())
}

/// Drains every queue after the last restart, checking each delivery.
async fn drain_all(conn: &Connection, ledgers: &Ledgers) -> Result<()> {
    let ch = conn.create_channel().await?;
    for (q, (queue, _)) in QUEUES.iter().enumerate() {
        // Bounded by the number of messages ever published, plus slack for duplicates.
        let limit = MAX_PER_QUEUE as usize * 2;
        let mut n = 0;
        loop {
            ensure!(n < limit, "{queue}: more messages than were ever published");
            let Some(msg) = ch
                .basic_get((*queue).into(), BasicGetOptions { no_ack: true })
                .await?
            else {
                break;
            };
            let seq = check_delivery(queue, &msg.delivery.data, &msg.delivery.properties)?;
            lock(ledgers, q).record_delivery(queue, seq)?;
            n += 1;
        }
    }
    Ok(())
}

/// One life of the agent: publishers run, a consumer takes a batch on some lives, then the
/// agent is killed at a random moment.
async fn one_life(
    agent: &mut Agent,
    ledgers: &Ledgers,
    rng: &mut StdRng,
    life: usize,
) -> Result<()> {
    let uri = agent.amqp_uri()?;
    let conn = Arc::new(connect(&uri).await?);
    declare_queues(&conn.create_channel().await?).await?;
    let publishers: Vec<_> = (0..QUEUES.len())
        .map(|q| tokio::spawn(publish(conn.clone(), q, ledgers.clone())))
        .collect();
    if life % 2 == 1 {
        let consumer = connect(&uri).await?;
        consume_some(&consumer, life % QUEUES.len(), ledgers).await?;
        // The channel is closed; the connection may die with the kill.
        drop(consumer);
    }
    tokio::time::sleep(Duration::from_millis(rng.gen_range(KILL_AFTER_MS))).await;
    agent.kill();
    for p in publishers {
        // Publishers fail once the broker is gone; their acks are already in the ledger.
        p.abort();
        let _ = p.await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_messages_survive_repeated_sigkill() -> Result<()> {
    let seed = seed();
    println!("MOORING_CRASH_SEED={seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let kills = if std::env::var_os("MOORING_LONG").is_some() {
        KILLS_LONG
    } else {
        KILLS
    };
    let dir = tempfile::tempdir()?;
    let mut agent = Agent::start(&dir.path().join("data"), &[]).await?;
    let ledgers: Ledgers = Arc::new((0..QUEUES.len()).map(|_| Mutex::default()).collect());

    for life in 0..kills {
        one_life(&mut agent, &ledgers, &mut rng, life)
            .await
            .with_context(|| format!("life {life} (seed {seed})"))?;
        agent
            .restart()
            .await
            .with_context(|| format!("restart after kill {} (seed {seed})", life + 1))?;
    }

    let conn = connect(&agent.amqp_uri()?).await?;
    drain_all(&conn, &ledgers).await.with_context(|| {
        format!(
            "final drain (seed {seed}); agent log:\n{}",
            agent.log_tail()
        )
    })?;
    for (q, (queue, _)) in QUEUES.iter().enumerate() {
        let ledger = lock(&ledgers, q);
        ledger
            .check_complete(queue)
            .with_context(|| format!("seed {seed}"))?;
        println!(
            "{queue}: published {} confirmed {} nacked {} acked {} delivered {} duplicates {}",
            ledger.next_seq,
            ledger.confirmed.len(),
            ledger.nacked.len(),
            ledger.acked.len(),
            ledger.delivered.len(),
            ledger.duplicates
        );
        ensure!(
            !ledger.confirmed.is_empty(),
            "{queue}: nothing was ever confirmed"
        );
    }
    let acked: usize = (0..QUEUES.len())
        .map(|q| lock(&ledgers, q).acked.len())
        .sum();
    ensure!(
        acked > 0,
        "no consumer phase acked anything: the ack check proved nothing"
    );
    conn.close(200, "done".into()).await?;
    agent.stop().await?;
    Ok(())
}

/// Publishes `seqs` into `queue` and waits until every one is confirmed.
async fn publish_confirmed(
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

/// Sizes of the queue's segment files, by path.
fn segment_sizes(
    data_dir: &std::path::Path,
    queue: &str,
) -> Result<Vec<(std::path::PathBuf, u64)>> {
    let dir = mooring_tests::queue_files::queue_dir(data_dir, "/", queue)?
        .with_context(|| format!("no log directory for {queue} under {}", data_dir.display()))?;
    mooring_tests::queue_files::segments(&dir)?
        .into_iter()
        .map(|p| {
            let len = std::fs::metadata(&p)?.len();
            Ok((p, len))
        })
        .collect()
}

/// Torn tails: the agent is stopped, the newest part of a segment file is cut at a random
/// offset and garbage appended (what a crash during a write can leave). On restart every
/// message confirmed before the damaged region is still there, the damaged part yields at most
/// an intact prefix of what followed, and the queue keeps working.
#[tokio::test]
async fn torn_segment_tail_is_recovered_without_losing_earlier_messages() -> Result<()> {
    let seed = seed();
    println!("MOORING_CRASH_SEED={seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    const PHASE: u64 = 200;
    for (round, kind) in ["classic", "quorum", "classic"].into_iter().enumerate() {
        let queue = format!("torn.{kind}.{round}");
        let dir = tempfile::tempdir()?;
        let data_dir = dir.path().join("data");
        let mut agent = Agent::start(&data_dir, &[]).await?;

        // Phase 1: the messages that must survive, then a clean stop.
        let conn = connect(&agent.amqp_uri()?).await?;
        let ch = conn.create_channel().await?;
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString(LongString::from(kind)),
        );
        ch.queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await?;
        publish_confirmed(&conn, &queue, 0..PHASE).await?;
        conn.close(200, "phase 1".into()).await?;
        agent.stop().await?;
        let before = segment_sizes(&data_dir, &queue)?;

        // Phase 2: the messages whose region gets damaged.
        agent.restart().await?;
        let conn = connect(&agent.amqp_uri()?).await?;
        publish_confirmed(&conn, &queue, PHASE..2 * PHASE).await?;
        conn.close(200, "phase 2".into()).await?;
        agent.stop().await?;
        let after = segment_sizes(&data_dir, &queue)?;

        // Damage the newest file that grew in phase 2, only past its phase-1 length.
        let (path, old_len, new_len) = after
            .iter()
            .rev()
            .find_map(|(p, len)| {
                let old = before.iter().find(|(b, _)| b == p).map_or(0, |(_, l)| *l);
                (*len > old).then(|| (p.clone(), old, *len))
            })
            .context("phase 2 grew no segment file")?;
        let cut = rng.gen_range(old_len..=new_len);
        let garbage: Vec<u8> = (0..rng.gen_range(1..=512)).map(|_| rng.gen()).collect();
        {
            use std::io::Write;
            let f = std::fs::OpenOptions::new().write(true).open(&path)?;
            f.set_len(cut)?;
            let mut f = std::fs::OpenOptions::new().append(true).open(&path)?;
            f.write_all(&garbage)?;
            f.sync_all()?;
        }
        println!(
            "round {round} ({kind}): {} cut at {cut} (phase 2 spans {old_len}..{new_len}), {} garbage bytes",
            path.display(),
            garbage.len()
        );

        agent
            .restart()
            .await
            .with_context(|| format!("restart after tearing {}", path.display()))?;
        let conn = connect(&agent.amqp_uri()?).await?;
        let ch = conn.create_channel().await?;
        let mut got = Vec::new();
        while let Some(msg) = ch
            .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
            .await?
        {
            got.push(check_delivery(
                &queue,
                &msg.delivery.data,
                &msg.delivery.properties,
            )?);
            ensure!(
                got.len() as u64 <= 2 * PHASE,
                "more messages than were published"
            );
        }
        // Everything from phase 1, then an unbroken prefix of phase 2, in order.
        let expected: Vec<u64> = (0..got.len() as u64).collect();
        ensure!(
            got.len() as u64 >= PHASE && got == expected,
            "round {round} (seed {seed}): recovered {} messages, not 0..{PHASE} then a prefix: first/last {:?}/{:?}",
            got.len(),
            got.first(),
            got.last()
        );
        println!(
            "round {round}: {} of {} phase-2 messages kept",
            got.len() as u64 - PHASE,
            PHASE
        );

        // The repaired log takes new appends, and the drained messages stay acked.
        publish_confirmed(&conn, &queue, 10_000..10_001).await?;
        conn.close(200, "checked".into()).await?;
        agent.kill();
        agent.restart().await?;
        let conn = connect(&agent.amqp_uri()?).await?;
        let ch = conn.create_channel().await?;
        let msg = ch
            .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
            .await?
            .context("the message published after recovery is gone")?;
        ensure!(check_delivery(&queue, &msg.delivery.data, &msg.delivery.properties)? == 10_000);
        ensure!(
            ch.basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
                .await?
                .is_none(),
            "drained messages came back after a restart"
        );
        conn.close(200, "done".into()).await?;
        agent.stop().await?;
    }
    Ok(())
}
