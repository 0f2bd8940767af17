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
/// Each publisher stops after this many publishes per life, to bound the final drain.
const PUBLISH_PER_LIFE: u64 = 300;
/// The kill comes once this many publishes (a random number in the range, all queues
/// together) were confirmed in the current life, plus a random delay: so always while
/// publishers are busy, whatever the speed of the build.
const KILL_AFTER_CONFIRMS: std::ops::Range<usize> = 1..700;
const KILL_EXTRA_DELAY_MS: std::ops::Range<u64> = 0..15;
/// Bound on the wait for those confirms.
const KILL_TRIGGER_TIMEOUT: Duration = Duration::from_secs(20);
/// Messages a consumer phase takes from one queue.
const CONSUME_BATCH: usize = 25;
/// Messages a consumer holds unacked through a kill.
const HOLD_BATCH: usize = 10;
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
    for _ in 0..PUBLISH_PER_LIFE {
        let seq = {
            let mut ledger = lock(&ledgers, q);
            ledger.next_seq += 1;
            ledger.next_seq - 1
        };
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
        let limit = lock(ledgers, q).next_seq as usize * 2 + 1;
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
    // Odd lives: a consumer acks a batch. Even lives: a consumer holds a batch unacked
    // through the kill; those messages must come back later (the ledger catches a loss).
    let mut holder = None;
    if life % 2 == 1 {
        let consumer = connect(&uri).await?;
        consume_some(&consumer, life % QUEUES.len(), ledgers).await?;
        // The channel is closed; the connection may die with the kill.
        drop(consumer);
    } else {
        let (queue, _) = QUEUES[(life / 2) % QUEUES.len()];
        let conn = connect(&uri).await?;
        let ch = conn.create_channel().await?;
        for _ in 0..HOLD_BATCH {
            let Some(msg) = ch
                .basic_get(queue.into(), BasicGetOptions { no_ack: false })
                .await?
            else {
                break;
            };
            check_delivery(queue, &msg.delivery.data, &msg.delivery.properties)?;
        }
        holder = Some(conn);
    }
    let target = rng.gen_range(KILL_AFTER_CONFIRMS);
    let confirmed_before: usize = (0..QUEUES.len())
        .map(|q| lock(ledgers, q).confirmed.len())
        .sum();
    let budget = PUBLISH_PER_LIFE as usize * QUEUES.len();
    mooring_tests::wait_for(KILL_TRIGGER_TIMEOUT, "confirms before the kill", || {
        let confirmed: usize = (0..QUEUES.len()).map(|q| lock(ledgers, q).confirmed.len()).sum();
        let finished = publishers.iter().all(|p| p.is_finished());
        // A target beyond what this life can confirm (nacks, budget) falls back to the end.
        async move { Ok((confirmed - confirmed_before >= target.min(budget) || finished).then_some(())) }
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(rng.gen_range(KILL_EXTRA_DELAY_MS))).await;
    let finished_before: Vec<bool> = publishers.iter().map(|p| p.is_finished()).collect();
    agent.kill();
    drop(holder);
    for (p, finished) in publishers.into_iter().zip(finished_before) {
        if finished {
            // It ended on its own, before the kill: that must have been success.
            p.await
                .context("publisher panicked")?
                .context("publisher failed before the kill")?;
        } else {
            // Publishers fail once the broker is gone; their acks are already in the ledger.
            p.abort();
            let _ = p.await;
        }
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
    let rounds = [("classic", false), ("quorum", false), ("classic", true)];
    for (round, (kind, restart_between)) in rounds.into_iter().enumerate() {
        let queue = format!("torn.{kind}.{round}");
        let dir = tempfile::tempdir()?;
        let data_dir = dir.path().join("data");
        let mut agent = Agent::start(&data_dir, &[]).await?;

        // Phase 1: the messages that must survive. Once confirmed they are written, so the
        // segment sizes now bound where their records lie.
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
        if restart_between {
            conn.close(200, "phase 1".into()).await?;
            agent.stop().await?;
        }
        let before = segment_sizes(&data_dir, &queue)?;

        // Phase 2: the messages whose region gets damaged; in the same segment as phase 1
        // unless the agent restarted in between (it may start a new segment then).
        let conn = if restart_between {
            agent.restart().await?;
            connect(&agent.amqp_uri()?).await?
        } else {
            conn
        };
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

/// What the definitions churn knows for sure: numbers whose declare and bind were answered,
/// and numbers whose deletes were answered. Anything else was cut by a kill and may go
/// either way.
#[derive(Default)]
struct DefinitionLedger {
    created: std::collections::BTreeSet<u64>,
    /// Deletes sent; with no answer yet, the objects may or may not exist after a kill.
    deleting: std::collections::BTreeSet<u64>,
    deleted: std::collections::BTreeSet<u64>,
    next: u64,
}

/// Declares durable exchange + queue + binding number i, and deletes the ones from two steps
/// back, recording each step once the broker answered it.
async fn churn_definitions(
    conn: Arc<Connection>,
    ledger: Arc<Mutex<DefinitionLedger>>,
) -> Result<()> {
    let ch = conn.create_channel().await?;
    loop {
        let i = {
            let mut l = ledger.lock().expect("ledger lock holder panicked");
            l.next += 1;
            l.next - 1
        };
        let durable = || lapin::options::ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        ch.exchange_declare(
            format!("def.x.{i}").into(),
            lapin::ExchangeKind::Direct,
            durable(),
            FieldTable::default(),
        )
        .await?;
        ch.queue_declare(
            format!("def.q.{i}").into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
        ch.queue_bind(
            format!("def.q.{i}").into(),
            format!("def.x.{i}").into(),
            format!("k{i}").into(),
            Default::default(),
            FieldTable::default(),
        )
        .await?;
        ledger
            .lock()
            .expect("ledger lock holder panicked")
            .created
            .insert(i);
        if i >= 2 && i % 3 == 0 {
            let old = i - 2;
            ledger
                .lock()
                .expect("ledger lock holder panicked")
                .deleting
                .insert(old);
            ch.queue_delete(format!("def.q.{old}").into(), Default::default())
                .await?;
            ch.exchange_delete(format!("def.x.{old}").into(), Default::default())
                .await?;
            ledger
                .lock()
                .expect("ledger lock holder panicked")
                .deleted
                .insert(old);
        }
    }
}

/// Durable exchanges, queues and bindings whose declaration was answered survive SIGKILL;
/// deletions that were answered stay deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_definitions_survive_sigkill() -> Result<()> {
    let seed = seed();
    println!("MOORING_CRASH_SEED={seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir()?;
    let mut agent = Agent::start(&dir.path().join("data"), &[]).await?;
    let ledger = Arc::new(Mutex::new(DefinitionLedger::default()));
    for life in 0..15 {
        let conn = Arc::new(connect(&agent.amqp_uri()?).await?);
        let churn = tokio::spawn(churn_definitions(conn.clone(), ledger.clone()));
        tokio::time::sleep(Duration::from_millis(rng.gen_range(50..600))).await;
        agent.kill();
        churn.abort();
        let _ = churn.await;
        agent
            .restart()
            .await
            .with_context(|| format!("restart after kill {} (seed {seed})", life + 1))?;
    }

    let conn = connect(&agent.amqp_uri()?).await?;
    // The churn tasks are gone; take the ledger out so no lock is held across awaits.
    let ledger = std::mem::take(&mut *ledger.lock().expect("ledger lock holder panicked"));
    ensure!(
        ledger.created.len() > 10,
        "too few definitions were made: {}",
        ledger.created.len()
    );
    let mut ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    for &i in &ledger.created {
        if ledger.deleted.contains(&i) {
            let passive = QueueDeclareOptions {
                passive: true,
                ..Default::default()
            };
            let gone = ch
                .queue_declare(format!("def.q.{i}").into(), passive, FieldTable::default())
                .await;
            ensure!(
                gone.is_err(),
                "queue def.q.{i} was deleted but came back (seed {seed})"
            );
            ch = conn.create_channel().await?; // the 404 closed the channel
            ch.confirm_select(ConfirmSelectOptions::default()).await?;
            continue;
        }
        if ledger.deleting.contains(&i) {
            continue; // cut mid-delete: either state is right
        }
        // The binding routes: a mandatory publish is not returned and lands in the queue.
        let confirmation = ch
            .basic_publish(
                format!("def.x.{i}").into(),
                format!("k{i}").into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                b"routed",
                lapin::BasicProperties::default(),
            )
            .await
            .with_context(|| format!("exchange def.x.{i} lost (seed {seed})"))?
            .await
            .with_context(|| format!("exchange def.x.{i} lost (seed {seed})"))?;
        ensure!(
            matches!(confirmation, Confirmation::Ack(None)),
            "binding def.x.{i} -> def.q.{i} lost after SIGKILL: {confirmation:?} (seed {seed})"
        );
        let msg = ch
            .basic_get(
                format!("def.q.{i}").into(),
                BasicGetOptions { no_ack: true },
            )
            .await?;
        ensure!(
            msg.is_some(),
            "def.q.{i} did not get the routed message (seed {seed})"
        );
    }
    println!(
        "definitions: {} created, {} deleted, {} cut by kills",
        ledger.created.len(),
        ledger.deleted.len(),
        ledger.next as usize - ledger.created.len()
    );
    conn.close(200, "done".into()).await?;
    agent.stop().await?;
    Ok(())
}
