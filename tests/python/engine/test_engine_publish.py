"""Publishing: confirms (acks and nacks), mandatory returns, transactions, properties."""

import datetime
import random
import decimal
import struct
import time

import pika
import pytest

from engine_helpers import Collector, drain, get_one, message_count, wait_count
from engine_raw import RawConnection, basic_publish_args, body_frame, content_header_frame, method_frame, shortstr


def test_confirms_ack_every_publish(conn, ch, names):
    queue = names()
    ch.queue_declare(queue, durable=True)
    ch.confirm_delivery()
    for i in range(50):
        # with confirms on, BlockingChannel.basic_publish returns only once acked and
        # raises NackError on a nack
        ch.basic_publish("", queue, str(i).encode(), pika.BasicProperties(delivery_mode=2))
    assert message_count(ch, queue) == 50
    assert [b for _, _, b in drain(ch, queue)] == [str(i).encode() for i in range(50)]


def test_confirm_delivery_tags_and_multiple(broker, names):
    """At the frame level: delivery tags count from 1 per channel and every tag is acked
    exactly once (alone or covered by a multiple ack)."""
    queue = names()
    acked = set()
    done = {"closed": False}

    def on_open(connection):
        connection.channel(on_open_callback=on_channel)

    def on_channel(channel):
        channel.confirm_delivery(on_confirm)
        channel.queue_declare(queue, callback=lambda _: publish(channel))

    def publish(channel):
        for i in range(200):
            channel.basic_publish("", queue, str(i).encode())

    def on_confirm(frame):
        assert isinstance(frame.method, pika.spec.Basic.Ack), frame.method
        tag = frame.method.delivery_tag
        if frame.method.multiple:
            newly = {t for t in range(1, tag + 1) if t not in acked}
        else:
            assert tag not in acked, f"tag {tag} acked twice"
            newly = {tag}
        acked.update(newly)
        if len(acked) == 200:
            connection.close()

    connection = pika.SelectConnection(
        broker.params(),
        on_open_callback=on_open,
        on_close_callback=lambda *_: done.update(closed=True) or connection.ioloop.stop(),
    )
    connection.ioloop.call_later(10, connection.ioloop.stop)
    connection.ioloop.start()
    assert acked == set(range(1, 201))


def test_confirm_nack_on_reject_publish_overflow(conn, ch, names):
    queue = names()
    ch.queue_declare(queue, arguments={"x-max-length": 2, "x-overflow": "reject-publish"})
    ch.confirm_delivery()
    ch.basic_publish("", queue, b"1")
    ch.basic_publish("", queue, b"2")
    with pytest.raises(pika.exceptions.NackError):
        ch.basic_publish("", queue, b"3")
    assert [b for _, _, b in drain(ch, queue)] == [b"1", b"2"]
    ch.basic_publish("", queue, b"4")  # room again: acked
    assert [b for _, _, b in drain(ch, queue)] == [b"4"]


def test_confirm_unroutable_is_acked(conn, ch, names):
    """An unroutable message is confirmed (there is nothing to wait for), and with mandatory
    the basic.return comes before the ack."""
    exchange = names("x")
    ch.exchange_declare(exchange, "direct")
    ch.confirm_delivery()
    ch.basic_publish(exchange, "nowhere", b"lost")  # acked, no error
    with pytest.raises(pika.exceptions.UnroutableError) as info:
        ch.basic_publish(exchange, "nowhere", b"returned", mandatory=True)
    (returned,) = info.value.messages
    assert returned.method.reply_code == 312
    assert returned.method.reply_text == "NO_ROUTE"
    assert returned.method.exchange == exchange
    assert returned.method.routing_key == "nowhere"
    assert returned.body == b"returned"


def test_mandatory_return_without_confirms(conn, ch, names):
    exchange = names("x")
    ch.exchange_declare(exchange, "direct")
    returns = []
    ch.add_on_return_callback(lambda _ch, method, props, body: returns.append((method, props, body)))
    ch.basic_publish(
        exchange,
        "no-binding",
        b"payload",
        pika.BasicProperties(message_id="m-1", headers={"k": "v"}),
        mandatory=True,
    )
    ch.basic_publish(exchange, "no-binding", b"not mandatory")
    deadline_rounds = 100
    for _ in range(deadline_rounds):
        if returns:
            break
        conn.process_data_events(time_limit=0.05)
    conn.process_data_events(time_limit=0.2)
    assert len(returns) == 1
    method, props, body = returns[0]
    assert (method.reply_code, method.reply_text, method.exchange, method.routing_key) == (
        312,
        "NO_ROUTE",
        exchange,
        "no-binding",
    )
    assert body == b"payload"
    assert props.message_id == "m-1" and props.headers == {"k": "v"}


def test_mandatory_routed_is_not_returned(conn, ch, names):
    queue = names()
    ch.queue_declare(queue)
    ch.confirm_delivery()
    ch.basic_publish("", queue, b"x", mandatory=True)  # would raise UnroutableError if returned
    assert get_one(ch, queue)[2] == b"x"


def test_tx_commit_and_rollback(conn, ch, names):
    queue = names()
    ch.queue_declare(queue)
    ch.tx_select()
    ch.basic_publish("", queue, b"rolled back")
    assert message_count(ch, queue) == 0, "uncommitted publish is visible"
    ch.tx_rollback()
    assert message_count(ch, queue) == 0
    ch.basic_publish("", queue, b"a")
    ch.basic_publish("", queue, b"b")
    ch.tx_commit()
    assert message_count(ch, queue) == 2

    # acks are transactional too
    method, _, body = ch.basic_get(queue, auto_ack=False)
    assert body == b"a"
    ch.basic_ack(method.delivery_tag)
    ch.tx_rollback()
    # the rolled-back ack leaves the message unacked on this channel; recover requeues it
    ch.basic_recover(requeue=True)
    ch.tx_commit()
    got = []
    for _ in range(2):
        method, _, body = get_one(ch, queue, auto_ack=False)
        got.append(body)
        ch.basic_ack(method.delivery_tag)
    ch.tx_commit()
    assert sorted(got) == [b"a", b"b"]
    wait_count(ch, queue, 0)


def test_confirm_select_on_tx_channel_is_refused(conn, ch):
    ch.tx_select()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        ch.confirm_delivery()
    assert info.value.reply_code == 406
    assert info.value.reply_text.startswith("PRECONDITION_FAILED")


FULL_PROPERTIES = dict(
    content_type="application/json",
    content_encoding="gzip",
    headers={
        "str": "text é",
        "int": -42,
        "big": 2**40,
        "bool": True,
        "false": False,
        "decimal": decimal.Decimal("3.14"),
        "bytes": b"\x00\x01\xff",
        "list": [1, "two", [3], {"four": 4}],
        "nested": {"a": {"b": "c"}},
        "timestamp": datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc),
        "void": None,
    },
    delivery_mode=2,
    priority=7,
    correlation_id="corr-1",
    reply_to="reply.queue",
    expiration="600000",
    message_id="msg-1",
    timestamp=1700000000,
    type="order.created",
    user_id="guest",
    app_id="mooring-tests",
    cluster_id="cluster-x",
)


@pytest.mark.parametrize("body", [b"", b"x", bytes(range(256)) * 1000], ids=["empty", "one", "256k"])
def test_properties_and_headers_preserved_exactly(conn, ch, names, body):
    """Every basic property and header type survives publish -> queue -> deliver, and bodies
    larger than a frame are reassembled byte for byte."""
    queue = names()
    ch.queue_declare(queue)
    ch.basic_publish("", queue, body, pika.BasicProperties(**FULL_PROPERTIES))
    collector = Collector(conn, ch, queue, auto_ack=True)
    ((method, props, got),) = collector.wait(1)
    assert got == body
    for field, value in FULL_PROPERTIES.items():
        assert getattr(props, field) == value, field
    assert method.routing_key == queue and method.exchange == ""
    assert not method.redelivered

    # the same through basic.get
    ch.basic_cancel(collector.tag)
    ch.basic_publish("", queue, body, pika.BasicProperties(**FULL_PROPERTIES))
    _, props, got = get_one(ch, queue)
    assert got == body
    for field, value in FULL_PROPERTIES.items():
        assert getattr(props, field) == value, field


def test_absent_properties_stay_absent(conn, ch, names):
    queue = names()
    ch.queue_declare(queue)
    ch.basic_publish("", queue, b"bare", pika.BasicProperties())
    _, props, _ = get_one(ch, queue)
    for field in FULL_PROPERTIES:
        assert getattr(props, field) is None, field


def test_user_id_must_match_the_connection_user(conn, ch, names):
    """RabbitMQ validates user_id: a publish claiming another user is refused (406)."""
    queue = names()
    ch.queue_declare(queue)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        ch.basic_publish("", queue, b"x", pika.BasicProperties(user_id="someone-else"))
        ch.queue_declare(queue, passive=True)  # a round trip so the asynchronous close arrives
    assert info.value.reply_code == 406
    assert info.value.reply_text.startswith("PRECONDITION_FAILED - user_id property set to 'someone-else'")


def test_header_order_and_duplicates_survive(broker, conn, ch, names):
    """The properties are passed on as published: table key order, and even a key repeated on
    the wire (RabbitMQ keeps both)."""
    queue = names()
    ch.queue_declare(queue)
    headers = {"zeta": 1, "alpha": 2, "mid": {"z": 1, "a": 2}, "last": "x"}
    ch.basic_publish("", queue, b"x", pika.BasicProperties(headers=headers))
    _, props, _ = get_one(ch, queue)
    assert list(props.headers) == ["zeta", "alpha", "mid", "last"]
    assert list(props.headers["mid"]) == ["z", "a"]

    table = shortstr("k") + b"I" + struct.pack("!i", 1) + shortstr("k") + b"I" + struct.pack("!i", 2)
    raw_props = struct.pack("!I", len(table)) + table
    with RawConnection(broker.host, broker.port) as c:
        c.open()
        c.open_channel(1)
        c.send(method_frame(1, 60, 40, basic_publish_args("", queue)))
        c.send(content_header_frame(1, 60, 1, flags=0x2000, props=raw_props))
        c.send(body_frame(1, b"y"))
        c.send(method_frame(1, 60, 70, struct.pack("!H", 0) + shortstr(queue) + b"\x01"))
        get_ok = c.read_method()
        assert get_ok.method == (60, 71)
        header = c.read_method()
        # class, weight, body size, then the property flags and list exactly as sent
        assert header.payload[12:] == struct.pack("!H", 0x2000) + raw_props


def test_confirm_nack_when_one_of_several_queues_rejects(conn, ch, names):
    exchange = names("x")
    ch.exchange_declare(exchange, "fanout")
    roomy, full = names("roomy"), names("full")
    ch.queue_declare(roomy)
    ch.queue_declare(full, arguments={"x-max-length": 0, "x-overflow": "reject-publish"})
    ch.queue_bind(roomy, exchange)
    ch.queue_bind(full, exchange)
    ch.confirm_delivery()
    with pytest.raises(pika.exceptions.NackError):
        ch.basic_publish(exchange, "", b"m")
    # the queue with room still got its copy
    assert get_one(ch, roomy)[2] == b"m"


def test_large_body_and_large_headers(conn, ch):
    """An 8 MiB body (64 body frames) and a 100 KiB headers table come back intact."""
    queue = ch.queue_declare("", exclusive=True).method.queue
    body = bytes(random.Random(5).getrandbits(8) for _ in range(1024)) * 8192
    headers = {f"k{i}": "v" * 100 for i in range(1000)}
    ch.confirm_delivery()
    ch.basic_publish("", queue, body, pika.BasicProperties(headers=headers))
    _, props, got = get_one(ch, queue)
    assert got == body
    assert props.headers == headers


def test_many_channels_on_one_connection(conn, ch):
    queue = ch.queue_declare("", exclusive=True).method.queue
    channels = [conn.channel() for _ in range(300)]
    for i, c in enumerate(channels):
        c.confirm_delivery()
        c.basic_publish("", queue, str(i).encode())
    assert message_count(ch, queue) == 300
    for c in channels:
        c.close()


def test_unicode_queue_name_of_254_bytes(conn, ch):
    name = "é" * 127  # a shortstr holds at most 255 bytes
    ch.queue_declare(name, exclusive=True)
    ch.basic_publish("", name, b"u")
    assert get_one(ch, name)[2] == b"u"


def test_tx_returns_come_at_commit_and_nacks_are_transactional(conn, ch):
    returns = []
    ch.add_on_return_callback(lambda _ch, _method, _props, body: returns.append(body))
    ch.tx_select()
    ch.basic_publish("amq.direct", "mooring-test.nowhere", b"returned", mandatory=True)
    conn.process_data_events(time_limit=0.3)
    assert returns == [], "basic.return before tx.commit"
    ch.tx_commit()
    deadline = time.monotonic() + 5
    while not returns:
        assert time.monotonic() < deadline, "no basic.return after tx.commit"
        conn.process_data_events(time_limit=0.05)
    assert returns == [b"returned"]

    queue = ch.queue_declare("", exclusive=True).method.queue
    ch.basic_publish("", queue, b"a")
    ch.tx_commit()
    method, _, _ = get_one(ch, queue, auto_ack=False)
    ch.basic_nack(method.delivery_tag, requeue=True)
    ch.tx_rollback()
    assert message_count(ch, queue) == 0  # the nack was rolled back: still unacked
    ch.basic_nack(method.delivery_tag, requeue=True)
    ch.tx_commit()
    assert message_count(ch, queue) == 1
