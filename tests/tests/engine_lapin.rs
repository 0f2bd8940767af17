//! lapin, the Rust AMQP client, against the engine: connect, declare, publish with confirms,
//! consume, ack. Runs against RabbitMQ instead with MOORING_BROKER=rabbitmq, to check the test.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties};
use mooring_tests::Agent;

/// Upper bound for each step that waits on the broker.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// The broker under test: a fresh standalone agent, or the local RabbitMQ as the reference.
async fn broker(dir: &tempfile::TempDir) -> Result<(Option<Agent>, String)> {
    if std::env::var("MOORING_BROKER").as_deref() == Ok("rabbitmq") {
        return Ok((None, "amqp://guest:guest@127.0.0.1:5672/%2f".into()));
    }
    let agent = Agent::start(&dir.path().join("data"), &[]).await?;
    let uri = agent.amqp_uri()?;
    Ok((Some(agent), uri))
}

fn unique(name: &str) -> String {
    format!("mooring-test.lapin.{name}.{}", rand::random::<u32>())
}

#[tokio::test]
async fn publish_confirm_consume_ack() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (_agent, uri) = broker(&dir).await?;
    let conn = tokio::time::timeout(
        STEP_TIMEOUT,
        Connection::connect(&uri, ConnectionProperties::default()),
    )
    .await
    .context("connect timed out")??;
    let ch = conn.create_channel().await?;
    let queue = unique("roundtrip");
    let declared = ch
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    ensure!(declared.message_count() == 0, "fresh queue not empty");

    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    const N: u32 = 500;
    let mut confirms = Vec::new();
    for i in 0..N {
        let mut headers = FieldTable::default();
        headers.insert("seq".into(), AMQPValue::LongLongInt(i64::from(i)));
        headers.insert(
            "text".into(),
            AMQPValue::LongString(LongString::from(format!("message {i}"))),
        );
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_message_id(i.to_string().into())
            .with_headers(headers);
        let body = format!("body-{i}").into_bytes();
        confirms.push(
            ch.basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions::default(),
                &body,
                props,
            )
            .await?,
        );
    }
    for (i, confirm) in confirms.into_iter().enumerate() {
        let confirmation = tokio::time::timeout(STEP_TIMEOUT, confirm)
            .await
            .with_context(|| format!("confirm {i} timed out"))??;
        ensure!(
            matches!(confirmation, Confirmation::Ack(None)),
            "publish {i} not acked: {confirmation:?}"
        );
    }

    ch.basic_qos(50, BasicQosOptions::default()).await?;
    let mut consumer = ch
        .basic_consume(
            queue.as_str().into(),
            "lapin-test".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    for i in 0..N {
        let delivery = tokio::time::timeout(STEP_TIMEOUT, consumer.next())
            .await
            .with_context(|| format!("delivery {i} timed out"))?
            .context("consumer ended early")??;
        ensure!(
            delivery.data == format!("body-{i}").into_bytes(),
            "out of order at {i}"
        );
        ensure!(
            delivery
                .properties
                .message_id()
                .as_ref()
                .map(|s| s.as_str())
                == Some(i.to_string().as_str())
        );
        let headers = delivery
            .properties
            .headers()
            .clone()
            .context("headers lost")?;
        ensure!(
            headers.inner().get("seq") == Some(&AMQPValue::LongLongInt(i64::from(i))),
            "seq header changed: {headers:?}"
        );
        ensure!(!delivery.redelivered);
        // Ack every tenth delivery with multiple, so the other nine are covered by it.
        if i % 10 == 9 {
            delivery.ack(BasicAckOptions { multiple: true }).await?;
        }
    }
    ch.basic_cancel("lapin-test".into(), Default::default())
        .await?;

    // Everything was acked: nothing comes back, the queue is empty.
    let empty = ch
        .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
        .await?;
    ensure!(empty.is_none(), "acked message still in the queue");
    let deleted = ch
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await?;
    ensure!(deleted == 0, "queue delete reported {deleted} messages");
    conn.close(200, "done".into()).await?;
    Ok(())
}

#[tokio::test]
async fn unacked_messages_come_back_redelivered() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (_agent, uri) = broker(&dir).await?;
    let conn = Connection::connect(&uri, ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    let queue = unique("redeliver");
    ch.queue_declare(
        queue.as_str().into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    ch.basic_publish(
        "".into(),
        queue.as_str().into(),
        BasicPublishOptions::default(),
        b"once",
        BasicProperties::default(),
    )
    .await?
    .await?;

    let first = ch
        .basic_get(queue.as_str().into(), BasicGetOptions::default())
        .await?
        .context("message missing")?;
    ensure!(!first.delivery.redelivered);
    ch.close(200, "drop the unacked message".into()).await?;

    let ch = conn.create_channel().await?;
    let again = tokio::time::timeout(STEP_TIMEOUT, async {
        loop {
            if let Some(m) = ch
                .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
                .await?
            {
                return anyhow::Ok(m);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .context("requeued message never came back")??;
    ensure!(again.delivery.redelivered && again.delivery.data == b"once");
    ch.queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await?;
    conn.close(200, "done".into()).await?;
    Ok(())
}
