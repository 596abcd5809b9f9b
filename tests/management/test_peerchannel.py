"""The peer channel (ManagementService GetServerKey/Login/Sync) driven by a real grpcio client.

The client here is built only from the generated proto module and PyNaCl (it
does not use nbgateway.management.crypto_box): it seals its requests with
``nacl.public.Box`` to the key from GetServerKey and opens the responses the
same way. The server is a grpc.server on 127.0.0.1 with an ephemeral port and
a SQLite store in a tmp dir.
"""

from __future__ import annotations

import base64
import dataclasses
import queue
import threading
import time

import grpc
import pytest
from nacl.public import Box, PrivateKey, PublicKey

from nbgateway._proto import management_pb2 as pb
from nbgateway._proto import management_pb2_grpc as pb_grpc
from nbgateway.management.crypto_box import ServerKey
from nbgateway.management.grpcloop import LoopServer
from nbgateway.management.model import Account, Group, Peer, Service, Target, TargetOptions
from nbgateway.management.peerchannel import add_to_server
from nbgateway.management.store import Store

CLUSTER = "eu.proxy.netbird.io"
#: acceptance: a roster change reaches the peer within one second
PUSH_DEADLINE = 1.0
#: generous bound for everything that is not the pushed-update acceptance
WAIT = 10.0


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


class PeerClient:
    """A minimal NetBird peer: a WireGuard key pair and the NaCl-box framing."""

    def __init__(self, stub: pb_grpc.ManagementServiceStub) -> None:
        self.stub = stub
        self.private = PrivateKey.generate()
        self.key = b64(bytes(self.private.public_key))
        resp = stub.GetServerKey(pb.Empty(), timeout=WAIT)
        self.server_public = PublicKey(base64.b64decode(resp.key))
        self.box = Box(self.private, self.server_public)

    def seal(self, message) -> pb.EncryptedMessage:
        body = bytes(self.box.encrypt(message.SerializeToString()))  # nonce || ciphertext
        return pb.EncryptedMessage(wgPubKey=self.key, body=body)

    def open(self, enc: pb.EncryptedMessage, into):
        assert enc.wgPubKey == b64(bytes(self.server_public))
        into.ParseFromString(self.box.decrypt(enc.body))
        return into

    def login(self, **kw) -> pb.LoginResponse:
        req = pb.LoginRequest(meta=pb.PeerSystemMeta(hostname="test", goOS="linux"), **kw)
        return self.open(self.stub.Login(self.seal(req), timeout=WAIT), pb.LoginResponse())

    def sync(self) -> SyncStream:
        return SyncStream(self)


class SyncStream:
    """Reads a Sync stream in a thread; decrypted SyncResponses land in ``maps``."""

    def __init__(self, client: PeerClient, capabilities=()) -> None:
        self.client = client
        req = pb.SyncRequest(meta=pb.PeerSystemMeta(hostname="test", capabilities=capabilities))
        self.call = client.stub.Sync(client.seal(req))
        self.maps: queue.Queue = queue.Queue()
        self.error: grpc.RpcError | None = None
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for enc in self.call:
                self.maps.put(self.client.open(enc, pb.SyncResponse()))
        except grpc.RpcError as exc:
            self.error = exc
        finally:
            self.done.set()

    def next(self, timeout: float = WAIT) -> pb.SyncResponse:
        return self.maps.get(timeout=timeout)

    def wait_for(self, predicate, timeout: float = WAIT) -> pb.SyncResponse:
        """Next map satisfying ``predicate`` (earlier intermediate maps are skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError("no matching network map arrived in time")
            m = self.maps.get(timeout=remaining)
            if predicate(m):
                return m

    def cancel(self) -> None:
        self.call.cancel()
        self.done.wait(WAIT)


def remote_keys(m: pb.SyncResponse) -> set[str]:
    return {p.wgPubKey for p in m.NetworkMap.remotePeers}


def synth_records(m: pb.SyncResponse) -> list[tuple[str, str]]:
    return sorted(
        (r.Name, r.RData)
        for z in m.NetworkMap.DNSConfig.CustomZones
        if z.NonAuthoritative
        for r in z.Records
    )


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path):
    s = Store.open(f"sqlite:///{tmp_path / 'store.db'}", known_clusters=[CLUSTER])
    s.accounts.create(Account(id="acct-1", domain="netbird.test"))
    yield s
    s.close()


@pytest.fixture
def server_key(tmp_path) -> ServerKey:
    return ServerKey.load_or_create(str(tmp_path / "wg-server.key"))


@pytest.fixture
def server(store, server_key):
    srv = LoopServer()
    servicer = add_to_server(srv, store, server_key)
    port = srv.add_insecure_port("127.0.0.1:0")
    srv.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield pb_grpc.ManagementServiceStub(channel), servicer
    servicer.close()
    channel.close()
    srv.stop(grace=None).wait(WAIT)


@pytest.fixture
def stub(server):
    return server[0]


def add_peer(store, client: PeerClient, name: str, **kw) -> Peer:
    return store.peers.create(Peer(account_id="acct-1", name=name, key=client.key, **kw))


def private_service(groups) -> Service:
    return Service(
        account_id="acct-1", name="myapp", domain="myapp.eu.proxy.netbird.io", private=True,
        access_groups=tuple(groups),
        targets=(Target(target_type="cluster", target_id=CLUSTER, host="backend.lan",
                        port=8080, options=TargetOptions(direct_upstream=True)),),
    )


@pytest.fixture
def scenario(store, stub):
    """Fixture F over the wire: user peer U in grp-admins, connected proxy peer P,
    private service S for grp-admins."""
    u, p = PeerClient(stub), PeerClient(stub)
    user = add_peer(store, u, "laptop", ip="100.64.0.10", dns_label="laptop")
    proxy = add_peer(store, p, "proxy-1", ip="100.64.0.99", proxy=True, proxy_cluster=CLUSTER,
                     connected=True, ephemeral=True, endpoint="127.0.0.1:51820")
    group = store.groups.create(Group(id="grp-admins", account_id="acct-1", name="admins",
                                     peers=(user.id,)))
    svc = store.services.create(private_service([group.id]))
    return dict(u=u, p=p, user=user, proxy=proxy, group=group, svc=svc)


def _code(excinfo) -> grpc.StatusCode:
    return excinfo.value.code()


# --- GetServerKey / Login ------------------------------------------------------------------------


def test_get_server_key_is_the_persisted_wireguard_key(stub, server_key, tmp_path):
    resp = stub.GetServerKey(pb.Empty(), timeout=WAIT)
    assert resp.key == server_key.public_b64
    assert len(base64.b64decode(resp.key)) == 32
    assert resp.expiresAt.seconds > time.time()
    # the same key comes back after a restart
    again = ServerKey.load_or_create(str(tmp_path / "wg-server.key"))
    assert again.public_b64 == resp.key
    assert stub.isHealthy(pb.Empty(), timeout=WAIT) == pb.Empty()


def test_login_proxy_peer_gets_peer_config(store, stub, scenario):
    resp = scenario["p"].login()
    assert resp.peerConfig.address == "100.64.0.99/10"
    assert resp.peerConfig.RoutingPeerDnsResolutionEnabled  # forced on for proxy peers
    assert resp.HasField("sessionExpiresAt") and resp.sessionExpiresAt.seconds == 0


def test_login_rest_created_peer_gets_peer_config(store, stub, scenario):
    resp = scenario["u"].login()
    assert resp.peerConfig.address == "100.64.0.10/10"
    assert resp.peerConfig.fqdn == "laptop.netbird.test"


def test_login_unknown_peer_permission_denied_nothing_stored(store, stub):
    c = PeerClient(stub)
    with pytest.raises(grpc.RpcError) as ei:
        c.login()
    assert _code(ei) == grpc.StatusCode.PERMISSION_DENIED
    assert store.peers.get_by_key(c.key) is None
    with pytest.raises(grpc.RpcError) as ei:
        c.login(setupKey="A2C8E62B-38F5-4553-B31E-DD66C696CEBB")
    assert _code(ei) == grpc.StatusCode.NOT_FOUND
    assert store.peers.list("acct-1") == []


def test_login_garbage_body_invalid_argument_nothing_stored(store, stub, scenario):
    before = store.peers.get("acct-1", scenario["user"].id)
    for body in (b"", b"x" * 10, b"\x00" * 24 + b"garbage-garbage-garbage"):
        msg = pb.EncryptedMessage(wgPubKey=scenario["u"].key, body=body)
        with pytest.raises(grpc.RpcError) as ei:
            stub.Login(msg, timeout=WAIT)
        assert _code(ei) == grpc.StatusCode.INVALID_ARGUMENT
        assert ei.value.details() == "invalid request message"
    # a well-sealed body that is not a LoginRequest
    c = scenario["u"]
    bad = pb.EncryptedMessage(wgPubKey=c.key, body=bytes(c.box.encrypt(b"\xff\xff\xff")))
    with pytest.raises(grpc.RpcError) as ei:
        stub.Login(bad, timeout=WAIT)
    assert _code(ei) == grpc.StatusCode.INVALID_ARGUMENT
    assert store.peers.get("acct-1", scenario["user"].id) == before
    assert len(store.peers.list("acct-1")) == 2


def test_login_oversized_body_invalid_argument(stub, scenario):
    big = pb.EncryptedMessage(wgPubKey=scenario["u"].key, body=b"\x00" * ((1 << 20) + 1))
    with pytest.raises(grpc.RpcError) as ei:
        stub.Login(big, timeout=WAIT)
    assert _code(ei) == grpc.StatusCode.INVALID_ARGUMENT


def test_login_invalid_wg_key_invalid_argument(stub):
    for key in ("", "not-a-key", b64(b"\x01" * 31), b64(b"\x01" * 33)):
        with pytest.raises(grpc.RpcError) as ei:
            stub.Login(pb.EncryptedMessage(wgPubKey=key, body=b"\x00" * 64), timeout=WAIT)
        assert _code(ei) == grpc.StatusCode.INVALID_ARGUMENT
        assert "is invalid" in ei.value.details()


def test_login_wrong_key_invalid_argument(stub, scenario):
    """A body sealed by a different private key than the claimed wgPubKey does not open."""
    impostor = PeerClient(stub)
    req = pb.LoginRequest(meta=pb.PeerSystemMeta(hostname="x"))
    enc = impostor.seal(req)
    enc.wgPubKey = scenario["u"].key  # claim someone else's identity
    with pytest.raises(grpc.RpcError) as ei:
        stub.Login(enc, timeout=WAIT)
    assert _code(ei) == grpc.StatusCode.INVALID_ARGUMENT


def test_login_without_meta_failed_precondition(stub, scenario):
    c = scenario["u"]
    with pytest.raises(grpc.RpcError) as ei:
        stub.Login(c.seal(pb.LoginRequest()), timeout=WAIT)
    assert _code(ei) == grpc.StatusCode.FAILED_PRECONDITION


def test_login_unknown_fields_ignored(stub, scenario):
    c = scenario["u"]
    req = pb.LoginRequest(meta=pb.PeerSystemMeta(hostname="x")).SerializeToString()
    req += b"\xa2\x06\x03abc"  # field 100, length-delimited: unknown, skipped by proto3
    enc = pb.EncryptedMessage(wgPubKey=c.key, body=bytes(c.box.encrypt(req)))
    resp = c.open(stub.Login(enc, timeout=WAIT), pb.LoginResponse())
    assert resp.peerConfig.address == "100.64.0.10/10"


# --- Sync ----------------------------------------------------------------------------------


def test_sync_unknown_peer_permission_denied(stub):
    c = PeerClient(stub)
    s = c.sync()
    assert s.done.wait(WAIT)
    assert s.error is not None and s.error.code() == grpc.StatusCode.PERMISSION_DENIED


def test_sync_garbage_invalid_argument(stub, scenario):
    call = stub.Sync(pb.EncryptedMessage(wgPubKey=scenario["u"].key, body=b"junk" * 20))
    with pytest.raises(grpc.RpcError) as ei:
        next(iter(call))
    assert _code(ei) == grpc.StatusCode.INVALID_ARGUMENT


def test_sync_user_peer_receives_map(store, stub, scenario):
    s = scenario["u"].sync()
    try:
        m = s.next()
        nm = m.NetworkMap
        assert nm.peerConfig.address == "100.64.0.10/10"
        assert m.peerConfig == nm.peerConfig
        assert remote_keys(m) == {scenario["p"].key}
        (rp,) = nm.remotePeers
        assert list(rp.allowedIps) == ["100.64.0.99/32"]
        assert synth_records(m) == [("myapp.eu.proxy.netbird.io.", "100.64.0.99")]
        rules = sorted((r.Direction, r.Protocol, r.PeerIP, r.PortInfo.range.start)
                       for r in nm.FirewallRules)
        assert rules == [(pb.OUT, pb.TCP, "100.64.0.99", 80), (pb.OUT, pb.TCP, "100.64.0.99", 443)]
        assert nm.Serial > 0
        # the stream marks the peer connected while it is open
        assert store.peers.get("acct-1", scenario["user"].id).connected
    finally:
        s.cancel()
    assert _eventually(lambda: not store.peers.get("acct-1", scenario["user"].id).connected)


def test_sync_proxy_peer_sees_member_with_inbound_rules(stub, scenario):
    s = scenario["p"].sync()
    try:
        m = s.next()
        assert remote_keys(m) == {scenario["u"].key}
        rules = sorted((r.Direction, r.PeerIP, r.PortInfo.range.start)
                       for r in m.NetworkMap.FirewallRules)
        assert rules == [(pb.IN, "100.64.0.10", 80), (pb.IN, "100.64.0.10", 443)]
        # the proxy peer is in no access group; since the gateway-pairs change it gets
        # the private-service records of its own cluster, naming its own address
        assert synth_records(m) == [("myapp.eu.proxy.netbird.io.", "100.64.0.99")]
    finally:
        s.cancel()


def test_sync_group_change_pushes_updated_map_within_1s(store, stub, scenario):
    """Acceptance: after a group change the peer receives an updated map within 1 s."""
    other = PeerClient(stub)
    o = add_peer(store, other, "desktop", ip="100.64.0.11")
    s = other.sync()
    try:
        first = s.next()
        assert remote_keys(first) == set() and synth_records(first) == []
        store.groups.add_peers("acct-1", scenario["group"].id, [o.id])
        m = s.wait_for(lambda m: remote_keys(m) == {scenario["p"].key}, timeout=PUSH_DEADLINE)
        assert synth_records(m) == [("myapp.eu.proxy.netbird.io.", "100.64.0.99")]
        assert m.NetworkMap.Serial > first.NetworkMap.Serial
        store.groups.remove_peers("acct-1", scenario["group"].id, [o.id])
        s.wait_for(lambda m: remote_keys(m) == set() and not synth_records(m),
                   timeout=PUSH_DEADLINE)
    finally:
        s.cancel()


def test_sync_peer_added_and_removed_reaches_proxy(store, stub, scenario):
    s = scenario["p"].sync()
    try:
        assert remote_keys(s.next()) == {scenario["u"].key}
        newcomer = PeerClient(stub)
        n = add_peer(store, newcomer, "tablet", ip="100.64.0.12",
                     groups=(scenario["group"].id,))
        s.wait_for(lambda m: remote_keys(m) == {scenario["u"].key, newcomer.key})
        store.peers.delete("acct-1", n.id)
        s.wait_for(lambda m: remote_keys(m) == {scenario["u"].key})
    finally:
        s.cancel()


def test_sync_service_change_pushes_map(store, stub, scenario):
    s = scenario["u"].sync()
    try:
        assert synth_records(s.next())
        svc = store.services.get("acct-1", scenario["svc"].id)
        store.services.update(dataclasses.replace(svc, enabled=False))
        s.wait_for(lambda m: not synth_records(m) and remote_keys(m) == set())
        store.services.update(svc)
        s.wait_for(lambda m: synth_records(m) and remote_keys(m) == {scenario["p"].key})
        store.services.delete("acct-1", svc.id)
        s.wait_for(lambda m: not synth_records(m) and remote_keys(m) == set())
    finally:
        s.cancel()


def test_sync_proxy_peer_connecting_adds_dns_record(store, stub, scenario):
    """Acceptance 72: the proxy peer's connection state drives the A record."""
    store.peers.set_connected("acct-1", scenario["proxy"].id, False)
    s = scenario["u"].sync()
    proxy_stream = None
    try:
        m = s.next()
        assert synth_records(m) == [] and remote_keys(m) == {scenario["p"].key}  # ACL stays
        proxy_stream = scenario["p"].sync()
        proxy_stream.next()
        s.wait_for(lambda m: synth_records(m) == [("myapp.eu.proxy.netbird.io.", "100.64.0.99")])
        proxy_stream.cancel()
        s.wait_for(lambda m: synth_records(m) == [])
    finally:
        s.cancel()
        if proxy_stream is not None:
            proxy_stream.cancel()


def test_sync_deleted_peer_stream_ends(store, stub, scenario):
    other = PeerClient(stub)
    o = add_peer(store, other, "desktop", ip="100.64.0.11")
    s = other.sync()
    s.next()
    store.peers.delete("acct-1", o.id)
    assert s.done.wait(WAIT)
    assert s.error is not None and s.error.code() == grpc.StatusCode.PERMISSION_DENIED


def test_sync_second_stream_supersedes_first(store, stub, scenario):
    first = scenario["u"].sync()
    first.next()
    second = scenario["u"].sync()
    try:
        second.next()
        assert first.done.wait(WAIT)  # the older stream is ended by the server
        assert store.peers.get("acct-1", scenario["user"].id).connected  # still connected
    finally:
        second.cancel()
        first.cancel()


def test_sync_source_prefixes_capability(stub, scenario):
    s = SyncStream(scenario["u"], capabilities=[pb.PeerCapabilitySourcePrefixes])
    try:
        rules = s.next().NetworkMap.FirewallRules
        assert rules and all(list(r.sourcePrefixes) == [bytes([100, 64, 0, 99, 32])]
                             for r in rules)
    finally:
        s.cancel()


def test_sync_too_many_streams_resource_exhausted(store, server_key, tmp_path):
    srv = LoopServer()
    servicer = add_to_server(srv, store, server_key, max_streams=1)
    port = srv.add_insecure_port("127.0.0.1:0")
    srv.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        stub = pb_grpc.ManagementServiceStub(channel)
        a, b = PeerClient(stub), PeerClient(stub)
        add_peer(store, a, "a")
        add_peer(store, b, "b")
        sa = a.sync()
        sa.next()
        sb = b.sync()
        assert sb.done.wait(WAIT)
        assert sb.error is not None and sb.error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        sa.cancel()
    finally:
        servicer.close()
        channel.close()
        srv.stop(grace=None).wait(WAIT)


def _eventually(pred, timeout: float = WAIT) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    return pred()
