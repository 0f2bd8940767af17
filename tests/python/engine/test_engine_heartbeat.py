"""Heartbeats in both directions: the server sends them, and closes a silent client."""

import time

from engine_raw import FRAME_HEARTBEAT, Closed, RawConnection, heartbeat_frame, method_frame, queue_declare_args

# With a 1 s heartbeat RabbitMQ drops a silent peer after about 2-3 s; allow generous slack
# for a loaded machine, but far less than the 60 s a missing timeout would take.
SILENT_CLOSE_DEADLINE_S = 8.0


def test_silent_client_is_closed_by_heartbeat_timeout(broker):
    with RawConnection(broker.host, broker.port) as c:
        c.open(heartbeat=1)
        start = time.monotonic()
        kinds = []
        while True:
            remaining = SILENT_CLOSE_DEADLINE_S - (time.monotonic() - start)
            assert remaining > 0, f"server kept a silent connection open; frames seen: {kinds}"
            try:
                kinds.append(c.read_frame(timeout=remaining).kind)
            except (Closed, ConnectionResetError):
                break
        elapsed = time.monotonic() - start
        # the server sent its own heartbeats while waiting (at least one per interval)
        assert FRAME_HEARTBEAT in kinds, kinds
        assert elapsed >= 1.0, f"closed after {elapsed:.2f}s, before a single heartbeat interval passed"


def test_client_sending_heartbeats_is_kept(broker):
    """Positive control: a client that sends heartbeats survives well past the timeout."""
    with RawConnection(broker.host, broker.port) as c:
        c.open(heartbeat=1)
        c.open_channel(1)
        start = time.monotonic()
        seen = 0
        while time.monotonic() - start < 4.0:
            c.send(heartbeat_frame())
            try:
                f = c.read_frame(timeout=0.5)
                seen += f.kind == FRAME_HEARTBEAT
            except TimeoutError:
                pass
        assert seen >= 2, "server sent no heartbeats"
        # still open: a channel method round-trips
        c.send(method_frame(1, 50, 10, queue_declare_args("", exclusive=True)))
        assert c.expect((50, 11))


def test_heartbeat_zero_disables(broker):
    """heartbeat 0 in tune-ok: the server sends none and does not time the client out."""
    with RawConnection(broker.host, broker.port) as c:
        c.open(heartbeat=0)
        try:
            f = c.read_frame(timeout=2.5)
            raise AssertionError(f"unexpected frame with heartbeats disabled: {f!r}")
        except TimeoutError:
            pass
