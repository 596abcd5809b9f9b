"""Health probes and ``/metrics`` on the admin listener (``--health-addr``).

:class:`HealthState` is the small mutable record the composition root updates
(management stream connected, initial sync complete, shutting down, and one
:class:`ClientHealth` per account runtime).  The probe rules are pure methods
of it, mirroring upstream netbird-proxy:

=====================  =========================================================
``/healthz/live``      always 200
``/healthz/ready``     200 iff management connected and not shutting down
``/healthz/startup``   200 iff management connected, initial sync complete and
                       every account runtime healthy (no accounts = healthy)
``/healthz``           readiness rule, with all checks and client details
``/metrics``           Prometheus text / OpenMetrics from the private registry
=====================  =========================================================

Bodies are upstream's JSON: ``{"status": "ok"|"fail", "checks": {...},
"clients": {account: {...}}}`` (empty ``checks``/``clients`` omitted).  An
account runtime here is a WireGuard device plus its management peer channel,
not an embedded NetBird client: :func:`client_health_from_device` fills the
upstream fields from it (``signal_connected`` mirrors the peer channel, there
are no relays, every connected peer is direct).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from prometheus_client import CollectorRegistry
from twisted.application.internet import StreamServerEndpointService
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.web.pages import errorPage, notFound
from twisted.web.resource import Resource
from twisted.web.server import Site

from nbgateway.observe.metrics import MetricsResource

log = Logger()

#: A peer whose last handshake is older than this counts as degraded (upstream: 5 min).
HANDSHAKE_STALE = 300.0
#: ... and one without a handshake for this long as not connected (3 x REJECT_AFTER_TIME).
PEER_CONNECTED_WINDOW = 540.0
#: Idle timeout of admin connections (upstream: 5 s read/write timeouts).
ADMIN_TIMEOUT = 5.0


@dataclass(frozen=True)
class ClientHealth:
    healthy: bool
    management_connected: bool = False
    signal_connected: bool = False
    relays_connected: int = 0
    relays_total: int = 0
    peers_total: int = 0
    peers_connected: int = 0
    peers_p2p: int = 0
    peers_relayed: int = 0
    peers_degraded: int = 0
    error: str = ""

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        if not out["error"]:
            del out["error"]
        return out


def client_health_from_device(device: Any, now: float, *, management_connected: bool,
                              error: str = "") -> ClientHealth:
    """Health of one account runtime from its WireGuard device (``device.peers``
    with ``last_handshake`` in the device clock's seconds)."""
    connected = degraded = 0
    peers = list(device.peers.values())
    for peer in peers:
        last = peer.last_handshake
        if last is None or now - last > PEER_CONNECTED_WINDOW:
            continue
        connected += 1
        if now - last > HANDSHAKE_STALE:
            degraded += 1
    return ClientHealth(
        healthy=management_connected and not error,
        management_connected=management_connected,
        signal_connected=management_connected,
        peers_total=len(peers),
        peers_connected=connected,
        peers_p2p=connected,
        peers_degraded=degraded,
        error=error,
    )


@dataclass(frozen=True)
class Probe:
    code: int
    body: dict[str, Any]


class HealthState:
    """What the probes report; updated by the composition root."""

    def __init__(self, clients: Callable[[], Mapping[str, ClientHealth]] | None = None) -> None:
        self.management_connected = False
        self.initial_sync_complete = False
        self.shutting_down = False
        self._clients: dict[str, ClientHealth] = {}
        self._provider = clients

    # -- updates ----------------------------------------------------------------------------

    def set_management_connected(self, connected: bool) -> None:
        self.management_connected = bool(connected)

    def mark_initial_sync_complete(self) -> None:
        self.initial_sync_complete = True

    def begin_shutdown(self) -> None:
        """Readiness fails from now on (do this first when stopping)."""
        self.shutting_down = True

    def set_client(self, account_id: str, health: ClientHealth) -> None:
        self._clients[account_id] = health

    def remove_client(self, account_id: str) -> None:
        self._clients.pop(account_id, None)

    def clients(self) -> dict[str, ClientHealth]:
        if self._provider is not None:
            return dict(self._provider())
        return dict(self._clients)

    # -- probes -----------------------------------------------------------------------------

    def ready(self) -> bool:
        return self.management_connected and not self.shutting_down

    def live_probe(self) -> Probe:
        return _probe(True, None, None)

    def ready_probe(self) -> Probe:
        return _probe(self.ready(), {"management_connected": self.management_connected}, None)

    def _full_checks(self) -> tuple[dict[str, bool], dict[str, ClientHealth]]:
        clients = self.clients()
        checks = {
            "management_connected": self.management_connected,
            "initial_sync_complete": self.initial_sync_complete,
            "all_clients_healthy": all(c.healthy for c in clients.values()),
        }
        return checks, clients

    def startup_probe(self) -> Probe:
        checks, clients = self._full_checks()
        return _probe(all(checks.values()), checks, clients)

    def full_probe(self) -> Probe:
        checks, clients = self._full_checks()
        return _probe(self.ready(), checks, clients)


def _probe(ok: bool, checks: dict[str, bool] | None,
           clients: dict[str, ClientHealth] | None) -> Probe:
    body: dict[str, Any] = {"status": "ok" if ok else "fail"}
    if checks:
        body["checks"] = checks
    if clients:
        body["clients"] = {k: v.as_json() for k, v in sorted(clients.items())}
    return Probe(200 if ok else 503, body)


def _only_get(request) -> bytes | None:
    """A 405 body for anything but GET/HEAD (None: go ahead)."""
    if request.method in (b"GET", b"HEAD"):
        return None
    request.setHeader(b"allow", b"GET, HEAD")
    return errorPage(405, "Method Not Allowed", "Use GET.").render(request)


class ProbeResource(Resource):
    isLeaf = True

    def __init__(self, probe: Callable[[], Probe]) -> None:
        super().__init__()
        self._probe = probe

    def render(self, request) -> bytes:
        refused = _only_get(request)
        return refused if refused is not None else super().render(request)

    def render_GET(self, request) -> bytes:
        result = self._probe()
        request.setResponseCode(result.code)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        return json.dumps(result.body).encode("utf-8") + b"\n"


class _Healthz(ProbeResource):
    """``/healthz`` itself plus its three probe children."""

    isLeaf = False

    def getChild(self, path: bytes, request) -> Resource:
        return notFound()

    def __init__(self, state: HealthState) -> None:
        super().__init__(state.full_probe)
        self.putChild(b"live", ProbeResource(state.live_probe))
        self.putChild(b"ready", ProbeResource(state.ready_probe))
        self.putChild(b"startup", ProbeResource(state.startup_probe))


class _Root(Resource):
    def getChild(self, path: bytes, request) -> Resource:
        return notFound()

    def render(self, request) -> bytes:
        return notFound().render(request)


def health_root(state: HealthState, registry: CollectorRegistry | None = None) -> Resource:
    """The admin resource tree: ``/healthz[/live|/ready|/startup]`` and ``/metrics``."""
    root = _Root()
    root.putChild(b"healthz", _Healthz(state))
    if registry is not None:
        root.putChild(b"metrics", MetricsResource(registry))
    return root


class _AdminSite(Site):
    """No per-request access lines for probes and scrapes."""

    displayTracebacks = False

    def log(self, request) -> None:
        pass


def health_site(state: HealthState, registry: CollectorRegistry | None = None, *,
                reactor: Any = None, timeout: float = ADMIN_TIMEOUT) -> Site:
    site = _AdminSite(health_root(state, registry), timeout=timeout,
                      **({"reactor": reactor} if reactor is not None else {}))
    site.noisy = False
    return site


class HealthService(StreamServerEndpointService):
    """The health/metrics listener; once bound it says so in one info line
    naming what it serves and its address (Twisted's own line only names the
    site class and the port)."""

    def __init__(self, endpoint: Any, factory: Any, *, metrics: bool) -> None:
        super().__init__(endpoint, factory)
        self.paths = "/healthz and /metrics" if metrics else "/healthz"
        #: the bound port, once listening
        self.port: Any = None

    #: a bind failure at start is raised (not logged as "Unhandled Error" while
    #: the gateway runs on without its probes): one line under twistd
    _raiseSynchronously = True

    def privilegedStartService(self) -> None:
        from twisted.internet.error import CannotListenError

        from nbgateway.startup import listen_failed

        try:
            super().privilegedStartService()
        except CannotListenError as exc:
            raise listen_failed(exc, "the health and metrics listener",
                                "--health-addr / NB_PROXY_HEALTH_ADDRESS") from None
        if self._waitingForPort is not None:
            self._waitingForPort.addCallback(self._announce)

    def _announce(self, port: Any) -> Any:
        self.port = port
        host = port.getHost()
        log.info("health and metrics listener ({paths}) on {host}:{port}",
                 paths=self.paths, host=getattr(host, "host", host),
                 port=getattr(host, "port", ""))
        return port


def health_service(reactor: Any, endpoint: str, state: HealthState,
                   registry: CollectorRegistry | None = None) -> StreamServerEndpointService:
    """A service listening on ``endpoint`` (e.g. ``Config.health_addr.endpoint()``);
    it binds in ``privilegedStartService`` and announces its address."""
    return HealthService(serverFromString(reactor, endpoint),
                         health_site(state, registry, reactor=reactor),
                         metrics=registry is not None)
