"""Patching in the maintenance window, with real agents, the real AWS CLI and pika (issue 5,
must-show 3), on SQLite and on Postgres.

Two single-instance brokers with automatic minor version upgrade: A's window is Monday
02:00 UTC, B's Thursday 14:00 UTC. A new engine version is added to the catalog at runtime;
both get a pending action with the start of their next window. The control plane's test
clock (`--clock-offset-file`, via MOORING_CLOCK_OFFSET_FILE) is then moved into A's window
while a producer publishes persistent messages with confirms to A: A's node restarts on the
new version on its data directory, no confirmed message is lost, A ends RUNNING on the new
version with nothing pending; B is untouched (old version, same agent process, its pending
action still there)."""

import datetime as dt
import json
import threading
import time
import urllib.error

import pika
import pytest

from e2e_helpers import (
    Aws,
    ControlPlane,
    agents_by_node,
    amqp_port,
    api,
    describe,
    kill_everything_under,
    next_weekday_at,
    poll,
    wait_running,
)

ADMIN = ("admin", "admin-password-1")
OLD, NEW = "3.13", "3.13.1"
QUEUE = "patched-while-producing"
# Confirmed publishes wanted before the window opens and again after the restart.
PUBLISHES_EACH_SIDE = 100


def iso_millis(t):
    return t.strftime("%Y-%m-%dT%H:%M:%S.000Z")


class MovableClock:
    """Writes the offset file the control plane adds to its schedule clock."""

    def __init__(self, path):
        self.path = path

    def set(self, when):
        offset = (when - dt.datetime.now(dt.timezone.utc)).total_seconds()
        self.path.write_text(f"{offset:.3f}\n")


@pytest.fixture
def maintenance_cp(tmp_path, database_url, monkeypatch):
    """A control plane whose schedule clock the test moves; it starts at a Saturday 02:00,
    when neither broker's window is open."""
    clock = MovableClock(tmp_path / "clock-offset")
    start = next_weekday_at(dt.datetime.now(dt.timezone.utc), 5, 2)
    clock.set(start)
    monkeypatch.setenv("MOORING_CLOCK_OFFSET_FILE", str(clock.path))
    cp = ControlPlane(tmp_path / "cp", database_url)
    try:
        cp.start()
        yield cp, clock, start
    finally:
        cp.stop()
        kill_everything_under(cp.data_dir)


def connect(port):
    return pika.BlockingConnection(pika.ConnectionParameters(
        "127.0.0.1", port, credentials=pika.PlainCredentials(*ADMIN),
        connection_attempts=1, socket_timeout=5, blocked_connection_timeout=5,
    ))


class Producer(threading.Thread):
    """Publishes persistent messages with confirms until stopped, reconnecting across the
    restart. A body is recorded as confirmed only once basic_publish returned (pika's
    BlockingChannel waits for the broker's ack in confirm mode and raises on a nack)."""

    def __init__(self, port):
        super().__init__(daemon=True)
        self.port = port
        self.stop = threading.Event()
        self.confirmed = []
        self.errors = 0
        self.seq = 0

    def run(self):
        while not self.stop.is_set():
            try:
                conn = connect(self.port)
            except Exception:  # noqa: BLE001 - the broker is restarting
                self.errors += 1
                time.sleep(0.1)
                continue
            try:
                ch = conn.channel()
                ch.confirm_delivery()
                ch.queue_declare(QUEUE, durable=True)
                while not self.stop.is_set():
                    self.seq += 1
                    body = f"m-{self.seq}".encode()
                    ch.basic_publish("", QUEUE, body, pika.BasicProperties(delivery_mode=2),
                                     mandatory=True)
                    self.confirmed.append(body)
                    time.sleep(0.005)
            except Exception:  # noqa: BLE001 - connection lost mid-publish: unconfirmed
                self.errors += 1
                time.sleep(0.1)
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


def node_pids(cp, broker_id):
    return agents_by_node(cp.data_dir).get(f"{broker_id}-1", [])


def create(aws, name, day, time_of_day):
    return aws.ok(
        "create-broker", "--broker-name", name, "--deployment-mode", "SINGLE_INSTANCE",
        "--engine-type", "RABBITMQ", "--engine-version", OLD, "--host-instance-type", "mq.m5.large",
        "--no-publicly-accessible", "--auto-minor-version-upgrade",
        "--maintenance-window-start-time", f"DayOfWeek={day},TimeOfDay={time_of_day},TimeZone=UTC",
        "--users", f"Username={ADMIN[0]},Password={ADMIN[1]}",
    )["BrokerId"]


@pytest.mark.timeout(300)
def test_auto_minor_upgrade_in_the_window_while_producing(maintenance_cp, tmp_path):
    cp, clock, start = maintenance_cp
    home = tmp_path / "aws-home"
    home.mkdir()
    aws = Aws(cp, home)

    a = create(aws, "patch-monday", "MONDAY", "02:00")
    b = create(aws, "patch-thursday", "THURSDAY", "14:00")
    port = amqp_port(wait_running(aws, a, timeout=90))
    wait_running(aws, b, timeout=90)
    assert aws.ok("describe-broker", "--broker-id", a).get("PendingEngineVersion") is None
    assert describe(cp, a)["pendingActions"] == []

    # The catalog grows at runtime: offered at once, and scheduled for each next window.
    catalog = cp.data_dir / "catalog"
    catalog.mkdir(exist_ok=True)
    (catalog / "engine-versions.json").write_text(json.dumps(
        {"engineVersions": [{"engineType": "RABBITMQ", "version": NEW}]}))
    names = [v["Name"] for v in aws.ok("describe-broker-engine-types")["BrokerEngineTypes"][0]["EngineVersions"]]
    assert NEW in names, names

    monday = next_weekday_at(start, 0, 2)
    thursday = next_weekday_at(start, 3, 14)
    for broker_id, due in ((a, monday), (b, thursday)):
        def scheduled(broker_id=broker_id):
            actions = describe(cp, broker_id)["pendingActions"]
            return actions if actions and "scheduledAt" in actions[0] else None
        actions = poll(scheduled, 30, f"the upgrade of {broker_id} to be scheduled")
        assert actions == [{"action": "ENGINE_VERSION", "target": NEW,
                            "source": "AUTO_MINOR_VERSION_UPGRADE", "scheduledAt": iso_millis(due)}]
        described = aws.ok("describe-broker", "--broker-id", broker_id)
        assert described["PendingEngineVersion"] == NEW
        assert described["EngineVersion"] == OLD

    # Nothing happens outside the window.
    pids_a, pids_b = node_pids(cp, a), node_pids(cp, b)
    assert pids_a and pids_b
    time.sleep(3)  # more than one maintenance pass (2 s)
    assert node_pids(cp, a) == pids_a
    assert aws.ok("describe-broker", "--broker-id", a)["EngineVersion"] == OLD

    producer = Producer(port)
    producer.start()
    try:
        poll(lambda: len(producer.confirmed) >= PUBLISHES_EACH_SIDE, 60, "confirmed publishes before the window")

        # Into A's window (B's stays closed).
        clock.set(monday + dt.timedelta(minutes=5))
        poll(lambda: node_pids(cp, a) and node_pids(cp, a) != pids_a, 90,
             f"A's agent to restart in its window\n{cp.log()}")
        patched_at = len(producer.confirmed)

        def upgraded():
            d = aws.ok("describe-broker", "--broker-id", a)
            ok = (d["BrokerState"] == "RUNNING" and d["EngineVersion"] == NEW
                  and "PendingEngineVersion" not in d and describe(cp, a)["pendingActions"] == []
                  and api(cp, "GET", "/v1/maintenance")["brokersInMaintenance"] == [])
            return d if ok else None
        poll(upgraded, 90, "A RUNNING on the new version with nothing pending")
        poll(lambda: len(producer.confirmed) >= patched_at + PUBLISHES_EACH_SIDE, 60,
             "confirmed publishes after the restart")
    finally:
        producer.stop.set()
        producer.join(30)
    assert not producer.is_alive(), "the producer did not stop"

    got = drain(port)
    confirmed = producer.confirmed
    missing = set(confirmed) - set(got)
    duplicates = len(got) - len(set(got))
    print(f"\nconfirmed {len(confirmed)}, drained {len(got)}, duplicates {duplicates}, "
          f"publish errors across the restart {producer.errors}")
    assert not missing, f"{len(missing)} confirmed messages lost, e.g. {sorted(missing)[:5]}"
    # Per-producer order holds (apart from duplicates of unconfirmed retries there are none:
    # every body is unique).
    seen = {}
    for i, body in enumerate(got):
        seen.setdefault(body, i)
    order = [seen[body] for body in confirmed]
    assert order == sorted(order), "confirmed messages out of order"

    # B: untouched.
    described = aws.ok("describe-broker", "--broker-id", b)
    assert (described["EngineVersion"], described["PendingEngineVersion"]) == (OLD, NEW)
    assert len(describe(cp, b)["pendingActions"]) == 1
    assert node_pids(cp, b) == pids_b, "B's agent was restarted outside its window"


@pytest.mark.timeout(120)
def test_maintenance_switch_through_signed_requests(maintenance_cp):
    cp, _, _ = maintenance_cp
    assert api(cp, "GET", "/v1/maintenance")["paused"] is False
    assert api(cp, "PUT", "/v1/maintenance", {"paused": True})["paused"] is True
    assert api(cp, "GET", "/v1/maintenance")["paused"] is True
    with pytest.raises(urllib.error.HTTPError) as refused:
        api(cp, "PUT", "/v1/maintenance", {"paused": "soon"})
    assert refused.value.code == 400
    assert refused.value.headers["x-amzn-ErrorType"] == "BadRequestException"
