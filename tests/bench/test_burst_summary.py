"""bench/wg_baseline.burst_window_summary: the established peer's ratio over a
burst window, the same figures for the gateway's run and for wireguard-go."""

from __future__ import annotations

import pytest

from bench.wg_baseline import burst_window_summary


def _ivs(start: float, mbits: list[float]) -> list[tuple[float, float]]:
    return [(start + 0.1 * (i + 1), m) for i, m in enumerate(mbits)]


def test_window_ratio_first_second_worst_and_after() -> None:
    before = _ivs(0.0, [10, 10, 10, 10, 10] + [100] * 20)  # slow start skipped
    # during: 2 s of 100, then a 1.5-s burst window at 50 with one 0, then 100
    during = _ivs(10.0, [100] * 20 + [50] * 7 + [0] + [50] * 7 + [100] * 30)
    sm = burst_window_summary(before, during, (12.05, 13.45))
    assert sm["before_mbit"] == 100
    assert sm["n"] == 15
    assert sm["ratio"] == pytest.approx((14 * 50) / 15 / 100)
    assert sm["worst"] == 0.0 and sm["zero"] == 1 and sm["under_half"] == 1
    assert sm["first_1s"] == pytest.approx((7 * 50 + 0 + 2 * 50) / 10 / 100)
    assert sm["after"] == pytest.approx(1.0)
    assert sm["pre_mbit"] == 100  # the same run's 1.5 s before the burst
    assert sm["ratio_pre"] == pytest.approx(sm["ratio"])


def test_no_overlap_gives_no_ratio() -> None:
    sm = burst_window_summary(_ivs(0.0, [100] * 10), _ivs(10.0, [100] * 5), (20.0, 21.0))
    assert "ratio" not in sm and sm["n"] == 0
