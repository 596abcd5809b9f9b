"""Unchanged Twisted components over the tunnel endpoints, in memory:
``twisted.web.server.Site`` + ``twisted.web.client.Agent``, and TLS with
``TLSMemoryBIOFactory`` (server) / ``wrapClientTLS`` (client) using a
freshly generated self-signed certificate."""

from __future__ import annotations

import datetime
import hashlib

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import defer, ssl
from twisted.internet.task import Clock
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer
from twisted.web.resource import Resource
from twisted.web.server import Site
from zope.interface import implementer

from nbgateway.netstack.endpoints import TunnelAgentEndpointFactory, TunnelServerEndpoint
from nbgateway.netstack.testing import make_stack_pair

from .test_tcp_link import run_clock


class Hello(Resource):
    isLeaf = True

    def render_GET(self, request):
        peer = request.getClientAddress()
        host = request.getHost()
        return b"hello %s:%d -> %s:%d" % (peer.host.encode(), peer.port, host.host.encode(),
                                          host.port)

    def render_POST(self, request):
        return hashlib.sha256(request.content.read()).hexdigest().encode()


def _serve(clock, b, port, factory, interface):
    ports: list = []
    TunnelServerEndpoint(b, port, interface=interface).listen(factory).addBoth(ports.append)
    assert not isinstance(ports[0], Exception)
    return ports[0]


def _fetch(clock, agent, method, url, body=None):
    out: list = []
    d = agent.request(method, url, Headers({}),
                      BytesProducer(body) if body is not None else None)
    d.addCallback(lambda r: readBody(r).addCallback(lambda data: (r.code, data)))
    d.addBoth(out.append)
    run_clock(clock, lambda: out, limit=120)
    assert out, "request did not finish"
    if isinstance(out[0], Exception) or hasattr(out[0], "raiseException"):
        out[0].raiseException()
    return out[0]


@implementer(IBodyProducer)
class BytesProducer:
    def __init__(self, body: bytes) -> None:
        self.body = body
        self.length = len(body)

    def startProducing(self, consumer):
        consumer.write(self.body)
        return defer.succeed(None)

    def pauseProducing(self):
        pass

    def resumeProducing(self):
        pass

    def stopProducing(self):
        pass


@pytest.mark.parametrize("v6", [False, True])
def test_site_and_agent(v6):
    clock = Clock()
    clock.advance(50.0)
    a, b, _ = make_stack_pair(clock, drop=0.02, seed=7, reorder=0.05)
    server_ip = "fd00::2" if v6 else "100.64.0.2"
    site = Site(Hello(), reactor=clock)
    port = _serve(clock, b, 80, site, server_ip)
    pool = HTTPConnectionPool(clock, persistent=False)
    agent = Agent.usingEndpointFactory(clock, TunnelAgentEndpointFactory(a), pool=pool)
    url = b"http://[fd00::2]/x" if v6 else b"http://100.64.0.2/x"
    code, body = _fetch(clock, agent, b"GET", url)
    client_ip = "fd00::1" if v6 else "100.64.0.1"
    assert code == 200 and body.startswith(f"hello {client_ip}:".encode())
    assert body.endswith(f" -> {server_ip}:80".encode())
    blob = hashlib.shake_256(b"post").digest(300_000)
    code, body = _fetch(clock, agent, b"POST", url, blob)
    assert code == 200 and body == hashlib.sha256(blob).hexdigest().encode()
    port.stopListening()


def _self_signed(name: str) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


class _TrustPolicy:
    def __init__(self, cert_pem: bytes) -> None:
        self.root = ssl.Certificate.loadPEM(cert_pem)

    def creatorForNetloc(self, hostname, port):
        return ssl.optionsForClientTLS(hostname.decode(), trustRoot=self.root)


def test_tls_site_over_tunnel():
    clock = Clock()
    clock.advance(50.0)
    a, b, _ = make_stack_pair(clock, drop=0.02, duplicate=0.02, seed=3)
    cert_pem, key_pem = _self_signed("svc.test")
    server_opts = ssl.PrivateCertificate.loadPEM(cert_pem + key_pem).options()
    site = Site(Hello(), reactor=clock)
    _serve(clock, b, 443, TLSMemoryBIOFactory(server_opts, False, site, clock=clock), "100.64.0.2")
    factory = TunnelAgentEndpointFactory(a, contextFactory=_TrustPolicy(cert_pem),
                                         resolve=lambda host: "100.64.0.2")
    agent = Agent.usingEndpointFactory(clock, factory,
                                       pool=HTTPConnectionPool(clock, persistent=False))
    code, body = _fetch(clock, agent, b"GET", b"https://svc.test/")
    assert code == 200 and body.startswith(b"hello 100.64.0.1:")
    blob = hashlib.shake_256(b"tls").digest(200_000)
    code, body = _fetch(clock, agent, b"POST", b"https://svc.test/up", blob)
    assert body == hashlib.sha256(blob).hexdigest().encode()

    # a client that does not trust the certificate fails the handshake
    other_pem, _ = _self_signed("svc.test")
    bad = Agent.usingEndpointFactory(
        clock, TunnelAgentEndpointFactory(a, contextFactory=_TrustPolicy(other_pem),
                                          resolve=lambda host: "100.64.0.2"),
        pool=HTTPConnectionPool(clock, persistent=False))
    with pytest.raises(Exception, match=r"certificate verify failed|SSL"):
        _fetch(clock, bad, b"GET", b"https://svc.test/")
