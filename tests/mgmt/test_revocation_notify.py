"""Management notifies the gateway of every change that can revoke a cached
ValidateTunnelPeer answer (issue 11 item 2), over the real peer channel.

The proxy peer's Sync stream must deliver a map with a higher ``Serial`` when
a peer leaves a group (while it still reaches another service, so the roster
does not change), when a peer is deleted, when its user is blocked and when a
service's access groups change; connection-state churn sends nothing, and a
burst of changes is coalesced into a few maps.
"""

from __future__ import annotations

import dataclasses
import queue
import time

import pytest

from nbgateway.management.model import Group, Service, User
from tests.management.test_peerchannel import (
    CLUSTER,
    PeerClient,
    add_peer,
    private_service,
    remote_keys,
    server,  # noqa: F401  (fixture)
    server_key,  # noqa: F401  (fixture)
    store,  # noqa: F401  (fixture)
    stub,  # noqa: F401  (fixture)
)

#: the issue's end-to-end bound is 2 s; management's share must be well under it
NOTIFY_DEADLINE = 1.0


@pytest.fixture
def world(store, stub):  # noqa: F811
    """U (owned by user alice) in grp-admins and grp-ops; private service S1
    for grp-admins and S2 for grp-ops; a connected proxy peer P syncing."""
    store.users.create(User(id="alice", account_id="acct-1", email="alice@example.test"))
    u, p = PeerClient(stub), PeerClient(stub)
    user = add_peer(store, u, "laptop", ip="100.64.0.10", user_id="alice")
    proxy = add_peer(store, p, "proxy-1", ip="100.64.0.99", proxy=True, proxy_cluster=CLUSTER,
                     connected=True, ephemeral=True, endpoint="127.0.0.1:51820")
    admins = store.groups.create(Group(id="grp-admins", account_id="acct-1", name="admins",
                                      peers=(user.id,)))
    ops = store.groups.create(Group(id="grp-ops", account_id="acct-1", name="ops",
                                   peers=(user.id,)))
    s1 = store.services.create(private_service([admins.id]))
    s2 = store.services.create(dataclasses.replace(
        private_service([ops.id]), name="other", domain="other.eu.proxy.netbird.io"))
    stream = p.sync()
    first = stream.next()
    assert remote_keys(first) == {u.key}
    settle(stream)
    yield dict(u=u, user=user, proxy=proxy, s1=s1, s2=s2, stream=stream,
               serial=first.NetworkMap.Serial)
    stream.cancel()


def settle(stream, quiet: float = 0.3) -> int:
    """Drain maps until the stream has been quiet for ``quiet`` seconds; how many."""
    count = 0
    while True:
        try:
            stream.next(timeout=quiet)
        except queue.Empty:
            return count
        count += 1


def notified(w, change):
    """Apply ``change``; the proxy peer must get a newer map within the deadline."""
    change()
    m = w["stream"].next(timeout=NOTIFY_DEADLINE)
    assert m.NetworkMap.Serial > w["serial"]
    return m


def test_group_membership_change_notifies_though_roster_is_unchanged(store, world):  # noqa: F811
    w = world
    m = notified(w, lambda: store.groups.remove_peers("acct-1", "grp-admins",
                                                          [w["user"].id]))
    assert remote_keys(m) == {w["u"].key}  # U still reaches S2: the same roster


def test_peer_deletion_notifies(store, world):  # noqa: F811
    w = world
    notified(w, lambda: store.peers.delete("acct-1", w["user"].id))


def test_user_blocked_notifies(store, world):  # noqa: F811
    w = world
    alice = store.users.get("acct-1", "alice")
    notified(w, lambda: store.users.update(dataclasses.replace(alice, blocked=True)))


def test_service_access_groups_change_notifies(store, world):  # noqa: F811
    w = world
    svc: Service = store.services.get("acct-1", w["s1"].id)
    notified(w, lambda: store.services.update(
        dataclasses.replace(svc, access_groups=("grp-admins", "grp-ops"))))


def test_connection_churn_sends_nothing(store, world):  # noqa: F811
    w = world
    for state in (True, False, True):
        store.peers.set_connected("acct-1", w["user"].id, state)
    with pytest.raises(queue.Empty):
        w["stream"].next(timeout=0.5)


def test_storm_is_coalesced(store, world, stub):  # noqa: F811
    w = world
    extra = [add_peer(store, PeerClient(stub), f"p{i}", ip=f"100.64.1.{i + 1}")
             for i in range(5)]
    settle(w["stream"])
    start = time.monotonic()
    for _ in range(10):  # 100 group changes as fast as the store takes them
        for p in extra:
            store.groups.add_peers("acct-1", "grp-admins", [p.id])
        for p in extra:
            store.groups.remove_peers("acct-1", "grp-admins", [p.id])
    store.groups.add_peers("acct-1", "grp-admins", [extra[0].id])  # a net change
    elapsed = time.monotonic() - start
    sent = settle(w["stream"])
    # at most one map per coalescing window (50 ms), never one per change
    assert 1 <= sent < 50
    assert sent <= elapsed / 0.05 + 2


def test_unused_group_and_group_rename_notify(store, world):  # noqa: F811
    """The proxy peer's map is the same (no service uses g4), but the groups a
    validation answer reports (X-NetBird-Groups) changed."""
    w = world
    g4 = Group(id="grp-extra", account_id="acct-1", name="extra", peers=(w["user"].id,))
    notified(w, lambda: store.groups.create(g4))
    notified(w, lambda: store.groups.update(dataclasses.replace(g4, name="renamed")))
