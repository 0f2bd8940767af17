"""Crash safety of the control plane and of agents.

`kill -9` of `mooring serve` while 20 brokers are being created, then a restart: all 20
reach RUNNING, agents that were running are adopted (same pid, never a duplicate), and no
data directory is left without its broker. `kill -9` of an agent: it is restarted on its
data directory and a durable queue's persistent messages are intact.
"""

import os
import signal
import time
from pathlib import Path

import boto3
import pika
import pytest
from botocore.config import Config

from e2e_helpers import admin_credentials, agents_by_node, amqp_port, poll

BROKERS = 20
USER = ("app", "app-password-123")


def mq_client(cp):
    key_id, secret = admin_credentials(cp)
    return boto3.client(
        "mq",
        endpoint_url=cp.endpoint,
        region_name="us-east-1",
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
        config=Config(retries={"max_attempts": 1}, connect_timeout=5, read_timeout=30),
    )


def states(client, ids):
    """{broker id: state} of `ids`, from ListBrokers: one request per page, where a
    DescribeBroker per broker would spend 20 of the caller's rate-limit tokens per poll,
    more than the bucket refills between polls, so no poll would ever see all 20."""
    found, token = {}, None
    while True:
        page = client.list_brokers(MaxResults=100, **({"NextToken": token} if token else {}))
        found.update((b["BrokerId"], b["BrokerState"]) for b in page["BrokerSummaries"])
        token = page.get("NextToken")
        if not token:
            return {i: found.get(i, "MISSING") for i in ids}


def assert_one_agent_per_node(cp, node_ids):
    by_node = agents_by_node(cp.data_dir)
    assert sorted(by_node) == sorted(node_ids), f"agents for unexpected nodes: {by_node}"
    duplicates = {n: pids for n, pids in by_node.items() if len(pids) != 1}
    assert not duplicates, f"duplicate agents: {duplicates}\n{diagnose(cp, duplicates)}"
    return {n: pids[0] for n, pids in by_node.items()}


def diagnose(cp, duplicates):
    """What the control plane and the agents said about the nodes in question."""
    lines = []
    for node, pids in duplicates.items():
        for pid in pids:
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[:3]
            except OSError as e:
                argv, stat = f"(gone: {e})", []
            lines.append(f"pid {pid} {stat}: {argv}")
        log = cp.log_path.read_text(errors="replace") if cp.log_path.exists() else ""
        lines += [l for l in log.splitlines() if node in l][-20:]
        agent_log = cp.data_dir / "nodes" / node / "agent.log"
        if agent_log.exists():
            lines += agent_log.read_text(errors="replace").splitlines()[-20:]
    return "\n".join(lines)


def connect(port):
    return pika.BlockingConnection(
        pika.ConnectionParameters("127.0.0.1", port, credentials=pika.PlainCredentials(*USER),
                                  connection_attempts=1, socket_timeout=5)
    )


@pytest.mark.timeout(400)
def test_kill9_control_plane_during_creation_and_kill9_agent(control_plane):
    cp = control_plane
    client = mq_client(cp)
    ids = []

    def create(n):
        for _ in range(n):
            created = client.create_broker(
                BrokerName=f"crash-{len(ids):02d}", DeploymentMode="SINGLE_INSTANCE", EngineType="RABBITMQ",
                EngineVersion="3.13", HostInstanceType="mq.t3.micro", PubliclyAccessible=False,
                AutoMinorVersionUpgrade=True, Users=[{"Username": USER[0], "Password": USER[1]}],
            )
            ids.append(created["BrokerId"])

    # Crash half-way through the creations, once provisioning is under way.
    create(BROKERS // 2)
    poll(lambda: agents_by_node(cp.data_dir), 30, "a first agent to start")
    cp.kill9()
    before = {n: pids for n, pids in agents_by_node(cp.data_dir).items()}
    assert before, "agents survive the control plane's death (their own process group)"

    cp.start()
    client = mq_client(cp)
    create(BROKERS - len(ids))
    node_ids = [f"{i}-1" for i in ids]
    seen = {}

    def all_running():
        seen.update(states(client, ids))
        return set(seen.values()) == {"RUNNING"}

    try:
        poll(all_running, 180, f"all {BROKERS} brokers to be RUNNING after the restart", interval=0.5)
    except BaseException:
        print(f"last states seen: {seen}\n{cp.log()}")
        raise

    # Watch a few reconcile passes: exactly one agent per node, and the agents that ran
    # through the crash were adopted, not replaced.
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        pids = assert_one_agent_per_node(cp, node_ids)
        time.sleep(0.3)
    for node, old_pids in before.items():
        assert len(old_pids) == 1, f"duplicate agents for {node} before the restart: {old_pids}"
        assert pids[node] == old_pids[0], f"{node}'s agent was replaced instead of adopted"
    assert cp.node_dirs() == sorted(node_ids), "no orphaned (or missing) node data directories"

    # With the control plane gone, brokers keep serving from their last configuration.
    victim = ids[0]
    port = amqp_port(client.describe_broker(BrokerId=victim))
    cp.kill9()
    conn = connect(port)
    ch = conn.channel()
    ch.queue_declare("while-cp-down")
    ch.basic_publish("", "while-cp-down", b"still serving")
    assert ch.basic_get("while-cp-down", auto_ack=True)[2] == b"still serving"
    conn.close()
    cp.start()
    client = mq_client(cp)
    assert assert_one_agent_per_node(cp, node_ids) == pids, "adopted again after a second crash"

    # kill -9 of one agent: it comes back on its data with its durable messages.
    conn = connect(port)
    ch = conn.channel()
    ch.confirm_delivery()
    ch.queue_declare("durable-orders", durable=True)
    bodies = [f"order-{n}".encode() for n in range(200)]
    for body in bodies:
        ch.basic_publish("", "durable-orders", body, pika.BasicProperties(delivery_mode=2))
    conn.close()

    old_pid = pids[f"{victim}-1"]
    os.kill(old_pid, signal.SIGKILL)
    new_pid = poll(
        lambda: [p for p in agents_by_node(cp.data_dir).get(f"{victim}-1", []) if p != old_pid],
        60, "the killed agent to be restarted",
    )
    assert len(new_pid) == 1
    poll(lambda: client.describe_broker(BrokerId=victim)["BrokerState"] == "RUNNING", 60, "RUNNING again")

    def drained():
        conn = connect(port)
        try:
            ch = conn.channel()
            got = []
            for _ in range(len(bodies) + 1):
                method, _, body = ch.basic_get("durable-orders", auto_ack=True)
                if method is None:
                    break
                got.append(body)
            return got
        finally:
            conn.close()

    got = poll(drained, 30, "the restarted broker to serve its durable queue")
    assert got == bodies, f"{len(got)} of {len(bodies)} persistent messages after kill -9"
    assert_one_agent_per_node(cp, node_ids)
