"""bench/handshake_burst.py's in-process harness on a small world: every burst
handshake completes (through cookie replies and MAC2 retries when the queue puts
the devices under load), and the simulated established peer keeps reading."""

from __future__ import annotations

import argparse

from bench.handshake_burst import run_once


def _args(**kw) -> argparse.Namespace:
    base = dict(accounts=4, peers=2, burst=200, read=64, no_cookies=False, data_ms=0.0,
                profile=False, busy_share=None)
    base.update(kw)
    return argparse.Namespace(**base)


def test_burst_under_load_completes_through_cookies_and_retries() -> None:
    r = run_once(_args())
    assert r["completed"] == 200
    assert r["first"]["cookies"] > 0  # the queue depth put the devices under load
    assert r["first"]["cookies"] + r["first"]["responses"] == 200
    assert r["retry"]["responses"] == r["first"]["cookies"]


def test_without_load_every_first_initiation_is_answered() -> None:
    r = run_once(_args(no_cookies=True, burst=20))
    assert r["completed"] == 20
    assert r["first"]["responses"] == 20 and "retry" not in r


def test_with_an_established_peer_its_reads_go_on() -> None:
    r = run_once(_args(burst=40, data_ms=0.05))
    assert r["completed"] == 40
    assert r["first"]["data_ratio"] is not None and r["first"]["data_ratio"] > 0
