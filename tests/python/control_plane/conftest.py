"""Fixtures for the control plane's API tests: a real `mooring serve` on a loopback
port of its choosing, and the real AWS CLI pointed at it, signing with the admin
credentials `mooring serve` writes to `<data-dir>/credentials` on first start."""

import configparser
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
# How long a freshly started control plane may take to publish its address.
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0


def _in_ci():
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _bin_dir():
    explicit = os.environ.get("MOORING_BIN_DIR")
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("CARGO_TARGET_DIR", str(REPO_ROOT / "target"))) / "debug"


def _aws_cli():
    venv = REPO_ROOT / ".venv" / "bin" / "aws"
    return str(venv) if venv.exists() else "aws"


def poll(condition, timeout, what, interval=0.05):
    """Returns condition()'s first truthy value; fails naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class ControlPlane:
    """A `mooring serve` process; `endpoint` is its base URL."""

    def __init__(self, data_dir, extra_args=()):
        binary = _bin_dir() / "mooring"
        if not os.access(binary, os.X_OK):
            message = f"{binary} not found: run make build or set MOORING_BIN_DIR"
            if _in_ci():
                pytest.fail(message)
            pytest.skip(message)
        self.data_dir = Path(data_dir)
        self.log_path = self.data_dir / "mooring.log"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "wb")
        env = dict(os.environ)
        env.pop("DATABASE_URL", None)
        self.process = subprocess.Popen(
            [str(binary), "serve", "--listen", "127.0.0.1:0", "--data-dir", str(self.data_dir), *extra_args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        listen_file = self.data_dir / "listen"

        def published():
            if self.process.poll() is not None:
                pytest.fail(f"mooring exited with {self.process.returncode}: {self.log()}")
            return listen_file.exists() and listen_file.read_text().strip()

        self.address = poll(published, START_TIMEOUT_S, "mooring to write its listen file")
        self.endpoint = f"http://{self.address}"
        # Written before the listen file, on first start only.
        self.credentials_file = self.data_dir / "credentials"

    def admin_credentials(self):
        """(access key id, secret) from the bootstrapped `[default]` profile."""
        parser = configparser.ConfigParser()
        assert parser.read(self.credentials_file), f"{self.credentials_file} missing: {self.log()}"
        profile = parser["default"]
        return profile["aws_access_key_id"], profile["aws_secret_access_key"]

    def kill_agents(self):
        """Kills broker agents this control plane started and left running (a test that
        failed before deleting its brokers). Each pid is checked against its node
        directory first, so a recycled pid is never signalled."""
        for pid_file in (self.data_dir / "nodes").glob("*/agent.pid"):
            try:
                pid = int(pid_file.read_text().split()[0])
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            except (OSError, ValueError, IndexError):
                continue
            if str(pid_file.parent) in cmdline:
                os.kill(pid, signal.SIGKILL)

    def log(self):
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STOP_TIMEOUT_S)
        self._log.close()

    def http(self, method, path, body=None, signed=True, headers=None):
        """A raw request, SigV4-signed as the admin unless `signed` is false:
        (status, headers, parsed JSON or text)."""
        data = body.encode() if isinstance(body, str) else body
        all_headers = {"content-type": "application/json", **(headers or {})}
        if signed:
            key_id, secret = self.admin_credentials()
            aws_request = AWSRequest(method=method, url=self.endpoint + path, data=data or b"", headers=all_headers)
            SigV4Auth(Credentials(key_id, secret), "mq", "us-east-1").add_auth(aws_request)
            all_headers = dict(aws_request.headers.items())
        request = urllib.request.Request(self.endpoint + path, data=data, method=method)
        for name, value in all_headers.items():
            request.add_header(name, value)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                status, headers, raw = response.status, response.headers, response.read()
        except urllib.error.HTTPError as e:
            status, headers, raw = e.code, e.headers, e.read()
        try:
            payload = json.loads(raw) if raw else None
        except ValueError:
            payload = raw.decode(errors="replace")
        return status, headers, payload


class Aws:
    """Runs `aws mq ...` against a control plane, with the credentials in
    `credentials_file` (an AWS shared-credentials file; its `[default]` profile)."""

    def __init__(self, endpoint, home, credentials_file):
        self.endpoint = endpoint
        self.env = dict(os.environ)
        # Credentials in the environment would win over the file.
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
            self.env.pop(name, None)
        self.env.update(
            {
                "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_CONFIG_FILE": str(Path(home) / "config"),
                "AWS_SHARED_CREDENTIALS_FILE": str(credentials_file),
                "AWS_EC2_METADATA_DISABLED": "true",
                "AWS_PAGER": "",
                "HOME": str(home),
            }
        )

    def run(self, *args, service="mq"):
        """(exit code, parsed stdout or None, stderr)."""
        cmd = [_aws_cli(), service, *args, "--endpoint-url", self.endpoint, "--region", "us-east-1", "--output", "json"]
        done = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=60)
        out = json.loads(done.stdout) if done.stdout.strip() else None
        return done.returncode, out, done.stderr

    def ok(self, *args, service="mq"):
        code, out, err = self.run(*args, service=service)
        assert code == 0, f"aws {service} {' '.join(args)} failed ({code}): {err}"
        return out

    def fails(self, error_name, *args, service="mq"):
        """Asserts the CLI reports `error_name` as it does for AWS; returns its message."""
        code, out, err = self.run(*args, service=service)
        assert code != 0, f"aws {service} {' '.join(args)} unexpectedly succeeded: {out}"
        assert f"An error occurred ({error_name})" in err, err
        return err


@pytest.fixture(scope="module")
def control_plane(tmp_path_factory):
    # A missing agent binary keeps these API tests free of broker processes: brokers stay
    # in their early states, which is all these tests look at. The end-to-end suite runs
    # real agents.
    data_dir = tmp_path_factory.mktemp("mooring")
    cp = ControlPlane(data_dir, extra_args=("--agent-binary", str(data_dir / "no-agent-here")))
    yield cp
    cp.stop()


@pytest.fixture(scope="module")
def aws(control_plane, tmp_path_factory):
    return Aws(control_plane.endpoint, tmp_path_factory.mktemp("aws-home"), control_plane.credentials_file)


@pytest.fixture
def control_plane_kit():
    """The helper classes, for tests that start their own control plane. A fixture rather
    than an import: pytest loads every conftest.py under the one module name `conftest`,
    so `from conftest import ...` finds whichever suite's conftest was loaded first."""
    return Aws, ControlPlane, poll
