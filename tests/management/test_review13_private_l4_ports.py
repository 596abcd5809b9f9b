"""Review 13 (finding): one tenant's private L4 services take their ports from
every other tenant of a shared cluster, over real HTTP against ``twistd
nbmanagement`` (SQLite and PostgreSQL).

A private TCP/UDP service listens on its account's own tunnel address (each
account has its own netstack on the gateway; docs/l4.md), so two accounts'
private services on the same port never meet.  Management nevertheless
treats a listen port as taken on the whole cluster, whatever the account and
whether the service is private: account A creating private ``tcp`` services
on 22, 5432, 3306, 6379 ... of a shared cluster makes every other account's
private service on those ports ``409 port 5432 is already in use by another
tcp service on cluster ...`` (and auto-assigned ports skip them).  Any tenant
can squat the well-known ports of every shared cluster for everyone.

Expected: a private service's port is taken only among its own account's
private services of the cluster (its tunnel address); public services keep
sharing the gateway host's ports first come first served.
"""

from __future__ import annotations

import pytest

from .apiserver import BACKENDS, new_account, server_with_cluster, uniq

CLUSTER = "cl.review13l4.test"
SERVICES = "/api/reverse-proxies/services"


@pytest.fixture(scope="module", params=BACKENDS)
def server(request, tmp_path_factory):
    with server_with_cluster(tmp_path_factory, request.param, CLUSTER) as srv:
        yield srv


def private_tcp(group: str, port: int) -> dict:
    return {"name": uniq("db"), "domain": f"{uniq('db')}.{CLUSTER}", "mode": "tcp",
            "enabled": True, "listen_port": port, "private": True, "access_groups": [group],
            "targets": [{"target_id": CLUSTER, "target_type": "cluster", "protocol": "tcp",
                         "host": "10.0.0.5", "port": 5432, "enabled": True,
                         "options": {"direct_upstream": True}}]}


def test_another_accounts_private_service_does_not_take_the_port(server) -> None:
    a, b = new_account(server), new_account(server)
    groups = {who: server.post("/api/groups", {"name": uniq("g")}, auth=who).json["id"]
              for who in (a, b)}
    first = server.post(SERVICES, private_tcp(groups[a], 5432), auth=a)
    assert first.status == 200, first
    # the same account's second service on its own tunnel address: refused
    again = server.post(SERVICES, private_tcp(groups[a], 5432), auth=a)
    assert again.status == 409, again
    # another account, on its own tunnel address
    theirs = server.post(SERVICES, private_tcp(groups[b], 5432), auth=b)
    assert theirs.status == 200, theirs  # today: 409 "port 5432 is already in use"
    assert theirs.json["listen_port"] == 5432
