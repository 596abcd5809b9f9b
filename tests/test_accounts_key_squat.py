"""Key squatting (tenant isolation): another tenant registered the account's
WireGuard public key first as its own peer, so CreateProxyPeer refuses it
(ALREADY_EXISTS, or ``success=false`` saying so).  The account runtime
rotates the key (a new private key, persisted where the old one was), counts
and logs it, and registers again after the back-off, at most
MAX_KEY_ROTATIONS times in a row.  The last test runs against the real
management over gRPC: the squatted key is refused before the one-time token
is spent, and the rotated key registers with that same token."""

from __future__ import annotations

import os

import pytest
import pytest_twisted
from twisted.internet.task import Clock

from nbgateway._proto import proxy_service_pb2 as pb
from nbgateway.accounts import (
    MAX_KEY_ROTATIONS,
    AccountRegistry,
    AccountRuntime,
    AccountSettings,
    AccountStats,
)
from nbgateway.errors import ManagementError, ManagementRejectedError
from nbgateway.management.model import Account, Peer
from nbgateway.management.store import Store
from nbgateway.service._accounts import account_key
from nbgateway.store.mappings import MappingStore
from nbgateway.wireguard.keys import generate_private_key, key_to_base64, public_key
from nbgateway.wireguard.mux import DeviceMux
from tests import _real_management as real_management
from tests.management.test_peerchannel import CLUSTER as PC_CLUSTER
from tests.test_accounts import Channel, mapping, network
from tests.test_accounts_retry import Mgmt, wait_for

ERROR, ACTIVE = pb.PROXY_STATUS_ERROR, pb.PROXY_STATUS_ACTIVE


def taken() -> ManagementError:
    return ManagementError("wireguard_public_key belongs to another peer", code="ALREADY_EXISTS")


class Keys:
    """A key_factory that records whether each key was asked for as a replacement."""

    def __init__(self):
        self.calls: list[bool] = []
        self.keys: list[bytes] = []

    def __call__(self, fresh=False):
        self.calls.append(fresh)
        self.keys.append(generate_private_key())
        return self.keys[-1]


def make(mgmt, keys, stats=None):
    clock = Clock()
    Channel.instances = []
    mux = DeviceMux()
    registry = AccountRegistry(lambda account: AccountRuntime(
        account, reactor=clock, mux=mux, mgmt=mgmt,
        settings=AccountSettings(cluster="gw.example", stats=stats),
        peer_channel_factory=Channel, serve_inbound=lambda runtime: [],
        key_factory=keys, rand=lambda: 0.5))
    store = MappingStore()
    store.add_observer(registry)
    return store, registry, clock


def pub(key: bytes) -> str:
    return key_to_base64(public_key(key))


def test_a_squatted_key_is_rotated_and_registered_again_after_the_backoff():
    mgmt, keys, stats = Mgmt(taken(), None), Keys(), AccountStats()
    store, registry, clock = make(mgmt, keys, stats)
    store.apply_batch([mapping("s1", token="t1")], False)
    runtime = registry.get("acct")
    assert runtime.state == "retrying" and keys.calls == [False, True]
    assert stats.key_rotations == 1 and runtime.key_rotations == 1
    assert runtime.private_key == keys.keys[1]
    (sid, status, error), = mgmt.status
    assert (sid, status) == ("s1", ERROR)
    assert "registered by another peer; rotated the key, retrying in 1 s" in error
    assert len(mgmt.created) == 1
    clock.advance(0.99)
    assert len(mgmt.created) == 1  # no tight loop: the back-off first
    clock.advance(0.01)
    assert runtime.state == "connecting"
    first, second = mgmt.created
    assert first[2] == pub(keys.keys[0]) and second[2] == pub(keys.keys[1])
    assert first[1] == second[1] == "t1"  # the same token (management did not spend it)
    assert Channel.instances[0].key == keys.keys[1]  # the peer channel logs in with it
    Channel.instances[0].on_map(network())
    assert runtime.state == "ready" and runtime.key_rotations == 0
    assert mgmt.status[-1] == ("s1", ACTIVE, None)
    assert not clock.getDelayedCalls()


def test_rotations_are_bounded_then_failed_until_the_next_mapping():
    mgmt, keys, stats = Mgmt(*[taken()] * (MAX_KEY_ROTATIONS + 2)), Keys(), AccountStats()
    store, registry, clock = make(mgmt, keys, stats)
    store.apply_batch([mapping("s1", token="t1")], False)
    runtime = registry.get("acct")
    delays = []
    while clock.getDelayedCalls():
        (call,) = clock.getDelayedCalls()
        delays.append(call.getTime() - clock.seconds())
        clock.advance(delays[-1])
    assert delays == [1.0, 2.0, 4.0]  # the registration back-off, doubling
    assert runtime.state == "failed" and stats.key_rotations == MAX_KEY_ROTATIONS
    assert len(mgmt.created) == MAX_KEY_ROTATIONS + 1
    assert len({key for _, _, key in mgmt.created}) == MAX_KEY_ROTATIONS + 1
    assert "belongs to another peer" in mgmt.status[-1][2]
    # the next mapping tries again with the last key; refused, it may rotate again
    last = keys.keys[-1]
    store.apply_batch([mapping("s1", token="t2")], False)
    assert mgmt.created[-1][1:] == ("t2", pub(last))
    assert runtime.state == "retrying" and stats.key_rotations == MAX_KEY_ROTATIONS + 1
    assert runtime.private_key == keys.keys[-1] != last


@pytest.mark.parametrize("text, rotates", [
    ("proxy peer authentication failed: create proxy peer: peer key already exists", True),
    ("proxy peer authentication failed: peer has been already registered (key)", True),
    ("proxy peer authentication failed: invalid token", False),
    ("proxy peer authentication failed: account already exists", False),
])
def test_a_success_false_answer_rotates_only_when_it_says_the_key_is_taken(text, rotates):
    mgmt, keys = Mgmt(ManagementRejectedError(text)), Keys()
    store, registry, _clock = make(mgmt, keys)
    store.apply_batch([mapping("s1")], False)
    runtime = registry.get("acct")
    assert runtime.state == ("retrying" if rotates else "failed")
    assert keys.calls == ([False, True] if rotates else [False])


def test_other_refusals_keep_the_key():
    for exc in (ManagementError("bad", code="INVALID_ARGUMENT"),
                ManagementError("denied", code="PERMISSION_DENIED")):
        mgmt, keys = Mgmt(exc), Keys()
        store, registry, _clock = make(mgmt, keys)
        store.apply_batch([mapping("s1")], False)
        assert registry.get("acct").state == "failed" and keys.calls == [False]


def test_a_fresh_account_key_replaces_the_stored_one(tmp_path):
    datadir = str(tmp_path)
    old = account_key(datadir, "acct-1")
    assert account_key(datadir, "acct-1") == old
    new = account_key(datadir, "acct-1", fresh=True)
    assert new != old and account_key(datadir, "acct-1") == new  # persisted
    (name,) = os.listdir(tmp_path / "accounts")
    assert os.stat(tmp_path / "accounts" / name).st_mode & 0o777 == 0o600
    assert account_key(datadir, "acct-2") not in (old, new)


@pytest.fixture
def mstore(tmp_path):
    s = Store.open(f"sqlite:///{tmp_path / 'store.db'}", known_clusters=[PC_CLUSTER])
    s.accounts.create(Account(id="acct-1", domain="netbird.test"))
    s.accounts.create(Account(id="acct-squat", domain="squat.test"))
    yield s
    s.close()


@pytest_twisted.ensureDeferred
async def test_squatted_key_end_to_end_against_real_management(mstore, tmp_path):
    """The gateway's stored key for acct-1 is already a stock peer of another
    account: the real management refuses it (ALREADY_EXISTS, token unspent),
    the runtime rotates the key in its data directory and registers the new
    one with the same token, logs in over the real peer channel and the
    service goes active; the squatter's peer is untouched."""
    datadir = str(tmp_path / "gw")
    squatted = account_key(datadir, "acct-1")
    squat = mstore.peers.create(Peer(account_id="acct-squat", name="squat",
                                     key=pub(squatted)))
    management = real_management.start(mstore, str(tmp_path / "k"))
    client, svc = management.client, management.service
    calls = []

    class Recording:
        def create_proxy_peer(self, *args, **kw):
            calls.append(args)
            return client.create_proxy_peer(*args, **kw)

        def send_status_update(self, *args, **kw):
            return client.send_status_update(*args, **kw)

    def keys(account_id):
        return lambda fresh=False: account_key(datadir, account_id, fresh)

    clock, stats = Clock(), AccountStats()
    registry = AccountRegistry(lambda account: AccountRuntime(
        account, reactor=clock, mux=DeviceMux(), mgmt=Recording(),
        settings=AccountSettings(cluster=PC_CLUSTER, stats=stats),
        peer_channel_factory=management.channel, key_factory=keys(account), rand=lambda: 0.5))
    management.start_client(registry)
    try:
        await wait_for(lambda: registry.get("acct-1") is not None
                       and registry.get("acct-1").state == "retrying", "refused attempt")
        runtime = registry.get("acct-1")
        assert stats.key_rotations == 1 and runtime.private_key != squatted
        assert account_key(datadir, "acct-1") == runtime.private_key  # persisted
        await wait_for(lambda: "registered by another peer" in mstore.services.get(
            "acct-1", svc.id).meta.status_message, "rotation reported")
        clock.advance(1.0)  # the retry: new key, same token
        await wait_for(lambda: runtime.state == "ready", "registered and mapped")
        assert [c[2] for c in calls] == [calls[0][2]] * 2  # one token for both attempts
        assert [c[3] for c in calls] == [pub(squatted), pub(runtime.private_key)]
        mine = mstore.peers.get_by_key(pub(runtime.private_key))
        assert mine.account_id == "acct-1" and mine.proxy and runtime.tunnel_ip == mine.ip
        assert mstore.peers.get("acct-squat", squat.id) == squat
        await wait_for(lambda: mstore.services.get("acct-1", svc.id).meta.status == "active",
                       "service active in the management")
    finally:
        await registry.stop()
        await management.stop()


def test_a_key_that_cannot_be_replaced_fails_closed():
    keys = Keys()

    def factory(fresh=False):
        if fresh:
            raise OSError("read-only file system")
        return keys(fresh)

    mgmt, stats = Mgmt(taken()), AccountStats()
    store, registry, clock = make(mgmt, factory, stats)
    store.apply_batch([mapping("s1")], False)
    runtime = registry.get("acct")
    assert runtime.state == "failed" and runtime.private_key == keys.keys[0]
    assert stats.key_rotations == 0 and not clock.getDelayedCalls()
    assert "belongs to another peer" in mgmt.status[-1][2]
