"""The IAM Query API subset with the real `aws iam` and `aws sts`, and issue 4's end to
end case: a user allowed Describe*/List*/DeleteBroker except on brokers tagged
env=prod is refused deleting a prod broker and deletes a dev one."""

import json
import uuid

import pytest


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


def unique(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def create_broker(aws, name, *extra):
    return aws.ok(
        "create-broker", "--broker-name", name, "--deployment-mode", "SINGLE_INSTANCE",
        "--engine-type", "RABBITMQ", "--host-instance-type", "mq.m5.large", "--no-publicly-accessible",
        "--users", "Username=admin,Password=correct-horse-1", *extra,
    )


@pytest.fixture
def as_user(control_plane, tmp_path, control_plane_kit):
    """Returns a function giving an `Aws` that signs with an issued access key."""
    return lambda key: _as_user(control_plane_kit[0], control_plane, tmp_path, key)


def _as_user(Aws, control_plane, tmp_path, key):
    path = tmp_path / "user-credentials"
    path.write_text(
        f"[default]\naws_access_key_id = {key['AccessKeyId']}\naws_secret_access_key = {key['SecretAccessKey']}\n"
    )
    return Aws(control_plane.endpoint, tmp_path, path)


def test_users_keys_and_inline_policies(aws, as_user):
    name = unique("ops")
    created = aws.ok("create-user", "--user-name", name, service="iam")["User"]
    assert created["UserName"] == name and created["Arn"].endswith(f":user/{name}")
    assert aws.ok("get-user", "--user-name", name, service="iam")["User"]["UserId"] == created["UserId"]
    assert name in [u["UserName"] for u in aws.ok("list-users", service="iam")["Users"]]
    aws.fails("EntityAlreadyExists", "create-user", "--user-name", name, service="iam")
    aws.fails("NoSuchEntity", "get-user", "--user-name", "nobody-here", service="iam")

    first = aws.ok("create-access-key", "--user-name", name, service="iam")["AccessKey"]
    second = aws.ok("create-access-key", "--user-name", name, service="iam")["AccessKey"]
    aws.fails("LimitExceeded", "create-access-key", "--user-name", name, service="iam")
    listed = aws.ok("list-access-keys", "--user-name", name, service="iam")["AccessKeyMetadata"]
    assert {k["AccessKeyId"] for k in listed} == {first["AccessKeyId"], second["AccessKeyId"]}
    assert all("SecretAccessKey" not in k for k in listed)

    message = aws.fails(
        "MalformedPolicyDocument",
        "put-user-policy", "--user-name", name, "--policy-name", "bad",
        "--policy-document", '{"Version": "2012-10-17", "Statement": [{"Effect": "Perhaps"}]}',
        service="iam",
    )
    assert "Perhaps" in message or "Effect" in message, message

    # A user without policies is authenticated but may do nothing.
    user = as_user(first)
    assert user.ok("get-caller-identity", service="sts")["Arn"] == created["Arn"]
    user.fails("ForbiddenException", "list-brokers")
    user.fails("AccessDenied", "create-user", "--user-name", unique("x"), service="iam")

    aws.ok("delete-access-key", "--user-name", name, "--access-key-id", first["AccessKeyId"], service="iam")
    user.fails("UnrecognizedClientException", "list-brokers")
    aws.fails(
        "NoSuchEntity", "delete-access-key", "--user-name", name, "--access-key-id", first["AccessKeyId"], service="iam"
    )


def test_delete_is_denied_on_prod_and_allowed_on_dev(aws, as_user):
    prod = create_broker(aws, unique("prod"), "--tags", "env=prod")["BrokerId"]
    dev = create_broker(aws, unique("dev"), "--tags", "env=dev")["BrokerId"]

    name = unique("operator")
    aws.ok("create-user", "--user-name", name, service="iam")
    aws.ok(
        "put-user-policy", "--user-name", name, "--policy-name", "operator",
        "--policy-document", json.dumps(OPERATOR_POLICY),
        service="iam",
    )
    key = aws.ok("create-access-key", "--user-name", name, service="iam")["AccessKey"]
    operator = as_user(key)

    assert prod in [b["BrokerId"] for b in operator.ok("list-brokers")["BrokerSummaries"]]
    message = operator.fails("ForbiddenException", "delete-broker", "--broker-id", prod)
    assert "mq:DeleteBroker" in message and "explicit deny" in message, message
    operator.ok("describe-broker", "--broker-id", prod)
    operator.ok("delete-broker", "--broker-id", dev)
    operator.fails("ForbiddenException", "reboot-broker", "--broker-id", dev)


def test_query_endpoint_errors_are_iam_xml(control_plane):
    form = {"content-type": "application/x-www-form-urlencoded"}
    body = "Action=ListUsers&Version=2010-05-08"
    status, _, text = control_plane.http("POST", "/", body, signed=False, headers=form)
    assert status == 403 and "<Code>MissingAuthenticationToken</Code>" in text, text
    # Signed for Amazon MQ (service `mq`), not for IAM.
    status, _, text = control_plane.http("POST", "/", body, headers=form)
    assert status == 403 and "<Code>SignatureDoesNotMatch</Code>" in text, text
    assert "Credential should be scoped to correct service: &apos;iam&apos;." in text, text


def test_groups_and_managed_policies_grant_to_members(aws, as_user):
    user, group, policy_name = unique("member"), unique("readers"), unique("list-brokers")
    aws.ok("create-user", "--user-name", user, service="iam")
    key = aws.ok("create-access-key", "--user-name", user, service="iam")["AccessKey"]
    member = as_user(key)
    member.fails("ForbiddenException", "list-brokers")

    assert aws.ok("create-group", "--group-name", group, service="iam")["Group"]["GroupName"] == group
    aws.fails("EntityAlreadyExists", "create-group", "--group-name", group, service="iam")
    document = json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "mq:ListBrokers", "Resource": "*"}]}
    )
    arn = aws.ok("create-policy", "--policy-name", policy_name, "--policy-document", document, service="iam")[
        "Policy"
    ]["Arn"]
    aws.ok("attach-group-policy", "--group-name", group, "--policy-arn", arn, service="iam")
    member.fails("ForbiddenException", "list-brokers")  # not a member yet
    aws.ok("add-user-to-group", "--group-name", group, "--user-name", user, service="iam")
    member.ok("list-brokers")
    member.fails("ForbiddenException", "list-configurations")

    # An inline group policy and a managed policy attached to the user add up.
    aws.ok(
        "put-group-policy", "--group-name", group, "--policy-name", "configs",
        "--policy-document", document.replace("mq:ListBrokers", "mq:ListConfigurations"),
        service="iam",
    )
    member.ok("list-configurations")
    aws.fails(
        "NoSuchEntity", "attach-user-policy", "--user-name", user,
        "--policy-arn", arn + "-missing", service="iam",
    )
    aws.ok("attach-user-policy", "--user-name", user, "--policy-arn", arn, service="iam")
