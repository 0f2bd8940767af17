//! The engine driven by lapin (in process, ephemeral ports): publish/consume with confirms,
//! prefetch, nack/requeue with the redelivered flag, mandatory returns, durability across a
//! restart, quorum queues, heartbeats, user changes, limits and alarms.

mod support;

use std::time::Duration;

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions,
    BasicQosOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties};
use mooring_broker_agent::engine::{Engine, Limits};
use support::{uri, STEP};

async fn connect(engine: &Engine) -> Connection {
    tokio::time::timeout(
        STEP,
        Connection::connect(
            &uri(engine.local_addrs().amqp),
            ConnectionProperties::default(),
        ),
    )
    .await
    .expect("connect in time")
    .expect("connect")
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

fn quorum_args() -> FieldTable {
    let mut t = FieldTable::default();
    t.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from("quorum")),
    );
    t
}

/// Publishes `n` persistent messages with confirms; returns once all are acked.
async fn publish_confirmed(ch: &lapin::Channel, queue: &str, n: u32, tag: &str) {
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
    let mut pending = Vec::new();
    for i in 0..n {
        let mut h = FieldTable::default();
        h.insert("z-last".into(), AMQPValue::LongLongInt(i64::from(i)));
        h.insert(
            "a-first".into(),
            AMQPValue::LongString(LongString::from(tag)),
        );
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_headers(h);
        pending.push(
            ch.basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                format!("{tag}-{i}").as_bytes(),
                props,
            )
            .await
            .expect("publish"),
        );
    }
    for p in pending {
        let c = tokio::time::timeout(STEP, p)
            .await
            .expect("confirm in time")
            .expect("confirm");
        assert!(matches!(c, Confirmation::Ack(_)), "{c:?}");
    }
}

#[tokio::test]
async fn publish_consume_with_prefetch_and_acks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = support::start(dir.path()).await;
    let conn = connect(&engine).await;
    let ch = conn.create_channel().await.expect("channel");
    ch.queue_declare("work".into(), durable(), FieldTable::default())
        .await
        .expect("declare");
    publish_confirmed(&ch, "work", 200, "w").await;

    let ch2 = conn.create_channel().await.expect("channel");
    ch2.basic_qos(10, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut consumer = ch2
        .basic_consume(
            "work".into(),
            "c".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    for i in 0..200 {
        let d = tokio::time::timeout(STEP, consumer.next())
            .await
            .expect("delivery in time")
            .expect("stream open")
            .expect("delivery");
        assert_eq!(d.data, format!("w-{i}").as_bytes(), "order kept");
        // Headers arrive in the order they were published (raw header bytes forwarded).
        let keys: Vec<String> = d
            .properties
            .headers()
            .as_ref()
            .expect("headers")
            .inner()
            .keys()
            .map(|k| k.to_string())
            .collect();
        assert_eq!(keys.len(), 2);
        let unacked = engine
            .broker()
            .vhost("/")
            .expect("vhost")
            .queue("work")
            .expect("queue")
            .counts()
            .unacked;
        assert!(unacked <= 10, "prefetch 10 exceeded: {unacked}");
        d.ack(BasicAckOptions::default()).await.expect("ack");
    }
    let q = engine
        .broker()
        .vhost("/")
        .expect("vhost")
        .queue("work")
        .expect("queue");
    support::wait_for(STEP, "all acks processed", || {
        (q.counts().unacked == 0).then_some(())
    })
    .await;
    assert_eq!(q.counts().ready, 0);
    conn.close(200, "bye".into()).await.expect("close");
    engine.shutdown().await;
}

#[tokio::test]
async fn nack_requeue_sets_redelivered_and_keeps_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = support::start(dir.path()).await;
    let conn = connect(&engine).await;
    let ch = conn.create_channel().await.expect("channel");
    ch.queue_declare(
        "nq".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("declare");
    for i in 0..3 {
        ch.basic_publish(
            "".into(),
            "nq".into(),
            BasicPublishOptions::default(),
            format!("m{i}").as_bytes(),
            BasicProperties::default(),
        )
        .await
        .expect("publish");
    }
    let mut tags = Vec::new();
    for i in 0..3 {
        let m = support_get(&ch, "nq").await;
        assert_eq!(m.delivery.data, format!("m{i}").as_bytes());
        assert!(!m.delivery.redelivered);
        tags.push(m.delivery.delivery_tag);
    }
    // Requeue the first two (multiple), they come back first, in order, marked redelivered.
    ch.basic_nack(
        tags[1],
        BasicNackOptions {
            multiple: true,
            requeue: true,
        },
    )
    .await
    .expect("nack");
    for i in 0..2 {
        let m = support_get(&ch, "nq").await;
        assert_eq!(m.delivery.data, format!("m{i}").as_bytes());
        assert!(m.delivery.redelivered);
    }
    conn.close(200, "bye".into()).await.expect("close");
    engine.shutdown().await;
}

async fn support_get(ch: &lapin::Channel, q: &str) -> lapin::message::BasicGetMessage {
    support::wait_for_async(|| async {
        ch.basic_get(q.into(), BasicGetOptions::default())
            .await
            .expect("get")
    })
    .await
}

#[tokio::test]
async fn durable_messages_survive_restart_and_acked_ones_do_not_return() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let engine = support::start(dir.path()).await;
        let conn = connect(&engine).await;
        let ch = conn.create_channel().await.expect("channel");
        ch.queue_declare("d".into(), durable(), FieldTable::default())
            .await
            .expect("declare");
        ch.queue_declare("dq".into(), durable(), quorum_args())
            .await
            .expect("declare quorum");
        publish_confirmed(&ch, "d", 50, "d").await;
        let ch2 = conn.create_channel().await.expect("channel");
        publish_confirmed(&ch2, "dq", 20, "q").await;
        // Ack the first ten of "d"; closing the channel flushes the acks before close-ok.
        let ch3 = conn.create_channel().await.expect("channel");
        for _ in 0..10 {
            let m = support_get(&ch3, "d").await;
            m.delivery
                .ack(BasicAckOptions::default())
                .await
                .expect("ack");
        }
        // Deliver the first of "dq" without acking it; closing the channel requeues it.
        let m = support_get(&ch3, "dq").await;
        assert!(!m.delivery.redelivered);
        ch3.close(200, "done".into()).await.expect("channel close");
        // A transient message is lost on restart, as in RabbitMQ.
        ch.basic_publish(
            "".into(),
            "d".into(),
            BasicPublishOptions::default(),
            b"transient",
            BasicProperties::default(),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
        engine.shutdown().await;
    }
    let engine = support::start(dir.path()).await;
    let conn = connect(&engine).await;
    let ch = conn.create_channel().await.expect("channel");
    let d = ch
        .queue_declare("d".into(), durable(), FieldTable::default())
        .await
        .expect("redeclare");
    assert_eq!(d.message_count(), 40);
    for i in 10..50 {
        let m = support_get(&ch, "d").await;
        assert_eq!(m.delivery.data, format!("d-{i}").as_bytes());
        m.delivery
            .ack(BasicAckOptions::default())
            .await
            .expect("ack");
    }
    let q = ch
        .queue_declare("dq".into(), durable(), quorum_args())
        .await
        .expect("redeclare quorum");
    assert_eq!(q.message_count(), 20);
    // The message delivered before the restart says so; the next one was never delivered.
    for (i, redelivered) in [(0, true), (1, false)] {
        let m = support_get(&ch, "dq").await;
        assert_eq!(m.delivery.data, format!("q-{i}").as_bytes());
        assert_eq!(m.delivery.redelivered, redelivered, "message q-{i}");
    }
    conn.close(200, "bye".into()).await.expect("close");
    engine.shutdown().await;
}

#[tokio::test]
async fn mandatory_unroutable_is_returned_then_confirmed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = support::start(dir.path()).await;
    let conn = connect(&engine).await;
    let ch = conn.create_channel().await.expect("channel");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
    let c = ch
        .basic_publish(
            "amq.direct".into(),
            "nowhere".into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            b"lost",
            BasicProperties::default(),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
    match c {
        Confirmation::Ack(Some(ret)) => {
            assert_eq!(ret.reply_code, 312);
            assert_eq!(ret.data, b"lost");
        }
        other => panic!("expected ack with a returned message, got {other:?}"),
    }
    engine.shutdown().await;
}

#[tokio::test]
async fn deleted_user_connections_are_forced_closed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = support::start(dir.path()).await;
    let conn = connect(&engine).await;
    let _ch = conn.create_channel().await.expect("channel");
    let mut other = support::guest();
    other.name = "other".into();
    engine.set_users(vec![other]).expect("set users");
    support::wait_for(STEP, "the guest connection to be closed", || {
        (!conn.status().connected()).then_some(())
    })
    .await;
    // The new set is persisted: after a restart guest still cannot log in.
    engine.shutdown().await;
    drop(engine);
    let engine = Engine::start({
        let mut c = support::config(dir.path());
        c.initial_users = vec![support::guest()];
        c
    })
    .await
    .expect("restart");
    let r = Connection::connect(
        &uri(engine.local_addrs().amqp),
        ConnectionProperties::default(),
    )
    .await;
    assert!(r.is_err(), "guest was removed");
    engine.shutdown().await;
}

#[tokio::test]
async fn queue_limit_is_enforced_and_adjustable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = support::start(dir.path()).await;
    engine.set_limits(Limits {
        max_queues: Some(1),
        ..Limits::default()
    });
    let conn = connect(&engine).await;
    let ch = conn.create_channel().await.expect("channel");
    ch.queue_declare(
        "one".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("first");
    let err = ch
        .queue_declare(
            "two".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect_err("over the limit");
    assert!(err.to_string().contains("queue limit"), "{err}");
    engine.shutdown().await;
}

#[tokio::test]
async fn consumer_gets_messages_published_later_on_another_connection() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = support::start(dir.path()).await;
    let c1 = connect(&engine).await;
    let c2 = connect(&engine).await;
    let ch1 = c1.create_channel().await.expect("channel");
    ch1.queue_declare(
        "live".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("declare");
    let mut consumer = ch1
        .basic_consume(
            "live".into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let ch2 = c2.create_channel().await.expect("channel");
    let body = vec![7u8; 300_000]; // several frames
    ch2.basic_publish(
        "".into(),
        "live".into(),
        BasicPublishOptions::default(),
        &body,
        BasicProperties::default(),
    )
    .await
    .expect("publish");
    let d = tokio::time::timeout(STEP, consumer.next())
        .await
        .expect("in time")
        .expect("open")
        .expect("delivery");
    assert_eq!(d.data, body);
    engine.shutdown().await;
}

#[tokio::test]
async fn silent_client_is_dropped_by_heartbeat() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = support::config(dir.path());
    cfg.heartbeat = Duration::from_secs(1);
    let engine = Engine::start(cfg).await.expect("start");
    // A raw client that negotiates a 1 s heartbeat, then says nothing.
    let mut r = support::Raw::connect(engine.local_addrs().amqp).await;
    support::silent_handshake(&mut r, 1).await;
    let broker = engine.broker().clone();
    support::wait_for(STEP, "the connection to be registered", || {
        (!broker.conns.lock().is_empty()).then_some(())
    })
    .await;
    support::wait_for(
        Duration::from_secs(6),
        "the silent connection to be dropped",
        || broker.conns.lock().is_empty().then_some(()),
    )
    .await;
    engine.shutdown().await;
}

#[tokio::test]
async fn backlog_beyond_the_memory_budget_is_paged_to_disk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let budget = 64 * 1024;
    let start = |dir: std::path::PathBuf| async move {
        let mut c = support::config(&dir);
        c.body_memory_budget_bytes = budget;
        Engine::start(c).await.expect("start")
    };
    let paged = |e: &Engine| {
        let s = &e.broker().stats;
        (
            s.paged_out.load(std::sync::atomic::Ordering::Relaxed),
            s.message_bytes.load(std::sync::atomic::Ordering::Relaxed),
        )
    };
    let engine = start(dir.path().to_owned()).await;
    let conn = connect(&engine).await;
    let ch = conn.create_channel().await.expect("channel");
    ch.queue_declare("big".into(), durable(), FieldTable::default())
        .await
        .expect("declare");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
    const N: usize = 1000;
    let body = |i: usize| {
        let mut b = format!("{i:08}").into_bytes();
        b.resize(1024, (i % 251) as u8);
        b
    };
    let mut pending = Vec::new();
    for i in 0..N {
        pending.push(
            ch.basic_publish(
                "".into(),
                "big".into(),
                BasicPublishOptions::default(),
                &body(i),
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .expect("publish"),
        );
    }
    for p in pending {
        p.await.expect("confirm");
    }
    let (out, resident) = paged(&engine);
    assert!(out > 800, "most bodies paged out: {out}");
    assert!(
        resident <= budget as i64 + 2048,
        "resident {resident} within budget"
    );
    conn.close(200, "bye".into()).await.expect("close");
    engine.shutdown().await;
    drop(engine);

    // After a restart the backlog is recovered without loading every body.
    let engine = start(dir.path().to_owned()).await;
    let (out, resident) = paged(&engine);
    assert!(out > 800, "recovery keeps bodies on disk: {out}");
    assert!(resident <= budget as i64, "resident {resident}");
    let conn = connect(&engine).await;
    let ch = conn.create_channel().await.expect("channel");
    ch.basic_qos(100, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut consumer = ch
        .basic_consume(
            "big".into(),
            "c".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    for i in 0..N {
        let d = tokio::time::timeout(STEP, consumer.next())
            .await
            .expect("in time")
            .expect("open")
            .expect("delivery");
        assert_eq!(d.data, body(i), "message {i} intact and in order");
        d.ack(BasicAckOptions::default()).await.expect("ack");
    }
    engine.shutdown().await;
}

#[tokio::test]
async fn transient_backlog_spills_to_disk_and_comes_back_intact() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = support::config(dir.path());
    c.body_memory_budget_bytes = 32 * 1024;
    let engine = Engine::start(c).await.expect("start");
    let conn = connect(&engine).await;
    let ch = conn.create_channel().await.expect("channel");
    ch.queue_declare(
        "mem".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("declare");
    const N: usize = 500;
    let body = |i: usize| {
        let mut b = format!("{i:08}").into_bytes();
        b.resize(2048, (i % 13) as u8);
        b
    };
    for i in 0..N {
        ch.basic_publish(
            "".into(),
            "mem".into(),
            BasicPublishOptions::default(),
            &body(i),
            BasicProperties::default(),
        )
        .await
        .expect("publish");
    }
    let q = engine
        .broker()
        .vhost("/")
        .expect("vhost")
        .queue("mem")
        .expect("queue");
    support::wait_for(STEP, "all messages enqueued", || {
        (q.counts().ready == N as u64).then_some(())
    })
    .await;
    let paged = engine
        .broker()
        .stats
        .paged_out
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(paged > 400, "transient bodies spilled: {paged}");
    for i in 0..N {
        let m = support_get(&ch, "mem").await;
        assert_eq!(m.delivery.data, body(i), "message {i}");
        m.delivery
            .ack(BasicAckOptions::default())
            .await
            .expect("ack");
    }
    assert_eq!(
        engine
            .broker()
            .stats
            .paged_out
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    engine.shutdown().await;
}

/// Quorum confirms arrive while the reader keeps appending (several batches' fsyncs in
/// flight), each after its fsync, and classic confirms on the same connection wait behind
/// them without being lost or reordered.
#[tokio::test]
async fn pipelined_quorum_and_classic_confirms_all_arrive_acked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = support::start(dir.path()).await;
    let conn = connect(&engine).await;
    let ch = conn.create_channel().await.expect("channel");
    ch.queue_declare("pq".into(), durable(), quorum_args())
        .await
        .expect("declare quorum");
    ch.queue_declare("pc".into(), durable(), FieldTable::default())
        .await
        .expect("declare classic");
    let quorum = conn.create_channel().await.expect("channel");
    let classic = conn.create_channel().await.expect("channel");
    let (q, c) = tokio::join!(
        publish_confirmed(&quorum, "pq", 2_000, "q"),
        publish_confirmed(&classic, "pc", 2_000, "c"),
    );
    let ((), ()) = (q, c);
    let pq = ch
        .queue_declare(
            "pq".into(),
            QueueDeclareOptions {
                passive: true,
                ..durable()
            },
            quorum_args(),
        )
        .await
        .expect("passive declare");
    assert_eq!(pq.message_count(), 2_000);
    engine.shutdown().await;
}

/// Finding 17: a quorum queue deleted while the fsync of a message routed to it is pending is
/// no failed fsync: the message is confirmed (as RabbitMQ does), and so are later ones.
#[tokio::test]
async fn quorum_queue_deleted_under_a_pending_fsync_still_confirms() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = support::start(dir.path()).await;
    let conn = connect(&engine).await;
    let ch = conn.create_channel().await.expect("channel");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
    for round in 0..50 {
        ch.queue_declare("gone".into(), durable(), quorum_args())
            .await
            .expect("declare quorum");
        let confirm = ch
            .basic_publish(
                "".into(),
                "gone".into(),
                BasicPublishOptions::default(),
                format!("m{round}").as_bytes(),
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .expect("publish");
        ch.queue_delete("gone".into(), lapin::options::QueueDeleteOptions::default())
            .await
            .expect("delete");
        let c = tokio::time::timeout(STEP, confirm)
            .await
            .expect("confirm in time")
            .expect("confirm");
        assert!(matches!(c, Confirmation::Ack(_)), "round {round}: {c:?}");
    }
    engine.shutdown().await;
}
