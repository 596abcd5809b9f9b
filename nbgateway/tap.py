"""``twistd nbgateway``: options and ``makeService`` (builds objects only).

``makeService`` turns the validated :class:`~nbgateway.config.Config` into a
:class:`~nbgateway.service.GatewayService`.  No socket is bound, no thread or
gRPC channel started here: that happens when twistd starts the service, after
it daemonized (nothing live before fork).
"""

from __future__ import annotations

import gc
import json
import os
from collections.abc import Callable, Mapping
from typing import Any

from twisted.application.service import Service

from nbgateway.options import Options

__all__ = ["HeapFreezer", "Options", "build_gateway", "makeService"]

#: seconds after start at which the long-lived heap is frozen (accounts are
#: normally up by the first; the second catches a slow first sync)
HEAP_FREEZE_AFTER = (10.0, 60.0)
#: after the first freeze, a full collection at least this long (s) freezes its
#: survivors, at most once per HEAP_FREEZE_MIN_INTERVAL s
HEAP_FREEZE_SLOW = 0.05
HEAP_FREEZE_MIN_INTERVAL = 30.0


class HeapFreezer(Service):
    """Moves the objects alive after start-up out of the cyclic garbage
    collector's view: ``gc.freeze()`` at each of :data:`HEAP_FREEZE_AFTER`,
    the first one preceded by a ``gc.collect()`` (a full collection is itself
    such a pause, so only the first, normally before any traffic, pays it).

    Why: a full (generation 2) collection walks every tracked object; with the
    gateway's start-up heap (modules, the management client, each account's
    device and stack: ~70,000 objects) one took 60-200 ms on the shared 2-core
    box, every few seconds under request load.  The reactor stalls that long,
    a peer's kernel sends tail-loss probes after ~200 ms without an ACK, and
    the p99 latency was that pause (issue 20: 20-50 client retransmissions in
    5 s, p99 150-430 ms, no drops anywhere).  Frozen objects are never
    collected, so a cycle among them that dies later (or cyclic garbage
    present at the later freeze) is leaked: bounded by the heap of those two
    moments.  After the first freeze, a full collection taking at least
    :data:`HEAP_FREEZE_SLOW` freezes its survivors too (at most once per
    :data:`HEAP_FREEZE_MIN_INTERVAL`; issue 18: a heap grown after the fixed
    freezes, e.g. 1,000 accounts still coming up at 60 s, made every later
    full collection a long pause).  twistd only (``makeService``); a library
    host keeps its own GC policy."""

    def __init__(self, reactor: Any, delays: tuple[float, ...] = HEAP_FREEZE_AFTER,
                 collect: Callable[[], Any] = gc.collect,
                 freeze: Callable[[], Any] = gc.freeze, *,
                 slow: float = HEAP_FREEZE_SLOW, min_interval: float = HEAP_FREEZE_MIN_INTERVAL,
                 callbacks: list[Any] | None = None,
                 timer: Callable[[], float] | None = None) -> None:
        import time

        self.reactor = reactor
        self.delays = delays
        self._collect = collect
        self._freeze = freeze
        self.slow = slow
        self.min_interval = min_interval
        self._callbacks = gc.callbacks if callbacks is None else callbacks
        self._timer = timer or time.perf_counter
        self._calls: list[Any] = []
        self._gc_started: float | None = None
        self._scheduled = False
        self._last_freeze: float | None = None
        self.freezes = 0
        #: full collections seen since start and the slowest (s)
        self.full_collections = 0
        self.slowest = 0.0

    def startService(self) -> None:
        super().startService()
        self._calls = [self.reactor.callLater(d, self.freeze_now) for d in self.delays]
        self._callbacks.append(self._on_gc)

    def stopService(self) -> Any:
        for call in self._calls:
            if call.active():
                call.cancel()
        self._calls = []
        if self._on_gc in self._callbacks:
            self._callbacks.remove(self._on_gc)
        return super().stopService()

    def freeze_now(self) -> None:
        if not self.freezes:
            self._collect()
        self._freeze()
        self.freezes += 1
        self._last_freeze = self._timer()

    def _freeze_survivors(self) -> None:
        self._scheduled = False
        self._freeze()  # the collection that triggered this just ran: no collect
        self.freezes += 1
        self._last_freeze = self._timer()

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        """``gc.callbacks`` hook (any thread): a full collection of at least
        ``slow`` s freezes its survivors (once per ``min_interval``), so a heap
        that grew after the fixed freezes (accounts added later, a slow first
        sync) is not walked again by every later full collection (issue 18:
        the mapping-change tail)."""
        if info.get("generation") != 2:
            return
        if phase == "start":
            self._gc_started = self._timer()
            return
        if self._gc_started is None:
            return
        now = self._timer()
        took, self._gc_started = now - self._gc_started, None
        self.full_collections += 1
        self.slowest = max(self.slowest, took)
        if took < self.slow or self._scheduled or not self.freezes:
            return  # before the first fixed freeze: that one collects and freezes anyway
        if self._last_freeze is not None and now - self._last_freeze < self.min_interval:
            return
        self._scheduled = True
        self.reactor.callFromThread(self._freeze_survivors)


#: glibc's mallopt parameter for the number of malloc arenas
M_ARENA_MAX = -8
#: arenas for the gateway process: the reactor thread plus gRPC's few threads
#: (glibc's default is 8 per core; each thread's arena keeps its own slack)
MALLOC_ARENAS = 2


def limit_malloc_arenas(environ: Mapping[str, str] = os.environ,
                        arenas: int = MALLOC_ARENAS, libc: Any = None) -> bool:
    """``mallopt(M_ARENA_MAX, arenas)`` early in start-up, before gRPC starts
    its threads; an operator's ``MALLOC_ARENA_MAX`` wins (glibc read it at
    exec).  False when it was not applied (not glibc, or the variable set)."""
    if "MALLOC_ARENA_MAX" in environ:
        return False
    if libc is None:
        import ctypes
        import ctypes.util

        name = ctypes.util.find_library("c")
        if not name:
            return False
        try:
            libc = ctypes.CDLL(name)
            mallopt = libc.mallopt
        except (OSError, AttributeError):
            return False  # not glibc (musl has no mallopt)
    else:
        mallopt = libc.mallopt
    return bool(mallopt(M_ARENA_MAX, arenas))


def _libc() -> Any:
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


#: seconds between two malloc_trim(0) calls (:class:`MallocTrimmer`)
MALLOC_TRIM_INTERVAL = 60.0


class MallocTrimmer(Service):
    """Gives the allocator's free pages back to the system: glibc's
    ``malloc_trim(0)`` every :data:`MALLOC_TRIM_INTERVAL` seconds (the first
    one one interval after start, when the accounts are normally up).

    Why: bringing accounts up allocates and frees a lot (every network map
    and mapping batch is parsed, converted and dropped; status reports,
    gRPC buffers), and glibc keeps the freed chunks inside its heap and
    arenas; only the top of the main heap is trimmed by itself.
    ``malloc_trim(0)`` also releases whole free pages in the middle of every
    arena (MADV_DONTNEED).  It walks the free chunks (see :attr:`last_seconds`
    for its cost); ``NBGW_MALLOC_TRIM=0`` turns it off.  twistd only; no-op
    where there is no ``malloc_trim`` (not glibc)."""

    def __init__(self, reactor: Any, interval: float = MALLOC_TRIM_INTERVAL,
                 trim: Callable[[int], int] | None = None,
                 timer: Callable[[], float] | None = None) -> None:
        import time

        self.reactor = reactor
        self.interval = interval
        if trim is None:
            libc = _libc()
            trim = getattr(libc, "malloc_trim", None) if libc is not None else None
        self._trim = trim
        self._timer = timer or time.perf_counter
        self._call: Any = None
        self.trims = 0
        self.released = 0  # trims that gave memory back
        self.last_seconds = 0.0

    def startService(self) -> None:
        super().startService()
        if self._trim is not None:
            self._call = self.reactor.callLater(self.interval, self._tick)

    def stopService(self) -> Any:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        return super().stopService()

    def _tick(self) -> None:
        self._call = self.reactor.callLater(self.interval, self._tick)
        self.trim_now()

    def trim_now(self) -> bool:
        if self._trim is None:
            return False
        t0 = self._timer()
        released = bool(self._trim(0))
        self.last_seconds = self._timer() - t0
        self.trims += 1
        self.released += released
        return released


def malloc_stats() -> dict[str, int]:
    """glibc's ``mallinfo2()`` in bytes: ``in_use`` (malloc'd chunks, mmapped
    ones included), ``free`` (held by the allocator, not returned to the
    system: arena slack), ``arena`` (sbrk heap + arenas) and ``mmapped``;
    empty when not glibc >= 2.33."""
    import ctypes
    import ctypes.util

    class _MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
            "uordblks", "fordblks", "keepcost")]

    try:
        fn = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallinfo2
    except (OSError, AttributeError):
        return {}
    fn.restype = _MallInfo2
    m = fn()
    return {"in_use": m.uordblks + m.hblkhd, "free": m.fordblks, "arena": m.arena,
            "mmapped": m.hblkhd}


def heap_snapshots_on_signal(environ: Mapping[str, str] = os.environ) -> str | None:
    """Diagnostics: with ``NBGW_HEAP_SNAPSHOT=PATH`` tracemalloc traces every
    allocation from now on and SIGUSR2 writes a snapshot (after a full
    collection) to PATH, and glibc's allocator figures (:func:`malloc_stats`)
    to PATH.malloc (bench/scale_heap.py diffs two runs by file and line).
    Costs memory and CPU: never set it in production."""
    path = environ.get("NBGW_HEAP_SNAPSHOT")
    if not path:
        return None
    import signal
    import tracemalloc

    tracemalloc.start(1)

    def dump(_signum: int, _frame: Any) -> None:
        gc.collect()
        with open(path + ".malloc.tmp", "w") as f:
            json.dump({**malloc_stats(), "tracemalloc_overhead":
                       tracemalloc.get_tracemalloc_memory()}, f)
        os.replace(path + ".malloc.tmp", path + ".malloc")
        tracemalloc.take_snapshot().dump(path + ".tmp")
        os.replace(path + ".tmp", path)

    signal.signal(signal.SIGUSR2, dump)
    return path


def build_gateway(config: Any, reactor: Any = None, environ: Any = None) -> Any:
    """The library entry point: a GatewayService for ``config`` (attach it to
    your own Application/MultiService; it touches no global logging)."""
    from nbgateway import __version__
    from nbgateway.mgmt.client import GrpcManagementClient
    from nbgateway.service import GatewayService

    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    embedded = None
    mgmt_url, token = config.mgmt, config.token
    if config.embedded:
        from nbgateway.embedded import embedded_addresses, grpc_url

        api_addr, grpc_addr = embedded_addresses(environ)
        mgmt_url, token = grpc_url(grpc_addr), ""
    client = GrpcManagementClient(
        reactor, mgmt_url, token,
        address=config.domain,
        version=__version__,
        private=config.private,
        supports_custom_ports=config.supports_custom_ports,
        require_subdomain=config.require_subdomain,
        allow_insecure=config.allow_insecure,
        batch_watchdog=config.mapping_batch_watchdog,
    )
    if config.embedded:
        from nbgateway.embedded import EmbeddedManagement

        embedded = EmbeddedManagement(config, client, reactor=reactor, api_addr=api_addr,
                                      grpc_addr=grpc_addr)
    return GatewayService(config, reactor=reactor, management=client, embedded=embedded,
                          peer_channel_factory=_peer_channel_factory(config, mgmt_url, reactor))


def _peer_channel_factory(config: Any, mgmt_url: str, reactor: Any) -> Any:
    """Per-account peer-channel sessions: log in with the account's WireGuard
    key and hand every network map, converted, to the account runtime."""
    from nbgateway import __version__
    from nbgateway.mgmt.netmap import convert
    from nbgateway.mgmt.peerclient import PeerChannelClient

    def factory(account_id: str, private_key: bytes, on_network: Any) -> Any:
        return PeerChannelClient(
            reactor, mgmt_url, private_key, lambda nm: on_network(convert(nm)),
            hostname=f"nbgateway-{account_id}", version=__version__,
            allow_insecure=config.allow_insecure)

    return factory


def makeService(options: Options) -> Any:
    """twistd only (a library host keeps its own logging and signals): the
    log level of every log destination (twistd's ``-l FILE`` / stdout / syslog
    text log, ``--log-format json``, and nbgateway's observer factories
    ``--logger=nbgateway.observe.logging.jsonObserverFactory`` or
    ``textObserverFactory``) and SIGHUP -> certificate reload."""
    from nbgateway.observe.logging import PROCESS_LEVEL, filter_twistd_logs, log_level

    config = options.config
    limit_malloc_arenas()  # before any gRPC thread: less per-thread allocator slack
    heap_snapshots_on_signal()
    PROCESS_LEVEL.set(log_level(config.effective_log_level))
    gateway = build_gateway(config)
    gateway.reload_on_sighup = True  # installed at start, restored at stop
    # issue 20: GC pauses; NBGW_HEAP_FREEZE_ADAPTIVE=0: fixed freezes only (bench A/B)
    adaptive = os.environ.get("NBGW_HEAP_FREEZE_ADAPTIVE", "1") != "0"
    HeapFreezer(gateway.reactor, slow=HEAP_FREEZE_SLOW if adaptive else float("inf")
                ).setServiceParent(gateway)
    if os.environ.get("NBGW_MALLOC_TRIM", "1") != "0":  # issue 18: allocator slack
        MallocTrimmer(gateway.reactor).setServiceParent(gateway)
    filter_twistd_logs(gateway, config.log_format, getattr(options, "parent", None))
    return gateway

