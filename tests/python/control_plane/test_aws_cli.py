"""The real AWS CLI against a real `mooring serve`: every public operation, and the
error paths as the CLI prints them."""

import base64
import json
import uuid

PASSWORD = "correct-horse-battery"


def unique(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def create_broker(aws, name, *extra):
    return aws.ok(
        "create-broker",
        "--broker-name", name,
        "--deployment-mode", "SINGLE_INSTANCE",
        "--engine-type", "RABBITMQ",
        "--host-instance-type", "mq.m5.large",
        "--no-publicly-accessible",
        "--users", f"Username=admin,Password={PASSWORD}",
        *extra,
    )


def test_broker_create_describe_update_reboot_delete(aws):
    name = unique("orders")
    created = create_broker(aws, name, "--tags", "team=payments")
    broker_id = created["BrokerId"]
    assert broker_id.startswith("b-")
    assert created["BrokerArn"] == f"arn:aws:mq:us-east-1:000000000000:broker:{name}:{broker_id}"

    d = aws.ok("describe-broker", "--broker-id", broker_id)
    assert d["BrokerName"] == name
    assert d["BrokerState"] in ("CREATION_IN_PROGRESS", "CREATION_FAILED")
    assert d["EngineType"] == "RABBITMQ" and d["EngineVersion"] == "3.13"
    assert d["DeploymentMode"] == "SINGLE_INSTANCE"
    assert d["Users"] == [{"PendingChange": "CREATE", "Username": "admin"}]
    assert d["Tags"] == {"team": "payments"}

    updated = aws.ok("update-broker", "--broker-id", broker_id, "--host-instance-type", "mq.m5.xlarge",
                     "--no-auto-minor-version-upgrade")
    assert updated["HostInstanceType"] == "mq.m5.xlarge"
    d = aws.ok("describe-broker", "--broker-id", broker_id)
    assert d["HostInstanceType"] == "mq.m5.large"
    assert d["PendingHostInstanceType"] == "mq.m5.xlarge"
    assert d["AutoMinorVersionUpgrade"] is False

    # Only a RUNNING broker reboots; this one never gets an agent.
    message = aws.fails("BadRequestException", "reboot-broker", "--broker-id", broker_id)
    assert "RUNNING" in message

    assert aws.ok("delete-broker", "--broker-id", broker_id)["BrokerId"] == broker_id
    code, d, err = aws.run("describe-broker", "--broker-id", broker_id)
    # The row stays, DELETION_IN_PROGRESS, until a reconciler has removed the nodes.
    assert (code == 0 and d["BrokerState"] == "DELETION_IN_PROGRESS") or "NotFoundException" in err


def test_list_brokers_pages_through_more_than_25(aws, control_plane, control_plane_kit):
    prefix = unique("page")
    ids = set()
    # Created over plain HTTP to keep the test quick (each CLI run costs about a second);
    # the paging below is the CLI's own.
    for i in range(26):
        body = json.dumps({
            "brokerName": f"{prefix}-{i:02d}", "deploymentMode": "SINGLE_INSTANCE", "engineType": "RABBITMQ",
            "hostInstanceType": "mq.t3.micro", "publiclyAccessible": False,
            "users": [{"username": "admin", "password": PASSWORD}],
        })
        status, _, created = control_plane.http("POST", "/v1/brokers", body)
        assert status == 200, created
        ids.add(created["brokerId"])

    # The CLI follows nextToken on its own; 10 per request means at least three pages.
    everything = aws.ok("list-brokers", "--page-size", "10")["BrokerSummaries"]
    listed = [b["BrokerId"] for b in everything]
    assert len(listed) == len(set(listed)), "no broker twice"
    assert ids <= set(listed)

    # --max-items resumes by skipping what it already returned of a page: a broker of an
    # earlier test that finishes deleting in between would shift the page. Wait for them.
    poll = control_plane_kit[2]
    poll(
        lambda: all(
            b["BrokerState"] != "DELETION_IN_PROGRESS" for b in aws.ok("list-brokers")["BrokerSummaries"]
        ),
        60,
        "earlier deletions to finish",
        interval=0.5,
    )
    first = aws.ok("list-brokers", "--max-items", "10")
    assert len(first["BrokerSummaries"]) == 10
    seen = [b["BrokerId"] for b in first["BrokerSummaries"]]
    token = first["NextToken"]
    for _ in range(20):
        page = aws.ok("list-brokers", "--max-items", "10", "--starting-token", token)
        seen += [b["BrokerId"] for b in page["BrokerSummaries"]]
        token = page.get("NextToken")
        if not token:
            break
    assert len(seen) == len(set(seen)), "no broker twice"
    assert ids <= set(seen)

    one_page = aws.ok("list-brokers", "--no-paginate", "--max-results", "5")
    assert len(one_page["BrokerSummaries"]) == 5 and one_page["NextToken"]


def test_users(aws):
    broker_id = create_broker(aws, unique("users"))["BrokerId"]
    aws.ok("create-user", "--broker-id", broker_id, "--username", "app-1", "--password", PASSWORD)
    users = aws.ok("list-users", "--broker-id", broker_id)["Users"]
    assert {u["Username"] for u in users} == {"admin", "app-1"}

    u = aws.ok("describe-user", "--broker-id", broker_id, "--username", "app-1")
    assert u["Username"] == "app-1" and u["Pending"]["PendingChange"] == "CREATE"

    aws.ok("update-user", "--broker-id", broker_id, "--username", "app-1", "--password", "another-password-2",
           "--console-access")
    u = aws.ok("describe-user", "--broker-id", broker_id, "--username", "app-1")
    assert u["ConsoleAccess"] is True

    aws.ok("delete-user", "--broker-id", broker_id, "--username", "app-1")
    u = aws.ok("describe-user", "--broker-id", broker_id, "--username", "app-1")
    assert u["Pending"]["PendingChange"] == "DELETE"
    d = aws.ok("describe-broker", "--broker-id", broker_id)
    assert {"Username": "app-1", "PendingChange": "DELETE"} in d["Users"]

    aws.fails("ConflictException", "create-user", "--broker-id", broker_id, "--username", "admin",
              "--password", PASSWORD)
    message = aws.fails("BadRequestException", "create-user", "--broker-id", broker_id, "--username", "app-2",
                        "--password", "short")
    assert "12 characters" in message
    aws.fails("BadRequestException", "create-user", "--broker-id", broker_id, "--username", "bad~name",
              "--password", PASSWORD)
    aws.fails("NotFoundException", "describe-user", "--broker-id", broker_id, "--username", "nobody")
    aws.fails("NotFoundException", "delete-user", "--broker-id", broker_id, "--username", "nobody")
    aws.fails("NotFoundException", "list-users", "--broker-id", "b-00000000-0000-0000-0000-000000000000")


def test_configurations(aws):
    created = aws.ok("create-configuration", "--name", unique("cfg"), "--engine-type", "RABBITMQ")
    config_id = created["Id"]
    assert config_id.startswith("c-") and created["LatestRevision"]["Revision"] == 1

    data = base64.b64encode(b"consumer_timeout = 900000\nheartbeat = 30\n").decode()
    updated = aws.ok("update-configuration", "--configuration-id", config_id, "--data", data,
                     "--description", "shorter timeout")
    assert updated["LatestRevision"]["Revision"] == 2

    d = aws.ok("describe-configuration", "--configuration-id", config_id)
    assert d["LatestRevision"]["Revision"] == 2 and d["EngineType"] == "RABBITMQ"
    revisions = aws.ok("list-configuration-revisions", "--configuration-id", config_id)["Revisions"]
    assert [r["Revision"] for r in revisions] == [1, 2]
    rev = aws.ok("describe-configuration-revision", "--configuration-id", config_id,
                 "--configuration-revision", "2")
    assert base64.b64decode(rev["Data"]) == b"consumer_timeout = 900000\nheartbeat = 30\n"
    assert rev["Description"] == "shorter timeout"
    listed = aws.ok("list-configurations")["Configurations"]
    assert config_id in [c["Id"] for c in listed]

    # A broker set to use it (pending) keeps it from being deleted.
    broker_id = create_broker(aws, unique("cfg-user"))["BrokerId"]
    aws.ok("update-broker", "--broker-id", broker_id, "--configuration", f"Id={config_id},Revision=2")
    d = aws.ok("describe-broker", "--broker-id", broker_id)
    assert d["Configurations"]["Pending"] == {"Id": config_id, "Revision": 2}
    aws.fails("ConflictException", "delete-configuration", "--configuration-id", config_id)

    bad = base64.b64encode(b"loopback_users = none\n").decode()
    aws.fails("BadRequestException", "update-configuration", "--configuration-id", config_id, "--data", bad)
    aws.fails("BadRequestException", "create-configuration", "--name", "x", "--engine-type", "ACTIVEMQ")

    other = aws.ok("create-configuration", "--name", unique("cfg"), "--engine-type", "RABBITMQ")["Id"]
    assert aws.ok("delete-configuration", "--configuration-id", other)["ConfigurationId"] == other
    aws.fails("NotFoundException", "describe-configuration", "--configuration-id", other)


def test_tags(aws):
    arn = create_broker(aws, unique("tags"))["BrokerArn"]
    aws.ok("create-tags", "--resource-arn", arn, "--tags", "a=1,b=2")
    assert aws.ok("list-tags", "--resource-arn", arn)["Tags"] == {"a": "1", "b": "2"}
    aws.ok("delete-tags", "--resource-arn", arn, "--tag-keys", "a")
    assert aws.ok("list-tags", "--resource-arn", arn)["Tags"] == {"b": "2"}
    ghost = "arn:aws:mq:us-east-1:000000000000:broker:ghost:b-00000000-0000-0000-0000-000000000000"
    aws.fails("NotFoundException", "list-tags", "--resource-arn", ghost)


def test_engine_types_and_instance_options(aws):
    engines = aws.ok("describe-broker-engine-types")["BrokerEngineTypes"]
    assert engines == [{"EngineType": "RABBITMQ", "EngineVersions": [{"Name": "3.13"}, {"Name": "3.12"}]}]
    options = aws.ok("describe-broker-instance-options", "--engine-type", "RABBITMQ")["BrokerInstanceOptions"]
    types = [o["HostInstanceType"] for o in options]
    assert types == ["mq.t3.micro", "mq.m5.large", "mq.m5.xlarge", "mq.m5.2xlarge", "mq.m5.4xlarge"]
    assert all(o["SupportedEngineVersions"] == ["3.13", "3.12"] for o in options)


def test_errors_as_the_cli_prints_them(aws):
    name = unique("dup")
    create_broker(aws, name)
    message = aws.fails("ConflictException", "create-broker", "--broker-name", name, "--deployment-mode",
                        "SINGLE_INSTANCE", "--engine-type", "RABBITMQ", "--host-instance-type", "mq.m5.large",
                        "--no-publicly-accessible", "--users", f"Username=admin,Password={PASSWORD}")
    assert name in message

    for bad_name in ["has space", "x" * 51, "dots.are.not.allowed"]:
        aws.fails("BadRequestException", "create-broker", "--broker-name", bad_name, "--deployment-mode",
                  "SINGLE_INSTANCE", "--engine-type", "RABBITMQ", "--host-instance-type", "mq.m5.large",
                  "--no-publicly-accessible", "--users", f"Username=admin,Password={PASSWORD}")

    def create_with(engine, mode):
        return aws.fails("BadRequestException", "create-broker", "--broker-name", unique("e"), "--deployment-mode",
                         mode, "--engine-type", engine, "--host-instance-type", "mq.m5.large",
                         "--no-publicly-accessible", "--users", f"Username=admin,Password={PASSWORD}")

    assert "unknown variant" in create_with("KAFKA", "SINGLE_INSTANCE")
    assert "RABBITMQ" in create_with("ACTIVEMQ", "SINGLE_INSTANCE")
    # Replicated modes are served, but not on mq.t3.micro (as in Amazon MQ).
    message = aws.fails("BadRequestException", "create-broker", "--broker-name", unique("e"), "--deployment-mode",
                        "CLUSTER_MULTI_AZ", "--engine-type", "RABBITMQ", "--host-instance-type", "mq.t3.micro",
                        "--no-publicly-accessible", "--users", f"Username=admin,Password={PASSWORD}")
    assert "does not support deployment mode CLUSTER_MULTI_AZ" in message

    unknown = "b-00000000-0000-0000-0000-000000000000"
    message = aws.fails("NotFoundException", "describe-broker", "--broker-id", unknown)
    assert unknown in message
    aws.fails("NotFoundException", "delete-broker", "--broker-id", unknown)
    aws.fails("NotFoundException", "update-broker", "--broker-id", unknown, "--no-auto-minor-version-upgrade")
    aws.fails("NotFoundException", "reboot-broker", "--broker-id", unknown)


def test_creator_request_id_makes_create_idempotent(aws):
    name, token = unique("idem"), str(uuid.uuid4())
    first = create_broker(aws, name, "--creator-request-id", token)
    again = create_broker(aws, name, "--creator-request-id", token)
    assert first == again


def test_malformed_json_is_a_bad_request(control_plane):
    for body in ["{not json", '{"brokerName": 7}', '{"deploymentMode": "SOMETIMES"}']:
        status, headers, payload = control_plane.http("POST", "/v1/brokers", body)
        assert status == 400, payload
        assert headers["x-amzn-ErrorType"] == "BadRequestException"
        assert payload["message"]


def test_health_and_metrics(control_plane):
    status, _, body = control_plane.http("GET", "/healthz")
    assert status == 200
    status, _, text = control_plane.http("GET", "/metrics")
    assert status == 200
    assert 'mooring_api_request_duration_seconds_count{method="POST",route="/v1/brokers"' in text
    assert "mooring_brokers{state=" in text


def test_reboot_applies_pending_changes_on_a_running_broker(tmp_path, control_plane_kit, closed_window):
    """With real agents: the broker reaches RUNNING, a reboot applies the pending
    instance type, and deletion ends in NotFoundException."""
    Aws, ControlPlane, poll = control_plane_kit

    cp = ControlPlane(tmp_path / "cp")
    try:
        aws = Aws(cp.endpoint, tmp_path, cp.credentials_file)
        # Its window is not now, so the change waits for the reboot.
        broker_id = create_broker(aws, unique("reboot"), "--maintenance-window-start-time", closed_window)["BrokerId"]

        def state():
            return aws.ok("describe-broker", "--broker-id", broker_id)["BrokerState"]

        poll(lambda: state() == "RUNNING", 90, "the broker to reach RUNNING", interval=0.5)
        d = aws.ok("describe-broker", "--broker-id", broker_id)
        assert d["BrokerInstances"] and d["BrokerInstances"][0]["Endpoints"][0].startswith("amqp")

        aws.ok("update-broker", "--broker-id", broker_id, "--host-instance-type", "mq.m5.xlarge")
        assert aws.ok("describe-broker", "--broker-id", broker_id)["PendingHostInstanceType"] == "mq.m5.xlarge"
        aws.ok("reboot-broker", "--broker-id", broker_id)
        d = aws.ok("describe-broker", "--broker-id", broker_id)
        assert d["HostInstanceType"] == "mq.m5.xlarge" and "PendingHostInstanceType" not in d
        poll(lambda: state() == "RUNNING", 90, "the broker to be RUNNING after its reboot", interval=0.5)

        aws.ok("delete-broker", "--broker-id", broker_id)

        def gone():
            code, _, err = aws.run("describe-broker", "--broker-id", broker_id)
            return code != 0 and "NotFoundException" in err

        poll(gone, 90, "the deleted broker to disappear", interval=0.5)
        nodes = cp.data_dir / "nodes"
        assert not nodes.exists() or not any(nodes.iterdir()), "the node's data is removed"
    finally:
        cp.stop()
        cp.kill_agents()
