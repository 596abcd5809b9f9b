"""End to end on one gRPC server (grpc.aio on a loop thread): a proxy registers its peer
with ProxyService.CreateProxyPeer, then logs in and syncs on the peer channel with the same
WireGuard key; a user peer of the access group sees it (ACL at once, DNS once the proxy
peer's stream is up)."""

from __future__ import annotations

import base64

import grpc
import pytest

from nbgateway._proto import management_pb2 as mpb
from nbgateway._proto import management_pb2_grpc as mpb_grpc
from nbgateway._proto import proxy_service_pb2 as ppb
from nbgateway._proto import proxy_service_pb2_grpc as ppb_grpc
from nbgateway.management.grpcloop import LoopServer
from nbgateway.management.model import Group
from nbgateway.management.peerchannel import add_to_server
from nbgateway.management.proxyservice import ProxyServiceServicer
from tests.management.test_peerchannel import (
    CLUSTER,
    WAIT,
    PeerClient,
    add_peer,
    private_service,
    remote_keys,
    store,  # noqa: F401  (fixture)
    synth_records,
)


@pytest.fixture
def both(store, tmp_path):  # noqa: F811
    proxy_servicer = ProxyServiceServicer(store)
    srv = LoopServer(handlers=[proxy_servicer.generic_handler()])
    peer_channel = add_to_server(srv, store, str(tmp_path / "k"))  # path form
    port = srv.add_insecure_port("127.0.0.1:0")
    proxy_servicer.start()
    srv.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield (ppb_grpc.ProxyServiceStub(channel), mpb_grpc.ManagementServiceStub(channel),
           proxy_servicer)
    peer_channel.close()
    proxy_servicer.stop()
    channel.close()
    srv.stop(grace=None).wait(WAIT)


def test_proxy_peer_from_CreateProxyPeer_logs_in_and_syncs(store, both):  # noqa: F811
    proxy_stub, mgmt_stub, proxy_servicer = both
    user_client = PeerClient(mgmt_stub)
    user = add_peer(store, user_client, "laptop", ip="100.64.0.10")
    group = store.groups.create(Group(id="grp-admins", account_id="acct-1", name="admins",
                                     peers=(user.id,)))
    svc = store.services.create(private_service([group.id]))
    _, bearer = store.proxies.create_token("shared", account_id=None)

    proxy_client = PeerClient(mgmt_stub)
    resp = proxy_stub.CreateProxyPeer(
        ppb.CreateProxyPeerRequest(
            service_id=svc.id, account_id="acct-1",
            token=proxy_servicer.tokens.issue("acct-1", svc.id),
            wireguard_public_key=proxy_client.key, cluster=CLUSTER,
        ),
        metadata=(("authorization", f"Bearer {bearer}"),), timeout=WAIT,
    )
    assert resp.success, resp.error_message
    proxy_peer = store.peers.get_by_key(proxy_client.key)
    assert proxy_peer is not None and proxy_peer.proxy

    login = proxy_client.login()
    assert login.peerConfig.address == f"{proxy_peer.ip}/10"

    user_stream = user_client.sync()
    proxy_stream = None
    try:
        m = user_stream.next()
        assert remote_keys(m) == {proxy_client.key}  # ACL regardless of connection state
        assert synth_records(m) == []  # no A record while the proxy peer is offline
        proxy_stream = proxy_client.sync()
        pm = proxy_stream.next()
        assert remote_keys(pm) == {user_client.key}
        assert sorted((r.Direction, r.PortInfo.range.start) for r in
                      pm.NetworkMap.FirewallRules) == [(mpb.IN, 80), (mpb.IN, 443)]
        # the proxy peer's stream marks it connected: the user gets the A record
        user_stream.wait_for(
            lambda m: synth_records(m) == [("myapp.eu.proxy.netbird.io.", proxy_peer.ip)]
        )
    finally:
        user_stream.cancel()
        if proxy_stream is not None:
            proxy_stream.cancel()
    assert base64.b64decode(proxy_client.key)  # the key the proxy registered is the login key
