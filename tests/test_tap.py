"""``twistd nbgateway`` options and makeService: objects only, nothing live."""

from __future__ import annotations

import os

from twisted.python import usage

from nbgateway.embedded import EmbeddedManagement, grpc_url
from nbgateway.service import GatewayService
from nbgateway.tap import Options, build_gateway


def parse(args, environ=None):
    opts = Options(environ=environ or {})
    opts.parseOptions(args)
    return opts


def test_remote_management_builds_without_binding(tmp_path):
    opts = parse(["--mgmt", "http://127.0.0.1:33073", "--domain", "gw.example", "--private",
                  "--datadir", str(tmp_path)], {"NB_PROXY_TOKEN": "secret"})
    svc = build_gateway(opts.config)
    assert isinstance(svc, GatewayService)
    assert svc.embedded is None and svc.udp_port is None and svc.public_port is None
    assert svc.config.private and svc.config.domain == "gw.example"
    assert not os.listdir(tmp_path)  # nothing written before start


def test_embedded_when_no_mgmt(tmp_path):
    opts = parse(["--datadir", str(tmp_path / "data")])
    svc = build_gateway(opts.config, environ={"NB_MANAGEMENT_GRPC_ADDR": "127.0.0.1:40001"})
    assert isinstance(svc.embedded, EmbeddedManagement)
    assert svc.embedded.management.store is None  # the store opens at start
    assert svc.mgmt.target.address == "127.0.0.1:40001"
    assert not (tmp_path / "data").exists()


def test_token_required_with_mgmt():
    try:
        parse(["--mgmt", "http://127.0.0.1:1", "--domain", "d.example"])
    except usage.UsageError as exc:
        assert "token" in str(exc).lower()
    else:
        raise AssertionError("expected a usage error")


def test_grpc_url_of_listen_addresses():
    assert grpc_url("127.0.0.1:33073") == "http://127.0.0.1:33073"
    assert grpc_url(":33073") == "http://127.0.0.1:33073"
    assert grpc_url("[::1]:5") == "http://[::1]:5"


def test_reload_rereads_certificates(tmp_path):
    opts = parse(["--datadir", str(tmp_path)])
    svc = build_gateway(opts.config)
    before = svc.certificates.reloads
    svc.reload()
    assert svc.certificates.reloads == before + 1


def test_log_format_json_sets_the_application_observer(tmp_path):
    from twisted.application.service import Application
    from twisted.logger import ILogObserver

    from nbgateway.tap import makeService

    opts = parse(["--datadir", str(tmp_path), "--log-format", "json", "--log-level", "warn"])
    svc = makeService(opts)
    app = Application("nbgateway")
    svc.setServiceParent(app)
    observer = app.getComponent(ILogObserver, None)
    assert observer is not None
    text = parse(["--datadir", str(tmp_path)])
    app2 = Application("nbgateway")
    makeService(text).setServiceParent(app2)
    assert app2.getComponent(ILogObserver, None) is None  # twistd's own (-l) logging



def test_malloc_arenas_limited_unless_the_operator_chose():
    from nbgateway.tap import M_ARENA_MAX, MALLOC_ARENAS, limit_malloc_arenas

    class Libc:
        def __init__(self) -> None:
            self.calls: list[tuple[int, int]] = []

        def mallopt(self, param: int, value: int) -> int:
            self.calls.append((param, value))
            return 1

    libc = Libc()
    assert limit_malloc_arenas({"MALLOC_ARENA_MAX": "8"}, libc=libc) is False
    assert libc.calls == []  # glibc already read the operator's variable at exec
    assert limit_malloc_arenas({}, libc=libc) is True
    assert libc.calls == [(M_ARENA_MAX, MALLOC_ARENAS)]


def test_heap_snapshot_on_sigusr2(tmp_path):
    import json
    import signal
    import tracemalloc

    from nbgateway.tap import heap_snapshots_on_signal

    assert heap_snapshots_on_signal({}) is None
    path = str(tmp_path / "heap.snap")
    previous = signal.getsignal(signal.SIGUSR2)
    try:
        assert heap_snapshots_on_signal({"NBGW_HEAP_SNAPSHOT": path}) == path
        kept = [bytearray(1000) for _ in range(10)]
        os.kill(os.getpid(), signal.SIGUSR2)
        snap = tracemalloc.Snapshot.load(path)
        assert sum(s.size for s in snap.statistics("filename")) >= 10_000
        with open(path + ".malloc") as f:
            figures = json.load(f)
        assert figures["tracemalloc_overhead"] > 0
        assert not figures.get("in_use", 1) <= 0  # glibc: the allocator's bytes in use
        assert kept
    finally:
        tracemalloc.stop()
        signal.signal(signal.SIGUSR2, previous)


def test_malloc_trimmer_trims_every_interval_until_stopped():
    from twisted.internet.task import Clock

    from nbgateway.tap import MallocTrimmer

    clock = Clock()
    calls: list[int] = []
    ticks = iter([0.0, 0.004, 1.0, 1.001])
    trimmer = MallocTrimmer(clock, interval=60.0, trim=lambda pad: calls.append(pad) or 1,
                            timer=lambda: next(ticks))
    trimmer.startService()
    clock.advance(59)
    assert calls == []  # the first one an interval after start
    clock.advance(1)
    assert calls == [0] and trimmer.released == 1
    assert abs(trimmer.last_seconds - 0.004) < 1e-9
    clock.advance(60)
    assert calls == [0, 0] and trimmer.trims == 2
    trimmer.stopService()
    clock.advance(600)
    assert calls == [0, 0] and not clock.getDelayedCalls()


def test_malloc_trimmer_without_malloc_trim_does_nothing():
    from twisted.internet.task import Clock

    from nbgateway.tap import MallocTrimmer

    clock = Clock()
    trimmer = MallocTrimmer(clock, trim=None)
    trimmer._trim = None  # as on a libc without malloc_trim
    trimmer.startService()
    assert not clock.getDelayedCalls() and trimmer.trim_now() is False


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def test_malloc_trim_of_this_glibc_returns_freed_memory():
    import ctypes.util

    import pytest

    from nbgateway.tap import MallocTrimmer, malloc_stats

    if not ctypes.util.find_library("c") or not malloc_stats():
        pytest.skip("not glibc >= 2.33")
    trimmer = MallocTrimmer(None)
    freed = [bytearray(3000) for _ in range(20000)]  # ~60 MB of malloc'd chunks
    kept = [bytearray(3000) for _ in range(100)]  # above them: not the heap's top
    for b in freed:
        b[:] = b"x" * 3000  # touched: resident
    del freed  # free chunks in the middle of the heap: glibc keeps them resident
    rss = _rss_kib()
    trimmer.trim_now()
    assert trimmer.trims == 1 and trimmer.last_seconds > 0
    assert rss - _rss_kib() > 20_000, "malloc_trim gave back less than 20 MB"
    assert kept
