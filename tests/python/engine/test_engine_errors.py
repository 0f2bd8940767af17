"""Channel and connection errors: reply codes and texts as RabbitMQ sends them.

Channel errors (403, 404, 405, 406) close only the channel; the connection keeps working.
Connection errors (501, 503, 504, 505, 530) close the connection. Where pika refuses to send
the offending frames, the raw client in engine_raw does.
"""

import struct

import pika
import pytest

from engine_helpers import expect_channel_error, expect_connection_error, get_one
from engine_raw import (
    CHANNEL_CLOSE,
    CLIENT_PROPERTIES,
    CONNECTION_START,
    CONNECTION_TUNE,
    PROTOCOL_HEADER,
    CHANNEL_CLOSE_OK,
    CONNECTION_CLOSE,
    CONNECTION_CLOSE_OK,
    Closed,
    RawConnection,
    body_frame,
    content_header_frame,
    longstr,
    method_frame,
    queue_declare_args,
    shortstr,
    table,
)


def assert_connection_usable(conn, names):
    """The connection survived a channel error: a new channel can route a message."""
    assert conn.is_open
    ch = conn.channel()
    queue = names()
    ch.queue_declare(queue)
    ch.basic_publish("", queue, b"still here")
    assert get_one(ch, queue)[2] == b"still here"


@pytest.mark.parametrize("code", [403, 404, 405, 406])
def test_channel_errors_close_only_the_channel(broker, conn, names, code):
    queue = names()
    setup = conn.channel()
    other_conn = None
    if code == 403:
        action, prefix = (lambda ch: ch.exchange_declare("amq.reserved-by-test", "direct")), "ACCESS_REFUSED - "
    elif code == 404:
        action, prefix = (lambda ch: ch.queue_declare(queue, passive=True)), "NOT_FOUND - no queue"
    elif code == 405:
        other_conn = broker.connect()
        other_conn.channel().queue_declare(queue, exclusive=True)
        action, prefix = (lambda ch: ch.queue_declare(queue, passive=True)), "RESOURCE_LOCKED - "
    else:
        setup.queue_declare(queue, durable=True)
        action, prefix = (lambda ch: ch.queue_declare(queue, durable=False)), "PRECONDITION_FAILED - "
    bystander = conn.channel()
    victim = conn.channel()
    try:
        err = expect_channel_error(victim, lambda: action(victim), code, prefix)
        # the close names the method that failed
        assert bystander.is_open
        assert_connection_usable(conn, names)
        assert err.reply_code == code
    finally:
        if other_conn is not None and other_conn.is_open:
            other_conn.close()


def test_channel_close_handshake_and_reuse_of_the_channel_id(broker):
    """After a channel error, frames on the closing channel are ignored until the client's
    close-ok; the id can then be opened again."""
    with RawConnection(broker.host, broker.port) as c:
        c.open()
        c.open_channel(1)
        c.send(method_frame(1, 50, 10, queue_declare_args("mooring-test.no-such-queue", passive=True)))
        f = c.expect(CHANNEL_CLOSE)
        code, text, class_id, method_id = f.close_args()
        assert (code, class_id, method_id) == (404, 50, 10)
        assert text == "NOT_FOUND - no queue 'mooring-test.no-such-queue' in vhost '/'"
        c.send(method_frame(1, 50, 10, queue_declare_args("ignored", passive=True)))
        c.send(method_frame(1, 20, 41))
        c.open_channel(1)
        # client-initiated connection close is answered with close-ok
        c.send(method_frame(0, 10, 50, struct.pack("!H", 200) + shortstr("bye") + struct.pack("!HH", 0, 0)))
        c.expect(CONNECTION_CLOSE_OK)


def test_client_channel_close_is_answered(broker):
    with RawConnection(broker.host, broker.port) as c:
        c.open()
        c.open_channel(1)
        c.send(method_frame(1, 20, 40, struct.pack("!H", 200) + shortstr("done") + struct.pack("!HH", 0, 0)))
        c.expect(CHANNEL_CLOSE_OK)
        # the channel is closed now: using it without channel.open is a connection error
        c.send(method_frame(1, 50, 10, queue_declare_args("x")))
        assert c.expect_connection_close() == (504, "CHANNEL_ERROR - expected 'channel.open'", 50, 10)


def test_unknown_exchange_type_is_command_invalid(conn, ch, names):
    expect_connection_error(
        conn,
        lambda: ch.exchange_declare(names("x"), "no-such-type"),
        503,
        "COMMAND_INVALID - unknown exchange type 'no-such-type'",
    )


def test_method_on_unopened_channel_is_channel_error(broker):
    with RawConnection(broker.host, broker.port) as c:
        c.open()
        c.send(method_frame(5, 50, 10, queue_declare_args("x")))
        assert c.expect_connection_close() == (504, "CHANNEL_ERROR - expected 'channel.open'", 50, 10)


def test_second_channel_open_is_channel_error(broker):
    with RawConnection(broker.host, broker.port) as c:
        c.open()
        c.open_channel(1)
        c.send(method_frame(1, 20, 10, shortstr("")))
        assert c.expect_connection_close() == (504, "CHANNEL_ERROR - second 'channel.open' seen", 20, 10)


def test_channel_method_on_channel_zero(broker):
    with RawConnection(broker.host, broker.port) as c:
        c.open()
        c.send(method_frame(0, 50, 10, queue_declare_args("x")))
        code, text, class_id, method_id = c.expect_connection_close()
        assert (code, class_id, method_id) == (504, 50, 10)
        assert text.startswith("CHANNEL_ERROR - ")


def test_channel_max_is_enforced(broker):
    with RawConnection(broker.host, broker.port) as c:
        c.open(channel_max=2)
        c.open_channel(1)
        c.open_channel(2)
        c.send(method_frame(3, 20, 10, shortstr("")))
        code, text, _, _ = c.expect_connection_close()
        assert code == 530
        assert text == "NOT_ALLOWED - number of channels opened (2) has reached the negotiated channel_max (2)"


def test_unknown_vhost_is_not_allowed(broker):
    with RawConnection(broker.host, broker.port) as c:
        f = c.handshake(vhost="mooring-no-such-vhost")
        assert f.method == CONNECTION_CLOSE
        assert f.close_args() == (530, "NOT_ALLOWED - vhost mooring-no-such-vhost not found", 10, 40)
    with pytest.raises(pika.exceptions.ProbableAccessDeniedError):
        broker.connect(vhost="mooring-no-such-vhost")


def test_wrong_password_is_access_refused(broker):
    with RawConnection(broker.host, broker.port) as c:
        f = c.handshake(password="wrong")
        assert f.method == CONNECTION_CLOSE
        code, text, _, _ = f.close_args()
        assert code == 403
        assert text.startswith("ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN")
        c.send(method_frame(0, 10, 51))
        c.expect_eof()
    with pytest.raises(pika.exceptions.ProbableAuthenticationError) as info:
        broker.connect(password="wrong")
    assert "ACCESS_REFUSED" in str(info.value)


def test_unknown_user_is_access_refused(broker):
    with RawConnection(broker.host, broker.port) as c:
        f = c.handshake(user="mooring-no-such-user", password="x")
        assert f.method == CONNECTION_CLOSE
        code, text, _, _ = f.close_args()
        assert code == 403 and text.startswith("ACCESS_REFUSED - Login was refused")


def test_server_generated_consumer_tags_and_reuse(broker):
    """An empty consumer tag gets a unique `amq.ctag-` tag; reusing a tag on the same channel
    is a connection error (530)."""

    def consume(c, queue, tag):
        args = struct.pack("!H", 0) + shortstr(queue) + shortstr(tag) + b"\x00" + struct.pack("!I", 0)
        c.send(method_frame(1, 60, 20, args))

    def consume_ok_tag(c):
        f = c.expect((60, 21))
        n = f.payload[4]
        return f.payload[5 : 5 + n].decode()

    with RawConnection(broker.host, broker.port) as c:
        c.open()
        c.open_channel(1)
        c.send(method_frame(1, 50, 10, queue_declare_args("", exclusive=True)))
        f = c.expect((50, 11))
        queue = f.payload[5 : 5 + f.payload[4]].decode()
        assert queue.startswith("amq.gen-")
        consume(c, queue, "")
        first = consume_ok_tag(c)
        consume(c, queue, "")
        second = consume_ok_tag(c)
        assert first.startswith("amq.ctag-") and second.startswith("amq.ctag-") and first != second
        consume(c, queue, "mine")
        assert consume_ok_tag(c) == "mine"
        consume(c, queue, "mine")
        assert c.expect_connection_close() == (530, "NOT_ALLOWED - attempt to reuse consumer tag 'mine'", 60, 20)


def test_server_properties_and_capabilities(broker):
    conn = broker.connect()
    try:
        props = conn._impl.server_properties
        caps = props["capabilities"]
        for cap in (
            "publisher_confirms",
            "exchange_exchange_bindings",
            "basic.nack",
            "consumer_cancel_notify",
            "connection.blocked",
            "authentication_failure_close",
            "per_consumer_qos",
        ):
            assert caps.get(cap) is True, cap
        assert props["product"]
        assert props["version"]
    finally:
        conn.close()


def test_mechanisms_offered(broker):
    with RawConnection(broker.host, broker.port) as c:
        c.send(PROTOCOL_HEADER)
        f = c.expect(CONNECTION_START)
        major, minor = f.payload[4], f.payload[5]
        assert (major, minor) == (0, 9)
        # skip server-properties (a table), then mechanisms and locales (long strings)
        (props_len,) = struct.unpack("!I", f.payload[6:10])
        rest = f.payload[10 + props_len :]
        (mech_len,) = struct.unpack("!I", rest[:4])
        mechanisms = rest[4 : 4 + mech_len].decode().split()
        assert "PLAIN" in mechanisms and "AMQPLAIN" in mechanisms
        (loc_len,) = struct.unpack("!I", rest[4 + mech_len : 8 + mech_len])
        assert "en_US" in rest[8 + mech_len : 8 + mech_len + loc_len].decode().split()


def test_amqplain_login(broker):
    """AMQPLAIN: the response is a field table without its length prefix."""
    def start_ok(c, password):
        c.send(PROTOCOL_HEADER)
        c.expect(CONNECTION_START)
        response = table({"LOGIN": "guest", "PASSWORD": password})[4:]
        start_ok = table(CLIENT_PROPERTIES) + shortstr("AMQPLAIN") + longstr(response) + shortstr("en_US")
        c.send(method_frame(0, 10, 11, start_ok))
        return c.read_method()

    with RawConnection(broker.host, broker.port) as c:
        f = start_ok(c, "guest")
        assert f.method == CONNECTION_TUNE
        c.send(method_frame(0, 10, 31, f.payload[4:12]))
        c.send(method_frame(0, 10, 40, shortstr("/") + shortstr("") + b"\x00"))
        c.expect((10, 41))
    with RawConnection(broker.host, broker.port) as c:
        f = start_ok(c, "wrong")
        assert f.method == CONNECTION_CLOSE
        code, text, _, _ = f.close_args()
        assert code == 403
        assert text.startswith("ACCESS_REFUSED - Login was refused using authentication mechanism AMQPLAIN")


def publish_args(exchange, routing_key, mandatory=False, immediate=False):
    return struct.pack("!H", 0) + shortstr(exchange) + shortstr(routing_key) + bytes([mandatory | immediate << 1])


@pytest.mark.parametrize(
    "name,frames,expected",
    [
        (
            "basic.publish immediate=true",
            lambda: [
                method_frame(1, 60, 40, publish_args("", "mooring-test.immediate", immediate=True)),
                content_header_frame(1, 60, 1),
                body_frame(1, b"x"),
            ],
            (540, "NOT_IMPLEMENTED - immediate=true", 60, 40),
        ),
        (
            "channel.flow active=false",
            lambda: [method_frame(1, 20, 20, b"\x00")],
            (540, "NOT_IMPLEMENTED - active=false", 20, 20),
        ),
        (
            "basic.recover requeue=false",
            lambda: [method_frame(1, 60, 110, b"\x00")],
            (540, "NOT_IMPLEMENTED - requeue=false", 60, 110),
        ),
    ],
    ids=["immediate", "flow-off", "recover-no-requeue"],
)
def test_unsupported_features_are_not_implemented(broker, name, frames, expected):
    """What RabbitMQ does not implement it refuses with 540 on the connection, rather than
    accepting a request whose meaning it would not honour."""
    with RawConnection(broker.host, broker.port) as c:
        c.open()
        c.open_channel(1)
        c.send(b"".join(frames()))
        assert c.expect_connection_close() == expected, name


def test_channel_flow_active_true_is_acknowledged(broker):
    with RawConnection(broker.host, broker.port) as c:
        c.open()
        c.open_channel(1)
        c.send(method_frame(1, 20, 20, b"\x01"))
        f = c.expect((20, 21))
        assert f.payload[4:] == b"\x01"


def test_deleting_a_system_exchange_is_refused(conn, ch):
    expect_channel_error(ch, lambda: ch.exchange_delete("amq.direct"), 403, "ACCESS_REFUSED - ")
    assert conn.channel().exchange_declare("amq.direct", passive=True)


def test_access_request_is_answered(broker):
    """Old clients still send the deprecated access.request; RabbitMQ answers access.request-ok
    with ticket 1."""
    with RawConnection(broker.host, broker.port) as c:
        c.open()
        c.open_channel(1)
        c.send(method_frame(1, 30, 10, shortstr("/data") + b"\x1f"))
        f = c.expect((30, 11))
        assert f.payload[4:] == b"\x00\x01"


@pytest.mark.parametrize(
    "channel_max,frame_max",
    [(0, 10_000_000), (0, 1000), (65535, 131072)],
    ids=["frame-max-above-server", "frame-max-below-4096", "channel-max-above-server"],
)
def test_tune_ok_outside_the_servers_limits_is_refused(broker, channel_max, frame_max):
    """RabbitMQ refuses to open a connection whose tune-ok exceeds what it offered or asks for
    frames below the 4096-byte minimum ("failed to negotiate connection parameters"): the
    connection is closed, never opened."""
    with RawConnection(broker.host, broker.port) as c:
        c.send(PROTOCOL_HEADER)
        c.expect(CONNECTION_START)
        assert c.handshake_start_ok().method == CONNECTION_TUNE
        try:
            c.send(method_frame(0, 10, 31, struct.pack("!HIH", channel_max, frame_max, 0)))
            c.send(method_frame(0, 10, 40, shortstr("/") + shortstr("") + b"\x00"))
            f = c.read_method()
        except (Closed, ConnectionResetError, BrokenPipeError):
            return  # dropped, as RabbitMQ does
        assert f.method == CONNECTION_CLOSE, f"connection opened with tune-ok {channel_max}/{frame_max}: {f!r}"
        code, text, _, _ = f.close_args()
        assert code in (501, 503, 530), (code, text)
