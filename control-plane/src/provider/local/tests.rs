//! The local provider against a stand-in agent: a shell script that behaves like
//! `mooring-agent run` as far as the provider can see (pid file, arguments, token from the
//! environment, exits on SIGTERM unless told to ignore it).

use super::*;
use std::os::unix::fs::PermissionsExt;

const FAKE_AGENT: &str = r#"#!/bin/sh
# Stand-in for `mooring-agent run`: record the token, then the pid (tests wait for the pid
# file and then read the token), then idle until SIGTERM.
while [ $# -gt 0 ]; do
  case "$1" in
    --data-dir) dir="$2"; shift ;;
  esac
  shift
done
printf '%s' "$MOORING_AGENT_TOKEN" > "$dir/token-seen"
echo $$ > "$dir/agent.pid"
if [ -e "$dir/../ignore-term" ]; then trap '' TERM; else trap 'exit 0' TERM; fi
while :; do sleep 0.05; done
"#;

/// Kills every process whose command line names the test's directory, even when the test
/// fails half-way.
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let needle = self.0.as_os_str().as_encoded_bytes().to_vec();
        if let Ok(entries) = fs::read_dir("/proc") {
            for pid in entries.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok()) {
                if let Ok(cmd) = fs::read(format!("/proc/{pid}/cmdline")) {
                    if cmd.windows(needle.len()).any(|w| w == needle.as_slice()) {
                        let _ = signal::send(pid, libc::SIGKILL);
                    }
                }
            }
        }
    }
}

fn setup() -> (tempfile::TempDir, Cleanup, LocalProvider) {
    let dir = tempfile::tempdir().expect("tempdir");
    let script = dir.path().join("fake-agent");
    fs::write(&script, FAKE_AGENT).expect("write the fake agent");
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).expect("chmod");
    let mut config = LocalConfig::new(script, dir.path(), "http://127.0.0.1:1".into());
    config.stop_timeout = Duration::from_millis(500);
    let cleanup = Cleanup(dir.path().to_path_buf());
    (dir, cleanup, LocalProvider::new(config))
}

fn spec(id: &str) -> NodeSpec {
    NodeSpec {
        node_id: NodeId(id.into()),
        broker_id: "b-test".into(),
        zone: "us-east-1a".into(),
        amqp_port: 1,
        admin_port: 2,
        engine_version: "3.13".into(),
        replication_port: None,
    }
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn start_adopts_instead_of_duplicating_and_survives_a_lost_pid_file() {
    let (dir, _cleanup, provider) = setup();
    let node = spec("b-test-1");
    let node_dir = provider.node_dir(&node.node_id).expect("dir");

    let StartOutcome::Started { pid: Some(pid) } =
        provider.start(&node, "tok-1").await.expect("start")
    else {
        panic!("expected a fresh start");
    };
    wait_for("the pid file", || node_dir.join(PID_FILE).exists()).await;
    assert_eq!(
        provider.status(&node.node_id).await.expect("status"),
        ProcessState::Running { pid: Some(pid) }
    );
    assert_eq!(
        fs::read_to_string(node_dir.join("token-seen")).expect("token"),
        "tok-1"
    );
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).expect("cmdline");
    assert!(
        !cmdline.windows(5).any(|w| w == b"tok-1"),
        "the token is not on the command line"
    );

    // A second start, and a "restarted control plane" (new provider, pid file gone), adopt.
    assert_eq!(
        provider.start(&node, "tok-2").await.expect("start"),
        StartOutcome::Adopted { pid: Some(pid) }
    );
    fs::remove_file(node_dir.join(PID_FILE)).expect("remove the pid file");
    let restarted = LocalProvider::new(provider.config.clone());
    assert_eq!(
        restarted.start(&node, "tok-3").await.expect("start"),
        StartOutcome::Adopted { pid: Some(pid) }
    );
    // The stand-in forks `sleep`, and a child between fork and exec still shows the
    // script's command line: wait for a moment without one.
    wait_for("a single agent", || {
        procfs::find_agents(&node.node_id.0, &node_dir) == vec![pid]
    })
    .await;
    assert_eq!(
        fs::read_to_string(node_dir.join("token-seen")).expect("token"),
        "tok-1"
    );

    // Stop keeps the data; a new start runs on it.
    fs::write(node_dir.join("durable"), b"x").expect("write data");
    restarted.stop(&node.node_id).await.expect("stop");
    assert_eq!(
        restarted.status(&node.node_id).await.expect("status"),
        ProcessState::NotRunning
    );
    restarted
        .stop(&node.node_id)
        .await
        .expect("stopping a stopped node is success");
    assert!(matches!(
        restarted.start(&node, "tok-4").await.expect("start"),
        StartOutcome::Started { .. }
    ));
    assert!(node_dir.join("durable").exists());
    // Let the new agent come up before deleting it: a delete in the instant after a start
    // can miss a process that is not yet findable (see the session notes).
    wait_for("the new agent", || {
        fs::read_to_string(node_dir.join("token-seen")).is_ok_and(|t| t == "tok-4")
            && !procfs::find_agents(&node.node_id.0, &node_dir).is_empty()
    })
    .await;

    assert_eq!(
        restarted.list().await.expect("list"),
        vec![node.node_id.clone()]
    );
    restarted.delete(&node.node_id).await.expect("delete");
    assert!(!node_dir.exists());
    assert_eq!(
        restarted.status(&node.node_id).await.expect("status"),
        ProcessState::NotRunning
    );
    restarted
        .delete(&node.node_id)
        .await
        .expect("deleting a missing node is success");
    assert!(restarted.list().await.expect("list").is_empty());
    drop(dir);
}

#[tokio::test]
async fn stop_escalates_to_sigkill() {
    let (dir, _cleanup, provider) = setup();
    fs::create_dir_all(dir.path().join("nodes")).expect("nodes dir");
    fs::write(dir.path().join("nodes/ignore-term"), b"").expect("flag");
    let node = spec("b-stubborn-1");
    provider.start(&node, "tok").await.expect("start");
    let node_dir = provider.node_dir(&node.node_id).expect("dir");
    wait_for("the pid file", || node_dir.join(PID_FILE).exists()).await;
    // The trap is set just after the pid file; give the script its moment to install it.
    wait_for("the token file", || node_dir.join("token-seen").exists()).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    provider.stop(&node.node_id).await.expect("stop");
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "waited out SIGTERM first"
    );
    assert_eq!(
        provider.status(&node.node_id).await.expect("status"),
        ProcessState::NotRunning
    );
}

#[tokio::test]
async fn rejects_node_ids_that_escape_the_nodes_dir() {
    let (_dir, _cleanup, provider) = setup();
    assert!(provider.node_dir(&NodeId("../x".into())).is_err());
    assert!(provider.delete(&NodeId("..".into())).await.is_err());
}

#[test]
fn endpoints_are_free_distinct_and_outside_the_ephemeral_range() {
    let (_dir, _cleanup, provider) = setup();
    let (low, high) = node_port_range();
    assert!(
        high <= 32768 || low >= 61000,
        "never inside the ephemeral range"
    );
    for _ in 0..20 {
        let e = provider.allocate_endpoint().expect("endpoint");
        assert_ne!(e.amqp_port, e.admin_port);
        assert_eq!(e.host, "127.0.0.1");
        for port in [e.amqp_port, e.admin_port] {
            assert!((low..high).contains(&port), "{port} outside {low}..{high}");
            TcpListener::bind(("127.0.0.1", port)).expect("a chosen port is free");
        }
    }
    // Ports another node holds are never chosen.
    let taken: Vec<u16> = (low..high).filter(|p| p % 7 != 0).collect();
    let (a, b) = free_port_pair(&taken).expect("ports outside the taken set");
    assert!(a % 7 == 0 && b % 7 == 0, "{a} {b}");
}
