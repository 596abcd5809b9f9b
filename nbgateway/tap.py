"""``twistd nbgateway``: options and ``makeService`` (builds objects only).

``makeService`` turns the validated :class:`~nbgateway.config.Config` into a
:class:`~nbgateway.service.GatewayService`.  No socket is bound, no thread or
gRPC channel started here: that happens when twistd starts the service, after
it daemonized (nothing live before fork).
"""

from __future__ import annotations

import functools
import gc
import json
import os
from collections.abc import Callable, Mapping
from typing import Any

from twisted.application.service import Service

from nbgateway.heapfreeze import HEAP_FREEZE_AFTER, HEAP_FREEZE_SLOW, HeapFreezer
from nbgateway.options import Options

__all__ = ["HEAP_FREEZE_AFTER", "HeapFreezer", "Options", "build_gateway", "makeService"]


#: glibc's mallopt parameter for the number of malloc arenas
M_ARENA_MAX = -8
#: arenas for the gateway process: the reactor thread plus gRPC's few threads
#: (glibc's default is 8 per core; each thread's arena keeps its own slack)
MALLOC_ARENAS = 2


#: glibc's mallopt parameter for the mmap threshold
M_MMAP_THRESHOLD = -3
#: allocations from this size up get a mapping of their own, returned to the
#: system when freed (glibc's initial value, kept fixed: see
#: :func:`fix_mmap_threshold`)
MALLOC_MMAP_THRESHOLD = 128 * 1024


def _mallopt(libc: Any) -> Any:
    if libc is not None:
        return libc.mallopt
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        return ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return None  # not glibc (musl has no mallopt)


def limit_malloc_arenas(environ: Mapping[str, str] = os.environ,
                        arenas: int = MALLOC_ARENAS, libc: Any = None) -> bool:
    """``mallopt(M_ARENA_MAX, arenas)`` early in start-up, before gRPC starts
    its threads; an operator's ``MALLOC_ARENA_MAX`` wins (glibc read it at
    exec).  False when it was not applied (not glibc, or the variable set)."""
    if "MALLOC_ARENA_MAX" in environ:
        return False
    mallopt = _mallopt(libc)
    return mallopt is not None and bool(mallopt(M_ARENA_MAX, arenas))


def fix_mmap_threshold(environ: Mapping[str, str] = os.environ,
                       threshold: int = MALLOC_MMAP_THRESHOLD, libc: Any = None) -> bool:
    """``mallopt(M_MMAP_THRESHOLD, threshold)`` at start-up: a fixed mmap
    threshold (issue 18, RSS per storm peer).

    glibc's threshold is dynamic by default: freeing a mapped chunk raises it
    to that chunk's size (up to 32 MiB), so after the first network map of a
    peer storm every later map-sized buffer (the sealed and opened
    ``SyncResponse``, gRPC's receive slices, protobuf arenas; about 0.6 KiB
    per roster peer each) is carved from the arenas, where the small
    long-lived allocations made meanwhile pin it: the freed space stays
    fragmented and resident after ``malloc_trim``.  Fixed, such buffers get
    their own mapping and leave nothing behind (a 2,000-peer storm:
    ~1.0 KiB less RSS per peer after the trim).  Fixing it also keeps the
    trim threshold at its default.  An operator's ``MALLOC_MMAP_THRESHOLD_``
    wins; ``NBGW_MALLOC_MMAP_FIXED=0`` keeps glibc's dynamic threshold.
    False when not applied."""
    if "MALLOC_MMAP_THRESHOLD_" in environ or environ.get("NBGW_MALLOC_MMAP_FIXED") == "0":
        return False
    mallopt = _mallopt(libc)
    return mallopt is not None and bool(mallopt(M_MMAP_THRESHOLD, threshold))


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


def _pymalloc_stats() -> dict[str, int]:
    """pymalloc's arena figures from ``sys._debugmallocstats()`` (it prints
    to the C stderr, captured through a temporary file on fd 2)."""
    import sys
    import tempfile

    with tempfile.TemporaryFile() as tmp:
        sys.stderr.flush()
        saved = os.dup(2)
        try:
            os.dup2(tmp.fileno(), 2)
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        tmp.seek(0)
        text = tmp.read().decode("ascii", "replace")
    out: dict[str, int] = {}
    names = {"# arenas allocated current": "arenas", "# bytes in allocated blocks": "blocks",
             "# bytes in available blocks": "available", "Total": "pymalloc_total"}
    for line in text.splitlines():
        key, _, value = line.partition("=")
        key = key.strip()
        if key in names and names[key] not in out:  # the first Total: the arenas
            out[names[key]] = int(value.strip().replace(",", ""))
    return out


def _rss_bytes() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def malloc_probe_on_signal(environ: Mapping[str, str] = os.environ) -> str | None:
    """Diagnostics without tracemalloc (bench/peer_memory.py ``--probe``):
    with ``NBGW_MALLOC_PROBE=PATH`` SIGUSR2 writes, after a full collection,
    glibc's ``mallinfo2`` (:func:`malloc_stats`), pymalloc's arena figures,
    the live and frozen object counts, the RSS, and the RSS after a
    ``malloc_trim(0)`` made then (``rss_trimmed``: slack a trim gives back
    vs. fragmentation) to PATH (JSON) and glibc's per-arena ``malloc_info``
    XML to PATH.xml; with ``NBGW_MALLOC_PROBE_TRACE=1`` also
    tracemalloc's traced total (``traced``) and a snapshot to PATH.trace
    (tracing from now on: that costs memory); with
    ``NBGW_MALLOC_PROBE_UNFREEZE=1`` it then unfreezes the frozen heap and
    collects (``unfrozen_garbage``: objects only cycles kept alive,
    ``unfrozen_freed``: the malloc bytes that freed; see heapfreeze.py).
    Without the trace it costs nothing until signalled; a debugging switch,
    not for production."""
    path = environ.get("NBGW_MALLOC_PROBE")
    if not path:
        return None
    import signal
    import sys
    import tracemalloc

    if environ.get("NBGW_MALLOC_PROBE_TRACE") == "1":
        tracemalloc.start(1)
    unfreeze = environ.get("NBGW_MALLOC_PROBE_UNFREEZE") == "1"

    def dump(_signum: int, _frame: Any) -> None:
        gc.collect()
        stats: dict[str, Any] = {**malloc_stats(), **_pymalloc_stats(),
                                 "allocated_blocks": sys.getallocatedblocks(),
                                 "objects": len(gc.get_objects()),
                                 "frozen": gc.get_freeze_count()}
        if tracemalloc.is_tracing():
            stats["traced"] = tracemalloc.get_traced_memory()[0]
            tracemalloc.take_snapshot().dump(path + ".trace")
        if unfreeze:  # what the frozen heap holds that only cycles keep alive
            in_use = malloc_stats().get("in_use", 0)
            gc.unfreeze()
            stats["unfrozen_garbage"] = gc.collect()
            stats["unfrozen_freed"] = in_use - malloc_stats().get("in_use", 0)
        libc = _libc()
        stats["rss"] = _rss_bytes()
        if libc is not None and hasattr(libc, "malloc_trim"):
            libc.malloc_trim(0)  # what a trim now would give back: slack vs fragmentation
            stats["rss_trimmed"] = _rss_bytes()
        if libc is not None and hasattr(libc, "malloc_info"):
            import ctypes

            libc.fopen.restype = ctypes.c_void_p
            libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
            libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
            libc.fclose.argtypes = [ctypes.c_void_p]
            fp = libc.fopen((path + ".xml").encode(), b"w")
            if fp:
                libc.malloc_info(0, fp)
                libc.fclose(fp)
        with open(path + ".tmp", "w") as f:
            json.dump(stats, f)
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
        l4_public_ports=config.l4_public_ports,
        l4_tls_port=config.addr.port if config.addr is not None else 0,
        allow_insecure=config.allow_insecure,
        batch_watchdog=config.mapping_batch_watchdog,
    )
    if config.embedded:
        from nbgateway.embedded import EmbeddedManagement

        embedded = EmbeddedManagement(config, client, reactor=reactor, api_addr=api_addr,
                                      grpc_addr=grpc_addr)
    return GatewayService(config, reactor=reactor, management=client, embedded=embedded,
                          peer_channel_factory=_peer_channel_factory(config, mgmt_url, reactor,
                                                                      client))


def _peer_channel_factory(config: Any, mgmt_url: str, reactor: Any, client: Any = None) -> Any:
    """Per-account peer-channel sessions: log in with the account's WireGuard
    key and hand every network map, converted, to the account runtime. With
    ``client`` (the ProxyService client) their Syncs share one NbgwSyncMany
    stream carrying its token (mgmt/peermux.py)."""
    from nbgateway import __version__
    from nbgateway.mgmt.netmap import convert
    from nbgateway.mgmt.peerclient import PeerChannelClient

    # one metadata callable for every account, a partial (no closure) per account
    metadata = client.auth_metadata if client is not None else None

    def _apply_converted(on_network: Any, nm: Any) -> Any:
        return on_network(convert(nm))

    def factory(account_id: str, private_key: bytes, on_network: Any) -> Any:
        return PeerChannelClient(
            reactor, mgmt_url, private_key, functools.partial(_apply_converted, on_network),
            hostname=f"nbgateway-{account_id}", version=__version__,
            allow_insecure=config.allow_insecure, mux_metadata=metadata)

    return factory


def makeService(options: Options) -> Any:
    """twistd only (a library host keeps its own logging and signals): the
    log level of every log destination (twistd's ``-l FILE`` / stdout / syslog
    text log, ``--log-format json``, and nbgateway's observer factories
    ``--logger=nbgateway.observe.logging.jsonObserverFactory`` or
    ``textObserverFactory``) and SIGHUP -> certificate reload."""
    from nbgateway.dial.fdbudget import raise_descriptor_limit
    from nbgateway.observe.logging import PROCESS_LEVEL, filter_twistd_logs, log_level

    config = options.config
    # before the gateway sizes each account's share of the descriptors
    nofile = raise_descriptor_limit()
    limit_malloc_arenas()  # before any gRPC thread: less per-thread allocator slack
    fix_mmap_threshold()  # map-sized buffers do not fragment the arenas
    heap_snapshots_on_signal()
    malloc_probe_on_signal()
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
    if nofile[1] != nofile[0]:
        from twisted.logger import Logger

        Logger(namespace="nbgateway.tap").info(
            "open-file limit raised from {before} to {after}", before=nofile[0], after=nofile[1])
    return gateway

