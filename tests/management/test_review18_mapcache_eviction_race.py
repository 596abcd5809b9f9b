"""Review 18 (sec18): the peer channel's map cache must not lose a change of an
account it is re-reading when another account's read evicts it (LRU).

``MapCache`` (management/mapcache.py) keeps a change that lands while an
account is being read pending "for the next call, so a stream marked dirty
by that change never gets the older entry again".  But the LRU bound drops
the pending changes of the account it evicts, also of an account another
thread is reading right now: that thread then stores the entry it read
*before* the change, with nothing pending, and every later ``get`` serves it.

What the lost change was decides what stays stale for as long as nothing
else changes in the account: a blocked user, a peer taken out of a group
(network maps keep the peer's access; the access digest keeps the gateway's
cached ValidateTunnelPeer answers, so the revocation never reaches it).
With more active accounts than the cache holds (``size``, 1024 by default)
evictions happen all the time on a multi-tenant management.

Deterministic: the account's read is held (after it read the rows) while the
change commits and another account's read evicts it; ``size=1`` stands for
"more accounts than the cache holds".  The store's change listener feeds
the cache through the peer hub exactly as the peer channel wires it.
"""

from __future__ import annotations

import dataclasses
import threading

from nbgateway.management.mapcache import MapCache
from nbgateway.management.model import Account, User
from nbgateway.management.peerchannel import access_digest
from nbgateway.management.peerhub import PeerUpdateHub
from nbgateway.management.synthetic import load_account_view

WAIT = 10.0


def _other_stripe(name: str) -> str:
    """An account id whose MapCache lock stripe differs from ``name``'s (the
    stripes are by hash, which varies per process)."""
    from nbgateway.management import mapcache

    mine = hash(name) % mapcache._STRIPES
    return next(c for c in (f"acct-other-{i}" for i in range(1000))
                if hash(c) % mapcache._STRIPES != mine)


def test_a_change_during_a_read_survives_the_eviction_of_the_account(store) -> None:
    victim = "acct-victim"
    other = _other_stripe(victim)
    for acct in (victim, other):
        store.accounts.create(Account(id=acct, domain=f"{acct}.test"))
    alice = store.users.create(User(id="alice", account_id=victim, email="a@victim.test"))
    cache = MapCache(store, size=1)
    hub = PeerUpdateHub(cache.changed)  # the peer channel's wiring
    store.add_listener(hub.on_change)

    real_read = store.accounts.read_view
    hold = threading.Event()
    read_done = threading.Event()
    release = threading.Event()

    def read_view(account_id: str):
        rows = real_read(account_id)
        if account_id == victim and hold.is_set():
            read_done.set()
            assert release.wait(WAIT)
        return rows

    store.accounts.read_view = read_view

    cache.get(victim)  # cached
    # an earlier change: the next get re-reads the account
    store.users.update(dataclasses.replace(alice, email="alice@victim.test"))
    hold.set()
    got: list = []
    reader = threading.Thread(target=lambda: got.append(cache.get(victim)))
    reader.start()
    assert read_done.wait(WAIT)  # the reader has the rows of before the next change
    # the admin blocks alice while the read is in flight ...
    store.users.update(dataclasses.replace(alice, email="alice@victim.test", blocked=True))
    # ... and a stream of another account reads its own (evicting the victim)
    cache.get(other)
    hold.clear()
    release.set()
    reader.join(WAIT)
    assert got, "the reader finished"

    entry = cache.get(victim)  # any later stream render of the account
    users = {u.id: u for u in entry.users}
    assert users["alice"].blocked, "the map cache serves the account as before the block"
    fresh = access_digest(load_account_view(store, victim), store.users.list(victim))
    assert access_digest(entry.view, entry.users) == fresh
