"""The twistd gateway freezes its start-up heap out of the cyclic GC's view
(issue 20: full collections of it stalled the reactor 60-200 ms)."""

from __future__ import annotations

from twisted.internet.task import Clock

from nbgateway.tap import HEAP_FREEZE_AFTER, HeapFreezer


def test_collects_then_freezes_at_each_delay_and_stop_cancels():
    clock = Clock()
    calls: list[str] = []
    f = HeapFreezer(clock, delays=(10.0, 60.0), collect=lambda: calls.append("collect"),
                    freeze=lambda: calls.append("freeze"))
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
    f = HeapFreezer(clock, collect=lambda: calls.append("c"), freeze=lambda: calls.append("f"))
    f.startService()
    clock.advance(max(HEAP_FREEZE_AFTER))
    assert calls == ["c"] + ["f"] * len(HEAP_FREEZE_AFTER)
    assert f.freezes == len(HEAP_FREEZE_AFTER)


def test_make_service_attaches_one_freezer_and_build_gateway_none(tmp_path):
    from nbgateway.tap import build_gateway, makeService
    from tests.test_tap import parse

    opts = parse(["--datadir", str(tmp_path)])
    svc = makeService(opts)
    assert [c for c in svc if isinstance(c, HeapFreezer)] != []
    assert len([c for c in svc if isinstance(c, HeapFreezer)]) == 1
    lib = build_gateway(parse(["--datadir", str(tmp_path)]).config)  # a library host: none
    assert not [c for c in lib if isinstance(c, HeapFreezer)]
