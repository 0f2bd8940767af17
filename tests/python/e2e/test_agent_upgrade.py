"""A new agent version becomes a pending action (issue 5: "every disruptive change — ... a new
agent version — becomes a pending action with its scheduled time, visible in DescribeBroker,
applied in the window or at once by RebootBroker"), with real `mooring serve`, real agents,
the AWS CLI and pika, on SQLite and Postgres.

The control plane starts agents from a wrapper script around the real agent that sets
MOORING_AGENT_REPORTED_VERSION (the agent's hidden override of the version it reports at
registration and by `--version`), so the test can install "a new agent binary" by replacing
the wrapper, as an operator upgrading the installed binaries would. The control plane asks
the binary its version (`--version`) when the file changes.

Two brokers run the old agent: an ACTIVE_STANDBY_MULTI_AZ broker with its window on Monday
and a SINGLE_INSTANCE broker with its window on Thursday. Once the new wrapper is installed,
both show an AGENT_VERSION pending action with the new version and the start of their next
window. The injected clock is moved into the replicated broker's window while a producer
publishes with confirms: its nodes are restarted one by one (followers first, a switchover,
the old leader) onto the new binary, the action goes once every node reports the new
version, and no confirmed message is lost. The single-instance broker is untouched until a
RebootBroker applies it at once."""

import datetime as dt
import os
import time

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
from test_maintenance_replicated import (
    ADMIN,
    Producer,
    all_events,
    drain,
    leader_port,
    rolling_restarts_in_order,
    set_clock,
)

OLD_AGENT, NEW_AGENT = "0.0.1-old", "9.9.9-new"
PUBLISHES_EACH_SIDE = 100


def install_wrapper(path, real_agent, version):
    """Installs (write aside, rename in, as package managers do) a wrapper that runs the
    real agent reporting `version`."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_text(f"#!/bin/sh\nMOORING_AGENT_REPORTED_VERSION={version} exec {real_agent} \"$@\"\n")
    tmp.chmod(0o755)
    os.replace(tmp, path)


def reported_by_process(pid):
    """The version an agent process was started to report (its environment)."""
    try:
        env = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
    except OSError:
        return None
    for item in env:
        if item.startswith(b"MOORING_AGENT_REPORTED_VERSION="):
            return item.split(b"=", 1)[1].decode()
    return None


@pytest.fixture
def upgrade_cp(tmp_path, database_url, monkeypatch):
    clock = tmp_path / "clock-offset"
    start = next_weekday_at(dt.datetime.now(dt.timezone.utc), 5, 2)  # a Saturday, windows shut
    set_clock(clock, start)
    monkeypatch.setenv("MOORING_CLOCK_OFFSET_FILE", str(clock))
    cp = ControlPlane(tmp_path / "cp", database_url)
    wrapper = tmp_path / "bin" / "mooring-agent"
    wrapper.parent.mkdir()
    real = cp.agent
    install_wrapper(wrapper, real, OLD_AGENT)
    cp.agent = wrapper
    try:
        cp.start()
        yield cp, clock, start, lambda version: install_wrapper(wrapper, real, version)
    finally:
        cp.stop()
        kill_everything_under(cp.data_dir)


def agent_actions(cp, broker_id):
    return [a for a in api(cp, "GET", f"/v1/brokers/{broker_id}")["pendingActions"]
            if a["action"] == "AGENT_VERSION"]


def agents_of(cp, broker_id):
    return {n: p for n, p in agents_by_node(cp.data_dir).items() if n.startswith(broker_id)}


@pytest.mark.timeout(300)
def test_a_new_agent_binary_is_rolled_out_in_the_window_or_by_reboot(upgrade_cp, tmp_path):
    cp, clock, start, install = upgrade_cp
    home = tmp_path / "aws-home"
    home.mkdir()
    aws = Aws(cp, home)

    def create(name, mode, window):
        return aws.ok(
            "create-broker", "--broker-name", name, "--deployment-mode", mode,
            "--engine-type", "RABBITMQ", "--engine-version", "3.13", "--host-instance-type", "mq.m5.large",
            "--no-publicly-accessible", "--no-auto-minor-version-upgrade",
            "--maintenance-window-start-time", window,
            "--users", f"Username={ADMIN[0]},Password={ADMIN[1]}",
        )["BrokerId"]

    replicated = create("agent-upgrade-replicated", "ACTIVE_STANDBY_MULTI_AZ",
                        "DayOfWeek=MONDAY,TimeOfDay=02:00,TimeZone=UTC")
    single = create("agent-upgrade-single", "SINGLE_INSTANCE",
                    "DayOfWeek=THURSDAY,TimeOfDay=14:00,TimeZone=UTC")
    wait_running(aws, replicated, timeout=120)
    wait_running(aws, single, timeout=120)
    described = poll(lambda: (lambda d: d if leader_port(d) and len(d["brokerInstances"]) == 2 else None)(
        api(cp, "GET", f"/v1/brokers/{replicated}")), 60, "2 instances, one leader")
    first_leader_node = [i["nodeId"] for i in described["brokerInstances"] if i.get("role") == "LEADER"][0]
    ports = [int(i["endpoints"][0].rsplit(":", 1)[1]) for i in described["brokerInstances"]]
    before = {**agents_of(cp, replicated), **agents_of(cp, single)}
    assert len(before) == 3, before
    assert {reported_by_process(p[0]) for p in before.values()} == {OLD_AGENT}
    # Every node runs the binary installed: nothing pending (a pass or two to be sure).
    time.sleep(3)
    assert agent_actions(cp, replicated) == [] and agent_actions(cp, single) == []

    install(NEW_AGENT)
    monday = next_weekday_at(start, 0, 2)
    thursday = next_weekday_at(start, 3, 14)
    pending_r = poll(lambda: agent_actions(cp, replicated), 30, f"the agent upgrade pending\n{cp.log()}")
    pending_s = poll(lambda: agent_actions(cp, single), 30, "the agent upgrade pending (single)")
    iso = "%Y-%m-%dT%H:%M:%S.000Z"
    assert pending_r == [{"action": "AGENT_VERSION", "target": NEW_AGENT, "source": "AGENT",
                          "scheduledAt": monday.strftime(iso)}], pending_r
    assert pending_s == [{"action": "AGENT_VERSION", "target": NEW_AGENT, "source": "AGENT",
                          "scheduledAt": thursday.strftime(iso)}], pending_s
    # Installing the binary restarts nothing by itself.
    time.sleep(2)
    assert {**agents_of(cp, replicated), **agents_of(cp, single)} == before

    producer = Producer(ports)
    producer.start()
    try:
        poll(lambda: len(producer.confirmed) >= PUBLISHES_EACH_SIDE, 60, "confirmed publishes before the window")
        set_clock(clock, monday + dt.timedelta(minutes=5))

        def rolled_out():
            d = api(cp, "GET", f"/v1/brokers/{replicated}")
            now = agents_of(cp, replicated)
            restarted = len(now) == 2 and all(now.get(n) != before[n] for n in now)
            on_new = restarted and all(reported_by_process(p[0]) == NEW_AGENT for p in now.values())
            ok = (d["brokerState"] == "RUNNING" and on_new and leader_port(d)
                  and not [a for a in d["pendingActions"] if a["action"] == "AGENT_VERSION"]
                  and api(cp, "GET", "/v1/maintenance")["brokersInMaintenance"] == [])
            return d if ok else None

        final = poll(rolled_out, 150, f"the new agent rolled out node by node\n{cp.log()}", interval=0.5)
        after = len(producer.confirmed)
        poll(lambda: len(producer.confirmed) >= after + PUBLISHES_EACH_SIDE, 60, "confirmed publishes after")
    finally:
        producer.stop.set()
        producer.join(30)

    events = all_events(cp, replicated)
    rolling_restarts_in_order(events, first_leader_node, 2)
    steps = [e["reason"] for e in events if e["kind"] == "patch-step"]
    assert any(f"AGENT_VERSION -> {NEW_AGENT}" in r and "maintenance done" in r for r in steps), steps
    got = drain(leader_port(final))
    missing = set(producer.confirmed) - set(got)
    print(f"\nconfirmed {len(producer.confirmed)}, drained {len(got)}, "
          f"duplicates {len(got) - len(set(got))}, publish errors {producer.errors}")
    assert not missing, f"{len(missing)} confirmed messages lost, e.g. {sorted(missing)[:5]}"

    # The other broker's window is not open: untouched, still pending.
    assert agents_of(cp, single) == {n: p for n, p in before.items() if n.startswith(single)}
    assert agent_actions(cp, single) == pending_s
    # RebootBroker applies it at once.
    aws.ok("reboot-broker", "--broker-id", single)

    def single_on_new():
        d = api(cp, "GET", f"/v1/brokers/{single}")
        now = agents_of(cp, single)
        on_new = len(now) == 1 and all(reported_by_process(p[0]) == NEW_AGENT for p in now.values())
        return d["brokerState"] == "RUNNING" and on_new and not agent_actions(cp, single)

    poll(single_on_new, 60, f"the reboot to roll out the new agent\n{cp.log()}", interval=0.5)
