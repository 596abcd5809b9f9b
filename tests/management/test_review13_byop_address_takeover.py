"""Review 13 (finding): a tenant takes another tenant's BYOP cluster address
once the victim's gateways have been offline for an hour, and the victim's
gateways are then locked out of it; over real gRPC, SQLite and PostgreSQL.

An account-scoped gateway may announce any cluster address no other scope's
proxy row uses (``cluster_address_in_use`` looks at ``proxies`` rows only).
Rows of gateways not seen for an hour are deleted (``STALE_AFTER``).  So when
the victim's own gateways are down for an hour (maintenance, an outage), a
hostile tenant's gateway announces the victim's address and holds it: the
victim's gateways come back to ``ALREADY_EXISTS: cluster address ... is
already in use``, and the victim's custom domain pointed at its cluster now
names "another account's own cluster" (no service derives, 412).  The
victim's claim -- a custom domain covering the address and targeting it --
counts for nothing -- even the way docs/management.md gives an account to
hold its BYOP cluster's names: a custom domain covering them.

Expected: an address equal to or under another account's custom domain is
that account's; another scope announcing it is ALREADY_EXISTS, and the
victim's gateways take it back.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import grpc
import pytest

from nbgateway.management.model import Account, CustomDomain, utcnow
from tests.management.test_grpc_streams import GmuClient
from tests.management.test_grpc_support import Fixture, Harness

VICTIM, EVIL = "acct-victim", "acct-evil"
ADDRESS = "gw.victim-corp.test"


@pytest.fixture
def world(store) -> Iterator[tuple[Harness, Fixture, str, str]]:
    fx = Fixture(store)
    for a in (VICTIM, EVIL):
        store.accounts.create(Account(id=a, domain=f"{a}.test"))
    _, victim = store.proxies.create_token("victim", account_id=VICTIM)
    _, evil = store.proxies.create_token("evil", account_id=EVIL)
    h = Harness(store, heartbeat_interval=0.2)
    try:
        yield h, fx, victim, evil
    finally:
        h.close()


def test_an_offline_victims_cluster_address_is_not_up_for_grabs(world) -> None:
    h, fx, victim, evil = world
    gw = GmuClient(h, victim, "gw-victim-1", address=ADDRESS)
    gw.snapshot()
    # the documented way to hold the cluster's names: a custom domain covering them
    fx.store.domains.create(CustomDomain(account_id=VICTIM, domain="victim-corp.test",
                                         target_cluster=ADDRESS))
    gw.close()
    gw.end()
    # an hour later the stale-row cleanup has removed the victim's gateway row
    fx.store.proxies.delete_stale(utcnow() + timedelta(seconds=1))
    squat = GmuClient(h, evil, "gw-evil-1", address=ADDRESS)
    with pytest.raises(grpc.RpcError) as info:  # today: accepted, the address is the tenant's
        squat.snapshot()
    assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS
    squat.close()
    back = GmuClient(h, victim, "gw-victim-1", address=ADDRESS)
    back.snapshot()  # the victim's gateway takes its address back
    back.close()
