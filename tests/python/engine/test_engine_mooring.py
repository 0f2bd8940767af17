"""What only a broker we start can show: TLS, users from flags, the admin HTTP endpoints, and
durability across a graceful restart and a SIGKILL. All marked mooring_only."""

import base64
import json
import time
import ssl
import struct
import subprocess
import urllib.request

import pika
import pytest

from engine_helpers import Collector, drain, get_one, wait_count
from engine_raw import RawConnection, basic_publish_args, body_frame, content_header_frame, method_frame

pytestmark = pytest.mark.mooring_only


def connect(agent, user="guest", password="guest", **kwargs):
    host, port = agent.amqp
    return pika.BlockingConnection(
        pika.ConnectionParameters(
            host=host,
            port=port,
            credentials=pika.PlainCredentials(user, password),
            connection_attempts=1,
            socket_timeout=10,
            **kwargs,
        )
    )


def http_get(agent, path):
    with urllib.request.urlopen(agent.admin_url + path, timeout=10) as resp:
        return resp.status, resp.headers.get("Content-Type", ""), resp.read().decode()


# --- TLS --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_cert(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1 (and localhost), made with openssl."""
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


def test_tls_connection(agent_factory, tls_cert):
    cert, key = tls_cert
    agent = agent_factory(
        extra_args=["--amqps-listen", "127.0.0.1:0", "--tls-cert", str(cert), "--tls-key", str(key)]
    )
    assert "amqps" in agent.ports, f"ports.json has no amqps entry: {agent.ports}"
    host, port = agent.ports["amqps"]
    context = ssl.create_default_context(cafile=str(cert))
    params = pika.ConnectionParameters(
        host=host,
        port=port,
        ssl_options=pika.SSLOptions(context, server_hostname="127.0.0.1"),
        credentials=pika.PlainCredentials("guest", "guest"),
        connection_attempts=1,
        socket_timeout=10,
    )
    conn = pika.BlockingConnection(params)
    try:
        ch = conn.channel()
        queue = ch.queue_declare("", exclusive=True).method.queue
        ch.confirm_delivery()
        body = bytes(range(256)) * 600  # larger than one TLS record and one frame
        ch.basic_publish("", queue, body)
        assert get_one(ch, queue)[2] == body
        status, _, text = http_get(agent, "/api/connections")
        assert status == 200
        assert any(c["ssl"] for c in json.loads(text)), text
    finally:
        conn.close()

    # the plain listener keeps working beside TLS
    plain = connect(agent)
    plain.close()

    # a client that does not trust the certificate is refused by its own TLS stack
    untrusting = ssl.create_default_context()
    with pytest.raises((pika.exceptions.AMQPConnectionError, ssl.SSLError)):
        pika.BlockingConnection(
            pika.ConnectionParameters(
                host=host, port=port, ssl_options=pika.SSLOptions(untrusting), connection_attempts=1, socket_timeout=5
            )
        )


# --- users ------------------------------------------------------------------------------------


def test_users_from_flags_replace_guest(agent_factory):
    agent = agent_factory(extra_args=["--user", "alice:s3cret", "--user", "bob:hunter2"])
    for user, password in (("alice", "s3cret"), ("bob", "hunter2")):
        conn = connect(agent, user, password)
        ch = conn.channel()
        queue = ch.queue_declare("", exclusive=True).method.queue
        ch.basic_publish("", queue, b"hi", pika.BasicProperties(user_id=user))
        assert get_one(ch, queue)[1].user_id == user
        conn.close()
    with pytest.raises(pika.exceptions.ProbableAuthenticationError):
        connect(agent, "alice", "wrong")
    with pytest.raises(pika.exceptions.ProbableAuthenticationError):
        connect(agent, "guest", "guest")


# --- admin HTTP -------------------------------------------------------------------------------


def test_admin_endpoints_reflect_the_broker(broker, names):
    agent = broker.agent
    status, _, _ = http_get(agent, "/healthz")
    assert status == 200

    conn = broker.connect(client_properties={"connection_name": "admin-test"})
    try:
        ch = conn.channel()
        queue = names()
        ch.queue_declare(queue, durable=True, arguments={"x-message-ttl": 60000})
        ch.confirm_delivery()
        for _ in range(3):
            ch.basic_publish("", queue, b"12345")
        wait_count(ch, queue, 3)

        status, _, text = http_get(agent, "/api/queues")
        assert status == 200
        (q,) = [q for q in json.loads(text) if q["name"] == queue]
        assert q["vhost"] == "/" and q["durable"] is True
        assert q["arguments"] == {"x-message-ttl": 60000}
        assert (q["messages_ready"], q["messages"], q["message_bytes_ready"]) == (3, 3, 15)

        status, _, text = http_get(agent, "/api/connections")
        conns = json.loads(text)
        assert any(c["client_properties"].get("connection_name") == "admin-test" for c in conns), conns

        status, content_type, text = http_get(agent, "/metrics")
        assert status == 200 and content_type.startswith("text/plain")
        samples = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                samples[name] = float(value)
        assert samples["mooring_connections"] >= 1
        assert samples["mooring_queues"] >= 1
        assert samples["mooring_messages_published_total"] >= 3
        assert samples[f'mooring_queue_messages_ready{{vhost="/",queue="{queue}"}}'] == 3
        for name in ("mooring_storage_bytes_on_disk", "mooring_storage_fsyncs_total", "mooring_channels"):
            assert name in samples, name
    finally:
        conn.close()


# --- durability -------------------------------------------------------------------------------


def declare_durable_topology(ch):
    ch.exchange_declare("orders", "topic", durable=True)
    ch.queue_declare("orders.all", durable=True, arguments={"x-max-length": 1000})
    ch.queue_bind("orders.all", "orders", "orders.#")
    ch.queue_declare("scratch", durable=False)


@pytest.mark.parametrize("stop", ["graceful", "sigkill"])
def test_durable_state_survives_restart(agent_factory, stop):
    agent = agent_factory()
    conn = connect(agent)
    ch = conn.channel()
    declare_durable_topology(ch)
    ch.confirm_delivery()
    props = pika.BasicProperties(
        delivery_mode=2, message_id="p1", headers={"k": "v", "n": 7}, content_type="text/plain", priority=3
    )
    ch.basic_publish("orders", "orders.new", b"persistent", props)
    ch.basic_publish("orders", "orders.new", b"transient", pika.BasicProperties(delivery_mode=1))
    ch.basic_publish("orders", "orders.new", b"acked before restart", pika.BasicProperties(delivery_mode=2))
    ch.basic_publish("orders", "orders.new", b"persistent 2", pika.BasicProperties(delivery_mode=2))
    # ack the third one: it must not come back
    collector = Collector(conn, ch, "orders.all")
    msgs = collector.wait(4)
    for method, _, body in msgs:
        if body == b"acked before restart":
            ch.basic_ack(method.delivery_tag)
    ch.close()  # a clean channel close: the ack is processed before close-ok
    conn.close()

    if stop == "graceful":
        agent.stop()
    else:
        agent.kill()
    agent.start()

    conn = connect(agent)
    try:
        ch = conn.channel()
        ch.exchange_declare("orders", passive=True)
        ok = ch.queue_declare("orders.all", passive=True).method
        assert ok.message_count == 2
        got = drain(ch, "orders.all")
        assert [b for _, _, b in got] == [b"persistent", b"persistent 2"]
        _, got_props, _ = got[0]
        for field in ("delivery_mode", "message_id", "headers", "content_type", "priority"):
            assert getattr(got_props, field) == getattr(props, field), field
        # the binding survived too
        ch.basic_publish("orders", "orders.again", b"after restart")
        assert get_one(ch, "orders.all")[2] == b"after restart"
        # the declared arguments survived: an inequivalent redeclare is refused
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
            ch.queue_declare("orders.all", durable=True)
        assert info.value.reply_code == 406
        ch = conn.channel()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
            ch.queue_declare("scratch", passive=True)
        assert info.value.reply_code == 404
    finally:
        conn.close()


# --- fsync and group commit -------------------------------------------------------------------


def metric(agent, name):
    _, _, text = http_get(agent, "/metrics")
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in /metrics")


def publish_pipelined_with_confirms(agent, queue, n):
    """Sends n publishes in one write on a confirm channel and waits for every ack."""
    host, port = agent.amqp
    with RawConnection(host, port) as c:
        c.open()
        c.open_channel(1)
        c.send(method_frame(1, 85, 10, b"\x00"))  # confirm.select
        c.expect((85, 11))
        one = (
            method_frame(1, 60, 40, basic_publish_args("", queue))
            + content_header_frame(1, 60, 4, flags=0x1000, props=b"\x02")  # delivery_mode 2
            + body_frame(1, b"body")
        )
        c.send(one * n)
        acked = 0
        while acked < n:
            f = c.read_method()
            assert f.method == (60, 80), f"expected basic.ack, got {f!r}"
            tag, multiple = struct.unpack("!QB", f.payload[4:13])
            acked = tag if multiple & 1 else acked + 1
        return acked


def test_quorum_confirms_wait_for_fsync_and_share_it(agent_factory):
    """Quorum queues confirm only after an fsync covering the message; many confirms share one
    fsync (group commit). The background sync is set far apart so that it cannot be the one
    counted."""
    agent = agent_factory(extra_args=["--sync-interval-ms", "3600000"])
    conn = connect(agent)
    ch = conn.channel()
    ch.queue_declare("quorum", durable=True, arguments={"x-queue-type": "quorum"})
    conn.close()

    before = metric(agent, "mooring_storage_fsyncs_total")
    publish_pipelined_with_confirms(agent, "quorum", 1)
    after_one = metric(agent, "mooring_storage_fsyncs_total")
    assert after_one > before, "a quorum confirm was sent without any fsync"

    n = 500
    publish_pipelined_with_confirms(agent, "quorum", n)
    after_many = metric(agent, "mooring_storage_fsyncs_total")
    assert after_many - after_one < n / 5, f"{after_many - after_one} fsyncs for {n} pipelined confirms"


def test_restart_semantics_of_queue_flags_and_ttl(agent_factory):
    """As RabbitMQ: durable exclusive queues die with their connection (and so with the
    broker); a durable auto-delete queue that never had a consumer stays; a persistent message
    whose TTL ran out while the broker was down is gone; one with time left stays."""
    agent = agent_factory()
    conn = connect(agent)
    ch = conn.channel()
    ch.queue_declare("excl", durable=True, exclusive=True)
    ch.queue_declare("autodel", durable=True, auto_delete=True)
    ch.queue_declare("short-ttl", durable=True, arguments={"x-message-ttl": 500})
    ch.queue_declare("long-ttl", durable=True, arguments={"x-message-ttl": 600_000})
    ch.confirm_delivery()
    for q in ("autodel", "short-ttl", "long-ttl"):
        ch.basic_publish("", q, b"m", pika.BasicProperties(delivery_mode=2))
    agent.stop()
    time.sleep(0.8)  # the short TTL runs out while the broker is down
    agent.start()

    conn = connect(agent)
    try:
        ch = conn.channel()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
            ch.queue_declare("excl", passive=True)
        assert info.value.reply_code == 404
        ch = conn.channel()
        assert ch.queue_declare("autodel", passive=True).method.message_count == 1
        wait_count(ch, "short-ttl", 0)
        assert ch.basic_get("short-ttl")[0] is None
        assert get_one(ch, "long-ttl")[2] == b"m"
    finally:
        conn.close()


def test_queue_and_exchange_arguments_work_after_restart(agent_factory):
    """Declared arguments are not only remembered but acted on after a restart: max-length,
    dead-lettering, alternate-exchange; a transient exchange and its bindings are gone."""
    agent = agent_factory()
    conn = connect(agent)
    ch = conn.channel()
    ch.exchange_declare("dlx", "fanout", durable=True)
    ch.queue_declare("dead", durable=True)
    ch.queue_bind("dead", "dlx")
    ch.queue_declare("capped", durable=True, arguments={"x-max-length": 2, "x-dead-letter-exchange": "dlx"})
    ch.exchange_declare("ae", "fanout", durable=True)
    ch.queue_declare("unrouted", durable=True)
    ch.queue_bind("unrouted", "ae")
    ch.exchange_declare("main", "direct", durable=True, arguments={"alternate-exchange": "ae"})
    ch.exchange_declare("transient", "fanout", durable=False)
    ch.queue_bind("capped", "transient")
    conn.close()
    agent.stop()
    agent.start()

    conn = connect(agent)
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        for body in (b"1", b"2", b"3"):
            ch.basic_publish("", "capped", body, pika.BasicProperties(delivery_mode=2))
        # max-length 2 dropped the head into the dead-letter exchange
        _, props, body = get_one(ch, "dead")
        assert body == b"1" and props.headers["x-death"][0]["reason"] == "maxlen"
        assert [b for _, _, b in drain(ch, "capped")] == [b"2", b"3"]
        ch.basic_publish("main", "no-binding", b"to ae")
        assert get_one(ch, "unrouted")[2] == b"to ae"
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
            ch.exchange_declare("transient", passive=True)
        assert info.value.reply_code == 404
    finally:
        conn.close()


def test_restart_keeps_redelivered_flag_and_expires_what_ran_out(agent_factory):
    """Checked on a private RabbitMQ 3.10 node: a persistent message delivered but not acked
    before a restart comes back with redelivered=true; a per-message expiration that ran out
    during the downtime removes the message; a queue-TTL expiry during the downtime
    dead-letters the message when the queue recovers."""
    agent = agent_factory()
    conn = connect(agent)
    ch = conn.channel()
    ch.queue_declare("held", durable=True)
    ch.queue_declare("per-message", durable=True)
    ch.exchange_declare("dlx", "fanout", durable=True)
    ch.queue_declare("dead", durable=True)
    ch.queue_bind("dead", "dlx")
    ch.queue_declare("ttl-dlx", durable=True, arguments={"x-message-ttl": 500, "x-dead-letter-exchange": "dlx"})
    ch.confirm_delivery()
    persistent = pika.BasicProperties(delivery_mode=2)
    ch.basic_publish("", "held", b"h", persistent)
    ch.basic_publish("", "per-message", b"expires", pika.BasicProperties(delivery_mode=2, expiration="500"))
    ch.basic_publish("", "per-message", b"stays", persistent)
    ch.basic_publish("", "ttl-dlx", b"dead-lettered", persistent)
    method, _, _ = ch.basic_get("held", auto_ack=False)
    assert method is not None and not method.redelivered
    conn.close()  # the unacked message goes back to its queue
    agent.stop()
    time.sleep(0.8)  # both TTLs run out while the broker is down
    agent.start()

    conn = connect(agent)
    problems = []  # all three checks are reported together
    try:
        ch = conn.channel()
        method, _, body = get_one(ch, "held")
        assert body == b"h"
        if not method.redelivered:
            problems.append("a message delivered before the restart came back with redelivered=false")
        left = [b for _, _, b in drain(ch, "per-message")]
        if left != [b"stays"]:
            problems.append(f"per-message expiration ignored across the restart: {left}")
        time.sleep(0.2)
        dead = [(p.headers or {}).get("x-death", [{}])[0].get("reason") for _, p, _ in drain(ch, "dead")]
        left = ch.queue_declare("ttl-dlx", passive=True).method.message_count
        if dead != ["expired"] or left != 0:
            problems.append(f"queue TTL with dead-lettering ignored across the restart: dead={dead}, left={left}")
    finally:
        conn.close()
    assert not problems, problems


def test_passwords_are_not_stored_in_plain_text(agent_factory):
    """Users are kept as hashes: the password appears in no file of the data directory, in
    plain text or any common encoding."""
    secret = "Very-Secret-Password-4711"
    agent = agent_factory(extra_args=["--user", f"alice:{secret}", "--user", f"bob:{secret}"])
    conn = connect(agent, "alice", secret)
    conn.channel().queue_declare("durable", durable=True)  # makes the definitions be saved
    conn.close()
    agent.stop()
    blobs = [p.read_bytes() for p in agent.data_dir.rglob("*") if p.is_file()]
    assert blobs, "nothing was written to the data directory"
    encodings = (
        secret.encode(),
        secret.encode("utf-16-le"),
        secret.encode().hex().encode(),
        base64.b64encode(secret.encode())[:20],
    )
    for needle in encodings:
        assert not any(needle in blob for blob in blobs), f"password found in the data directory as {needle!r}"
    agent.start()
    connect(agent, "bob", secret).close()


@pytest.mark.parametrize("problem", ["missing", "garbage"])
def test_bad_tls_files_stop_the_agent_at_start(mooring_binary, tmp_path, problem):
    """A broken TLS configuration is an error at start-up naming the file, never a broker
    that silently runs without its amqps listener."""
    cert = tmp_path / "cert.pem"
    if problem == "garbage":
        cert.write_text("not a certificate\n")
    result = subprocess.run(
        [
            str(mooring_binary("mooring-agent")),
            "standalone",
            "--data-dir",
            str(tmp_path / "data"),
            "--amqp-listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--amqps-listen",
            "127.0.0.1:0",
            "--tls-cert",
            str(cert),
            "--tls-key",
            str(cert),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    assert str(cert) in result.stderr + result.stdout
    assert not (tmp_path / "data" / "ports.json").exists()
