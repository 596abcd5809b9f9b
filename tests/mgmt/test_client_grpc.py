"""GrpcManagementClient against a real grpcio ProxyService over TCP loopback.

The server (tests/mgmt/servicer.py) runs in this process on 127.0.0.1 and
records what it received; the client runs on the real reactor through the
thread bridge.  Waits are bounded polls (generous safety timeouts), never
timing assertions.
"""

from __future__ import annotations

from twisted.internet import defer, reactor, task
from twisted.internet.defer import CancelledError, Deferred
from twisted.trial import unittest

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


class ClientTestCase(unittest.TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.servicer = CannedProxyService()
        self.server = Server(self.servicer)
        self.addCleanup(self.server.stop)
        self.client = self.make_client()

    def make_client(self, token: str = TOKEN, **kw) -> GrpcManagementClient:
        kw.setdefault("backoff", Backoff(initial=0.02, max_interval=0.1))
        client = GrpcManagementClient(
            reactor, self.server.url, token, address="cluster.example", private=True, **kw
        )
        client.startService()
        self.addCleanup(client.stopService)
        return client


class UnaryTests(ClientTestCase):
    def test_provides_interface(self) -> None:
        self.assertTrue(IManagementClient.providedBy(self.client))

    async def test_validate_tunnel_peer_values_and_token_metadata(self) -> None:
        resp = await self.client.validate_tunnel_peer("100.64.0.10", "app.example")
        self.assertTrue(resp.valid)
        self.assertEqual((resp.user_id, resp.user_email), ("u1", "alice@example.com"))
        self.assertEqual(list(resp.peer_group_names), ["devs", "ops"])
        self.assertEqual(resp.session_token, "jwt")
        self.assertEqual(self.servicer.authorization, [f"Bearer {TOKEN}"])
        req = self.servicer.requests[-1]
        self.assertEqual((req.tunnel_ip, req.domain), ("100.64.0.10", "app.example"))

    async def test_validate_tunnel_peer_denial_is_a_value(self) -> None:
        resp = await self.client.validate_tunnel_peer("100.64.0.99", "app.example")
        self.assertFalse(resp.valid)
        self.assertEqual(resp.denied_reason, "peer_not_found")

    async def test_permission_denied_maps_to_typed_error(self) -> None:
        with self.assertRaises(errors.ManagementPermissionDeniedError) as cm:
            await self.client.validate_tunnel_peer("100.64.0.10", "deny.example")
        self.assertEqual(cm.exception.code, "PERMISSION_DENIED")
        self.assertIn("account-scoped token", cm.exception.details)

    async def test_wrong_token_is_unauthenticated(self) -> None:
        client = self.make_client(token="wrong")
        with self.assertRaises(errors.ManagementUnauthenticatedError):
            await client.validate_session("app.example", "good")
        self.assertIn("Bearer wrong", self.servicer.authorization)

    async def test_unreachable_server_is_unavailable(self) -> None:
        self.server.stop()
        with self.assertRaises(errors.ManagementUnavailableError):
            await self.client.validate_session("app.example", "good")

    async def test_deadline_exceeded_maps_to_timeout(self) -> None:
        client = self.make_client(rpc_timeout=0.3)
        with self.assertRaises(errors.ManagementTimeoutError):
            await client.validate_tunnel_peer("100.64.0.10", "block.example")

    async def test_cancel_cancels_the_rpc_at_the_server(self) -> None:
        d = self.client.validate_tunnel_peer("100.64.0.10", "block.example")
        await wait_for(self.servicer.blocked_entered.is_set, "server handler entered")
        d.cancel()
        with self.assertRaises(CancelledError):
            await d
        await wait_for(self.servicer.blocked_cancelled.is_set, "server saw the cancellation")
        self.servicer.release_blocked.set()
        # The late completion of the cancelled future never fires d again.
        await wait_for(lambda: self.client._bridge.live_calls == 0, "call forgotten")

    async def test_stop_service_fails_in_flight_calls_and_refuses_new_ones(self) -> None:
        d = self.client.validate_tunnel_peer("100.64.0.10", "block.example")
        await wait_for(self.servicer.blocked_entered.is_set, "server handler entered")
        self.client.stopService()
        with self.assertRaises(errors.ManagementCancelledError):
            await d
        with self.assertRaises(errors.ManagementUnavailableError):
            await self.client.validate_session("app.example", "good")

    async def test_create_proxy_peer_success_and_extension_field(self) -> None:
        result = await self.client.create_proxy_peer(
            "svc1", "acc1", "tok", "pubkey=", "cluster.example", wireguard_endpoint="gw:51820"
        )
        self.assertIsNone(result)
        req = self.servicer.requests[-1]
        self.assertEqual(req.wireguard_endpoint, "gw:51820")
        self.assertEqual(
            (req.service_id, req.token, req.cluster), ("svc1", "tok", "cluster.example")
        )

    async def test_create_proxy_peer_rejection_carries_message(self) -> None:
        with self.assertRaises(errors.ManagementRejectedError) as cm:
            await self.client.create_proxy_peer("s", "a", "expired", "k", "c")
        self.assertEqual(str(cm.exception), "proxy peer authentication failed: token expired")
        with self.assertRaises(errors.ManagementRejectedError) as cm:
            await self.client.create_proxy_peer("s", "a", "silent", "k", "c")
        self.assertEqual(str(cm.exception), "proxy peer authentication failed: unknown error")

    async def test_status_update_inbound_listener_presence(self) -> None:
        await self.client.send_status_update(
            "svc1", "acc1", pb.PROXY_STATUS_ACTIVE, inbound_listener=("100.64.0.2", 443, 80)
        )
        await self.client.send_status_update(
            "svc1", "acc1", pb.PROXY_STATUS_ERROR, error_message="bad target"
        )
        first, second = self.servicer.requests[-2:]
        self.assertTrue(first.HasField("inbound_listener"))
        self.assertEqual(first.inbound_listener.tunnel_ip, "100.64.0.2")
        self.assertEqual(
            (first.inbound_listener.https_port, first.inbound_listener.http_port), (443, 80)
        )
        self.assertFalse(first.HasField("error_message"))
        self.assertFalse(second.HasField("inbound_listener"))
        self.assertEqual(second.error_message, "bad target")

    async def test_access_log_authenticate_and_oidc(self) -> None:
        entry = pb.AccessLog(log_id="l1", host="app.example", response_code=200, user_id="u1")
        self.assertIsNone(await self.client.send_access_log(entry))
        self.assertEqual(self.servicer.requests[-1].log.log_id, "l1")
        ok = await self.client.authenticate("svc1", "acc1", pin="1234")
        self.assertTrue(ok.success)
        bad = await self.client.authenticate("svc1", "acc1", password="nope")
        self.assertFalse(bad.success)
        url = await self.client.get_oidc_url("svc1", "acc1", "https://app.example/x")
        self.assertTrue(url.startswith("https://idp.example/auth"))
        with self.assertRaises(ValueError):
            await self.client.authenticate("svc1", "acc1")


class TargetTests(unittest.TestCase):
    def test_plaintext_allowed_for_loopback_and_tls_for_https(self) -> None:
        self.assertFalse(ManagementTarget("http://127.0.0.1:33073").tls)
        self.assertEqual(ManagementTarget("http://[::1]:1").address, "[::1]:1")
        self.assertEqual(ManagementTarget("http://localhost").address, "localhost:80")
        target = ManagementTarget("https://mgmt.example")
        self.assertTrue(target.tls)
        self.assertEqual(target.address, "mgmt.example:443")

    def test_plaintext_to_remote_host_refused_unless_allowed(self) -> None:
        with self.assertRaises(ValueError):
            ManagementTarget("http://mgmt.example:33073")
        self.assertFalse(ManagementTarget("http://mgmt.example:1", allow_insecure=True).tls)
        with self.assertRaises(ValueError):
            ManagementTarget("ftp://mgmt.example")

    def test_constructor_starts_nothing(self) -> None:
        client = GrpcManagementClient(reactor, "http://127.0.0.1:1", "t", address="c")
        self.assertIsNone(client._channel)
        self.assertIsNone(client._bridge)


class Recorder(MappingObserver):
    def __init__(self) -> None:
        self.reconciled: list[frozenset[str]] = []

    def snapshot_reconciled(self, removed_ids):
        self.reconciled.append(removed_ids)


class MappingStreamTests(ClientTestCase):
    async def test_init_carries_all_five_capabilities(self) -> None:
        store = HeldApplyStore()
        self.client.subscribe_mappings(store)
        await wait_for(lambda: store.initial_sync_complete, "empty snapshot applied")
        init = self.servicer.inits[0]
        self.assertEqual(init.address, "cluster.example")
        self.assertTrue(init.proxy_id.startswith("netbird-proxy-"))
        self.assertTrue(init.HasField("started_at"))
        caps = init.capabilities
        for name in (
            "supports_custom_ports",
            "require_subdomain",
            "supports_crowdsec",
            "private",
            "supports_private_service",
        ):
            self.assertTrue(caps.HasField(name), name)
        self.assertTrue(caps.private)
        self.assertTrue(caps.supports_private_service)
        self.assertFalse(caps.supports_crowdsec)
        self.assertTrue(self.client.connected)
        # The empty snapshot (one message, flag set) is acked too.
        await wait_for(lambda: self.servicer.events_of("ack") == [1], "ack of empty snapshot")

    async def test_batches_acked_only_after_apply_and_next_batch_after_ack(self) -> None:
        self.servicer.snapshot = [
            [mapping("s1", "a.example"), mapping("s2", "b.example")],
            [mapping("s3", "c.example")],
            [mapping("s4", "d.example", account="acc2")],
        ]
        store = HeldApplyStore()
        store.hold = True
        self.client.subscribe_mappings(store)
        for k in (1, 2, 3):
            await wait_for(lambda k=k: len(store.held) == k, f"batch {k} delivered")
            # Give a wrong implementation a chance to ack early or read ahead.
            await task.deferLater(reactor, 0.1, lambda: None)
            self.assertEqual(self.servicer.events_of("ack"), list(range(1, k)))
            self.assertEqual(self.servicer.events_of("sent"), list(range(1, k + 1)))
            self.assertEqual(len(store.batches), k)
            store.held[k - 1].callback(None)
            await wait_for(
                lambda k=k: self.servicer.events_of("ack") == list(range(1, k + 1)), "ack"
            )
        self.assertEqual(store.batches, [["s1", "s2"], ["s3"], ["s4"]])
        self.assertTrue(store.initial_sync_complete)
        self.assertEqual(store.accounts(), frozenset({"acc1", "acc2"}))
        self.assertEqual(store.lookup_domain("C.example.").id, "s3")

        # Incremental updates after the snapshot are acked once applied.
        store.hold = False
        update = pb.SyncMappingsResponse(
            mapping=[mapping("s3", "c.example", kind=pb.UPDATE_TYPE_REMOVED)]
        )
        self.servicer.updates.put(update)
        await wait_for(lambda: self.servicer.events_of("ack-update") == [1], "update acked")
        self.assertIsNone(store.get("s3"))

    async def test_falls_back_to_get_mapping_update_on_unimplemented(self) -> None:
        self.servicer.sync_unimplemented = True
        self.servicer.snapshot = [[mapping("s1", "a.example")], [mapping("s2", "b.example")]]
        store = HeldApplyStore()
        self.client.subscribe_mappings(store)
        await wait_for(lambda: store.initial_sync_complete, "snapshot via GetMappingUpdate")
        self.assertFalse(self.client.sync_supported)
        self.assertEqual(len(self.servicer.events_of("sync-called")), 1)
        req = self.servicer.gmu_requests[0]
        self.assertTrue(req.capabilities.HasField("private"))
        self.assertTrue(req.capabilities.supports_private_service)
        self.assertEqual(store.batches, [["s1"], ["s2"]])
        # Incremental updates arrive on the fallback stream as well.
        self.servicer.updates.put(pb.SyncMappingsResponse(mapping=[mapping("s9", "z.example")]))
        await wait_for(lambda: store.get("s9") is not None, "update via fallback")

    async def test_reconnects_after_server_restart_and_reconciles(self) -> None:
        self.servicer.snapshot = [[mapping("s1", "a.example"), mapping("s2", "b.example")]]
        store = HeldApplyStore()
        recorder = Recorder()
        store.add_observer(recorder)
        self.client.subscribe_mappings(store)
        await wait_for(lambda: len(recorder.reconciled) == 1, "first snapshot")
        self.assertEqual(store.streams_started, 1)
        port = self.server.port
        self.server.stop()
        await wait_for(lambda: not self.client.connected, "disconnect noticed")
        # Last known mappings keep being served while management is down.
        self.assertEqual(store.lookup_domain("a.example").id, "s1")

        servicer2 = CannedProxyService()
        servicer2.snapshot = [[mapping("s2", "b.example"), mapping("s3", "c.example")]]
        server2 = Server(servicer2, port=port)
        self.addCleanup(server2.stop)
        await wait_for(lambda: len(recorder.reconciled) == 2, "snapshot after restart")
        self.assertEqual(recorder.reconciled[1], frozenset({"s1"}))
        self.assertIsNone(store.get("s1"))
        self.assertEqual({m.id for m in store.all()}, {"s2", "s3"})
        self.assertTrue(self.client.connected)
        self.assertGreaterEqual(store.streams_started, 2)
        self.assertEqual(servicer2.authorization[0], f"Bearer {TOKEN}")

    async def test_apply_failure_ends_stream_and_reconnects(self) -> None:
        self.servicer.snapshot = [[mapping("s1", "a.example")]]

        class FailingOnce(HeldApplyStore):
            failed = False

            def apply_batch(self, mappings, initial_sync_complete):
                if not self.failed:
                    self.failed = True
                    raise RuntimeError("boom")
                return super().apply_batch(mappings, initial_sync_complete)

        store = FailingOnce()
        self.client.subscribe_mappings(store)
        await wait_for(lambda: store.initial_sync_complete, "resynced after failure")
        self.assertEqual(len(self.servicer.inits), 2)
        self.flushLoggedErrors(RuntimeError)

    async def test_stalled_batch_hits_watchdog_and_resyncs(self) -> None:
        self.servicer.snapshot = [[mapping("s1", "a.example")]]
        client = self.make_client(batch_watchdog=0.2)
        store = HeldApplyStore()
        store.hold = True
        client.subscribe_mappings(store)
        await wait_for(lambda: len(self.servicer.inits) >= 2, "reconnect after stall")
        self.assertEqual(self.servicer.events_of("ack"), [])
        store.hold = False
        self.assertTrue(store.held[0].called)  # cancelled by the watchdog
        for d in store.held:
            if not d.called:
                d.callback(None)
        await wait_for(lambda: store.initial_sync_complete, "applied after resync")
        self.flushLoggedErrors(defer.CancelledError, errors.ManagementStreamClosedError)
