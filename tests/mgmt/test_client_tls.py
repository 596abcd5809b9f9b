"""https:// management URLs use TLS: the client verifies the server certificate
against the configured roots and still sends the bearer token."""

from __future__ import annotations

from concurrent import futures

import grpc
import pytest
import pytest_twisted
from twisted.internet import reactor

from nbgateway import errors
from nbgateway._proto import proxy_service_pb2_grpc as pb_grpc
from nbgateway.mgmt.client import GrpcManagementClient
from tests.mgmt.servicer import TOKEN, CannedProxyService
from tests.selfsigned import loopback_cert


@pytest.fixture
def tls_server():
    key_pem, cert_pem = loopback_cert("127.0.0.1")
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
    _, other_ca = loopback_cert("127.0.0.1")
    client = make(other_ca)
    with pytest.raises(errors.ManagementUnavailableError):
        await client.validate_tunnel_peer("100.64.0.10", "app.example")
    assert servicer.authorization == []  # the token never reached the server
