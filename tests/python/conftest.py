"""Helpers shared by every Python test suite (engine, control plane, end to end).

Kept generic on purpose: finding Mooring's binaries, free loopback ports, waiting for a
condition with a deadline, and running a standalone `mooring-agent`. Suite-specific fixtures
live in the conftest.py of each sub-directory.
"""

import datetime as dt
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

# How long a freshly started agent may take to write ports.json (debug builds, busy CI box).
AGENT_START_TIMEOUT_S = 20.0
# How long a stopped agent may take to exit after SIGTERM before it is killed.
AGENT_STOP_TIMEOUT_S = 10.0


def in_ci():
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def wait_for(condition, timeout, what, interval=0.02):
    """Polls `condition()` until it returns a truthy value, which is returned.

    Fails the test with `what` in the message when `timeout` seconds pass first. Exceptions
    raised by `condition` count as "not yet" and the last one is reported on timeout.
    """
    deadline = time.monotonic() + timeout
    last_error = None
    while True:
        try:
            value = condition()
            if value:
                return value
        except Exception as e:  # noqa: BLE001 - any failure means "not ready yet"
            last_error = e
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error!r})" if last_error else ""
            pytest.fail(f"timed out after {timeout}s waiting for {what}{detail}")
        time.sleep(interval)


def free_port():
    """A loopback TCP port that was free a moment ago (for binaries that cannot take port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bin_dir():
    """Where the Mooring binaries are: $MOORING_BIN_DIR, else $CARGO_TARGET_DIR/debug."""
    explicit = os.environ.get("MOORING_BIN_DIR")
    if explicit:
        return Path(explicit)
    target = os.environ.get("CARGO_TARGET_DIR", str(REPO_ROOT / "target"))
    return Path(target) / "debug"


def binary(name):
    """Path of a Mooring binary. Missing: skip locally, but fail under CI=true, where a
    missing binary means the build is broken and skipping would hide it."""
    path = bin_dir() / name
    if not (path.is_file() and os.access(path, os.X_OK)):
        message = f"{path} not found: build it first (make build) or set MOORING_BIN_DIR"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    return path


def split_host_port(addr):
    host, _, port = addr.rpartition(":")
    return host, int(port)


class Agent:
    """A `mooring-agent standalone` process on a data directory that outlives restarts.

    `ports` holds the parsed ports.json once started: {"amqp": (host, port), "admin": ...}.
    """

    def __init__(self, data_dir, extra_args=(), amqp_listen="127.0.0.1:0", admin_listen="127.0.0.1:0"):
        self.exe = binary("mooring-agent")
        self.data_dir = Path(data_dir)
        self.extra_args = list(extra_args)
        self.amqp_listen = amqp_listen
        self.admin_listen = admin_listen
        self.proc = None
        self.ports = {}
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}.log"

    def start(self, timeout=AGENT_START_TIMEOUT_S):
        assert self.proc is None or self.proc.poll() is not None, "agent already running"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        ports_file = self.data_dir / "ports.json"
        # A stale file from the previous run would name ports the new process does not hold.
        ports_file.unlink(missing_ok=True)
        args = [
            str(self.exe),
            "standalone",
            "--data-dir",
            str(self.data_dir),
            "--amqp-listen",
            self.amqp_listen,
            "--admin-listen",
            self.admin_listen,
            *self.extra_args,
        ]
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        finally:
            log.close()

        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"mooring-agent exited with {self.proc.returncode}; log:\n{self.log_tail()}")
            if not ports_file.exists():
                return None
            try:
                raw = json.loads(ports_file.read_text())
            except ValueError:
                return None  # being written
            return raw

        deadline = time.monotonic() + timeout
        while True:
            raw = ready()
            if raw:
                break
            if time.monotonic() >= deadline:
                self.kill()
                pytest.fail(f"mooring-agent did not write {ports_file} within {timeout}s; log:\n{self.log_tail()}")
            time.sleep(0.02)
        self.ports = {name: split_host_port(addr) for name, addr in raw.items()}
        return self

    @property
    def amqp(self):
        return self.ports["amqp"]

    @property
    def admin_url(self):
        host, port = self.ports["admin"]
        return f"http://{host}:{port}"

    def stop(self):
        """Graceful stop (SIGTERM), escalating to SIGKILL after AGENT_STOP_TIMEOUT_S."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=AGENT_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self):
        """SIGKILL: the crash the durability tests simulate."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.kill()
        self.proc.wait(timeout=AGENT_STOP_TIMEOUT_S)

    def restart(self):
        self.stop()
        return self.start()

    def log_tail(self, limit=4000):
        try:
            return self.log_path.read_text(errors="replace")[-limit:]
        except OSError:
            return "(no log)"


class AgentPool:
    """Agents started for one scope; every one is killed when the scope ends."""

    def __init__(self, tmp_path_factory):
        self.tmp_path_factory = tmp_path_factory
        self.agents = []

    def __call__(self, extra_args=(), start=True, **kwargs):
        base = self.tmp_path_factory.mktemp("agent")
        agent = Agent(base / "data", extra_args=extra_args, **kwargs)
        self.agents.append(agent)
        if start:
            agent.start()
        return agent

    def close(self):
        """Kills every agent, then fails if one of them panicked: a panic in a connection task
        only shows to clients as a closed socket."""
        for agent in self.agents:
            agent.kill()
        panicked = [a for a in self.agents if "panicked" in a.log_tail(limit=10**9)]
        if panicked:
            pytest.fail(f"mooring-agent panicked; log:\n{panicked[0].log_tail()}")


# Fixtures, so that every suite shares these helpers without importing this module
# (pytest loads each conftest.py under the same module name, so importing them is unreliable).


@pytest.fixture(scope="session")
def closed_window():
    """A `--maintenance-window-start-time` value three days from now (UTC).

    A broker's default window is Sunday 00:00 UTC, and in its window a RUNNING broker's
    pending changes are applied on their own. A test that wants a change to stay pending
    until it reboots gives its broker this window, so that it passes at any hour."""
    day = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=3)).strftime("%A").upper()
    return f"DayOfWeek={day},TimeOfDay=12:00,TimeZone=UTC"


@pytest.fixture(scope="session")
def wait_until():
    """`wait_until(condition, timeout, what)`: see `wait_for`."""
    return wait_for


@pytest.fixture(scope="session")
def mooring_binary():
    """`mooring_binary("mooring-agent")` -> Path, failing under CI when it is missing."""
    return binary


@pytest.fixture(scope="session")
def unused_port():
    """`unused_port()` -> a loopback port that was free a moment ago."""
    return free_port


@pytest.fixture
def agent_factory(tmp_path_factory):
    """Starts standalone agents for one test: `agent_factory(extra_args=[...])` -> Agent."""
    pool = AgentPool(tmp_path_factory)
    yield pool
    pool.close()


@pytest.fixture(scope="session")
def session_agent_factory(tmp_path_factory):
    """Like `agent_factory`, for agents shared by a whole session or module."""
    pool = AgentPool(tmp_path_factory)
    yield pool
    pool.close()
