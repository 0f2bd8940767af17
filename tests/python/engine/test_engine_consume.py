"""Consuming: get, acks, nacks and requeue, qos, cancel, single active consumer, recover."""

import threading
import time

import pika
import pytest

from engine_helpers import Collector, drain, expect_channel_error, expect_connection_error, get_one, message_count, wait_count


def fill(ch, queue, n, prefix="m"):
    for i in range(n):
        ch.basic_publish("", queue, f"{prefix}{i}".encode())


def test_basic_get_and_get_empty(conn, ch, names):
    queue = names()
    ch.queue_declare(queue)
    method, props, body = ch.basic_get(queue)
    assert method is None and body is None  # get-empty
    fill(ch, queue, 3)
    wait_count(ch, queue, 3)
    method, _, body = ch.basic_get(queue, auto_ack=True)
    assert body == b"m0"
    assert method.message_count == 2  # remaining after this one
    assert method.delivery_tag == 1 and not method.redelivered
    assert method.exchange == "" and method.routing_key == queue


def test_reject_and_nack_with_requeue_set_redelivered(conn, ch, names):
    queue = names()
    ch.queue_declare(queue)
    fill(ch, queue, 2)
    first, _, body = get_one(ch, queue, auto_ack=False)
    assert body == b"m0" and not first.redelivered
    ch.basic_reject(first.delivery_tag, requeue=True)
    again, _, body = get_one(ch, queue, auto_ack=False)
    # a requeued message goes back to its original position, ahead of m1
    assert body == b"m0" and again.redelivered
    ch.basic_nack(again.delivery_tag, requeue=True)
    third, _, body = get_one(ch, queue, auto_ack=False)
    assert body == b"m0" and third.redelivered
    ch.basic_ack(third.delivery_tag)
    method, _, body = get_one(ch, queue, auto_ack=False)
    assert body == b"m1" and not method.redelivered
    ch.basic_ack(method.delivery_tag)
    wait_count(ch, queue, 0)


def test_nack_multiple_requeues_in_order(conn, ch, names):
    queue = names()
    ch.queue_declare(queue)
    fill(ch, queue, 4)
    collector = Collector(conn, ch, queue)
    msgs = collector.wait(4)
    ch.basic_nack(msgs[2][0].delivery_tag, multiple=True, requeue=True)  # m0..m2 back
    collector.wait(7)
    redelivered = collector.messages[4:]
    assert [b for _, _, b in redelivered] == [b"m0", b"m1", b"m2"]
    assert all(m.redelivered for m, _, _ in redelivered)
    ch.basic_ack(collector.messages[-1][0].delivery_tag, multiple=True)
    collector.settle(0.2)
    assert len(collector.messages) == 7


def test_ack_multiple(conn, ch, names):
    queue = names()
    ch.queue_declare(queue)
    fill(ch, queue, 5)
    collector = Collector(conn, ch, queue)
    msgs = collector.wait(5)
    ch.basic_ack(msgs[2][0].delivery_tag, multiple=True)
    ch.basic_cancel(collector.tag)
    ch.close()  # the two unacked ones go back
    check = conn.channel()
    wait_count(check, queue, 2)
    got = drain(check, queue)
    assert [b for _, _, b in got] == [b"m3", b"m4"]
    assert all(m.redelivered for m, _, _ in got)


def test_unknown_delivery_tag_is_a_channel_error(conn, ch, names):
    queue = names()
    ch.queue_declare(queue)
    ch.basic_ack(99)
    expect_channel_error(
        ch, lambda: ch.queue_declare(queue, passive=True), 406, "PRECONDITION_FAILED - unknown delivery tag 99"
    )
    assert conn.is_open


def test_double_ack_is_a_channel_error(conn, ch, names):
    queue = names()
    ch.queue_declare(queue)
    fill(ch, queue, 1)
    method, _, _ = get_one(ch, queue, auto_ack=False)
    ch.basic_ack(method.delivery_tag)
    ch.basic_ack(method.delivery_tag)
    expect_channel_error(ch, lambda: ch.queue_declare(queue, passive=True), 406, "PRECONDITION_FAILED - unknown delivery tag")


def test_qos_per_consumer(conn, ch, names):
    """prefetch_count with global=false limits each consumer on the channel separately."""
    q1, q2 = names("a"), names("b")
    for q in (q1, q2):
        ch.queue_declare(q)
        fill(ch, q, 5)
    ch.basic_qos(prefetch_count=2, global_qos=False)
    a = Collector(conn, ch, q1)
    b = Collector(conn, ch, q2)
    a.wait(2)
    b.wait(2)
    a.settle(0.3)
    assert (len(a.messages), len(b.messages)) == (2, 2)
    ch.basic_ack(a.messages[0][0].delivery_tag)
    a.wait(3)
    a.settle(0.2)
    assert (len(a.messages), len(b.messages)) == (3, 2)


def test_qos_global_is_shared_by_the_channel(conn, ch, names):
    """RabbitMQ's meaning of global=true: one limit shared by every consumer of the channel;
    it applies on top of a per-consumer limit (set in the order RabbitMQ's documentation shows:
    per-consumer first)."""
    q1, q2 = names("a"), names("b")
    for q in (q1, q2):
        ch.queue_declare(q)
        fill(ch, q, 5)
    ch.basic_qos(prefetch_count=2, global_qos=False)
    ch.basic_qos(prefetch_count=3, global_qos=True)
    a = Collector(conn, ch, q1)
    b = Collector(conn, ch, q2)
    deliveries = lambda: len(a.messages) + len(b.messages)  # noqa: E731
    a.wait(1)
    a.settle(0.4)
    assert deliveries() == 3
    assert len(a.messages) <= 2 and len(b.messages) <= 2
    ch.basic_ack(a.messages[0][0].delivery_tag)
    a.settle(0.4)
    assert deliveries() == 4


def test_qos_prefetch_zero_is_unlimited(conn, ch, names):
    queue = names()
    ch.queue_declare(queue)
    fill(ch, queue, 50)
    ch.basic_qos(prefetch_count=0)
    Collector(conn, ch, queue).wait(50)


def test_consumer_cancel_stops_deliveries(conn, ch, names):
    queue = names()
    ch.queue_declare(queue)
    collector = Collector(conn, ch, queue, auto_ack=True)
    fill(ch, queue, 2, "before")
    collector.wait(2)
    ch.basic_cancel(collector.tag)
    fill(ch, queue, 2, "after")
    wait_count(ch, queue, 2)
    assert len(collector.messages) == 2


def test_server_sent_cancel_on_queue_delete(broker, names):
    """consumer_cancel_notify: deleting a queue cancels its consumers with basic.cancel."""
    queue = names()
    consumer_conn = broker.connect()
    admin = broker.connect()
    try:
        cch = consumer_conn.channel()
        cch.queue_declare(queue)
        cancelled = []
        cch.add_on_cancel_callback(lambda frame: cancelled.append(frame.method.consumer_tag))
        collector = Collector(consumer_conn, cch, queue)
        admin.channel().queue_delete(queue)
        for _ in range(100):
            if cancelled:
                break
            consumer_conn.process_data_events(time_limit=0.05)
        assert cancelled == [collector.tag]
        assert cch.is_open  # only the consumer ends, not the channel
    finally:
        for c in (consumer_conn, admin):
            if c.is_open:
                c.close()


def test_exclusive_consumer_blocks_others(conn, ch, names):
    queue = names()
    ch.queue_declare(queue)
    ch.basic_consume(queue, lambda *a: None, exclusive=True)
    other = conn.channel()
    expect_channel_error(
        other,
        lambda: other.basic_consume(queue, lambda *a: None),
        403,
        f"ACCESS_REFUSED - queue '{queue}' in vhost '/' in exclusive use",
    )


def test_exclusive_consume_refused_when_consumers_exist(conn, ch, names):
    queue = names()
    ch.queue_declare(queue)
    ch.basic_consume(queue, lambda *a: None)
    other = conn.channel()
    expect_channel_error(
        other,
        lambda: other.basic_consume(queue, lambda *a: None, exclusive=True),
        403,
        f"ACCESS_REFUSED - queue '{queue}' in vhost '/' in exclusive use",
    )


def test_single_active_consumer(broker, names):
    """Only the first consumer receives; when it goes away the next one takes over, in order."""
    queue = names()
    first_conn, second_conn = broker.connect(), broker.connect()
    try:
        fch = first_conn.channel()
        fch.queue_declare(queue, arguments={"x-single-active-consumer": True})
        sch = second_conn.channel()
        first = Collector(first_conn, fch, queue)
        second = Collector(second_conn, sch, queue)
        fill(fch, queue, 4)
        first.wait(4)
        second.settle(0.3)
        assert second.messages == []
        fch.basic_ack(first.messages[1][0].delivery_tag, multiple=True)  # m0, m1 done
        first_conn.close()  # m2, m3 unacked: they go to the new active consumer
        second.wait(2)
        assert [b for _, _, b in second.messages] == [b"m2", b"m3"]
        assert all(m.redelivered for m, _, _ in second.messages)
    finally:
        for c in (first_conn, second_conn):
            if c.is_open:
                c.close()


def test_basic_recover_requeue(conn, ch, names):
    queue = names()
    ch.queue_declare(queue)
    fill(ch, queue, 2)
    collector = Collector(conn, ch, queue)
    collector.wait(2)
    ch.basic_recover(requeue=True)
    collector.wait(4)
    assert [b for _, _, b in collector.messages[2:]] == [b"m0", b"m1"]
    assert all(m.redelivered for m, _, _ in collector.messages[2:])


def test_no_ack_consumer_gets_everything_without_acks(conn, ch, names):
    queue = names()
    ch.queue_declare(queue)
    ch.basic_qos(prefetch_count=1)  # ignored for no-ack consumers
    fill(ch, queue, 20)
    collector = Collector(conn, ch, queue, auto_ack=True)
    collector.wait(20)
    assert [b for _, _, b in collector.messages] == [f"m{i}".encode() for i in range(20)]
    wait_count(ch, queue, 0)


def test_consume_from_missing_queue(conn, ch, names):
    missing = names()
    expect_channel_error(
        ch,
        lambda: ch.basic_consume(missing, lambda *a: None),
        404,
        f"NOT_FOUND - no queue '{missing}' in vhost '/'",
    )


def test_unacked_messages_return_when_channel_closes(conn, ch, names):
    queue = names()
    ch.queue_declare(queue)
    fill(ch, queue, 3)
    collector = Collector(conn, ch, queue)
    collector.wait(3)
    ch.close()
    check = conn.channel()
    wait_count(check, queue, 3)
    got = drain(check, queue)
    assert [b for _, _, b in got] == [b"m0", b"m1", b"m2"]
    assert all(m.redelivered for m, _, _ in got)


@pytest.mark.parametrize("requeue", [True, False])
def test_nack_single_with_and_without_requeue(conn, ch, names, requeue):
    """nack(requeue=True) puts the message back, flagged redelivered; requeue=False without a
    dead-letter exchange drops it."""
    queue = names()
    ch.queue_declare(queue)
    fill(ch, queue, 1)
    method, _, _ = get_one(ch, queue, auto_ack=False)
    ch.basic_nack(method.delivery_tag, requeue=requeue)
    if requeue:
        assert get_one(ch, queue)[0].redelivered
    else:
        time.sleep(0.2)  # a requeued message would be counted by now
        assert message_count(ch, queue) == 0


def test_publish_is_consumed_in_order_at_volume(conn, ch, names):
    queue = names()
    ch.queue_declare(queue)
    ch.confirm_delivery()
    for i in range(2000):
        ch.basic_publish("", queue, i.to_bytes(4, "big"))
    collector = Collector(conn, ch, queue, auto_ack=True)
    collector.wait(2000, timeout=20)
    assert [int.from_bytes(b, "big") for b in collector.bodies()] == list(range(2000))


def test_pika_consume_generator(conn, ch, names):
    """The generator-style API many applications use."""
    queue = names()
    ch.queue_declare(queue)
    fill(ch, queue, 3)
    got = []
    for method, props, body in ch.consume(queue, inactivity_timeout=5):
        assert method is not None, "inactivity timeout before 3 messages"
        got.append(body)
        ch.basic_ack(method.delivery_tag)
        if len(got) == 3:
            break
    ch.cancel()
    assert got == [b"m0", b"m1", b"m2"]
    assert isinstance(props, pika.BasicProperties)


def test_qos_prefetch_size_is_not_implemented(conn, ch):
    """RabbitMQ refuses a byte-based prefetch window with a connection error."""
    expect_connection_error(
        conn, lambda: ch.basic_qos(prefetch_size=1), 540, "NOT_IMPLEMENTED - prefetch_size!=0 (1)"
    )


def test_ack_with_tag_zero_and_multiple_acks_everything(conn, ch, names):
    queue = names()
    ch.queue_declare(queue)
    fill(ch, queue, 3)
    wait_count(ch, queue, 3)
    for _ in range(3):
        get_one(ch, queue, auto_ack=False)
    ch.basic_ack(0, multiple=True)
    ch.close()
    assert message_count(conn.channel(), queue) == 0


def test_nack_with_tag_zero_and_multiple_requeues_everything(conn, ch, names):
    queue = names()
    ch.queue_declare(queue)
    fill(ch, queue, 3)
    wait_count(ch, queue, 3)
    for _ in range(3):
        get_one(ch, queue, auto_ack=False)
    ch.basic_nack(0, multiple=True, requeue=True)
    wait_count(ch, queue, 3)


def test_consumers_share_a_queue_round_robin(conn, ch, names):
    queue = names()
    ch.queue_declare(queue)
    a = Collector(conn, ch, queue, auto_ack=True)
    b = Collector(conn, conn.channel(), queue, auto_ack=True)
    ch.confirm_delivery()
    fill(ch, queue, 10)
    a.wait(5)
    b.wait(5)
    assert a.bodies() == [f"m{i}".encode() for i in range(0, 10, 2)]
    assert b.bodies() == [f"m{i}".encode() for i in range(1, 10, 2)]


def test_ack_after_cancel_still_counts(conn, ch, names):
    """Cancelling a consumer leaves its unacked deliveries on the channel; acking them later
    is valid and settles them."""
    queue = names()
    ch.queue_declare(queue)
    fill(ch, queue, 3)
    collector = Collector(conn, ch, queue)
    collector.wait(3)
    ch.basic_cancel(collector.tag)
    ch.basic_ack(collector.messages[-1][0].delivery_tag, multiple=True)
    ch.close()
    assert message_count(conn.channel(), queue) == 0


def test_requeued_messages_keep_their_queue_order(conn, ch, names):
    queue = names()
    ch.queue_declare(queue)
    fill(ch, queue, 5)
    wait_count(ch, queue, 5)
    tags = [get_one(ch, queue, auto_ack=False)[0].delivery_tag for _ in range(5)]
    for i in (3, 1, 4):
        ch.basic_reject(tags[i], requeue=True)
    wait_count(ch, queue, 3)
    assert [b for _, _, b in drain(ch, queue)] == [b"m1", b"m3", b"m4"]


def test_concurrent_publishers_keep_per_publisher_order(broker, conn, ch, names):
    """Four publishers on their own connections, one consumer: nothing lost or duplicated,
    and each publisher's messages arrive in the order it sent them."""
    queue = names()
    ch.queue_declare(queue)
    per_publisher = 500
    errors = []

    def publish(p):
        try:
            c = broker.connect()
            pch = c.channel()
            pch.confirm_delivery()
            for i in range(per_publisher):
                pch.basic_publish("", queue, f"{p}:{i}".encode())
            c.close()
        except Exception as e:  # noqa: BLE001 - reported by the main thread
            errors.append(repr(e))

    collector = Collector(conn, ch, queue, auto_ack=True)
    threads = [threading.Thread(target=publish, args=(p,)) for p in range(4)]
    for t in threads:
        t.start()
    collector.wait(4 * per_publisher, timeout=60)
    for t in threads:
        t.join(timeout=30)
    assert not errors, errors
    seen = {}
    for body in collector.bodies():
        p, i = body.decode().split(":")
        seen.setdefault(p, []).append(int(i))
    assert seen == {str(p): list(range(per_publisher)) for p in range(4)}
