"""Per-principal rate limits against a real control plane: past the burst, requests
get HTTP 429 with x-amzn-ErrorType ThrottlingException, which botocore classifies as
throttling (so the AWS CLI backs off and retries); tokens come back at the configured
rate."""

import json
import time
import urllib.error
import urllib.request

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

BURST = 5
PER_SECOND = 2


@pytest.fixture
def limited_control_plane(tmp_path_factory, control_plane_kit):
    ControlPlane = control_plane_kit[1]
    data_dir = tmp_path_factory.mktemp("mooring-limited")
    cp = ControlPlane(
        data_dir,
        extra_args=(
            "--agent-binary", str(data_dir / "no-agent-here"),
            "--rate-limit-burst", str(BURST),
            "--rate-limit-per-second", str(PER_SECOND),
        ),
    )
    yield cp
    cp.stop()


def list_brokers(cp):
    """(status, headers, body) of one signed GET /v1/brokers as the admin."""
    key_id, secret = cp.admin_credentials()
    url = cp.endpoint + "/v1/brokers"
    signed = AWSRequest(method="GET", url=url, data=b"")
    SigV4Auth(Credentials(key_id, secret), "mq", "us-east-1").add_auth(signed)
    request = urllib.request.Request(url, method="GET")
    for name, value in signed.headers.items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read().decode()


def test_over_the_burst_is_throttled_then_recovers(limited_control_plane, tmp_path, control_plane_kit):
    Aws, _, poll = control_plane_kit
    cp = limited_control_plane
    statuses = [list_brokers(cp) for _ in range(BURST * 3)]
    codes = [s for s, _, _ in statuses]
    assert codes[:BURST] == [200] * BURST, codes
    throttled = [r for r in statuses if r[0] == 429]
    assert throttled, codes
    status, headers, body = throttled[0]
    assert headers["x-amzn-ErrorType"] == "ThrottlingException"
    assert json.loads(body)["message"] == "Rate exceeded"
    assert int(headers["Retry-After"]) >= 1

    # Tokens come back at PER_SECOND.
    started = time.monotonic()
    poll(lambda: list_brokers(cp)[0] == 200, 5.0, "a token to be refilled")
    assert time.monotonic() - started < 2.0

    # The CLI, whose retry logic knows ThrottlingException, gets through an empty
    # bucket by backing off.
    for _ in range(BURST * 3):
        if list_brokers(cp)[0] == 429:
            break
    aws = Aws(cp.endpoint, tmp_path, cp.credentials_file)
    assert "BrokerSummaries" in aws.ok("list-brokers")
