"""Node replacement (issue 5: "a node whose data is gone is replaced by a fresh node that
copies from the leader before it joins the in-sync set"), with real `mooring serve`, real
agents from the local provider and a pika producer with confirms, on SQLite and Postgres.

A follower's agent is frozen, its data directory (`<data-dir>/nodes/<node-id>/`) deleted and
the agent killed: the control plane starts a fresh node in its place, on an empty directory.
The test watches the in-sync set (the `in-sync-change` events) and, the moment the fresh node
is back in it, kills the leader with SIGKILL. A node that joined before it had copied the
leader's log would be promoted without the confirmed messages it never received; so the
promoted node must hold every message confirmed before the kill.

- CLUSTER_MULTI_AZ: the other follower is frozen (SIGSTOP) as the leader is killed, so the
  fresh node is the one promoted.
- ACTIVE_STANDBY_MULTI_AZ: the dead node was the leader's only in-sync follower; the leader
  confirmed alone (CRITICAL_ACTION_REQUIRED) meanwhile, and the fresh node must copy all of
  that before the broker is redundant again.

A backlog of larger messages is published before the deletion so that copying takes a
measurable time."""

import os
import re
import shutil
import signal
import time

import pika
import pytest

from e2e_helpers import agents_by_node, describe, poll, wait_running
from test_maintenance_replicated import (
    ADMIN,
    QUEUE,
    Producer,
    all_events,
    connect,
    drain,
    leader_port,
)

BACKLOG = 1500
BACKLOG_BODY = 8 * 1024


def leader_node(described):
    leaders = [i["nodeId"] for i in described["brokerInstances"] if i.get("role") == "LEADER"]
    return leaders[0] if len(leaders) == 1 else None


def port_of(described, node):
    [i] = [i for i in described["brokerInstances"] if i["nodeId"] == node]
    return int(i["endpoints"][0].rsplit(":", 1)[1])


def in_sync_after(event):
    """The in-sync set an `in-sync-change` event moved to."""
    m = re.search(r"-> \[([^\]]*)\]", event["reason"])
    return set(filter(None, (s.strip() for s in m.group(1).split(",")))) if m else None


def publish_backlog(port, count):
    """Persistent messages of BACKLOG_BODY bytes with confirms; returns the confirmed bodies."""
    conn = connect(port)
    confirmed = []
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        ch.queue_declare(QUEUE, durable=True)
        pad = b"x" * BACKLOG_BODY
        for i in range(count):
            body = b"backlog-%d-" % i + pad
            ch.basic_publish("", QUEUE, body, pika.BasicProperties(delivery_mode=2), mandatory=True)
            confirmed.append(body)
    finally:
        try:
            conn.close()
        except Exception:  # noqa: BLE001
            pass
    return confirmed


def dir_size(path):
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(root, name))
            except OSError:
                pass
    return total


def signal_agent(cp, node, sig):
    pids = agents_by_node(cp.data_dir).get(node, [])
    assert len(pids) == 1, f"one agent for {node}, got {pids}"
    os.kill(pids[0], sig)
    return pids[0]


def replicated_broker(aws, cp, name, mode, nodes):
    """Creates a replicated broker and waits until it runs with all `nodes` instances and a
    leader; returns its id and that DescribeBroker answer."""
    broker_id = aws.ok(
        "create-broker", "--broker-name", name, "--deployment-mode", mode,
        "--engine-type", "RABBITMQ", "--engine-version", "3.13", "--host-instance-type", "mq.m5.large",
        "--no-publicly-accessible", "--no-auto-minor-version-upgrade",
        "--users", f"Username={ADMIN[0]},Password={ADMIN[1]}",
    )["BrokerId"]
    wait_running(aws, broker_id, timeout=120)
    d = poll(lambda: (lambda d: d if leader_node(d) and len(d["brokerInstances"]) == nodes else None)(
        describe(cp, broker_id)), 60, f"{nodes} instances, one leader")
    return broker_id, d


def replace_and_fail_over(aws, cp, mode, nodes):
    broker_id, d = replicated_broker(aws, cp, f"replace-{nodes}", mode, nodes)
    leader = leader_node(d)
    followers = [i["nodeId"] for i in d["brokerInstances"] if i["nodeId"] != leader]
    victim, others = followers[0], followers[1:]
    ports = [int(i["endpoints"][0].rsplit(":", 1)[1]) for i in d["brokerInstances"]]

    confirmed = publish_backlog(leader_port(d), BACKLOG)
    producer = Producer(ports)
    producer.start()
    try:
        poll(lambda: len(producer.confirmed) >= 100, 60, "confirmed publishes before the deletion")

        # The victim's data is gone: frozen, its directory deleted, then killed.
        node_dir = cp.data_dir / "nodes" / victim
        assert node_dir.is_dir(), node_dir
        old_pid = signal_agent(cp, victim, signal.SIGSTOP)
        shutil.rmtree(node_dir)
        os.kill(old_pid, signal.SIGKILL)
        deleted_at = time.monotonic()
        seen = len(all_events(cp, broker_id))

        def left():
            return any(e["kind"] == "in-sync-change" and victim not in (in_sync_after(e) or {victim})
                       for e in all_events(cp, broker_id)[seen:])

        poll(left, 30, f"{victim} to leave the in-sync set\n{cp.log()}", interval=0.05)
        if nodes == 2:
            # The leader confirms alone meanwhile, and says so.
            poll(lambda: describe(cp, broker_id)["brokerState"] == "CRITICAL_ACTION_REQUIRED", 30,
                 "CRITICAL_ACTION_REQUIRED while the only follower is gone")
        count_at_loss = len(producer.confirmed)
        poll(lambda: len(producer.confirmed) >= count_at_loss + 100, 60,
             "confirmed publishes while the victim is away")

        def fresh_node_started():
            pids = agents_by_node(cp.data_dir).get(victim, [])
            return pids and pids != [old_pid] and node_dir.is_dir()

        poll(fresh_node_started, 60, f"a fresh node in place of {victim}\n{cp.log()}")

        def rejoined():
            events = all_events(cp, broker_id)[seen:]
            changes = [e for e in events if e["kind"] == "in-sync-change"]
            return bool(changes) and victim in (in_sync_after(changes[-1]) or set())

        poll(rejoined, 90, f"{victim} back in the in-sync set\n{cp.log()}", interval=0.05)
        rejoined_after = time.monotonic() - deleted_at
        # What it holds on disk as it joins: the backlog it can only have copied.
        size_at_rejoin = dir_size(node_dir)
        # The moment it is in sync, the leader dies (and the other followers cannot answer).
        for other in others:
            signal_agent(cp, other, signal.SIGSTOP)
        signal_agent(cp, leader, signal.SIGKILL)
        confirmed_before_kill = list(producer.confirmed)
        try:
            promoted = poll(lambda: (lambda n: n if n and n != leader else None)(leader_node(describe(cp, broker_id))),
                            30, f"a new leader\n{cp.log()}", interval=0.05)
        finally:
            for other in others:
                signal_agent(cp, other, signal.SIGCONT)
        after = len(producer.confirmed)
        poll(lambda: len(producer.confirmed) >= after + 50, 60, "confirmed publishes on the new leader")
    finally:
        producer.stop.set()
        producer.join(30)

    final = describe(cp, broker_id)
    assert leader_node(final) == promoted, final
    got = set(drain(port_of(final, promoted)))
    lost_before_kill = [b[:20] for b in confirmed + confirmed_before_kill if b not in got]
    lost = [b[:20] for b in producer.confirmed if b not in got]
    print(f"\n{mode}: {victim} back in sync {rejoined_after:.1f}s after its data was deleted; "
          f"promoted {promoted}; confirmed {len(confirmed) + len(producer.confirmed)}, "
          f"drained {len(got)}, publish errors {producer.errors}")
    print(f"{victim} held {size_at_rejoin / 1e6:.1f} MB on disk as it rejoined "
          f"(backlog {BACKLOG * BACKLOG_BODY / 1e6:.1f} MB)")
    assert size_at_rejoin >= BACKLOG * BACKLOG_BODY, "joined the in-sync set before copying the backlog"
    if nodes > 2:
        assert promoted == victim, "the fresh node was the only in-sync node left to promote"
    assert not lost_before_kill, f"{len(lost_before_kill)} confirmed messages lost, e.g. {lost_before_kill[:5]}"
    assert not lost, f"{len(lost)} confirmed messages lost after the failover, e.g. {lost[:5]}"


@pytest.mark.timeout(240)
def test_cluster_follower_whose_data_is_gone_copies_before_joining(aws, control_plane):
    replace_and_fail_over(aws, control_plane, "CLUSTER_MULTI_AZ", 3)


@pytest.mark.timeout(240)
def test_only_in_sync_follower_whose_data_is_gone_copies_before_joining(aws, control_plane):
    replace_and_fail_over(aws, control_plane, "ACTIVE_STANDBY_MULTI_AZ", 2)


@pytest.mark.timeout(240)
def test_fresh_node_is_not_promoted_when_the_leader_dies_before_it_copied(aws, control_plane):
    """The only in-sync follower's data is gone while the leader is dying: the leader is frozen
    (SIGSTOP) so it can neither report the follower gone nor ship it anything, the follower is
    wiped and killed, and the control plane starts a fresh node in its place. The in-sync set
    recorded still names the follower; but the fresh node holds nothing, so it must not be
    promoted when the frozen leader's lease runs out. Then the leader is killed: its node comes
    back on its data and leads again, the fresh node copies and joins, nothing confirmed is
    lost."""
    cp = control_plane
    broker_id, d = replicated_broker(aws, cp, "replace-early", "ACTIVE_STANDBY_MULTI_AZ", 2)
    leader = leader_node(d)
    [victim] = [i["nodeId"] for i in d["brokerInstances"] if i["nodeId"] != leader]
    confirmed = publish_backlog(leader_port(d), 300)
    seen = len(all_events(cp, broker_id))

    leader_pid = signal_agent(cp, leader, signal.SIGSTOP)
    node_dir = cp.data_dir / "nodes" / victim
    old_pid = signal_agent(cp, victim, signal.SIGSTOP)
    shutil.rmtree(node_dir)
    os.kill(old_pid, signal.SIGKILL)
    frozen_at = time.monotonic()
    try:
        poll(lambda: (lambda p: p and p != [old_pid])(agents_by_node(cp.data_dir).get(victim, [])), 60,
             f"a fresh node in place of {victim}\n{cp.log()}")
        # Past the frozen leader's lease, and then some: the fresh node must never lead.
        leaders = set()
        while time.monotonic() - frozen_at < 8:
            leaders.add(leader_node(describe(cp, broker_id)))
            time.sleep(0.05)
    finally:
        os.kill(leader_pid, signal.SIGKILL)
    events = all_events(cp, broker_id)[seen:]
    print(f"\nleaders seen while the leader was frozen: {leaders}; events "
          f"{[(e['kind'], e['reason']) for e in events]}")
    assert victim not in leaders, "a node without the leader's log was promoted"

    def redundant_again():
        d = describe(cp, broker_id)
        pids = agents_by_node(cp.data_dir).get(leader, [])
        fine = leader_node(d) and d["brokerState"] == "RUNNING" and pids and pids != [leader_pid]
        return d if fine else None

    final = poll(redundant_again, 120, f"the broker RUNNING and redundant again\n{cp.log()}")
    got = set(drain(port_of(final, leader_node(final))))
    lost = [b[:20] for b in confirmed if b not in got]
    print(f"leader at the end {leader_node(final)}; confirmed {len(confirmed)}, drained {len(got)}")
    assert not lost, f"{len(lost)} confirmed messages lost, e.g. {lost[:5]}"


@pytest.mark.timeout(240)
def test_leader_whose_data_is_gone_is_replaced_without_loss(aws, control_plane):
    """The leader's data is gone: it is frozen, its directory deleted, and killed; the control
    plane starts a fresh node in its place. That node holds nothing, so it must not lead on
    its empty log: the follower is promoted, and every confirmed message survives. (A dead
    leader is restarted only once the failover has run — `plan::failover::restart_gate` — so
    the fresh node comes back as a follower; the control plane has no separate guard for a
    leader that lost its data and has no in-sync follower to fail over to.)"""
    cp = control_plane
    broker_id, d = replicated_broker(aws, cp, "replace-leader", "ACTIVE_STANDBY_MULTI_AZ", 2)
    leader = leader_node(d)
    confirmed = publish_backlog(leader_port(d), 300)
    # An agent that dies young is restarted after a back-off; this one has run long enough
    # to be restarted at once, racing the failover.
    time.sleep(6)
    node_dir = cp.data_dir / "nodes" / leader
    old_pid = signal_agent(cp, leader, signal.SIGSTOP)
    shutil.rmtree(node_dir)
    os.kill(old_pid, signal.SIGKILL)

    def settled():
        d = describe(cp, broker_id)
        pids = agents_by_node(cp.data_dir).get(leader, [])
        fine = leader_node(d) and d["brokerState"] == "RUNNING" and pids and pids != [old_pid]
        return d if fine else None

    final = poll(settled, 120, f"the broker RUNNING and redundant again\n{cp.log()}")
    events = all_events(cp, broker_id)
    got = set(drain(port_of(final, leader_node(final))))
    lost = [b[:20] for b in confirmed if b not in got]
    print(f"\nleader {leader} -> {leader_node(final)}; confirmed {len(confirmed)}, drained {len(got)}; "
          f"events {[(e['kind'], e['reason'][:100]) for e in events[-6:]]}")
    assert not lost, f"{len(lost)} confirmed messages lost, e.g. {lost[:5]}"
