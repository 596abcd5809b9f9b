"""The twistd gateway freezes its start-up heap out of the cyclic GC's view
(issue 20: full collections of it stalled the reactor 60-200 ms)."""

from __future__ import annotations

from twisted.internet.task import Clock

from nbgateway.tap import HEAP_FREEZE_AFTER, HeapFreezer


def test_collects_then_freezes_at_each_delay_and_stop_cancels():
    clock = Clock()
    calls: list[str] = []
    f = HeapFreezer(clock, delays=(10.0, 60.0), collect=lambda: calls.append("collect"),
                    freeze=lambda: calls.append("freeze"), callbacks=[])
    f.startService()
    clock.advance(9.9)
    assert calls == []
    clock.advance(0.1)
    assert calls == ["collect", "freeze"]
    f.stopService()
    assert clock.getDelayedCalls() == []  # the 60 s freeze never happens
    clock.advance(100)
    assert calls == ["collect", "freeze"]


def test_only_the_first_freeze_collects_first():
    # a full collection under load is the very pause this avoids (seen: 437 ms
    # in the middle of a benchmark round at the 60 s freeze)
    clock = Clock()
    calls: list[str] = []
    f = HeapFreezer(clock, collect=lambda: calls.append("c"), freeze=lambda: calls.append("f"),
                    callbacks=[])
    f.startService()
    clock.advance(max(HEAP_FREEZE_AFTER))
    assert calls == ["c"] + ["f"] * len(HEAP_FREEZE_AFTER)
    assert f.freezes == len(HEAP_FREEZE_AFTER)
    f.stopService()


def test_make_service_attaches_one_freezer_and_build_gateway_none(tmp_path):
    from nbgateway.tap import build_gateway, makeService
    from tests.test_tap import parse

    opts = parse(["--datadir", str(tmp_path)])
    svc = makeService(opts)
    assert [c for c in svc if isinstance(c, HeapFreezer)] != []
    assert len([c for c in svc if isinstance(c, HeapFreezer)]) == 1
    lib = build_gateway(parse(["--datadir", str(tmp_path)]).config)  # a library host: none
    assert not [c for c in lib if isinstance(c, HeapFreezer)]


class _ThreadReactor(Clock):
    def __init__(self) -> None:
        super().__init__()
        self.queued: list = []

    def callFromThread(self, f, *a) -> None:
        self.queued.append((f, a))

    def run_queued(self) -> int:
        todo, self.queued = self.queued, []
        for f, a in todo:
            f(*a)
        return len(todo)


def test_slow_full_collection_after_the_first_freeze_freezes_its_survivors():
    reactor, calls, cbs = _ThreadReactor(), [], []
    now = [0.0]
    f = HeapFreezer(reactor, delays=(10.0,), collect=lambda: calls.append("c"),
                    freeze=lambda: calls.append("f"), slow=0.05, min_interval=30.0,
                    callbacks=cbs, timer=lambda: now[0])
    f.startService()
    assert cbs == [f._on_gc]

    def full(took: float) -> None:
        f._on_gc("start", {"generation": 2})
        now[0] += took
        f._on_gc("stop", {"generation": 2})

    full(0.5)  # before the first fixed freeze: left to it
    assert reactor.run_queued() == 0
    reactor.advance(10)
    assert calls == ["c", "f"]
    now[0] += 31
    full(0.01)  # fast: nothing
    f._on_gc("start", {"generation": 1})
    now[0] += 0.5
    f._on_gc("stop", {"generation": 1})  # not a full collection
    assert reactor.run_queued() == 0
    full(0.3)
    full(0.3)  # one freeze scheduled at a time
    assert reactor.run_queued() == 1
    assert calls == ["c", "f", "f"]  # no collect: the collection just ran
    full(0.3)  # within min_interval of that freeze
    assert reactor.run_queued() == 0
    assert f.full_collections == 5 and f.slowest == 0.5
    f.stopService()
    assert cbs == []


def test_make_service_adaptive_freezes_can_be_turned_off(tmp_path, monkeypatch):
    from nbgateway.tap import HEAP_FREEZE_SLOW, makeService
    from tests.test_tap import parse

    svc = makeService(parse(["--datadir", str(tmp_path)]))
    assert [c.slow for c in svc if isinstance(c, HeapFreezer)] == [HEAP_FREEZE_SLOW]
    monkeypatch.setenv("NBGW_HEAP_FREEZE_ADAPTIVE", "0")
    svc = makeService(parse(["--datadir", str(tmp_path)]))
    assert [c.slow for c in svc if isinstance(c, HeapFreezer)] == [float("inf")]
