"""TLS for the API with the real AWS CLI: a control plane started with --tls-cert and
--tls-key (a self-signed certificate made here) answers `aws mq list-brokers` over
https with --ca-bundle, and refuses plain http on the same port. Policies see the
connection: aws:SecureTransport is true over TLS (false over plain HTTP), and
aws:SourceIp is the peer's address."""

import datetime
import http.client
import ipaddress
import json
import socket
import ssl
import urllib.request
import uuid

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

# Allowed only from loopback, and never without TLS.
SECURE_LOOPBACK_POLICY = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Action": "mq:List*",
            "Resource": "*",
            "Condition": {"IpAddress": {"aws:SourceIp": "127.0.0.1/32"}},
        },
        {"Effect": "Deny", "Action": "*", "Resource": "*", "Condition": {"Bool": {"aws:SecureTransport": "false"}}},
    ],
}
# Allowed only from a network the test is not on.
ELSEWHERE_POLICY = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Action": "mq:List*",
            "Resource": "*",
            "Condition": {"IpAddress": {"aws:SourceIp": "10.0.0.0/8"}},
        }
    ],
}


def self_signed(directory):
    """(cert path, key path): an ECDSA P-256 certificate for 127.0.0.1 and localhost."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mooring test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


@pytest.fixture
def tls_control_plane(tmp_path_factory, control_plane_kit):
    ControlPlane = control_plane_kit[1]
    certs = tmp_path_factory.mktemp("certs")
    cert, key = self_signed(certs)
    data_dir = tmp_path_factory.mktemp("mooring-tls")
    cp = ControlPlane(
        data_dir,
        extra_args=(
            "--agent-binary", str(data_dir / "no-agent-here"),
            "--tls-cert", str(cert),
            "--tls-key", str(key),
        ),
    )
    cp.endpoint = f"https://{cp.address}"
    cp.ca_bundle = cert
    yield cp
    cp.stop()


def add_user(aws, policy, ca_bundle, tmp_path, Aws, endpoint):
    """Creates a user with `policy` and a key; returns an Aws client signing as them."""
    extra = ("--ca-bundle", str(ca_bundle)) if ca_bundle else ()
    name = f"user-{uuid.uuid4().hex[:8]}"
    aws.ok("create-user", "--user-name", name, *extra, service="iam")
    aws.ok(
        "put-user-policy", "--user-name", name, "--policy-name", "p",
        "--policy-document", json.dumps(policy), *extra, service="iam",
    )
    key = aws.ok("create-access-key", "--user-name", name, *extra, service="iam")["AccessKey"]
    home = tmp_path / name
    home.mkdir()
    credentials = home / "credentials"
    credentials.write_text(
        f"[default]\naws_access_key_id = {key['AccessKeyId']}\naws_secret_access_key = {key['SecretAccessKey']}\n"
    )
    return Aws(endpoint, home, credentials)


def test_the_cli_works_over_https_and_plain_http_is_refused(tls_control_plane, tmp_path, control_plane_kit):
    Aws = control_plane_kit[0]
    cp = tls_control_plane
    aws = Aws(cp.endpoint, tmp_path, cp.credentials_file)
    host, port = cp.address.rsplit(":", 1)
    # Clients that connect and never finish a handshake stall nobody else.
    silent = [socket.create_connection((host, int(port)), timeout=10) for _ in range(20)]
    try:
        listed = aws.ok("list-brokers", "--ca-bundle", str(cp.ca_bundle))
        assert "BrokerSummaries" in listed
    finally:
        for s in silent:
            s.close()
    # Without the CA the CLI refuses the certificate, as it would any unknown one.
    code, _, err = aws.run("list-brokers")
    assert code != 0 and "SSL" in err.upper(), err

    # Plain HTTP to the TLS port gets no HTTP answer.
    with pytest.raises((OSError, http.client.HTTPException)):
        urllib.request.urlopen(f"http://{cp.address}/healthz", timeout=10).read()
    # HTTPS health check, verified against the test CA.
    context = ssl.create_default_context(cafile=str(cp.ca_bundle))
    with urllib.request.urlopen(f"https://{cp.address}/healthz", timeout=10, context=context) as response:
        assert response.status == 200


def test_secure_transport_and_source_ip_are_evaluated(tls_control_plane, control_plane, aws, tmp_path, control_plane_kit):
    Aws = control_plane_kit[0]
    cp = tls_control_plane
    admin_tls = Aws(cp.endpoint, tmp_path, cp.credentials_file)
    ca = ("--ca-bundle", str(cp.ca_bundle))

    # Over TLS from 127.0.0.1: both conditions hold.
    secure = add_user(admin_tls, SECURE_LOOPBACK_POLICY, cp.ca_bundle, tmp_path, Aws, cp.endpoint)
    assert "BrokerSummaries" in secure.ok("list-brokers", *ca)
    # The same policy on the plain-HTTP control plane: aws:SecureTransport is false.
    plain = add_user(aws, SECURE_LOOPBACK_POLICY, None, tmp_path, Aws, control_plane.endpoint)
    message = plain.fails("ForbiddenException", "list-brokers")
    assert "explicit deny" in message, message
    # Allowed only from 10.0.0.0/8: the peer is 127.0.0.1, so nothing allows it.
    elsewhere = add_user(admin_tls, ELSEWHERE_POLICY, cp.ca_bundle, tmp_path, Aws, cp.endpoint)
    message = elsewhere.fails("ForbiddenException", "list-brokers", *ca)
    assert "explicit deny" not in message, message
