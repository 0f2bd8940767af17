//! Replicated brokers with real `mooring-agent run` processes (one leader, followers) against a
//! fake control plane: confirmed messages survive SIGKILL of the leader and a promotion; a
//! leader frozen past its lease confirms nothing once another node was promoted; followers
//! refuse AMQP clients naming the leader.

mod replication_support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties};
use mooring_tests::wait_for;
use parking_lot::Mutex;
use replication_support::Cluster;

const QUEUE: &str = "replicated";

async fn connect(uri: &str) -> Result<Connection> {
    Ok(tokio::time::timeout(
        Duration::from_secs(5),
        Connection::connect(uri, ConnectionProperties::default()),
    )
    .await
    .context("connect timed out")??)
}

/// Connects once the node serves AMQP (the engine of a leader is up).
async fn connect_when_serving(cluster: &Cluster, i: usize) -> Result<Connection> {
    let uri = cluster.uri(i);
    wait_for(Duration::from_secs(60), "the leader to serve AMQP", || {
        let uri = uri.clone();
        async move { connect(&uri).await.map(Some) }
    })
    .await
    .with_context(|| cluster.logs())
}

fn persistent() -> BasicProperties {
    BasicProperties::default().with_delivery_mode(2)
}

/// Publishes `probe` with confirms on node `i` until one is acked; returns when it was.
async fn first_confirmed_publish(cluster: &Cluster, i: usize) -> Result<Instant> {
    let uri = cluster.uri(i);
    wait_for(
        Duration::from_secs(60),
        "a confirmed publish on the new leader",
        || {
            let uri = uri.clone();
            async move {
                let conn = connect(&uri).await?;
                let ch = conn.create_channel().await?;
                ch.confirm_select(ConfirmSelectOptions::default()).await?;
                let confirm = ch
                    .basic_publish(
                        "".into(),
                        QUEUE.into(),
                        BasicPublishOptions::default(),
                        b"probe",
                        persistent(),
                    )
                    .await?;
                let c = tokio::time::timeout(Duration::from_secs(10), confirm)
                    .await
                    .context("probe confirm timed out")??;
                let _ = conn.close(200, "bye".into()).await;
                Ok(matches!(c, Confirmation::Ack(_)).then(Instant::now))
            }
        },
    )
    .await
    .with_context(|| cluster.logs())
}

/// Takes every message of the queue on node `i`; returns the sequence numbers (probes skipped)
/// and how many were seen twice.
async fn drain(cluster: &Cluster, i: usize) -> Result<(BTreeSet<u64>, usize)> {
    let conn = connect(&cluster.uri(i)).await?;
    let ch = conn.create_channel().await?;
    let mut seen = BTreeSet::new();
    let mut duplicates = 0;
    for _ in 0..1_000_000 {
        let Some(msg) = ch
            .basic_get(QUEUE.into(), BasicGetOptions { no_ack: true })
            .await?
        else {
            break;
        };
        let body = &msg.delivery.data;
        if body == b"probe" {
            continue;
        }
        let seq: u64 = std::str::from_utf8(body)?.parse()?;
        if !seen.insert(seq) {
            duplicates += 1;
        }
    }
    Ok((seen, duplicates))
}

/// Publishes `from..` with confirms (10 in flight) until the connection fails; every acked
/// sequence number goes into `confirmed`.
fn spawn_publisher(
    ch: lapin::Channel,
    from: u64,
    confirmed: Arc<Mutex<BTreeSet<u64>>>,
) -> tokio::task::JoinHandle<Result<()>> {
    tokio::spawn(async move {
        let mut seq = from;
        loop {
            let mut batch = Vec::new();
            for _ in 0..10 {
                let c = ch
                    .basic_publish(
                        "".into(),
                        QUEUE.into(),
                        BasicPublishOptions::default(),
                        seq.to_string().as_bytes(),
                        persistent(),
                    )
                    .await?;
                batch.push((seq, c));
                seq += 1;
            }
            for (seq, c) in batch {
                match tokio::time::timeout(Duration::from_secs(10), c).await?? {
                    Confirmation::Ack(_) => {
                        confirmed.lock().insert(seq);
                    }
                    other => bail!("publish {seq}: {other:?}"),
                }
            }
        }
    })
}

async fn wait_confirmed(
    cluster: &Cluster,
    confirmed: &Mutex<BTreeSet<u64>>,
    n: usize,
) -> Result<()> {
    wait_for(Duration::from_secs(60), "confirmed publishes", || {
        let len = confirmed.lock().len();
        std::future::ready(Ok((len >= n).then_some(())))
    })
    .await
    .with_context(|| cluster.logs())
}

async fn refusal_text(cluster: &Cluster, i: usize) -> Option<String> {
    connect(&cluster.uri(i))
        .await
        .err()
        .map(|e| format!("{e:#}"))
}

/// Waits until node `i` refuses AMQP clients with a reason naming `leader`.
async fn refuses_naming(cluster: &Cluster, i: usize, leader: &str, what: &str) -> Result<()> {
    wait_for(Duration::from_secs(30), what, || async move {
        Ok(refusal_text(cluster, i)
            .await
            .filter(|t| t.contains(leader)))
    })
    .await
    .map(drop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_messages_survive_sigkill_of_the_leader() -> Result<()> {
    let mut cluster = Cluster::start(3).await?;
    let conn = connect_when_serving(&cluster, 0).await?;
    cluster
        .wait_all_in_sync()
        .await
        .with_context(|| cluster.logs())?;

    // A follower refuses clients, naming the leader and its address.
    let text = refusal_text(&cluster, 1)
        .await
        .context("a follower accepted a client")?;
    assert!(
        text.contains("b-repl-1") && text.contains(&cluster.nodes[0].amqp.to_string()),
        "refusal reason: {text}"
    );

    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    ch.queue_declare(
        QUEUE.into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await?;
    let confirmed: Arc<Mutex<BTreeSet<u64>>> = Arc::default();
    let publisher = spawn_publisher(ch, 0, confirmed.clone());
    wait_confirmed(&cluster, &confirmed, 300).await?;

    cluster.kill9(0)?;
    let killed = Instant::now();
    // The publisher's connection dies with the leader.
    let _ = tokio::time::timeout(Duration::from_secs(15), publisher).await;

    let new = cluster.promote_best(0).await?;
    let first = first_confirmed_publish(&cluster, new).await?;
    println!(
        "failover: kill to first confirmed publish on the new leader ({}) took {} ms (lease {} ms)",
        cluster.nodes[new].id,
        (first - killed).as_millis(),
        replication_support::LEASE_MS
    );

    // The old leader returns: told it follows under the new epoch, it drops whatever it had
    // beyond the new leader's log (a full resync) and rejoins the in-sync set.
    cluster.spawn(0)?;
    cluster
        .wait_all_in_sync()
        .await
        .with_context(|| cluster.logs())?;

    // More confirmed publishes; then one follower (the returned old leader) dies, and the
    // leader dies less than the lag timeout later, so that follower is still in the recorded
    // in-sync set. Every recorded in-sync node may be promoted, so the dead follower, restarted
    // on its files, must hold everything confirmed: the leader may not confirm what it has not
    // acked.
    let conn = connect_when_serving(&cluster, new).await?;
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let before = confirmed.lock().len();
    let publisher = spawn_publisher(ch, 1_000_000, confirmed.clone());
    let t = Instant::now();
    wait_confirmed(&cluster, &confirmed, before + 200).await?;
    println!(
        "200 confirmed publishes on the replicated leader took {} ms",
        t.elapsed().as_millis()
    );
    cluster.kill9(0)?;
    let at_follower_death = confirmed.lock().len();
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.kill9(new)?;
    println!(
        "confirmed while a recorded in-sync follower was dead: {}",
        confirmed.lock().len() - at_follower_death
    );
    let _ = tokio::time::timeout(Duration::from_secs(15), publisher).await;
    let acked = confirmed.lock().clone();
    cluster.spawn(0)?;
    let new = cluster.promote(new, 0).await?;
    first_confirmed_publish(&cluster, new).await?;

    let (present, duplicates) = drain(&cluster, new).await?;
    let lost: Vec<u64> = acked.difference(&present).copied().collect();
    println!(
        "confirmed {}, present {}, duplicates {duplicates}",
        acked.len(),
        present.len()
    );
    assert!(
        lost.is_empty(),
        "confirmed messages lost: {lost:?}\n{}",
        cluster.logs()
    );

    // A follower now names the newest leader.
    let other = cluster
        .nodes
        .iter()
        .position(|n| n.child.is_some() && n.id != cluster.nodes[new].id)
        .expect("a live follower");
    let new_id = cluster.nodes[new].id.clone();
    refuses_naming(
        &cluster,
        other,
        &new_id,
        "the follower to name the new leader",
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_frozen_past_its_lease_confirms_nothing_after_a_promotion() -> Result<()> {
    let cluster = Cluster::start(2).await?;
    let conn = connect_when_serving(&cluster, 0).await?;
    cluster
        .wait_all_in_sync()
        .await
        .with_context(|| cluster.logs())?;
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    ch.queue_declare(
        QUEUE.into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await?;
    // (seq, acked, when the outcome was seen)
    type Outcomes = Arc<Mutex<Vec<(u64, bool, Instant)>>>;
    let outcomes: Outcomes = Arc::default();
    let publisher = {
        let outcomes = outcomes.clone();
        tokio::spawn(async move {
            let mut seq = 0u64;
            loop {
                let mut batch = Vec::new();
                for _ in 0..20 {
                    let c = ch
                        .basic_publish(
                            "".into(),
                            QUEUE.into(),
                            BasicPublishOptions::default(),
                            seq.to_string().as_bytes(),
                            persistent(),
                        )
                        .await?;
                    batch.push((seq, c));
                    seq += 1;
                }
                for (seq, c) in batch {
                    let acked = matches!(c.await?, Confirmation::Ack(_));
                    outcomes.lock().push((seq, acked, Instant::now()));
                }
            }
            #[allow(unreachable_code)]
            Ok::<(), anyhow::Error>(())
        })
    };
    wait_for(Duration::from_secs(60), "200 confirmed publishes", || {
        let n = outcomes.lock().iter().filter(|o| o.1).count();
        std::future::ready(Ok((n >= 200).then_some(())))
    })
    .await
    .with_context(|| cluster.logs())?;

    cluster.signal(0, "STOP")?;
    let new = cluster.promote_best(0).await?;
    assert_eq!(new, 1);
    first_confirmed_publish(&cluster, new).await?;
    cluster.signal(0, "CONT")?;
    let resumed = Instant::now();
    // The old leader wakes up, heartbeats, learns it was demoted: give it time to misbehave.
    let old_id = cluster.nodes[0].id.clone();
    let new_id = cluster.nodes[1].id.clone();
    refuses_naming(
        &cluster,
        0,
        &new_id,
        "the old leader to refuse, naming the new one",
    )
    .await
    .with_context(|| cluster.logs())?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    publisher.abort();

    let outcomes = outcomes.lock().clone();
    let late_acks: Vec<u64> = outcomes
        .iter()
        .filter(|(_, acked, at)| *acked && *at > resumed)
        .map(|(seq, _, _)| *seq)
        .collect();
    assert!(
        late_acks.is_empty(),
        "{old_id} confirmed {late_acks:?} after it was resumed and {new_id} promoted\n{}",
        cluster.logs()
    );
    let acked: BTreeSet<u64> = outcomes.iter().filter(|o| o.1).map(|o| o.0).collect();
    let (present, duplicates) = drain(&cluster, new).await?;
    let lost: Vec<u64> = acked.difference(&present).copied().collect();
    println!(
        "frozen leader: confirmed {}, present {}, duplicates {duplicates}",
        acked.len(),
        present.len()
    );
    assert!(
        lost.is_empty(),
        "confirmed messages lost: {lost:?}\n{}",
        cluster.logs()
    );
    Ok(())
}

/// A leader killed and replaced comes back holding, in its ledger, a configuration that
/// names it leader of the old epoch. Until the control plane has answered it, it must not
/// act on that: no engine, no AMQP client accepted as if it led (a client would publish
/// to a node that can never confirm, and a monitor would see two leaders). Once answered,
/// it learns the new epoch and follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_old_leader_waits_for_the_control_plane_before_leading() -> Result<()> {
    let mut cluster = Cluster::start(2).await?;
    connect_when_serving(&cluster, 0).await?;
    cluster
        .wait_all_in_sync()
        .await
        .with_context(|| cluster.logs())?;
    cluster.kill9(0)?;
    let new = cluster.promote_best(0).await?;
    first_confirmed_publish(&cluster, new).await?;

    // Back, but cut off from the control plane: its ledger still says "lead, epoch 1".
    let old_id = cluster.nodes[0].id.clone();
    cluster.cp.lock().muted.insert(old_id.clone());
    cluster.spawn(0)?;
    let watched = Instant::now();
    while watched.elapsed() < Duration::from_secs(4) {
        if let Ok(conn) = connect(&cluster.uri(0)).await {
            let _ = conn.close(0, "".into()).await;
            bail!(
                "the restarted old leader accepted an AMQP client before the control plane answered it\n{}",
                cluster.logs()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Answered: it follows the new leader and refuses clients, naming it.
    cluster.cp.lock().muted.remove(&old_id);
    let new_id = cluster.nodes[new].id.clone();
    refuses_naming(&cluster, 0, &new_id, "the old leader to follow the new one")
        .await
        .with_context(|| cluster.logs())?;
    Ok(())
}

/// The other side of the same rule: a leader killed and restarted before anyone replaced it
/// is still the recorded leader; the control plane grants it a lease and it serves again
/// (it must not wait for a promotion that will never come, e.g. when it has no follower).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_leader_that_was_not_replaced_leads_again() -> Result<()> {
    let mut cluster = Cluster::start(2).await?;
    connect_when_serving(&cluster, 0).await?;
    cluster
        .wait_all_in_sync()
        .await
        .with_context(|| cluster.logs())?;
    cluster.kill9(0)?;
    cluster.spawn(0)?;
    first_confirmed_publish(&cluster, 0)
        .await
        .with_context(|| cluster.logs())?;
    Ok(())
}
