"""nbgateway.tap's allocator settings and probe for issue 18 (RSS per storm
peer): the fixed mmap threshold, and the probe behind
``bench/peer_memory.py --real --probe``."""

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


class _Libc:
    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def mallopt(self, param: int, value: int) -> int:
        self.calls.append((param, value))
        return 1


def test_mmap_threshold_fixed_unless_the_operator_chose() -> None:
    from nbgateway.tap import M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD, fix_mmap_threshold

    libc = _Libc()
    assert fix_mmap_threshold({}, libc=libc) is True
    assert libc.calls == [(M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD)]
    assert fix_mmap_threshold({"MALLOC_MMAP_THRESHOLD_": "65536"}, libc=libc) is False
    assert fix_mmap_threshold({"NBGW_MALLOC_MMAP_FIXED": "0"}, libc=libc) is False
    assert len(libc.calls) == 1


_BIG_AGAIN = """
import sys
from nbgateway.tap import fix_mmap_threshold, malloc_stats
if sys.argv[1] == "fixed":
    assert fix_mmap_threshold({})
first = bytearray(4 << 20)   # above the threshold: mapped
del first                    # glibc's dynamic threshold would rise to 4 MiB here
second = bytearray(2 << 20)  # a map-sized buffer again
print(malloc_stats()["mmapped"] >= 2 << 20)
"""


def test_a_fixed_threshold_keeps_big_buffers_out_of_the_arenas() -> None:
    """The behaviour the fix is for, in a fresh process each (glibc only):
    after a mapped 4 MiB buffer was freed, a 2 MiB one is mapped again
    instead of coming from (and later fragmenting) the heap."""
    import subprocess
    import sys

    if not malloc_stats():
        pytest.skip("not glibc >= 2.33")

    def mapped(mode: str) -> str:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
        return subprocess.run([sys.executable, "-c", _BIG_AGAIN, mode], env=env, check=True,
                              capture_output=True, text=True).stdout.strip()

    assert mapped("fixed") == "True"
    assert mapped("dynamic") == "False"  # glibc's default, what the gateway had


def test_unfreeze_switch_counts_frozen_cyclic_garbage(tmp_path, restore_sigusr2) -> None:
    import gc

    path = str(tmp_path / "probe.json")
    malloc_probe_on_signal({"NBGW_MALLOC_PROBE": path, "NBGW_MALLOC_PROBE_UNFREEZE": "1"})
    cycle: list = [bytearray(100_000)]
    cycle.append(cycle)
    gc.freeze()  # what the HeapFreezer does; the cycle dies while frozen
    try:
        del cycle
        figures = _probe(path)
    finally:
        gc.unfreeze()
    assert figures["unfrozen_garbage"] >= 1  # the list: only the collector frees it
    if malloc_stats():
        assert figures["unfrozen_freed"] >= 100_000
