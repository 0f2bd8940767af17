"""Helpers for full end-to-end tests: a real `mooring serve` that starts real
`mooring-agent` processes, the real AWS CLI (and boto3) against its API, pika against the
brokers it creates.

Every process a test starts is killed when the test ends, pass or fail: the control plane
by its pid, agents by scanning /proc for command lines that name the test's data
directory (agents run in their own process group, so nothing else reaches them).
"""

import configparser
import datetime as dt
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

REPO_ROOT = Path(__file__).resolve().parents[3]
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
PG_ADMIN = {"host": "127.0.0.1", "port": "5432", "user": "postgres", "db": "test"}


def in_ci():
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def skip_or_fail(message):
    """Under CI nothing may silently skip."""
    if in_ci():
        pytest.fail(message)
    pytest.skip(message)


def bin_dir():
    explicit = os.environ.get("MOORING_BIN_DIR")
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("CARGO_TARGET_DIR", str(REPO_ROOT / "target"))) / "debug"


def binary(name):
    path = bin_dir() / name
    if not os.access(path, os.X_OK):
        skip_or_fail(f"{path} not found: run make build or set MOORING_BIN_DIR")
    return path


def poll(condition, timeout, what, interval=0.1):
    """Returns condition()'s first truthy value; fails naming `what` (and the last error)
    after `timeout` seconds. Exceptions count as "not yet"."""
    deadline = time.monotonic() + timeout
    last_error = None
    while True:
        try:
            value = condition()
            if value:
                return value
        except Exception as e:  # noqa: BLE001 - any failure means "not yet"
            last_error = e
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error!r})" if last_error else ""
            pytest.fail(f"timed out after {timeout}s waiting for {what}{detail}")
        time.sleep(interval)


def processes_naming(needle):
    """{pid: argv} of live, non-zombie processes whose command line contains `needle`."""
    found = {}
    needle = needle.encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "cmdline").read_bytes()
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if needle in raw and stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X"):
            found[int(entry.name)] = [a.decode(errors="replace") for a in raw.split(b"\0") if a]
    return found


def agents_by_node(data_dir):
    """{node id: [pids]} of `mooring-agent run` processes under `data_dir`. A child an agent
    has forked but not yet exec'd (the engine runs `df`) shows the agent's command line for a
    moment; a match whose parent is also a match is such a child and is left out."""
    found = {pid: argv for pid, argv in processes_naming(str(data_dir)).items()
             if "run" in argv and "--node-id" in argv}
    by_node = {}
    for pid, argv in found.items():
        if parent_pid(pid) in found:
            continue
        node = argv[argv.index("--node-id") + 1]
        by_node.setdefault(node, []).append(pid)
    return by_node


def parent_pid(pid):
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def kill_everything_under(data_dir):
    for pid in processes_naming(str(data_dir)):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class ControlPlane:
    """`mooring serve` on a data directory that outlives restarts and kills."""

    def __init__(self, data_dir, database_url=None):
        self.exe = binary("mooring")
        self.agent = binary("mooring-agent")
        self.data_dir = Path(data_dir)
        self.database_url = database_url
        self.process = None
        self.address = None
        self.log_path = self.data_dir / "mooring.log"

    def start(self):
        assert self.process is None or self.process.poll() is not None, "already running"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        listen_file = self.data_dir / "listen"
        listen_file.unlink(missing_ok=True)
        # After a restart, listen where agents already look for us.
        listen = self.address or "127.0.0.1:0"
        env = dict(os.environ)
        env.pop("DATABASE_URL", None)
        args = [str(self.exe), "serve", "--listen", listen, "--data-dir", str(self.data_dir),
                "--agent-binary", str(self.agent)]
        if self.database_url:
            args += ["--database-url", self.database_url]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, env=env)

        def published():
            if self.process.poll() is not None:
                pytest.fail(f"mooring exited with {self.process.returncode}:\n{self.log()}")
            return listen_file.exists() and listen_file.read_text().strip()

        self.address = poll(published, START_TIMEOUT_S, "mooring to write its listen file")
        return self

    @property
    def endpoint(self):
        return f"http://{self.address}"

    def kill9(self):
        self.process.kill()
        self.process.wait(STOP_TIMEOUT_S)

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.kill9()

    def log(self, limit=6000):
        try:
            return self.log_path.read_text(errors="replace")[-limit:]
        except OSError:
            return "(no log)"

    def node_dirs(self):
        nodes = self.data_dir / "nodes"
        return sorted(p.name for p in nodes.iterdir() if p.is_dir()) if nodes.exists() else []


def admin_credentials(cp):
    """(access key id, secret) of the admin key `mooring serve` writes on first start to
    `<data-dir>/credentials` (an AWS shared-credentials file)."""
    parser = configparser.ConfigParser()
    path = cp.data_dir / "credentials"
    assert parser.read(path), f"{path} missing: mooring serve did not bootstrap its admin key"
    return parser["default"]["aws_access_key_id"], parser["default"]["aws_secret_access_key"]


def _signed(cp, method, path, body):
    key, secret = admin_credentials(cp)
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"} if data is not None else {}
    req = AWSRequest(method=method, url=cp.endpoint + path, data=data, headers=headers)
    SigV4Auth(Credentials(key, secret), "mq", "us-east-1").add_auth(req)
    prepared = req.prepare()
    return urllib.request.Request(prepared.url, data=data, method=method,
                                  headers=dict(prepared.headers.items()))


def _json(raw):
    return json.loads(raw) if raw.strip() else None


def api(cp, method, path, body=None):
    """A SigV4-signed request to the public API with the admin key; its JSON answer. Unlike
    the AWS CLI it shows Mooring's extension members (role, nodeId, pendingActions...). A
    refusal raises urllib.error.HTTPError."""
    with urllib.request.urlopen(_signed(cp, method, path, body), timeout=30) as answer:
        return _json(answer.read())


def api_status(cp, method, path, body=None):
    """Like `api`, for refusals too: (HTTP status, JSON answer)."""
    try:
        with urllib.request.urlopen(_signed(cp, method, path, body), timeout=30) as answer:
            return answer.status, _json(answer.read())
    except urllib.error.HTTPError as e:
        return e.code, _json(e.read())


def describe(cp, broker_id):
    """DescribeBroker with the extension members."""
    return api(cp, "GET", f"/v1/brokers/{broker_id}")


def next_weekday_at(after, weekday, hour, minute=0):
    """The first `weekday` (Monday=0) at hour:minute UTC strictly after `after`."""
    day = after.replace(hour=hour, minute=minute, second=0, microsecond=0)
    day += dt.timedelta(days=(weekday - day.weekday()) % 7)
    if day <= after:
        day += dt.timedelta(days=7)
    return day


class Aws:
    """`aws mq ...` against one control plane, signed with its admin key."""

    def __init__(self, cp, home):
        self.cp = cp
        self.env = dict(os.environ)
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
            self.env.pop(name, None)
        self.env.update({
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_CONFIG_FILE": str(Path(home) / "config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(cp.data_dir / "credentials"),
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_PAGER": "",
        })
        venv_aws = REPO_ROOT / ".venv" / "bin" / "aws"
        self.exe = str(venv_aws) if venv_aws.exists() else "aws"

    def run(self, *args):
        cmd = [self.exe, "mq", *args, "--endpoint-url", self.cp.endpoint, "--output", "json"]
        done = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=60)
        out = json.loads(done.stdout) if done.stdout.strip() else None
        return done.returncode, out, done.stderr

    def ok(self, *args):
        code, out, err = self.run(*args)
        assert code == 0, f"aws mq {' '.join(args)} failed ({code}): {err}\ncontrol plane log:\n{self.cp.log()}"
        return out

    def error(self, *args):
        code, _, err = self.run(*args)
        assert code != 0, f"aws mq {' '.join(args)} unexpectedly succeeded"
        return err


def psql(sql, db=PG_ADMIN["db"]):
    return subprocess.run(
        ["psql", "-h", PG_ADMIN["host"], "-p", PG_ADMIN["port"], "-U", PG_ADMIN["user"], "-d", db,
         "-v", "ON_ERROR_STOP=1", "-Atc", sql],
        capture_output=True, text=True, timeout=30,
    )


def wait_running(aws, broker_id, timeout=60):
    def running():
        d = aws.ok("describe-broker", "--broker-id", broker_id)
        return d if d["BrokerState"] == "RUNNING" else None

    return poll(running, timeout, f"broker {broker_id} to be RUNNING")


def amqp_port(described):
    endpoint = described["BrokerInstances"][0]["Endpoints"][0]
    assert endpoint.startswith("amqp://127.0.0.1:"), endpoint
    return int(endpoint.rsplit(":", 1)[1])
