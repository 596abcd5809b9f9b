"""Shared fixtures for the reverse-proxy tests: real 127.0.0.1 sockets."""

from __future__ import annotations

import contextlib
import json
from typing import Any

from twisted.internet import defer, reactor, task, utils
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.web import resource, server

from nbgateway.dial.direct import DirectDialer
from nbgateway.dial.pool import UpstreamPools
from nbgateway.dial.tunnel import TunnelDialer
from nbgateway.proxy.reverse import ProxyResource, ReverseProxy
from nbgateway.proxy.streaming import ProxySite
from nbgateway.routes.context import RequestContext
from nbgateway.routes.paths import PathRouter, parse_target
from nbgateway.routes.service import ProxyService, TargetOptions


class RecordingSite(server.Site):
    """A Site that counts TCP connections (to prove connection reuse)."""

    def __init__(self, res: Any) -> None:
        super().__init__(res)
        self.connections = 0
        self.channels: list[Any] = []

    def buildProtocol(self, addr: Any) -> Any:
        self.connections += 1
        p = super().buildProtocol(addr)
        self.channels.append(getattr(p, "_channel", p))
        return p


class EchoUpstream(resource.Resource):
    """Answers with JSON describing the request it saw."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[dict[str, Any]] = []

    def render(self, request: Any) -> bytes:
        headers = {k.decode().lower(): [v.decode() for v in vs]
                   for k, vs in request.requestHeaders.getAllRawHeaders()}
        body = request.content.read()
        info = {"method": request.method.decode(), "uri": request.uri.decode(),
                "headers": headers, "body_len": len(body),
                "client_port": request.getClientAddress().port,
                "client_host": request.getClientAddress().host}
        self.seen.append(info)
        path = request.path
        if path.startswith(b"/redirect"):
            request.setResponseCode(302)
            request.setHeader(b"location", request.args.get(b"to", [b"/"])[0])
            return b""
        if path.startswith(b"/nocontent"):
            request.setResponseCode(204)
            return b""
        if path.startswith(b"/notmodified"):
            request.setResponseCode(304)
            return b""
        if path.startswith(b"/chunked"):
            # No Content-Length: twisted.web answers chunked.
            request.setHeader(b"content-type", b"text/plain")
            request.write(b"part-one,")
            reactor.callLater(0.01, lambda: (request.write(b"part-two"), request.finish()))
            return server.NOT_DONE_YET
        if path.startswith(b"/cookie"):
            request.setHeader(b"set-cookie", b"up=1; Path=/")
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"x-upstream", b"yes")
        return json.dumps(info).encode()


class SilentProtocol(Protocol):
    """Accepts and never answers (unresponsive upstream)."""

    def dataReceived(self, data: bytes) -> None:
        pass


def tcp_endpoint_factory(host: str, port: int, timeout: float) -> Any:
    """Stands in for the netstack TunnelClientEndpoint in tunnel-dialer tests."""
    return TCP4ClientEndpoint(reactor, host, port, timeout=timeout)


class ProxyHarness:
    def __init__(self, *, overlay: bool = False, streaming: bool = True,
                 **proxy_kw: Any) -> None:
        self.pools = UpstreamPools(reactor)
        self.direct = DirectDialer(reactor)
        self.tunnel = TunnelDialer(tcp_endpoint_factory)
        self.services: dict[str, ProxyService] = {}
        self.proxy = ReverseProxy(reactor, self.pools, self.dialer_for, **proxy_kw)
        self.identity: Any = None
        self.requests: list[Any] = []
        self.contexts: list[RequestContext] = []
        self.overlay = overlay
        res = ProxyResource(self.proxy, self.services.get, context_of=self._context)
        self.site = RecordingSite(res)
        if streaming:
            self.site.requestFactory = ProxySite.requestFactory
            self.site.protocol = ProxySite.protocol
        self.port: Any = None

    def _context(self, request: Any) -> RequestContext:
        self.requests.append(request)
        ctx = RequestContext(overlay=self.overlay, identity=self.identity)
        self.contexts.append(ctx)
        return ctx

    def dialer_for(self, account_id: str, direct: bool) -> Any:
        return self.direct if direct else self.tunnel

    def add(self, domain: str, paths: dict[str, str], *, opts: TargetOptions | None = None,
            **kw: Any) -> ProxyService:
        routes = [parse_target(p, t, opts or TargetOptions()) for p, t in paths.items()]
        svc = ProxyService(account_id=kw.pop("account_id", "acc1"), domain=domain,
                           router=PathRouter(routes), **kw)
        self.services[domain] = svc
        return svc

    def listen(self) -> int:
        self.port = reactor.listenTCP(0, self.site, interface="127.0.0.1")
        return self.port.getHost().port

    @defer.inlineCallbacks
    def close(self) -> Any:
        yield self.pools.close()
        # the proxy's request deadlines (a test may have replaced the pools
        # it shares them with): no lingering timer left in the reactor
        self.proxy.deadlines.disarm_idle()
        if self.port is not None:
            yield self.port.stopListening()
        for ch in self.site.channels:
            if ch.transport is not None:
                # a TLS transport that already closed raises here
                with contextlib.suppress(AttributeError):
                    ch.transport.abortConnection()


def listen_site(res: Any) -> tuple[Any, RecordingSite]:
    site = RecordingSite(res)
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    return port, site


def listen_protocol(proto_factory: Any) -> Any:
    return reactor.listenTCP(0, Factory.forProtocol(proto_factory), interface="127.0.0.1")


@defer.inlineCallbacks
def curl(*args: str) -> Any:
    """Run curl; returns (status, headers_text, body_bytes)."""
    out, err, code = yield utils.getProcessOutputAndValue(
        "curl", ["-sS", "--max-time", "20", "-D", "/dev/stderr", *args], env={})
    if code != 0:
        raise AssertionError(f"curl failed ({code}): {err[-500:]!r}")
    head = err.decode("latin-1")
    status_lines = [ln for ln in head.splitlines() if ln.startswith("HTTP/")]
    status = int(status_lines[-1].split()[1]) if status_lines else 0
    return status, head, out


@defer.inlineCallbacks
def wait_for(predicate: Any, timeout: float = 30.0, step: float = 0.01) -> Any:
    waited = 0.0
    while not predicate():
        if waited > timeout:
            raise AssertionError("condition not reached")
        yield task.deferLater(reactor, step, lambda: None)
        waited += step
    return True
