"""Fixtures of the engine conformance suite.

The same tests run against two brokers, chosen by MOORING_BROKER:
- `rabbitmq`: the real RabbitMQ 3.10 at 127.0.0.1:5672 (guest/guest), the reference whose
  behaviour the tests encode;
- anything else (the default): a `mooring-agent standalone` started from $MOORING_BIN_DIR on a
  temporary data directory and ephemeral ports, shared by the whole session.

Tests marked `mooring_only` need something only a broker we start can give (restart, kill,
admin HTTP, TLS, broker-side configuration) and are skipped against RabbitMQ.
"""

import os
import uuid

import pika
import pytest

RABBITMQ_ADDR = ("127.0.0.1", 5672)
TARGET = os.environ.get("MOORING_BROKER", "mooring").lower()


class Broker:
    def __init__(self, kind, host, port, agent=None):
        self.kind = kind
        self.host = host
        self.port = port
        self.agent = agent

    @property
    def is_rabbitmq(self):
        return self.kind == "rabbitmq"

    def params(self, user="guest", password="guest", vhost="/", **kwargs):
        kwargs.setdefault("connection_attempts", 1)
        kwargs.setdefault("socket_timeout", 10)
        kwargs.setdefault("blocked_connection_timeout", 30)
        return pika.ConnectionParameters(
            host=self.host,
            port=self.port,
            virtual_host=vhost,
            credentials=pika.PlainCredentials(user, password),
            **kwargs,
        )

    def connect(self, **kwargs):
        return pika.BlockingConnection(self.params(**kwargs))


def pytest_collection_modifyitems(config, items):
    if TARGET != "rabbitmq":
        return
    skip = pytest.mark.skip(reason="needs a broker the suite starts itself (MOORING_BROKER=rabbitmq)")
    for item in items:
        if "mooring_only" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def broker(session_agent_factory):
    if TARGET == "rabbitmq":
        yield Broker("rabbitmq", *RABBITMQ_ADDR)
        return
    agent = session_agent_factory()
    host, port = agent.amqp
    yield Broker("mooring", host, port, agent)
    # A panic in a connection task is invisible to clients (the socket just closes), so the
    # shared broker's log is checked once every test is done.
    log = agent.log_tail(limit=10**9)
    assert "panicked" not in log, f"mooring-agent panicked during the suite; log:\n{agent.log_tail()}"


@pytest.fixture
def conn(broker):
    connection = broker.connect()
    yield connection
    if connection.is_open:
        connection.close()


@pytest.fixture
def ch(conn):
    return conn.channel()


@pytest.fixture
def names(broker, request):
    """`names("q")` -> a name unique to this test run; queues and exchanges named so are
    deleted afterwards so that the shared RabbitMQ stays clean."""
    created = []
    test = request.node.name.replace("[", "-").replace("]", "")[:60]

    def make(kind="q"):
        name = f"mooring-test.{test}.{kind}.{uuid.uuid4().hex[:8]}"
        created.append(name)
        return name

    yield make
    if not created:
        return
    try:
        connection = broker.connect()
    except pika.exceptions.AMQPError:
        return  # the broker is gone (a test killed it); nothing left to clean
    try:
        for name in created:
            # One channel per delete: a failure closes only that channel.
            for delete in ("queue_delete", "exchange_delete"):
                try:
                    channel = connection.channel()
                    getattr(channel, delete)(name)
                    channel.close()
                except pika.exceptions.AMQPError:
                    if not connection.is_open:
                        connection = broker.connect()
    finally:
        if connection.is_open:
            connection.close()
