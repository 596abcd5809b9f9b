"""TLS-or-plain dispatch on one listening port (both inbound ports accept TLS
and plain HTTP).

:class:`TLSOrPlainFactory` wraps a plain (HTTP) server factory.  Each
connection waits for its first byte: ``0x16`` (a TLS handshake record) gets a
TLS-terminating protocol (``TLSMemoryBIOFactory`` with the given server
connection creator) around the plain protocol; anything else goes straight to
the plain protocol.  A client that sends nothing within ``peek_timeout``
seconds is disconnected (one deadline per connection, on the injected
clock).  Every connection is handled independently, so a silent client never
delays others (hardening over upstream's serial :80 feeder).

TLS connections then get a handshake deadline (``handshake_timeout``, 10 s
by default like the public read-header deadline, issue 11.5): a client that
has not completed its handshake by then is aborted.  Before, one byte of a
ClientHello held a connection until the HTTP idle timeout (120 s public,
90 s tunnel).  :class:`DeadlineTLSProtocol` also never raises when the
transport reports the loss of the connection synchronously from
``abortConnection`` (netstack connections do): Twisted's ``loseConnection``
mid-handshake aborts and then shuts TLS down on the already released
OpenSSL connection (``'NoneType' object has no attribute 'shutdown'``).

Once a connection's TLS 1.3 or TLS 1.2 handshake is done (TLS 1.2: with
renegotiation refused from then on), its records are read and
written through :mod:`nbgateway.tls.records` (OpenSSL called directly with
reused buffers, no exception per read loop; ``NBGW_TLS_RECORDS=0`` switches
it off), and a write on an HTTP/1.1 connection becomes its TLS record and
one transport write at once; on HTTP/2 the write aggregator still joins a
turn's frames and its flush goes through the same path.  The state that path
reads per request lives in a slotted :class:`_RecordPath` (attribute reads on
the protocol itself go through ``ProtocolWrapper.__getattr__``'s
unspecialised lookup), whose ``read`` the sniffer calls directly; a read of
exactly one record takes one ``SSL_read`` and asks neither BIO
(``_RecordPath.exact``), and the common read and write call OpenSSL inline.
The path is dropped, and Twisted's own steps take over, once the connection
closes, aborts, loses TLS or buffers a write.
"""

from __future__ import annotations

import os
from typing import Any

from OpenSSL.SSL import Error as SSLError
from OpenSSL.SSL import ZeroReturnError
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper
from twisted.protocols.tls import (
    BufferingTLSTransport,
    TLSMemoryBIOFactory,
    TLSMemoryBIOProtocol,
)
from twisted.python.failure import Failure
from zope.interface import providedBy
from zope.interface.declarations import Provides

from nbgateway.tls import records

log = Logger()

_TLS1_3 = 0x0304  # OpenSSL.SSL.TLS1_3_VERSION

# records' bindings and reused buffers, for the record path's common read and
# write inlined here (a Python frame and its result tuple cost about as much
# as the bindings' own glue of one call into OpenSSL, ~1.1k instructions);
# None when records is unavailable (then there is no record path)
_ssl_read = getattr(records, "_ssl_read", None)
_ssl_write = getattr(records, "_ssl_write", None)
_bio_read = getattr(records, "_bio_read", None)
_bio_write = getattr(records, "_bio_write", None)
_get_error = getattr(records, "_get_error", None)
_unpack = getattr(records, "_unpack", None)
_READ_BUF = getattr(records, "_READ_BUF", None)
_DRAIN_BUF = getattr(records, "_DRAIN_BUF", None)
_WANT_READ = getattr(records, "_WANT_READ", None)
_READ_SIZE = records.READ_SIZE
_DRAIN_SIZE = records.DRAIN_SIZE
_SEAL_SLICE = records.SEAL_SLICE


def _bio_drain(conn: Any) -> bytes:
    """The send BIO's bytes through pyOpenSSL (when records is unavailable)."""
    from OpenSSL.SSL import WantReadError

    parts = []
    while True:
        try:
            parts.append(conn.bio_read(1 << 16))
        except WantReadError:
            return b"".join(parts)

TLS_HANDSHAKE = 0x16
DEFAULT_PEEK_TIMEOUT = 5.0
DEFAULT_HANDSHAKE_TIMEOUT = 10.0
#: ``NBGW_TLS_RECORDS=0`` keeps every connection on Twisted's record path
#: (pyOpenSSL ``Connection`` calls) instead of :mod:`nbgateway.tls.records`,
#: and sends TLS 1.3 session tickets alone as Twisted does
RECORDS_DEFAULT = os.environ.get("NBGW_TLS_RECORDS", "1") != "0"

#: transport declaration -> the instance declaration Twisted's makeConnection
#: leaves on the TLS protocol (see :func:`_provide_like`); bounded
_PROVIDES: dict[Any, Any] = {}
_PROVIDES_MAX = 64


def _provide_like(proto: Any, transport: Any) -> None:
    """What ``TLSMemoryBIOProtocol.makeConnection`` does with the transport's
    interfaces -- ``directlyProvides(proto, i)`` for each ``i`` provided by
    the transport, each call replacing the last, so the protocol ends up
    directly providing the last one -- with one cached declaration per
    (protocol class, transport declaration) instead of a fresh zope
    declaration per interface per connection (about 30 us a connection)."""
    spec = providedBy(transport)
    key = (type(proto), spec)
    provides = _PROVIDES.get(key)
    if provides is None:
        last = None
        for last in spec:  # noqa: B007 - the last one is what Twisted leaves
            pass
        if last is None:
            return
        if len(_PROVIDES) >= _PROVIDES_MAX:
            _PROVIDES.clear()
        # Provides() caches weakly; the entry here keeps it alive
        provides = _PROVIDES[key] = Provides(type(proto), last)
    proto.__provides__ = provides


class _RecordPath(records.Bios):
    """The record path's per-connection state: the OpenSSL pointers
    (:class:`records.Bios`) and what the hot path reads of the protocol, in
    slots.  Twisted's ``ProtocolWrapper`` (the TLS protocol's base) defines
    ``__getattr__`` (it forwards to the transport), so CPython 3.11 does not
    specialise attribute reads on the protocol: each ``self._x`` there costs
    ~390 instructions against ~80 here (callgrind, tests/tls/
    test_tls_hot_path.py counts them), and a keep-alive request made 22 of
    them on the protocol and 7 on pyOpenSSL's ``Connection``.

    A protocol has one while it is on the record path and nothing has
    changed what that path assumes (:meth:`DeadlineTLSProtocol._drop_path`
    removes it): TLS not lost or shut down (``_lostTLSConnection``), the
    connection not closing or aborted (``disconnecting``, ``_aborted``), no
    writes buffered in Twisted's ``_appSendBuffer``.  Twisted changes those
    only in methods the protocol overrides (``loseConnection``,
    ``abortConnection``, ``_tlsShutdownFinished``, ``connectionLost``,
    ``_bufferedWrite``); tests/tls/test_tls_hot_path.py pins that against
    the installed Twisted.  Without one, everything goes through Twisted's
    own steps, which check those attributes themselves."""

    __slots__ = ("aggregator", "app", "exact", "held", "overhead", "proto", "transport",
                 "twisted_flush")

    def __init__(self, proto: DeadlineTLSProtocol) -> None:
        super().__init__(proto._tlsConnection)
        self.proto = proto
        self.app = proto.wrappedProtocol
        self.aggregator = proto._aggregator
        self.transport = proto.transport
        #: the protocol may hold session tickets for the first write
        self.held = bool(proto._held)
        #: :attr:`overhead` while OpenSSL holds no part of a record, else 0
        #: (no read is ``n + 0`` bytes).  OpenSSL holds none when the last
        #: read ended with a ``SSL_read`` that returned plaintext and an
        #: empty read BIO (pyOpenSSL binds no ``read_ahead``: OpenSSL reads
        #: a record's header, then exactly its body).  Then, if the next
        #: read's first ``SSL_read`` returns ``n`` bytes and the read was
        #: ``n + overhead`` bytes, it was exactly one unpadded application
        #: record: any more bytes (a second record, part of one, padding, a
        #: handshake record SSL_read went through first) make it longer.  So
        #: the read BIO is empty again and OpenSSL wrote nothing (reading
        #: application data writes nothing; handshake messages and alerts
        #: do), and neither BIO needs asking.  0 until proven, and after
        #: any read that ends otherwise
        self.exact = 0
        #: :func:`records.record_overhead` of the suite (0: never exact)
        self.overhead = records.record_overhead(self)
        #: on HTTP/2, the aggregator's own flush target (Twisted's write),
        #: while :meth:`seal_from` takes its place
        self.twisted_flush: Any = None

    @property
    def clean(self) -> bool:
        """OpenSSL holds no part of a record (see :attr:`exact`)."""
        return self.exact != 0

    def read(self, data: bytes) -> None:
        """The protocol's ``dataReceived`` on the record path
        (TLSMemoryBIOProtocol.dataReceived/_flushReceiveBIO/_flushSendBIO
        with nbgateway.tls.records, inline); while the path applies, a
        TLS connection's reads come here straight from the sniffer (see
        :meth:`DeadlineTLSProtocol._take_reads`).  TLS is not lost, the
        connection neither closing nor aborted and no write buffered (see
        the class docstring): none of Twisted's checks of those can stop
        anything here."""
        if type(data) is not bytes:
            data = bytes(data)
        size = len(data)
        result = _bio_write(self._into_ssl, data, size)
        if result <= 0:
            self.conn._handle_bio_errors(self._into_ssl, result)  # raises as bio_write does
        n = _ssl_read(self._ssl, _READ_BUF, _READ_SIZE)
        if n > 0:
            got: bytes | int = _unpack(_READ_BUF, n)
            if n + self.exact == size:
                # the common read: one request in exactly one record (see
                # exact); no BIO asked
                self.app.dataReceived(got)
                return
        elif _get_error(self._ssl, n) == _WANT_READ:
            got = b""
        else:
            got = n
        app, proto = self.app, self.proto
        while True:
            if type(got) is bytes:
                if not got:
                    self.exact = 0  # OpenSSL may hold part of a record
                    break
                app.dataReceived(got)
                if len(got) < _READ_SIZE and not records.unread(self):
                    self.exact = self.overhead  # a whole record read, nothing left:
                    break  # SSL_read would want more
                if proto._path is not self:
                    # closed, aborted or lost while delivering: Twisted's loop
                    # reads the rest (and delivers it unless aborted, flushes)
                    proto._flushReceiveBIO()
                    return
                got = records.read_plaintext(self)
                continue
            self.exact = 0
            try:  # pyOpenSSL's own mapping of the failed SSL_read
                self.conn._raise_ssl_error(self._ssl, got)
            except ZeroReturnError:
                proto._shutdownTLS()
                proto._tlsShutdownFinished(None)
            except SSLError:
                proto._tlsShutdownFinished(Failure())
            break
        # usually nothing: the response went out as written (write)
        if records.unsent(self) and proto._tlsConnection is not None:
            proto._emit(records.drain(self))

    def write(self, data: bytes) -> None:
        """An HTTP/1.1 connection's ``transport.write`` on the record path:
        TLS records and one transport write at once (behind anything the
        aggregator holds from the handshake's turn, and behind the held
        session tickets)."""
        aggregator = self.aggregator
        if aggregator._buffer:
            aggregator.write(data)
            return
        if type(data) is bytes and not self.held:
            # the common write: one SSL_write of all of it, one BIO_read
            total = len(data)
            if 0 < total <= _SEAL_SLICE:
                result = _ssl_write(self._ssl, data, total)
                if result == total:
                    n = _bio_read(self._from_ssl, _DRAIN_BUF, _DRAIN_SIZE)
                    if 0 < n < _DRAIN_SIZE:
                        self.transport.write(_unpack(_DRAIN_BUF, n))
                    elif n > 0:
                        self.transport.write(_unpack(_DRAIN_BUF, n) + records.drain(self))
                    return
                if result <= 0:  # refused: what OpenSSL queued, then Twisted's path
                    out = records.drain(self)
                    if out:
                        self.transport.write(out)
                    TLSMemoryBIOProtocol._write(self.proto, data)
                    return
                self.seal_from(data, result)  # partial: the rest as below
                return
        self.seal_from(data, 0)

    def seal_from(self, data: bytes, offset: int = 0) -> None:
        """``data[offset:]`` to TLS records and the transport (slices of
        :data:`records.SEAL_SLICE`; the held tickets in front).  On HTTP/2
        the aggregator's flush calls it with the turn's frames joined (in
        place of Twisted's ``TLSMemoryBIOProtocol.write``, whose checks the
        path makes moot: see the class docstring)."""
        total = len(data)
        while offset < total:
            took, result, out = records.seal_drain(self, data, offset)
            offset += took
            if out:
                if self.held:  # the first write after the handshake
                    self.held = False
                    proto = self.proto
                    held = proto._held
                    if held:
                        proto._held = b""
                        out = held + out
                self.transport.write(out)
            if result <= 0:  # refused: Twisted's path raises or buffers the rest
                TLSMemoryBIOProtocol._write(self.proto, data[offset:])
                return


class DeadlineTLSProtocol(BufferingTLSTransport):
    """Twisted's TLS protocol with a handshake deadline and an idempotent,
    never-raising close (see the module docstring).

    It reads three attributes of Twisted's ``TLSMemoryBIOProtocol`` that
    have no public accessor (``_handshakeDone``, ``_appSendBuffer``,
    ``_aborted``); tests/tls/test_handshake_deadline.py pins the behaviour
    against the installed Twisted.  Its write path (HTTP/1.1 writes go to
    TLS at once, HTTP/2 keeps Twisted's aggregator) reads
    ``BufferingTLSTransport._aggregator`` and the aggregator's ``_buffer``;
    tests/tls/test_tls_writes.py pins that.  ``makeConnection`` is
    Twisted's with the interface declaration cached, and the record path
    after a TLS 1.3 or 1.2 handshake repeats Twisted's read/flush/write steps with
    :mod:`nbgateway.tls.records` and a :class:`_RecordPath` (it reads
    ``_lostTLSConnection``, ``_aborted``, ``disconnecting``,
    ``_appSendBuffer``, ``_held`` when it starts, overrides
    ``_tlsShutdownFinished`` and ``_bufferedWrite`` to leave it, and calls
    ``_shutdownTLS``, ``_flushReceiveBIO``, ``TLSMemoryBIOProtocol._write``);
    tests/tls/test_tls_records.py and tests/tls/test_tls_hot_path.py pin
    that."""

    _handshake_call: Any = None
    #: HTTP/1.1 after the handshake: writes go to TLS at once (see :meth:`_tls_write`)
    _write_through = False
    _handshake_pending = True
    #: after a TLS 1.3 or 1.2 handshake: reads and writes through nbgateway.tls.records
    _records = False
    #: the record path's state while it applies (see :class:`_RecordPath`)
    _path: _RecordPath | None = None
    #: ciphertext held back to go out with the next write (the session
    #: tickets OpenSSL writes when a TLS 1.3 handshake completes)
    _held = b""
    #: the :class:`_Sniffer` that hands this protocol its reads (None when
    #: built otherwise); on the record path its ``dataReceived`` is the
    #: path's ``read`` (see :meth:`_take_reads`)
    _sniffer: Any = None
    #: zope's adapter lookup (``IPushProducer(transport, default)`` in
    #: twisted.web's connectionMade) asks for ``__conform__``; answering here
    #: spares ProtocolWrapper.__getattr__ and an AttributeError from the
    #: transport, which has none
    __conform__ = None

    def __init__(self, factory: Any, wrappedProtocol: Any, _connectWrapped: bool = True) -> None:
        super().__init__(factory, wrappedProtocol, _connectWrapped)
        # Twisted's BufferingTLSTransport puts every write in an aggregator
        # flushed by a callLater(0): a timer and a reactor turn of delay per
        # response.  The HTTP/1.1 fast path writes a small response in one
        # call already, so on such a connection a write becomes its TLS
        # record at once; HTTP/2 (many small frames) keeps the aggregator.
        self.write = self._tls_write  # type: ignore[method-assign]
        # Every name a connection sets up to its keep-alive requests, here in
        # one order at their class defaults: CPython 3.11 keeps an instance's
        # attributes inline only for names its class's shared keys took in
        # before many instances were made (30, one fewer per instance made);
        # set first after the handshake (``_path``, ``_records``, ...) they
        # gave every connection a dict of its own once a few were open
        # (tests/tls/test_tls_layout.py).
        self._sniffer = None
        self._handshake_call = None
        self.connected = 0
        self.transport = None
        self._producer = None
        self._handshakeDone = False
        self._held = b""
        self._handshake_pending = True
        self._write_through = False
        self._records = False
        self._path = None
        self._lostTLSConnection = False
        self._aborted = False
        self._reason = None
        self.disconnecting = 0

    def _tls_write(self, data: bytes) -> None:
        # (on the record path an HTTP/1.1 connection's write is _RecordPath.write)
        aggregator = self._aggregator
        if self._write_through and not aggregator._buffer:
            TLSMemoryBIOProtocol.write(self, data)
        else:  # HTTP/2, before the handshake, or behind bytes already buffered
            aggregator.write(data)

    def writeSequence(self, sequence: Any) -> None:
        self.write(b"".join(sequence))

    def makeConnection(self, transport: Any) -> None:
        timeout = getattr(self.factory, "handshake_timeout", None)
        if timeout:
            self._handshake_call = self.factory.clock.callLater(timeout, self._handshake_expired)
        # TLSMemoryBIOProtocol.makeConnection, with the transport's interfaces
        # declared through one cached declaration (_provide_like)
        self._tlsConnection = self.factory._creatorCallable(self)
        self._appSendBuffer = []
        _provide_like(self, transport)
        Protocol.makeConnection(self, transport)
        self.factory.registerProtocol(self)
        if self._connectWrapped:
            ProtocolWrapper.makeConnection(self, transport)
        self._checkHandshakeStatus()
        self._handshake_progress()

    def dataReceived(self, data: bytes) -> None:
        path = self._path
        if path is None:  # the handshake, TLS 1.2, records off, closing or lost
            super().dataReceived(data)
            self._handshake_progress()
            return
        path.read(data)

    def _handshake_progress(self) -> None:
        if self._handshake_pending and self._handshakeDone:
            self._handshake_pending = False
            self._cancel_deadline()
            self._write_through = self.negotiatedProtocol != b"h2"
            self._records = (getattr(self.factory, "records", False)
                             and records.take(self._tlsConnection))
            if self._held and (self.disconnecting or not self.connected):
                self._emit(b"", force=True)  # closing: the tickets go out now
            if self._records and not (self.disconnecting or self._lostTLSConnection
                                      or self._appSendBuffer):
                self._path = path = _RecordPath(self)
                self._take_reads(path.read, self.dataReceived)
                if self._write_through:
                    self.write = path.write  # type: ignore[method-assign]
                else:
                    # HTTP/2: writes still aggregated (many small frames per
                    # turn), the aggregate sealed by the record path instead
                    # of Twisted's write and pyOpenSSL's send
                    aggregator = self._aggregator
                    path.twisted_flush = aggregator._write
                    aggregator._write = path.seal_from
                    self.write = aggregator.write  # type: ignore[method-assign]

    def _take_reads(self, reader: Any, instead_of: Any) -> None:
        """The sniffer's reads to ``reader`` if they go to ``instead_of``:
        on the record path straight to the path's ``read`` (no frame and no
        attribute read of this protocol per read; its attribute reads go
        through ``ProtocolWrapper.__getattr__``'s unspecialised lookup),
        back to this protocol's ``dataReceived`` when the path is left."""
        sniffer = self._sniffer
        # (bound methods compare by object and function; reading the
        # sniffer's ``__dict__`` would give it a dict of its own)
        if sniffer is not None and sniffer.dataReceived == instead_of:
            sniffer.dataReceived = reader

    def _drop_path(self) -> None:
        """Leave the record path for Twisted's steps (closing, aborted,
        TLS lost or shut down, a write buffered)."""
        path = self._path
        if path is not None:
            self._path = None
            self._take_reads(self.dataReceived, path.read)
            if path.twisted_flush is not None:
                self._aggregator._write = path.twisted_flush
            self.write = self._tls_write  # type: ignore[method-assign]

    # -- ciphertext to the transport.  TLS 1.3 servers send their session
    # tickets (NewSessionTicket records) once the client's Finished arrives,
    # which Twisted flushes at the end of that read as a transport write of
    # its own: one more TCP segment (and WireGuard packet) per connection
    # ahead of the response.  A client may send application data right
    # after its Finished and never waits for tickets, so on a TLS 1.3
    # connection the flushes of the turn that completes the handshake are
    # held and go out in front of the next write (the response, the HTTP/2
    # preface, the close_notify); records keep their order.

    def _flushSendBIO(self) -> None:
        conn = self._tlsConnection
        if conn is None:
            return  # released (Twisted's would raise AttributeError)
        out = records.drain(conn) if records.AVAILABLE else _bio_drain(conn)
        if (self._handshake_pending and self._handshakeDone
                and getattr(self.factory, "coalesce_tickets", False)
                and conn.get_protocol_version() == _TLS1_3):
            self._held += out
            return
        self._emit(out)

    def _emit(self, out: bytes, force: bool = False) -> None:
        """Write ``out`` behind any held ciphertext (held bytes alone only
        when ``force``d)."""
        if not out and not force:
            return
        held = self._held
        if held:
            self._held = b""
            out = held + out
        if out:
            self.transport.write(out)

    def _cancel_deadline(self) -> None:
        call, self._handshake_call = self._handshake_call, None
        if call is not None and call.active():
            call.cancel()

    def _handshake_expired(self) -> None:
        self._handshake_call = None
        if self._handshakeDone:
            return
        self.factory.handshake_timeouts += 1
        peer = getattr(self.transport, "getPeer", lambda: None)()
        log.debug("TLS handshake not completed in {timeout}s; closing {peer}",
                  timeout=self.factory.handshake_timeout, peer=str(peer))
        self.abortConnection()

    def loseConnection(self) -> None:
        if self.getHandle() is None or self.disconnecting or not self.connected:
            return  # already lost or closing
        self._drop_path()
        if not self._handshakeDone and not self._appSendBuffer:
            # Twisted aborts here too, but then goes on to shut TLS down on a
            # connection a synchronous transport has already released.
            self.abortConnection()
            return
        super().loseConnection()

    def abortConnection(self) -> None:
        if self.getHandle() is None or self._aborted:
            return  # already lost or aborted
        self._drop_path()
        super().abortConnection()

    def _tlsShutdownFinished(self, reason: Any) -> None:
        self._drop_path()
        super()._tlsShutdownFinished(reason)

    def _bufferedWrite(self, octets: bytes) -> None:
        self._drop_path()  # writes wait behind this one: Twisted's path keeps the order
        super()._bufferedWrite(octets)

    def connectionLost(self, reason: Any) -> None:
        self._cancel_deadline()
        self._drop_path()
        self._sniffer = None  # (it refers to this protocol)
        self._held = b""
        super().connectionLost(reason)


class DeadlineTLSFactory(TLSMemoryBIOFactory):
    """``TLSMemoryBIOFactory`` building :class:`DeadlineTLSProtocol`."""

    protocol = DeadlineTLSProtocol

    def __init__(self, creator: Any, wrapped_factory: Any, *, clock: Any,
                 handshake_timeout: float | None = DEFAULT_HANDSHAKE_TIMEOUT) -> None:
        super().__init__(creator, False, wrapped_factory)
        self.clock = clock
        self.handshake_timeout = handshake_timeout
        self.handshake_timeouts = 0
        #: established TLS 1.3 and 1.2 connections use nbgateway.tls.records
        self.records = RECORDS_DEFAULT
        #: TLS 1.3 session tickets go out with the next write, not alone
        self.coalesce_tickets = RECORDS_DEFAULT


class _Sniffer(Protocol):
    def __init__(self, factory: TLSOrPlainFactory, addr: Any) -> None:
        self.factory = factory
        self.addr = addr
        self.inner: Any = None
        self._deadline: Any = None
        # set by makeConnection; here so that they come first (see
        # DeadlineTLSProtocol.__init__), at the class defaults
        self.transport: Any = None
        self.connected = 0

    def connectionMade(self) -> None:
        self._deadline = self.factory.clock.callLater(self.factory.peek_timeout, self._timeout)

    def _timeout(self) -> None:
        self._deadline = None
        self.factory.peek_timeouts += 1
        self.transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        if self.inner is not None:
            self.inner.dataReceived(data)
            return
        if not data:
            return
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None
        tls = data[0] == TLS_HANDSHAKE
        source = self.factory.tls_factory if tls else self.factory.plain_factory
        inner = source.buildProtocol(self.addr)
        if inner is None:
            self.transport.loseConnection()
            return
        if tls:
            self.factory.tls_connections += 1
        else:
            self.factory.plain_connections += 1
        self.inner = inner
        # The inner protocol owns the transport from now on (writes,
        # producers); this object only forwards what the transport delivers,
        # a TLS connection's reads without a call of its own: the instance's
        # dataReceived is the inner protocol's (DeadlineTLSProtocol never
        # rebinds its own)
        if tls:
            self.dataReceived = inner.dataReceived  # type: ignore[method-assign]
            inner._sniffer = self  # on the record path: the path's read (_take_reads)
        inner.makeConnection(self.transport)
        inner.dataReceived(data)

    def connectionLost(self, reason: Any) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None
        if self.inner is not None:
            self.inner.connectionLost(reason)


class TLSOrPlainFactory(Factory):
    """Serves ``plain_factory`` over TLS or plain text, decided per connection."""

    def __init__(self, creator: Any, plain_factory: Any, *, clock: Any = None,
                 peek_timeout: float = DEFAULT_PEEK_TIMEOUT,
                 handshake_timeout: float | None = DEFAULT_HANDSHAKE_TIMEOUT) -> None:
        if clock is None:
            from twisted.internet import reactor as clock
        self.clock = clock
        self.peek_timeout = peek_timeout
        self.plain_factory = plain_factory
        self.tls_factory = DeadlineTLSFactory(creator, plain_factory, clock=clock,
                                              handshake_timeout=handshake_timeout)
        self.tls_connections = 0
        self.plain_connections = 0
        self.peek_timeouts = 0

    @property
    def handshake_timeouts(self) -> int:
        return self.tls_factory.handshake_timeouts

    def doStart(self) -> None:
        super().doStart()
        self.plain_factory.doStart()

    def doStop(self) -> None:
        self.plain_factory.doStop()
        super().doStop()

    #: a hook before the TLS-or-plain dispatch (the main port's L4 router,
    #: nbgateway.l4): ``front(addr)`` returns the protocol of a new connection,
    #: or None for the usual dispatch; it hands HTTP back through :meth:`sniffer`
    front: Any = None

    def buildProtocol(self, addr: Any) -> Any:
        if self.front is not None:
            protocol = self.front(addr)
            if protocol is not None:
                return protocol
        return self.sniffer(addr)

    def sniffer(self, addr: Any) -> _Sniffer:
        """The TLS-or-plain protocol of one connection."""
        return _Sniffer(self, addr)
