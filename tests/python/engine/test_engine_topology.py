"""Exchanges, bindings and queue lifecycles."""

import struct

import pika
import pytest

from engine_helpers import Collector, drain, expect_channel_error, get_one, message_count, wait_count
from engine_raw import RawConnection, method_frame, queue_declare_args, shortstr


def queue_exists(conn, queue):
    probe = conn.channel()
    try:
        probe.queue_declare(queue, passive=True)
    except pika.exceptions.ChannelClosedByBroker as e:
        if e.reply_code == 405:
            return True  # exists, exclusive to another connection
        assert e.reply_code == 404, e
        return False
    probe.close()
    return True


def wait_gone(conn, queue, timeout=5.0):
    import time

    deadline = time.monotonic() + timeout
    while queue_exists(conn, queue):
        assert time.monotonic() < deadline, f"queue {queue} still exists after {timeout}s"
        time.sleep(0.05)


# --- exchanges -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,kind",
    [
        ("amq.direct", "direct"),
        ("amq.fanout", "fanout"),
        ("amq.topic", "topic"),
        ("amq.headers", "headers"),
        ("amq.match", "headers"),
    ],
)
def test_predeclared_exchanges(conn, ch, names, name, kind):
    ch.exchange_declare(name, passive=True)
    ch.exchange_declare(name, kind, durable=True)  # equivalent redeclare is allowed
    queue = names()
    ch.queue_declare(queue)
    ch.queue_bind(queue, name, "k", arguments={"x-match": "all"} if kind == "headers" else None)
    ch.basic_publish(name, "k", b"via " + name.encode())
    assert get_one(ch, queue)[2] == b"via " + name.encode()


def test_default_exchange_cannot_be_bound_or_deleted(conn, ch, names):
    queue = names()
    ch.queue_declare(queue)
    expect_channel_error(
        ch,
        lambda: ch.queue_bind(queue, "", "k"),
        403,
        "ACCESS_REFUSED - operation not permitted on the default exchange",
    )
    other = conn.channel()
    expect_channel_error(
        other,
        lambda: other.exchange_delete(""),
        403,
        "ACCESS_REFUSED - operation not permitted on the default exchange",
    )


def test_reserved_amq_prefix(conn, ch, names):
    expect_channel_error(
        ch,
        lambda: ch.exchange_declare("amq.mooring-test", "direct"),
        403,
        "ACCESS_REFUSED - exchange name 'amq.mooring-test' contains reserved prefix 'amq.*'",
    )
    other = conn.channel()
    expect_channel_error(
        other,
        lambda: other.queue_declare("amq.mooring-test"),
        403,
        "ACCESS_REFUSED - queue name 'amq.mooring-test' contains reserved prefix 'amq.*'",
    )


def test_exchange_to_exchange_binding(conn, ch, names):
    upstream, downstream = names("up"), names("down")
    ch.exchange_declare(upstream, "topic")
    ch.exchange_declare(downstream, "direct")
    ch.exchange_bind(destination=downstream, source=upstream, routing_key="orders.*")
    queue = names()
    ch.queue_declare(queue)
    ch.queue_bind(queue, downstream, "orders.new")
    ch.basic_publish(upstream, "orders.new", b"routed through two exchanges")
    ch.basic_publish(upstream, "orders.old", b"matches e2e but not the queue binding")
    ch.basic_publish(upstream, "invoices.new", b"no e2e match")
    assert get_one(ch, queue)[2] == b"routed through two exchanges"
    ch.exchange_unbind(destination=downstream, source=upstream, routing_key="orders.*")
    ch.basic_publish(upstream, "orders.new", b"after unbind")
    ch.basic_publish(downstream, "orders.new", b"direct to downstream")
    assert get_one(ch, queue)[2] == b"direct to downstream"
    assert ch.basic_get(queue)[0] is None


def test_exchange_binding_cycle_delivers_once(conn, ch, names):
    a, b = names("a"), names("b")
    ch.exchange_declare(a, "fanout")
    ch.exchange_declare(b, "fanout")
    ch.exchange_bind(destination=b, source=a)
    ch.exchange_bind(destination=a, source=b)
    queue = names()
    ch.queue_declare(queue)
    ch.queue_bind(queue, a)
    ch.queue_bind(queue, b)
    ch.confirm_delivery()  # once confirmed, every copy is enqueued
    ch.basic_publish(a, "", b"once")
    assert get_one(ch, queue)[2] == b"once"
    wait_count(ch, queue, 0)


def test_alternate_exchange(conn, ch, names):
    main, alternate = names("main"), names("ae")
    ch.exchange_declare(alternate, "fanout")
    ch.exchange_declare(main, "direct", arguments={"alternate-exchange": alternate})
    routed, unrouted = names("routed"), names("unrouted")
    ch.queue_declare(routed)
    ch.queue_declare(unrouted)
    ch.queue_bind(routed, main, "known")
    ch.queue_bind(unrouted, alternate)
    ch.confirm_delivery()
    ch.basic_publish(main, "known", b"normal")
    # routed via the alternate exchange counts as routed: no basic.return for mandatory
    ch.basic_publish(main, "unknown", b"to alternate", mandatory=True)
    assert get_one(ch, routed)[2] == b"normal"
    _, props, body = get_one(ch, unrouted)
    assert body == b"to alternate"
    assert ch.basic_get(routed)[0] is None


def test_alternate_exchange_missing_still_returns(conn, ch, names):
    main = names("main")
    ch.exchange_declare(main, "direct", arguments={"alternate-exchange": names("missing-ae")})
    ch.confirm_delivery()
    with pytest.raises(pika.exceptions.UnroutableError):
        ch.basic_publish(main, "unknown", b"x", mandatory=True)


def test_headers_exchange_all_and_any(conn, ch, names):
    exchange = names("h")
    ch.exchange_declare(exchange, "headers")
    q_all, q_any, q_default = names("all"), names("any"), names("default")
    for q in (q_all, q_any, q_default):
        ch.queue_declare(q)
    ch.queue_bind(q_all, exchange, arguments={"x-match": "all", "format": "pdf", "type": "report"})
    ch.queue_bind(q_any, exchange, arguments={"x-match": "any", "format": "pdf", "type": "log"})
    ch.queue_bind(q_default, exchange, arguments={"format": "zip"})  # x-match defaults to all
    messages = {
        "pdf-report": {"format": "pdf", "type": "report"},
        "pdf-only": {"format": "pdf"},
        "log-only": {"type": "log"},
        "zip-extra": {"format": "zip", "other": 1},
        "none": {},
        "wrong-value": {"format": "PDF", "type": "report"},
    }
    for name, headers in messages.items():
        ch.basic_publish(exchange, "ignored", name.encode(), pika.BasicProperties(headers=headers))
    assert [b for _, _, b in drain_when(ch, q_all, 1)] == [b"pdf-report"]
    assert [b for _, _, b in drain_when(ch, q_any, 3)] == [b"pdf-report", b"pdf-only", b"log-only"]
    assert [b for _, _, b in drain_when(ch, q_default, 1)] == [b"zip-extra"]


def test_headers_exchange_x_match_any_with_x_headers(conn, ch, names):
    """Headers starting with x- are ignored when matching (RabbitMQ; any-with-x/all-with-x
    exist from 3.10 to include them)."""
    exchange = names("h")
    ch.exchange_declare(exchange, "headers")
    queue = names()
    ch.queue_declare(queue)
    ch.queue_bind(queue, exchange, arguments={"x-match": "all", "x-custom": "1"})
    ch.basic_publish(exchange, "", b"no x-custom", pika.BasicProperties(headers={}))
    assert get_one(ch, queue)[2] == b"no x-custom"


def drain_when(ch, queue, n):
    wait_count(ch, queue, n)
    return drain(ch, queue)


def test_internal_exchange_refuses_publish(conn, ch, names):
    exchange = names("internal")
    ch.exchange_declare(exchange, "fanout", internal=True)
    ch.basic_publish(exchange, "", b"x")
    expect_channel_error(
        ch,
        lambda: ch.exchange_declare(exchange, passive=True),
        403,
        f"ACCESS_REFUSED - cannot publish to internal exchange '{exchange}' in vhost '/'",
    )


def test_publish_to_missing_exchange(conn, ch, names):
    missing = names("x")
    ch.basic_publish(missing, "", b"x")
    expect_channel_error(
        ch,
        lambda: ch.queue_declare("", exclusive=True),
        404,
        f"NOT_FOUND - no exchange '{missing}' in vhost '/'",
    )
    assert conn.is_open


def test_exchange_delete_if_unused(conn, ch, names):
    exchange, queue = names("x"), names()
    ch.exchange_declare(exchange, "fanout")
    ch.queue_declare(queue)
    ch.queue_bind(queue, exchange)
    expect_channel_error(
        ch,
        lambda: ch.exchange_delete(exchange, if_unused=True),
        406,
        f"PRECONDITION_FAILED - exchange '{exchange}' in vhost '/' in use",
    )
    ch = conn.channel()
    ch.queue_unbind(queue, exchange)
    ch.exchange_delete(exchange, if_unused=True)
    other = conn.channel()
    expect_channel_error(other, lambda: other.exchange_declare(exchange, passive=True), 404, "NOT_FOUND")


def test_bind_to_missing_exchange_or_queue(conn, ch, names):
    queue, exchange = names(), names("x")
    ch.queue_declare(queue)
    expect_channel_error(
        ch,
        lambda: ch.queue_bind(queue, exchange, "k"),
        404,
        f"NOT_FOUND - no exchange '{exchange}' in vhost '/'",
    )
    ch = conn.channel()
    ch.exchange_declare(exchange, "direct")
    missing = names()
    expect_channel_error(
        ch,
        lambda: ch.queue_bind(missing, exchange, "k"),
        404,
        f"NOT_FOUND - no queue '{missing}' in vhost '/'",
    )


def test_auto_delete_exchange(conn, ch, names):
    exchange, queue = names("x"), names()
    ch.exchange_declare(exchange, "fanout", auto_delete=True)
    ch.queue_declare(queue)
    ch.queue_bind(queue, exchange)
    ch.queue_unbind(queue, exchange)  # last binding gone -> exchange gone
    other = conn.channel()
    expect_channel_error(other, lambda: other.exchange_declare(exchange, passive=True), 404, "NOT_FOUND")


# --- queues -----------------------------------------------------------------------------------


def test_server_named_queue(conn, ch):
    first = ch.queue_declare("", exclusive=True).method
    second = ch.queue_declare("", exclusive=True).method
    assert first.queue.startswith("amq.gen-") and second.queue.startswith("amq.gen-")
    assert first.queue != second.queue
    assert (first.message_count, first.consumer_count) == (0, 0)
    ch.basic_publish("", first.queue, b"x")
    assert get_one(ch, first.queue)[2] == b"x"


def test_exclusive_queue_lifecycle(broker, names):
    """Exclusive queues belong to their connection: others get 405 RESOURCE_LOCKED, and the
    queue is deleted when its connection closes."""
    queue = names()
    owner, other = broker.connect(), broker.connect()
    try:
        owner.channel().queue_declare(queue, exclusive=True)
        och = other.channel()
        expect_channel_error(
            och,
            lambda: och.queue_declare(queue, passive=True),
            405,
            f"RESOURCE_LOCKED - cannot obtain exclusive access to locked queue '{queue}' in vhost '/'",
        )
        och = other.channel()
        expect_channel_error(
            och,
            lambda: och.basic_consume(queue, lambda *a: None),
            405,
            "RESOURCE_LOCKED - cannot obtain exclusive access to locked queue",
        )
        och = other.channel()
        expect_channel_error(och, lambda: och.queue_delete(queue), 405, "RESOURCE_LOCKED")
        owner.close()
        wait_gone(other, queue)
    finally:
        for c in (owner, other):
            if c.is_open:
                c.close()


def test_auto_delete_queue_lifecycle(conn, ch, names):
    """An auto-delete queue lives until its last consumer goes, not before it had one."""
    queue = names()
    ch.queue_declare(queue, auto_delete=True)
    ch.basic_publish("", queue, b"waiting")
    assert queue_exists(conn, queue)
    first = ch.basic_consume(queue, lambda *a: None, auto_ack=True)
    second = ch.basic_consume(queue, lambda *a: None, auto_ack=True)
    ch.basic_cancel(first)
    assert queue_exists(conn, queue)
    ch.basic_cancel(second)
    wait_gone(conn, queue)


def test_queue_delete_if_empty_and_if_unused(conn, ch, names):
    queue = names()
    ch.queue_declare(queue)
    ch.basic_publish("", queue, b"x")
    wait_count(ch, queue, 1)
    expect_channel_error(
        ch,
        lambda: ch.queue_delete(queue, if_empty=True),
        406,
        f"PRECONDITION_FAILED - queue '{queue}' in vhost '/' not empty",
    )
    ch = conn.channel()
    ch.basic_consume(queue, lambda *a: None)
    other = conn.channel()
    expect_channel_error(
        other,
        lambda: other.queue_delete(queue, if_unused=True),
        406,
        f"PRECONDITION_FAILED - queue '{queue}' in vhost '/' in use",
    )
    other = conn.channel()
    ok = other.queue_delete(queue).method
    assert ok.message_count in (0, 1)  # the consumer may hold it unacked
    assert not queue_exists(conn, queue)


def test_queue_delete_reports_message_count(conn, ch, names):
    queue = names()
    ch.queue_declare(queue)
    for _ in range(4):
        ch.basic_publish("", queue, b"x")
    wait_count(ch, queue, 4)
    assert ch.queue_delete(queue).method.message_count == 4


def test_purge(conn, ch, names):
    queue = names()
    ch.queue_declare(queue)
    for _ in range(5):
        ch.basic_publish("", queue, b"x")
    wait_count(ch, queue, 5)
    assert ch.queue_purge(queue).method.message_count == 5
    assert message_count(ch, queue) == 0


def test_purge_keeps_unacked(conn, ch, names):
    queue = names()
    ch.queue_declare(queue)
    for i in range(3):
        ch.basic_publish("", queue, str(i).encode())
    method, _, _ = get_one(ch, queue, auto_ack=False)
    other = conn.channel()
    assert other.queue_purge(queue).method.message_count == 2
    ch.basic_reject(method.delivery_tag, requeue=True)
    assert get_one(other, queue)[2] == b"0"


def test_unbind_then_no_delivery(conn, ch, names):
    exchange, queue = names("x"), names()
    ch.exchange_declare(exchange, "direct")
    ch.queue_declare(queue)
    ch.queue_bind(queue, exchange, "k")
    ch.queue_bind(queue, exchange, "k")  # idempotent
    ch.confirm_delivery()
    ch.basic_publish(exchange, "k", b"1")
    ch.queue_unbind(queue, exchange, "k")
    ch.basic_publish(exchange, "k", b"2")
    assert get_one(ch, queue)[2] == b"1"
    wait_count(ch, queue, 0)


def test_queue_with_quorum_type_accepted(conn, ch, names):
    queue = names()
    ch.queue_declare(queue, durable=True, arguments={"x-queue-type": "quorum"})
    ch.confirm_delivery()
    ch.basic_publish("", queue, b"q", pika.BasicProperties(delivery_mode=2))
    collector = Collector(conn, ch, queue)
    method, _, body = collector.wait(1)[0]
    assert body == b"q"
    ch.basic_ack(method.delivery_tag)


def test_quorum_queue_must_be_durable(conn, ch, names):
    expect_channel_error(
        ch,
        lambda: ch.queue_declare(names(), durable=False, arguments={"x-queue-type": "quorum"}),
        406,
        "PRECONDITION_FAILED - invalid property 'non-durable' for queue",
    )


def test_redeclare_exclusive_queue_as_non_exclusive_is_resource_locked(conn, ch, names):
    queue = names()
    ch.queue_declare(queue, exclusive=True)
    expect_channel_error(
        ch,
        lambda: ch.queue_declare(queue, exclusive=False),
        405,
        f"RESOURCE_LOCKED - cannot obtain exclusive access to locked queue '{queue}' in vhost '/'",
    )


def test_predeclared_exchange_with_another_type_is_inequivalent(conn, ch):
    expect_channel_error(
        ch,
        lambda: ch.exchange_declare("amq.direct", "fanout"),
        406,
        "PRECONDITION_FAILED - inequivalent arg 'type' for exchange 'amq.direct' in vhost '/'",
    )


def test_topic_edge_cases(conn, ch, names):
    """Empty words and the empty routing key, as RabbitMQ's trie matches them: the empty key
    has no words, so patterns needing one word do not match it."""
    exchange = names("t")
    ch.exchange_declare(exchange, "topic")
    patterns = ["#.#", "a.#.#.b", "*.#", "#.*", "a..b", "", "#.a", "*"]
    queues = {}
    for pattern in patterns:
        q = ch.queue_declare("", exclusive=True).method.queue
        ch.queue_bind(q, exchange, pattern)
        queues[pattern] = q
    keys = ["a", "a.b", "a..b", "", "b.a", "a.x.y.b", "a.b.a"]
    ch.confirm_delivery()
    for key in keys:
        ch.basic_publish(exchange, key, key.encode() or b"<empty>")
    expected = {
        "#.#": ["a", "a.b", "a..b", "<empty>", "b.a", "a.x.y.b", "a.b.a"],
        "a.#.#.b": ["a.b", "a..b", "a.x.y.b"],
        "*.#": ["a", "a.b", "a..b", "b.a", "a.x.y.b", "a.b.a"],
        "#.*": ["a", "a.b", "a..b", "b.a", "a.x.y.b", "a.b.a"],
        "a..b": ["a..b"],
        "": ["<empty>"],
        "#.a": ["a", "b.a", "a.b.a"],
        "*": ["a"],
    }
    got = {p: [b.decode() for _, _, b in drain(ch, q)] for p, q in queues.items()}
    assert got == expected


def test_sender_selected_distribution_cc_and_bcc(conn, ch):
    """CC and BCC headers add routing keys; BCC is removed before delivery."""
    main, cc, bcc = (ch.queue_declare("", exclusive=True).method.queue for _ in range(3))
    ch.confirm_delivery()
    ch.basic_publish("", main, b"m", pika.BasicProperties(headers={"CC": [cc], "BCC": [bcc], "other": 1}))
    for q in (main, cc, bcc):
        _, props, body = get_one(ch, q)
        assert body == b"m"
        assert props.headers == {"CC": [cc], "other": 1}, q


def test_abrupt_disconnect_deletes_exclusive_queue_and_requeues_unacked(broker, conn, ch, names):
    """A client that vanishes without connection.close (a dropped socket) loses its exclusive
    queues, and its unacked deliveries go back to their queue, flagged redelivered."""
    shared = names()
    ch.queue_declare(shared)
    ch.confirm_delivery()
    ch.basic_publish("", shared, b"held")
    exclusive = names()
    with RawConnection(broker.host, broker.port) as c:
        c.open()
        c.open_channel(1)
        c.send(method_frame(1, 50, 10, queue_declare_args(exclusive, exclusive=True)))
        c.expect((50, 11))
        c.send(method_frame(1, 60, 70, struct.pack("!H", 0) + shortstr(shared) + b"\x00"))  # get, ack later
        c.expect((60, 71))
        assert queue_exists(conn, exclusive)
    # the socket is closed here, without any AMQP goodbye
    wait_gone(conn, exclusive)
    method, _, body = get_one(ch, shared)
    assert body == b"held" and method.redelivered


def test_headers_exchange_with_x_modes_void_values_and_empty_bindings(conn, ch, names):
    """RabbitMQ 3.10: any-with-x/all-with-x also match x- headers; a void binding value
    matches on presence; an empty all-binding matches everything, an empty any-binding
    nothing."""
    exchange = names("h")
    ch.exchange_declare(exchange, "headers")
    bindings = {
        "any-with-x": {"x-match": "any-with-x", "x-k": "1"},
        "all-with-x": {"x-match": "all-with-x", "x-k": "1", "a": "1"},
        "void-any": {"x-match": "any", "flag": None},
        "all-empty": {"x-match": "all"},
        "any-empty": {"x-match": "any"},
    }
    queues = {}
    for name, args in bindings.items():
        queues[name] = ch.queue_declare("", exclusive=True).method.queue
        ch.queue_bind(queues[name], exchange, arguments=args)
    ch.confirm_delivery()
    messages = {"xk": {"x-k": "1"}, "xk-a": {"x-k": "1", "a": "1"}, "flag-void": {"flag": None}, "flag-1": {"flag": "1"}, "none": {}}
    for body, headers in messages.items():
        ch.basic_publish(exchange, "", body.encode(), pika.BasicProperties(headers=headers))
    got = {name: [b.decode() for _, _, b in drain(ch, q)] for name, q in queues.items()}
    assert got == {
        "any-with-x": ["xk", "xk-a"],
        "all-with-x": ["xk-a"],
        "void-any": ["flag-void", "flag-1"],
        "all-empty": ["xk", "xk-a", "flag-void", "flag-1", "none"],
        "any-empty": [],
    }


def test_headers_binding_with_invalid_x_match(conn, ch, names):
    exchange, queue = names("h"), names()
    ch.exchange_declare(exchange, "headers")
    ch.queue_declare(queue)
    expect_channel_error(
        ch,
        lambda: ch.queue_bind(queue, exchange, arguments={"x-match": "bogus"}),
        406,
        "PRECONDITION_FAILED - Invalid x-match field value",
    )
