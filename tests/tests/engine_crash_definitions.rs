//! Durable definitions under SIGKILL: exchanges, queues and bindings whose declaration the
//! broker answered survive a kill, and answered deletions stay deleted. The seed is printed;
//! set MOORING_CRASH_SEED to replay a run.

mod engine_support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use engine_support::{connect, seed};
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Confirmation, Connection};
use mooring_tests::Agent;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

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
