"""The twistd management freezes its heap after a slow full collection (issue 18:
a ~350 ms generation-2 collection at 300 accounts was the mapping-change tail)."""

from __future__ import annotations

import gc
import threading
from typing import Any

from twisted.internet.task import Clock

from nbgateway.heapfreeze import HeapFreezer


class _Reactor(Clock):
    """A Clock whose ``callFromThread`` queues (run by :meth:`run_queued`)."""

    def __init__(self) -> None:
        super().__init__()
        self.queued: list[tuple[Any, tuple]] = []
        self.lock = threading.Lock()

    def callFromThread(self, f: Any, *a: Any) -> None:
        with self.lock:
            self.queued.append((f, a))

    def run_queued(self) -> int:
        with self.lock:
            todo, self.queued = self.queued, []
        for f, a in todo:
            f(*a)
        return len(todo)


class _Timer:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _collection(f: HeapFreezer, timer: _Timer, took: float, generation: int = 2) -> None:
    f._on_gc("start", {"generation": generation})
    timer.now += took
    f._on_gc("stop", {"generation": generation, "collected": 0, "uncollectable": 0})


def test_slow_full_collection_freezes_once_then_rate_limited():
    reactor, timer, calls = _Reactor(), _Timer(), []
    cbs: list[Any] = []
    f = HeapFreezer(reactor, delays=(), slow=0.05, min_interval=30.0,
                    freeze=lambda: calls.append("freeze"), callbacks=cbs, timer=timer)
    f.startService()
    assert cbs == [f._on_gc]
    _collection(f, timer, 0.01)  # fast: nothing
    _collection(f, timer, 0.5, generation=1)  # not a full collection: nothing
    assert reactor.run_queued() == 0
    _collection(f, timer, 0.35)
    _collection(f, timer, 0.35)  # already scheduled: not twice
    assert reactor.run_queued() == 1
    assert calls == ["freeze"] and f.freezes == 1
    assert f.full_collections == 3 and f.slowest == 0.35
    timer.now += 10
    _collection(f, timer, 0.2)  # within min_interval of the last freeze
    assert reactor.run_queued() == 0
    timer.now += 30
    _collection(f, timer, 0.2)
    assert reactor.run_queued() == 1
    assert calls == ["freeze", "freeze"]
    f.stopService()
    assert cbs == []


def test_fixed_delays_freeze_and_stop_cancels():
    reactor, calls = _Reactor(), []
    f = HeapFreezer(reactor, delays=(10.0, 60.0), collect=None,
                    freeze=lambda: calls.append("f"), callbacks=[])
    f.startService()
    reactor.advance(10)
    assert calls == ["f"]
    f.stopService()
    assert reactor.getDelayedCalls() == []
    reactor.advance(100)
    assert calls == ["f"]


def test_real_gc_collection_in_another_thread_schedules_a_freeze():
    # the real gc.callbacks hook, a real full collection in a worker thread
    # (the status writer, the gRPC loop): the freeze is handed to the reactor
    reactor, calls = _Reactor(), []
    f = HeapFreezer(reactor, delays=(), slow=0.0, freeze=lambda: calls.append("f"))
    f.startService()
    try:
        t = threading.Thread(target=gc.collect)
        t.start()
        t.join(10)
        assert f.full_collections >= 1
        assert reactor.run_queued() == 1
        assert calls == ["f"]
    finally:
        f.stopService()
    assert f._on_gc not in gc.callbacks


def test_real_freeze_moves_survivors_out_of_the_collector():
    reactor = _Reactor()
    f = HeapFreezer(reactor, delays=(), slow=0.0)
    keep = [[i] for i in range(1000)]  # tracked, long-lived
    before = gc.get_freeze_count()
    f.startService()
    try:
        gc.collect()
        assert reactor.run_queued() == 1
        assert gc.get_freeze_count() >= before + len(keep)
    finally:
        f.stopService()
        gc.unfreeze()  # leave the test process as it was
    assert keep


def test_make_service_attaches_one_freezer_unless_disabled(tmp_path, monkeypatch):
    from nbgateway.management.tap import makeService
    from tests.management.test_tap import parse

    args = ["--datadir", str(tmp_path), "--api-addr", "127.0.0.1:0"]
    svc = makeService(parse(args))
    assert len([c for c in svc if isinstance(c, HeapFreezer)]) == 1
    monkeypatch.setenv("NBGW_MGMT_HEAP_FREEZE", "0")
    svc = makeService(parse(args))
    assert not [c for c in svc if isinstance(c, HeapFreezer)]


def test_adaptive_freezes_are_capped_per_process():
    # each adaptive freeze may leak the cycles alive at that moment: bounded
    reactor, timer, calls = _Reactor(), _Timer(), []
    f = HeapFreezer(reactor, delays=(), slow=0.05, min_interval=30.0, max_adaptive=3,
                    freeze=lambda: calls.append("freeze"), callbacks=[], timer=timer)
    f.startService()
    for _ in range(6):
        _collection(f, timer, 0.4)
        reactor.run_queued()
        timer.now += 31
    assert calls == ["freeze"] * 3 and f.adaptive_freezes == 3
    assert f.full_collections == 6
    f.stopService()


def test_management_freezer_has_one_fixed_freeze_without_collect(tmp_path):
    from nbgateway.management.tap import MGMT_HEAP_FREEZE_AFTER, makeService
    from tests.management.test_tap import parse

    svc = makeService(parse(["--datadir", str(tmp_path), "--api-addr", "127.0.0.1:0"]))
    [f] = [c for c in svc if isinstance(c, HeapFreezer)]
    assert f.delays == MGMT_HEAP_FREEZE_AFTER and f._collect is None
