//! mooring-loadgen against a real broker: RabbitMQ 3.10 on 127.0.0.1:5672 (set
//! LOADGEN_TEST_URI to aim elsewhere, e.g. at a mooring-agent). Each test uses queues of
//! its own and deletes them.

use std::process::{Command, Output};

use mooring_bench::report::Report;

fn uri() -> String {
    std::env::var("LOADGEN_TEST_URI")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_string())
}

fn queue(name: &str) -> String {
    format!("loadgen-test-{name}-{}", std::process::id())
}

fn loadgen(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mooring-loadgen"))
        .args(args)
        .output()
        .expect("mooring-loadgen runs")
}

fn report(out: &Output) -> Report {
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "no JSON report ({e}): stdout {stdout:?}, stderr {:?}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[test]
fn smoke_every_message_arrives() {
    let (u, q) = (uri(), queue("smoke"));
    let out = loadgen(&[
        "--uri",
        &u,
        "--queue",
        &q,
        "--pmessages",
        "1000",
        "--cmessages",
        "1000",
        "--json",
        "--fresh",
        "--cleanup",
        "--duration",
        "60",
    ]);
    let r = report(&out);
    assert!(out.status.success(), "{r:?}");
    assert!(r.complete);
    assert_eq!((r.published, r.consumed), (1000, 1000));
    assert!(r.latency_p50_us.is_some() && r.cpu_us_per_msg.is_some());
}

#[test]
fn confirms_persistence_and_multi_acks() {
    let (u, q) = (uri(), queue("confirm"));
    let out = loadgen(&[
        "--uri",
        &u,
        "--queue",
        &q,
        "--pmessages",
        "2000",
        "--json",
        "--persistent",
        "--durable",
        "--confirm",
        "50",
        "--prefetch",
        "100",
        "--multi-ack",
        "10",
        "--size",
        "4096",
        "--fresh",
        "--cleanup",
        "--duration",
        "60",
    ]);
    let r = report(&out);
    assert!(out.status.success(), "{r:?}");
    assert_eq!(
        (r.published, r.confirmed, r.nacked, r.consumed),
        (2000, 2000, 0, 2000)
    );
}

#[test]
fn fanout_delivers_a_copy_to_each_queue() {
    let (u, q) = (uri(), queue("fanout"));
    let out = loadgen(&[
        "--uri",
        &u,
        "--queue",
        &q,
        "--fanout-queues",
        "3",
        "--pmessages",
        "500",
        "--json",
        "--autoack",
        "--fresh",
        "--cleanup",
        "--duration",
        "60",
    ]);
    let r = report(&out);
    assert!(out.status.success(), "{r:?}");
    assert_eq!((r.published, r.consumed), (500, 1500));
}

#[test]
fn backlog_fill_then_drain() {
    let (u, q) = (uri(), queue("backlog"));
    let fill = loadgen(&[
        "--uri",
        &u,
        "--queue",
        &q,
        "--consumers",
        "0",
        "--pmessages",
        "3000",
        "--confirm",
        "100",
        "--durable",
        "--persistent",
        "--size",
        "1024",
        "--json",
        "--fresh",
    ]);
    let r = report(&fill);
    assert!(fill.status.success(), "{r:?}");
    assert_eq!((r.published, r.confirmed, r.consumed), (3000, 3000, 0));
    let drain = loadgen(&[
        "--uri",
        &u,
        "--queue",
        &q,
        "--producers",
        "0",
        "--drain",
        "--durable",
        "--prefetch",
        "200",
        "--multi-ack",
        "100",
        "--json",
        "--cleanup",
    ]);
    let r = report(&drain);
    assert!(drain.status.success(), "{r:?}");
    assert_eq!(r.consumed, 3000);
}

#[test]
fn timed_run_stops_on_time_at_a_rate() {
    let (u, q) = (uri(), queue("rate"));
    let started = std::time::Instant::now();
    let out = loadgen(&[
        "--uri",
        &u,
        "--queue",
        &q,
        "--duration",
        "1",
        "--rate",
        "2000",
        "--autoack",
        "--json",
        "--fresh",
        "--cleanup",
    ]);
    let r = report(&out);
    assert!(out.status.success(), "{r:?}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(15),
        "did not stop in time"
    );
    // 2000 msg/s for one second, give or take scheduling
    assert!(
        (1500..=2100).contains(&r.published),
        "published {}",
        r.published
    );
}

#[test]
fn unreachable_broker_is_an_error_not_a_hang() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    // the listener is dropped: nothing listens on `port` any more
    let out = loadgen(&[
        "--uri",
        &format!("amqp://guest:guest@127.0.0.1:{port}/%2f"),
        "--duration",
        "1",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("connecting to 127.0.0.1"), "{stderr}");
}

#[test]
fn wrong_password_reports_the_brokers_refusal() {
    let u = uri().replacen("guest:guest", "guest:wrong", 1);
    let out = loadgen(&["--uri", &u, "--duration", "1"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("403") || stderr.contains("closed the connection"),
        "{stderr}"
    );
}
