"""RabbitMQ's five tutorials, as applications written for RabbitMQ run them."""

import uuid

import pika

from engine_helpers import Collector, get_one


def test_work_queue_with_prefetch_and_acks(broker, names):
    """Tutorial 2: a durable task queue, two workers with prefetch 1, manual acks. A worker
    holding an unacked task gets nothing more; an unacked task goes back to the queue when its
    worker dies, flagged redelivered."""
    queue = names()
    producer = broker.connect()
    worker_a, worker_b = broker.connect(), broker.connect()
    try:
        pch = producer.channel()
        pch.queue_declare(queue, durable=True)
        pch.confirm_delivery()
        for i in range(6):
            pch.basic_publish("", queue, f"task {i}".encode(), pika.BasicProperties(delivery_mode=2))

        ach, bch = worker_a.channel(), worker_b.channel()
        ach.basic_qos(prefetch_count=1)
        bch.basic_qos(prefetch_count=1)
        a = Collector(worker_a, ach, queue)
        b = Collector(worker_b, bch, queue)
        a.wait(1)
        b.wait(1)
        # prefetch 1: neither worker gets a second task before acking the first
        a.settle(0.3)
        b.settle(0.3)
        assert len(a.messages) == 1 and len(b.messages) == 1

        # a works through tasks one at a time; b dies holding its task, which a then gets
        for expected in range(2, 7):
            ach.basic_ack(a.messages[-1][0].delivery_tag)
            if expected == 3:
                worker_b.close()
            a.wait(expected)
            a.settle(0.05)
            assert len(a.messages) == expected, "prefetch 1 exceeded"
        ach.basic_ack(a.messages[-1][0].delivery_tag)
        bodies = [m[2] for m in a.messages]
        lost = b.messages[0][2]
        assert sorted(bodies) == sorted(f"task {i}".encode() for i in range(6))
        redelivered = [m for m in a.messages if m[2] == lost]
        assert len(redelivered) == 1 and redelivered[0][0].redelivered
        assert all(not m[0].redelivered for m in a.messages if m[2] != lost)
        assert pch.queue_declare(queue, passive=True).method.message_count == 0
    finally:
        for c in (producer, worker_a, worker_b):
            if c.is_open:
                c.close()


def test_fanout_publish_subscribe(conn, ch, names):
    """Tutorial 3: a fanout exchange copies each message to every bound server-named queue."""
    exchange = names("x")
    ch.exchange_declare(exchange, "fanout")
    queues = []
    for _ in range(3):
        q = ch.queue_declare("", exclusive=True).method.queue
        ch.queue_bind(q, exchange)
        queues.append(q)
    for i in range(3):
        ch.basic_publish(exchange, "ignored", f"log {i}".encode())
    for q in queues:
        got = [get_one(ch, q)[2] for _ in range(3)]
        assert got == [b"log 0", b"log 1", b"log 2"]
        assert ch.basic_get(q)[0] is None


def test_direct_routing(conn, ch, names):
    """Tutorial 4: a direct exchange routes by exact key; one queue may bind several keys."""
    exchange = names("x")
    ch.exchange_declare(exchange, "direct")
    errors = ch.queue_declare("", exclusive=True).method.queue
    everything = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(errors, exchange, "error")
    for severity in ("info", "warning", "error"):
        ch.queue_bind(everything, exchange, severity)
    for severity in ("info", "warning", "error", "debug"):
        ch.basic_publish(exchange, severity, severity.encode())
    assert get_one(ch, errors)[2] == b"error"
    assert ch.basic_get(errors)[0] is None
    got = [get_one(ch, everything)[2] for _ in range(3)]
    assert got == [b"info", b"warning", b"error"]
    assert ch.basic_get(everything)[0] is None


def test_topics(conn, ch, names):
    """Tutorial 5: `*` matches exactly one word, `#` zero or more."""
    exchange = names("x")
    ch.exchange_declare(exchange, "topic")
    patterns = {
        "*.orange.*": None,
        "*.*.rabbit": None,
        "lazy.#": None,
        "#": None,
        "quick.#.fox": None,
        "a.*": None,
    }
    for pattern in patterns:
        q = ch.queue_declare("", exclusive=True).method.queue
        ch.queue_bind(q, exchange, pattern)
        patterns[pattern] = q
    keys = [
        "quick.orange.rabbit",
        "lazy.orange.elephant",
        "quick.orange.fox",
        "lazy.brown.fox",
        "lazy.pink.rabbit",
        "quick.brown.fox",
        "orange",
        "quick.orange.male.rabbit",
        "lazy.orange.male.rabbit",
        "lazy",
        "quick.fox",
        "a",
        "a.b",
        "a.b.c",
        "",
    ]
    for key in keys:
        ch.basic_publish(exchange, key, key.encode())
    expected = {
        "*.orange.*": ["quick.orange.rabbit", "lazy.orange.elephant", "quick.orange.fox"],
        "*.*.rabbit": ["quick.orange.rabbit", "lazy.pink.rabbit"],
        "lazy.#": [
            "lazy.orange.elephant",
            "lazy.brown.fox",
            "lazy.pink.rabbit",
            "lazy.orange.male.rabbit",
            "lazy",
        ],
        "#": keys,
        "quick.#.fox": ["quick.orange.fox", "quick.brown.fox", "quick.fox"],
        "a.*": ["a.b"],
    }
    for pattern, q in patterns.items():
        got = []
        # the catch-all queue receives every key; wait for the last one before draining
        while True:
            method, _, body = ch.basic_get(q, auto_ack=True)
            if method is None:
                break
            got.append(body.decode())
        if len(got) < len(expected[pattern]):
            got += [get_one(ch, q)[2].decode() for _ in range(len(expected[pattern]) - len(got))]
        assert got == expected[pattern], pattern


def test_rpc_with_reply_to_and_correlation_id(broker, names):
    """Tutorial 6: a server consumes requests and answers on the caller's reply_to queue with
    the request's correlation_id."""
    rpc_queue = names()
    server = broker.connect()
    client = broker.connect()
    try:
        sch = server.channel()
        sch.queue_declare(rpc_queue)
        sch.basic_qos(prefetch_count=1)

        def on_request(ch, method, props, body):
            n = int(body)
            ch.basic_publish(
                "",
                props.reply_to,
                str(n * n).encode(),
                pika.BasicProperties(correlation_id=props.correlation_id),
            )
            ch.basic_ack(method.delivery_tag)

        Collector(server, sch, rpc_queue, on_message=on_request)

        cch = client.channel()
        callback_queue = cch.queue_declare("", exclusive=True).method.queue
        assert callback_queue.startswith("amq.gen-")
        replies = Collector(client, cch, callback_queue, auto_ack=True)
        ids = []
        for n in (2, 3, 7):
            cid = str(uuid.uuid4())
            ids.append((cid, n))
            cch.basic_publish(
                "", rpc_queue, str(n).encode(), pika.BasicProperties(reply_to=callback_queue, correlation_id=cid)
            )
        deadline_rounds = 200
        for _ in range(deadline_rounds):
            if len(replies.messages) == 3:
                break
            server.process_data_events(time_limit=0.02)
            client.process_data_events(time_limit=0.02)
        answers = {p.correlation_id: int(b) for _, p, b in replies.messages}
        assert answers == {cid: n * n for cid, n in ids}
    finally:
        for c in (server, client):
            if c.is_open:
                c.close()
