"""Review 13 (finding): one tenant's mapping streams take the management gRPC
server's whole capacity, over real gRPC.

The gRPC server that carries ``ProxyService`` (and the peer channel) admits
at most ``MAX_CONCURRENT_RPCS`` (10,000) RPCs at once, streams included;
beyond that grpc answers every new call ``RESOURCE_EXHAUSTED``.  Peer
``Sync`` streams are admitted fairly between accounts
(:class:`~nbgateway.management.streamslots.StreamSlots`), but
``GetMappingUpdate`` streams are not bounded per account at all: any tenant
admin mints an account-scoped proxy token and opens streams under as many
``proxy_id`` values as it likes.  With the server full, the shared gateways'
``ValidateTunnelPeer`` (every private-service sign-in of every tenant),
``Authenticate``, status updates, reconnects and every peer's ``Sync`` are
refused.  The test shrinks the server's bound to 24 RPCs (the arithmetic is
the same at 10,000).

Expected: an account-scoped token holds at most a bounded number of live
mapping streams (the proposed fix: ``MappingStreams.max_per_account``, 64 by
default, set to 8 here; a stream superseding one of the account's own
proxy ids does not count twice); the next one is ``RESOURCE_EXHAUSTED``,
and other tenants' calls keep working.
"""

from __future__ import annotations

import grpc

from nbgateway._proto import proxy_service_pb2 as pb
from nbgateway.management import grpcserver
from nbgateway.management.model import Account
from tests.management import test_grpc_support as support
from tests.management.test_grpc_streams import GmuClient
from tests.management.test_grpc_support import DOMAIN, U_IP, Fixture, Harness, md

grpc_store, fx = support.grpc_store, support.fx

EVIL = "acct-evil"
SERVER_BOUND = 24
PER_ACCOUNT = 8


def test_one_tenants_streams_leave_room_for_everyone_else(fx: Fixture, monkeypatch) -> None:
    monkeypatch.setattr(grpcserver, "MAX_CONCURRENT_RPCS", SERVER_BOUND)
    h = Harness(fx.store, heartbeat_interval=0.2)
    h.servicer.streams.max_per_account = PER_ACCOUNT  # the proposed bound
    streams: list[GmuClient] = []
    try:
        shared = GmuClient(h, fx.token, "gw-shared",
                           capabilities=pb.ProxyCapabilities(supports_private_service=True))
        shared.snapshot()
        fx.store.accounts.create(Account(id=EVIL, domain="evil.test"))
        _, evil = fx.store.proxies.create_token("evil", account_id=EVIL)
        live, refused = 0, []
        for i in range(SERVER_BOUND + 4):
            c = GmuClient(h, evil, f"gw-evil-{i}", address="evil.byop.test")
            streams.append(c)
            try:
                c.snapshot()
                live += 1
            except grpc.RpcError as exc:
                refused.append(exc.code())
        # the victim's shared gateway validates a peer of the victim's private service
        try:
            r = h.stub.ValidateTunnelPeer(
                pb.ValidateTunnelPeerRequest(tunnel_ip=U_IP, domain=DOMAIN),
                metadata=md(fx.token))
        except grpc.RpcError as exc:  # today: RESOURCE_EXHAUSTED
            raise AssertionError(f"the victim's ValidateTunnelPeer was refused: {exc.code()} "
                                 f"(the hostile tenant holds {live} streams)") from None
        assert r.valid
        assert live == PER_ACCOUNT, live
        assert set(refused) == {grpc.StatusCode.RESOURCE_EXHAUSTED}
        # the shared gateway may still reconnect
        again = GmuClient(h, fx.token, "gw-shared-2")
        again.snapshot()
        again.close()
        shared.close()
    finally:
        for c in streams:
            c.close()
        h.close()
