"""https:// management URLs use TLS: the client verifies the server certificate
against the configured roots and still sends the bearer token."""

from __future__ import annotations

import datetime
import ipaddress
from concurrent import futures

import grpc
import pytest
import pytest_twisted
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import reactor

from nbgateway import errors
from nbgateway._proto import proxy_service_pb2_grpc as pb_grpc
from nbgateway.mgmt.client import GrpcManagementClient
from tests.mgmt.servicer import TOKEN, CannedProxyService


def self_signed(name: str) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return key_pem, cert.public_bytes(serialization.Encoding.PEM)


@pytest.fixture
def tls_server():
    key_pem, cert_pem = self_signed("127.0.0.1")
    servicer = CannedProxyService()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_ProxyServiceServicer_to_server(servicer, server)
    creds = grpc.ssl_server_credentials([(key_pem, cert_pem)])
    port = server.add_secure_port("127.0.0.1:0", creds)
    server.start()
    clients: list[GrpcManagementClient] = []

    def client(roots: bytes | None) -> GrpcManagementClient:
        c = GrpcManagementClient(
            reactor, f"https://127.0.0.1:{port}", TOKEN, address="c", root_certificates=roots
        )
        c.startService()
        clients.append(c)
        return c

    yield servicer, cert_pem, client
    for c in clients:
        c.stopService()
    server.stop(None).wait(5)


@pytest_twisted.ensureDeferred
async def test_https_verifies_server_and_sends_token(tls_server) -> None:
    servicer, cert_pem, make = tls_server
    client = make(cert_pem)
    assert client.target.tls
    resp = await client.validate_tunnel_peer("100.64.0.10", "app.example")
    assert resp.valid
    assert servicer.authorization == [f"Bearer {TOKEN}"]


@pytest_twisted.ensureDeferred
async def test_https_with_untrusted_certificate_fails_closed(tls_server) -> None:
    servicer, _, make = tls_server
    _, other_ca = self_signed("127.0.0.1")
    client = make(other_ca)
    with pytest.raises(errors.ManagementUnavailableError):
        await client.validate_tunnel_peer("100.64.0.10", "app.example")
    assert servicer.authorization == []  # the token never reached the server
