"""A minimal hand-rolled AMQP 0-9-1 client over a plain socket.

Client libraries refuse to send malformed frames, so the bad-input and heartbeat tests speak
the wire format directly. Only what those tests need is here: frame (de)serialisation, the
connection handshake, channel.open, and decoding the close methods a server answers with.
"""

import socket
import struct
import time

PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"
FRAME_END = 0xCE
FRAME_METHOD, FRAME_HEADER, FRAME_BODY, FRAME_HEARTBEAT = 1, 2, 3, 8

CONNECTION_START = (10, 10)
CONNECTION_TUNE = (10, 30)
CONNECTION_OPEN_OK = (10, 41)
CONNECTION_CLOSE = (10, 50)
CONNECTION_BLOCKED = (10, 60)
CONNECTION_UNBLOCKED = (10, 61)
CONNECTION_CLOSE_OK = (10, 51)
CHANNEL_OPEN_OK = (20, 11)
CHANNEL_CLOSE = (20, 40)
CHANNEL_CLOSE_OK = (20, 41)

# Upper bound for any single read: a server that neither answers nor closes fails the test.
READ_TIMEOUT_S = 10.0


def shortstr(s):
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("!B", len(b)) + b


def longstr(s):
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("!I", len(b)) + b


def table(entries):
    """Encodes a field table; values may be bool, int (signed 32 bit), str or a nested dict."""
    out = b""
    for key, value in entries.items():
        out += shortstr(key)
        if isinstance(value, bool):
            out += b"t" + struct.pack("!B", value)
        elif isinstance(value, int):
            out += b"I" + struct.pack("!i", value)
        elif isinstance(value, str):
            out += b"S" + longstr(value)
        elif isinstance(value, dict):
            out += b"F" + table(value)
        else:
            raise TypeError(f"cannot encode {value!r}")
    return struct.pack("!I", len(out)) + out


# What pika and most clients announce; with it RabbitMQ reports a refused login with a
# connection.close instead of dropping the socket.
CLIENT_PROPERTIES = {
    "product": "mooring-raw-test",
    "capabilities": {"authentication_failure_close": True, "connection.blocked": True},
}


def frame(kind, channel, payload, end=FRAME_END):
    return struct.pack("!BHI", kind, channel, len(payload)) + payload + bytes([end])


def method_frame(channel, class_id, method_id, args=b""):
    return frame(FRAME_METHOD, channel, struct.pack("!HH", class_id, method_id) + args)


def content_header_frame(channel, class_id, body_size, flags=0, props=b""):
    return frame(FRAME_HEADER, channel, struct.pack("!HHQH", class_id, 0, body_size, flags) + props)


def body_frame(channel, body):
    return frame(FRAME_BODY, channel, body)


def heartbeat_frame():
    return frame(FRAME_HEARTBEAT, 0, b"")


def queue_declare_args(name, passive=False, durable=False, exclusive=False, auto_delete=False):
    bits = passive | durable << 1 | exclusive << 2 | auto_delete << 3
    return struct.pack("!H", 0) + shortstr(name) + struct.pack("!B", bits) + struct.pack("!I", 0)


def basic_publish_args(exchange, routing_key):
    return struct.pack("!H", 0) + shortstr(exchange) + shortstr(routing_key) + struct.pack("!B", 0)


class Closed(Exception):
    """The server closed the TCP connection."""


class Frame:
    def __init__(self, kind, channel, payload):
        self.kind, self.channel, self.payload = kind, channel, payload

    @property
    def method(self):
        if self.kind != FRAME_METHOD:
            return None
        return struct.unpack("!HH", self.payload[:4])

    def close_args(self):
        """(reply_code, reply_text, class_id, method_id) of a connection/channel.close."""
        args = self.payload[4:]
        (code,) = struct.unpack("!H", args[:2])
        n = args[2]
        text = args[3 : 3 + n].decode()
        class_id, method_id = struct.unpack("!HH", args[3 + n : 7 + n])
        return code, text, class_id, method_id

    def __repr__(self):
        return f"Frame(kind={self.kind}, channel={self.channel}, method={self.method}, len={len(self.payload)})"


class RawConnection:
    def __init__(self, host, port, timeout=READ_TIMEOUT_S):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = b""
        self.frame_max = None
        self.heartbeat = None
        # connection.blocked/unblocked frames that `expect` stepped over, oldest first
        self.notices = []

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send(self, data):
        self.sock.sendall(data)

    def _fill(self, n, deadline):
        while len(self.buf) < n:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no data from the server (have {len(self.buf)} of {n} bytes)")
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError as e:
                raise Closed("connection reset") from e
            if not chunk:
                raise Closed(f"EOF with {len(self.buf)} unread bytes")
            self.buf += chunk

    def read_exact(self, n, timeout=READ_TIMEOUT_S):
        self._fill(n, time.monotonic() + timeout)
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_frame(self, timeout=READ_TIMEOUT_S):
        deadline = time.monotonic() + timeout
        self._fill(7, deadline)
        kind, channel, size = struct.unpack("!BHI", self.buf[:7])
        self._fill(7 + size + 1, deadline)
        payload = self.buf[7 : 7 + size]
        end = self.buf[7 + size]
        self.buf = self.buf[8 + size :]
        assert end == FRAME_END, f"server sent a bad frame end {end:#x}"
        return Frame(kind, channel, payload)

    def read_method(self, timeout=READ_TIMEOUT_S, skip_heartbeats=True):
        deadline = time.monotonic() + timeout
        while True:
            f = self.read_frame(max(0.0, deadline - time.monotonic()))
            if f.kind == FRAME_HEARTBEAT and skip_heartbeats:
                continue
            return f

    def expect(self, method, timeout=READ_TIMEOUT_S):
        """Reads the next method, which must be `method`. connection.blocked/unblocked may come
        at any time and are set aside in `self.notices` instead."""
        deadline = time.monotonic() + timeout
        while True:
            f = self.read_method(max(0.0, deadline - time.monotonic()))
            if f.method in (CONNECTION_BLOCKED, CONNECTION_UNBLOCKED) and method != f.method:
                self.notices.append(f)
                continue
            assert f.method == method, f"expected {method}, got {f!r} {f.payload[:200]!r}"
            return f

    def handshake(
        self, user="guest", password="guest", vhost="/", heartbeat=0, frame_max=131072, channel_max=0, open_vhost=True
    ):
        """Header, start/start-ok (PLAIN), tune/tune-ok; then connection.open unless told not to.

        Returns the frame answering connection.open (open-ok, or a close on refusal).
        """
        self.send(PROTOCOL_HEADER)
        self.expect(CONNECTION_START)
        f = self.handshake_start_ok(user, password)
        if f.method != CONNECTION_TUNE:
            return f  # refused during authentication
        server_channel_max, server_frame_max, _server_heartbeat = struct.unpack("!HIH", f.payload[4:12])
        if not channel_max:
            channel_max = server_channel_max
        if server_frame_max:
            frame_max = min(frame_max, server_frame_max)
        self.frame_max, self.heartbeat = frame_max, heartbeat
        self.send(method_frame(0, 10, 31, struct.pack("!HIH", channel_max, frame_max, heartbeat)))
        if not open_vhost:
            return None
        self.send(method_frame(0, 10, 40, shortstr(vhost) + shortstr("") + b"\x00"))
        return self.read_method()

    def handshake_start_ok(self, user="guest", password="guest"):
        """Sends start-ok (PLAIN) after connection.start was read; returns the answer (tune, or
        a close on refusal)."""
        response = b"\x00" + user.encode() + b"\x00" + password.encode()
        start_ok = table(CLIENT_PROPERTIES) + shortstr("PLAIN") + longstr(response) + shortstr("en_US")
        self.send(method_frame(0, 10, 11, start_ok))
        return self.read_method()

    def open(self, **kwargs):
        f = self.handshake(**kwargs)
        assert f.method == CONNECTION_OPEN_OK, f"connection.open refused: {f!r} {f.payload!r}"
        return self

    def open_channel(self, channel=1):
        self.send(method_frame(channel, 20, 10, shortstr("")))
        self.expect(CHANNEL_OPEN_OK)

    def expect_connection_close(self, timeout=READ_TIMEOUT_S):
        """Reads up to the server's connection.close (skipping other frames), answers close-ok,
        checks the server then closes the socket, and returns (code, text, class, method)."""
        deadline = time.monotonic() + timeout
        while True:
            f = self.read_method(max(0.0, deadline - time.monotonic()))
            if f.method == CONNECTION_CLOSE:
                break
        args = f.close_args()
        self.send(method_frame(0, 10, 51))
        self.expect_eof(max(0.5, deadline - time.monotonic()))
        return args

    def expect_eof(self, timeout=READ_TIMEOUT_S):
        """Waits until the server closes the socket, discarding anything it sends first."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("server kept the connection open")
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                return
            if not chunk:
                return
