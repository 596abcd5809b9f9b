"""The gateway's own ProxyService client (nbgateway.mgmt.client.GrpcManagementClient) against
this management server over TCP loopback: snapshot into a MappingStore, live updates,
ValidateTunnelPeer and CreateProxyPeer with the mapping's one-time token.  Waits are bounded
polls on the reactor (safety timeouts only)."""

from __future__ import annotations

import dataclasses

import pytest_twisted
from twisted.internet import reactor, task
from twisted.internet.defer import maybeDeferred

from nbgateway.mgmt.client import GrpcManagementClient
from nbgateway.store.mappings import MappingStore
from tests.management import test_grpc_support as support
from tests.management.test_grpc_support import (
    ACCOUNT,
    CLUSTER,
    DOMAIN,
    U_IP,
    Fixture,
    Harness,
    make_service,
    wg_key,
)

grpc_store, fx, harness = support.grpc_store, support.fx, support.harness


async def wait_for(predicate, what: str, timeout: float = 10.0) -> None:
    for _ in range(int(timeout / 0.01)):
        if predicate():
            return
        await task.deferLater(reactor, 0.01, lambda: None)
    raise AssertionError(f"timed out waiting for {what}")


def started_client(harness: Harness, fx: Fixture, proxy_id: str,
                   **kw) -> tuple[GrpcManagementClient, MappingStore]:
    """A gateway's management client for ``CLUSTER`` on ``harness`` (``kw``: its
    capabilities), started, its mappings going into a new store."""
    client = GrpcManagementClient(reactor, f"http://{harness.address}", fx.token,
                                  address=CLUSTER, proxy_id=proxy_id, **kw)
    mappings = MappingStore()
    client.subscribe_mappings(mappings)
    client.startService()
    return client, mappings


@pytest_twisted.ensureDeferred
async def test_gateway_client_against_management_server(harness: Harness, fx: Fixture) -> None:
    client, mappings = started_client(harness, fx, "gw-1", private=True)
    try:
        await wait_for(lambda: mappings.get("svc-1") is not None, "snapshot")
        m = mappings.get("svc-1")
        assert m.private and m.domain == DOMAIN and m.auth_token
        row = fx.store.proxies.get("gw-1")
        assert row.status == "connected" and row.capabilities.private is True

        r = await client.validate_tunnel_peer(U_IP, DOMAIN)
        assert r.valid and r.user_id == "alice" and r.session_token

        key = wg_key()
        await client.create_proxy_peer("svc-1", ACCOUNT, m.auth_token, key, CLUSTER,
                                       wireguard_endpoint="gw.example:51820")
        (peer,) = [p for p in fx.store.peers.list_proxy_peers(ACCOUNT) if p.key == key]
        assert peer.endpoint == "gw.example:51820"

        # live updates reach the gateway's store (acked by the client per message)
        s2 = fx.store.services.create(make_service("live", private=True,
                                                  access_groups=("grp-admins",)))
        await wait_for(lambda: mappings.get(s2.id) is not None, "CREATED broadcast")
        assert mappings.get(s2.id).private
        fx.store.services.update(dataclasses.replace(s2, private=False, access_groups=None))
        await wait_for(lambda: not mappings.get(s2.id).private, "MODIFIED broadcast")
        fx.store.services.delete(ACCOUNT, s2.id)
        await wait_for(lambda: mappings.get(s2.id) is None, "REMOVED broadcast")
    finally:
        await maybeDeferred(client.stopService)


@pytest_twisted.ensureDeferred
async def test_gateway_client_resumes_by_revision(harness: Harness, fx: Fixture) -> None:
    """After its stream drops, the gateway presents the last revision it applied and
    the management sends only the changes since; nothing it had is dropped."""
    streams = harness.servicer.streams
    opened: list[bool] = []  # per stream: resumed?
    original_open = streams.open

    def spy(*args, **kwargs):
        conn = original_open(*args, **kwargs)
        opened.append(conn.resume is not None)
        return conn

    streams.open = spy  # type: ignore[method-assign]
    client, mappings = started_client(harness, fx, "gw-r", private=True)
    try:
        await wait_for(lambda: mappings.get("svc-1") is not None and client.revision,
                       "snapshot and its revision")
        assert opened == [False]  # first stream: no revision to present, full snapshot
        first_revision = client.revision
        for conn in harness.servicer.connections():
            conn.cancel("test: drop the stream")
        s3 = fx.store.services.create(make_service("while-away", private=True,
                                                  access_groups=("grp-admins",)))
        await wait_for(lambda: mappings.get(s3.id) is not None, "the change after reconnect")
        await wait_for(lambda: len(opened) == 2, "the second stream")
        assert opened == [False, True]  # the second stream resumed
        assert mappings.get("svc-1") is not None  # a resume never reconciles it away
        await wait_for(lambda: client.revision > first_revision, "the newer revision")
        # and the stream lives on: later changes still arrive
        fx.store.services.delete(ACCOUNT, s3.id)
        await wait_for(lambda: mappings.get(s3.id) is None, "REMOVED after the resume")
    finally:
        await maybeDeferred(client.stopService)
