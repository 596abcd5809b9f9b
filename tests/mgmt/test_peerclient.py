"""PeerChannelClient against the REAL management peer channel (nbgateway.management.
peerchannel on a grpc.server over 127.0.0.1 with a SQLite store in a tmp dir), driven by
the real reactor (trial).  Waits are bounded polls, never timing assertions."""

from __future__ import annotations

import base64
import dataclasses
import os
import time
from concurrent import futures

import grpc
from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from nbgateway._proto import management_pb2 as pb
from nbgateway._proto import management_pb2_grpc as pb_grpc
from nbgateway.management.crypto_box import ServerKey
from nbgateway.management.grpcloop import LoopServer
from nbgateway.management.model import Account, Group, Peer, Service, Target, TargetOptions
from nbgateway.management.peerchannel import add_to_server
from nbgateway.management.store import Store
from nbgateway.mgmt import netmap
from nbgateway.mgmt.peerclient import PeerChannelClient
from nbgateway.mgmt.reconnect import Backoff
from nbgateway.netstack.prefix import Prefix
from nbgateway.wireguard.keys import generate_private_key, public_key
from tests.selfsigned import loopback_cert

CLUSTER = "eu.proxy.netbird.io"
SAFETY = 15.0  # bounds a hung test only


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def fast_backoff() -> Backoff:
    return Backoff(initial=0.05, multiplier=1.5, max_interval=0.3)


@defer.inlineCallbacks
def wait_for(predicate, what: str, timeout: float = SAFETY):
    for _ in range(int(timeout / 0.02)):
        if predicate():
            return
        yield task.deferLater(reactor, 0.02, lambda: None)
    raise AssertionError(f"timed out waiting for {what}")


def threaded(fn, *args):
    """Run a blocking store / grpc call off the reactor thread."""
    from twisted.internet.threads import deferToThread

    return deferToThread(fn, *args)


def sqlite_store(case: unittest.TestCase) -> tuple[Store, str]:
    """A migrated SQLite store (known cluster ``CLUSTER``) in a fresh directory of the
    trial test ``case``, closed at its cleanup; ``(store, directory)``."""
    tmp = case.mktemp()
    os.makedirs(tmp)
    store = Store.open(f"sqlite:///{tmp}/store.db", known_clusters=[CLUSTER])
    case.addCleanup(store.close)
    return store, tmp


class ManagementServer:
    """The management's gRPC server (LoopServer) + the real peer channel servicer on
    a fixed loopback port."""

    def __init__(self, store, key_path: str, port: int = 0) -> None:
        self.server = LoopServer()
        self.servicer = add_to_server(self.server, store, key_path, poll_interval=0.2,
                                      coalesce_delay=0.01)
        self.port = self.server.add_insecure_port(f"127.0.0.1:{port}")
        self.server.start()

    def stop(self) -> None:
        self.servicer.close()
        self.server.stop(grace=None).wait(SAFETY)


class PeerClientAgainstManagementTests(unittest.TestCase):
    timeout = 60

    def setUp(self):
        self.store, tmp = sqlite_store(self)
        self.key_path = os.path.join(tmp, "wg-server.key")
        self.store.accounts.create(Account(id="acct-1", domain="netbird.test"))
        self.mgmt = ManagementServer(self.store, self.key_path)
        self.addCleanup(lambda: self.mgmt.stop())
        # the proxy peer, as CreateProxyPeer registers it
        self.private = generate_private_key()
        self.proxy = self.store.peers.create(Peer(
            account_id="acct-1", name="proxy-1", key=b64(public_key(self.private)),
            ip="100.64.0.99", proxy=True, proxy_cluster=CLUSTER, ephemeral=True,
            endpoint="127.0.0.1:51820"))
        self.user_keys = [b64(public_key(generate_private_key())) for _ in range(2)]
        self.user = self.store.peers.create(Peer(account_id="acct-1", name="laptop",
                                                key=self.user_keys[0], ip="100.64.0.10",
                                                dns_label="laptop"))
        self.other = self.store.peers.create(Peer(account_id="acct-1", name="desktop",
                                                 key=self.user_keys[1], ip="100.64.0.11"))
        self.group = self.store.groups.create(Group(id="grp-admins", account_id="acct-1",
                                                   name="admins", peers=(self.user.id,)))
        self.store.services.create(Service(
            account_id="acct-1", name="myapp", domain="myapp.eu.proxy.netbird.io",
            private=True, access_groups=(self.group.id,),
            targets=(Target(target_type="cluster", target_id=CLUSTER, host="backend.lan",
                            port=8080, options=TargetOptions(direct_upstream=True)),),
        ))
        self.maps: list[pb.NetworkMap] = []
        self.logins: list[pb.LoginResponse] = []
        self.states: list[bool] = []

    def client(self, port: int | None = None, **kw) -> PeerChannelClient:
        c = PeerChannelClient(
            reactor, f"http://127.0.0.1:{port or self.mgmt.port}", self.private,
            self.maps.append, on_login=self.logins.append, on_state=self.states.append,
            hostname="gw-test", version="1.2.3", backoff=fast_backoff(), **kw)
        self.addCleanup(c.stop)
        return c

    def roster(self, m: pb.NetworkMap) -> set[str]:
        return {p.public_key for p in netmap.convert(m).roster}

    @defer.inlineCallbacks
    def test_logs_in_and_receives_the_network_map(self):
        c = self.client()
        c.start()
        yield wait_for(lambda: self.maps, "first network map")
        assert c.connected and self.states == [True] and c.logins == 1
        assert self.logins[0].peerConfig.address == "100.64.0.99/10"
        net = netmap.convert(self.maps[0])
        # the client announces the IPv6 overlay: it gets its v6 address too
        assert net.addresses == ("100.64.0.99", self.proxy.ipv6)
        assert self.roster(self.maps[0]) == {self.user_keys[0]}
        user6 = Prefix.parse(f"{self.user.ipv6}/128")
        # one rule per address and port, merged per port
        assert sorted(((set(r.sources), r.ports) for r in net.inbound_rules), key=str) == sorted([
            ({Prefix.parse("100.64.0.10/32"), user6}, ((80, 80),)),
            ({Prefix.parse("100.64.0.10/32"), user6}, ((443, 443),)),
        ], key=str)
        assert c.serial == self.maps[0].Serial > 0
        # the server saw our system info and marked the proxy peer connected
        peer = yield threaded(self.store.peers.get_by_key, c.public_key)
        assert peer.connected
        assert not c.errors

    @defer.inlineCallbacks
    def test_group_change_pushes_an_updated_map(self):
        c = self.client()
        c.start()
        yield wait_for(lambda: self.maps, "first network map")
        yield threaded(self.store.groups.update,
                       dataclasses.replace(self.group, peers=(self.user.id, self.other.id)))
        yield wait_for(lambda: self.roster(self.maps[-1]) == set(self.user_keys),
                       "map with the new group member")
        assert self.maps[-1].Serial > self.maps[0].Serial
        yield threaded(self.store.groups.update, dataclasses.replace(self.group, peers=()))
        yield wait_for(lambda: self.roster(self.maps[-1]) == set(), "map without members")
        assert netmap.convert(self.maps[-1]).inbound_rules == ()

    @defer.inlineCallbacks
    def test_reconnects_after_management_restart(self):
        c = self.client()
        c.start()
        yield wait_for(lambda: self.maps, "first network map")
        port = self.mgmt.port
        yield threaded(self.mgmt.stop)
        yield wait_for(lambda: not c.connected, "disconnect noticed")
        assert c.errors  # the stream end is surfaced
        n = len(self.maps)
        # a change while management is down is seen after the restart (same key file)
        yield threaded(self.store.groups.update,
                       dataclasses.replace(self.group, peers=(self.user.id, self.other.id)))
        self.mgmt = yield threaded(ManagementServer, self.store, self.key_path, port)
        yield wait_for(lambda: len(self.maps) > n and c.connected, "map after the restart")
        assert c.logins == 2 and self.states[-1] is True
        assert self.roster(self.maps[-1]) == set(self.user_keys)

    @defer.inlineCallbacks
    def test_unregistered_key_surfaces_permission_denied_and_keeps_retrying(self):
        errors_seen = []
        c = PeerChannelClient(reactor, f"http://127.0.0.1:{self.mgmt.port}",
                              generate_private_key(), self.maps.append,
                              on_error=errors_seen.append, backoff=fast_backoff())
        self.addCleanup(c.stop)
        c.start()
        yield wait_for(lambda: c.errors["PERMISSION_DENIED"] >= 2, "two refused logins")
        assert self.maps == [] and not c.connected and c.running
        assert errors_seen and c.last_error is errors_seen[-1]

    @defer.inlineCallbacks
    def test_stop_ends_the_stream_and_marks_the_peer_disconnected(self):
        c = self.client()
        c.start()
        yield wait_for(lambda: self.maps, "first network map")
        yield c.stop()
        assert not c.running and not c.connected and self.states == [True, False]

        def disconnected():
            return not self.store.peers.get_by_key(c.public_key).connected

        ok = []
        for _ in range(int(SAFETY / 0.05)):
            ok = yield threaded(disconnected)
            if ok:
                break
            yield task.deferLater(reactor, 0.05, lambda: None)
        assert ok
        assert not c.errors  # a requested stop is not an error


class _Rogue(pb_grpc.ManagementServiceServicer):
    """A ManagementService with a real key pair that misbehaves in one chosen way."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.key = ServerKey.generate()
        self.logins: list[pb.LoginRequest] = []
        self.syncs = 0
        self.key_requests = 0

    def _seal(self, message, peer_b64: str) -> pb.EncryptedMessage:
        from nbgateway.peerbox import decode_wg_key, seal_message

        return pb.EncryptedMessage(wgPubKey=self.key.public_b64, body=seal_message(
            message, decode_wg_key(peer_b64), self.key.private_bytes))

    def GetServerKey(self, request, context):
        self.key_requests += 1
        if self.mode == "bad_key":
            return pb.ServerKeyResponse(key="not-a-key")
        return pb.ServerKeyResponse(key=self.key.public_b64)

    def isHealthy(self, request, context):
        return pb.Empty()

    def Login(self, request, context):
        from nbgateway.peerbox import decode_wg_key, open_message

        req = open_message(request.body, pb.LoginRequest(), decode_wg_key(request.wgPubKey),
                           self.key.private_bytes)
        self.logins.append(req)
        if self.mode == "garbage_login":
            return pb.EncryptedMessage(wgPubKey=self.key.public_b64, body=b"\x00" * 64)
        return self._seal(pb.LoginResponse(peerConfig=pb.PeerConfig(address="100.64.0.5/10")),
                          request.wgPubKey)

    def Sync(self, request, context):
        self.syncs += 1
        first = pb.SyncResponse(NetworkMap=pb.NetworkMap(Serial=10))
        yield self._seal(first, request.wgPubKey)
        yield self._seal(pb.SyncResponse(NetworkMap=pb.NetworkMap(Serial=9)), request.wgPubKey)
        yield self._seal(pb.SyncResponse(), request.wgPubKey)  # no map: ignored
        if self.mode == "garbage_sync":
            yield pb.EncryptedMessage(wgPubKey=self.key.public_b64, body=os.urandom(80))
        elif self.mode == "other_key":
            other = ServerKey.generate()
            yield pb.EncryptedMessage(wgPubKey=other.public_b64, body=os.urandom(80))
        elif self.mode == "handler_error":
            yield self._seal(pb.SyncResponse(NetworkMap=pb.NetworkMap(Serial=11)),
                             request.wgPubKey)
            yield self._seal(pb.SyncResponse(NetworkMap=pb.NetworkMap(Serial=12)),
                             request.wgPubKey)
            context.abort(grpc.StatusCode.UNAVAILABLE, "bye")
        elif self.mode == "storm":  # a map per change, as a peer storm makes
            for serial in range(1, 201):
                yield self._seal(pb.SyncResponse(NetworkMap=pb.NetworkMap(Serial=serial)),
                                 request.wgPubKey)
            time.sleep(3)


class RogueServerTests(unittest.TestCase):
    timeout = 60

    def serve(self, mode: str, tls: tuple[bytes, bytes] | None = None) -> _Rogue:
        rogue = _Rogue(mode)
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        pb_grpc.add_ManagementServiceServicer_to_server(rogue, server)
        if tls is None:
            self.port = server.add_insecure_port("127.0.0.1:0")
        else:
            creds = grpc.ssl_server_credentials([tls])
            self.port = server.add_secure_port("127.0.0.1:0", creds)
        server.start()
        self.addCleanup(lambda: server.stop(grace=None).wait(SAFETY))
        return rogue

    def client(self, on_map) -> PeerChannelClient:
        c = PeerChannelClient(reactor, f"127.0.0.1:{self.port}", generate_private_key(),
                              on_map, backoff=fast_backoff(), hostname="gw", version="9")
        self.addCleanup(c.stop)
        c.start()
        return c

    @defer.inlineCallbacks
    def test_bad_server_key_is_surfaced_without_login(self):
        rogue = self.serve("bad_key")
        c = self.client(lambda m: None)
        yield wait_for(lambda: c.errors["bad_server_key"] >= 2, "bad key reported twice")
        assert rogue.logins == [] and c.last_error.value.reason == "bad_server_key"

    @defer.inlineCallbacks
    def test_login_carries_system_info_and_garbage_reply_is_an_error(self):
        rogue = self.serve("garbage_login")
        c = self.client(lambda m: None)
        yield wait_for(lambda: c.errors["undecryptable"] >= 1, "undecryptable login")
        meta = rogue.logins[0].meta
        assert meta.hostname == "gw" and meta.goOS and meta.kernel and meta.OS
        assert meta.netbirdVersion == "nbgateway-9"
        assert list(meta.capabilities) == [pb.PeerCapabilitySourcePrefixes,
                                           pb.PeerCapabilityIPv6Overlay]
        assert rogue.logins[0].peerKeys.wgPubKey == c.public_key.encode()
        assert rogue.syncs == 0 and c.running

    @defer.inlineCallbacks
    def test_garbage_sync_message_ends_the_stream_and_reconnects(self):
        rogue = self.serve("garbage_sync")
        serials = []
        c = self.client(lambda m: serials.append(m.Serial))
        # maps are applied coalesce_delay (50 ms) after they arrive, and a fast
        # reconnect can break the second stream before that: wait for both
        yield wait_for(lambda: rogue.syncs >= 2 and c.errors["undecryptable"] >= 2
                       and serials, "two broken streams and the map applied")
        # per stream: serial 10 received, the outdated 9 skipped, the empty response
        # ignored; only serial 10 is ever applied
        assert set(serials) == {10} and c.errors["outdated_map"] >= 2

    @defer.inlineCallbacks
    def test_message_from_another_server_key_is_rejected(self):
        self.serve("other_key")
        c = self.client(lambda m: None)
        yield wait_for(lambda: c.errors["server_key_changed"] >= 1, "key change detected")

    @defer.inlineCallbacks
    def test_handler_exception_is_contained(self):
        self.serve("handler_error")
        seen = []

        def on_map(m):
            seen.append(m.Serial)
            if len(seen) == 1:
                raise RuntimeError("consumer bug")

        c = self.client(on_map)
        yield wait_for(lambda: len(seen) >= 2, "a map after the failing one")
        assert c.errors["handler"] >= 1
        self.flushLoggedErrors(RuntimeError)

    @defer.inlineCallbacks
    def test_a_burst_of_maps_is_coalesced_to_the_latest(self):
        self.serve("storm")
        seen = []

        def on_map(m):
            seen.append(m.Serial)
            busy_until = time.monotonic() + 0.02  # a slow application
            while time.monotonic() < busy_until:
                pass

        c = self.client(on_map)
        yield wait_for(lambda: c.maps_received >= 200 and seen and seen[-1] == 200
                       and c._pending_map is None and not c._applying,
                       "the burst's last map applied")
        first = seen[:seen.index(200) + 1]  # the first stream's maps
        assert first == sorted(first)  # never an older map after a newer one
        assert len(seen) == c.maps_applied < c.maps_received / 4, seen  # not one per map
        assert c.maps_coalesced >= c.maps_received - len(seen) - 1
        # a map skipped before its turn was never parsed
        assert c.maps_parsed == c.maps_applied

    @defer.inlineCallbacks
    def test_https_verifies_the_management_certificate(self):
        key_pem, cert_pem = loopback_cert("127.0.0.1")
        rogue = self.serve("plain", tls=(key_pem, cert_pem))
        serials = []
        good = PeerChannelClient(reactor, f"https://127.0.0.1:{self.port}",
                                 generate_private_key(), lambda m: serials.append(m.Serial),
                                 root_certificates=cert_pem, backoff=fast_backoff())
        self.addCleanup(good.stop)
        good.start()
        yield wait_for(lambda: 10 in serials, "map over TLS")
        assert rogue.key_requests >= 1
        _, other_cert = loopback_cert("127.0.0.1")
        bad = PeerChannelClient(reactor, f"https://127.0.0.1:{self.port}",
                                generate_private_key(), lambda m: serials.append(m.Serial),
                                root_certificates=other_cert, backoff=fast_backoff())
        self.addCleanup(bad.stop)
        bad.start()
        yield wait_for(lambda: bad.errors["UNAVAILABLE"] >= 2, "untrusted server refused")
        # it never completed GetServerKey: the handshake failed before any RPC
        assert bad.maps_received == 0 and bad.server_key is None and bad.logins == 0


def test_peek_reads_the_map_and_serial_as_the_parser_does():
    import random

    from nbgateway.mgmt.peerclient import peek_sync_map

    rng = random.Random(18)
    cases = [pb.SyncResponse(), pb.SyncResponse(NetworkMap=pb.NetworkMap()),
             pb.SyncResponse(NetworkMap=pb.NetworkMap(Serial=2**64 - 1)),
             pb.SyncResponse(netbirdConfig=pb.NetbirdConfig(), Version=3)]
    for _ in range(50):
        nm = pb.NetworkMap(Serial=rng.choice([0, 1, 300, rng.randrange(2**40)]))
        for i in range(rng.randrange(4)):
            nm.remotePeers.add(wgPubKey=f"k{i}", allowedIps=[f"100.64.0.{i}/32"])
        if rng.random() < 0.5:
            nm.peerConfig.address = "100.64.0.1/10"
        resp = pb.SyncResponse(Version=rng.randrange(3))
        if rng.random() < 0.8:
            resp.NetworkMap.CopyFrom(nm)
        cases.append(resp)
    for resp in cases:
        wire = resp.SerializeToString()
        got = peek_sync_map(wire)
        has = resp.HasField("NetworkMap")
        if got is None:  # only when the map's first field is not Serial
            assert has and resp.NetworkMap.Serial == 0
            continue
        assert got == (has, resp.NetworkMap.Serial if has else 0)
    # what the peek leaves to the parser: a map twice (merged), groups,
    # truncated input, Serial after another field
    one = pb.SyncResponse(NetworkMap=pb.NetworkMap(Serial=5)).SerializeToString()
    assert peek_sync_map(one + one) is None
    assert peek_sync_map(one[:-1]) is None
    assert peek_sync_map(b"\x0b\x0c") is None  # a group
    late = pb.NetworkMap(peerConfig=pb.PeerConfig(address="a")).SerializeToString() + b"\x08\x07"
    assert peek_sync_map(b"\x2a" + bytes([len(late)]) + late) is None
    assert pb.SyncResponse.FromString(b"\x2a" + bytes([len(late)]) + late).NetworkMap.Serial == 7


def test_pending_maps_are_parsed_at_their_turn_and_a_bad_one_is_dropped():
    """The coalescing queue holds opened SyncResponse bytes; only the map
    whose turn comes is parsed; bytes that do not parse count ``bad_map``
    and the next map is still applied (task.Clock, nothing on the network)."""
    clock = task.Clock()
    seen: list[int] = []
    c = PeerChannelClient(clock, "127.0.0.1:1", generate_private_key(),
                          lambda nm: seen.append(nm.Serial), hostname="gw")
    c.running = True  # the queue only, without a connection cycle

    def wire(serial: int) -> bytes:
        return pb.SyncResponse(NetworkMap=pb.NetworkMap(Serial=serial)).SerializeToString()

    for serial in (1, 2, 3):
        c._offer_map(wire(serial))
    clock.advance(c.coalesce_delay)
    assert seen == [3] and c.maps_parsed == 1 and c.maps_coalesced == 2
    # a parsed map (what the peek could not read) is applied as it is
    c._offer_map(pb.NetworkMap(Serial=4))
    clock.advance(c.coalesce_delay)
    assert seen == [3, 4] and c.maps_parsed == 1
    # the top level of a truncated message can look fine; the parse at its
    # turn fails: dropped and counted, the next map applied
    c._offer_map(wire(5)[:-1] + b"\xff")
    clock.advance(c.coalesce_delay)
    assert seen == [3, 4] and c.errors["bad_map"] == 1
    c._offer_map(wire(6))
    clock.advance(c.coalesce_delay)
    assert seen == [3, 4, 6]
    c.running = False
