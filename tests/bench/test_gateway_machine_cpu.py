"""bench/gateway.py: the whole machine's CPU per request and idle share
(from /proc/stat) printed beside each 16-connection run."""

from __future__ import annotations

import os

import pytest

import bench.gateway as gw


def test_machine_cpu_reads_proc_stat():
    if not os.path.exists("/proc/stat"):
        pytest.skip("no /proc/stat on this system")
    busy, idle = gw.machine_cpu()
    assert busy > 0 and idle >= 0
    busy2, idle2 = gw.machine_cpu()
    assert busy2 >= busy and idle2 >= idle


def test_per_request_share_from_two_readings(monkeypatch):
    # 3 CPU-seconds busy and 1 idle over a run of 30,000 requests
    monkeypatch.setattr(gw, "machine_cpu", lambda: (13.0, 6.0))
    result = {"requests": 30_000}
    gw._machine_per_request(result, (10.0, 5.0))
    assert result["machine_ms_per_req"] == pytest.approx(0.1)
    assert result["idle_pct"] == pytest.approx(25.0)


def test_no_requests_no_figures(monkeypatch):
    monkeypatch.setattr(gw, "machine_cpu", lambda: (13.0, 6.0))
    result = {"requests": 0}
    gw._machine_per_request(result, (10.0, 5.0))
    assert "machine_ms_per_req" not in result and "idle_pct" not in result
