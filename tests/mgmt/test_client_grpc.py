"""GrpcManagementClient against a real grpcio ProxyService over TCP loopback.

The server (tests/mgmt/servicer.py) runs in this process on 127.0.0.1 and
records what it received; the client runs on the real reactor through the
thread bridge.  Waits are bounded polls (generous safety timeouts), never
timing assertions.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import reactor, task
from twisted.internet.defer import CancelledError, Deferred

from nbgateway import errors
from nbgateway._proto import proxy_service_pb2 as pb
from nbgateway.interfaces import IManagementClient
from nbgateway.mgmt.client import GrpcManagementClient, ManagementTarget
from nbgateway.mgmt.reconnect import Backoff
from nbgateway.store.mappings import MappingObserver, MappingStore
from tests.mgmt.servicer import TOKEN, CannedProxyService, Server, mapping

SAFETY = 10.0  # seconds; only bounds a hung test, never asserted on


async def wait_for(predicate, what: str, timeout: float = SAFETY) -> None:
    """Poll ``predicate`` on the reactor every 10 ms until true."""
    loops = int(timeout / 0.01)
    for _ in range(loops):
        if predicate():
            return
        await task.deferLater(reactor, 0.01, lambda: None)
    raise AssertionError(f"timed out waiting for {what}")


class HeldApplyStore(MappingStore):
    """A MappingStore whose apply_batch can be held open by the test."""

    def __init__(self) -> None:
        super().__init__()
        self.hold = False
        self.held: list[Deferred[None]] = []
        self.batches: list[list[str]] = []
        self.applied: list[int] = []
        self.streams_started = 0
        self.streams_ended = 0

    def stream_started(self) -> None:
        self.streams_started += 1
        super().stream_started()

    def stream_ended(self) -> None:
        self.streams_ended += 1
        super().stream_ended()

    def apply_batch(self, mappings, initial_sync_complete):
        self.batches.append([m.id for m in mappings])
        super().apply_batch(mappings, initial_sync_complete)
        n = len(self.batches)
        if not self.hold:
            self.applied.append(n)
            return None
        d: Deferred[None] = Deferred()
        d.addCallback(lambda _: self.applied.append(n))
        self.held.append(d)
        return d


class Env:
    """A running CannedProxyService server and clients pointed at it."""

    def __init__(self) -> None:
        self.cleanups: list = []
        self.servicer = CannedProxyService()
        self.server = Server(self.servicer)
        self.cleanups.append(self.server.stop)
        self.client = self.make_client()

    def make_client(self, token: str = TOKEN, **kw) -> GrpcManagementClient:
        kw.setdefault("backoff", Backoff(initial=0.02, max_interval=0.1))
        client = GrpcManagementClient(
            reactor, self.server.url, token, address="cluster.example", private=True, **kw
        )
        client.startService()
        self.cleanups.append(client.stopService)
        return client

    def close(self) -> None:
        for cleanup in reversed(self.cleanups):
            cleanup()


@pytest.fixture
def env():
    e = Env()
    yield e
    e.close()


def test_provides_interface(env: Env) -> None:
    assert IManagementClient.providedBy(env.client)


@pytest_twisted.ensureDeferred
async def test_validate_tunnel_peer_values_and_token_metadata(env: Env) -> None:
    resp = await env.client.validate_tunnel_peer("100.64.0.10", "app.example")
    assert resp.valid
    assert (resp.user_id, resp.user_email) == ("u1", "alice@example.com")
    assert list(resp.peer_group_names) == ["devs", "ops"]
    assert resp.session_token == "jwt"
    assert env.servicer.authorization == [f"Bearer {TOKEN}"]
    req = env.servicer.requests[-1]
    assert (req.tunnel_ip, req.domain) == ("100.64.0.10", "app.example")
    assert req.nbgw_account_id == ""
    await env.client.validate_tunnel_peer("100.64.0.10", "app.example", account_id="acct-1")
    assert env.servicer.requests[-1].nbgw_account_id == "acct-1"


@pytest_twisted.ensureDeferred
async def test_validate_tunnel_peer_denial_is_a_value(env: Env) -> None:
    resp = await env.client.validate_tunnel_peer("100.64.0.99", "app.example")
    assert not resp.valid
    assert resp.denied_reason == "peer_not_found"


@pytest_twisted.ensureDeferred
async def test_permission_denied_maps_to_typed_error(env: Env) -> None:
    with pytest.raises(errors.ManagementPermissionDeniedError) as cm:
        await env.client.validate_tunnel_peer("100.64.0.10", "deny.example")
    assert cm.value.code == "PERMISSION_DENIED"
    assert "account-scoped token" in cm.value.details


@pytest_twisted.ensureDeferred
async def test_wrong_token_is_unauthenticated(env: Env) -> None:
    client = env.make_client(token="wrong")
    with pytest.raises(errors.ManagementUnauthenticatedError):
        await client.validate_session("app.example", "good")
    assert "Bearer wrong" in env.servicer.authorization


@pytest_twisted.ensureDeferred
async def test_unreachable_server_is_unavailable(env: Env) -> None:
    env.server.stop()
    with pytest.raises(errors.ManagementUnavailableError):
        await env.client.validate_session("app.example", "good")


@pytest_twisted.ensureDeferred
async def test_deadline_exceeded_maps_to_timeout(env: Env) -> None:
    client = env.make_client(rpc_timeout=0.3)
    with pytest.raises(errors.ManagementTimeoutError):
        await client.validate_tunnel_peer("100.64.0.10", "block.example")


@pytest_twisted.ensureDeferred
async def test_cancel_cancels_the_rpc_at_the_server(env: Env) -> None:
    d = env.client.validate_tunnel_peer("100.64.0.10", "block.example")
    await wait_for(env.servicer.blocked_entered.is_set, "server handler entered")
    d.cancel()
    with pytest.raises(CancelledError):
        await d
    await wait_for(env.servicer.blocked_cancelled.is_set, "server saw the cancellation")
    env.servicer.release_blocked.set()
    # The late completion of the cancelled future never fires d again.
    await wait_for(lambda: env.client._bridge.live_calls == 0, "call forgotten")


@pytest_twisted.ensureDeferred
async def test_stop_service_fails_in_flight_calls_and_refuses_new_ones(env: Env) -> None:
    d = env.client.validate_tunnel_peer("100.64.0.10", "block.example")
    await wait_for(env.servicer.blocked_entered.is_set, "server handler entered")
    env.client.stopService()
    with pytest.raises(errors.ManagementCancelledError):
        await d
    with pytest.raises(errors.ManagementUnavailableError):
        await env.client.validate_session("app.example", "good")


@pytest_twisted.ensureDeferred
async def test_create_proxy_peer_success_and_extension_field(env: Env) -> None:
    result = await env.client.create_proxy_peer(
        "svc1", "acc1", "tok", "pubkey=", "cluster.example", wireguard_endpoint="gw:51820"
    )
    assert result is None
    req = env.servicer.requests[-1]
    assert req.wireguard_endpoint == "gw:51820"
    assert (req.service_id, req.token, req.cluster) == ("svc1", "tok", "cluster.example")


@pytest_twisted.ensureDeferred
async def test_create_proxy_peer_rejection_carries_message(env: Env) -> None:
    with pytest.raises(errors.ManagementRejectedError) as cm:
        await env.client.create_proxy_peer("s", "a", "expired", "k", "c")
    assert str(cm.value) == "proxy peer authentication failed: token expired"
    with pytest.raises(errors.ManagementRejectedError) as cm:
        await env.client.create_proxy_peer("s", "a", "silent", "k", "c")
    assert str(cm.value) == "proxy peer authentication failed: unknown error"


@pytest_twisted.ensureDeferred
async def test_status_update_inbound_listener_presence(env: Env) -> None:
    await env.client.send_status_update(
        "svc1", "acc1", pb.PROXY_STATUS_ACTIVE, inbound_listener=("100.64.0.2", 443, 80)
    )
    await env.client.send_status_update(
        "svc1", "acc1", pb.PROXY_STATUS_ERROR, error_message="bad target"
    )
    first, second = env.servicer.requests[-2:]
    assert first.HasField("inbound_listener")
    assert first.inbound_listener.tunnel_ip == "100.64.0.2"
    listener = first.inbound_listener
    assert (listener.https_port, listener.http_port) == (443, 80)
    assert not first.HasField("error_message")
    assert not second.HasField("inbound_listener")
    assert second.error_message == "bad target"


@pytest_twisted.ensureDeferred
async def test_access_log_authenticate_and_oidc(env: Env) -> None:
    entry = pb.AccessLog(log_id="l1", host="app.example", response_code=200, user_id="u1")
    assert await env.client.send_access_log(entry) is None
    assert env.servicer.requests[-1].log.log_id == "l1"
    ok = await env.client.authenticate("svc1", "acc1", pin="1234")
    assert ok.success
    bad = await env.client.authenticate("svc1", "acc1", password="nope")
    assert not bad.success
    url = await env.client.get_oidc_url("svc1", "acc1", "https://app.example/x")
    assert url.startswith("https://idp.example/auth")
    with pytest.raises(ValueError):
        await env.client.authenticate("svc1", "acc1")


def test_plaintext_allowed_for_loopback_and_tls_for_https() -> None:
    assert not ManagementTarget("http://127.0.0.1:33073").tls
    assert ManagementTarget("http://[::1]:1").address == "[::1]:1"
    assert ManagementTarget("http://localhost").address == "localhost:80"
    target = ManagementTarget("https://mgmt.example")
    assert target.tls
    assert target.address == "mgmt.example:443"


def test_plaintext_to_remote_host_refused_unless_allowed() -> None:
    with pytest.raises(ValueError):
        ManagementTarget("http://mgmt.example:33073")
    assert not ManagementTarget("http://mgmt.example:1", allow_insecure=True).tls
    with pytest.raises(ValueError):
        ManagementTarget("ftp://mgmt.example")


def test_constructor_starts_nothing() -> None:
    client = GrpcManagementClient(reactor, "http://127.0.0.1:1", "t", address="c")
    assert client._channel is None
    assert client._bridge is None


def test_auth_metadata_follows_the_token() -> None:
    # the peer channel's shared stream asks for it at each open (tap.py)
    client = GrpcManagementClient(reactor, "http://127.0.0.1:1", "first", address="c")
    ask = client.auth_metadata
    assert ask() == (("authorization", "Bearer first"),)
    client.set_token("second")
    assert ask() == (("authorization", "Bearer second"),)


class Recorder(MappingObserver):
    def __init__(self) -> None:
        self.reconciled: list[frozenset[str]] = []

    def snapshot_reconciled(self, removed_ids):
        self.reconciled.append(removed_ids)


@pytest_twisted.ensureDeferred
async def test_init_carries_all_five_capabilities(env: Env) -> None:
    store = HeldApplyStore()
    env.client.subscribe_mappings(store)
    await wait_for(lambda: store.initial_sync_complete, "empty snapshot applied")
    init = env.servicer.inits[0]
    assert init.address == "cluster.example"
    assert init.proxy_id.startswith("netbird-proxy-")
    assert init.HasField("started_at")
    caps = init.capabilities
    for name in (
        "supports_custom_ports",
        "require_subdomain",
        "supports_crowdsec",
        "private",
        "supports_private_service",
    ):
        assert caps.HasField(name), name
    assert caps.private
    assert caps.supports_private_service
    assert not caps.supports_crowdsec
    assert env.client.connected
    # The empty snapshot (one message, flag set) is acked too.
    await wait_for(lambda: env.servicer.events_of("ack") == [1], "ack of empty snapshot")


@pytest_twisted.ensureDeferred
async def test_batches_acked_only_after_apply_and_next_batch_after_ack(env: Env) -> None:
    env.servicer.snapshot = [
        [mapping("s1", "a.example"), mapping("s2", "b.example")],
        [mapping("s3", "c.example")],
        [mapping("s4", "d.example", account="acc2")],
    ]
    store = HeldApplyStore()
    store.hold = True
    env.client.subscribe_mappings(store)
    for k in (1, 2, 3):
        await wait_for(lambda k=k: len(store.held) == k, f"batch {k} delivered")
        # Give a wrong implementation a chance to ack early or read ahead.
        await task.deferLater(reactor, 0.1, lambda: None)
        assert env.servicer.events_of("ack") == list(range(1, k))
        assert env.servicer.events_of("sent") == list(range(1, k + 1))
        assert len(store.batches) == k
        store.held[k - 1].callback(None)
        await wait_for(lambda k=k: env.servicer.events_of("ack") == list(range(1, k + 1)), "ack")
    assert store.batches == [["s1", "s2"], ["s3"], ["s4"]]
    assert store.initial_sync_complete
    assert store.accounts() == frozenset({"acc1", "acc2"})
    assert store.lookup_domain("C.example.").id == "s3"

    # Incremental updates after the snapshot are acked once applied.
    store.hold = False
    update = pb.SyncMappingsResponse(
        mapping=[mapping("s3", "c.example", kind=pb.UPDATE_TYPE_REMOVED)]
    )
    env.servicer.updates.put(update)
    await wait_for(lambda: env.servicer.events_of("ack-update") == [1], "update acked")
    assert store.get("s3") is None


@pytest_twisted.ensureDeferred
async def test_falls_back_to_get_mapping_update_on_unimplemented(env: Env) -> None:
    env.servicer.sync_unimplemented = True
    env.servicer.snapshot = [[mapping("s1", "a.example")], [mapping("s2", "b.example")]]
    store = HeldApplyStore()
    env.client.subscribe_mappings(store)
    await wait_for(lambda: store.initial_sync_complete, "snapshot via GetMappingUpdate")
    assert not env.client.sync_supported
    assert len(env.servicer.events_of("sync-called")) == 1
    req = env.servicer.gmu_requests[0]
    assert req.capabilities.HasField("private")
    assert req.capabilities.supports_private_service
    assert store.batches == [["s1"], ["s2"]]
    # Incremental updates arrive on the fallback stream as well.
    env.servicer.updates.put(pb.SyncMappingsResponse(mapping=[mapping("s9", "z.example")]))
    await wait_for(lambda: store.get("s9") is not None, "update via fallback")


@pytest_twisted.ensureDeferred
async def test_reconnects_after_server_restart_and_reconciles(env: Env) -> None:
    env.servicer.snapshot = [[mapping("s1", "a.example"), mapping("s2", "b.example")]]
    store = HeldApplyStore()
    recorder = Recorder()
    store.add_observer(recorder)
    env.client.subscribe_mappings(store)
    await wait_for(lambda: len(recorder.reconciled) == 1, "first snapshot")
    assert store.streams_started == 1
    port = env.server.port
    env.server.stop()
    await wait_for(lambda: not env.client.connected, "disconnect noticed")
    # Last known mappings keep being served while management is down.
    assert store.lookup_domain("a.example").id == "s1"

    servicer2 = CannedProxyService()
    servicer2.snapshot = [[mapping("s2", "b.example"), mapping("s3", "c.example")]]
    server2 = Server(servicer2, port=port)
    env.cleanups.append(server2.stop)
    await wait_for(lambda: len(recorder.reconciled) == 2, "snapshot after restart")
    assert recorder.reconciled[1] == frozenset({"s1"})
    assert store.get("s1") is None
    assert {m.id for m in store.all()} == {"s2", "s3"}
    assert env.client.connected
    assert store.streams_started >= 2
    assert servicer2.authorization[0] == f"Bearer {TOKEN}"


@pytest_twisted.ensureDeferred
async def test_apply_failure_ends_stream_and_reconnects(env: Env) -> None:
    env.servicer.snapshot = [[mapping("s1", "a.example")]]

    class FailingOnce(HeldApplyStore):
        failed = False

        def apply_batch(self, mappings, initial_sync_complete):
            if not self.failed:
                self.failed = True
                raise RuntimeError("boom")
            return super().apply_batch(mappings, initial_sync_complete)

    store = FailingOnce()
    env.client.subscribe_mappings(store)
    await wait_for(lambda: store.initial_sync_complete, "resynced after failure")
    assert len(env.servicer.inits) == 2


@pytest_twisted.ensureDeferred
async def test_stalled_batch_hits_watchdog_and_resyncs(env: Env) -> None:
    env.servicer.snapshot = [[mapping("s1", "a.example")]]
    client = env.make_client(batch_watchdog=0.2)
    store = HeldApplyStore()
    store.hold = True
    client.subscribe_mappings(store)
    await wait_for(lambda: len(env.servicer.inits) >= 2, "reconnect after stall")
    assert env.servicer.events_of("ack") == []
    store.hold = False
    assert store.held[0].called  # cancelled by the watchdog
    for d in store.held:
        if not d.called:
            d.callback(None)
    await wait_for(lambda: store.initial_sync_complete, "applied after resync")
