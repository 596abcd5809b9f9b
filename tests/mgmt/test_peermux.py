"""NbgwSyncMany: many proxy peers' Sync on one stream (issue 18), real grpcio both
ends in process: the management's peer channel (nbgateway.management.peerchannel on a
LoopServer, SQLite store, the ProxyService token check) and the gateway's
PeerChannelClient / PeerSyncMux on the reactor (trial).  Waits are bounded polls,
never timing assertions."""

from __future__ import annotations

import base64
import dataclasses
import functools
import os

import grpc
from twisted.internet import defer, reactor
from twisted.trial import unittest

from nbgateway._proto import management_pb2 as pb
from nbgateway._proto import management_pb2_grpc as pb_grpc
from nbgateway.management.crypto_box import ServerKey
from nbgateway.management.grpcloop import LoopServer
from nbgateway.management.model import Account, Group, Peer, Service, Target, TargetOptions
from nbgateway.management.peerchannel import ManagementServicer
from nbgateway.management.proxyservice import ProxyServiceServicer
from nbgateway.management.store import Store
from nbgateway.mgmt import netmap, peermux
from nbgateway.mgmt.peerclient import PeerChannelClient, system_meta
from nbgateway.peerbox import decode_wg_key, seal_message
from nbgateway.wireguard.keys import generate_private_key, public_key

from .test_peerclient import SAFETY, fast_backoff, sqlite_store, threaded, wait_for

CLUSTER = "eu.proxy.netbird.io"
ACCOUNTS = ("acct-1", "acct-2")


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


class WithoutExtension(ManagementServicer):
    """A management built before NbgwSyncMany: the generated base's UNIMPLEMENTED."""

    NbgwSyncMany = pb_grpc.ManagementServiceServicer.NbgwSyncMany


class Management:
    """LoopServer + the real peer channel; NbgwSyncMany checks tokens with the real
    ProxyService check (unless ``token_check`` is False)."""

    def __init__(self, store, key_path: str, *, servicer_class=ManagementServicer,
                 token_check: bool = True, port: int = 0) -> None:
        self.proxy = ProxyServiceServicer(store)
        self.server = LoopServer()
        self.servicer = servicer_class(
            store, ServerKey.load_or_create(key_path), coalesce_delay=0.01,
            authenticate=self.proxy._authenticate_async if token_check else None)
        pb_grpc.add_ManagementServiceServicer_to_server(self.servicer, self.server)
        self.servicer.start()
        self.port = self.server.add_insecure_port(f"127.0.0.1:{port}")
        self.server.start()

    def stop(self) -> None:
        self.servicer.close()
        self.server.stop(grace=None).wait(SAFETY)


class GatewaysTestCase(unittest.TestCase):
    """A SQLite store with one gateway (proxy peer and its key) in each of ``ACCOUNTS``,
    a management-wide proxy token and a running :class:`Management`; ``client(acct)``
    is that account's gateway, its network maps collected in ``maps[acct]``."""

    timeout = 60

    def setUp(self):
        os.environ.pop("NBGW_PEER_CHANNEL_MUX", None)
        self.store, tmp = sqlite_store(self)
        self.key_path = os.path.join(tmp, "wg-server.key")
        self.keys: dict[str, bytes] = {}
        self.proxies: dict[str, Peer] = {}
        for n, acct in enumerate(ACCOUNTS, start=1):
            self.store.accounts.create(Account(id=acct, domain=f"{acct}.test"))
            self.keys[acct] = generate_private_key()
            self.proxies[acct] = self.store.peers.create(Peer(
                account_id=acct, name="proxy", key=b64(public_key(self.keys[acct])),
                ip=f"100.64.{n}.99", proxy=True, proxy_cluster=CLUSTER, ephemeral=True,
                endpoint="127.0.0.1:51820"))
            self.add_account_rows(n, acct)
        _, self.token = self.store.proxies.create_token("gw", account_id=None)
        self.maps: dict[str, list[pb.NetworkMap]] = {a: [] for a in ACCOUNTS}
        self.mgmt = self.management()

    def add_account_rows(self, n: int, acct: str) -> None:
        """More rows of account ``acct`` (the ``n``-th), right after its gateway."""

    def management(self, **kw) -> Management:
        m = Management(self.store, self.key_path, **kw)
        self.addCleanup(m.stop)
        return m

    def client(self, acct: str, *, token: str | None = None, mgmt=None) -> PeerChannelClient:
        token = self.token if token is None else token
        c = PeerChannelClient(
            reactor, f"http://127.0.0.1:{(mgmt or self.mgmt).port}", self.keys[acct],
            self.maps[acct].append, hostname=f"gw-{acct}", backoff=fast_backoff(),
            mux_metadata=(("authorization", f"Bearer {token}"),))
        self.addCleanup(c.stop)
        c.start()
        return c


class MuxTests(GatewaysTestCase):
    def setUp(self):
        self.users: dict[str, Peer] = {}
        self.groups: dict[str, Group] = {}
        super().setUp()

    def add_account_rows(self, n: int, acct: str) -> None:
        """A user peer in group ``admins`` with access to a private service."""
        self.users[acct] = self.store.peers.create(Peer(
            account_id=acct, name="laptop", key=b64(public_key(generate_private_key())),
            ip=f"100.64.{n}.10", dns_label="laptop"))
        self.groups[acct] = self.store.groups.create(Group(
            id=f"grp-{acct}", account_id=acct, name="admins",
            peers=(self.users[acct].id,)))
        self.store.services.create(Service(
            account_id=acct, name="app", domain=f"app{n}.{CLUSTER}", private=True,
            access_groups=(self.groups[acct].id,),
            targets=(Target(target_type="cluster", target_id=CLUSTER, host="backend.lan",
                            port=8080, options=TargetOptions(direct_upstream=True)),)))

    def roster(self, acct: str) -> set[str]:
        return {p.public_key for p in netmap.convert(self.maps[acct][-1]).roster}

    def own_address(self, acct: str) -> str:
        return netmap.convert(self.maps[acct][-1]).addresses[0]

    @defer.inlineCallbacks
    def test_two_accounts_share_one_stream_and_get_their_own_maps(self):
        a, b = self.client("acct-1"), self.client("acct-2")
        yield wait_for(lambda: self.maps["acct-1"] and self.maps["acct-2"], "both maps")
        assert a.mux is b.mux and a.mux is not None
        assert a.mux.streams_opened == 1 and a.mux.attached == 2
        assert (a.syncs_muxed, a.syncs_own, b.syncs_muxed, b.syncs_own) == (1, 0, 1, 0)
        assert a.session.stream is None and b.session.stream is None  # no Sync of their own
        # each proxy peer gets its own account's map, nothing of the other
        assert self.own_address("acct-1") == "100.64.1.99"
        assert self.own_address("acct-2") == "100.64.2.99"
        assert self.roster("acct-1") == {self.users["acct-1"].key}
        assert self.roster("acct-2") == {self.users["acct-2"].key}
        assert a.connected and b.connected
        muxes = list(self.mgmt.servicer._muxes)
        assert len(muxes) == 1 and set(muxes[0].peers) == {a.public_key, b.public_key}
        peer = yield threaded(self.store.peers.get_by_key, a.public_key)
        assert peer.connected

        # a change in acct-1 reaches acct-1's peer only
        other = yield threaded(self.store.peers.create, Peer(
            account_id="acct-1", name="desk", key=b64(public_key(generate_private_key())),
            ip="100.64.1.11"))
        n2 = len(self.maps["acct-2"])
        yield threaded(self.store.groups.update, dataclasses.replace(
            self.groups["acct-1"], peers=(self.users["acct-1"].id, other.id)))
        yield wait_for(lambda: self.roster("acct-1") == {self.users["acct-1"].key, other.key},
                       "acct-1's new member")
        assert len(self.maps["acct-2"]) == n2
        assert self.roster("acct-2") == {self.users["acct-2"].key}

        # stopping one client leaves the stream to the other
        yield a.stop()
        yield wait_for(lambda: set(muxes[0].peers) == {b.public_key}, "acct-1 left")
        assert b.mux is not None and b.mux.attached == 1 and b.connected

    @defer.inlineCallbacks
    def test_removed_peer_ends_for_that_peer_only(self):
        a, b = self.client("acct-1"), self.client("acct-2")
        yield wait_for(lambda: self.maps["acct-1"] and self.maps["acct-2"], "both maps")
        yield threaded(self.store.accounts.delete, "acct-1")
        yield wait_for(lambda: a.errors["PERMISSION_DENIED"] >= 1, "acct-1 refused")
        assert a.mux is b.mux and a.maps_received == 1  # nothing after the refusal
        # acct-2 still follows its map on the same stream
        n = len(self.maps["acct-2"])
        yield threaded(self.store.groups.update, dataclasses.replace(
            self.groups["acct-2"], peers=()))
        yield wait_for(lambda: len(self.maps["acct-2"]) > n and not self.roster("acct-2"),
                       "acct-2's change")
        assert b.connected and b.mux.streams_opened == 1 and not b.errors

    @defer.inlineCallbacks
    def test_account_scoped_token_carries_its_account_only(self):
        _, scoped = self.store.proxies.create_token("byop", account_id="acct-1")
        a = self.client("acct-1", token=scoped)
        b = self.client("acct-2", token=scoped)
        yield wait_for(lambda: self.maps["acct-1"], "acct-1's map")
        yield wait_for(lambda: b.errors["PERMISSION_DENIED"] >= 2, "acct-2 refused twice")
        assert self.maps["acct-2"] == [] and a.connected and not b.connected
        assert a.mux is b.mux and a.mux.usable()  # a per-peer refusal: the stream stays

    @defer.inlineCallbacks
    def test_management_without_the_extension_falls_back_to_sync(self):
        for kw in ({"servicer_class": WithoutExtension}, {"token_check": False}):
            old = self.management(**kw)
            maps_before = {acct: len(self.maps[acct]) for acct in ACCOUNTS}
            a = self.client("acct-1", mgmt=old)
            b = self.client("acct-2", mgmt=old)
            yield wait_for(lambda before=maps_before: all(
                len(self.maps[acct]) > before[acct] for acct in ACCOUNTS), "both maps by Sync")
            assert a.mux is not None and not a.mux.supported
            assert a.syncs_own == 1 and b.syncs_own == 1
            assert a.session.stream is not None and a.connected and b.connected
            assert self.own_address("acct-1") == "100.64.1.99"
            assert self.roster("acct-2") == {self.users["acct-2"].key}
            assert not old.servicer._muxes
            yield a.stop()
            yield b.stop()

    @defer.inlineCallbacks
    def test_a_refused_token_falls_back_to_sync(self):
        a = self.client("acct-1", token="nbp_" + "x" * 30)
        yield wait_for(lambda: self.maps["acct-1"], "map by Sync")
        assert a.mux.refused_at is not None and a.mux.supported and not a.mux.usable()
        assert a.syncs_own == 1

    def test_switch_off_keeps_one_sync_per_peer(self):
        os.environ["NBGW_PEER_CHANNEL_MUX"] = "0"
        self.addCleanup(os.environ.pop, "NBGW_PEER_CHANNEL_MUX", None)
        a = self.client("acct-1")
        assert a.mux is None

    @defer.inlineCallbacks
    def test_reconnects_after_management_restart(self):
        a, b = self.client("acct-1"), self.client("acct-2")
        yield wait_for(lambda: self.maps["acct-1"] and self.maps["acct-2"], "both maps")
        port = self.mgmt.port
        yield threaded(self.mgmt.stop)
        yield wait_for(lambda: not a.connected and not b.connected, "disconnect noticed")
        yield threaded(self.store.groups.update, dataclasses.replace(
            self.groups["acct-1"], peers=()))
        self.mgmt = yield threaded(functools.partial(self.management, port=port))
        yield wait_for(lambda: a.connected and b.connected and not self.roster("acct-1"),
                       "maps after the restart")
        assert a.mux.streams_opened >= 2 and a.syncs_own == 0 and b.syncs_own == 0
        assert a.logins >= 2


class RawFrameTests(unittest.TestCase):
    """The wire: frames sealed by hand on a plain grpcio channel."""

    timeout = 60

    def setUp(self):
        self.store, tmp = sqlite_store(self)
        self.store.accounts.create(Account(id="acct-1", domain="a.test"))
        self.good = generate_private_key()
        self.other = generate_private_key()
        self.plain_peer = generate_private_key()
        for name, key, proxy, ip in (("proxy", self.good, True, "100.64.0.99"),
                                     ("proxy2", self.other, True, "100.64.0.98"),
                                     ("laptop", self.plain_peer, False, "100.64.0.10")):
            self.store.peers.create(Peer(account_id="acct-1", name=name,
                                         key=b64(public_key(key)), ip=ip, proxy=proxy,
                                         proxy_cluster=CLUSTER if proxy else ""))
        _, self.token = self.store.proxies.create_token("gw", account_id=None)
        self.mgmt = Management(self.store, os.path.join(tmp, "k"))
        self.addCleanup(self.mgmt.stop)

    def frame(self, key: bytes, *, sealed_by: bytes | None = None, body: bytes | None = None,
              name: bytes | None = None) -> pb.NbgwPeerSyncFrame:
        server = decode_wg_key(self.server_key)
        req = pb.SyncRequest(meta=system_meta("raw", "1"))
        if body is None:
            body = seal_message(req, server, sealed_by or key)
        wg = b64(public_key(key))
        return pb.NbgwPeerSyncFrame(
            nbgw_peer=b64(public_key(name)) if name else wg,
            nbgw_message=pb.EncryptedMessage(wgPubKey=wg, body=body))

    def exchange(self, frames: list[pb.NbgwPeerSyncFrame], want: int, token: str | None = None):
        """Send ``frames`` on one stream, read ``want`` frames back (blocking)."""
        with grpc.insecure_channel(f"127.0.0.1:{self.mgmt.port}") as ch:
            stub = pb_grpc.ManagementServiceStub(ch)
            self.server_key = stub.GetServerKey(pb.Empty(), timeout=SAFETY).key
            built = [f() for f in frames]
            call = stub.NbgwSyncMany(
                iter(built), timeout=SAFETY,
                metadata=(("authorization", f"Bearer {token or self.token}"),))
            got = []
            for frame in call:
                got.append(frame)
                if len(got) == want:
                    break
            call.cancel()
            return got

    @defer.inlineCallbacks
    def test_bad_seal_is_refused_for_that_peer_only(self):
        good, other, plain = self.good, self.other, self.plain_peer
        got = yield threaded(self.exchange, [
            # other's key named, sealed with good's key: does not open
            lambda: self.frame(other, sealed_by=good),
            lambda: self.frame(other, body=b"\x00" * 64),  # garbage (replaces the above)
            lambda: self.frame(good, name=other),  # frame and message disagree
            lambda: self.frame(plain),  # not a proxy peer
            lambda: self.frame(generate_private_key()),  # unknown key
            lambda: self.frame(good),  # the one that works
        ], 6)
        by_code = [(f.nbgw_peer, f.nbgw_code) for f in got if f.nbgw_code]
        ok = [f for f in got if not f.nbgw_code]
        other_key, good_key = b64(public_key(other)), b64(public_key(good))
        assert by_code[:2] == [(other_key, grpc.StatusCode.INVALID_ARGUMENT.value[0])] * 2
        assert by_code[2] == (other_key, grpc.StatusCode.INVALID_ARGUMENT.value[0])
        assert by_code[3][1] == grpc.StatusCode.PERMISSION_DENIED.value[0]
        assert by_code[4][1] == grpc.StatusCode.PERMISSION_DENIED.value[0]
        assert len(ok) == 1 and ok[0].nbgw_peer == good_key
        assert ok[0].nbgw_message.wgPubKey == self.server_key
        assert all(f.nbgw_leave for f in got if f.nbgw_code)

    @defer.inlineCallbacks
    def test_a_newer_stream_of_the_key_supersedes_the_older(self):
        result: dict[str, object] = {}

        def run():
            md = (("authorization", f"Bearer {self.token}"),)
            with grpc.insecure_channel(f"127.0.0.1:{self.mgmt.port}") as ch:
                stub = pb_grpc.ManagementServiceStub(ch)
                self.server_key = stub.GetServerKey(pb.Empty(), timeout=SAFETY).key
                older = iter(stub.NbgwSyncMany(iter([self.frame(self.good)]),
                                               timeout=SAFETY, metadata=md))
                result["older_first"] = next(older)
                newer = stub.NbgwSyncMany(iter([self.frame(self.good)]), timeout=SAFETY,
                                          metadata=md)
                result["newer_first"] = next(iter(newer))
                result["older_end"] = next(older)
                newer.cancel()

        yield threaded(run)
        key = b64(public_key(self.good))
        assert result["older_first"].nbgw_message.body
        assert result["newer_first"].nbgw_message.body
        end = result["older_end"]
        assert (end.nbgw_peer, end.nbgw_leave, end.nbgw_code) == (key, True, 0)

    @defer.inlineCallbacks
    def test_a_revoked_token_ends_the_stream(self):
        record, plain = self.store.proxies.create_token("short", account_id=None)
        result: dict[str, object] = {}

        def run():
            with grpc.insecure_channel(f"127.0.0.1:{self.mgmt.port}") as ch:
                stub = pb_grpc.ManagementServiceStub(ch)
                self.server_key = stub.GetServerKey(pb.Empty(), timeout=SAFETY).key
                call = stub.NbgwSyncMany(iter([self.frame(self.good)]), timeout=SAFETY,
                                         metadata=(("authorization", f"Bearer {plain}"),))
                frames = iter(call)
                result["first"] = next(frames)
                self.store.proxies.revoke_token(None, record.id)
                try:
                    for _ in frames:
                        pass
                except grpc.RpcError as exc:
                    result["code"] = exc.code()

        yield threaded(run)
        assert result["first"].nbgw_message.body  # a map first
        assert result["code"] == grpc.StatusCode.UNAUTHENTICATED

    @defer.inlineCallbacks
    def test_a_token_revoked_while_the_stream_opens_ends_it(self):
        # the revocation lands after the token check passed and before the
        # stream is registered for change notifications: the race the
        # recheck at registration closes
        record, plain = self.store.proxies.create_token("racy", account_id=None)
        servicer = self.mgmt.servicer
        check = servicer.authenticate

        async def check_then_revoke(context):
            caller = await check(context)
            if caller.id == record.id:
                self.store.proxies.revoke_token(None, record.id)
            return caller

        servicer.authenticate = check_then_revoke

        def call():
            try:
                self.exchange([lambda: self.frame(self.good)], 2, token=plain)
            except grpc.RpcError as exc:
                return exc.code()
            return None

        code = yield threaded(call)
        assert code == grpc.StatusCode.UNAUTHENTICATED

    @defer.inlineCallbacks
    def test_no_token_no_stream(self):
        def call():
            try:
                self.exchange([lambda: self.frame(self.good)], 1, token="nbp_bad")
            except grpc.RpcError as exc:
                return exc.code()
            return None

        code = yield threaded(call)
        assert code == grpc.StatusCode.UNAUTHENTICATED


def test_mux_registry_is_shared_per_channel_and_token() -> None:
    class Clock:
        def seconds(self) -> float:
            return 0.0

    md = (("authorization", "Bearer t"),)
    m1 = peermux.acquire(Clock(), ("k",), object(), md)
    m2 = peermux.acquire(Clock(), ("k",), object(), md)
    m3 = peermux.acquire(Clock(), ("k",), object(), (("authorization", "Bearer u"),))
    assert m1 is m2 and m1 is not m3 and m1.users == 2
    for m in (m1, m2, m3):
        peermux.release(m)
    assert peermux.acquire(Clock(), ("k",), object(), md) is not m1


def test_refusals_are_bounded_and_stop_the_reader(tmp_path) -> None:
    """A stream whose reader does not read (every write blocks) holds at most
    MUX_OUTBOX (+ the attaches in flight) refusal frames: the server then stops
    reading requests."""
    import asyncio

    from nbgateway.management.model import ProxyAccessToken
    from nbgateway.management.syncmany import MUX_CONCURRENCY, MUX_OUTBOX, SyncMany

    store = Store.open(f"sqlite:///{tmp_path}/s.db", known_clusters=[CLUSTER])
    servicer = ManagementServicer(store, ServerKey.generate())
    consumed = 0

    class Blocked:
        writes = 0

        async def write(self, _frame) -> None:
            self.writes += 1
            await asyncio.get_running_loop().create_future()  # never completes

    async def requests():
        nonlocal consumed
        for i in range(10 * MUX_OUTBOX):
            consumed += 1
            # frame and message disagree: refused without touching the store
            yield pb.NbgwPeerSyncFrame(nbgw_peer=f"k{i}", nbgw_message=pb.EncryptedMessage(
                wgPubKey="other"))

    async def run() -> tuple[int, int, int]:
        context = Blocked()
        mux = SyncMany(servicer, ProxyAccessToken(id="t"), context,
                        asyncio.get_running_loop())
        reader = asyncio.ensure_future(mux.read(requests()))
        writer = asyncio.ensure_future(mux.write_loop())
        for _ in range(200):
            await asyncio.sleep(0)
        queued = len(mux.outbox)
        mux._stop()
        for _ in range(20):
            await asyncio.sleep(0)
        reader.cancel()
        writer.cancel()
        await asyncio.gather(reader, writer, return_exceptions=True)
        return queued, context.writes, consumed

    try:
        queued, writes, read = asyncio.run(run())
    finally:
        store.close()
    assert writes == 1  # the first refusal's write never completes
    # the reader stops at MUX_OUTBOX; attaches already in flight still refuse
    assert MUX_OUTBOX <= queued <= MUX_OUTBOX + MUX_CONCURRENCY
    assert read <= MUX_OUTBOX + MUX_CONCURRENCY + 2 < 10 * MUX_OUTBOX
