"""Review 14 (sec14): L4 TLS passthrough and HTTP routing on the shared main
port, between tenants (the port's :class:`~nbgateway.l4.router.PortRouter`
in front of the HTTP channel).  Pins, all holding on main:

* a server name is matched in its normalised form (case, one trailing root
  dot) on both sides: tenant A's passthrough name in any spelling goes to
  A's relay, tenant B's HTTP name in any spelling to the HTTP channel;
* an HTTP name beats a passthrough route of the same name and a fallback;
  a passthrough of one tenant never takes another tenant's HTTP name;
* a private passthrough route on the shared main port is never relayed
  (no listener account there): closed before any dial;
* the peeked bytes reach whichever side takes the connection unchanged.
"""

from __future__ import annotations

from twisted.internet.task import Clock

from nbgateway.l4.router import PortRouter
from nbgateway.l4.stats import L4Stats
from nbgateway.l4.target import target_from_mapping
from nbgateway.routes.hosts import domain_key
from tests.l4.fakes import Endpoint, Transport, mapping
from tests.l4.test_main_port import HTTPChannel
from tests.l4.test_sni import client_hello, hello_record

HTTP_NAMES = {"b-web.example"}  # tenant B's HTTP service (the front's lookup)


def _router(**kw):
    dialed = []
    http = HTTPChannel()
    router = PortRouter(443, clock=Clock(), dial=lambda t: dialed.append(t) or Endpoint(),
                        stats=L4Stats(), http_factory=http,
                        http_lookup=lambda name: domain_key(name) in HTTP_NAMES, **kw)
    router.set_route(target_from_mapping(mapping(mode="tls", port=443, domain="a-pass.example",
                                                 sid="a-pass", account="tenant-a")))
    return router, http, dialed


def _connect(router, data):
    proto = router.front(None)
    t = Transport(peer=("192.0.2.10", 40000), host=("198.18.0.1", 443))
    proto.makeConnection(t)
    proto.dataReceived(data)
    return proto, t


def test_passthrough_name_in_any_spelling_goes_to_its_relay():
    router, http, dialed = _router()
    for name in ("a-pass.example", "A-PASS.Example", "a-pass.example."):
        _connect(router, client_hello(name))
    # the ssl module keeps a trailing dot out of the SNI; a raw hello may carry one
    _connect(router, hello_record(b"A-Pass.Example."))
    assert [t.service_id for t in dialed] == ["a-pass"] * 4
    assert http.built == []


def test_http_name_in_any_spelling_goes_to_the_http_channel():
    router, http, dialed = _router()
    for name in ("b-web.example", "B-WEB.EXAMPLE"):
        hello = client_hello(name)
        _connect(router, hello)
        assert http.built[-1].data == hello  # replayed as received
    _connect(router, hello_record(b"b-web.example."))
    assert len(http.built) == 3 and dialed == []


def test_a_passthrough_never_takes_another_tenants_http_name():
    router, http, dialed = _router()
    # tenant A also claims B's HTTP name as a passthrough (a faulty or foreign
    # management): the HTTP service keeps the name
    router.set_route(target_from_mapping(mapping(mode="tls", port=443, domain="b-web.example",
                                                 sid="a-steal", account="tenant-a")))
    router.set_route(target_from_mapping(mapping(mode="tcp", port=443, sid="a-fallback",
                                                 account="tenant-a")))
    _connect(router, client_hello("B-Web.Example"))
    assert len(http.built) == 1 and dialed == []
    # an unknown name goes to the fallback, a name-less hello too
    _connect(router, client_hello("unknown.example"))
    _connect(router, client_hello(None))
    assert [t.service_id for t in dialed] == ["a-fallback", "a-fallback"]


def test_private_passthrough_on_the_shared_port_is_never_relayed():
    router, http, dialed = _router(gate=lambda target, ip: (True, "", "u", ()))
    router.set_route(target_from_mapping(mapping(mode="tls", port=443, domain="priv.example",
                                                 sid="priv", private=True,
                                                 account="tenant-a")))
    _proto, t = _connect(router, client_hello("priv.example"))
    assert dialed == [] and http.built == []
    assert t.disconnecting or t.aborted
