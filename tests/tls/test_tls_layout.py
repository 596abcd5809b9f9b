"""The TLS listener's per-connection objects keep their attributes inline
however many connections have been made.

CPython 3.11 keeps an instance's attributes as inline values only for the
names its class's shared keys took in while there was room: at most 30,
one fewer for every instance made (tests/proxy/test_instance_layout.py).
``DeadlineTLSProtocol`` set five names first when the handshake completed
(``_handshake_pending``, ``_write_through``, ``_records``, ``_path``,
``_held``): once a few connections had been made, every later connection's
protocol got a dict of its own at its first request.  And
``DeadlineTLSProtocol._take_reads`` read the sniffer's ``__dict__``, which
gave every record-path connection's ``_Sniffer`` a dict of its own.  Now
both constructors set every name of a keep-alive connection, in one order,
and the sniffer's bound method is compared instead.

Measured (callgrind, server side per HTTPS keep-alive request): no gain per
request -- 16 connections 218.5k -> 218.8k, 40 connections 221.4k -> 218.8k
of which ~1.3k outside OpenSSL's SHA-512 (run-to-run crypto noise), one
connection unchanged -- nor in memory: ``ProtocolWrapper.__getattr__``
keeps CPython 3.11 from specialising attribute reads on the protocol, so a
read is one hash lookup in its shared keys or in its own dict alike, and
the sniffer's forwarding ``dataReceived`` shadows a method (never
specialised).  Kept so that the protocol's attribute stores stay
specialised and no per-connection dict is made; the record path
(:class:`nbgateway.tls.dispatch._RecordPath`, slots) is what makes the hot
reads fast."""

from __future__ import annotations

import sys

import pytest
from OpenSSL import SSL

from nbgateway.tls.dispatch import DeadlineTLSProtocol, _Sniffer
from tests.proxy.test_instance_layout import _inline
from tests.tls.test_tls_instance_size import HTTPS
from tests.tls.test_tls_records import ADDR

_CPYTHON_311 = sys.implementation.name == "cpython" and sys.version_info[:2] == (3, 11)
#: set by makeConnection itself, the first thing after the constructor
_MAKE_CONNECTION = {"_tlsConnection", "_appSendBuffer", "__provides__"}


def _served(h: HTTPS, n: int, tag: bytes = b"") -> None:
    for i in range(n):
        got = h.get(b"/p%s%d?q=%d" % (tag, i, i))
        assert got.startswith(b"HTTP/1.1 200 OK\r\n") and got.endswith(b"\r\n\r\ntls"), got


@pytest.mark.parametrize("records_on,version", [(True, None), (False, None),
                                                (True, SSL.TLS1_2_VERSION)])
def test_the_constructors_set_every_name_of_a_keep_alive_connection(records_on, version):
    h = HTTPS(records_on, version)
    _served(h, 3)
    factory = h.sniffer.factory
    fresh = factory.tls_factory.buildProtocol(ADDR)
    assert isinstance(fresh, DeadlineTLSProtocol)
    after = set(vars(h.server)) - _MAKE_CONNECTION
    assert after <= set(vars(fresh)), sorted(after - set(vars(fresh)))
    sniffer = _Sniffer(factory, ADDR)
    # (a TLS connection's sniffer forwards its reads with an own dataReceived)
    assert set(vars(h.sniffer)) - {"dataReceived"} <= set(vars(sniffer))
    # the defaults are the class defaults they replace
    for name in set(vars(fresh)) - {"wrappedProtocol", "factory", "_connectWrapped",
                                    "_aggregator", "write"}:
        for klass in DeadlineTLSProtocol.__mro__:
            if name in vars(klass):
                assert getattr(fresh, name) == vars(klass)[name], name
                break
        else:
            raise AssertionError(f"{name} has no class default")


def test_the_sniffers_reads_follow_the_record_path():
    """On the record path the sniffer's reads go to the path's read; when
    the path is left (a close) back to the protocol's dataReceived."""
    h = HTTPS(True)
    _served(h, 1)
    path = h.server._path
    assert path is not None
    assert h.sniffer.dataReceived == path.read
    h.server.loseConnection()
    assert h.server._path is None
    assert h.sniffer.dataReceived == h.server.dataReceived
    # a sniffer whose reads go elsewhere (its own method: not yet handed
    # over) is left alone
    sniffer = _Sniffer(h.sniffer.factory, ADDR)
    proto = h.sniffer.factory.tls_factory.buildProtocol(ADDR)
    proto._sniffer = sniffer
    proto._take_reads(path.read, proto.dataReceived)
    assert sniffer.dataReceived.__func__ is _Sniffer.dataReceived
    assert "dataReceived" not in vars(sniffer)


@pytest.mark.skipif(not _CPYTHON_311, reason="reads CPython 3.11's object layout")
def test_connections_keep_inline_attributes_after_many_were_made():
    """40 TLS connections (past the shared keys' room), the first ones a
    TLS 1.2 and a records-off one, each with keep-alive requests, then the
    first ones serve again: every protocol and sniffer is still inline
    (before: all but the first few protocols, and every record-path
    connection's sniffer, had a dict of their own)."""
    conns = [HTTPS(True, SSL.TLS1_2_VERSION), HTTPS(False)]
    conns += [HTTPS(True) for _ in range(38)]
    for h in conns:
        _served(h, 2)
    for h in conns[:3]:
        _served(h, 2, b"x")
    assert [i for i, h in enumerate(conns) if not _inline(h.server)] == []
    assert [i for i, h in enumerate(conns) if not _inline(h.sniffer)] == []
    assert all(h.server._records for h in conns[2:])
