"""The TLS record path of an established listener connection: OpenSSL's
``SSL_read``/``SSL_write`` and the memory BIOs called directly, for the
listeners' TLS protocol (:class:`nbgateway.tls.dispatch.DeadlineTLSProtocol`).

Twisted's ``TLSMemoryBIOProtocol`` goes through pyOpenSSL's ``Connection``
for every record: a 32 KiB buffer allocated per ``recv`` and per
``bio_read``, a ``WantReadError`` raised and caught at the end of every read
loop and of every send-BIO flush (two exceptions per keep-alive request),
and its error mapping run after every successful call.  This module does the
same OpenSSL calls with two reused buffers and plain return values:

* :func:`read_plaintext` returns what ``SSL_read`` gives (bytes), ``b""``
  when OpenSSL wants more ciphertext, or the failing return value (an int)
  for the caller to raise through pyOpenSSL's own mapping
  (``Connection._raise_ssl_error``), so close_notify, alerts and errors end
  the connection exactly as before;
* :func:`seal` hands plaintext to ``SSL_write`` in slices of at most
  :data:`SEAL_SLICE` bytes and returns the ciphertext of each slice with how
  much was consumed (a short count means ``SSL_write`` refused: the caller
  gives the rest to Twisted's path, which raises or buffers as before);
* :func:`drain` reads everything OpenSSL queued in the send BIO in one bytes
  object; :func:`seal_drain` is :func:`seal` then :func:`drain` in one call
  (the write path's per-response step);
* :func:`record_overhead` is what a record of the connection's suite adds
  to its plaintext (22 bytes for the 16-byte-tag suites), for a caller to
  tell a read of exactly one record (:class:`nbgateway.tls.dispatch.
  _RecordPath` then asks neither BIO; it also calls this module's bindings
  and buffers inline for the common read and write);
* :func:`unread` and :func:`unsent` say how many bytes wait in the read BIO
  (ciphertext OpenSSL has not taken yet) and in the send BIO, for a caller
  to skip an ``SSL_read`` that could only want more ciphertext or a
  ``BIO_read`` of nothing.  Each call into OpenSSL through the bindings
  costs ~1-2k instructions (argument conversion, the GIL released and
  taken back); a ``SSL_read`` that finds no record and the
  ``SSL_get_error`` after it ~6k, the ``BIO_get_mem_data`` that replaces
  them ~2k.

Every function takes a ``conn`` with pyOpenSSL's three pointer attributes:
a pyOpenSSL ``Connection`` or, on the hot path, its :class:`Bios` (the same
three pointers read once into slots).  ``Connection`` defines
``__getattr__`` (it forwards to its socket), so CPython 3.11 does not
specialise attribute reads on it: each ``conn._ssl`` there costs ~390
instructions against ~80 on a plain slotted object (callgrind), seven of
them per keep-alive request.

It reads pyOpenSSL's private ``_ssl``, ``_into_ssl`` and ``_from_ssl`` and
``OpenSSL._util``'s ``ffi``/``lib`` (:data:`AVAILABLE`: all present, checked
once on a probe connection); :func:`eligible` checks a connection has them and
that the connection negotiated TLS 1.3 or TLS 1.2, and :func:`take` refuses
renegotiation on a TLS 1.2 one (TLS 1.3 has none), so no handshake, and no
Python callback that needs pyOpenSSL's after-call checks, can run inside
``SSL_read``.  Anything else keeps Twisted's path.  pyOpenSSL binds no
``read_ahead`` setter, so OpenSSL takes one record at a time from the read
BIO (its header, then exactly its body): once a ``SSL_read`` has returned
plaintext and :func:`unread` is 0, the next ``SSL_read`` could only want
more ciphertext.  tests/tls/test_tls_records.py
pins the behaviour against the installed pyOpenSSL.

The two buffers are module-level and reused: the gateway runs TLS on the
reactor thread only, and every result is copied out (``ffi.unpack``)
before any other code runs, so a re-entrant write cannot clobber them.
"""

from __future__ import annotations

from typing import Any

try:
    from OpenSSL import SSL as _SSL
    from OpenSSL._util import ffi as _ffi
    from OpenSSL._util import lib as _lib

    _NEEDED = ("SSL_read", "SSL_write", "BIO_read", "BIO_write", "SSL_get_error",
               "SSL_version", "SSL_ERROR_WANT_READ", "BIO_get_mem_data")
    _probe = _SSL.Connection(_SSL.Context(_SSL.TLS_SERVER_METHOD), None)
    AVAILABLE = (all(hasattr(_lib, name) for name in _NEEDED)
                 and all(getattr(_probe, attr, None) is not None
                         for attr in ("_ssl", "_into_ssl", "_from_ssl")))
    del _probe
    #: TLS 1.2 connections too (:func:`take` sets and reads these options)
    TLS12_AVAILABLE = AVAILABLE and all(hasattr(_lib, name) for name in (
        "SSL_set_options", "SSL_get_options", "SSL_OP_NO_RENEGOTIATION",
        "SSL_OP_NO_COMPRESSION"))
except ImportError:  # pragma: no cover - pyOpenSSL is a dependency
    AVAILABLE = TLS12_AVAILABLE = False

#: the largest plaintext one ``SSL_read`` returns here (Twisted reads 2**15)
READ_SIZE = 1 << 15
#: the send BIO is read in pieces of this size (one piece per small response)
DRAIN_SIZE = 1 << 16
#: at most this much plaintext goes to ``SSL_write`` before the send BIO is
#: drained (bounds the ciphertext held in memory for one large write)
SEAL_SLICE = 1 << 16

if AVAILABLE:
    _READ_BUF = _ffi.new("char[]", READ_SIZE)
    _DRAIN_BUF = _ffi.new("char[]", DRAIN_SIZE)
    _WANT_READ = _lib.SSL_ERROR_WANT_READ
    _TLS1_3 = _SSL.TLS1_3_VERSION
    _TLS1_2 = _SSL.TLS1_2_VERSION
    _ssl_read = _lib.SSL_read
    _ssl_write = _lib.SSL_write
    _bio_read = _lib.BIO_read
    _bio_write = _lib.BIO_write
    _get_error = _lib.SSL_get_error
    _unpack = _ffi.unpack  # bytes of (buffer, n): cheaper than ffi.buffer(...)[:]
    _mem_pending = _lib.BIO_get_mem_data  # a memory BIO's readable bytes
    _NULL = _ffi.NULL
    _cipher = _lib.SSL_get_current_cipher
    _cipher_name = _lib.SSL_CIPHER_get_name
if TLS12_AVAILABLE:
    _NO_RENEGOTIATION = _lib.SSL_OP_NO_RENEGOTIATION
    _NO_COMPRESSION = _lib.SSL_OP_NO_COMPRESSION

#: the TLS 1.3 suites whose AEAD tag is 16 bytes: a record of ``n`` bytes of
#: plaintext without padding is ``n + 22`` bytes on the wire (5 of header, 1
#: of inner content type, 16 of tag).  TLS_AES_128_CCM_8_SHA256 (8-byte tag)
#: and the integrity-only suites are not in it
TAG16_SUITES = frozenset((b"TLS_AES_128_GCM_SHA256", b"TLS_AES_256_GCM_SHA384",
                          b"TLS_CHACHA20_POLY1305_SHA256", b"TLS_AES_128_CCM_SHA256"))
#: header, inner content type and tag of one such record
TAG16_OVERHEAD = 22
#: TLS 1.2 AES-GCM suites (OpenSSL's names; RFC 5288/5289): a record of
#: ``n`` bytes of plaintext is ``n + 29`` bytes (5 of header, the 8-byte
#: explicit nonce, 16 of tag; AEAD records have no padding)
TLS12_GCM_SUITES = frozenset((
    b"ECDHE-ECDSA-AES128-GCM-SHA256", b"ECDHE-ECDSA-AES256-GCM-SHA384",
    b"ECDHE-RSA-AES128-GCM-SHA256", b"ECDHE-RSA-AES256-GCM-SHA384",
    b"DHE-RSA-AES128-GCM-SHA256", b"DHE-RSA-AES256-GCM-SHA384",
    b"AES128-GCM-SHA256", b"AES256-GCM-SHA384"))
TLS12_GCM_OVERHEAD = 29
#: TLS 1.2 ChaCha20-Poly1305 suites (RFC 7905): no explicit nonce, ``n + 21``
TLS12_CHACHA_SUITES = frozenset((
    b"ECDHE-ECDSA-CHACHA20-POLY1305", b"ECDHE-RSA-CHACHA20-POLY1305",
    b"DHE-RSA-CHACHA20-POLY1305"))
TLS12_CHACHA_OVERHEAD = 21
#: OpenSSL's ``SSL_OP_ALLOW_CLIENT_RENEGOTIATION`` (``SSL_OP_BIT(8)`` since
#: OpenSSL 3.0; cryptography's bindings do not export it)
ALLOW_CLIENT_RENEGOTIATION = 1 << 8


class Bios:
    """One connection's OpenSSL objects under pyOpenSSL's names (``_ssl``,
    ``_into_ssl``, ``_from_ssl``), read once from its ``Connection`` (kept
    as :attr:`conn` for pyOpenSSL's error mapping): every function here
    accepts it in place of the ``Connection``.  Holding ``_ssl`` (the
    ``SSL*`` under cffi's ``SSL_free`` destructor) keeps the ``SSL`` and the
    two BIOs it owns alive as long as this object."""

    __slots__ = ("_from_ssl", "_into_ssl", "_ssl", "conn")

    def __init__(self, conn: Any) -> None:
        self._ssl = conn._ssl
        self._into_ssl = conn._into_ssl
        self._from_ssl = conn._from_ssl
        self.conn = conn


def eligible(conn: Any) -> bool:
    """True when ``conn`` (a pyOpenSSL memory-BIO ``Connection`` whose
    handshake is done) can use this module: the internals exist and TLS 1.3
    or TLS 1.2 was negotiated (a TLS 1.2 connection goes on the record path
    through :func:`take`, which refuses renegotiation on it)."""
    if not AVAILABLE:
        return False
    ssl = getattr(conn, "_ssl", None)
    if ssl is None or getattr(conn, "_into_ssl", None) is None \
            or getattr(conn, "_from_ssl", None) is None:
        return False  # not a memory-BIO connection
    version = _lib.SSL_version(ssl)
    return version == _TLS1_3 or (version == _TLS1_2 and TLS12_AVAILABLE)


def take(conn: Any) -> bool:
    """:func:`eligible`, and on a TLS 1.2 connection renegotiation refused
    from now on (``SSL_OP_NO_RENEGOTIATION``: a client's renegotiating
    ClientHello gets a ``no_renegotiation`` warning alert inside
    ``SSL_read``, as OpenSSL 3+ answers one by default), so no handshake and
    none of pyOpenSSL's Python callbacks -- servername, ALPN, verify, whose
    exceptions pyOpenSSL re-raises after each of its own calls -- can run
    inside this module's ``SSL_read``.  A TLS 1.2 connection whose context
    allows client renegotiation (``SSL_OP_ALLOW_CLIENT_RENEGOTIATION``; the
    gateway's contexts never do) is not taken: it keeps Twisted's path and
    its renegotiation.  TLS 1.3 has no renegotiation."""
    if not eligible(conn):
        return False
    ssl = conn._ssl
    if _lib.SSL_version(ssl) != _TLS1_3:
        if _lib.SSL_get_options(ssl) & ALLOW_CLIENT_RENEGOTIATION:
            return False
        _lib.SSL_set_options(ssl, _NO_RENEGOTIATION)
        if not _lib.SSL_get_options(ssl) & _NO_RENEGOTIATION:  # pragma: no cover
            return False
    return True


def record_overhead(conn: Any) -> int:
    """The bytes a record of the connection's version and suite adds to its
    plaintext (:data:`TAG16_OVERHEAD` for TLS 1.3 records without padding,
    :data:`TLS12_GCM_OVERHEAD` or :data:`TLS12_CHACHA_OVERHEAD` for TLS 1.2,
    whose AEAD records have no padding), or 0 for a version or suite not
    listed (0 matches no record: every record is longer than its
    plaintext), and for a TLS 1.2 connection that might compress (no
    ``SSL_OP_NO_COMPRESSION``: a compressed record has no fixed size)."""
    ssl = conn._ssl
    version = _lib.SSL_version(ssl)
    if version == _TLS1_3:
        table: tuple[tuple[frozenset[bytes], int], ...] = ((TAG16_SUITES, TAG16_OVERHEAD),)
    elif version == _TLS1_2 and TLS12_AVAILABLE and _lib.SSL_get_options(ssl) & _NO_COMPRESSION:
        table = ((TLS12_GCM_SUITES, TLS12_GCM_OVERHEAD),
                 (TLS12_CHACHA_SUITES, TLS12_CHACHA_OVERHEAD))
    else:
        return 0
    cipher = _cipher(ssl)
    if cipher == _NULL:
        return 0
    name = _cipher_name(cipher)
    if name == _NULL:
        return 0
    name = _ffi.string(name)
    for suites, overhead in table:
        if name in suites:
            return overhead
    return 0


def feed(conn: Any, data: bytes) -> int:
    """Put received ciphertext into the connection's read BIO; returns
    ``BIO_write``'s result (``len(data)`` on success; a memory BIO only
    fails when out of memory)."""
    if type(data) is not bytes:
        data = bytes(data)
    return _bio_write(conn._into_ssl, data, len(data))


def read_plaintext(conn: Any) -> bytes | int:
    """One ``SSL_read``: the plaintext (bytes), ``b""`` when OpenSSL needs
    more ciphertext (WANT_READ), or the failing return value (an int) for
    ``conn._raise_ssl_error(conn._ssl, result)``."""
    ssl = conn._ssl
    n = _ssl_read(ssl, _READ_BUF, READ_SIZE)
    if n > 0:
        return _unpack(_READ_BUF, n)
    if _get_error(ssl, n) == _WANT_READ:
        return b""
    return n


def unread(conn: Any) -> int:
    """Bytes of received ciphertext in the read BIO that OpenSSL has not
    taken yet (0: a ``SSL_read`` after a whole record could only want more)."""
    return _mem_pending(conn._into_ssl, _NULL)


def unsent(conn: Any) -> int:
    """Bytes of ciphertext OpenSSL queued in the send BIO (0: :func:`drain`
    would return ``b""``)."""
    return _mem_pending(conn._from_ssl, _NULL)


def drain(conn: Any) -> bytes:
    """Everything OpenSSL queued in the send BIO (``b""`` if nothing)."""
    bio = conn._from_ssl
    n = _bio_read(bio, _DRAIN_BUF, DRAIN_SIZE)
    if n <= 0:
        return b""
    first = _unpack(_DRAIN_BUF, n)
    if n < DRAIN_SIZE:
        return first
    parts = [first]
    while (n := _bio_read(bio, _DRAIN_BUF, DRAIN_SIZE)) > 0:
        parts.append(_unpack(_DRAIN_BUF, n))
    return b"".join(parts)


def seal_drain(conn: Any, data: bytes, offset: int = 0) -> tuple[int, int, bytes]:
    """:func:`seal` then :func:`drain` in one call: ``(consumed, result,
    ciphertext)``; the common case (one slice, one ``SSL_write``, one
    ``BIO_read``) inline."""
    if type(data) is bytes and offset == 0 and len(data) <= SEAL_SLICE:
        total = len(data)
        if total:
            result = _ssl_write(conn._ssl, data, total)
            took = result if result > 0 else 0
            if 0 < took < total:  # a partial write (pyOpenSSL enables them):
                more, result = seal(conn, data, took)  # the rest as seal does
                took += more
        else:
            took, result = 0, 1
    else:
        took, result = seal(conn, data, offset)
    bio = conn._from_ssl
    n = _bio_read(bio, _DRAIN_BUF, DRAIN_SIZE)
    if n <= 0:
        return took, result, b""
    if n < DRAIN_SIZE:
        return took, result, _unpack(_DRAIN_BUF, n)
    parts = [_unpack(_DRAIN_BUF, n)]
    while (n := _bio_read(bio, _DRAIN_BUF, DRAIN_SIZE)) > 0:
        parts.append(_unpack(_DRAIN_BUF, n))
    return took, result, b"".join(parts)


def seal(conn: Any, data: bytes, offset: int = 0) -> tuple[int, int]:
    """``SSL_write`` of ``data[offset:offset + SEAL_SLICE]``.  Returns
    ``(consumed, result)``: the bytes OpenSSL took and the last
    ``SSL_write`` result (<= 0: it refused, the caller hands the rest to
    pyOpenSSL/Twisted, which raise or buffer as before).  The ciphertext is
    in the send BIO: :func:`drain` it."""
    if type(data) is not bytes:
        data = bytes(data)
    end = min(len(data), offset + SEAL_SLICE)
    ssl = conn._ssl
    done = offset
    result = 1
    while done < end:
        piece = data if (done == 0 and end == len(data)) else data[done:end]
        result = _ssl_write(ssl, piece, len(piece))
        if result <= 0:
            break
        done += result
    return done - offset, result
