"""Login with a real AWS identity (issue 4, must-show 5), against moto's server as
AWS IAM and STS: a client signs sts:GetCallerIdentity with its AWS credentials and a
signed X-Mooring-Server-ID header; Mooring forwards it to STS, maps the AWS ARN to a
Mooring role, imports that AWS role's policies, and hands out temporary Mooring
credentials that the real AWS CLI then uses.

moto verifies SigV4 signatures only once its INITIAL_NO_AUTH_ACTION_COUNT requests
have been served: the fixture makes exactly that many set-up calls, then checks that
a wrong secret is refused, so every later STS answer is a real signature check."""

import base64
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import boto3
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

REPO_ROOT = Path(__file__).resolve().parents[3]
MOTO_ACCOUNT = "123456789012"  # moto's default account
GET_CALLER_IDENTITY = b"Action=GetCallerIdentity&Version=2011-06-15"
FORM = "application/x-www-form-urlencoded; charset=utf-8"
MOTO_START_TIMEOUT_S = 20.0

MQ_LIST = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "mq:List*", "Resource": "*"}]}
MQ_ENGINE_TYPES = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "mq:DescribeBrokerEngineTypes", "Resource": "*"}],
}
ALLOW_ALL = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}


def _in_ci():
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _b64(data):
    if isinstance(data, str):
        data = data.encode()
    return base64.b64encode(data).decode()


class Moto:
    """moto_server on a loopback port of its own; stopped by its pid."""

    def __init__(self, log_path, no_auth_actions):
        binary = REPO_ROOT / ".venv" / "bin" / "moto_server"
        if not binary.exists():
            message = f"{binary} not found: run make venv"
            if _in_ci():
                pytest.fail(message)
            pytest.skip(message)
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        env = dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT=str(no_auth_actions))
        self._log = open(log_path, "wb")
        self.process = subprocess.Popen(
            [str(binary), "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        deadline = time.monotonic() + MOTO_START_TIMEOUT_S
        while True:
            if self.process.poll() is not None:
                pytest.fail(f"moto_server exited with {self.process.returncode}")
            try:
                urllib.request.urlopen(self.url + "moto-api/", timeout=1).read()
                break
            except (urllib.error.URLError, OSError):
                if time.monotonic() >= deadline:
                    pytest.fail(f"moto_server did not answer within {MOTO_START_TIMEOUT_S}s")
                time.sleep(0.1)

    def client(self, service, key_id="testing", secret="testing", token=None):
        return boto3.client(
            service,
            endpoint_url=self.url,
            region_name="us-east-1",
            aws_access_key_id=key_id,
            aws_secret_access_key=secret,
            aws_session_token=token,
        )

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._log.close()


class AwsWorld:
    """What the fixture created in moto."""

    def __init__(self, moto):
        iam = moto.client("iam")
        # Every call below counts towards INITIAL_NO_AUTH_ACTION_COUNT: keep
        # SETUP_CALLS in step with them.
        iam.create_user(UserName="alice")  # 1
        key = iam.create_access_key(UserName="alice")["AccessKey"]  # 2
        self.alice = Credentials(key["AccessKeyId"], key["SecretAccessKey"])
        iam.put_user_policy(  # 3
            UserName="alice", PolicyName="assume", PolicyDocument=json.dumps(ALLOW_ALL)
        )
        iam.create_user(UserName="mallory")  # 4
        key = iam.create_access_key(UserName="mallory")["AccessKey"]  # 5
        self.mallory = Credentials(key["AccessKeyId"], key["SecretAccessKey"])
        # The identity Mooring reads IAM policies with.
        iam.create_user(UserName="mooring-importer")  # 6
        iam.put_user_policy(  # 7
            UserName="mooring-importer", PolicyName="read", PolicyDocument=json.dumps(ALLOW_ALL)
        )
        key = iam.create_access_key(UserName="mooring-importer")["AccessKey"]  # 8
        self.importer = Credentials(key["AccessKeyId"], key["SecretAccessKey"])
        trust = {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"AWS": f"arn:aws:iam::{MOTO_ACCOUNT}:user/alice"},
                    "Action": "sts:AssumeRole",
                }
            ],
        }
        iam.create_role(RoleName="MqReaders", AssumeRolePolicyDocument=json.dumps(trust))  # 9
        policy = iam.create_policy(PolicyName="MqList", PolicyDocument=json.dumps(MQ_LIST))  # 10
        iam.attach_role_policy(RoleName="MqReaders", PolicyArn=policy["Policy"]["Arn"])  # 11
        iam.put_role_policy(  # 12
            RoleName="MqReaders", PolicyName="EngineTypes", PolicyDocument=json.dumps(MQ_ENGINE_TYPES)
        )
        self.role_arn = f"arn:aws:iam::{MOTO_ACCOUNT}:role/MqReaders"
        # From here on moto checks signatures.
        wrong = moto.client("sts", self.alice.access_key, "not-the-secret")
        with pytest.raises(Exception) as refused:
            wrong.get_caller_identity()
        assert "SignatureDoesNotMatch" in str(refused.value), (
            "moto is not verifying signatures: SETUP_CALLS is out of step with AwsWorld"
        )
        assumed = moto.client("sts", self.alice.access_key, self.alice.secret_key).assume_role(
            RoleArn=self.role_arn, RoleSessionName="alice-session"
        )["Credentials"]
        self.reader_session = Credentials(
            assumed["AccessKeyId"], assumed["SecretAccessKey"], assumed["SessionToken"]
        )


SETUP_CALLS = 12


def signed_login(creds, sts_url, server_id, *, header="signed", body=GET_CALLER_IDENTITY, signing_url=None):
    """A login body: a GetCallerIdentity signed with `creds`. `header`: "signed" (the
    server id among the signed headers), "unsigned" (added after signing), "absent"."""
    headers = {"Content-Type": FORM}
    if header == "signed":
        headers["X-Mooring-Server-ID"] = server_id
    request = AWSRequest(method="POST", url=signing_url or sts_url, data=body, headers=headers)
    SigV4Auth(creds, "sts", "us-east-1").add_auth(request)
    sent = dict(request.headers.items())
    if header == "unsigned":
        sent["X-Mooring-Server-ID"] = server_id
    return {
        "iamHttpRequestMethod": "POST",
        "iamRequestUrl": _b64(sts_url),
        "iamRequestHeaders": _b64(json.dumps(sent)),
        "iamRequestBody": _b64(body),
    }


def without_header(login, name):
    """The same captured login with one header removed (a replay)."""
    headers = json.loads(base64.b64decode(login["iamRequestHeaders"]))
    headers = {k: v for k, v in headers.items() if k.lower() != name.lower()}
    return {**login, "iamRequestHeaders": _b64(json.dumps(headers))}


def with_header(login, name, value):
    headers = json.loads(base64.b64decode(login["iamRequestHeaders"]))
    headers = {k: v for k, v in headers.items() if k.lower() != name.lower()}
    headers[name] = value
    return {**login, "iamRequestHeaders": _b64(json.dumps(headers))}


class Mooring:
    """Query API calls to Mooring (IAM/STS shapes), signed as its admin."""

    def __init__(self, cp):
        self.cp = cp

    def query(self, params):
        key_id, secret = self.cp.admin_credentials()
        body = urllib.parse.urlencode({**params, "Version": "2010-05-08"})
        request = AWSRequest(
            method="POST", url=self.cp.endpoint + "/", data=body.encode(), headers={"Content-Type": FORM}
        )
        SigV4Auth(Credentials(key_id, secret), "iam", "us-east-1").add_auth(request)
        raw = urllib.request.Request(
            self.cp.endpoint + "/", data=body.encode(), method="POST", headers=dict(request.headers.items())
        )
        try:
            with urllib.request.urlopen(raw, timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def login(self, login_body):
        return self.cp.http("POST", "/v1/login/aws", body=json.dumps(login_body), signed=False)


@pytest.fixture(scope="module")
def moto(tmp_path_factory):
    server = Moto(tmp_path_factory.mktemp("moto") / "moto.log", SETUP_CALLS)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def world(moto):
    return AwsWorld(moto)


@pytest.fixture(scope="module")
def server_id():
    return f"mooring-test-{uuid.uuid4()}"


@pytest.fixture(scope="module")
def control_plane_class(control_plane):
    """conftest.py's ControlPlane class, reached through its module-scoped fixture
    (never `from conftest import`: see control_plane_kit)."""
    return type(control_plane)


@pytest.fixture(scope="module")
def mooring(moto, world, server_id, tmp_path_factory, control_plane_class):
    ControlPlane = control_plane_class
    data_dir = tmp_path_factory.mktemp("mooring-aws-login")
    cp = ControlPlane(
        data_dir,
        extra_args=(
            "--agent-binary", str(data_dir / "no-agent-here"),
            "--aws-login-sts-endpoint", moto.url,
            "--aws-login-server-id", server_id,
            "--aws-login-iam-endpoint", moto.url,
            "--aws-login-iam-access-key-id", world.importer.access_key,
            "--aws-login-iam-secret-access-key", world.importer.secret_key,
        ),
    )
    m = Mooring(cp)
    trust = json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Deny", "Principal": {"AWS": "*"}, "Action": "sts:AssumeRole"}]}
    )
    for role in ("aws-readers", "aws-alice"):
        status, text = m.query({"Action": "CreateRole", "RoleName": role, "AssumeRolePolicyDocument": trust})
        assert status == 200, text
    # alice herself gets a policy written in Mooring; the AWS role's policies are imported.
    status, text = m.query(
        {"Action": "PutRolePolicy", "RoleName": "aws-alice", "PolicyName": "list", "PolicyDocument": json.dumps(MQ_LIST)}
    )
    assert status == 200, text
    status, text = m.query(
        {"Action": "CreateAwsLoginMapping", "AwsArnPattern": world.role_arn, "RoleName": "aws-readers", "ImportPolicies": "true"}
    )
    assert status == 200, text
    status, text = m.query(
        {"Action": "CreateAwsLoginMapping", "AwsArnPattern": f"arn:aws:iam::{MOTO_ACCOUNT}:user/alice", "RoleName": "aws-alice"}
    )
    assert status == 200, text
    yield m
    cp.stop()


@pytest.fixture
def aws_as(tmp_path, control_plane_kit):
    """Runs the AWS CLI with the given temporary credentials."""
    Aws, _, _ = control_plane_kit

    def make(endpoint, credentials):
        creds_file = tmp_path / f"credentials-{uuid.uuid4().hex}"
        creds_file.write_text(
            "[default]\n"
            f"aws_access_key_id = {credentials['accessKeyId']}\n"
            f"aws_secret_access_key = {credentials['secretAccessKey']}\n"
            f"aws_session_token = {credentials['sessionToken']}\n"
        )
        return Aws(endpoint, tmp_path, creds_file)

    return make


def test_assumed_role_logs_in_with_its_imported_policies(moto, world, mooring, server_id, aws_as):
    status, headers, out = mooring.login(signed_login(world.reader_session, moto.url, server_id))
    assert status == 200, out
    assert out["awsIdentity"]["arn"] == f"arn:aws:sts::{MOTO_ACCOUNT}:assumed-role/MqReaders/alice-session"
    assert out["roleArn"] == "arn:aws:iam::000000000000:role/aws-readers"
    assert out["assumedRoleArn"].startswith("arn:aws:sts::000000000000:assumed-role/aws-readers/aws-alice-session")
    assert sorted(out["importedPolicies"]) == [
        f"aws-import.{MOTO_ACCOUNT}.MqList",
        "aws-import.inline.EngineTypes",
    ]
    creds = out["credentials"]
    assert creds["accessKeyId"].startswith("ASIA") and creds["sessionToken"] and creds["expiration"]

    aws = aws_as(mooring.cp.endpoint, creds)
    # Allowed by the imported managed policy (mq:List*) and inline policy.
    listed = aws.ok("list-brokers")
    assert "BrokerSummaries" in listed
    engines = aws.ok("describe-broker-engine-types")
    assert engines["BrokerEngineTypes"]
    # Outside both imported policies.
    message = aws.fails(
        "ForbiddenException",
        "create-configuration", "--name", "c1", "--engine-type", "RABBITMQ", "--engine-version", "3.13",
    )
    assert "mq:CreateConfiguration" in message
    # Mooring's IAM reports who the session is.
    who = aws.ok("get-caller-identity", service="sts")
    assert who["Arn"] == out["assumedRoleArn"]


def test_policy_import_follows_aws_changes(moto, world, mooring, server_id, aws_as):
    """Each login re-imports: a policy detached in AWS is gone from the Mooring role."""
    iam = moto.client("iam", world.importer.access_key, world.importer.secret_key)
    iam.delete_role_policy(RoleName="MqReaders", PolicyName="EngineTypes")
    try:
        status, _, out = mooring.login(signed_login(world.reader_session, moto.url, server_id))
        assert status == 200, out
        assert out["importedPolicies"] == [f"aws-import.{MOTO_ACCOUNT}.MqList"]
        aws = aws_as(mooring.cp.endpoint, out["credentials"])
        aws.ok("list-brokers")
        aws.fails("ForbiddenException", "describe-broker-engine-types")
    finally:
        iam.put_role_policy(
            RoleName="MqReaders", PolicyName="EngineTypes", PolicyDocument=json.dumps(MQ_ENGINE_TYPES)
        )


def test_user_logs_in_with_the_mooring_role_policies(moto, world, mooring, server_id, aws_as):
    status, _, out = mooring.login(signed_login(world.alice, moto.url, server_id))
    assert status == 200, out
    assert out["awsIdentity"]["arn"] == f"arn:aws:iam::{MOTO_ACCOUNT}:user/alice"
    assert out["roleArn"].endswith(":role/aws-alice")
    assert out["importedPolicies"] == []
    aws = aws_as(mooring.cp.endpoint, out["credentials"])
    aws.ok("list-brokers")
    aws.fails("ForbiddenException", "describe-broker-engine-types")


def test_replay_without_the_server_id_header_is_rejected(moto, world, mooring, server_id):
    captured = signed_login(world.alice, moto.url, server_id)

    # The captured request with X-Mooring-Server-ID removed (it is in SignedHeaders,
    # but not sent): refused before anything is forwarded.
    status, headers, out = mooring.login(without_header(captured, "X-Mooring-Server-ID"))
    assert status == 401, out
    assert headers["x-amzn-ErrorType"] == "UnauthorizedException"
    assert "X-Mooring-Server-ID" in out["message"]

    # Signed without the header, then the header added: present but not signed.
    status, headers, out = mooring.login(signed_login(world.alice, moto.url, server_id, header="unsigned"))
    assert status == 401, out
    assert "not among its SignedHeaders" in out["message"]

    # Signed for another server's id.
    status, _, out = mooring.login(signed_login(world.alice, moto.url, "some-other-server"))
    assert status == 401, out
    assert "does not name this server" in out["message"]

    # Signed for another id, then the header rewritten to ours: Mooring's checks pass,
    # and STS (moto) refuses the signature.
    forged = with_header(signed_login(world.alice, moto.url, "some-other-server"), "X-Mooring-Server-ID", server_id)
    status, _, out = mooring.login(forged)
    assert status == 401, out
    assert "SignatureDoesNotMatch" in out["message"]

    # The untouched captured request still works: the refusals above were the header's.
    status, _, out = mooring.login(captured)
    assert status == 200, out


def test_an_unmapped_identity_is_refused(moto, world, mooring, server_id):
    status, headers, out = mooring.login(signed_login(world.mallory, moto.url, server_id))
    assert status == 403, out
    assert headers["x-amzn-ErrorType"] == "ForbiddenException"
    assert f"arn:aws:iam::{MOTO_ACCOUNT}:user/mallory is not mapped" in out["message"]


def test_only_get_caller_identity_to_the_configured_endpoint(moto, world, mooring, server_id):
    # Another action, properly signed.
    body = b"Action=GetSessionToken&Version=2011-06-15"
    status, headers, out = mooring.login(signed_login(world.alice, moto.url, server_id, body=body))
    assert status == 400, out
    assert headers["x-amzn-ErrorType"] == "BadRequestException"
    # Another URL (SSRF): never forwarded.
    elsewhere = f"http://127.0.0.1:{_free_port()}/"
    login = signed_login(world.alice, elsewhere, server_id)
    status, _, out = mooring.login(login)
    assert status == 400, out
    assert "STS endpoint" in out["message"]
    # A body that is not a login at all.
    status, _, out = mooring.cp.http("POST", "/v1/login/aws", body="{}", signed=False)
    assert status == 400, out


def test_mapping_management(world, mooring):
    status, text = mooring.query({"Action": "ListAwsLoginMappings"})
    assert status == 200, text
    assert f"<AwsArnPattern>{world.role_arn}</AwsArnPattern>" in text
    assert "<ImportPolicies>true</ImportPolicies>" in text
    # An importing mapping must name one principal exactly.
    status, text = mooring.query(
        {"Action": "CreateAwsLoginMapping", "AwsArnPattern": f"arn:aws:iam::{MOTO_ACCOUNT}:role/*", "RoleName": "aws-alice", "ImportPolicies": "true"}
    )
    assert status == 400 and "ValidationError" in text, text
    # A wildcard account would trust every AWS account.
    status, text = mooring.query(
        {"Action": "CreateAwsLoginMapping", "AwsArnPattern": "arn:aws:iam::*:role/MqReaders", "RoleName": "aws-alice"}
    )
    assert status == 400 and "12 digits" in text, text
    status, text = mooring.query(
        {"Action": "CreateAwsLoginMapping", "AwsArnPattern": f"arn:aws:iam::{MOTO_ACCOUNT}:user/bob", "RoleName": "no-such-role"}
    )
    assert status == 404 and "NoSuchEntity" in text, text
    # Two importing mappings into one role would overwrite each other.
    status, text = mooring.query(
        {"Action": "CreateAwsLoginMapping", "AwsArnPattern": f"arn:aws:iam::{MOTO_ACCOUNT}:role/Other", "RoleName": "aws-readers", "ImportPolicies": "true"}
    )
    assert status == 409 and "EntityAlreadyExists" in text, text
    # Create, see, delete, gone.
    pattern = f"arn:aws:iam::{MOTO_ACCOUNT}:user/team-*"
    status, text = mooring.query({"Action": "CreateAwsLoginMapping", "AwsArnPattern": pattern, "RoleName": "aws-alice"})
    assert status == 200, text
    status, text = mooring.query({"Action": "DeleteAwsLoginMapping", "AwsArnPattern": pattern})
    assert status == 200, text
    status, text = mooring.query({"Action": "DeleteAwsLoginMapping", "AwsArnPattern": pattern})
    assert status == 404 and "NoSuchEntity" in text, text


def test_sts_down_is_a_clear_error(world, tmp_path, control_plane_kit):
    _, ControlPlane, _ = control_plane_kit
    dead = f"http://127.0.0.1:{_free_port()}/"
    cp = ControlPlane(
        tmp_path / "mooring",
        extra_args=(
            "--agent-binary", str(tmp_path / "no-agent-here"),
            "--aws-login-sts-endpoint", dead,
            "--aws-login-server-id", "sid",
            "--aws-login-timeout-secs", "3",
        ),
    )
    try:
        status, headers, out = cp.http("POST", "/v1/login/aws", body=json.dumps(signed_login(world.alice, dead, "sid")), signed=False)
        assert status == 503, out
        assert headers["x-amzn-ErrorType"] == "ServiceUnavailableException"
        assert f"could not reach STS at {dead}" in out["message"]
    finally:
        cp.stop()


def test_login_is_off_by_default(control_plane, world):
    status, headers, out = control_plane.http(
        "POST", "/v1/login/aws", body=json.dumps(signed_login(world.alice, "http://127.0.0.1:1/", "x")), signed=False
    )
    assert status == 404, out
    assert headers["x-amzn-ErrorType"] == "NotFoundException"
    assert "not enabled" in out["message"]


def test_logins_are_rate_limited_per_source_address(world, tmp_path, control_plane_kit):
    _, ControlPlane, _ = control_plane_kit
    dead = f"http://127.0.0.1:{_free_port()}/"
    cp = ControlPlane(
        tmp_path / "mooring",
        extra_args=(
            "--agent-binary", str(tmp_path / "no-agent-here"),
            "--aws-login-sts-endpoint", dead,
            "--aws-login-server-id", "sid",
            "--rate-limit-burst", "2",
            "--rate-limit-per-second", "0.01",
        ),
    )
    try:
        body = json.dumps(signed_login(world.alice, dead, "sid"))
        statuses = [cp.http("POST", "/v1/login/aws", body=body, signed=False)[0] for _ in range(2)]
        assert statuses == [503, 503]
        status, headers, out = cp.http("POST", "/v1/login/aws", body=body, signed=False)
        assert status == 429, out
        assert headers["x-amzn-ErrorType"] == "ThrottlingException"
        assert int(headers["Retry-After"]) >= 1
    finally:
        cp.stop()
