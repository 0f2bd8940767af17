"""Patching a replicated broker in its maintenance window while producing (issue 5,
must-show 3), for ACTIVE_STANDBY_MULTI_AZ (2 nodes) and CLUSTER_MULTI_AZ (3 nodes), with real
agents, the AWS CLI and pika, on SQLite and Postgres.

A new engine version in the runtime catalog schedules an upgrade; the injected clock is moved
into the broker's window while a producer publishes with confirms to whichever node leads
(followers refuse clients). The broker is patched node by node — the followers first, each
back in sync before the next, then a switchover, then the old leader — every agent process is
replaced, the leader changes, the steps are `patch-step` events, no confirmed message is
lost, and the broker ends RUNNING on the new version with nothing pending.

The helpers here (clock, signed API, leader-following producer, drain) are shared with other
maintenance tests (test_agent_upgrade.py)."""

import datetime as dt
import json
import threading
import time
import urllib.parse

import pika
import pytest

from e2e_helpers import (
    Aws,
    ControlPlane,
    agents_by_node,
    api,
    kill_everything_under,
    next_weekday_at,
    poll,
    wait_running,
)

ADMIN = ("admin", "admin-password-1")
OLD, NEW = "3.13", "3.13.1"
QUEUE = "replicated-patch"
PUBLISHES_EACH_SIDE = 100


def set_clock(path, when):
    offset = (when - dt.datetime.now(dt.timezone.utc)).total_seconds()
    path.write_text(f"{offset:.3f}\n")


def connect(port):
    return pika.BlockingConnection(pika.ConnectionParameters(
        "127.0.0.1", port, credentials=pika.PlainCredentials(*ADMIN),
        connection_attempts=1, socket_timeout=5, blocked_connection_timeout=10,
    ))


def leader_port(described):
    leaders = [i for i in described["brokerInstances"] if i.get("role") == "LEADER"]
    return int(leaders[0]["endpoints"][0].rsplit(":", 1)[1]) if len(leaders) == 1 else None


class Producer(threading.Thread):
    """Publishes with confirms to whichever of `ports` accepts it (the leader), moving on
    when a connection fails; a body counts as confirmed once basic_publish returned."""

    def __init__(self, ports):
        super().__init__(daemon=True)
        self.ports = ports
        self.stop = threading.Event()
        self.confirmed = []
        self.errors = 0
        self.seq = 0

    def run(self):
        i = 0
        while not self.stop.is_set():
            port = self.ports[i % len(self.ports)]
            i += 1
            try:
                conn = connect(port)
            except Exception:  # noqa: BLE001 - a follower refusing, or a node restarting
                self.errors += 1
                time.sleep(0.05)
                continue
            try:
                ch = conn.channel()
                ch.confirm_delivery()
                ch.queue_declare(QUEUE, durable=True)
                while not self.stop.is_set():
                    self.seq += 1
                    body = f"r-{self.seq}".encode()
                    ch.basic_publish("", QUEUE, body, pika.BasicProperties(delivery_mode=2), mandatory=True)
                    self.confirmed.append(body)
                    time.sleep(0.005)
            except Exception:  # noqa: BLE001 - lost mid-publish: that one is unconfirmed
                self.errors += 1
            finally:
                try:
                    conn.close()
                except Exception:  # noqa: BLE001
                    pass


def drain(port):
    conn = connect(port)
    try:
        ch = conn.channel()
        got = []
        while True:
            method, _, body = ch.basic_get(QUEUE, auto_ack=True)
            if method is None:
                return got
            got.append(body)
    finally:
        conn.close()


@pytest.fixture
def maintenance_cp(tmp_path, database_url, monkeypatch):
    clock = tmp_path / "clock-offset"
    start = next_weekday_at(dt.datetime.now(dt.timezone.utc), 5, 2)  # a Saturday, windows shut
    set_clock(clock, start)
    monkeypatch.setenv("MOORING_CLOCK_OFFSET_FILE", str(clock))
    cp = ControlPlane(tmp_path / "cp", database_url)
    try:
        cp.start()
        yield cp, clock, start
    finally:
        cp.stop()
        kill_everything_under(cp.data_dir)


def all_events(cp, broker_id):
    """Every event of the broker, oldest first, across pages."""
    events, token = [], None
    while True:
        query = "?maxResults=100" + (f"&nextToken={urllib.parse.quote(token)}" if token else "")
        page = api(cp, "GET", f"/v1/brokers/{broker_id}/events{query}")
        events += page["events"]
        token = page.get("nextToken")
        if not token:
            return events


def rolling_restarts_in_order(events, first_leader_node, nodes):
    """The `rolling restart` patch steps, checked: one per node, the first leader's last, and
    each follower back in the in-sync set (an in-sync change at the leader's request naming
    it) before the next node is restarted. `events` oldest first."""
    restarts = [(i, e) for i, e in enumerate(events)
                if e["kind"] == "patch-step" and e["reason"].startswith("rolling restart")]
    reasons = [e["reason"] for _, e in restarts]
    assert len(restarts) == nodes, reasons
    assert all(first_leader_node not in r for r in reasons[:-1]), reasons
    assert first_leader_node in reasons[-1], reasons
    for (at, step), (next_at, _) in zip(restarts, restarts[1:]):
        node = step["fromNodeId"]
        rejoined = [e for e in events[at + 1:next_at]
                    if e["kind"] == "in-sync-change" and "leader's request" in e["reason"]
                    and node in e["reason"].split("->", 1)[1]]
        assert rejoined, (f"{node} was not back in sync before the next restart: "
                          f"{[(e['kind'], e['reason']) for e in events[at:next_at + 1]]}")
    return reasons


@pytest.mark.timeout(420)
def test_active_standby_is_patched_node_by_node_in_its_window(maintenance_cp, tmp_path):
    patched_node_by_node(maintenance_cp, tmp_path, "ACTIVE_STANDBY_MULTI_AZ", 2)


@pytest.mark.timeout(420)
def test_cluster_is_patched_node_by_node_in_its_window(maintenance_cp, tmp_path):
    patched_node_by_node(maintenance_cp, tmp_path, "CLUSTER_MULTI_AZ", 3)


def patched_node_by_node(maintenance_cp, tmp_path, mode, nodes):
    cp, clock, start = maintenance_cp
    home = tmp_path / "aws-home"
    home.mkdir()
    aws = Aws(cp, home)
    broker_id = aws.ok(
        "create-broker", "--broker-name", "patch-replicated", "--deployment-mode", mode,
        "--engine-type", "RABBITMQ", "--engine-version", OLD, "--host-instance-type", "mq.m5.large",
        "--no-publicly-accessible", "--auto-minor-version-upgrade",
        "--maintenance-window-start-time", "DayOfWeek=MONDAY,TimeOfDay=02:00,TimeZone=UTC",
        "--users", f"Username={ADMIN[0]},Password={ADMIN[1]}",
    )["BrokerId"]
    wait_running(aws, broker_id, timeout=120)
    described = poll(lambda: (lambda d: d if leader_port(d) and len(d["brokerInstances"]) == nodes else None)(
        api(cp, "GET", f"/v1/brokers/{broker_id}")), 60, f"{nodes} instances, one leader")
    first_leader = leader_port(described)
    first_leader_node = [i["nodeId"] for i in described["brokerInstances"] if i.get("role") == "LEADER"][0]
    ports = [int(i["endpoints"][0].rsplit(":", 1)[1]) for i in described["brokerInstances"]]
    pids_before = {node: pids for node, pids in agents_by_node(cp.data_dir).items() if node.startswith(broker_id)}
    assert len(pids_before) == nodes, pids_before

    catalog = cp.data_dir / "catalog"
    catalog.mkdir(exist_ok=True)
    (catalog / "engine-versions.json").write_text(json.dumps(
        {"engineVersions": [{"engineType": "RABBITMQ", "version": NEW}]}))
    monday = next_weekday_at(start, 0, 2)
    actions = poll(lambda: api(cp, "GET", f"/v1/brokers/{broker_id}")["pendingActions"], 30,
                   "the upgrade to be pending")
    assert actions[0]["target"] == NEW and actions[0]["scheduledAt"] == monday.strftime("%Y-%m-%dT%H:%M:%S.000Z")

    producer = Producer(ports)
    producer.start()
    try:
        poll(lambda: len(producer.confirmed) >= PUBLISHES_EACH_SIDE, 60, "confirmed publishes before the window")
        set_clock(clock, monday + dt.timedelta(minutes=5))

        def patched():
            d = api(cp, "GET", f"/v1/brokers/{broker_id}")
            now = {n: p for n, p in agents_by_node(cp.data_dir).items() if n.startswith(broker_id)}
            every_node_restarted = len(now) == nodes and all(now[n] != pids_before[n] for n in pids_before if n in now)
            ok = (d["brokerState"] == "RUNNING" and d["engineVersion"] == NEW and d["pendingActions"] == []
                  and every_node_restarted and leader_port(d)
                  and api(cp, "GET", "/v1/maintenance")["brokersInMaintenance"] == [])
            return d if ok else None

        final = poll(patched, 240, f"the broker patched node by node\n{cp.log()}", interval=0.5)
        after = len(producer.confirmed)
        poll(lambda: len(producer.confirmed) >= after + PUBLISHES_EACH_SIDE, 60, "confirmed publishes after patching")
    finally:
        producer.stop.set()
        producer.join(30)

    final_leader = leader_port(final)
    events = all_events(cp, broker_id)
    steps = [e for e in events if e["kind"] == "patch-step"]
    switchovers = [e for e in events if e["kind"] == "switchover"]
    print(f"\nleader port {first_leader} -> {final_leader}; patch steps: "
          f"{[e['reason'] for e in steps]}; switchovers: {len(switchovers)}")
    assert len(switchovers) >= 1, events
    assert any("maintenance done" in e["reason"] for e in steps), steps
    # Followers first, the node that led last (after the switchover).
    rolling_restarts_in_order(events, first_leader_node, nodes)
    assert final_leader != first_leader, "leadership moved off the node patched last"

    got = drain(final_leader)
    missing = set(producer.confirmed) - set(got)
    print(f"confirmed {len(producer.confirmed)}, drained {len(got)}, "
          f"duplicates {len(got) - len(set(got))}, publish errors {producer.errors}")
    assert not missing, f"{len(missing)} confirmed messages lost, e.g. {sorted(missing)[:5]}"
