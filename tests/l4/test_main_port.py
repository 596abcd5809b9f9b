"""The main port: L4 routes in front of the HTTP channel (TLSOrPlainFactory.front)."""

from __future__ import annotations

from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock

from nbgateway.l4.proxyproto import encode_v2
from nbgateway.l4.router import PortRouter
from nbgateway.l4.stats import L4Stats
from nbgateway.l4.target import target_from_mapping
from nbgateway.tls.dispatch import TLSOrPlainFactory
from tests.l4.fakes import Endpoint, Transport, mapping
from tests.l4.test_sni import client_hello


class Recorder(Protocol):
    def __init__(self) -> None:
        self.data = b""
        self.peer = None

    def connectionMade(self) -> None:
        self.peer = self.transport.getPeer()

    def dataReceived(self, data: bytes) -> None:
        self.data += data


class HTTPChannel:
    """Stands in for the TLSOrPlainFactory (its ``sniffer``)."""

    def __init__(self) -> None:
        self.built: list[Recorder] = []

    def sniffer(self, addr):
        r = Recorder()
        self.built.append(r)
        return r


def main_router(http_names=("web.example",), **kw):
    ep = Endpoint()
    dialed = []
    http = HTTPChannel()
    router = PortRouter(443, clock=Clock(), dial=lambda t: dialed.append(t) or ep,
                        stats=L4Stats(), http_factory=http,
                        http_lookup=lambda name: name in http_names, **kw)
    return router, http, ep, dialed


def connect(router, peer=("192.0.2.10", 40000)):
    proto = router.front(None)
    if proto is None:
        return None, None
    t = Transport(peer=peer, host=("198.18.0.1", 443))
    proto.makeConnection(t)
    return proto, t


def test_no_l4_route_means_the_usual_dispatch():
    router, _http, _ep, _dialed = main_router()
    assert router.front(None) is None
    from twisted.internet.ssl import CertificateOptions

    factory = TLSOrPlainFactory(CertificateOptions(), HTTPChannel(), clock=Clock())
    factory.front = router.front
    assert type(factory.buildProtocol(None)).__name__ == "_Sniffer"
    router.set_route(target_from_mapping(mapping(mode="tls", port=443, domain="p.example")))
    assert type(factory.buildProtocol(None)).__name__ == "L4ServerProtocol"


def test_tls_route_http_route_and_unmatched():
    router, http, _ep, dialed = main_router(http_names=("web.example", "both.example"))
    router.set_route(target_from_mapping(mapping(mode="tls", port=443, domain="pass.example")))
    router.set_route(target_from_mapping(mapping(mode="tls", port=443, domain="both.example",
                                                 sid="svc2")))
    proto, _ = connect(router)
    proto.dataReceived(client_hello("pass.example"))
    assert [t.domain for t in dialed] == ["pass.example"] and not http.built
    hello = client_hello("web.example")
    proto, _ = connect(router)
    proto.dataReceived(hello)
    assert http.built[-1].data == hello  # replayed to the HTTP channel
    proto, _ = connect(router)
    proto.dataReceived(client_hello("both.example"))  # HTTP routes beat TCP routes
    assert len(dialed) == 1 and len(http.built) == 2
    proto, _ = connect(router)
    proto.dataReceived(b"GET / HTTP/1.1\r\n")  # not TLS, no fallback: HTTP
    assert http.built[-1].data == b"GET / HTTP/1.1\r\n"
    proto.dataReceived(b"Host: x\r\n\r\n")
    assert http.built[-1].data.endswith(b"Host: x\r\n\r\n")


def test_fallback_beats_http_for_unmatched_only():
    router, http, _ep, dialed = main_router()
    router.set_route(target_from_mapping(mapping(mode="tcp", port=443, sid="fb")))
    proto, _ = connect(router)
    proto.dataReceived(b"SSH-2.0-x\r\n")
    assert dialed[-1].service_id == "fb"
    proto, _ = connect(router)
    proto.dataReceived(client_hello("web.example"))
    assert len(dialed) == 1 and len(http.built) == 1


def test_inbound_proxy_on_the_main_port_sets_the_http_peer():
    router, http, _ep, _dialed = main_router(proxy_protocol=True,
                                           trusted=lambda ip: ip == "10.0.0.9")
    proto, _ = connect(router, peer=("10.0.0.9", 1))
    proto.dataReceived(encode_v2(("203.0.113.7", 7777), ("198.18.0.1", 443)) + b"GET /")
    rec = http.built[-1]
    assert (rec.peer.host, rec.peer.port) == ("203.0.113.7", 7777) and rec.data == b"GET /"
    proto, _ = connect(router, peer=("192.0.2.5", 2))
    proto.dataReceived(encode_v2(("203.0.113.7", 7777), ("198.18.0.1", 443)) + b"GET /")
    rec = http.built[-1]
    assert rec.peer.host == "192.0.2.5" and rec.data == b"GET /"  # untrusted: ignored
