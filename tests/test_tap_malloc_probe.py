"""nbgateway.tap.malloc_probe_on_signal: the allocator probe behind
``bench/peer_memory.py --real --probe`` (issue 18, RSS per storm peer)."""

from __future__ import annotations

import json
import os
import signal
import tracemalloc

import pytest

from nbgateway.tap import _pymalloc_stats, malloc_probe_on_signal, malloc_stats


def _probe(path: str) -> dict:
    os.kill(os.getpid(), signal.SIGUSR2)  # the handler runs before kill returns
    with open(path) as f:
        return json.load(f)


@pytest.fixture
def restore_sigusr2():
    previous = signal.getsignal(signal.SIGUSR2)
    yield
    signal.signal(signal.SIGUSR2, previous)
    if tracemalloc.is_tracing():
        tracemalloc.stop()


def test_off_unless_asked() -> None:
    assert malloc_probe_on_signal({}) is None


def test_pymalloc_figures_are_read() -> None:
    stats = _pymalloc_stats()
    assert stats["arenas"] >= 1
    assert stats["pymalloc_total"] >= stats["arenas"] * 256 * 1024  # arenas are >= 256 KiB
    assert 0 < stats["blocks"] <= stats["pymalloc_total"]


def test_sigusr2_writes_the_allocator_figures(tmp_path, restore_sigusr2) -> None:
    path = str(tmp_path / "probe.json")
    assert malloc_probe_on_signal({"NBGW_MALLOC_PROBE": path}) == path
    assert not tracemalloc.is_tracing()  # no trace unless asked: costs nothing idle
    first = _probe(path)
    for key in ("arenas", "blocks", "pymalloc_total", "allocated_blocks", "objects", "frozen"):
        assert first[key] >= 0, key
    assert first["objects"] > 0 and "traced" not in first
    assert first["rss"] > 0
    if not malloc_stats():  # not glibc >= 2.33
        return
    kept = [bytearray(2000) for _ in range(2000)]  # 4 MB of malloc'd (not pymalloc) chunks
    second = _probe(path)
    assert second["in_use"] - first["in_use"] >= 3_900_000
    assert 0 < second["rss_trimmed"] <= second["rss"] + 1_000_000  # a trim gives back
    with open(path + ".xml") as f:
        assert f.read().startswith("<malloc")  # glibc's per-arena malloc_info
    assert kept


def test_trace_switch_adds_the_python_heap(tmp_path, restore_sigusr2) -> None:
    path = str(tmp_path / "probe.json")
    malloc_probe_on_signal({"NBGW_MALLOC_PROBE": path, "NBGW_MALLOC_PROBE_TRACE": "1"})
    assert tracemalloc.is_tracing()
    kept = [bytearray(1000) for _ in range(100)]
    figures = _probe(path)
    assert figures["traced"] >= 100_000
    snap = tracemalloc.Snapshot.load(path + ".trace")
    assert sum(s.size for s in snap.statistics("filename")) >= 100_000
    assert kept
