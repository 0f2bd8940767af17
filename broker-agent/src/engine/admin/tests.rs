//! The admin server over real HTTP on a loopback port, with a fake engine behind it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::*;

/// A fake engine whose counters the test can move.
#[derive(Default)]
struct FakeEngine {
    published: AtomicU64,
}

impl AdminView for FakeEngine {
    fn overview(&self) -> Overview {
        Overview {
            connections: 1,
            channels: 2,
            queues: 2,
            consumers: 1,
            messages_ready: 7,
            messages_unacknowledged: 3,
            published_total: self.published.load(Ordering::Relaxed),
            alarms: vec!["memory".into()],
            ..Overview::default()
        }
    }

    fn queues(&self) -> Vec<QueueInfo> {
        let mut durable = QueueInfo::new("/", "orders").with_counts(7, 3, 1);
        durable.durable = true;
        durable
            .arguments
            .insert("x-message-ttl".into(), 60000.into());
        let mut other = QueueInfo::new("tenant-a", "amq.gen-xyz");
        other.exclusive = true;
        other.auto_delete = true;
        vec![durable, other]
    }

    fn connections(&self) -> Vec<ConnectionInfo> {
        let mut conn = ConnectionInfo::new(
            "127.0.0.1:50000".parse().expect("literal address"),
            "127.0.0.1:5672".parse().expect("literal address"),
        );
        conn.user = "guest".into();
        conn.channels = 2;
        vec![conn]
    }

    fn storage_stats(&self) -> StorageStats {
        StorageStats {
            bytes_on_disk: 4096,
            fsyncs_total: 12,
            segments: 2,
        }
    }
}

struct Server {
    base: String,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn start(view: Arc<dyn AdminView>) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let base = format!("http://{}", listener.local_addr().expect("local addr"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(serve(listener, view, async move {
        let _ = stopped.await;
    }));
    Server { base, stop, task }
}

async fn get(base: &str, path: &str) -> reqwest::Response {
    let response = reqwest::get(format!("{base}{path}"))
        .await
        .expect("request");
    assert_eq!(response.status(), 200, "GET {path}");
    response
}

#[tokio::test]
async fn serves_health_metrics_and_listings_then_shuts_down() {
    let engine = Arc::new(FakeEngine::default());
    let server = start(engine.clone()).await;
    let base = &server.base;

    let health: serde_json::Value = get(base, "/healthz").await.json().await.expect("json");
    assert_eq!(
        health,
        serde_json::json!({"status": "ok", "alarms": ["memory"]})
    );

    engine.published.store(42, Ordering::Relaxed);
    let response = get(base, "/metrics").await;
    let content_type = response.headers()["content-type"]
        .to_str()
        .expect("ascii")
        .to_string();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let text = response.text().await.expect("body");
    assert!(text.contains(
        "# TYPE mooring_messages_published_total counter\nmooring_messages_published_total 42\n"
    ));
    assert!(text.contains("mooring_storage_fsyncs_total 12\n"));
    assert!(text.contains("mooring_storage_bytes_on_disk 4096\n"));
    assert!(text.contains("mooring_messages_unacknowledged 3\n"));
    assert!(text.contains("mooring_queue_messages_ready{vhost=\"/\",queue=\"orders\"} 7\n"));

    let queues: serde_json::Value = get(base, "/api/queues").await.json().await.expect("json");
    let orders = &queues[0];
    assert_eq!(orders["name"], "orders");
    assert_eq!(orders["vhost"], "/");
    assert_eq!(orders["durable"], true);
    assert_eq!(orders["auto_delete"], false);
    assert_eq!(orders["exclusive"], false);
    assert_eq!(orders["type"], "classic");
    assert_eq!(orders["arguments"]["x-message-ttl"], 60000);
    assert_eq!(orders["messages"], 10);
    assert_eq!(orders["messages_ready"], 7);
    assert_eq!(orders["messages_unacknowledged"], 3);
    assert_eq!(orders["consumers"], 1);
    assert_eq!(queues.as_array().expect("array").len(), 2);

    let in_root: serde_json::Value = get(base, "/api/queues/%2F")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(in_root.as_array().expect("array").len(), 1);
    assert_eq!(in_root[0]["name"], "orders");

    let conns: serde_json::Value = get(base, "/api/connections")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(conns[0]["name"], "127.0.0.1:50000 -> 127.0.0.1:5672");
    assert_eq!(conns[0]["peer_port"], 50000);
    assert_eq!(conns[0]["user"], "guest");
    assert_eq!(conns[0]["channels"], 2);
    assert_eq!(conns[0]["protocol"], "AMQP 0-9-1");

    let overview: serde_json::Value = get(base, "/api/overview").await.json().await.expect("json");
    assert_eq!(overview["queue_totals"]["messages"], 10);
    assert_eq!(overview["message_stats"]["publish"], 42);
    assert_eq!(overview["storage"]["segments"], 2);

    let missing = reqwest::get(format!("{base}/nope")).await.expect("request");
    assert_eq!(missing.status(), 404);

    server.stop.send(()).expect("server still running");
    let result = tokio::time::timeout(std::time::Duration::from_secs(10), server.task)
        .await
        .expect("server stops within the deadline");
    result.expect("task").expect("serve returns Ok");
}

/// A view that panics must cost one request a 500, not the server.
#[tokio::test]
async fn a_panicking_view_yields_500_and_the_server_lives_on() {
    struct Panicky;
    impl AdminView for Panicky {
        fn overview(&self) -> Overview {
            Overview::default()
        }
        fn queues(&self) -> Vec<QueueInfo> {
            panic!("engine bug")
        }
        fn connections(&self) -> Vec<ConnectionInfo> {
            Vec::new()
        }
        fn storage_stats(&self) -> StorageStats {
            StorageStats::default()
        }
    }
    let server = start(Arc::new(Panicky)).await;
    let response = reqwest::get(format!("{}/api/queues", server.base))
        .await
        .expect("request");
    assert_eq!(response.status(), 500);
    get(&server.base, "/healthz").await;
    let conns: serde_json::Value = get(&server.base, "/api/connections")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(conns, serde_json::json!([]));
}
