"""Sans-IO TLS ClientHello peeker: which server name does a new connection ask for?

Feed the first bytes of a connection to :class:`SNIPeeker`; it answers once it
knows, never reads past the first TLS record, and keeps every byte it was fed
(:attr:`SNIPeeker.buffered`) so the caller can replay them to the relay.

Rules (upstream's peek):

- a first byte other than 0x16 (handshake record) is *not TLS*;
- a record length of 0 or above 16,384 is TLS *without* a server name
  (answered at once, nothing more is read);
- only the first record is parsed; a ClientHello that does not fit in it, or
  any malformed length inside it, means no server name;
- a server name longer than 253 bytes, containing NUL or not ASCII is no
  server name; names are lower-cased and one trailing root dot is dropped
  (the routes are keyed by :func:`~nbgateway.routes.hosts.domain_key`, as the
  HTTP side folds names: ``b.example.`` must not miss service B's TLS route
  and land on the port's fallback, another service, maybe another account's).

The read deadline (5 s) is the caller's: it calls nothing here when the clock
runs out, it just closes the connection.
"""

from __future__ import annotations

from dataclasses import dataclass

#: TLS record header bytes
RECORD_HEADER = 5
#: the largest TLS plaintext record (and so the most this peeker buffers + 5)
MAX_RECORD = 16384
#: the most bytes a peek may hold
MAX_PEEK = RECORD_HEADER + MAX_RECORD
MAX_NAME = 253
#: the caller's deadline for a complete peek (seconds)
PEEK_TIMEOUT = 5.0

_HANDSHAKE = 0x16
_CLIENT_HELLO = 0x01
_EXT_SERVER_NAME = 0x0000
_HOST_NAME = 0x00


@dataclass(frozen=True, slots=True)
class PeekResult:
    """``tls``: the bytes start a TLS handshake record; ``server_name``: the
    lower-cased SNI host name, or "" when there is none (or it is unusable)."""

    tls: bool
    server_name: str = ""


NOT_TLS = PeekResult(False)
TLS_NO_SNI = PeekResult(True)


class SNIPeeker:
    """Feed bytes with :meth:`feed` until it returns a :class:`PeekResult`."""

    def __init__(self) -> None:
        self.buffered = b""
        self.result: PeekResult | None = None

    def feed(self, data: bytes) -> PeekResult | None:
        """Add ``data``; the result once known (then and after), else None."""
        if self.result is not None:
            self.buffered += data
            return self.result
        self.buffered += data
        buf = self.buffered
        if not buf:
            return None
        if buf[0] != _HANDSHAKE:
            self.result = NOT_TLS
            return self.result
        if len(buf) < RECORD_HEADER:
            return None
        length = int.from_bytes(buf[3:5], "big")
        if length == 0 or length > MAX_RECORD:
            self.result = TLS_NO_SNI
            return self.result
        if len(buf) < RECORD_HEADER + length:
            return None
        name = server_name(buf[RECORD_HEADER:RECORD_HEADER + length])
        self.result = PeekResult(True, name)
        return self.result


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if n < 0 or end > len(self.data):
            raise ValueError("truncated")
        out = self.data[self.pos:end]
        self.pos = end
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int.from_bytes(self.take(2), "big")

    def u24(self) -> int:
        return int.from_bytes(self.take(3), "big")

    def vector(self, width: int) -> bytes:
        n = int.from_bytes(self.take(width), "big")
        return self.take(n)


def server_name(record: bytes) -> str:
    """The SNI host name in one TLS record body holding a ClientHello, or ""."""
    try:
        r = _Reader(record)
        if r.u8() != _CLIENT_HELLO:
            return ""
        hello = _Reader(r.take(r.u24()))
        hello.take(2 + 32)  # legacy_version, random
        hello.vector(1)  # session id
        hello.vector(2)  # cipher suites
        hello.vector(1)  # compression methods
        if hello.pos == len(hello.data):
            return ""  # no extensions
        extensions = _Reader(hello.vector(2))
        while extensions.pos < len(extensions.data):
            kind = extensions.u16()
            body = extensions.vector(2)
            if kind != _EXT_SERVER_NAME:
                continue
            names = _Reader(_Reader(body).vector(2))
            while names.pos < len(names.data):
                name_type = names.u8()
                name = names.vector(2)
                if name_type == _HOST_NAME:
                    return _usable(name)
            return ""
    except ValueError:
        return ""
    return ""


def _usable(name: bytes) -> str:
    if not name or len(name) > MAX_NAME or b"\x00" in name:
        return ""
    try:
        text = name.decode("ascii")
    except UnicodeDecodeError:
        return ""
    text = text.lower()
    return text[:-1] if text.endswith(".") else text
