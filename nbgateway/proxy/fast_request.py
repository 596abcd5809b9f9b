"""The request side of the HTTP/1.1 fast path (:mod:`nbgateway.proxy.fast`):
the request head's header callbacks and :class:`FastRequest`.

It owns :class:`_Head` (llhttp's callbacks for one head: the headers in
``Headers``' own form, Host, ``Content-Length``, ``Connection: close``, and
what makes the fast path decline the request), the bounded memo of header
names (``_NAMES``) shared by the head parse and ``getHeader``, and
:class:`FastRequest`: the part of ``twisted.web.server.Request`` the
gateway's code uses, with twisted.web's response framing on the connection
(chunked without a ``Content-Length``, no body for HEAD/204/304, a chunked
relay's bytes held to the end of the upstream's read); its fields, default
response headers, finish observers and 500 page are those of
:class:`~nbgateway.proxy.request_base.LeanRequest`, which the HTTP/2 lean
route's request shares.  :class:`~nbgateway.proxy.fast.FastHTTPChannel`
makes one per request.  The log lines keep the ``nbgateway.proxy.fast`` namespace.
"""

from __future__ import annotations

import operator
from typing import Any

from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.http_headers import Headers

from nbgateway.proxy.headers import canonical_name, connection_close, plan_skips
from nbgateway.proxy.request_base import LeanRequest, http_date  # noqa: F401 (re-exported)

log = Logger(namespace="nbgateway.proxy.fast")

_NO_BODY_CODES = http.NO_BODY_CODES
_CONTENT_TYPE, _CONTENT_LENGTH, _TRANSFER_ENCODING = map(
    canonical_name, ("Content-Type", "Content-Length", "Transfer-Encoding"))
#: request header names as received -> (as ``Headers`` keeps them, what the
#: head parse does with it (``_KIND_*``), whether the name has an "_", the
#: upstream line's start ``b"Name: "`` when a route plan copies the header as
#: it is, else b"" (:func:`~nbgateway.proxy.headers.plan_skips`)); bounded
#: (the first ``_NAMES_MAX`` names of at most ``_NAME_CACHED_MAX_LEN`` bytes are kept)
_NAMES: dict[bytes, tuple[bytes, int, bool, bytes]] = {}
_NAMES_MAX = 4096
#: longer (client-chosen) names are not memoised: the memo stays small in bytes
_NAME_CACHED_MAX_LEN = 64
_KIND_OTHER, _KIND_HOST, _KIND_LENGTH, _KIND_CONNECTION, _KIND_DECLINE = range(5)
_KINDS = {b"host": _KIND_HOST, b"content-length": _KIND_LENGTH,
          b"connection": _KIND_CONNECTION, b"transfer-encoding": _KIND_DECLINE,
          b"upgrade": _KIND_DECLINE, b"expect": _KIND_DECLINE}


def _name(raw: bytes) -> tuple[bytes, int, bool, bytes]:
    known = _NAMES.get(raw)
    if known is None:
        canonical = canonical_name(raw.decode("latin-1"))
        known = (canonical, _KINDS.get(raw.lower(), _KIND_OTHER), b"_" in raw,
                 b"" if plan_skips(canonical) else canonical + b": ")
        if len(_NAMES) < _NAMES_MAX and len(raw) <= _NAME_CACHED_MAX_LEN:  # client-chosen
            _NAMES[raw] = known
    return known


class _DeclineError(Exception):
    """The head is valid HTTP the fast path does not serve itself."""


class _Head:
    """httptools callbacks for one request head (fields reset per head)."""

    __slots__ = ("block", "close", "copy", "copy_ok", "count", "decline", "headers", "host",
                 "lean", "length", "lines", "parsed", "underscore", "url")

    def __init__(self) -> None:
        self.url = b""
        self.headers: dict[bytes, list[bytes]] = {}
        #: the upstream lines of the headers a route plan copies as they are,
        #: in arrival order (``Name: value\r\n`` as three parts); ``copy_ok``
        #: is False once such a name came twice (the plan groups a name's
        #: values at its first place, as ``Headers`` keeps them)
        self.copy: list[bytes] = []
        self.copy_ok = True
        self.count = 0
        self.host: bytes | None = None
        self.length: int | None = None
        self.close = False
        self.decline = False
        #: a header name with "_" (the front door drops those)
        self.underscore = False
        #: the connection's memo of its last head (see FastHTTPChannel._next_request):
        #: that head's header section as received (b"": none), the headers it
        #: parsed to once the section came twice in a row (None before; never
        #: handed out: each request gets a copy), and the url-only parser used
        #: when the next head's section is the same bytes
        self.block = b""
        self.parsed: dict[bytes, list[bytes]] | None = None
        self.lean: tuple[Any, _Url] | None = None
        #: ``block`` split at its CRLFs (None: not split): a head whose
        #: section differs from it in one line only (see :func:`near_line`)
        self.lines: list[bytes] | None = None

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.count += 1
        if value.endswith((b" ", b"\t")):  # llhttp keeps trailing OWS; twisted.web strips it
            value = value.rstrip(b" \t")
        try:  # a subscript, no method call (a name not memoised raises, then is)
            canonical, kind, underscore, prefix = _NAMES[name]
        except KeyError:
            canonical, kind, underscore, prefix = _name(name)
        if kind:
            if kind == _KIND_HOST:
                self.host = value
            elif kind == _KIND_LENGTH:
                if self.length is not None or not value.isdigit():
                    self.decline = True
                else:
                    self.length = int(value)
            elif kind == _KIND_CONNECTION:
                if connection_close((value,)):  # any field of the list closes
                    self.close = True
            else:  # Transfer-Encoding, Upgrade, Expect
                self.decline = True
        if 13 in value or 10 in value:  # CR, LF (an int is found by memchr: ~10x faster)
            self.decline = True  # llhttp refuses these; twisted.web would sanitise them
        if underscore:
            self.underscore = True
        headers = self.headers
        if canonical not in headers:
            headers[canonical] = [value]
            if prefix:
                self.copy += (prefix, value, b"\r\n")
        else:
            headers[canonical].append(value)
            if prefix:
                self.copy_ok = False


_ne = operator.ne


def one_line_differs(prev: list[bytes] | None, lines: list[bytes]) -> int:
    """The index of the one line of ``lines`` that differs from ``prev``
    (a header section split at its CRLFs), or -1: none, several, or not as
    many lines."""
    if prev is None or len(prev) != len(lines):
        return -1
    diff = list(map(_ne, lines, prev))  # in C: no Python step per line
    return diff.index(True) if diff.count(True) == 1 else -1


def near_line(prev: list[bytes], lines: list[bytes],
              at: int) -> tuple[bytes, bytes, bytes] | None:
    """``(name as Headers keeps it, value, the plan's line start)`` of
    ``lines[at]`` when it is the same header as ``prev[at]`` with another
    value, and the value is all the head's parse takes from it: a memoised
    name whose only effect is its value (no Host, Content-Length,
    Connection, Transfer-Encoding, Upgrade, Expect, no "_"), no CR or LF in
    the line; else None.  The value as llhttp gives it (leading SP/HT
    skipped) and ``_Head.on_header`` keeps it (trailing SP/HT stripped);
    llhttp still checks the whole head (strict: a name is a token, no
    obs-fold, no bare CR or LF) before it is used."""
    line = lines[at]
    name, sep, value = line.partition(b":")
    known = _NAMES.get(name)
    if (known is None or known[1] or known[2] or not sep or 13 in line or 10 in line
            or prev[at][:len(name) + 1] != name + b":"):
        return None
    return known[0], value.strip(b" \t"), known[3]


class ParsedHeaders(Headers):
    """The fast path's request headers: ``Headers`` that note a value set or
    added through their methods after the parse (``changed``).  A route plan
    takes the parse's upstream lines (``FastRequest.upstream_copy``) only
    while they still have as many names as parsed (a removal shows there) and
    nothing was set or added: a value replaced in place, or a header removed
    and another added, would otherwise send what the client sent.  (Removal
    is not noted: the credential strip removes its names on every request,
    present or not.)"""

    __slots__ = ("changed",)

    def setRawHeaders(self, name: Any, values: Any) -> None:
        self.changed = True
        super().setRawHeaders(name, values)

    def addRawHeader(self, name: Any, value: Any) -> None:
        self.changed = True
        super().addRawHeader(name, value)



class _Url:
    """httptools callbacks for a head whose header section is the connection's
    memo: llhttp parses and checks every byte, but only the request target is
    handed to Python (no ``on_header``: httptools then sets no header callbacks)."""

    __slots__ = ("url",)

    def __init__(self) -> None:
        self.url = b""

    def on_url(self, url: bytes) -> None:
        self.url += url


class FastRequest(LeanRequest):
    """One request served by the fast path: the part of
    ``twisted.web.server.Request`` the gateway's code uses, with the same
    response framing (default ``Content-Type``, chunked without a
    ``Content-Length``, no body for HEAD/204/304).  The fields, observers
    and error page are :class:`~nbgateway.proxy.request_base.LeanRequest`'s."""

    clientproto = b"HTTP/1.1"
    _log_failure = staticmethod(log.failure)
    _route = "fast path"

    # Every attribute is a slot (fixed offsets, set in ``__init__``): no
    # per-instance dict, whose inline values CPython 3.11 gives up for every
    # instance once the class's shared keys are spent (30 names, one fewer
    # for each instance made while earlier ones still add names: with a few
    # requests in flight the late names -- the status, the upstream status --
    # moved every request to a dict of its own, each read a hash lookup).
    # (They are LeanRequest's, which sets them in its ``__init__``: one
    # frame per request, as before the base.)
    __slots__ = ()

    # -- what resources read -------------------------------------------------
    def getHeader(self, key: bytes) -> bytes | None:
        known = _NAMES.get(key)  # the head parse's memo of names
        if known is None:
            known = _name(key)
        values = self.requestHeaders._rawHeaders.get(known[0])
        return values[-1] if values else None

    # -- the response --------------------------------------------------------
    def registerProducer(self, producer: Any, streaming: bool) -> None:
        if self.producer:
            raise ValueError("a producer is already registered")
        self.producer = producer
        channel = self.channel
        if channel is not None:
            if streaming and channel._requestProducer is None:
                # HTTPChannel.registerProducer for a push producer, inline
                # (FastHTTPChannel keeps twisted's; a test checks)
                channel._requestProducer = producer
                channel._requestProducerStreaming = True
            else:
                channel.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        channel = self.channel
        if channel is not None:
            if channel._requestProducerStreaming:
                # HTTPChannel.unregisterProducer for a push producer, inline
                channel._requestProducer = None
                channel._requestProducerStreaming = None
            else:
                channel.unregisterProducer()
        self.producer = None

    def write(self, data: bytes) -> None:
        if self.finished:
            raise RuntimeError("Request.write called on a request after Request.finish")
        if self._disconnected:
            return
        transport = self.transport
        if not self.startedWriting:
            self.startedWriting = True
            # The head, made here (one call fewer per response): the Headers'
            # own dict (names canonical, values sanitised on entry), no name
            # encoding per lookup, one join for the whole block.
            raw = self.responseHeaders._rawHeaders
            code = self.code
            bodiless = self.method == b"HEAD" or code in _NO_BODY_CODES
            if (code not in _NO_BODY_CODES and self.defaultContentType is not None
                    and _CONTENT_TYPE not in raw):
                length = raw.get(_CONTENT_LENGTH)
                if not (length and length[0] == b"0"):
                    self.responseHeaders.setRawHeaders(b"content-type", [self.defaultContentType])
            if not bodiless and _CONTENT_LENGTH not in raw:
                raw[_TRANSFER_ENCODING] = [b"chunked"]
                self.chunked = True
            parts = [b"HTTP/1.1 %d %s\r\n" % (code, self.code_message)]
            for name, values in raw.items():
                if len(values) == 1:  # most names: no iterator made and dropped
                    parts += (name, b": ", values[0], b"\r\n")
                else:
                    for value in values:
                        parts += (name, b": ", value, b"\r\n")
            parts.append(b"\r\n")
            head = b"".join(parts)
            if bodiless:
                transport.write(head)
                self._bodiless = True  # what follows is dropped
                return
            self.sentLength += len(data)
            if self.chunked:
                self._send(b"%s%x\r\n%s\r\n" % (head, len(data), data) if data else head)
            elif not data:
                transport.write(head)
            else:
                transport.write(head + data)
            return
        if not data or self._bodiless:
            return
        self.sentLength += len(data)
        if self.chunked:
            self._send(b"%x\r\n%s\r\n" % (len(data), data))
        else:
            transport.write(data)

    def _send(self, piece: bytes) -> None:
        """Chunked bytes out.  While the upstream client is parsing a read
        (its producer's ``hold_until_read_end``) they are held and go out at
        the end of that read, or with the ``0\\r\\n\\r\\n`` terminator when
        the message ended in it: one transport write (one TLS record, one
        segment) per upstream read.  Held bytes are bounded by one read."""
        held = self._held
        if held is not None:
            held.append(piece)
            return
        hold = getattr(self.producer, "hold_until_read_end", None)
        if hold is not None and hold(self._flush_held):
            self._held = [piece]
            return
        self.transport.write(piece)

    def _flush_held(self) -> None:
        held, self._held = self._held, None
        if held and not self._disconnected:
            self.transport.write(held[0] if len(held) == 1 else b"".join(held))

    def finish(self) -> None:
        if self._disconnected:
            raise RuntimeError("Request.finish called on a request after its "
                               "connection was lost")
        if self.finished:
            return
        if not self.startedWriting:
            if self._held is None:
                self._held = []  # the head goes out with the terminator
            self.write(b"")
        if self.chunked:
            held, self._held = self._held, None
            if held:
                held.append(b"0\r\n\r\n")
                self.transport.write(b"".join(held))
            else:
                self.transport.write(b"0\r\n\r\n")
        else:
            self._held = None
        self.finished = True
        channel = self.channel
        if self.body_stream is not None and not self.body_stream.complete:
            # The response ended before the streamed body did: the rest is unread.
            self.body_stream.stopProducing()
            if channel is not None:
                channel.persistent = False
        if self.producer is not None:
            self.unregisterProducer()
        self.channel = None
        if self.lost_hooks:  # LeanRequest._ended(), inline (one frame fewer per request)
            self.lost_hooks = ()
        hooks = self.finish_hooks
        if hooks:
            self.finish_hooks = ()
        for fn in hooks:
            try:
                fn(None)
            except Exception:
                log.failure("fast path: a finish observer failed")
        notifications, self.notifications = self.notifications, ()
        for d in notifications:
            d.callback(None)
        if channel is not None:
            channel.fast_done(self)

    def connectionLost(self, reason: Failure) -> None:
        self._disconnected = True
        self._held = None
        self.channel = None
        if self.body_stream is not None:
            self.body_stream.abort(reason)
        self._lost(reason)

    def _abort(self, channel: Any) -> None:
        channel.transport.abortConnection()
