"""The ProxyService server on both store backends (SQLite and PostgreSQL, via the
``store`` fixture of tests/management/conftest.py): tunnel validation, snapshot,
broadcast and CreateProxyPeer end to end, plus concurrent validations."""

from __future__ import annotations

import dataclasses
from concurrent import futures

from nbgateway._proto import proxy_service_pb2 as pb
from nbgateway.management.store import Store
from tests.management.test_grpc_support import (
    ACCOUNT,
    CLUSTER,
    DOMAIN,
    U_IP,
    X_CAPS,
    Fixture,
    Harness,
    SyncClient,
    caps,
    make_service,
    md,
    wg_key,
)


def test_grpc_end_to_end_on_backend(store: Store) -> None:
    fx = Fixture(store)
    h = Harness(store, heartbeat_interval=0.2)
    try:
        r = h.stub.ValidateTunnelPeer(
            pb.ValidateTunnelPeerRequest(tunnel_ip=U_IP, domain=DOMAIN), metadata=md(fx.token)
        )
        assert r.valid and r.user_id == "alice" and list(r.peer_group_names) == ["admins"]

        c = SyncClient(h.stub, fx.token, "proxy-x", capabilities=caps(**X_CAPS))
        snap = {m.id: m for m in c.snapshot()}
        assert snap["svc-1"].private
        assert store.proxies.get("proxy-x").status == "connected"

        assert h.stub.CreateProxyPeer(
            pb.CreateProxyPeerRequest(service_id="svc-1", account_id=ACCOUNT,
                                      token=snap["svc-1"].auth_token,
                                      wireguard_public_key=wg_key(), cluster=CLUSTER,
                                      wireguard_endpoint="gw.example:51820"),
            metadata=md(fx.token),
        ).success
        assert [p.endpoint for p in store.peers.list_proxy_peers(ACCOUNT) if p.endpoint] == [
            "gw.example:51820"]

        s2 = store.services.create(make_service("s2", private=True,
                                               access_groups=("grp-admins",)))
        (m,) = c.next().mapping
        c.ack()
        assert (m.id, m.type, m.private) == (s2.id, pb.UPDATE_TYPE_CREATED, True)
        store.services.update(dataclasses.replace(s2, private=False, access_groups=None))
        (m,) = c.next().mapping
        assert (m.type, m.private) == (pb.UPDATE_TYPE_MODIFIED, False)
        c.close()

        # concurrent validations from several client threads
        req = pb.ValidateTunnelPeerRequest(tunnel_ip=U_IP, domain=DOMAIN)
        with futures.ThreadPoolExecutor(8) as pool:
            results = list(pool.map(
                lambda _: h.stub.ValidateTunnelPeer(req, metadata=md(fx.token)).valid,
                range(64)))
        assert all(results)
    finally:
        h.close()
