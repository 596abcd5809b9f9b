"""Prometheus metrics on a private registry, read from live objects at scrape time.

Hot paths only increment plain counters they already own
(``WireGuardDevice.counters``, ``Peer.rx_bytes``, ``Stack.counters``,
``TunnelValidationCache.stats``, ``AccessLogger.stats``, and the two small
recorders defined here, :class:`RequestStats` and :class:`RpcStats`).  A custom
collector turns them into metric families when ``/metrics`` is scraped; the
scrape runs in the reactor thread (:class:`MetricsResource`), so it never races
the objects it reads.

:class:`GatewayMetrics` is the registry plus the set of sources the
composition root attaches (``add_account`` when an account runtime starts,
``remove_account`` when it is torn down; removal folds the account's counters
into retired totals so every ``*_total`` stays monotonic).  The registry is a
private :class:`~prometheus_client.CollectorRegistry`, so library use inside a
host process never collides with the host's metrics.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from twisted.internet.defer import Deferred
from twisted.web.resource import Resource
from zope.interface import directlyProvides, providedBy

PREFIX = "nbgateway_"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

#: WireGuard handshake outcome counters -> ``result`` label.
_WG_HANDSHAKE_RESULTS = {
    "handshake_completed": "completed",
    "handshake_gave_up": "gave_up",
    "handshake_no_reply": "no_reply",
}
#: WireGuard handshake message counters -> (message, direction).
_WG_HANDSHAKE_MESSAGES = {
    "handshake_initiation_rx": ("initiation", "rx"),
    "handshake_initiation_tx": ("initiation", "tx"),
    "handshake_response_rx": ("response", "rx"),
    "handshake_response_tx": ("response", "tx"),
    "cookie_reply_rx": ("cookie_reply", "rx"),
    "cookie_reply_tx": ("cookie_reply", "tx"),
}
_RPC_METHODS = (
    "validate_tunnel_peer", "validate_session", "authenticate", "create_proxy_peer",
    "send_status_update", "send_access_log", "get_oidc_url",
)


class _Histogram:
    """Cumulative-ready bucket counts for a fixed bucket list (cheap to update)."""

    __slots__ = ("buckets", "counts", "total")

    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(self.buckets, seconds)] += 1
        self.total += seconds

    def cumulative(self) -> list[tuple[str, float]]:
        out, running = [], 0
        for bound, count in zip((*self.buckets, float("inf")), self.counts, strict=True):
            running += count
            out.append(("+Inf" if bound == float("inf") else repr(bound), running))
        return out


class RequestStats:
    """HTTP request recorder: ``active += 1`` (or ``started()``) when a request
    starts, then one ``finished(status, seconds)``.

    The hot path counts in plain ints: a dict of status -> count and the
    duration buckets, updated inline by :meth:`finished` (one call per
    request; a ``Counter`` item increment and the histogram's ``observe``
    call cost more than the rest of the recording).  ``by_status`` folds the
    status counts into a :class:`~collections.Counter` when it is read (the
    scrape), the same figures as counting into it directly."""

    __slots__ = ("_codes", "active", "duration")

    def __init__(self) -> None:
        self._codes: dict[int, int] = {}
        self.active = 0
        self.duration = _Histogram()

    @property
    def by_status(self) -> Counter[int]:
        """Responses per status code, folded from the plain counts on read."""
        return Counter(self._codes)

    def started(self) -> None:
        self.active += 1

    def finished(self, status: int, seconds: float) -> None:
        self.active -= 1
        codes = self._codes
        codes[status] = codes.get(status, 0) + 1
        hist = self.duration  # hist.observe(seconds), inline
        hist.counts[bisect_left(hist.buckets, seconds)] += 1
        hist.total += seconds

    def record(self, status: int, seconds: float) -> None:
        codes = self._codes
        codes[status] = codes.get(status, 0) + 1
        self.duration.observe(seconds)


class RpcStats:
    """Management RPC latency and errors per method."""

    def __init__(self) -> None:
        self.latency: dict[str, _Histogram] = {}
        self.errors: Counter[str] = Counter()

    def record(self, method: str, seconds: float, ok: bool) -> None:
        hist = self.latency.get(method)
        if hist is None:
            hist = self.latency[method] = _Histogram()
        hist.observe(seconds)
        if not ok:
            self.errors[method] += 1

    def track(self, method: str, d: Deferred, now: Callable[[], float]) -> Deferred:
        """Record ``d``'s outcome and latency; the result passes through unchanged."""
        start = now()

        def done(result: Any) -> Any:
            from twisted.python.failure import Failure

            self.record(method, max(0.0, now() - start), not isinstance(result, Failure))
            return result

        return d.addBoth(done)


class InstrumentedClient:
    """Wraps a management client so each RPC method records into an :class:`RpcStats`.

    Provides the same zope interfaces as the wrapped client; every other
    attribute is passed through.
    """

    def __init__(self, client: Any, stats: RpcStats,
                 now: Callable[[], float] = time.monotonic) -> None:
        self._client = client
        self._stats = stats
        self._now = now
        directlyProvides(self, *providedBy(client))

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if name not in _RPC_METHODS or not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            start = self._now()
            try:
                result = attr(*args, **kwargs)
            except Exception:
                self._stats.record(name, max(0.0, self._now() - start), False)
                raise
            if isinstance(result, Deferred):
                return self._stats.track(name, result, self._now)
            self._stats.record(name, max(0.0, self._now() - start), True)
            return result

        return call


@dataclass(slots=True)
class _AccountSources:
    devices: list[Any] = field(default_factory=list)
    stacks: list[Any] = field(default_factory=list)


class GatewayMetrics:
    """The private registry and the live objects it reads."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.requests = RequestStats()
        self.rpc = RpcStats()
        self.tunnel_cache: Any = None
        self.access_log: Any = None
        self.health: Any = None
        #: the DeviceMux in front of the per-account devices (its own drop counters)
        self.mux: Any = None
        self._accounts: dict[str, _AccountSources] = {}
        self._retired_wg: Counter[str] = Counter()
        self._retired_ns: Counter[str] = Counter()
        self._bytes = {"rx": 0, "tx": 0}
        self._peer_seen: dict[int, tuple[Any, int, int]] = {}
        self.registry.register(_GatewayCollector(self))

    # -- sources --------------------------------------------------------------------------

    def add_account(self, account_id: str, *, devices: Iterable[Any] = (),
                    stacks: Iterable[Any] = ()) -> None:
        src = self._accounts.setdefault(account_id, _AccountSources())
        src.devices.extend(d for d in devices if d not in src.devices)
        src.stacks.extend(s for s in stacks if s not in src.stacks)

    def remove_account(self, account_id: str) -> None:
        """Forget an account, keeping its counts in the retired totals."""
        src = self._accounts.pop(account_id, None)
        if src is None:
            return
        self._accumulate_bytes(src.devices, None)
        for device in src.devices:
            self._retired_wg.update(device.counters)
        for stack in src.stacks:
            self._retired_ns.update(stack.counters)

    @property
    def accounts(self) -> int:
        return len(self._accounts)

    def _devices(self) -> Iterator[Any]:
        for src in self._accounts.values():
            yield from src.devices

    def _stacks(self) -> Iterator[Any]:
        for src in self._accounts.values():
            yield from src.stacks

    def _accumulate_bytes(self, devices: Iterable[Any],
                          fresh: dict[int, tuple[Any, int, int]] | None) -> None:
        seen = self._peer_seen
        for device in devices:
            for peer in list(device.peers.values()):
                rx, tx = peer.rx_bytes, peer.tx_bytes
                prev = seen.pop(id(peer), None)
                if prev is not None and prev[0] is peer:
                    self._bytes["rx"] += rx - prev[1] if rx >= prev[1] else rx
                    self._bytes["tx"] += tx - prev[2] if tx >= prev[2] else tx
                else:
                    self._bytes["rx"] += rx
                    self._bytes["tx"] += tx
                if fresh is not None and (rx or tx):
                    # a peer that never moved a byte needs no entry: unseen,
                    # its next scrape adds its whole count, as from (0, 0)
                    fresh[id(peer)] = (peer, rx, tx)

    def wireguard_bytes(self) -> dict[str, int]:
        """Monotonic rx/tx byte totals over every peer ever attached."""
        fresh: dict[int, tuple[Any, int, int]] = {}
        self._accumulate_bytes(list(self._devices()), fresh)
        self._peer_seen = fresh  # peers gone since the last scrape are forgotten
        return dict(self._bytes)

    def wireguard_counters(self) -> Counter[str]:
        total = Counter(self._retired_wg)
        for device in self._devices():
            total.update(device.counters)
        return total

    def netstack_counters(self) -> Counter[str]:
        total = Counter(self._retired_ns)
        for stack in self._stacks():
            total.update(stack.counters)
        return total


def _counter(name: str, doc: str, label: str,
             samples: Iterable[tuple[str, float]]) -> CounterMetricFamily:
    """The counter family ``PREFIX + name`` with one sample per (label value,
    value), in the order given."""
    fam = CounterMetricFamily(PREFIX + name, doc, labels=[label])
    for label_value, value in samples:
        fam.add_metric([label_value], value)
    return fam


def _by_prefix(counts: Counter[str], prefix: str,
               renamed: str = "") -> Iterator[tuple[str, int]]:
    """``(renamed + rest, count)`` for every key ``prefix + rest`` of ``counts``,
    in key order (the per-reason drop counters)."""
    cut = len(prefix)
    for key in sorted(counts):
        if key.startswith(prefix):
            yield renamed + key[cut:], counts[key]


class _GatewayCollector:
    def __init__(self, metrics: GatewayMetrics) -> None:
        self.m = metrics

    def collect(self) -> Iterator[Metric]:
        m = self.m
        yield from self._wireguard(m)
        yield from self._netstack(m)
        yield from self._http(m.requests)
        if m.tunnel_cache is not None:
            yield from self._tunnel_cache(m.tunnel_cache)
        yield from self._rpc(m.rpc)
        if m.access_log is not None:
            stats = m.access_log.stats
            yield _counter("access_log_entries", "Access-log entries by outcome (dropped = "
                           "queue full or unsent at shutdown)", "result",
                           ((result, getattr(stats, result, 0))
                            for result in ("queued", "sent", "failed", "dropped")))
        if m.health is not None:
            h = m.health
            for name, value, doc in (
                ("management_connected", h.management_connected,
                 "1 while the management mapping stream is connected"),
                ("initial_sync_complete", h.initial_sync_complete,
                 "1 once the first complete mapping snapshot was applied"),
            ):
                yield GaugeMetricFamily(PREFIX + name, doc, value=1 if value else 0)

    @staticmethod
    def _wireguard(m: GatewayMetrics) -> Iterator[Metric]:
        c = m.wireguard_counters()
        yield GaugeMetricFamily(PREFIX + "accounts", "Account runtimes running", value=m.accounts)
        yield GaugeMetricFamily(PREFIX + "wireguard_peers", "WireGuard peers configured",
                                value=sum(len(d.peers) for d in m._devices()))
        yield _counter("wireguard_handshakes", "WireGuard handshakes by outcome", "result",
                       ((result, c[key]) for key, result in _WG_HANDSHAKE_RESULTS.items()))
        msgs = CounterMetricFamily(PREFIX + "wireguard_handshake_messages",
                                   "WireGuard handshake messages",
                                   labels=["message", "direction"])
        for key, labels in _WG_HANDSHAKE_MESSAGES.items():
            msgs.add_metric(list(labels), c[key])
        yield msgs
        mux = Counter(m.mux.counters) if m.mux is not None else Counter()
        yield _counter("wireguard_drops", "WireGuard datagrams/packets dropped, by reason",
                       "reason", (*_by_prefix(c, "drop_"), *_by_prefix(mux, "mux_drop_", "mux_")))
        yield _counter("wireguard_udp_errors", "UDP socket errors on the WireGuard port", "kind",
                       ((kind, c[key] + mux[key]) for key, kind in
                        (("udp_send_error", "send_error"), ("udp_refused", "refused"))))
        yield _counter("wireguard_packets",
                       "WireGuard transport data packets (keepalives excluded)", "direction",
                       (("rx", c["data_rx"]), ("tx", c["data_tx"])))
        yield _counter("wireguard_bytes", "WireGuard transport bytes (ciphertext, incl. headers)",
                       "direction", m.wireguard_bytes().items())

    @staticmethod
    def _netstack(m: GatewayMetrics) -> Iterator[Metric]:
        c = m.netstack_counters()
        yield _counter("netstack_packets", "IP packets in the netstack", "direction",
                       (("rx", c["rx_packets"]), ("tx", c["tx_packets"])))
        yield _counter("netstack_drops", "IP packets dropped, by reason", "reason",
                       _by_prefix(c, "drop_"))
        yield CounterMetricFamily(PREFIX + "tcp_connections_accepted",
                                  "TCP connections accepted on tunnel listeners",
                                  value=c["tcp_passive_opens"])
        yield CounterMetricFamily(PREFIX + "tcp_connect_limit_refusals",
                                  "Outgoing tunnel TCP connects refused at "
                                  "--max-tunnel-connections",
                                  value=c["tcp_connect_limit"])
        yield _counter("tcp_resets", "TCP RST segments", "direction",
                       (("rx", c["tcp_rst_received"]), ("tx", c["tcp_rst_sent"])))
        yield _counter("tcp_retransmits", "TCP retransmissions", "kind",
                       (("timeout", c["tcp_rto"]), ("fast", c["tcp_fast_retransmits"])))
        active = sum(len(getattr(getattr(s, "tcp", None), "conns", ())) for s in m._stacks())
        yield GaugeMetricFamily(PREFIX + "tcp_active_connections",
                                "TCP connections in the netstack tables", value=active)

    @staticmethod
    def _http(r: RequestStats) -> Iterator[Metric]:
        by_status = r.by_status  # folded once per scrape
        yield _counter("http_requests", "HTTP requests by status code", "code",
                       ((str(code), by_status[code]) for code in sorted(by_status)))
        yield GaugeMetricFamily(PREFIX + "http_active_requests", "HTTP requests in flight",
                                value=r.active)
        hist = HistogramMetricFamily(PREFIX + "http_request_duration_seconds",
                                     "HTTP request duration")
        hist.add_metric([], r.duration.cumulative(), sum_value=r.duration.total)
        yield hist

    @staticmethod
    def _tunnel_cache(cache: Any) -> Iterator[Metric]:
        s = cache.stats
        yield _counter("tunnel_validation_lookups",
                       "ValidateTunnelPeer cache lookups: hit, miss (one RPC) or "
                       "join (waited on an in-flight RPC)", "result",
                       (("hit", s.hits), ("miss", s.misses), ("join", s.joins)))
        yield _counter("tunnel_validation_rpc_failures",
                       "ValidateTunnelPeer RPCs that did not allow: denied "
                       "(valid=false or no token) or error (incl. timeout)", "result",
                       (("denied", s.denials), ("error", s.errors)))
        yield CounterMetricFamily(PREFIX + "tunnel_validation_evictions",
                                  "Cache entries evicted on roster/service changes",
                                  value=s.evictions)
        yield GaugeMetricFamily(PREFIX + "tunnel_validation_cache_entries",
                                "Cached ValidateTunnelPeer answers", value=len(cache))

    @staticmethod
    def _rpc(r: RpcStats) -> Iterator[Metric]:
        hist = HistogramMetricFamily(PREFIX + "management_rpc_duration_seconds",
                                     "Management RPC latency", labels=["method"])
        for method in sorted(r.latency):
            h = r.latency[method]
            hist.add_metric([method], h.cumulative(), sum_value=h.total)
        yield hist
        yield _counter("management_rpc_errors", "Management RPCs that failed (error or timeout)",
                       "method", ((method, r.errors[method])
                                  for method in sorted(set(r.errors) | set(r.latency))))


class MetricsResource(Resource):
    """``/metrics`` for a registry, rendered synchronously in the reactor thread
    (prometheus_client's own Twisted resource scrapes from a thread pool)."""

    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self.registry = registry

    def render(self, request) -> bytes:
        if request.method not in (b"GET", b"HEAD"):
            request.setResponseCode(405)
            request.setHeader(b"allow", b"GET, HEAD")
            return b""
        return super().render(request)

    def render_GET(self, request) -> bytes:
        accept = request.getHeader(b"accept")
        encoder, content_type = choose_encoder(accept.decode("latin-1") if accept else "")
        body = encoder(self.registry)
        request.setHeader(b"content-type", content_type.encode("ascii"))
        request.setHeader(b"cache-control", b"no-store")
        return body
