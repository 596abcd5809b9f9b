"""``Upgrade`` pass-through (WebSocket and other protocol switches).

For a request carrying ``Connection: upgrade`` + ``Upgrade: X`` the proxy
opens a dedicated (never pooled) upstream connection with the account's
dialer, writes the request head (outgoing headers prepared exactly as for
ordinary requests, with ``Upgrade``/``Connection`` re-added) and reads the
response head:

- ``101 Switching Protocols``: the head is relayed to the client (hop-by-hop
  headers filtered, ``Upgrade``/``Connection`` restored), the client's HTTP
  channel hands its transport over
  (:meth:`~nbgateway.proxy.streaming.StreamingHTTPChannel.take_over`), and
  the two connections are spliced byte for byte, each registered as the
  other's streaming producer (backpressure both ways).  Either side closing
  closes the other.
- any other status: relayed as an ordinary response (Content-Length,
  chunked or close-delimited body), and the upstream connection is closed.

The request timeout covers the dial and the wait for the response head
(504); no deadline applies once the connection is switched.  Spliced
connections are tracked per domain so a modified or removed mapping can
close them (:meth:`UpgradeRelay.close_domain`).
"""

from __future__ import annotations

import contextlib
from typing import Any

from twisted.internet import defer
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.http_headers import Headers

from nbgateway.dial.fdbudget import account_share
from nbgateway.proxy import pages
from nbgateway.proxy.balance import counts_against_target, never_reached_upstream
from nbgateway.proxy.failures import classify_error, note_dial_denial
from nbgateway.proxy.headers import filter_response_headers
from nbgateway.routes.context import RequestContext

log = Logger()

MAX_RESPONSE_HEAD = 64 * 1024


def _head_bytes(status_line: bytes, headers: Headers) -> bytes:
    lines = [status_line]
    for name, values in headers.getAllRawHeaders():
        for value in values:
            lines.append(name + b": " + value)
    return b"\r\n".join(lines) + b"\r\n\r\n"


def parse_response_head(head: bytes) -> tuple[int, bytes, Headers]:
    """Parse ``HTTP/1.x code reason`` + header lines; ValueError if malformed."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise ValueError(f"bad status line {lines[0][:80]!r}")
    headers = Headers()
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(b":")
        if not sep or not name or name != name.strip():
            raise ValueError("bad header line")
        headers.addRawHeader(name, value.strip(b" \t"))
    return int(parts[1]), parts[2] if len(parts) > 2 else b"", headers


class _ClientSide(Protocol):
    """Takes over the client connection after a 101."""

    def __init__(self, splice: _Splice) -> None:
        self.splice = splice

    def dataReceived(self, data: bytes) -> None:
        self.splice.to_upstream(data)

    def connectionLost(self, reason: Failure) -> None:
        self.splice.closed("client")


class _Splice:
    def __init__(self, relay: UpgradeRelay, domain: str, request: Any, upstream: Any,
                 ctx: RequestContext | None = None) -> None:
        self.relay = relay
        self.domain = domain
        self.request = request
        #: the request's context (service, listener account, source address):
        #: what the private gate is asked again (:meth:`UpgradeRelay.revalidate`)
        self.ctx = ctx
        self.upstream = upstream  # _UpstreamSide
        self.client_transport: Any = None
        self.bytes_up = 0
        self.bytes_down = 0
        self._closed = False

    def start(self, leftover: bytes) -> None:
        channel = self.request.channel
        channel.take_over(_ClientSide(self))
        self.client_transport = channel.transport
        up = self.upstream.transport
        self.client_transport.registerProducer(up, True)
        up.registerProducer(self.client_transport, True)
        self.relay.track(self)
        if leftover:
            self.to_client(leftover)

    def to_upstream(self, data: bytes) -> None:
        self.bytes_up += len(data)
        self.upstream.transport.write(data)

    def to_client(self, data: bytes) -> None:
        self.bytes_down += len(data)
        self.client_transport.write(data)

    def closed(self, side: str) -> None:
        if self._closed:
            return
        self._closed = True
        self.relay.untrack(self)
        for t in (self.client_transport, self.upstream.transport):
            if t is None:
                continue
            with contextlib.suppress(Exception):  # already gone
                t.unregisterProducer()
            t.loseConnection()
        req = self.request
        req.sentLength = self.bytes_down
        if not req.finished and not req._disconnected:
            req.finish()

    def close(self) -> None:
        for t in (self.client_transport, self.upstream.transport):
            if t is not None:
                t.loseConnection()


def _account_of(splice: _Splice) -> str:
    ctx = splice.ctx
    service = None if ctx is None else ctx.service
    return "" if service is None else service.account_id


def _close_unless_allowed(decision: Any, splice: _Splice) -> None:
    if not decision.allowed:
        log.info("upgraded connection to {domain} closed: access revoked ({reason})",
                 domain=splice.domain, reason=decision.reason or "denied")
        splice.close()


class _UpstreamSide(Protocol):
    """The upstream end: first parses the response head, then relays."""

    def __init__(self, attempt: _Attempt) -> None:
        self.attempt = attempt
        self.buf = b""
        self.state = "head"  # head -> splice | body | done
        self.splice: _Splice | None = None
        self.decoder: Any = None
        self.remaining: int | None = None

    def connectionMade(self) -> None:
        self.attempt.connected(self)

    def dataReceived(self, data: bytes) -> None:
        if self.state == "splice":
            self.splice.to_client(data)
        elif self.state == "head":
            self.buf += data
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > MAX_RESPONSE_HEAD:
                    self.state = "done"
                    self.attempt.failed(ValueError("response head too large"))
                    self.transport.abortConnection()
                return
            head, rest = self.buf[:end], self.buf[end + 4 :]
            self.buf = b""
            self.attempt.head_received(self, head, rest)
        elif self.state == "body":
            self._body(data)

    def _body(self, data: bytes) -> None:
        req = self.attempt.request
        if self.decoder is not None:
            try:
                self.decoder.dataReceived(data)
            except Exception as exc:
                self.state = "done"
                self.transport.abortConnection()
                self.attempt.body_failed(exc)
            return
        if self.remaining is not None:
            data = data[: self.remaining]
            self.remaining -= len(data)
        if data and not req._disconnected:
            req.write(data)
        if self.remaining == 0:
            self._body_done()

    def _body_done(self, _rest: bytes = b"") -> None:
        if self.state != "body":
            return
        self.state = "done"
        self.transport.loseConnection()
        self.attempt.body_done()

    def connectionLost(self, reason: Failure) -> None:
        if self.state == "splice":
            self.splice.closed("upstream")
        elif self.state == "head":
            self.state = "done"
            self.attempt.failed(reason.value)
        elif self.state == "body":
            if self.decoder is None and self.remaining is None:
                self.state = "done"
                self.attempt.body_done()  # close-delimited body
            else:
                self.state = "done"
                self.attempt.body_failed(reason.value)


class _Attempt:
    """One upgrade request: dial, write head, await the response head."""

    def __init__(self, relay: UpgradeRelay, request: Any, ctx: RequestContext, route: Any,
                 head: bytes, timeout: float, pool: Any = None, state: Any = None,
                 retry: Any = None) -> None:
        self.relay = relay
        #: several targets per path (nbgateway.proxy.balance): the pool, the
        #: target of this attempt, and ``retry(exc) -> bool`` (another target)
        self.pool = pool
        self.state = state
        self.retry = retry
        self._busy = False
        self.request = request
        self.context = ctx
        self.service = ctx.service
        self.route = route
        self.head = head
        self.timeout = timeout
        self.side: _UpstreamSide | None = None
        self.finished = False
        self.timed_out = False
        self._connecting: defer.Deferred[Any] | None = None
        self._deadline: Any = None

    def start(self, endpoint: Any) -> None:
        if self.pool is not None:
            self.pool.started(self.state)
            self._busy = True
        self._deadline = self.relay.proxy.clock.callLater(self.timeout, self._on_timeout)
        self.request.notifyFinish().addErrback(self._client_lost)
        d = self._connecting = endpoint.connect(Factory.forProtocol(lambda: _UpstreamSide(self)))
        d.addErrback(self._connect_failed)

    def _on_timeout(self) -> None:
        self._deadline = None
        self.timed_out = True
        if self._connecting is not None:
            self._connecting.cancel()
        elif self.side is not None and self.side.state == "head":
            self.side.state = "done"
            self.side.transport.abortConnection()
            self.failed(TimeoutError("no response head"))

    def _client_lost(self, _reason: Failure) -> None:
        self.finished = True
        self._release()
        self._stop_deadline()
        if self._connecting is not None:
            self._connecting.cancel()
        if self.side is not None and self.side.state in ("head", "body"):
            self.side.state = "done"
            self.side.transport.abortConnection()

    def _stop_deadline(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def _connect_failed(self, failure: Failure) -> None:
        self._connecting = None
        exc = failure.value
        if not self.finished and self._account(exc) and self.retry is not None \
                and not self.timed_out and never_reached_upstream(exc) and self.retry(exc):
            # another target of the path took the request over
            self.finished = True
            self._stop_deadline()
            return
        self.failed(exc)

    def _release(self) -> None:
        if self._busy:
            self._busy = False
            self.pool.ended(self.state)

    def _account(self, exc: BaseException | None) -> bool:
        """Passive health of a balanced path: a response head (``exc`` None)
        or a failure of this attempt's target; True once accounted."""
        if not self._busy:
            return False
        self._release()
        if exc is None:
            self.pool.succeeded(self.state)
        elif counts_against_target(exc, self.timed_out):
            self.pool.failed(self.state, self.relay.proxy.clock.seconds())
        return True

    def connected(self, side: _UpstreamSide) -> None:
        self._connecting = None
        self.side = side
        if self.finished:
            side.state = "done"
            side.transport.abortConnection()
            return
        side.transport.write(self.head)

    def failed(self, exc: BaseException) -> None:
        self._stop_deadline()
        if self.finished:
            return
        self._account(exc)
        self.finished = True
        page = classify_error(exc, self.timed_out)
        note_dial_denial(self.context, exc, self.relay.proxy, self.service)
        log.warn("upgrade proxy error {status} {title}: {error}", status=page.code,
                 title=page.title, error=repr(exc), target=self.route.target)
        pages.send_page(self.request, page, destination=self.route.target)

    def head_received(self, side: _UpstreamSide, head: bytes, rest: bytes) -> None:
        self._stop_deadline()
        self._account(None)
        if self.finished:
            side.state = "done"
            side.transport.abortConnection()
            return
        try:
            code, reason, headers = parse_response_head(head)
        except ValueError as exc:
            side.state = "done"
            side.transport.abortConnection()
            self.failed(exc)
            return
        self.finished = True
        req = self.request
        upgrade = headers.getRawHeaders(b"upgrade")
        out = filter_response_headers(headers)
        if code == 101:
            if upgrade:
                out.setRawHeaders(b"Upgrade", [upgrade[0]])
            out.setRawHeaders(b"Connection", [b"Upgrade"])
            req.setResponseCode(101)
            req.startedWriting = 1
            req.channel.transport.write(_head_bytes(b"HTTP/1.1 101 " + (reason or b"Switching"
                                                                         b" Protocols"), out))
            side.state = "splice"
            side.splice = _Splice(self.relay, self.service.domain, req, side, self.context)
            side.splice.start(rest)
            return
        # Not switched: relay as an ordinary response, then drop the connection.
        req.setResponseCode(code, reason or None)
        req.defaultContentType = None
        req.responseHeaders.removeHeader(b"server")
        for name, values in out.getAllRawHeaders():
            req.responseHeaders.setRawHeaders(name, values)
        side.state = "body"
        te = b",".join(headers.getRawHeaders(b"transfer-encoding") or []).lower()
        cl = headers.getRawHeaders(b"content-length")
        if req.method == b"HEAD" or code in (204, 304) or 100 <= code < 200:
            side.remaining = 0
        elif b"chunked" in te:
            side.decoder = http._ChunkedTransferDecoder(
                lambda data: req.write(data) if not req._disconnected else None,
                side._body_done)
        elif cl and cl[0].isdigit():
            side.remaining = int(cl[0])
            req.responseHeaders.setRawHeaders(b"content-length", [cl[0]])
        if side.remaining == 0:
            side._body_done()
        elif rest:
            side._body(rest)

    def body_done(self) -> None:
        req = self.request
        if not req.finished and not req._disconnected:
            req.finish()

    def body_failed(self, exc: BaseException) -> None:
        log.warn("upgrade response body failed: {error}", error=repr(exc))
        req = self.request
        if not req._disconnected and req.channel is not None:
            req.channel.transport.abortConnection()


class UpgradeRelay:
    """Relays ``Upgrade`` requests for a :class:`~nbgateway.proxy.reverse.ReverseProxy`."""

    def __init__(self, proxy: Any, max_per_domain: int = 10_000,
                 max_per_account: int | None = None) -> None:
        self.proxy = proxy
        self.max_per_domain = max_per_domain
        #: spliced connections one account may hold (two descriptors each on
        #: a direct target): a share of the process's descriptors
        #: (:mod:`nbgateway.dial.fdbudget`; 0: no bound)
        self.max_per_account = (account_share(per_item=2) if max_per_account is None
                                else max_per_account)
        self._active: dict[str, set[_Splice]] = {}
        self._accounts: dict[str, int] = {}

    def relay(self, request: Any, ctx: RequestContext, route: Any, opts: Any,
              dialer: Any, target_path: str, timeout: float, *, pool: Any = None,
              state: Any = None, retry: Any = None) -> None:
        """Relay ``request`` to ``route``'s target.  On a balanced path
        ``pool``/``state`` get the passive-health verdict and ``retry(exc)``
        may hand a failed dial to another target (True: it did)."""
        from nbgateway.dial import ProxyNotConnectedError

        service = ctx.service
        assert service is not None  # the proxy routed it

        if not hasattr(request.channel, "take_over"):
            # only StreamingHTTPChannel (ProxySite) can hand its connection over
            log.warn("Upgrade request on a channel that cannot switch protocols")
            pages.send_page(request, pages.CONNECTION_ERROR)
            return
        if len(self._active.get(service.domain, ())) >= self.max_per_domain or (
                self.max_per_account
                and self._accounts.get(service.account_id, 0) >= self.max_per_account):
            pages.send_page(request, pages.SERVICE_OVERLOADED)
            return
        headers = self.proxy.upstream_headers(request, service, route, opts, ctx.identity,
                                              keep_upgrade=True)
        body = b""
        if getattr(request, "content", None) is not None:
            request.content.seek(0)
            body = request.content.read()
        if body:
            headers.setRawHeaders(b"content-length", [b"%d" % len(body)])
        head = _head_bytes(request.method + b" " + target_path.encode("latin-1") + b" HTTP/1.1",
                           headers) + body
        attempt = _Attempt(self, request, ctx, route, head, timeout, pool, state, retry)
        try:
            factory = self.proxy.pools.endpoint_factory(
                dialer, timeout=timeout, skip_verify=opts.skip_tls_verify)
            endpoint = factory.endpoint(route.host, route.port, route.scheme == "https")
        except ProxyNotConnectedError as exc:
            attempt.failed(exc)
            return
        attempt.start(endpoint)

    def track(self, splice: _Splice) -> None:
        live = self._active.setdefault(splice.domain, set())
        if splice not in live:
            live.add(splice)
            account = _account_of(splice)
            self._accounts[account] = self._accounts.get(account, 0) + 1

    def untrack(self, splice: _Splice) -> None:
        live = self._active.get(splice.domain)
        if live is not None and splice in live:
            live.discard(splice)
            if not live:
                del self._active[splice.domain]
            account = _account_of(splice)
            left = self._accounts.get(account, 0) - 1
            if left > 0:
                self._accounts[account] = left
            else:
                self._accounts.pop(account, None)

    def account_active(self, account_id: str) -> int:
        """Spliced connections the account holds."""
        return self._accounts.get(account_id, 0)

    def active(self, domain: str | None = None) -> int:
        if domain is not None:
            return len(self._active.get(domain, ()))
        return sum(len(s) for s in self._active.values())

    def close_all(self) -> int:
        """Close every spliced connection (shutdown)."""
        return sum(self.close_domain(d) for d in list(self._active))

    def revalidate(self, account_id: str, gate: Any) -> int:
        """The account's access changed (management pushed a map for it): ask
        the private gate (:class:`~nbgateway.auth.tunnel.PrivateGate`) again
        for each spliced connection of the account's private services, as it
        was asked for the upgrade request, and close those it no longer
        allows.  Returns how many were asked about."""
        asked = 0
        for live in list(self._active.values()):
            for splice in list(live):
                ctx = splice.ctx
                entry = None if ctx is None else ctx.entry
                if entry is None or not entry.private:
                    continue
                service = entry.service
                if service.account_id != account_id:
                    continue
                asked += 1
                d = gate.check(listener_account=ctx.listener_account,  # type: ignore[union-attr]
                               mapping_account=service.account_id, domain=service.domain,
                               client_ip=ctx.source_ip)  # type: ignore[union-attr]
                d.addCallback(_close_unless_allowed, splice)
                d.addErrback(lambda f, sp=splice: sp.close())  # in doubt: closed
        return asked

    def close_domain(self, domain: str) -> int:
        """Close every spliced connection for ``domain``; returns how many."""
        live = list(self._active.get(domain, ()))
        for splice in live:
            splice.close()
        return len(live)
