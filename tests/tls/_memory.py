"""An in-memory TLS connection to a listener: a pyOpenSSL client on memory
BIOs, the server's transport a StringTransport that counts its writes.

Shared by ``tests/tls/test_tls_records.py`` and ``tests/tls/test_tls_writes.py``
(each builds its own server through ``TLSOrPlainFactory`` and keeps its own
harness around these).  The leading underscore keeps pytest from collecting
this module.
"""

from __future__ import annotations

from collections.abc import Callable

from OpenSSL import SSL
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IProtocol
from twisted.internet.testing import StringTransport

ADDR = IPv4Address("TCP", "100.64.0.10", 40000)
#: how much one BIO read or ``recv`` takes (more than any test's flight)
CHUNK = 1 << 20


class Wire(StringTransport):
    """The server's transport: reports loss only when told (as a netstack
    connection after a FIN); counts the writes it is given."""

    def __init__(self) -> None:
        super().__init__(peerAddress=ADDR)
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        super().write(data)


def client(alpn: bytes, max_version: int | None = None) -> SSL.Connection:
    """A TLS client offering *alpn*, in the connect state."""
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    ctx.set_alpn_protos([alpn])
    if max_version is not None:
        ctx.set_max_proto_version(max_version)
    conn = SSL.Connection(ctx, None)
    conn.set_connect_state()
    return conn


def handshake(conn: SSL.Connection, pump: Callable[[], None]) -> None:
    """The client's side of the handshake, *pump* between its flights."""
    for _ in range(10):
        try:
            conn.do_handshake()
            return
        except SSL.WantReadError:
            pump()


def pump(conn: SSL.Connection, server: IProtocol, wire: Wire, tamper: bool = False) -> None:
    """Moves bytes both ways until neither side has any; *tamper*: one bit
    of the first client flight flipped."""
    for _ in range(20):
        try:
            out = conn.bio_read(CHUNK)
        except SSL.WantReadError:
            out = b""
        if out:
            if tamper:
                out = out[:-1] + bytes([out[-1] ^ 1])
                tamper = False
            server.dataReceived(out)
        back = wire.value()
        wire.clear()
        if back:
            conn.bio_write(back)
        if not out and not back:
            return


def read(conn: SSL.Connection, closed_ok: bool = False) -> bytes:
    """What the client can decrypt now; *closed_ok*: a close_notify ends it
    too (else it raises ``SSL.ZeroReturnError``)."""
    got = b""
    while True:
        try:
            got += conn.recv(CHUNK)
        except SSL.WantReadError:
            return got
        except SSL.ZeroReturnError:
            if not closed_ok:
                raise
            return got
