//! The admin HTTP server in front of the real engine: lapin publishes and consumes, and
//! `/metrics`, `/api/queues`, `/api/connections` and `/healthz` must tell the truth about it.

mod support;

use std::time::{Duration, Instant};

use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use mooring_broker_agent::engine::Engine;
use support::{uri, STEP};

const QUEUE: &str = "admin-test";
const PUBLISHED: u64 = 10;
const FETCHED: u64 = 3;

async fn get_text(base: &str, path: &str) -> String {
    let response = tokio::time::timeout(STEP, reqwest::get(format!("{base}{path}")))
        .await
        .expect("admin answers in time")
        .expect("GET");
    assert_eq!(response.status(), 200, "GET {path}");
    response.text().await.expect("body")
}

/// The value of an unlabelled or labelled sample line `series value`.
fn sample(text: &str, series: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
}

/// Polls `/metrics` until `check` holds (counters are updated asynchronously to the client).
async fn metrics_until(base: &str, what: &str, check: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + STEP;
    loop {
        let text = get_text(base, "/metrics").await;
        if check(&text) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "metrics never showed {what}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn admin_reports_the_live_engine() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = support::config(dir.path());
    config.admin_listen = Some("127.0.0.1:0".parse().expect("literal address"));
    let engine = Engine::start(config).await.expect("engine starts");
    let admin = engine.local_addrs().admin.expect("admin listener bound");
    let base = format!("http://{admin}");

    let health: serde_json::Value =
        serde_json::from_str(&get_text(&base, "/healthz").await).expect("json");
    assert_eq!(health["status"], "ok");

    let conn = tokio::time::timeout(
        STEP,
        Connection::connect(
            &uri(engine.local_addrs().amqp),
            ConnectionProperties::default(),
        ),
    )
    .await
    .expect("connect in time")
    .expect("connect");
    let ch = conn.create_channel().await.expect("channel");
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongInt(1000));
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.queue_declare(QUEUE.into(), durable, args)
        .await
        .expect("declare");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
    for i in 0..PUBLISHED {
        let confirm = ch
            .basic_publish(
                "".into(),
                QUEUE.into(),
                BasicPublishOptions::default(),
                format!("m{i}").as_bytes(),
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .expect("publish");
        tokio::time::timeout(STEP, confirm)
            .await
            .expect("confirm in time")
            .expect("confirm");
    }
    // Fetched without ack: unacknowledged until the channel closes.
    for _ in 0..FETCHED {
        let got = ch
            .basic_get(QUEUE.into(), BasicGetOptions::default())
            .await
            .expect("get");
        assert!(got.is_some(), "a message to fetch");
    }

    let ready = format!("mooring_queue_messages_ready{{vhost=\"/\",queue=\"{QUEUE}\"}}");
    let unacked = format!("mooring_queue_messages_unacknowledged{{vhost=\"/\",queue=\"{QUEUE}\"}}");
    let text = metrics_until(&base, "the published and fetched messages", |t| {
        sample(t, &ready) == Some(PUBLISHED - FETCHED) && sample(t, &unacked) == Some(FETCHED)
    })
    .await;
    assert_eq!(
        sample(&text, "mooring_messages_published_total"),
        Some(PUBLISHED)
    );
    assert_eq!(
        sample(&text, "mooring_messages_confirmed_total"),
        Some(PUBLISHED)
    );
    assert_eq!(
        sample(&text, "mooring_messages_delivered_total"),
        Some(FETCHED)
    );
    assert_eq!(sample(&text, "mooring_connections"), Some(1));
    assert_eq!(sample(&text, "mooring_channels"), Some(1));
    assert_eq!(
        sample(&text, "mooring_messages_ready"),
        Some(PUBLISHED - FETCHED)
    );
    assert_eq!(
        sample(&text, "mooring_messages_unacknowledged"),
        Some(FETCHED)
    );
    assert!(
        sample(&text, "mooring_storage_bytes_on_disk").unwrap_or(0) > 0,
        "persistent messages in a durable queue take disk"
    );
    assert!(sample(&text, "mooring_storage_segments").unwrap_or(0) > 0);
    assert!(sample(&text, "mooring_storage_fsyncs_total").unwrap_or(0) > 0);

    let queues: serde_json::Value =
        serde_json::from_str(&get_text(&base, "/api/queues").await).expect("json");
    let queue = queues
        .as_array()
        .expect("array")
        .iter()
        .find(|q| q["name"] == QUEUE)
        .expect("the declared queue is listed");
    assert_eq!(queue["vhost"], "/");
    assert_eq!(queue["durable"], true);
    assert_eq!(queue["exclusive"], false);
    assert_eq!(queue["arguments"]["x-max-length"], 1000);
    assert_eq!(queue["messages"], PUBLISHED);
    assert_eq!(queue["messages_unacknowledged"], FETCHED);

    let conns: serde_json::Value =
        serde_json::from_str(&get_text(&base, "/api/connections").await).expect("json");
    let conns = conns.as_array().expect("array");
    assert_eq!(conns.len(), 1);
    assert_eq!(conns[0]["user"], "guest");
    assert_eq!(conns[0]["vhost"], "/");
    assert_eq!(conns[0]["channels"], 1);
    assert_eq!(conns[0]["peer_host"], "127.0.0.1");

    conn.close(200, "bye".into()).await.expect("close");
    // Closing returns the fetched messages to the queue and the connection leaves the list.
    metrics_until(&base, "the connection gone and messages requeued", |t| {
        sample(t, "mooring_connections") == Some(0) && sample(t, &ready) == Some(PUBLISHED)
    })
    .await;
    engine.shutdown().await;
}
