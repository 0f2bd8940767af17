"""Configured limits and resource alarms (broker-side flags, so mooring only). Each limit is
answered with the protocol error RabbitMQ uses for the equivalent limit."""

import struct
import time

import pika
import pytest

from engine_helpers import expect_channel_error
from engine_raw import (
    CONNECTION_BLOCKED,
    CONNECTION_CLOSE,
    CONNECTION_UNBLOCKED,
    CONNECTION_START,
    CONNECTION_TUNE,
    PROTOCOL_HEADER,
    RawConnection,
    basic_publish_args,
    body_frame,
    content_header_frame,
    method_frame,
    queue_declare_args,
)

pytestmark = pytest.mark.mooring_only


def connect(agent, **kwargs):
    host, port = agent.amqp
    kwargs.setdefault("connection_attempts", 1)
    kwargs.setdefault("socket_timeout", 10)
    return pika.BlockingConnection(pika.ConnectionParameters(host=host, port=port, **kwargs))


def tune_values(agent):
    """(channel_max, frame_max, heartbeat) the server proposes in connection.tune."""
    host, port = agent.amqp
    with RawConnection(host, port) as c:
        c.send(PROTOCOL_HEADER)
        c.expect(CONNECTION_START)
        f = c.handshake_start_ok()
        assert f.method == CONNECTION_TUNE
        return struct.unpack("!HIH", f.payload[4:12])


def test_tune_proposes_configured_values(agent_factory):
    agent = agent_factory(extra_args=["--channel-max", "7", "--frame-max", "8192", "--heartbeat-secs", "5"])
    assert tune_values(agent) == (7, 8192, 5)


def test_frame_max_is_enforced(agent_factory):
    agent = agent_factory(extra_args=["--frame-max", "8192"])
    host, port = agent.amqp
    with RawConnection(host, port) as c:
        c.open(frame_max=8192)
        c.open_channel(1)
        c.send(method_frame(1, 60, 40, basic_publish_args("", "x")))
        c.send(content_header_frame(1, 60, 20000))
        c.send(body_frame(1, b"x" * 20000))
        code, text, _, _ = c.expect_connection_close()
        assert code == 501 and text.startswith("FRAME_ERROR - ")


def test_max_connections(agent_factory):
    agent = agent_factory(extra_args=["--max-connections", "2"])
    held = [connect(agent), connect(agent)]
    try:
        host, port = agent.amqp
        with RawConnection(host, port) as c:
            try:
                f = c.handshake()
            except Exception as e:  # noqa: BLE001 - a refused socket is reported below
                pytest.fail(f"third connection dropped without a protocol error: {e!r}")
            assert f.method == CONNECTION_CLOSE, f"third connection was accepted: {f!r}"
            code, text, _, _ = f.close_args()
            assert code == 530 and text.startswith("NOT_ALLOWED - "), (code, text)
        held.pop().close()
        # a slot is free again once a connection closes

        def reconnect():
            try:
                return connect(agent)
            except pika.exceptions.AMQPError:
                return None

        deadline = time.monotonic() + 5
        conn = None
        while conn is None:
            assert time.monotonic() < deadline, "no connection accepted after one closed"
            conn = reconnect()
        held.append(conn)
    finally:
        for c in held:
            if c.is_open:
                c.close()


def test_max_queues(agent_factory):
    agent = agent_factory(extra_args=["--max-queues", "3"])
    conn = connect(agent)
    try:
        ch = conn.channel()
        for i in range(3):
            ch.queue_declare(f"q{i}")
        ch.queue_declare("q0")  # redeclaring an existing queue is not a new queue
        expect_channel_error(ch, lambda: ch.queue_declare("q3"), 406, "PRECONDITION_FAILED - cannot declare queue 'q3'")
        ch = conn.channel()
        ch.queue_delete("q0")
        ch.queue_declare("q3")
    finally:
        conn.close()


def test_max_message_size(agent_factory):
    agent = agent_factory(extra_args=["--max-message-bytes", "1000"])
    conn = connect(agent)
    try:
        ch = conn.channel()
        ch.queue_declare("q")
        ch.confirm_delivery()
        ch.basic_publish("", "q", b"x" * 1000)
        expect_channel_error(
            ch,
            lambda: ch.basic_publish("", "q", b"x" * 1001),
            406,
            "PRECONDITION_FAILED - message size 1001 is larger than configured max size 1000",
        )
        assert conn.is_open
    finally:
        conn.close()


def publish(c, queue, body):
    c.send(method_frame(1, 60, 40, basic_publish_args("", queue)))
    c.send(content_header_frame(1, 60, len(body)))
    c.send(body_frame(1, body))


def expect_method(c, method, timeout=5.0):
    """Reads frames until `method` arrives (other methods, e.g. declare-oks, are skipped)."""
    for f in c.notices:
        if f.method == method:
            c.notices.remove(f)
            return f
    deadline = time.monotonic() + timeout
    while True:
        f = c.read_method(timeout=max(0.0, deadline - time.monotonic()))
        if f.method == method:
            return f


def blocked_reason(f):
    n = f.payload[4]
    return f.payload[5 : 5 + n].decode()


# pika registers its blocked callbacks only after the connection is open, and a server may
# announce an alarm right after open-ok, so these tests use the raw client (which announces
# the connection.blocked capability) to see every frame.


def test_memory_alarm_blocks_and_unblocks_publishers(agent_factory):
    agent = agent_factory(extra_args=["--memory-high-watermark-bytes", "10000"])
    host, port = agent.amqp
    with RawConnection(host, port) as c:
        c.open()
        c.open_channel(1)
        c.send(method_frame(1, 50, 10, queue_declare_args("big")))
        c.expect((50, 11))
        for _ in range(3):
            publish(c, "big", b"x" * 5000)
        f = expect_method(c, CONNECTION_BLOCKED)
        assert "memory" in blocked_reason(f)
        # consumers are never blocked; purging lowers memory use below the watermark
        other = connect(agent)
        try:
            assert other.channel().queue_purge("big").method.message_count >= 2
        finally:
            other.close()
        expect_method(c, CONNECTION_UNBLOCKED)


def count(agent, queue):
    other = connect(agent)
    try:
        return other.channel().queue_declare(queue, passive=True).method.message_count
    finally:
        other.close()


def test_disk_alarm_blocks_publishers(agent_factory):
    # a free-space limit no disk can satisfy raises the disk alarm at once
    agent = agent_factory(extra_args=["--disk-free-limit-bytes", str(1 << 60)])
    host, port = agent.amqp
    with RawConnection(host, port) as c:
        c.open()
        c.open_channel(1)
        c.send(method_frame(1, 50, 10, queue_declare_args("q")))
        c.expect((50, 11))
        publish(c, "q", b"x")
        f = expect_method(c, CONNECTION_BLOCKED)
        assert "disk" in blocked_reason(f)
        # Let the broker act on what it read; RabbitMQ stops reading at the first publish
        # (which it may or may not have routed), so later publishes are held back while
        # other clients still get answers.
        time.sleep(0.2)
        before = count(agent, "q")
        assert before <= 1
        publish(c, "q", b"held back")
        time.sleep(0.3)
        assert count(agent, "q") == before


def test_alarm_stops_reading_at_the_first_publish(agent_factory):
    """RabbitMQ blocks a connection as soon as it reads a content-bearing method during an
    alarm and reads nothing more, so publishes pipelined behind the first one are not taken
    in. Here the client sends several publishes in one write."""
    agent = agent_factory(extra_args=["--disk-free-limit-bytes", str(1 << 60)])
    host, port = agent.amqp
    with RawConnection(host, port) as c:
        c.open()
        c.open_channel(1)
        c.send(method_frame(1, 50, 10, queue_declare_args("q")))
        c.expect((50, 11))
        pipelined = b"".join(
            method_frame(1, 60, 40, basic_publish_args("", "q")) + content_header_frame(1, 60, 1) + body_frame(1, b"x")
            for _ in range(20)
        )
        c.send(pipelined)
        expect_method(c, CONNECTION_BLOCKED)
        time.sleep(0.3)
        assert count(agent, "q") <= 1, "publishes kept being read after the connection was blocked"
