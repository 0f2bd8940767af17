"""pika helpers for the engine suite: collecting deliveries and polling with deadlines."""

import time

import pika
import pytest

# Default bound for anything a test waits on.
WAIT_S = 5.0


class Collector:
    """Consumes from a queue into `self.messages` as (method, properties, body) tuples."""

    def __init__(self, conn, ch, queue, auto_ack=False, exclusive=False, arguments=None, on_message=None):
        self.conn, self.ch, self.queue = conn, ch, queue
        self.messages = []
        self.cancelled_by_broker = False
        self.on_message = on_message
        self.tag = ch.basic_consume(
            queue, self._deliver, auto_ack=auto_ack, exclusive=exclusive, arguments=arguments
        )

    def _deliver(self, ch, method, properties, body):
        self.messages.append((method, properties, body))
        if self.on_message:
            self.on_message(ch, method, properties, body)

    def wait(self, n, timeout=WAIT_S):
        """Processes events until at least `n` messages arrived; fails the test otherwise."""
        deadline = time.monotonic() + timeout
        while len(self.messages) < n:
            if time.monotonic() >= deadline:
                pytest.fail(f"got {len(self.messages)} of {n} messages from {self.queue} within {timeout}s")
            self.conn.process_data_events(time_limit=0.05)
        return self.messages

    def settle(self, duration=0.3):
        """Processes events for `duration` so that anything in flight arrives (used before
        asserting that nothing more is delivered)."""
        deadline = time.monotonic() + duration
        while time.monotonic() < deadline:
            self.conn.process_data_events(time_limit=0.05)
        return self.messages

    def bodies(self):
        return [body for _, _, body in self.messages]


def get_one(ch, queue, timeout=WAIT_S, auto_ack=True):
    """basic.get until a message arrives; returns (method, properties, body)."""
    deadline = time.monotonic() + timeout
    while True:
        method, properties, body = ch.basic_get(queue, auto_ack=auto_ack)
        if method is not None:
            return method, properties, body
        if time.monotonic() >= deadline:
            pytest.fail(f"no message in {queue} within {timeout}s")
        time.sleep(0.02)


def drain(ch, queue, auto_ack=True, limit=100_000):
    """Every message currently ready in `queue`, via basic.get."""
    out = []
    for _ in range(limit):
        method, properties, body = ch.basic_get(queue, auto_ack=auto_ack)
        if method is None:
            return out
        out.append((method, properties, body))
    pytest.fail(f"{queue} still not empty after {limit} gets")


def message_count(ch, queue):
    return ch.queue_declare(queue, passive=True).method.message_count


def wait_count(ch, queue, expected, timeout=WAIT_S):
    """Waits until a passive declare reports `expected` ready messages."""
    deadline = time.monotonic() + timeout
    while True:
        count = message_count(ch, queue)
        if count == expected:
            return
        if time.monotonic() >= deadline:
            pytest.fail(f"{queue} has {count} ready messages, expected {expected} within {timeout}s")
        time.sleep(0.02)


def expect_channel_error(ch, fn, code, text_prefix):
    """Runs `fn()`, expects the broker to close the channel with `code` and a reply text
    starting with `text_prefix`, and returns the exception."""
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        fn()
    assert info.value.reply_code == code, info.value
    assert info.value.reply_text.startswith(text_prefix), info.value
    assert not ch.is_open
    return info.value


def expect_connection_error(conn, fn, code, text_prefix):
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as info:
        fn()
    assert info.value.reply_code == code, info.value
    assert info.value.reply_text.startswith(text_prefix), info.value
    assert not conn.is_open
    return info.value


def persistent(**kwargs):
    return pika.BasicProperties(delivery_mode=2, **kwargs)
