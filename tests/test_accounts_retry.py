"""CreateProxyPeer retries of an account runtime (nbgateway.accounts): transient
failures are retried after a jittered exponential back-off on an injected
clock, permanent ones wait for the next mapping, a possibly spent one-time
token is handled, and the retry timer never outlives the runtime.  The last
test runs against the real management over gRPC."""

from __future__ import annotations

import dataclasses

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.task import Clock

from nbgateway._proto import proxy_service_pb2 as pb
from nbgateway.accounts import AccountRegistry, AccountRuntime, AccountSettings
from nbgateway.errors import (
    ManagementError,
    ManagementRateLimitedError,
    ManagementRejectedError,
    ManagementTimeoutError,
    ManagementUnauthenticatedError,
    ManagementUnavailableError,
)
from nbgateway.mgmt.client import GrpcManagementClient
from nbgateway.store.mappings import MappingStore
from nbgateway.wireguard.keys import key_to_base64, public_key
from nbgateway.wireguard.mux import DeviceMux
from tests.management import test_grpc_support as support
from tests.management.test_grpc_support import ACCOUNT, CLUSTER
from tests.test_accounts import Channel, mapping, network

grpc_store, fx, harness = support.grpc_store, support.fx, support.harness

ERROR, ACTIVE = pb.PROXY_STATUS_ERROR, pb.PROXY_STATUS_ACTIVE


class Mgmt:
    """A management whose CreateProxyPeer answers come from ``results`` (an
    exception: fails; ``"hold"``: a Deferred the test fires; otherwise ok)."""

    def __init__(self, *results):
        self.results = list(results)
        self.created = []
        self.status = []
        self.held: list[Deferred] = []

    def create_proxy_peer(self, service_id, account_id, token, key, cluster, endpoint=""):
        self.created.append((service_id, token, key))
        result = self.results.pop(0) if self.results else None
        if isinstance(result, Exception):
            return fail(result)
        if result == "hold":
            self.held.append(Deferred())
            return self.held[-1]
        return succeed(None)

    def send_status_update(self, service_id, account_id, status, *, error_message=None,
                           inbound_listener=None):
        self.status.append((service_id, status, error_message))
        return succeed(None)


def make(mgmt, clock=None, rand=lambda: 0.5):
    clock = clock or Clock()
    Channel.instances = []
    mux = DeviceMux()
    registry = AccountRegistry(lambda account: AccountRuntime(
        account, reactor=clock, mux=mux, mgmt=mgmt,
        settings=AccountSettings(cluster="gw.example"), peer_channel_factory=Channel,
        serve_inbound=lambda runtime: succeed([]), rand=rand))
    store = MappingStore()
    store.add_observer(registry)
    return store, registry, clock


def test_transient_failure_then_success_reaches_ready_and_active():
    mgmt = Mgmt(ManagementTimeoutError("deadline"), None)
    store, registry, clock = make(mgmt)
    store.apply_batch([mapping("s1", token="t1"), mapping("s2", token="t2")], False)
    runtime = registry.get("acct")
    assert runtime.state == "retrying" and len(mgmt.created) == 1
    msg = "proxy peer registration failed, retrying in 1 s: DEADLINE_EXCEEDED: deadline"
    assert sorted(mgmt.status) == [("s1", ERROR, msg), ("s2", ERROR, msg)]
    clock.advance(0.99)
    assert len(mgmt.created) == 1  # still backing off
    clock.advance(0.01)
    assert len(mgmt.created) == 2 and runtime.state == "connecting"
    # the newest token, the same key (a lost-but-successful attempt registered it)
    assert mgmt.created[0][:2] == ("s1", "t1") and mgmt.created[1][:2] == ("s2", "t2")
    assert mgmt.created[0][2] == mgmt.created[1][2]
    assert mgmt.created[1][2] == key_to_base64(public_key(runtime.private_key))
    Channel.instances[0].on_map(network())
    assert runtime.state == "ready"
    assert sorted(mgmt.status[-2:]) == [("s1", ACTIVE, None), ("s2", ACTIVE, None)]
    assert not clock.getDelayedCalls()


def test_backoff_doubles_with_jitter_and_is_capped():
    failures = [ManagementUnavailableError("down")] * 9 + [ManagementError("busy", code="ABORTED")]
    failures[6] = ManagementError("lost", code="ABORTED")  # a code without its own class
    mgmt = Mgmt(*failures)
    rands = iter([0.5, 0.5, 0.0, 1.0, 0.5, 0.5, 0.5, 0.5, 1.0, 0.0])
    store, registry, clock = make(mgmt, rand=lambda: next(rands))
    store.apply_batch([mapping("s1")], False)
    delays = []
    for _ in range(len(failures)):
        (call,) = clock.getDelayedCalls()
        delays.append(round(call.getTime() - clock.seconds(), 6))
        clock.advance(delays[-1])
    # 1, 2, 4*0.8, 8*1.2, 16, 32, 60 (64 capped), 60, 60 (capped after +20 %), 60*0.8
    assert delays == [1.0, 2.0, 3.2, 9.6, 16.0, 32.0, 60.0, 60.0, 60.0, 48.0]
    assert len(mgmt.created) == 11 and registry.get("acct").state == "connecting"
    assert registry.get("acct").retries == 0
    assert not clock.getDelayedCalls()
    assert mgmt.status[-1][2].startswith("proxy peer registration failed, retrying in 48 s: ")


def test_rate_limit_is_transient():
    mgmt = Mgmt(ManagementRateLimitedError("slow down"))
    store, registry, clock = make(mgmt)
    store.apply_batch([mapping("s1")], False)
    assert registry.get("acct").state == "retrying"
    clock.advance(1.0)
    assert registry.get("acct").state == "connecting"


def test_permanent_failure_is_not_retried():
    for exc in (ManagementRejectedError("proxy peer authentication failed: bad"),
                ManagementUnauthenticatedError("token validation: token expired")):
        mgmt = Mgmt(exc)
        store, registry, clock = make(mgmt)
        store.apply_batch([mapping("s1")], False)
        assert registry.get("acct").state == "failed"
        assert not clock.getDelayedCalls()
        clock.advance(3600)
        assert len(mgmt.created) == 1
        assert mgmt.status[-1][1] == ERROR
        assert mgmt.status[-1][2].startswith("proxy peer authentication failed: ")
        # the next mapping brings a fresh token and retries, as before
        store.apply_batch([mapping("s2", token="fresh")], False)
        assert mgmt.created[-1][1] == "fresh" and registry.get("acct").state == "connecting"


def test_stop_during_backoff_cancels_the_timer():
    mgmt = Mgmt(ManagementUnavailableError("down"))
    store, registry, clock = make(mgmt)
    store.apply_batch([mapping("s1")], False)
    assert len(clock.getDelayedCalls()) == 1
    store.apply_batch([pb.ProxyMapping(type=pb.UPDATE_TYPE_REMOVED, id="s1",
                                       account_id="acct")], False)
    assert registry.get("acct") is None
    assert not clock.getDelayedCalls()
    clock.advance(3600)
    assert len(mgmt.created) == 1


def test_stop_while_attempt_in_flight_neither_retries_nor_reports():
    mgmt = Mgmt("hold")
    store, registry, clock = make(mgmt)
    store.apply_batch([mapping("s1")], False)
    runtime = registry.get("acct")
    runtime.stop()
    reports = len(mgmt.status)
    mgmt.held[0].errback(ManagementTimeoutError("late"))
    assert runtime.state == "stopped" and not clock.getDelayedCalls()
    assert len(mgmt.status) == reports


def test_new_mapping_during_backoff_makes_no_second_attempt_and_uses_fresh_token():
    mgmt = Mgmt(ManagementTimeoutError("deadline"), "hold")
    store, registry, clock = make(mgmt)
    store.apply_batch([mapping("s1", token="t1")], False)
    runtime = registry.get("acct")
    store.apply_batch([mapping("s2", token="t2")], False)  # added during back-off
    store.apply_batch([mapping("s1", token="t3")], False)  # redelivered: fresh token
    assert len(mgmt.created) == 1 and len(clock.getDelayedCalls()) == 1
    assert mgmt.status[-1][:2] == ("s2", ERROR)  # the new service says why it waits
    clock.advance(1.0)
    assert len(mgmt.created) == 2 and mgmt.created[1][:2] == ("s1", "t3")
    assert runtime.state == "registering"
    # mappings while the attempt is in flight: still one attempt
    store.apply_batch([mapping("s3", token="t4")], False)
    assert len(mgmt.created) == 2 and not clock.getDelayedCalls()
    mgmt.held[0].callback(None)
    assert runtime.state == "connecting" and len(mgmt.created) == 2


def test_spent_token_waits_for_the_next_mapping_and_keeps_the_key():
    mgmt = Mgmt(ManagementTimeoutError("deadline"),
                ManagementUnauthenticatedError("token validation: invalid token"))
    store, registry, clock = make(mgmt)
    store.apply_batch([mapping("s1", token="t1")], False)
    clock.advance(1.0)
    runtime = registry.get("acct")
    assert runtime.state == "failed" and not clock.getDelayedCalls()
    assert mgmt.status[-1][1] == ERROR
    assert "may have been spent" in mgmt.status[-1][2]
    assert "waiting for a fresh token with the next mapping update" in mgmt.status[-1][2]
    store.apply_batch([mapping("s1", token="t2")], False)  # redelivered: fresh token
    assert mgmt.created[-1][1] == "t2" and runtime.state == "connecting"
    assert len({key for _, _, key in mgmt.created}) == 1


def test_permanent_failure_with_a_fresher_token_tries_it_at_once():
    mgmt = Mgmt("hold", None)
    store, registry, _ = make(mgmt)
    store.apply_batch([mapping("s1", token="t1")], False)
    store.apply_batch([mapping("s1", token="t2")], False)
    mgmt.held[0].errback(ManagementUnauthenticatedError("token validation: invalid token"))
    assert [t for _, t, _ in mgmt.created] == ["t1", "t2"]
    assert registry.get("acct").state == "connecting"


class LostAnswer:
    """The real management client, except that the first CreateProxyPeer's
    answer is lost after the server handled it (a deadline at bring-up)."""

    def __init__(self, client):
        self.client = client
        self.lost = 0

    def create_proxy_peer(self, *args, **kw):
        d = self.client.create_proxy_peer(*args, **kw)
        if self.lost:
            return d
        self.lost += 1

        def lose(_):
            raise ManagementTimeoutError("Deadline Exceeded")

        return d.addCallback(lose)

    def send_status_update(self, *args, **kw):
        return self.client.send_status_update(*args, **kw)


async def wait_for(predicate, what, timeout=10.0):
    from twisted.internet import task

    for _ in range(int(timeout / 0.01)):
        if predicate():
            return
        await task.deferLater(reactor, 0.01, lambda: None)
    raise AssertionError(f"timed out waiting for {what}")


@pytest_twisted.ensureDeferred
async def test_lost_answer_against_real_management(harness, fx):
    """Against the real management: the retry with the spent token is refused
    (UNAUTHENTICATED invalid token), the runtime says it waits for a fresh
    token, and the next mapping's token registers the same key (one peer)."""
    client = GrpcManagementClient(reactor, f"http://{harness.address}", fx.token,
                                  address=CLUSTER, proxy_id="gw-1", private=True)
    mgmt = LostAnswer(client)
    clock = Clock()
    mux = DeviceMux()
    Channel.instances = []
    registry = AccountRegistry(lambda account: AccountRuntime(
        account, reactor=clock, mux=mux, mgmt=mgmt, settings=AccountSettings(cluster=CLUSTER),
        peer_channel_factory=Channel, rand=lambda: 0.5))
    mappings = MappingStore()
    mappings.add_observer(registry)
    client.subscribe_mappings(mappings)
    client.startService()
    try:
        await wait_for(lambda: registry.get(ACCOUNT) is not None
                       and registry.get(ACCOUNT).state == "retrying", "first attempt")
        runtime = registry.get(ACCOUNT)
        key = key_to_base64(public_key(runtime.private_key))
        # the lost attempt did register the key on the server
        assert [p for p in fx.store.peers.list_proxy_peers(ACCOUNT) if p.key == key]
        clock.advance(1.0)
        await wait_for(lambda: runtime.state != "registering", "retry")
        assert runtime.state == "failed"
        await wait_for(lambda: (fx.store.services.get(ACCOUNT, "svc-1").meta.status == "error"
                       and "may have been spent" in fx.store.services.get(
                           ACCOUNT, "svc-1").meta.status_message),
                       "error status")
        svc = fx.store.services.get(ACCOUNT, "svc-1")
        flipped = not svc.pass_host_header  # a real change: a MODIFIED mapping, fresh token
        fx.store.services.update(dataclasses.replace(svc, pass_host_header=flipped))
        await wait_for(lambda: runtime.state == "connecting", "registration with fresh token")
        assert len([p for p in fx.store.peers.list_proxy_peers(ACCOUNT) if p.key == key]) == 1
        assert not clock.getDelayedCalls()
    finally:
        await registry.stop()
        await maybeDeferred(client.stopService)
