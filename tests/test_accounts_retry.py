"""CreateProxyPeer retries of an account runtime (nbgateway.accounts): transient
failures are retried after a jittered exponential back-off on an injected
clock, permanent ones wait for the next mapping, a possibly spent one-time
token is handled, and the retry timer never outlives the runtime.  The last
test runs end to end against the real management (ProxyService and
ManagementService over gRPC, the real peer-channel client)."""

from __future__ import annotations

import dataclasses

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from nbgateway._proto import proxy_service_pb2 as pb
from nbgateway.accounts import AccountRegistry, AccountRuntime, AccountSettings
from nbgateway.errors import (
    ManagementError,
    ManagementPermissionDeniedError,
    ManagementRateLimitedError,
    ManagementRejectedError,
    ManagementTimeoutError,
    ManagementUnauthenticatedError,
    ManagementUnavailableError,
)
from nbgateway.management.model import Account
from nbgateway.management.store import Store
from nbgateway.store.mappings import MappingStore
from nbgateway.wireguard.keys import generate_private_key, key_to_base64, public_key
from nbgateway.wireguard.mux import DeviceMux
from tests import _real_management as real_management
from tests.management.test_peerchannel import CLUSTER as PC_CLUSTER
from tests.test_accounts import Channel, mapping, network

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


def test_permanent_failure_after_retries_replaces_every_retrying_status():
    mgmt = Mgmt(ManagementUnavailableError("down"),
                ManagementRejectedError("proxy peer authentication failed: revoked"))
    store, registry, clock = make(mgmt)
    store.apply_batch([mapping("s1", token="t1"), mapping("s2", token="t1b")], False)
    clock.advance(1.0)
    assert registry.get("acct").state == "failed" and not clock.getDelayedCalls()
    assert sorted(mgmt.status[-2:]) == [
        ("s1", ERROR, "proxy peer authentication failed: revoked"),
        ("s2", ERROR, "proxy peer authentication failed: revoked")]


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


def spent(mgmt_results=()):
    """A runtime whose first attempt's answer was lost and whose retry with
    the same token was refused: it is probing with a peer login."""
    mgmt = Mgmt(ManagementTimeoutError("deadline"),
                ManagementUnauthenticatedError("token validation: invalid token"),
                *mgmt_results)
    store, registry, clock = make(mgmt)
    store.apply_batch([mapping("s1", token="t1")], False)
    clock.advance(1.0)
    runtime = registry.get("acct")
    assert [t for _, t, _ in mgmt.created] == ["t1", "t1"]
    assert runtime.state == "connecting" and runtime.device is not None
    assert mgmt.status[-1][:2] == ("s1", ERROR)
    assert "checking with a peer login" in mgmt.status[-1][2]
    channel = Channel.instances[-1]
    assert channel.started and channel.key == runtime.private_key
    return mgmt, store, registry, clock, runtime, channel


def test_spent_token_probe_succeeds_when_the_lost_attempt_registered():
    mgmt, _, _, clock, runtime, channel = spent()
    channel.on_map(network())  # the login worked: the key is registered
    assert runtime.state == "ready" and mgmt.status[-1] == ("s1", ACTIVE, None)
    # a later login error is the channel's business, not a failed registration
    channel.on_error(Failure(ManagementPermissionDeniedError("no peer auth method")))
    clock.advance(0)
    assert runtime.state == "ready" and not clock.getDelayedCalls()


def test_spent_token_probe_refused_waits_for_the_next_mapping_and_keeps_the_key():
    mgmt, store, registry, clock, runtime, channel = spent()
    # a transient login error: the channel keeps trying on its own
    channel.on_error(Failure(ManagementUnavailableError("down")))
    assert not clock.getDelayedCalls() and runtime.state == "connecting"
    device = runtime.device
    channel.on_error(Failure(ManagementPermissionDeniedError(
        "no peer auth method provided, please use a setup key or interactive SSO login")))
    clock.advance(0)
    assert runtime.state == "failed" and runtime.device is None and runtime.peer_channel is None
    assert channel.stopped and device not in registry.get("acct").mux.devices
    assert "peer is not registered" in mgmt.status[-1][2]
    assert "waiting for a fresh token with the next mapping update" in mgmt.status[-1][2]
    assert not clock.getDelayedCalls()
    store.apply_batch([mapping("s1", token="t2")], False)  # redelivered: fresh token
    assert mgmt.created[-1][1] == "t2" and runtime.state == "connecting"
    assert len({key for _, _, key in mgmt.created}) == 1
    Channel.instances[-1].on_map(network())
    assert runtime.state == "ready"


def test_spent_token_probe_refused_uses_a_token_that_came_meanwhile():
    mgmt, store, _, clock, runtime, channel = spent()
    store.apply_batch([mapping("s1", token="t2")], False)  # during the probe
    assert len(mgmt.created) == 2
    channel.on_error(Failure(ManagementPermissionDeniedError("unknown peer")))
    clock.advance(0)
    assert mgmt.created[-1][1] == "t2" and runtime.state == "connecting"
    assert Channel.instances[-1] is not channel and Channel.instances[-1].started


def test_stop_during_probe_cancels_the_pending_teardown():
    _, _, registry, clock, runtime, channel = spent()
    channel.on_error(Failure(ManagementPermissionDeniedError("unknown peer")))
    assert len(clock.getDelayedCalls()) == 1
    registry.account_removed("acct")
    assert not clock.getDelayedCalls() and runtime.state == "stopped" and channel.stopped


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
    answer is lost after the server handled it (a deadline at bring-up).
    ``spent_elsewhere``: that first call spends the token on another key (a
    lost attempt that consumed the token without registering our key)."""

    def __init__(self, client, spent_elsewhere=False):
        self.client = client
        self.calls = []
        self.spent_elsewhere = spent_elsewhere

    def create_proxy_peer(self, *args, **kw):
        self.calls.append(args)
        if len(self.calls) == 1 and self.spent_elsewhere:
            args = (*args[:3], key_to_base64(public_key(generate_private_key())), *args[4:])
        d = self.client.create_proxy_peer(*args, **kw)
        if len(self.calls) > 1:
            return d

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


@pytest.fixture
def mstore(tmp_path):
    s = Store.open(f"sqlite:///{tmp_path / 'store.db'}", known_clusters=[PC_CLUSTER])
    s.accounts.create(Account(id="acct-1", domain="netbird.test"))
    yield s
    s.close()


@pytest.mark.parametrize("registered", [True, False], ids=["registered", "not-registered"])
@pytest_twisted.ensureDeferred
async def test_lost_answer_end_to_end_against_real_management(mstore, tmp_path, registered):
    """One gRPC server with the real ProxyService and ManagementService, the
    gateway's real management client and peer-channel client: the first
    CreateProxyPeer spends the token but its answer is lost; the retry with
    the same token is refused by the management (UNAUTHENTICATED invalid
    token); the runtime logs in with its key.  ``registered``: the lost call
    registered the key, the login gets a network map and the runtime is
    ready.  Otherwise the management refuses the login (PERMISSION_DENIED),
    the runtime goes failed and says so, and a service change (a mapping with
    a fresh token) registers it.  Either way the service ends active in the
    management's store with one proxy peer for the key."""
    management = real_management.start(mstore, str(tmp_path / "k"))
    svc = management.service
    mgmt = LostAnswer(management.client, spent_elsewhere=not registered)
    clock = Clock()
    registry = AccountRegistry(lambda account: AccountRuntime(
        account, reactor=clock, mux=DeviceMux(), mgmt=mgmt,
        settings=AccountSettings(cluster=PC_CLUSTER),
        peer_channel_factory=management.channel, rand=lambda: 0.5))
    management.start_client(registry)
    try:
        await wait_for(lambda: registry.get("acct-1") is not None
                       and registry.get("acct-1").state == "retrying", "first attempt")
        runtime = registry.get("acct-1")
        key = key_to_base64(public_key(runtime.private_key))
        # did the lost attempt register our key?
        assert (mstore.peers.get_by_key(key) is not None) is registered
        clock.advance(1.0)  # the retry, same token
        await wait_for(lambda: runtime.state != "registering", "retry answered")
        assert runtime.state == "connecting"  # refused: probing with a peer login
        assert mgmt.calls[1][2] == mgmt.calls[0][2]
        if not registered:
            # the real Login refuses the unknown key; the teardown runs on the runtime's clock
            # (the peer channel may first meet a transient error and back off
            # on the real reactor before its Login is refused: a longer wait,
            # and the channel's error counts in the message if it never comes)
            channel = runtime.peer_channel
            try:
                await wait_for(lambda: clock.getDelayedCalls(), "login refused", timeout=30.0)
            except AssertionError as e:
                raise AssertionError(f"{e}; peer channel errors: "
                                     f"{dict(channel.errors) if channel else None}") from None
            clock.advance(0)
            assert runtime.state == "failed" and runtime.peer_channel is None
            await wait_for(lambda: "peer is not registered" in mstore.services.get(
                "acct-1", svc.id).meta.status_message, "error status in the management")
            assert mstore.services.get("acct-1", svc.id).meta.status == "error"
            current = mstore.services.get("acct-1", svc.id)
            mstore.services.update(dataclasses.replace(  # a MODIFIED mapping, fresh token
                current, pass_host_header=not current.pass_host_header))
            await wait_for(lambda: len(mgmt.calls) == 3, "registration with the fresh token")
            assert mgmt.calls[2][2] != mgmt.calls[0][2]
        await wait_for(lambda: runtime.state == "ready", "network map over the peer channel")
        assert runtime.tunnel_ip == mstore.peers.get_by_key(key).ip
        await wait_for(lambda: mstore.services.get("acct-1", svc.id).meta.status == "active",
                       "service active in the management")
        assert len([p for p in mstore.peers.list_proxy_peers("acct-1") if p.key == key]) == 1
        assert len(mgmt.calls) == (2 if registered else 3) and not clock.getDelayedCalls()
    finally:
        await registry.stop()
        await management.stop()
