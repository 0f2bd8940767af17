"""SigV4 on the public API, as the real AWS CLI and botocore see it: the bootstrapped
admin key works; a wrong secret, an unknown key, a stale date, an unsigned `x-amz-*`
header, `host` left out of the signed headers and an unsigned request each get the
error AWS answers with."""

import datetime
import json
import subprocess
import urllib.error
import urllib.request
from unittest import mock

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

SIGNATURE_MISMATCH = "The request signature we calculated does not match the signature you provided."


class _SigV4WithoutHost(SigV4Auth):
    """Signs every header but `host`."""

    def headers_to_sign(self, request):
        headers = super().headers_to_sign(request)
        del headers["host"]
        return headers


def send(control_plane, *, key=None, when=None, extra_headers=None, auth_class=SigV4Auth):
    """GET /v1/brokers signed with `key` (default: the admin's) at `when` (default: now);
    `extra_headers` are added after signing. Returns (status, headers, body text)."""
    key_id, secret = key or control_plane.admin_credentials()
    url = control_plane.endpoint + "/v1/brokers"
    aws_request = AWSRequest(method="GET", url=url, data=b"")
    signer = auth_class(Credentials(key_id, secret), "mq", "us-east-1")
    if when is None:
        signer.add_auth(aws_request)
    else:
        with mock.patch("botocore.auth.get_current_datetime", return_value=when):
            signer.add_auth(aws_request)
    request = urllib.request.Request(url, method="GET")
    for name, value in {**dict(aws_request.headers.items()), **(extra_headers or {})}.items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read().decode()


def assert_refused(reply, error_type, message_start):
    status, headers, body = reply
    assert status == 403, body
    assert headers["x-amzn-ErrorType"] == error_type, (headers, body)
    assert json.loads(body)["message"].startswith(message_start), body


def test_the_bootstrapped_credentials_work_with_the_cli(aws, control_plane):
    assert control_plane.credentials_file.stat().st_mode & 0o777 == 0o600
    assert "BrokerSummaries" in aws.ok("list-brokers")
    status, _, _ = send(control_plane)
    assert status == 200
    log = control_plane.log()
    assert "AWS_SHARED_CREDENTIALS_FILE" in log
    _, secret = control_plane.admin_credentials()
    assert secret not in log


def test_a_wrong_secret_is_an_invalid_signature(control_plane, tmp_path, control_plane_kit):
    Aws = control_plane_kit[0]
    key_id, _ = control_plane.admin_credentials()
    wrong = tmp_path / "credentials"
    wrong.write_text(f"[default]\naws_access_key_id = {key_id}\naws_secret_access_key = not-the-secret\n")
    aws = Aws(control_plane.endpoint, tmp_path, wrong)
    message = aws.fails("InvalidSignatureException", "list-brokers")
    assert SIGNATURE_MISMATCH in message


def test_an_unknown_key_is_an_unrecognized_client(control_plane, tmp_path, control_plane_kit):
    Aws = control_plane_kit[0]
    unknown = tmp_path / "credentials"
    unknown.write_text("[default]\naws_access_key_id = AKIAUNKNOWNUNKNOWN00\naws_secret_access_key = x\n")
    aws = Aws(control_plane.endpoint, tmp_path, unknown)
    message = aws.fails("UnrecognizedClientException", "list-brokers")
    assert "The security token included in the request is invalid." in message


def test_a_request_signed_twenty_minutes_ago_has_expired(control_plane):
    when = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None) - datetime.timedelta(minutes=20)
    assert_refused(send(control_plane, when=when), "InvalidSignatureException", "Signature expired: ")
    # Within the 15 minutes of allowed skew it is still accepted.
    when = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None) - datetime.timedelta(minutes=10)
    assert send(control_plane, when=when)[0] == 200


def test_an_unsigned_amz_header_is_refused(control_plane):
    reply = send(control_plane, extra_headers={"x-amz-meta-extra": "sneaked-in"})
    assert_refused(reply, "InvalidSignatureException", "There were headers present in the request which were not signed")


def test_host_must_be_signed(control_plane):
    reply = send(control_plane, auth_class=_SigV4WithoutHost)
    assert_refused(reply, "InvalidSignatureException", "'Host' or ':authority' must be a 'SignedHeader'")


def test_an_unsigned_curl_is_refused(control_plane):
    done = subprocess.run(
        ["curl", "-s", "-i", control_plane.endpoint + "/v1/brokers"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    head = done.stdout.lower()
    assert head.startswith("http/1.1 403"), done.stdout
    assert "x-amzn-errortype: missingauthenticationtokenexception" in head, done.stdout
    assert "Missing Authentication Token" in done.stdout
    # The unsigned raw request of the fixture is refused the same way.
    status, headers, _ = control_plane.http("GET", "/v1/brokers", signed=False)
    assert status == 403 and headers["x-amzn-ErrorType"] == "MissingAuthenticationTokenException"
