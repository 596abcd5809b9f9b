"""Overlay address allocation (``store/_addresses.py``): a freed address is
handed out again first, hints are per account, and dropping an account's
hints is safe while other accounts' writes add hints at the same time."""

from __future__ import annotations

import sys
import threading

from nbgateway.management.model import Account, Peer
from nbgateway.management.store._addresses import AddressAllocator


def test_a_deleted_peers_address_is_the_next_one_handed_out(store, account):
    made = [store.peers.create(Peer(account_id=account.id, name=f"p{i}", key=f"key-{i}"))
            for i in range(4)]
    assert len({p.ip for p in made}) == 4
    store.peers.delete(account.id, made[1].id)
    again = store.peers.create(Peer(account_id=account.id, name="p4", key="key-4"))
    assert again.ip == made[1].ip
    after = store.peers.create(Peer(account_id=account.id, name="p5", key="key-5"))
    assert after.ip not in {p.ip for p in made}


def test_a_delete_in_one_account_keeps_the_others_hints(store, account):
    other = store.accounts.create(Account(id="acct-2", domain="netbird.test"))
    a = store.peers.create(Peer(account_id=account.id, name="a", key="key-a"))
    store.peers.create(Peer(account_id=other.id, name="b", key="key-b"))
    hints = store.peers._addresses._hints
    assert {k[0] for k in hints} == {account.id, other.id}
    store.peers.delete(account.id, a.id)
    assert {k[0] for k in hints} == {other.id}


def test_forget_while_other_accounts_add_hints():
    allocator = AddressAllocator()
    for i in range(20_000):
        allocator._remember((f"acct-{i}", 4, "100.64.0.0/10"), "100.64.0.1")
    stop = threading.Event()
    errors: list[BaseException] = []

    def forget() -> None:
        try:
            for _ in range(100):
                allocator.forget("acct-gone")
        except BaseException as exc:
            errors.append(exc)

    def add() -> None:
        i = 0
        while not stop.is_set():
            allocator._remember((f"new-{i}", 4, "100.64.0.0/10"), "100.64.0.1")
            i += 1

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    try:
        adder = threading.Thread(target=add)
        adder.start()
        forget()
        stop.set()
        adder.join()
    finally:
        sys.setswitchinterval(old)
    assert errors == []
    assert ("acct-7", 4, "100.64.0.0/10") in allocator._hints
