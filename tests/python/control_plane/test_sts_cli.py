"""Roles, STS AssumeRole and temporary credentials, principal tags, and the rest of
the IAM subset (paging, deletes, detach, access key status), with the real `aws iam`,
`aws sts` and `aws mq` against a real `mooring serve`.

Temporary credentials are handed to the CLI the way AWS users do: in
AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN."""

import json
import sqlite3
import urllib.parse
import uuid

import pytest


ACCOUNT = "000000000000"


def unique(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def doc(*statements):
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


def allow(action, resource="*", **extra):
    return {"Effect": "Allow", "Action": action, "Resource": resource, **extra}


def trust(*principals):
    return doc({"Effect": "Allow", "Principal": {"AWS": list(principals)}, "Action": "sts:AssumeRole"})


@pytest.fixture
def cli(control_plane, tmp_path, control_plane_kit):
    """Returns a function giving an `Aws` that signs with the given credentials
    (a dict with AccessKeyId, SecretAccessKey and optionally SessionToken)."""
    Aws = control_plane_kit[0]
    count = iter(range(1000))

    def make(creds):
        home = tmp_path / f"home-{next(count)}"
        home.mkdir()
        empty = home / "credentials"
        empty.write_text("")
        client = Aws(control_plane.endpoint, home, empty)
        client.env["AWS_ACCESS_KEY_ID"] = creds["AccessKeyId"]
        client.env["AWS_SECRET_ACCESS_KEY"] = creds["SecretAccessKey"]
        if creds.get("SessionToken"):
            client.env["AWS_SESSION_TOKEN"] = creds["SessionToken"]
        return client

    return make


def new_user(aws, cli, policy=None):
    """A user with one access key (and an inline policy when given): (name, arn, client)."""
    name = unique("u")
    arn = aws.ok("create-user", "--user-name", name, service="iam")["User"]["Arn"]
    key = aws.ok("create-access-key", "--user-name", name, service="iam")["AccessKey"]
    if policy:
        aws.ok("put-user-policy", "--user-name", name, "--policy-name", "p", "--policy-document", policy, service="iam")
    return name, arn, cli(key)


def new_role(aws, trust_doc, policy=None, *extra):
    name = unique("role")
    role = aws.ok("create-role", "--role-name", name, "--assume-role-policy-document", trust_doc, *extra, service="iam")["Role"]
    if policy:
        aws.ok("put-role-policy", "--role-name", name, "--policy-name", "p", "--policy-document", policy, service="iam")
    return name, role["Arn"]


def assume(client, role_arn, *extra):
    return client.ok("assume-role", "--role-arn", role_arn, "--role-session-name", "s1", *extra, service="sts")


def test_assume_role_then_use_temporary_credentials(aws, cli):
    _, user_arn, user = new_user(aws, cli, doc(allow("sts:AssumeRole")))
    role_name, role_arn = new_role(aws, trust(user_arn), doc(allow(["mq:List*", "mq:Describe*"])))
    assert role_arn == f"arn:aws:iam::{ACCOUNT}:role/{role_name}"

    # The user alone may do nothing in Amazon MQ.
    user.fails("ForbiddenException", "list-brokers")
    out = assume(user, role_arn, "--duration-seconds", "900")
    creds = out["Credentials"]
    assert creds["AccessKeyId"].startswith("ASIA") and len(creds["AccessKeyId"]) == 20
    assert len(creds["SessionToken"]) > 100
    assert out["AssumedRoleUser"]["Arn"] == f"arn:aws:sts::{ACCOUNT}:assumed-role/{role_name}/s1"
    assert out["AssumedRoleUser"]["AssumedRoleId"].startswith("AROA") and out["AssumedRoleUser"]["AssumedRoleId"].endswith(":s1")

    session = cli(creds)
    assert isinstance(session.ok("list-brokers")["BrokerSummaries"], list)
    identity = session.ok("get-caller-identity", service="sts")
    assert identity["Arn"] == out["AssumedRoleUser"]["Arn"]
    assert identity["UserId"] == out["AssumedRoleUser"]["AssumedRoleId"]
    assert identity["Account"] == ACCOUNT

    # The role's policy does not allow DeleteBroker: refused, and the broker stays.
    broker = aws.ok(
        "create-broker", "--broker-name", unique("b"), "--deployment-mode", "SINGLE_INSTANCE",
        "--engine-type", "RABBITMQ", "--host-instance-type", "mq.m5.large", "--no-publicly-accessible",
        "--users", "Username=admin,Password=correct-horse-1",
    )["BrokerId"]
    try:
        message = session.fails("ForbiddenException", "delete-broker", "--broker-id", broker)
        assert f"assumed-role/{role_name}/s1" in message
        assert session.ok("describe-broker", "--broker-id", broker)["BrokerId"] == broker
        # Nor any IAM action.
        session.fails("AccessDenied", "create-user", "--user-name", unique("x"), service="iam")
    finally:
        aws.ok("delete-broker", "--broker-id", broker)


def test_session_policy_narrows_the_role(aws, cli):
    _, user_arn, user = new_user(aws, cli, doc(allow("sts:AssumeRole")))
    _, role_arn = new_role(aws, trust(user_arn), doc(allow("mq:*")))
    creds = assume(user, role_arn, "--policy", doc(allow("mq:DescribeBrokerEngineTypes")))["Credentials"]
    session = cli(creds)
    session.ok("describe-broker-engine-types")
    session.fails("ForbiddenException", "list-brokers")


def test_who_may_assume_a_role(aws, cli, control_plane, control_plane_kit):
    poll = control_plane_kit[2]
    trusted_name, trusted_arn, trusted = new_user(aws, cli)  # trusted, but no identity policy yet
    _, stranger_arn, stranger = new_user(aws, cli, doc(allow("sts:AssumeRole")))  # may call it, not trusted
    _, role_arn = new_role(aws, trust(trusted_arn), doc(allow("mq:List*")))

    message = stranger.fails("AccessDenied", "assume-role", "--role-arn", role_arn, "--role-session-name", "xy", service="sts")
    assert "sts:AssumeRole" in message and role_arn in message
    # The audit trail records the refusal by the trust policy as denied.
    def refusal_recorded():
        status, _, page = control_plane.http(
            "GET", "/v1/audit-events?" + urllib.parse.urlencode({"principal": stranger_arn, "action": "sts:AssumeRole"})
        )
        assert status == 200, page
        return [e for e in page["auditEvents"] if e["decision"] == "denied" and e.get("errorCode") == "AccessDenied"]
    events = poll(refusal_recorded, 10, "the refused AssumeRole in the audit trail")
    assert events[0]["resource"] == role_arn
    # Trusted by the role, but its own policies do not allow sts:AssumeRole.
    trusted.fails("AccessDenied", "assume-role", "--role-arn", role_arn, "--role-session-name", "xy", service="sts")
    aws.ok(
        "put-user-policy", "--user-name", trusted_name, "--policy-name", "assume",
        "--policy-document", doc(allow("sts:AssumeRole", role_arn)), service="iam",
    )
    assume(trusted, role_arn)
    # A role that does not exist answers like one that does not trust the caller.
    trusted.fails("AccessDenied", "assume-role", "--role-arn", f"arn:aws:iam::{ACCOUNT}:role/none-such", "--role-session-name", "xy", service="sts")

    # Trusting the account's root lets any of its principals whose policies allow it.
    _, root_role = new_role(aws, trust(f"arn:aws:iam::{ACCOUNT}:root"))
    assume(stranger, root_role)


def test_role_chaining(aws, cli):
    _, user_arn, user = new_user(aws, cli, doc(allow("sts:AssumeRole")))
    _, first_arn = new_role(aws, trust(user_arn), doc(allow("sts:AssumeRole")))
    second, second_arn = new_role(aws, trust(first_arn), doc(allow("mq:List*")), "--max-session-duration", "7200")
    first = cli(assume(user, first_arn)["Credentials"])
    first.fails("ForbiddenException", "list-brokers")
    # The user itself is not trusted by the second role.
    user.fails("AccessDenied", "assume-role", "--role-arn", second_arn, "--role-session-name", "xy", service="sts")
    # A role session may chain for at most an hour, whatever the role allows.
    first.fails("ValidationError", "assume-role", "--role-arn", second_arn, "--role-session-name", "xy", "--duration-seconds", "7200", service="sts")
    out = assume(first, second_arn)
    assert out["AssumedRoleUser"]["Arn"].endswith(f":assumed-role/{second}/s1")
    cli(out["Credentials"]).ok("list-brokers")


def test_bad_requests_are_refused_as_aws_does(aws, cli):
    _, user_arn, user = new_user(aws, cli, doc(allow("sts:AssumeRole")))
    message = aws.fails(
        "MalformedPolicyDocument", "create-role", "--role-name", unique("r"),
        "--assume-role-policy-document", doc({"Effect": "Allow", "Action": "sts:AssumeRole"}), service="iam",
    )
    assert "Principal" in message
    aws.fails(
        "MalformedPolicyDocument", "create-role", "--role-name", unique("r"),
        "--assume-role-policy-document", doc({"Effect": "Allow", "Principal": "*", "Action": "sts:AssumeRole", "Resource": "*"}),
        service="iam",
    )
    _, role_arn = new_role(aws, trust(user_arn))
    # Longer than the role's MaxSessionDuration (3600 by default).
    user.fails("ValidationError", "assume-role", "--role-arn", role_arn, "--role-session-name", "s2", "--duration-seconds", "7200", service="sts")
    user.fails("MalformedPolicyDocument", "assume-role", "--role-arn", role_arn, "--role-session-name", "ok", "--policy", '{"Statement": 1}', service="sts")
    _, long_role = new_role(aws, trust(user_arn), None, "--max-session-duration", "7200")
    creds = assume(user, long_role, "--duration-seconds", "7200")["Credentials"]
    assert creds["Expiration"]


def test_tampered_missing_and_expired_tokens(aws, cli, control_plane):
    _, user_arn, user = new_user(aws, cli, doc(allow("sts:AssumeRole")))
    _, role_arn = new_role(aws, trust(user_arn), doc(allow("mq:List*")))
    creds = assume(user, role_arn, "--duration-seconds", "900")["Credentials"]
    cli(creds).ok("list-brokers")

    token = creds["SessionToken"]
    flipped = token[:40] + ("A" if token[40] != "A" else "B") + token[41:]
    cli({**creds, "SessionToken": flipped}).fails("UnrecognizedClientException", "list-brokers")
    cli({**creds, "SessionToken": flipped}).fails("InvalidClientTokenId", "get-caller-identity", service="sts")
    cli({**creds, "SessionToken": None}).fails("UnrecognizedClientException", "list-brokers")
    # Long-term keys with a token that belongs to nothing.
    _, _, plain = new_user(aws, cli)
    plain.env["AWS_SESSION_TOKEN"] = token
    plain.fails("UnrecognizedClientException", "list-brokers")

    # Expired: a fresh session whose expiry is moved into the past in the store
    # before it is first used (so no cache holds it).
    fresh = assume(user, role_arn, "--duration-seconds", "900")["Credentials"]
    with sqlite3.connect(control_plane.data_dir / "mooring.db", timeout=10) as db:
        changed = db.execute(
            "UPDATE iam_sessions SET expires_at = '2020-01-01T00:00:00+00:00' WHERE access_key_id = ?",
            (fresh["AccessKeyId"],),
        ).rowcount
    assert changed == 1
    message = cli(fresh).fails("ExpiredTokenException", "list-brokers")
    assert "expired" in message
    cli(fresh).fails("ExpiredToken", "get-caller-identity", service="sts")


def test_role_policies_and_delete(aws, cli):
    _, user_arn, user = new_user(aws, cli, doc(allow("sts:AssumeRole")))
    name, role_arn = new_role(aws, trust(user_arn), None, "--description", "ops on call")
    role = aws.ok("get-role", "--role-name", name, service="iam")["Role"]
    assert role["Arn"] == role_arn and role["MaxSessionDuration"] == 3600
    assert role["AssumeRolePolicyDocument"]["Statement"][0]["Principal"]["AWS"] == [user_arn]
    assert role["Description"] == "ops on call"
    assert name in [r["RoleName"] for r in aws.ok("list-roles", service="iam")["Roles"]]
    aws.fails("EntityAlreadyExists", "create-role", "--role-name", name, "--assume-role-policy-document", trust(user_arn), service="iam")
    aws.fails("NoSuchEntity", "get-role", "--role-name", "none-such", service="iam")

    session = cli(assume(user, role_arn)["Credentials"])
    session.fails("ForbiddenException", "list-brokers")  # no policy yet

    aws.ok("put-role-policy", "--role-name", name, "--policy-name", "inline", "--policy-document", doc(allow("mq:ListBrokers")), service="iam")
    got = aws.ok("get-role-policy", "--role-name", name, "--policy-name", "inline", service="iam")
    assert got["PolicyDocument"]["Statement"][0]["Action"] == "mq:ListBrokers"
    assert aws.ok("list-role-policies", "--role-name", name, service="iam")["PolicyNames"] == ["inline"]
    session.ok("list-brokers")  # a policy change applies to live sessions

    managed = aws.ok("create-policy", "--policy-name", unique("engines"), "--policy-document", doc(allow("mq:DescribeBrokerEngineTypes")), service="iam")["Policy"]["Arn"]
    aws.ok("attach-role-policy", "--role-name", name, "--policy-arn", managed, service="iam")
    attached = aws.ok("list-attached-role-policies", "--role-name", name, service="iam")["AttachedPolicies"]
    assert [p["PolicyArn"] for p in attached] == [managed]
    session.ok("describe-broker-engine-types")

    aws.fails("DeleteConflict", "delete-role", "--role-name", name, service="iam")
    aws.fails("DeleteConflict", "delete-policy", "--policy-arn", managed, service="iam")
    aws.ok("detach-role-policy", "--role-name", name, "--policy-arn", managed, service="iam")
    aws.fails("NoSuchEntity", "detach-role-policy", "--role-name", name, "--policy-arn", managed, service="iam")
    session.fails("ForbiddenException", "describe-broker-engine-types")
    aws.ok("delete-policy", "--policy-arn", managed, service="iam")
    aws.fails("DeleteConflict", "delete-role", "--role-name", name, service="iam")
    aws.ok("delete-role-policy", "--role-name", name, "--policy-name", "inline", service="iam")
    aws.fails("NoSuchEntity", "get-role-policy", "--role-name", name, "--policy-name", "inline", service="iam")
    aws.ok("delete-role", "--role-name", name, service="iam")
    aws.fails("NoSuchEntity", "get-role", "--role-name", name, service="iam")
    # The role's sessions ended with it.
    session.fails("UnrecognizedClientException", "list-brokers")


def test_principal_tags_in_conditions(aws, cli):
    tagged_only = doc(allow("mq:ListBrokers", Condition={"StringEquals": {"aws:PrincipalTag/team": "mq"}}))
    name, user_arn, user = new_user(aws, cli, tagged_only)
    user.fails("ForbiddenException", "list-brokers")
    aws.ok("tag-user", "--user-name", name, "--tags", "Key=team,Value=mq", "Key=env,Value=dev", service="iam")
    tags = aws.ok("list-user-tags", "--user-name", name, service="iam")["Tags"]
    assert sorted((t["Key"], t["Value"]) for t in tags) == [("env", "dev"), ("team", "mq")]
    user.ok("list-brokers")
    aws.ok("untag-user", "--user-name", name, "--tag-keys", "team", service="iam")
    assert [t["Key"] for t in aws.ok("list-user-tags", "--user-name", name, service="iam")["Tags"]] == ["env"]
    user.fails("ForbiddenException", "list-brokers")
    aws.fails("InvalidInput", "tag-user", "--user-name", name, "--tags", "Key=aws:x,Value=y", service="iam")

    # A role's tags are the session's principal tags.
    aws.ok("put-user-policy", "--user-name", name, "--policy-name", "assume", "--policy-document", doc(allow("sts:AssumeRole")), service="iam")
    role, role_arn = new_role(aws, trust(user_arn), tagged_only)
    aws.ok("tag-role", "--role-name", role, "--tags", "Key=team,Value=mq", service="iam")
    assert aws.ok("list-role-tags", "--role-name", role, service="iam")["Tags"] == [{"Key": "team", "Value": "mq"}]
    session = cli(assume(user, role_arn)["Credentials"])
    session.ok("list-brokers")
    aws.ok("untag-role", "--role-name", role, "--tag-keys", "team", service="iam")
    session.fails("ForbiddenException", "list-brokers")


def test_paging_deletes_and_key_status(aws, cli):
    prefix = unique("page")
    names = [f"{prefix}-{i}" for i in range(3)]
    for n in names:
        aws.ok("create-user", "--user-name", n, service="iam")
    # One user per request: the CLI follows Marker until IsTruncated is false.
    listed = [u["UserName"] for u in aws.ok("list-users", "--page-size", "1", service="iam")["Users"]]
    assert [n for n in listed if n.startswith(prefix)] == names
    assert listed == sorted(listed)
    first = aws.ok("list-users", "--max-items", "1", service="iam")
    assert len(first["Users"]) == 1 and first["NextToken"]
    rest = aws.ok("list-users", "--starting-token", first["NextToken"], service="iam")["Users"]
    assert first["Users"][0]["UserName"] not in [u["UserName"] for u in rest]
    assert len(rest) == len(listed) - 1

    name = names[0]
    group = unique("g")
    aws.ok("create-group", "--group-name", group, service="iam")
    aws.ok("add-user-to-group", "--group-name", group, "--user-name", name, service="iam")
    assert group in [g["GroupName"] for g in aws.ok("list-groups", "--page-size", "1", service="iam")["Groups"]]
    assert [u["UserName"] for u in aws.ok("get-group", "--group-name", group, service="iam")["Users"]] == [name]
    aws.ok("put-user-policy", "--user-name", name, "--policy-name", "list", "--policy-document", doc(allow("mq:ListBrokers")), service="iam")
    assert aws.ok("get-user-policy", "--user-name", name, "--policy-name", "list", service="iam")["PolicyDocument"]["Statement"][0]["Action"] == "mq:ListBrokers"
    policy = aws.ok("create-policy", "--policy-name", unique("p"), "--policy-document", doc(allow("mq:Describe*")), service="iam")["Policy"]["Arn"]
    aws.ok("attach-user-policy", "--user-name", name, "--policy-arn", policy, service="iam")
    aws.ok("attach-group-policy", "--group-name", group, "--policy-arn", policy, service="iam")
    assert [p["PolicyArn"] for p in aws.ok("list-attached-user-policies", "--user-name", name, service="iam")["AttachedPolicies"]] == [policy]
    assert policy in [p["Arn"] for p in aws.ok("list-policies", "--scope", "Local", "--page-size", "1", service="iam")["Policies"]]
    key = aws.ok("create-access-key", "--user-name", name, service="iam")["AccessKey"]
    user = cli(key)
    user.ok("list-brokers")

    # Inactive keys are refused; active again, they work.
    aws.ok("update-access-key", "--user-name", name, "--access-key-id", key["AccessKeyId"], "--status", "Inactive", service="iam")
    assert aws.ok("list-access-keys", "--user-name", name, service="iam")["AccessKeyMetadata"][0]["Status"] == "Inactive"
    user.fails("UnrecognizedClientException", "list-brokers")
    aws.ok("update-access-key", "--user-name", name, "--access-key-id", key["AccessKeyId"], "--status", "Active", service="iam")
    user.ok("list-brokers")

    # Deletes refuse while something hangs on the entity, in IAM's order.
    for blocker, undo in [
        ("access keys", ("delete-access-key", "--user-name", name, "--access-key-id", key["AccessKeyId"])),
        ("delete policies", ("delete-user-policy", "--user-name", name, "--policy-name", "list")),
        ("detach all policies", ("detach-user-policy", "--user-name", name, "--policy-arn", policy)),
        ("groups", ("remove-user-from-group", "--group-name", group, "--user-name", name)),
    ]:
        message = aws.fails("DeleteConflict", "delete-user", "--user-name", name, service="iam")
        assert blocker in message, message
        aws.ok(*undo, service="iam")
    aws.fails("NoSuchEntity", "delete-user-policy", "--user-name", name, "--policy-name", "list", service="iam")
    aws.ok("delete-user", "--user-name", name, service="iam")
    aws.fails("NoSuchEntity", "get-user", "--user-name", name, service="iam")

    aws.fails("DeleteConflict", "delete-group", "--group-name", group, service="iam")
    aws.ok("detach-group-policy", "--group-name", group, "--policy-arn", policy, service="iam")
    aws.ok("delete-group", "--group-name", group, service="iam")
    aws.ok("delete-policy", "--policy-arn", policy, service="iam")
    aws.fails("NoSuchEntity", "get-policy", "--policy-arn", policy, service="iam")
