"""A broker's whole life through the real AWS CLI, with pika as the application:
create -> RUNNING -> messages -> user changes reach the running broker -> reboot (durable
messages survive) -> a pending change applied by the next reboot -> delete, leaving no
agent process and no data behind. Runs on SQLite and on Postgres."""

import pika
import pytest

from e2e_helpers import agents_by_node, amqp_port, poll, wait_running

ADMIN = ("admin", "admin-password-1")
BOB = ("bob", "bob-password-123")
# A user change is pushed within a heartbeat or two; a debug build on a busy box is slow.
PROPAGATION_S = 30


def connect(port, user):
    return pika.BlockingConnection(
        pika.ConnectionParameters(
            "127.0.0.1", port, credentials=pika.PlainCredentials(*user),
            connection_attempts=1, socket_timeout=5, blocked_connection_timeout=5,
        )
    )


def can_log_in(port, user):
    try:
        connect(port, user).close()
        return True
    except (pika.exceptions.ProbableAuthenticationError, pika.exceptions.ProbableAccessDeniedError):
        return False


def publish_persistent(port, queue, bodies):
    conn = connect(port, ADMIN)
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        ch.queue_declare(queue, durable=True)
        for body in bodies:
            ch.basic_publish("", queue, body, pika.BasicProperties(delivery_mode=2), mandatory=True)
    finally:
        conn.close()


def drain(port, queue, limit=1000):
    conn = connect(port, ADMIN)
    try:
        ch = conn.channel()
        got = []
        for _ in range(limit):
            method, _, body = ch.basic_get(queue, auto_ack=True)
            if method is None:
                break
            got.append(body)
        return got
    finally:
        conn.close()


def node_pids(cp, broker_id):
    return agents_by_node(cp.data_dir).get(f"{broker_id}-1", [])


@pytest.mark.timeout(300)
def test_broker_lifecycle(aws, control_plane, closed_window):
    cp = control_plane
    created = aws.ok(
        "create-broker", "--broker-name", "lifecycle-1", "--deployment-mode", "SINGLE_INSTANCE",
        "--engine-type", "RABBITMQ", "--engine-version", "3.13", "--host-instance-type", "mq.m5.large",
        "--no-publicly-accessible", "--auto-minor-version-upgrade",
        # Its window is not now, so the update below stays pending until the reboot.
        "--maintenance-window-start-time", closed_window,
        "--users", f"Username={ADMIN[0]},Password={ADMIN[1]}",
    )
    broker_id = created["BrokerId"]

    described = wait_running(aws, broker_id)
    instance = described["BrokerInstances"][0]
    assert instance["ConsoleURL"].startswith("http://127.0.0.1:")
    port = amqp_port(described)
    assert len(node_pids(cp, broker_id)) == 1

    # The application's view: publish and consume with the broker's user.
    conn = connect(port, ADMIN)
    ch = conn.channel()
    ch.queue_declare("orders")
    ch.basic_publish("", "orders", b"order-1")
    method, _, body = ch.basic_get("orders", auto_ack=True)
    assert method is not None and body == b"order-1"
    conn.close()

    # Users: created, listed, changed and deleted on the running broker.
    assert not can_log_in(port, BOB)
    aws.ok("create-user", "--broker-id", broker_id, "--username", BOB[0], "--password", BOB[1])
    poll(lambda: can_log_in(port, BOB), PROPAGATION_S, "the new user to log in")
    poll(
        lambda: all("PendingChange" not in u for u in aws.ok("list-users", "--broker-id", broker_id)["Users"]),
        PROPAGATION_S, "user changes to stop being pending",
    )
    names = [u["Username"] for u in aws.ok("list-users", "--broker-id", broker_id)["Users"]]
    assert sorted(names) == [ADMIN[0], BOB[0]]

    new_password = "bob-password-456"
    aws.ok("update-user", "--broker-id", broker_id, "--username", BOB[0], "--password", new_password)
    poll(lambda: can_log_in(port, (BOB[0], new_password)), PROPAGATION_S, "the new password to work")
    assert not can_log_in(port, BOB), "the old password no longer works"

    aws.ok("delete-user", "--broker-id", broker_id, "--username", BOB[0])
    poll(lambda: not can_log_in(port, (BOB[0], new_password)), PROPAGATION_S, "the deleted user to be refused")
    poll(
        lambda: [u["Username"] for u in aws.ok("list-users", "--broker-id", broker_id)["Users"]] == [ADMIN[0]],
        PROPAGATION_S, "the deleted user to leave list-users",
    )

    # Reboot: a new agent process on the same data; durable messages survive.
    publish_persistent(port, "durable-before-reboot", [b"m1", b"m2", b"m3"])
    pid_before = node_pids(cp, broker_id)
    aws.ok("reboot-broker", "--broker-id", broker_id)
    poll(lambda: node_pids(cp, broker_id) and node_pids(cp, broker_id) != pid_before,
         60, "a new agent process after the reboot")
    described = wait_running(aws, broker_id)
    assert amqp_port(described) == port, "the endpoint is stable across reboots"
    poll(lambda: can_log_in(port, ADMIN), PROPAGATION_S, "the broker to serve after the reboot")
    assert drain(port, "durable-before-reboot") == [b"m1", b"m2", b"m3"]

    # A pending change waits for the next reboot, then applies.
    aws.ok("update-broker", "--broker-id", broker_id, "--host-instance-type", "mq.m5.xlarge")
    described = aws.ok("describe-broker", "--broker-id", broker_id)
    assert described["PendingHostInstanceType"] == "mq.m5.xlarge"
    assert described["HostInstanceType"] == "mq.m5.large"
    aws.ok("reboot-broker", "--broker-id", broker_id)
    described = wait_running(aws, broker_id)
    poll(lambda: aws.ok("describe-broker", "--broker-id", broker_id)["HostInstanceType"] == "mq.m5.xlarge",
         30, "the instance type to be applied")
    assert "PendingHostInstanceType" not in aws.ok("describe-broker", "--broker-id", broker_id)
    poll(lambda: can_log_in(port, ADMIN), PROPAGATION_S, "the broker to serve after the second reboot")

    # Delete: the API forgets the broker, the agent and its data are gone.
    aws.ok("delete-broker", "--broker-id", broker_id)

    def gone():
        code, _, err = aws.run("describe-broker", "--broker-id", broker_id)
        return code != 0 and "NotFoundException" in err

    poll(gone, 60, "describe-broker to answer NotFoundException")
    assert node_pids(cp, broker_id) == []
    assert cp.node_dirs() == []
    assert not can_log_in_safely(port)


def can_log_in_safely(port):
    """False when nothing accepts AMQP connections on `port` any more."""
    try:
        connect(port, ADMIN).close()
        return True
    except pika.exceptions.AMQPConnectionError:
        return False
