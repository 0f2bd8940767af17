"""Queue arguments: TTL, dead-lettering, length limits, expiry, and argument equivalence."""

import datetime
import time

import pika
import pytest

from engine_helpers import Collector, drain, expect_channel_error, get_one, message_count, wait_count


def test_queue_message_ttl_expires_messages(conn, ch, names):
    queue = names()
    ch.queue_declare(queue, arguments={"x-message-ttl": 500})
    ch.confirm_delivery()  # once confirmed, the message is surely in the queue
    ch.basic_publish("", queue, b"short-lived")
    assert message_count(ch, queue) == 1
    wait_count(ch, queue, 0)
    assert ch.basic_get(queue)[0] is None


def test_zero_ttl_delivers_only_to_waiting_consumers(conn, ch, names):
    """x-message-ttl 0: delivered if a consumer can take it at once, else dropped."""
    queue = names()
    ch.queue_declare(queue, arguments={"x-message-ttl": 0})
    ch.confirm_delivery()  # counts below then see every publish
    ch.basic_publish("", queue, b"nobody listening")
    wait_count(ch, queue, 0)
    collector = Collector(conn, ch, queue, auto_ack=True)
    ch.basic_publish("", queue, b"taken at once")
    assert collector.wait(1)[0][2] == b"taken at once"


def test_per_message_expiration(conn, ch, names):
    queue = names()
    ch.queue_declare(queue)
    ch.confirm_delivery()  # counts below then see every publish
    ch.basic_publish("", queue, b"expires", pika.BasicProperties(expiration="150"))
    ch.basic_publish("", queue, b"stays")
    wait_count(ch, queue, 1)
    _, props, body = get_one(ch, queue)
    assert body == b"stays"


def test_per_message_expiration_lower_of_two(conn, ch, names):
    """With both a queue TTL and a per-message expiration, the lower one wins."""
    queue = names()
    ch.queue_declare(queue, arguments={"x-message-ttl": 60_000})
    ch.confirm_delivery()  # counts below then see every publish
    ch.basic_publish("", queue, b"short", pika.BasicProperties(expiration="100"))
    wait_count(ch, queue, 0)


def test_invalid_expiration_is_refused(conn, ch, names):
    queue = names()
    ch.queue_declare(queue)
    expect_channel_error(
        ch,
        lambda: (
            ch.basic_publish("", queue, b"x", pika.BasicProperties(expiration="soon")),
            ch.queue_declare(queue, passive=True),
        ),
        406,
        "PRECONDITION_FAILED - invalid expiration",
    )


def dlx_pair(ch, names, **queue_args):
    """A source queue dead-lettering into a fanout exchange bound to a `dead` queue."""
    dlx, source, dead = names("dlx"), names("src"), names("dead")
    ch.exchange_declare(dlx, "fanout")
    ch.queue_declare(dead)
    ch.queue_bind(dead, dlx)
    ch.queue_declare(source, arguments={"x-dead-letter-exchange": dlx, **queue_args})
    return dlx, source, dead


def assert_x_death(props, queue, reason, routing_keys, count=1, exchange=""):
    headers = props.headers
    (death,) = [d for d in headers["x-death"] if d["queue"] == queue]
    assert death["reason"] == reason
    assert death["count"] == count
    assert death["exchange"] == exchange
    assert death["routing-keys"] == routing_keys
    assert isinstance(death["time"], datetime.datetime)
    assert headers["x-first-death-queue"] == queue
    assert headers["x-first-death-reason"] == reason
    assert headers["x-first-death-exchange"] == exchange
    return death


def test_dead_letter_on_ttl_expiry_with_x_death(conn, ch, names):
    dlx, source, dead = dlx_pair(ch, names, **{"x-message-ttl": 100})
    ch.basic_publish("", source, b"late", pika.BasicProperties(headers={"app": "kept"}, message_id="m1"))
    _, props, body = get_one(ch, dead)
    assert body == b"late"
    assert props.message_id == "m1"
    assert props.headers["app"] == "kept"
    assert_x_death(props, source, "expired", [source])


def test_dead_letter_per_message_expiration_records_original(conn, ch, names):
    dlx, source, dead = dlx_pair(ch, names)
    ch.basic_publish("", source, b"late", pika.BasicProperties(expiration="100"))
    _, props, _ = get_one(ch, dead)
    death = assert_x_death(props, source, "expired", [source])
    assert death["original-expiration"] == "100"
    assert props.expiration is None  # removed so the dead letter does not expire again


def test_dead_letter_on_reject_and_nack(conn, ch, names):
    dlx, source, dead = dlx_pair(ch, names)
    ch.basic_publish("", source, b"rejected")
    ch.basic_publish("", source, b"nacked")
    method, _, _ = get_one(ch, source, auto_ack=False)
    ch.basic_reject(method.delivery_tag, requeue=False)
    method, _, _ = get_one(ch, source, auto_ack=False)
    ch.basic_nack(method.delivery_tag, requeue=False)
    first = get_one(ch, dead)
    second = get_one(ch, dead)
    assert [first[2], second[2]] == [b"rejected", b"nacked"]
    assert_x_death(first[1], source, "rejected", [source])
    assert_x_death(second[1], source, "rejected", [source])


def test_dead_letter_routing_key_override(conn, ch, names):
    dlx, target = names("dlx"), names("target")
    source = names("src")
    ch.exchange_declare(dlx, "direct")
    ch.queue_declare(target)
    ch.queue_bind(target, dlx, "dead-key")
    ch.queue_declare(
        source,
        arguments={"x-dead-letter-exchange": dlx, "x-dead-letter-routing-key": "dead-key", "x-message-ttl": 50},
    )
    ch.basic_publish("", source, b"m", pika.BasicProperties(headers={"CC": ["also"]}))
    _, props, body = get_one(ch, target)
    assert body == b"m"
    assert_x_death(props, source, "expired", [source, "also"])


def test_dead_letter_to_default_exchange_and_count_increments(conn, ch, names):
    """A cycle through two queues via the default exchange: the x-death entry for each queue
    counts how often the message died there."""
    a, b = names("a"), names("b")
    ch.queue_declare(a, arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": b})
    ch.queue_declare(b, arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": a})
    ch.basic_publish("", a, b"bounce")
    for _ in range(3):
        method, _, _ = get_one(ch, a, auto_ack=False)
        ch.basic_reject(method.delivery_tag, requeue=False)
        method, _, _ = get_one(ch, b, auto_ack=False)
        ch.basic_reject(method.delivery_tag, requeue=False)
    _, props, _ = get_one(ch, a)
    deaths = {d["queue"]: d for d in props.headers["x-death"]}
    assert deaths[a]["count"] == 3 and deaths[b]["count"] == 3
    assert props.headers["x-first-death-queue"] == a
    # the most recent death comes first
    assert props.headers["x-death"][0]["queue"] == b


def test_dead_letter_on_max_length_drop_head(conn, ch, names):
    dlx, source, dead = dlx_pair(ch, names, **{"x-max-length": 1})
    ch.basic_publish("", source, b"first")
    ch.basic_publish("", source, b"second")
    _, props, body = get_one(ch, dead)
    assert body == b"first"
    assert_x_death(props, source, "maxlen", [source])
    assert get_one(ch, source)[2] == b"second"


def test_max_length_drop_head(conn, ch, names):
    queue = names()
    ch.queue_declare(queue, arguments={"x-max-length": 3})
    ch.confirm_delivery()  # counts below then see every publish
    for i in range(10):
        ch.basic_publish("", queue, str(i).encode())
    wait_count(ch, queue, 3)
    assert [b for _, _, b in drain(ch, queue)] == [b"7", b"8", b"9"]


def test_max_length_reject_publish_keeps_old_messages(conn, ch, names):
    queue = names()
    ch.queue_declare(queue, arguments={"x-max-length": 3, "x-overflow": "reject-publish"})
    for i in range(10):
        ch.basic_publish("", queue, str(i).encode())
    wait_count(ch, queue, 3)
    assert [b for _, _, b in drain(ch, queue)] == [b"0", b"1", b"2"]


def test_reject_publish_does_not_dead_letter(conn, ch, names):
    dlx, source, dead = dlx_pair(ch, names, **{"x-max-length": 1, "x-overflow": "reject-publish"})
    ch.confirm_delivery()
    ch.basic_publish("", source, b"in")
    with pytest.raises(pika.exceptions.NackError):
        ch.basic_publish("", source, b"out")
    assert message_count(ch, dead) == 0


def test_max_length_bytes(conn, ch, names):
    """Counts body bytes only: 3 bodies of 10 bytes fit in 30, a fourth drops the head."""
    queue = names()
    ch.queue_declare(queue, arguments={"x-max-length-bytes": 30})
    ch.confirm_delivery()  # counts below then see every publish
    for i in range(4):
        ch.basic_publish("", queue, str(i).encode() * 10, pika.BasicProperties(headers={"big": "x" * 500}))
    wait_count(ch, queue, 3)
    assert [b[:1] for _, _, b in drain(ch, queue)] == [b"1", b"2", b"3"]


def test_max_length_bytes_reject_publish(conn, ch, names):
    queue = names()
    ch.queue_declare(queue, arguments={"x-max-length-bytes": 10, "x-overflow": "reject-publish"})
    ch.confirm_delivery()
    ch.basic_publish("", queue, b"0123456789")
    with pytest.raises(pika.exceptions.NackError):
        ch.basic_publish("", queue, b"x")
    assert [b for _, _, b in drain(ch, queue)] == [b"0123456789"]


def test_max_length_zero_drops_everything(conn, ch, names):
    """x-max-length 0 drops everything that cannot be delivered at once."""
    queue = names()
    ch.queue_declare(queue, arguments={"x-max-length": 0})
    ch.confirm_delivery()  # counts below then see every publish
    ch.basic_publish("", queue, b"dropped")
    wait_count(ch, queue, 0)


def test_x_expires_deletes_unused_queue(conn, ch, names):
    """A passive declare counts as use and restarts the timer (as in RabbitMQ), so the probes
    are spaced further apart than the expiry."""
    queue = names()
    ch.queue_declare(queue, arguments={"x-expires": 300})
    time.sleep(0.5)
    deadline = time.monotonic() + 5
    while True:
        probe = conn.channel()
        try:
            probe.queue_declare(queue, passive=True)
        except pika.exceptions.ChannelClosedByBroker as e:
            assert e.reply_code == 404
            break
        probe.close()
        assert time.monotonic() < deadline, "queue with x-expires 300 ms still exists after 5 s"
        time.sleep(0.5)


def test_x_expires_not_while_consumed(conn, ch, names):
    queue = names()
    ch.queue_declare(queue, arguments={"x-expires": 200})
    Collector(conn, ch, queue)
    conn.process_data_events(time_limit=0.6)
    assert ch.queue_declare(queue, passive=True).method.queue == queue


def test_passive_declare(conn, ch, names):
    queue, exchange = names(), names("x")
    ch.queue_declare(queue)
    ok = conn.channel().queue_declare(queue, passive=True).method
    assert ok.queue == queue
    ch.exchange_declare(exchange, "topic")
    assert ch.exchange_declare(exchange, passive=True)
    missing = conn.channel()
    expect_channel_error(
        missing,
        lambda: missing.queue_declare(names(), passive=True),
        404,
        "NOT_FOUND - no queue",
    )
    missing = conn.channel()
    expect_channel_error(
        missing,
        lambda: missing.exchange_declare(names("x"), passive=True),
        404,
        "NOT_FOUND - no exchange",
    )
    assert conn.is_open


def test_passive_declare_counts(conn, ch, names):
    queue = names()
    ch.queue_declare(queue)
    for i in range(3):
        ch.basic_publish("", queue, str(i).encode())
    wait_count(ch, queue, 3)
    ok = ch.queue_declare(queue, passive=True).method
    assert (ok.message_count, ok.consumer_count) == (3, 0)
    other = conn.channel()
    other.basic_qos(prefetch_count=1)
    Collector(conn, other, queue).wait(1)
    ok = ch.queue_declare(queue, passive=True).method
    assert (ok.message_count, ok.consumer_count) == (2, 1)


@pytest.mark.parametrize(
    "first,second",
    [
        ({"durable": True}, {"durable": False}),
        ({"auto_delete": False}, {"auto_delete": True}),
        ({"arguments": {"x-message-ttl": 1000}}, {"arguments": {"x-message-ttl": 2000}}),
        ({"arguments": {"x-max-length": 5}}, {"arguments": {}}),
    ],
    ids=["durable", "auto-delete", "ttl", "max-length"],
)
def test_inequivalent_queue_redeclare(conn, ch, names, first, second):
    queue = names()
    ch.queue_declare(queue, **first)
    expect_channel_error(
        ch,
        lambda: ch.queue_declare(queue, **second),
        406,
        "PRECONDITION_FAILED - inequivalent arg",
    )
    # the original declaration stands, and an identical redeclare is fine
    again = conn.channel()
    assert again.queue_declare(queue, **first).method.queue == queue


def test_inequivalent_exchange_redeclare(conn, ch, names):
    exchange = names("x")
    ch.exchange_declare(exchange, "direct")
    expect_channel_error(
        ch,
        lambda: ch.exchange_declare(exchange, "fanout"),
        406,
        "PRECONDITION_FAILED - inequivalent arg 'type'",
    )
    again = conn.channel()
    again.exchange_declare(exchange, "direct")


@pytest.mark.parametrize(
    "arguments,text",
    [
        ({"x-message-ttl": -1}, "PRECONDITION_FAILED - invalid arg 'x-message-ttl'"),
        ({"x-max-length": "ten"}, "PRECONDITION_FAILED - invalid arg 'x-max-length'"),
        ({"x-overflow": "explode"}, "PRECONDITION_FAILED - invalid arg 'x-overflow'"),
        ({"x-expires": 0}, "PRECONDITION_FAILED - invalid arg 'x-expires'"),
        ({"x-queue-type": "nonsense"}, "PRECONDITION_FAILED - invalid arg 'x-queue-type'"),
        ({"x-queue-mode": "bogus"}, "PRECONDITION_FAILED - invalid arg 'x-queue-mode'"),
        ({"x-message-ttl": 2**40}, "PRECONDITION_FAILED - invalid arg 'x-message-ttl'"),
        ({"x-message-ttl": "100"}, "PRECONDITION_FAILED - invalid arg 'x-message-ttl'"),
        ({"x-max-length": True}, "PRECONDITION_FAILED - invalid arg 'x-max-length'"),
        ({"x-single-active-consumer": "yes"}, "PRECONDITION_FAILED - invalid arg 'x-single-active-consumer'"),
        ({"x-dead-letter-exchange": 5}, "PRECONDITION_FAILED - invalid "),
    ],
    ids=[
        "negative-ttl",
        "string-max-length",
        "unknown-overflow",
        "zero-expires",
        "unknown-type",
        "unknown-mode",
        "ttl-too-large",
        "string-ttl",
        "bool-max-length",
        "string-sac",
        "int-dlx",
    ],
)
def test_invalid_queue_arguments(conn, ch, names, arguments, text):
    expect_channel_error(ch, lambda: ch.queue_declare(names(), arguments=arguments), 406, text)
    assert conn.is_open


def test_dead_letter_cycle_of_expired_messages_is_dropped(conn, ch, names):
    """A message that expires back into the same queue would cycle forever: RabbitMQ detects
    the cycle (no rejection in it) and drops the message."""
    queue = names()
    ch.queue_declare(queue, arguments={"x-message-ttl": 50, "x-dead-letter-exchange": ""})
    ch.confirm_delivery()  # counts below then see every publish
    ch.basic_publish("", queue, b"cycle")
    wait_count(ch, queue, 0)
    time.sleep(0.3)  # the drop must be final, not one lap of the cycle
    assert message_count(ch, queue) == 0


def test_rejected_message_may_dead_letter_into_its_own_queue(conn, ch, names):
    queue = names()
    ch.queue_declare(queue, arguments={"x-dead-letter-exchange": ""})
    ch.basic_publish("", queue, b"again")
    method, _, _ = get_one(ch, queue, auto_ack=False)
    ch.basic_reject(method.delivery_tag, requeue=False)
    _, props, body = get_one(ch, queue)
    assert body == b"again"
    assert_x_death(props, queue, "rejected", [queue])


def test_requeued_message_past_its_ttl_expires(conn, ch, names):
    queue = names()
    ch.queue_declare(queue, arguments={"x-message-ttl": 300})
    ch.basic_publish("", queue, b"x")
    method, _, _ = get_one(ch, queue, auto_ack=False)
    time.sleep(0.5)  # held unacked past its TTL
    ch.basic_reject(method.delivery_tag, requeue=True)
    time.sleep(0.2)  # a requeued, unexpired message would be counted by now
    assert message_count(ch, queue) == 0
    assert ch.basic_get(queue)[0] is None


def test_dead_letter_routing_key_needs_an_exchange(conn, ch, names):
    expect_channel_error(
        ch,
        lambda: ch.queue_declare(names(), arguments={"x-dead-letter-routing-key": "k"}),
        406,
        "PRECONDITION_FAILED - invalid arg 'x-dead-letter-routing-key'",
    )


@pytest.mark.parametrize("limit", [{"x-max-length": 2}, {"x-max-length-bytes": 2}], ids=["length", "bytes"])
def test_max_length_counts_ready_messages_and_applies_on_requeue(conn, ch, names, limit):
    """The limit counts ready messages only, so unacked ones do not take room; when they are
    requeued the limit applies again and drops from the head (RabbitMQ 3.10)."""
    queue = names()
    ch.queue_declare(queue, arguments=limit)
    ch.confirm_delivery()
    for body in (b"1", b"2"):
        ch.basic_publish("", queue, body)
    held = [get_one(ch, queue, auto_ack=False)[0] for _ in range(2)]
    for body in (b"3", b"4", b"5"):
        ch.basic_publish("", queue, body)
    assert message_count(ch, queue) == 2  # 4 and 5 ready; 1 and 2 unacked
    ch.basic_nack(held[1].delivery_tag, multiple=True, requeue=True)
    time.sleep(0.1)
    assert [b for _, _, b in drain(ch, queue)] == [b"4", b"5"]


def test_max_length_drop_on_requeue_dead_letters(conn, ch, names):
    dlx, source, dead = dlx_pair(ch, names, **{"x-max-length": 1})
    ch.confirm_delivery()
    ch.basic_publish("", source, b"1")
    held, _, _ = get_one(ch, source, auto_ack=False)
    ch.basic_publish("", source, b"2")
    ch.basic_nack(held.delivery_tag, requeue=True)
    _, props, body = get_one(ch, dead)
    assert body == b"1"
    assert_x_death(props, source, "maxlen", [source])
    assert [b for _, _, b in drain(ch, source)] == [b"2"]


def test_zero_per_message_expiration_is_not_kept_for_later_consumers(conn, ch, names):
    queue = names()
    ch.queue_declare(queue)
    ch.confirm_delivery()
    ch.basic_publish("", queue, b"now or never", pika.BasicProperties(expiration="0"))
    collector = Collector(conn, ch, queue, auto_ack=True)
    ch.basic_publish("", queue, b"taken at once", pika.BasicProperties(expiration="0"))
    collector.wait(1)
    collector.settle(0.2)
    assert collector.bodies() == [b"taken at once"]


@pytest.mark.parametrize(
    "arguments",
    [
        {"x-overflow": "reject-publish-dlx"},
        {"x-queue-mode": "lazy"},
        {"x-queue-type": "classic"},
        {"x-unknown-argument": 1},
    ],
    ids=["reject-publish-dlx", "lazy", "classic", "unknown-ignored"],
)
def test_valid_queue_arguments_are_accepted(conn, ch, names, arguments):
    queue = names()
    ch.queue_declare(queue, arguments=arguments)
    ch.queue_declare(queue, arguments=arguments)  # and are equivalent to themselves


def test_invalid_alternate_exchange_type(conn, ch, names):
    expect_channel_error(
        ch,
        lambda: ch.exchange_declare(names("x"), "direct", arguments={"alternate-exchange": 5}),
        406,
        "PRECONDITION_FAILED - invalid type 'signedint' for arg 'alternate-exchange'",
    )


def test_reject_publish_dlx_nacks_and_dead_letters(conn, ch, names):
    """x-overflow reject-publish-dlx: the refused publish is nacked and also dead-lettered
    with reason maxlen."""
    dlx, source, dead = dlx_pair(ch, names, **{"x-max-length": 1, "x-overflow": "reject-publish-dlx"})
    ch.confirm_delivery()
    ch.basic_publish("", source, b"in")
    with pytest.raises(pika.exceptions.NackError):
        ch.basic_publish("", source, b"refused")
    _, props, body = get_one(ch, dead)
    assert body == b"refused"
    assert_x_death(props, source, "maxlen", [source])
    assert [b for _, _, b in drain(ch, source)] == [b"in"]


def test_x_death_entries_per_queue_and_reason_through_a_mixed_cycle(conn, ch, names):
    """a rejects into b, b's TTL expires back into a (a cycle with a rejection in it is not
    dropped); after two laps each (queue, reason) entry counts 2, newest first."""
    a, b = names("a"), names("b")
    ch.queue_declare(a, arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": b})
    ch.queue_declare(
        b, arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": a, "x-message-ttl": 100}
    )
    ch.confirm_delivery()
    ch.basic_publish("", a, b"lap")
    for _ in range(2):
        method, _, _ = get_one(ch, a, auto_ack=False)
        ch.basic_reject(method.delivery_tag, requeue=False)
    _, props, _ = get_one(ch, a)
    deaths = [(d["queue"], d["reason"], d["count"]) for d in props.headers["x-death"]]
    assert deaths == [(b, "expired", 2), (a, "rejected", 2)]
    assert props.headers["x-first-death-queue"] == a
    assert props.headers["x-first-death-reason"] == "rejected"
