"""Issue 4, point 4 end to end with the real AWS CLI, then the audit trail: a user
allowed Describe*/List*/DeleteBroker except on brokers tagged env=prod is refused on a
prod broker and deletes a dev one, and `GET /v1/audit-events` (SigV4-signed) shows
both, denied and allowed, with the request ids the CLI saw. Unauthenticated and IAM
Query API calls are recorded too."""

import json
import re
import urllib.parse
import uuid

OPERATOR_POLICY = {
    "Version": "2012-10-17",
    "Statement": [
        {"Effect": "Allow", "Action": ["mq:Describe*", "mq:List*", "mq:DeleteBroker"], "Resource": "*"},
        {
            "Effect": "Deny",
            "Action": "mq:DeleteBroker",
            "Resource": "*",
            "Condition": {"StringEquals": {"aws:ResourceTag/env": "prod"}},
        },
    ],
}
# How long a read's record may take to appear (the writer flushes reads within ~100 ms).
READ_RECORD_TIMEOUT_S = 5.0


def unique(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def create_broker(aws, name, *extra):
    return aws.ok(
        "create-broker", "--broker-name", name, "--deployment-mode", "SINGLE_INSTANCE",
        "--engine-type", "RABBITMQ", "--host-instance-type", "mq.m5.large", "--no-publicly-accessible",
        "--users", "Username=admin,Password=correct-horse-1", *extra,
    )


def audit_events(control_plane, **filters):
    """GET /v1/audit-events signed as the admin; returns the parsed page."""
    query = urllib.parse.urlencode({k: v for k, v in filters.items() if v is not None})
    status, _, page = control_plane.http("GET", "/v1/audit-events" + (f"?{query}" if query else ""))
    assert status == 200, page
    return page


def request_id_of(cli_stderr):
    """The request id the CLI's --debug output shows for the last response."""
    ids = re.findall(r"'x-amzn-requestid': '([0-9a-f-]+)'", cli_stderr, re.IGNORECASE)
    assert ids, cli_stderr[-2000:]
    return ids[-1]


def test_denied_and_allowed_deletes_are_in_the_audit_trail(aws, control_plane, tmp_path, control_plane_kit):
    Aws, _, poll = control_plane_kit
    prod = create_broker(aws, unique("prod"), "--tags", "env=prod")
    dev = create_broker(aws, unique("dev"), "--tags", "env=dev")

    name = unique("operator")
    user = aws.ok("create-user", "--user-name", name, service="iam")["User"]
    aws.ok(
        "put-user-policy", "--user-name", name, "--policy-name", "operator",
        "--policy-document", json.dumps(OPERATOR_POLICY), service="iam",
    )
    key = aws.ok("create-access-key", "--user-name", name, service="iam")["AccessKey"]
    credentials = tmp_path / "operator-credentials"
    credentials.write_text(
        f"[default]\naws_access_key_id = {key['AccessKeyId']}\naws_secret_access_key = {key['SecretAccessKey']}\n"
    )
    operator = Aws(control_plane.endpoint, tmp_path, credentials)

    code, _, denied_err = operator.run("delete-broker", "--broker-id", prod["BrokerId"], "--debug")
    assert code != 0 and "An error occurred (ForbiddenException)" in denied_err, denied_err[-2000:]
    denied_id = request_id_of(denied_err)
    code, _, allowed_err = operator.run("delete-broker", "--broker-id", dev["BrokerId"], "--debug")
    assert code == 0, allowed_err[-2000:]
    allowed_id = request_id_of(allowed_err)

    # Both deletes changed or could have changed state: they were answered only once
    # recorded, so they are in the trail at once.
    page = audit_events(control_plane, principal=user["Arn"], action="mq:DeleteBroker")
    events = page["auditEvents"]
    assert [e["requestId"] for e in events] == [allowed_id, denied_id], events
    allowed, denied = events
    assert allowed["decision"] == "allowed" and allowed["httpStatus"] == 200
    assert allowed["resource"] == dev["BrokerArn"] and "errorCode" not in allowed
    assert denied["decision"] == "denied" and denied["httpStatus"] == 403
    assert denied["resource"] == prod["BrokerArn"] and denied["errorCode"] == "ForbiddenException"
    for event in events:
        assert event["principal"] == user["Arn"]
        assert event["sourceIp"] == "127.0.0.1"
        assert event["eventTime"].endswith("Z")

    # The resource filter finds who touched the prod broker.
    touched = audit_events(control_plane, resource=prod["BrokerArn"])["auditEvents"]
    assert denied_id in [e["requestId"] for e in touched]

    # An IAM Query call the operator may not make is recorded under its IAM name.
    operator.fails("AccessDenied", "create-user", "--user-name", unique("x"), service="iam")

    def refused_iam_call():
        found = audit_events(control_plane, principal=user["Arn"], action="iam:CreateUser")["auditEvents"]
        return found if found else None

    iam_event = poll(refused_iam_call, READ_RECORD_TIMEOUT_S, "the refused IAM call's record")[0]
    assert iam_event["decision"] == "denied" and iam_event["errorCode"] == "AccessDenied"


def test_unauthenticated_calls_are_recorded_by_the_key_they_claim(control_plane, tmp_path, control_plane_kit):
    Aws, _, poll = control_plane_kit
    bogus_key = "AKIA" + uuid.uuid4().hex[:16].upper()
    credentials = tmp_path / "bogus"
    credentials.write_text(f"[default]\naws_access_key_id = {bogus_key}\naws_secret_access_key = x\n")
    Aws(control_plane.endpoint, tmp_path, credentials).fails("UnrecognizedClientException", "list-brokers")

    def recorded():
        found = audit_events(control_plane, principal=bogus_key)["auditEvents"]
        return found if found else None

    event = poll(recorded, READ_RECORD_TIMEOUT_S, "the unauthenticated call's record")[0]
    assert event["decision"] == "unauthenticated"
    assert event["action"] == "mq:ListBrokers"
    assert event["errorCode"] == "UnrecognizedClientException"
    assert event["httpStatus"] == 403


def test_the_audit_route_pages_and_validates(control_plane):
    first = audit_events(control_plane, maxResults=2)
    assert len(first["auditEvents"]) == 2 and "nextToken" in first
    second = audit_events(control_plane, maxResults=2, nextToken=first["nextToken"])
    first_ids = {e["requestId"] for e in first["auditEvents"]}
    assert not first_ids & {e["requestId"] for e in second["auditEvents"]}
    status, headers, body = control_plane.http("GET", "/v1/audit-events?maxResults=1000")
    assert status == 400 and headers["x-amzn-ErrorType"] == "BadRequestException", body
    status, headers, body = control_plane.http("GET", "/v1/audit-events?startTime=not-a-time")
    assert status == 400 and body["errorAttribute"] == "startTime", body


def test_an_acknowledged_change_survives_kill_9_in_the_trail(tmp_path, control_plane_kit):
    Aws, ControlPlane, _ = control_plane_kit
    data_dir = tmp_path / "cp"
    args = ("--agent-binary", str(tmp_path / "no-agent-here"))
    cp = ControlPlane(data_dir, extra_args=args)
    try:
        aws = Aws(cp.endpoint, tmp_path, cp.credentials_file)
        broker = create_broker(aws, unique("doomed"))
        code, _, err = aws.run("delete-broker", "--broker-id", broker["BrokerId"], "--debug")
        assert code == 0, err[-2000:]
        delete_id = request_id_of(err)
    finally:
        # No graceful shutdown: nothing gets a chance to flush.
        cp.process.kill()
        cp.process.wait(10)
        cp.stop()
    (data_dir / "listen").unlink()
    restarted = ControlPlane(data_dir, extra_args=args)
    try:
        events = audit_events(restarted, action="mq:DeleteBroker")["auditEvents"]
        assert [e["requestId"] for e in events] == [delete_id], events
        assert events[0]["decision"] == "allowed" and events[0]["resource"] == broker["BrokerArn"]
        created = audit_events(restarted, action="mq:CreateBroker")["auditEvents"]
        assert len(created) == 1 and created[0]["httpStatus"] == 200, created
    finally:
        restarted.stop()
