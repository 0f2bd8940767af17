//! The benchmark's private RabbitMQ node: it starts on its own ports, serves AMQP, is
//! measurable through /proc, and is gone (process and directory) once its handle drops.
//! Needs root and the rabbitmq user, as on the project's machines.

use mooring_bench::engine::{brokers, procstat};

#[test]
fn private_rabbitmq_starts_serves_and_stops() {
    let broker = brokers::start_rabbitmq().expect("private RabbitMQ starts");
    let pid = broker.pid;
    assert!(procstat::is_alive(pid));
    assert!(procstat::rss_bytes(pid).expect("RSS readable") > 10 << 20);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mooring-loadgen"))
        .args([
            "--uri",
            &broker.uri,
            "--pmessages",
            "500",
            "--json",
            "--fresh",
            "--cleanup",
        ])
        .output()
        .expect("loadgen runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(procstat::cpu_time(pid).expect("CPU readable") > std::time::Duration::ZERO);
    assert!(broker.uri.starts_with("amqp://guest:guest@127.0.0.1:"));
    assert!(
        !broker.uri.contains(":5672/"),
        "must not be the shared node"
    );
    drop(broker);
    assert!(
        !procstat::is_alive(pid),
        "RabbitMQ still running after drop"
    );
}
