"""Replicated brokers end to end: real `mooring serve`, real agents from the local provider,
the AWS CLI and signed raw API calls, pika as the application.

A CLUSTER_MULTI_AZ broker is created through the API and runs with 3 nodes in distinct
zones, one leader; messages published with confirms survive a SIGKILL of the leader's agent;
DescribeBroker shows the new leader; the old node comes back as a follower; the failover is
in the events API and the metrics. Then a planned switchover through the extension route.
Runs on SQLite and on Postgres."""

import os
import signal
import time
import urllib.request

import pika
import pytest

from e2e_helpers import agents_by_node, api_status, describe, poll, wait_running

ADMIN = ("admin", "admin-password-1")
QUEUE = "orders"


def leader_of(described):
    leaders = [i for i in described["brokerInstances"] if i.get("role") == "LEADER"]
    return leaders[0] if len(leaders) == 1 else None


def port_of(instance):
    return int(instance["endpoints"][0].rsplit(":", 1)[1])


def connect(port):
    return pika.BlockingConnection(
        pika.ConnectionParameters(
            "127.0.0.1", port, credentials=pika.PlainCredentials(*ADMIN),
            connection_attempts=1, socket_timeout=5, blocked_connection_timeout=10,
        )
    )


def publish_confirmed(port, bodies):
    """Publishes persistent messages with confirms; returns those the broker confirmed (a
    failure stops at the first unconfirmed one)."""
    confirmed = []
    conn = connect(port)
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        ch.queue_declare(QUEUE, durable=True)
        for body in bodies:
            ch.basic_publish("", QUEUE, body, pika.BasicProperties(delivery_mode=2), mandatory=True)
            confirmed.append(body)
    finally:
        try:
            conn.close()
        except Exception:  # noqa: BLE001 - the connection may be gone with the broker
            pass
    return confirmed


def publish_one_when_possible(port, body, timeout):
    """Retries connecting and publishing one confirmed message until it works; returns the
    moment it was confirmed."""

    def attempt():
        try:
            return publish_confirmed(port, [body]) == [body] and time.monotonic()
        except (pika.exceptions.AMQPError, OSError):
            return None

    return poll(attempt, timeout, f"a confirmed publish on port {port}", interval=0.05)


def drain(port, limit=100_000):
    conn = connect(port)
    try:
        ch = conn.channel()
        got = []
        for _ in range(limit):
            method, _, body = ch.basic_get(QUEUE, auto_ack=True)
            if method is None:
                break
            got.append(body)
        return got
    finally:
        conn.close()


def follower_refuses(port):
    try:
        connect(port).close()
        return False
    except (pika.exceptions.AMQPError, OSError):
        return True


@pytest.mark.timeout(420)
def test_cluster_fails_over_without_losing_confirmed_messages(aws, control_plane):
    cp = control_plane
    created = aws.ok(
        "create-broker", "--broker-name", "replicated-1", "--deployment-mode", "CLUSTER_MULTI_AZ",
        "--engine-type", "RABBITMQ", "--engine-version", "3.13", "--host-instance-type", "mq.m5.large",
        "--no-publicly-accessible", "--auto-minor-version-upgrade",
        "--users", f"Username={ADMIN[0]},Password={ADMIN[1]}",
    )
    broker_id = created["BrokerId"]
    wait_running(aws, broker_id, timeout=120)

    d = poll(lambda: (lambda d: d if leader_of(d) and len(d["brokerInstances"]) == 3 else None)(describe(cp, broker_id)),
             60, "3 instances, one leader")
    instances = d["brokerInstances"]
    assert instances[0]["role"] == "LEADER", "the leader is listed first"
    assert sorted(i["availabilityZone"] for i in instances) == ["us-east-1a", "us-east-1b", "us-east-1c"]
    assert [i["role"] for i in instances[1:]] == ["FOLLOWER", "FOLLOWER"]
    old_leader = leader_of(d)
    old_port = port_of(old_leader)
    # The AWS CLI sees the Amazon MQ members of the same answer.
    cli = aws.ok("describe-broker", "--broker-id", broker_id)
    assert len(cli["BrokerInstances"]) == 3 and cli["DeploymentMode"] == "CLUSTER_MULTI_AZ"

    # Followers refuse clients (naming the leader); the leader takes confirmed publishes.
    for follower in instances[1:]:
        poll(lambda f=follower: follower_refuses(port_of(f)), 30, f"follower {follower['nodeId']} to refuse clients")
    publish_one_when_possible(old_port, b"warm-up", 60)
    first = [f"before-{i}".encode() for i in range(300)]
    confirmed = [b"warm-up"] + publish_confirmed(old_port, first)
    assert len(confirmed) == 301

    # SIGKILL the leader's agent.
    pids = agents_by_node(cp.data_dir).get(old_leader["nodeId"], [])
    assert len(pids) == 1, f"one agent for the leader, got {pids}"
    killed_at = time.monotonic()
    os.kill(pids[0], signal.SIGKILL)

    def new_leader():
        leader = leader_of(describe(cp, broker_id))
        return leader if leader and leader["nodeId"] != old_leader["nodeId"] else None

    leader = poll(new_leader, 30, "a new leader in DescribeBroker", interval=0.05)
    seen_at = time.monotonic()
    new_port = port_of(leader)
    confirmed_at = publish_one_when_possible(new_port, b"after-failover-first", 30)
    confirmed.append(b"after-failover-first")
    print(f"\nfailover: new leader in DescribeBroker after {seen_at - killed_at:.2f}s, "
          f"first confirmed publish after {confirmed_at - killed_at:.2f}s")
    assert confirmed_at - killed_at < 10, "failover far too slow"

    second = [f"after-{i}".encode() for i in range(200)]
    confirmed += publish_confirmed(new_port, second)

    # The failover is recorded, with its duration, and counted in the metrics.
    status, events = api_status(cp, "GET", f"/v1/brokers/{broker_id}/events")
    assert status == 200, events
    failovers = [e for e in events["events"] if e["kind"] == "failover"]
    assert len(failovers) == 1, events
    assert failovers[0]["fromNodeId"] == old_leader["nodeId"]
    assert failovers[0]["toNodeId"] == leader["nodeId"]
    assert failovers[0]["durationMs"] > 0
    with urllib.request.urlopen(f"{cp.endpoint}/metrics", timeout=10) as resp:
        metrics = resp.read().decode()
    assert "mooring_failovers_total 1" in metrics, metrics[-2000:]

    # The killed node is started again and rejoins as a follower; the broker ends RUNNING
    # with its redundancy back.
    def rejoined():
        d = describe(cp, broker_id)
        roles = {i["nodeId"]: i.get("role") for i in d["brokerInstances"]}
        return d if roles.get(old_leader["nodeId"]) == "FOLLOWER" and d["brokerState"] == "RUNNING" else None

    poll(rejoined, 90, "the old leader to rejoin as a follower, broker RUNNING")
    poll(lambda: follower_refuses(old_port), 30, "the old leader to refuse clients as a follower")

    # Every confirmed message is there, exactly once or as a counted duplicate.
    got = drain(new_port)
    missing = set(confirmed) - set(got)
    duplicates = len(got) - len(set(got))
    print(f"confirmed {len(confirmed)}, drained {len(got)}, duplicates {duplicates}")
    assert not missing, f"{len(missing)} confirmed messages lost, e.g. {sorted(missing)[:5]}"
    before = [b for b in got if b.startswith(b"before-")]
    assert before == sorted(set(before), key=before.index), "order holds apart from duplicates"


@pytest.mark.timeout(300)
def test_switchover_route_moves_the_leader(aws, control_plane):
    cp = control_plane
    created = aws.ok(
        "create-broker", "--broker-name", "standby-1", "--deployment-mode", "ACTIVE_STANDBY_MULTI_AZ",
        "--engine-type", "RABBITMQ", "--engine-version", "3.13", "--host-instance-type", "mq.m5.large",
        "--no-publicly-accessible", "--auto-minor-version-upgrade",
        "--users", f"Username={ADMIN[0]},Password={ADMIN[1]}",
    )
    broker_id = created["BrokerId"]
    wait_running(aws, broker_id, timeout=120)
    d = poll(lambda: (lambda d: d if leader_of(d) and len(d["brokerInstances"]) == 2 else None)(describe(cp, broker_id)),
             60, "2 instances, one leader")
    old = leader_of(d)
    standby = [i for i in d["brokerInstances"] if i["nodeId"] != old["nodeId"]][0]
    publish_one_when_possible(port_of(old), b"warm-up", 60)
    confirmed = [b"warm-up"] + publish_confirmed(port_of(old), [f"m-{i}".encode() for i in range(100)])

    # A single-instance broker, an unknown node: refused with Amazon MQ's error shapes.
    status, body = api_status(cp, "POST", f"/v1/brokers/{broker_id}/switchover", {"targetNodeId": "nope"})
    assert status == 400, body

    # The standby must be back in sync (it is, once RUNNING); then the switch.
    def switch():
        status, body = api_status(cp, "POST", f"/v1/brokers/{broker_id}/switchover", {"targetNodeId": standby["nodeId"]})
        return body if status == 200 else None

    started = time.monotonic()
    done = poll(switch, 60, "the switchover to be accepted")
    assert done["fromNodeId"] == old["nodeId"] and done["toNodeId"] == standby["nodeId"], done
    poll(lambda: (leader_of(describe(cp, broker_id)) or {}).get("nodeId") == standby["nodeId"], 5,
         "DescribeBroker to show the new leader")
    confirmed_at = publish_one_when_possible(port_of(standby), b"after-switch", 30)
    confirmed.append(b"after-switch")
    print(f"\nswitchover: first confirmed publish on the new leader {confirmed_at - started:.2f}s after the request")
    status, events = api_status(cp, "GET", f"/v1/brokers/{broker_id}/events")
    assert any(e["kind"] == "switchover" and e["toNodeId"] == standby["nodeId"] for e in events["events"]), events
    got = drain(port_of(standby))
    assert not set(confirmed) - set(got), "no confirmed message lost in the switchover"


@pytest.mark.timeout(420)
def test_reboot_is_a_rolling_restart_with_switchover(aws, control_plane):
    cp = control_plane
    created = aws.ok(
        "create-broker", "--broker-name", "rolling-1", "--deployment-mode", "CLUSTER_MULTI_AZ",
        "--engine-type", "RABBITMQ", "--engine-version", "3.13", "--host-instance-type", "mq.m5.large",
        "--no-publicly-accessible", "--auto-minor-version-upgrade",
        "--users", f"Username={ADMIN[0]},Password={ADMIN[1]}",
    )
    broker_id = created["BrokerId"]
    wait_running(aws, broker_id, timeout=120)
    d = poll(lambda: (lambda d: d if leader_of(d) and len(d["brokerInstances"]) == 3 else None)(describe(cp, broker_id)),
             60, "3 instances, one leader")
    old = leader_of(d)
    publish_one_when_possible(port_of(old), b"warm-up", 60)
    confirmed = [b"warm-up"] + publish_confirmed(port_of(old), [f"r-{i}".encode() for i in range(200)])
    pids_before = agents_by_node(cp.data_dir)

    aws.ok("reboot-broker", "--broker-id", broker_id)

    def restarted_all():
        now = agents_by_node(cp.data_dir)
        done = all(now.get(node) and now[node] != pids for node, pids in pids_before.items())
        return done and aws.ok("describe-broker", "--broker-id", broker_id)["BrokerState"] == "RUNNING"

    poll(restarted_all, 240, "every node restarted and the broker RUNNING again")

    # Every node runs a new agent; the leader moved before its own restart.
    pids_after = agents_by_node(cp.data_dir)
    for node, pids in pids_before.items():
        assert pids_after.get(node) and pids_after[node] != pids, f"{node} was not restarted"
    status, events = api_status(cp, "GET", f"/v1/brokers/{broker_id}/events")
    assert status == 200, events
    kinds = [(e["kind"], e.get("fromNodeId")) for e in events["events"]]
    steps = [node for kind, node in kinds if kind == "patch-step"]
    switch = [i for i, (kind, _) in enumerate(kinds) if kind == "switchover"]
    assert len(switch) >= 1, kinds
    assert steps and steps[-1] == old["nodeId"], f"the old leader restarts last: {kinds}"
    last_step = max(i for i, (kind, _) in enumerate(kinds) if kind == "patch-step")
    assert switch[0] < last_step, f"switchover before the old leader's restart: {kinds}"
    assert not [e for e in events["events"] if e["kind"] == "failover"], f"no failover in a planned reboot: {kinds}"

    leader = poll(lambda: leader_of(describe(cp, broker_id)), 30, "a leader after the reboot")
    assert leader["nodeId"] != old["nodeId"]
    publish_one_when_possible(port_of(leader), b"after-reboot", 60)
    confirmed.append(b"after-reboot")
    got = drain(port_of(leader))
    assert not set(confirmed) - set(got), "no confirmed message lost in the rolling restart"
