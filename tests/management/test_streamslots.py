"""Peer-channel Sync stream admission is fair between accounts and keeps
room for the gateways' proxy peers (nbgateway.management.streamslots)."""

from __future__ import annotations

import threading

import pytest

from nbgateway.management.streamslots import StreamSlots


def test_one_account_cannot_take_every_slot():
    slots = StreamSlots(8)  # per account 2, reserved for proxies 4, ordinary 4
    assert [slots.acquire("hostile", False) for _ in range(5)] == [True, True, False,
                                                                     False, False]
    assert slots.refused["account"] == 3
    assert slots.acquire("other", False)  # another account still gets in


def test_ordinary_peers_never_take_the_proxy_reserve():
    slots = StreamSlots(8)
    for acct in ("a", "b"):
        assert slots.acquire(acct, False) and slots.acquire(acct, False)
    assert not slots.acquire("c", False)  # the 4 ordinary slots are used
    assert slots.refused["ordinary"] == 1
    # every account's gateway proxy peer still connects
    assert all(slots.acquire(acct, True) for acct in ("a", "b", "c", "d"))
    assert not slots.acquire("e", True)  # total reached
    assert slots.refused["total"] == 1
    assert slots.in_use() == 8


def test_release_gives_the_slot_back_and_unknown_release_is_harmless():
    slots = StreamSlots(1)
    assert slots.acquire("a", False)
    assert not slots.acquire("b", True)
    slots.release("b", True)  # never taken: no effect
    assert slots.in_use() == 1
    slots.release("a", False)
    assert slots.acquire("b", True) and slots.in_use() == 1


def test_bad_total_is_refused():
    with pytest.raises(ValueError):
        StreamSlots(0)


def test_threads_never_exceed_the_bounds():
    slots = StreamSlots(16)
    taken: list[tuple[str, bool]] = []
    lock = threading.Lock()

    def worker(acct: str, proxy: bool) -> None:
        for _ in range(200):
            if slots.acquire(acct, proxy):
                with lock:
                    taken.append((acct, proxy))
                    assert slots.in_use() <= 16
                slots.release(acct, proxy)

    threads = [threading.Thread(target=worker, args=(f"a{i % 3}", i % 2 == 0))
               for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert slots.in_use() == 0 and taken
