"""One upstream HTTP/1.1 connection of the lean client
(:mod:`nbgateway.dial.http11`): :class:`UpstreamConnection`, one exchange at
a time on a keep-alive connection.

It owns the exchange on the wire: the request head (and a buffered body)
written straight to the socket when Twisted has nothing queued
(:mod:`nbgateway.dial.sockwrite`), a streamed body with ``Content-Length``
or chunked (:class:`_ChunkedWriter`), the response parsed by ``httptools``
(llhttp; the head bounded by ``MAX_HEAD_BYTES``, 1xx skipped; its header
lines are only counted once the exchange has received more bytes than
the bound, which they cannot exceed before), the response
(:class:`LeanResponse`) and its body handed to an ``IProtocol`` with
:class:`_BodyProducer` as its streaming producer (early body bytes kept up
to ``_EARLY_BODY_LIMIT``), and the decision whether the connection goes
back to its :class:`~nbgateway.dial.http11.ConnectionPool` (complete
keep-alive response, body fully sent, not HEAD, no stray bytes) or is
closed.  A reused connection the upstream closed before any response byte
fails with :class:`_RetryableLossError`, which the client's attempt retries.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import httptools
from twisted.internet import defer
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web._newclient import ResponseDone, ResponseFailed
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH

from nbgateway.dial import sockwrite
from nbgateway.dial.http11_wire import _CONTENT_LENGTH, _NAMES, _TRANSFER_ENCODING, _canonical

if TYPE_CHECKING:
    from nbgateway.dial.http11 import ConnectionPool

_BODYLESS_STATUSES = (204, 304)
#: bound on response head size (the parser itself is unbounded)
MAX_HEAD_BYTES = 64 * 1024
#: bytes of early response body kept while the consumer is not attached yet
_EARLY_BODY_LIMIT = 256 * 1024
_DONE = Failure(ConnectionDone())
_new_headers = Headers.__new__
#: the end of every response body (one shared instance: receivers only
#: ``check``/``trap`` it, and a Failure per response cost ~4 us)
_RESPONSE_DONE = Failure(ResponseDone())


class _BodyProducer:
    """The response body's producer as seen by the relay (``transport``)."""

    def __init__(self, conn: UpstreamConnection) -> None:
        self.conn = conn

    def pauseProducing(self) -> None:
        if self.conn.transport is not None:
            self.conn.paused = True
            self.conn.transport.pauseProducing()

    def resumeProducing(self) -> None:
        if self.conn.transport is not None:
            self.conn.paused = False
            self.conn.transport.resumeProducing()

    def stopProducing(self) -> None:
        self.conn.abandon()

    abortConnection = stopProducing

    def hold_until_read_end(self, flush: Any) -> bool:
        """While a read is being parsed: ``flush()`` once it is (the relay's
        writes of that read can go out as one); False otherwise."""
        if not self.conn._feeding:
            return False
        self.conn._read_end = flush
        return True


class LeanResponse:
    """The parts of ``IResponse`` the reverse proxy reads.  (The proxy's
    exchange calls ``response._conn.deliver`` directly: a plain method call
    the interpreter specialises, where a bound method stored on the
    response was a generic lookup to make, to store and to call.)

    The head's headers are the response's own ``_rawHeaders`` (the dict as
    ``Headers`` keeps it, filled by ``UpstreamConnection.on_header``): the
    proxy's relay reads them there, and the ``Headers`` object of
    ``headers`` is made only when something reads it (one object fewer per
    relayed response)."""

    __slots__ = ("_conn", "_headers", "_rawHeaders", "code", "length", "phrase")

    version = (b"HTTP", 1, 1)

    def __init__(self, conn: UpstreamConnection, code: int, phrase: bytes,
                 headers: Headers, length: Any) -> None:
        self._conn = conn
        self.code = code
        self.phrase = phrase
        self._headers: Headers | None = headers
        self._rawHeaders: dict[bytes, list[bytes]] = headers._rawHeaders
        self.length = length

    @property
    def headers(self) -> Headers:
        """The response's ``Headers`` (over ``_rawHeaders``: one dict)."""
        headers = self._headers
        if headers is None:
            headers = self._headers = _new_headers(Headers)
            headers._rawHeaders = self._rawHeaders
        return headers

    def deliverBody(self, protocol: Any) -> None:
        self._conn.deliver(protocol)


_new_response = LeanResponse.__new__


class _Trailers(dict):  # type: ignore[type-arg]
    """Where a chunked body's trailer lines go (llhttp reports them through
    ``on_header`` after the head): nowhere.  The head's dict is the
    response's by then; trailers were never relayed."""

    def __setitem__(self, key: Any, value: Any) -> None:
        pass


#: the one (always empty) trailer sink: ``get`` finds nothing, a store is dropped
_TRAILERS = _Trailers()
_write_fallback = sockwrite.write_fallback


class _ChunkedWriter:
    """Consumer for a streamed request body of unknown length."""

    def __init__(self, transport: Any) -> None:
        self.transport = transport

    def write(self, data: bytes) -> None:
        if data:
            self.transport.writeSequence([b"%x\r\n" % len(data), data, b"\r\n"])

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        pass

    def unregisterProducer(self) -> None:
        pass


class UpstreamConnection(Protocol):
    """One upstream HTTP/1.1 connection; one exchange at a time.

    Its attributes are kept under CPython 3.11's shared-keys limit (30 own
    attributes; past it every attribute read and store on the object is a
    dict lookup, ~60 % slower, and it has ~100 of them per exchange): a
    test counts them (tests/dial/test_conn_attrs.py).  Hence no ``factory``
    (the dial's factory does not set one), the close waiters made on first
    use, the early body one ``bytearray`` and the response head's size
    counted at its end, not per header (and only when the exchange has
    received more bytes than its bound: ``_got_bytes`` counts them)."""

    #: ``closeCachedConnections``' waiters (the list is made on first use)
    _close_waiters: list[defer.Deferred[None]] | tuple[()] = ()
    #: how a request head goes out (set when connected, see ``connectionMade``)
    _write: Any = staticmethod(sockwrite.write)
    #: the response body's producer as its protocols see it (made on first use)
    _body_side: _BodyProducer | None = None

    def __init__(self, pool: ConnectionPool, key: tuple[bytes, bytes, int]) -> None:
        self.pool = pool
        self.key = key
        self.reused = False
        #: the relay paused the socket (slow client)
        self.paused = False
        self._reset()
        #: the pool's clock when it last went back to the pool idle
        self.idle_since = 0.0
        self._lost = False
        #: called once the read being parsed is (``_BodyProducer.hold_until_read_end``);
        #: read per read, so the instance's own (not a class attribute)
        self._read_end: Any = None
        self._feeding = False
        self._release_pending = False
        self._stray = False

    def _reset(self, new_parser: bool = True) -> None:
        # (send() repeats this inline for the next exchange: keep both in step)
        if new_parser:
            self._parser: Any = httptools.HttpResponseParser(self)
        #: who gets the response head (``callback``) or the failure (``errback``):
        #: a Deferred, or the request's :class:`_Attempt` itself
        self._d: Any = None
        self._head_method = False
        #: the response head's headers as ``Headers`` keeps them (see on_header)
        self._headers: dict[bytes, list[bytes]] = {}
        self._phrase = b""
        self._head_done = False
        self._complete = False
        self._framing_eof = False
        self._protocol: Any = None
        #: response body bytes that came before ``deliver`` (None: none)
        self._early: bytearray | None = None
        self._body_sent = True
        self._body_producer: Any = None
        #: bytes received since the request was sent (0: none yet); the
        #: response head's header lines are a part of them
        self._got_bytes = 0
        self._reusable = True
        self._active = False

    # -- pool side ------------------------------------------------------------
    def connectionMade(self) -> None:
        # a transport that is no TCP socket (the tunnel's netstack) never
        # takes a direct write: its writes skip sockwrite.write's checks
        self._write = (sockwrite.write if sockwrite.could_write_directly(self.transport)
                       else sockwrite.write_fallback)
        nodelay = getattr(self.transport, "setTcpNoDelay", None)
        if nodelay is not None:
            with contextlib.suppress(Exception):  # not every transport is a socket
                nodelay(True)

    def send(self, method: bytes, head: bytes, body: Any, d: Any) -> None:
        # The parser is kept: a fresh connection's is unused, and a pooled one
        # only ever ended a complete keep-alive response (llhttp is back at
        # the start of a message; anything else is never pooled).
        # self._reset(new_parser=False), inline
        self._d = d
        self._headers = {}
        self._phrase = b""
        self._head_done = False
        self._complete = False
        self._framing_eof = False
        self._protocol = None
        if self._early is not None:
            self._early = None
        self._body_sent = True
        self._body_producer = None
        self._got_bytes = 0
        self._reusable = True
        self._active = True
        if self.paused:  # the previous relay left the socket paused
            self.paused = False
            self.transport.resumeProducing()
        self._head_method = method == b"HEAD"
        inline = getattr(body, "body", None) if body is not None else None
        # the head (and a buffered body) straight to the socket when Twisted
        # has nothing queued for it: no writability watch, no extra turn
        if body is None:
            if self._write is _write_fallback:  # sockwrite.write_fallback, inline
                sockwrite.DirectWriteStats.fallback += 1
                self.transport.write(head)
            else:
                self._write(self.transport, head)
        elif isinstance(inline, bytes):
            self._write(self.transport, head + inline)
        else:
            self._body_sent = False
            self._body_producer = body
            self._write(self.transport, head)
            consumer = (self.transport if isinstance(body.length, int)
                        else _ChunkedWriter(self.transport))
            self.transport.registerProducer(body, True)
            bd = body.startProducing(consumer)
            bd.addCallbacks(self._body_done, self._body_failed)

    def _body_done(self, _: Any) -> None:
        if self._lost or not self._active:
            return
        self.transport.unregisterProducer()
        if not isinstance(self._body_producer.length, int):
            self.transport.write(b"0\r\n\r\n")
        self._body_sent = True
        self._body_producer = None
        if self._complete:
            self._finished()

    def _body_failed(self, reason: Failure) -> None:
        self._body_producer = None
        if self._active:
            self._fail(reason)

    def cancel(self) -> None:
        """The caller cancelled the exchange before the response head."""
        self._reusable = False
        self._d = None
        self._stop_body()
        if self.transport is not None:
            self.transport.abortConnection()

    def abandon(self) -> None:
        """The relay stopped reading the body: never reused."""
        self._reusable = False
        self._protocol = None
        self._stop_body()
        if self.transport is not None and not self._lost:
            self.transport.abortConnection()

    def _stop_body(self) -> None:
        producer, self._body_producer = self._body_producer, None
        if producer is not None:
            with contextlib.suppress(Exception):  # a finished producer may object
                producer.stopProducing()

    # -- httptools callbacks -------------------------------------------------
    # Every callback first checks for bytes after the end of the response
    # (not active, or complete): the connection is then unusable (_stray).

    def on_status(self, status: bytes) -> None:
        if not self._active or self._complete:  # stray bytes
            self._stray = True
            return
        self._phrase += status

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._active or self._complete:  # stray bytes
            self._stray = True
            return
        # the head's size is checked at its end (on_headers_complete) and
        # after each read that leaves it incomplete (dataReceived), each
        # time only past MAX_HEAD_BYTES received (it is no more before).
        # Into the response's dict as ``Headers`` keeps it, here (no list of
        # pairs to walk again at the head's end): the name made canonical
        # once (cached), the value as llhttp gave it (it refuses CR/LF in
        # values; one with them is still sanitised as
        # ``Headers.addRawHeader`` does).
        # (a subscript and a containment test: no method call per header;
        # a name not in the memo raises once, then is memoised)
        try:
            key = _NAMES[name]
        except KeyError:
            key = _canonical(name)
        if 13 in value or 10 in value:  # CR, LF (an int is found by memchr: ~10x faster)
            value = b" ".join(value.splitlines())
        raw = self._headers
        if key in raw:
            raw[key].append(value)
        else:
            raw[key] = [value]

    def on_headers_complete(self) -> None:
        if not self._active or self._complete:  # stray bytes
            self._stray = True
            return
        status = self._parser.get_status_code()
        if 100 <= status < 200:  # interim response: wait for the real one
            if self._got_bytes > MAX_HEAD_BYTES:
                _check_head_size(self._headers)
            self._headers = {}
            self._phrase = b""
            return
        self._head_done = True
        # The dict on_header filled becomes the response's ``Headers`` as it
        # is (no per-header public-API call).  The header lines are spans of
        # the bytes received since the request was sent: while those are
        # within the bound, so is the head (no per-header count).
        raw: dict[bytes, list[bytes]] = self._headers
        if self._got_bytes > MAX_HEAD_BYTES:
            _check_head_size(raw)
        chunked = _TRANSFER_ENCODING in raw
        if self._head_method or status in _BODYLESS_STATUSES:
            length: Any = 0
        elif chunked:
            length = UNKNOWN_LENGTH
        else:
            lengths = raw.get(_CONTENT_LENGTH)
            # the last one, as before (llhttp refuses differing repeats)
            length = int(lengths[-1]) if lengths else UNKNOWN_LENGTH
        self._framing_eof = (not chunked and length is UNKNOWN_LENGTH)
        d, self._d = self._d, None
        response = _new_response(LeanResponse)  # LeanResponse(...) without the __init__ call
        response._conn = self
        response.code = status
        response.phrase = self._phrase
        response._headers = None  # made if read (the relay reads the dict)
        response._rawHeaders = raw
        response.length = length
        # the dict is the response's now: what on_header sees after the
        # head (a chunked body's trailers) is dropped, not added to it
        self._headers = _TRAILERS
        if self._head_method:
            # llhttp would wait for a body HEAD never gets: end here, no reuse
            self._reusable = False
            self._complete = True
        if d is not None:
            d.callback(response)

    def on_body(self, data: bytes) -> None:
        if not self._active or self._complete:  # stray bytes
            self._stray = True
            return
        if self._protocol is not None:
            self._protocol.dataReceived(data)
        elif self._active:
            early = self._early
            if early is None:
                early = self._early = bytearray()
            early += data
            if len(early) > _EARLY_BODY_LIMIT and self.transport is not None:
                self.transport.pauseProducing()

    def on_message_complete(self) -> None:
        if not self._active or self._complete:  # stray bytes
            self._stray = True
            return
        if not self._head_done:
            return  # the end of an interim (1xx) response
        self._complete = True
        if not self._parser.should_keep_alive():
            self._reusable = False
        if self._body_sent:
            self._finished()
        else:
            # early response: the rest of the body will not be sent on it
            self._reusable = False
            self._stop_body()
            self._finished()

    # -- transport -----------------------------------------------------------
    def dataReceived(self, data: bytes) -> None:
        if not self._active:
            # bytes on an idle connection: protocol error, never reuse
            self._reusable = False
            self.transport.abortConnection()
            return
        got = self._got_bytes = self._got_bytes + len(data)  # before the parse reads it
        if self._head_method and self._head_done:
            return
        self._feeding = True
        try:
            self._parser.feed_data(data)
            if got > MAX_HEAD_BYTES and not self._head_done and self._headers:
                # a head not complete after this read: bounded here (its
                # end checks the whole of it)
                _check_head_size(self._headers)
        except Exception as exc:  # malformed upstream response
            self._feeding = False
            self._end_read()
            self._release_pending = False
            if self._active:
                self._fail(Failure(ResponseFailed([Failure(exc)])))
            elif self.transport is not None and not self._lost:
                self.transport.abortConnection()
            return
        self._feeding = False
        if self._read_end is not None:
            self._end_read()
        if self._release_pending:
            self._release_pending = False
            if self._stray:
                self.transport.abortConnection()
            elif not self._lost:
                self.pool.release(self)
            return
        if self._head_method and self._head_done and self._active:
            self._finished()

    def _end_read(self) -> None:
        flush, self._read_end = self._read_end, None
        if flush is not None:
            flush()

    def deliver(self, protocol: Any) -> None:
        self._protocol = protocol
        producer = self._body_side
        if producer is None:  # one per connection: it only names the connection
            producer = self._body_side = _BodyProducer(self)
        protocol.makeConnection(producer)
        early = self._early
        if early is not None:
            self._early = None
            if len(early) > _EARLY_BODY_LIMIT and self.transport is not None:
                self.transport.resumeProducing()
            if self._protocol is None:
                return
            self._protocol.dataReceived(bytes(early))
        if self._complete and self._active and self._protocol is not None:
            self._finished()

    def _finished(self) -> None:
        if self._protocol is None:
            return  # delivered when deliverBody is called
        protocol, self._protocol = self._protocol, None
        self._active = False
        reuse = self._reusable and not self._lost and not self._stray
        protocol.connectionLost(_RESPONSE_DONE)
        if reuse:
            self.reused = True
            if self._feeding:  # decided after the rest of this read is parsed
                self._release_pending = True
            else:
                self.pool.release(self)
        elif self.transport is not None and not self._lost:
            self.transport.loseConnection()

    def _fail(self, reason: Failure) -> None:
        self._active = False
        self._reusable = False
        self._stop_body()
        d, self._d = self._d, None
        protocol, self._protocol = self._protocol, None
        if d is not None:
            d.errback(reason)
        elif protocol is not None:
            protocol.connectionLost(reason)
        if self.transport is not None and not self._lost:
            self.transport.abortConnection()

    def connectionLost(self, reason: Failure = _DONE) -> None:
        self._lost = True
        self.pool.forget(self)
        waiters = self._close_waiters
        if waiters:
            self._close_waiters = ()
            for w in waiters:
                w.callback(None)
        if not self._active:
            return
        if self._head_done and self._framing_eof and not self._complete:
            # close-delimited body: its end is the connection's end
            self._active = False
            protocol, self._protocol = self._protocol, None
            if protocol is not None:
                protocol.connectionLost(Failure(PotentialDataLoss()))
            else:
                self._active = True  # deliver() finishes it
                self._complete = True
                self._reusable = False
            return
        if self._complete:
            return
        if not self._head_done and self.reused and not self._got_bytes and self._d is not None:
            d, self._d = self._d, None
            self._active = False
            d.errback(Failure(_RetryableLossError(reason)))
            return
        self._fail(Failure(ResponseFailed([reason])))


def _check_head_size(headers: dict[bytes, list[bytes]]) -> None:
    """Refuse a response head past ``MAX_HEAD_BYTES`` (its header lines:
    names and values, as ``on_header`` keeps them)."""
    if sum(len(name) * len(values) + sum(map(len, values))
           for name, values in headers.items()) > MAX_HEAD_BYTES:
        raise ValueError("upstream response head too large")


class _RetryableLossError(Exception):
    """A reused idle connection closed before any response byte."""

    def __init__(self, reason: Failure) -> None:
        super().__init__(str(reason.value))
        self.reason = reason
