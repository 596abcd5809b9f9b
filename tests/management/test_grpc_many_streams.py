"""Many concurrent peer-channel Sync streams on a real ProxyGrpcService (issue 18).

A started :class:`ProxyGrpcService` with the peer channel (loopback, SQLite
store in a tmp dir) serves 200 Sync streams of proxy peers and ordinary peers
in 5 accounts, opened by ``grpc.aio`` clients on one client loop thread in
this process (so the client adds one thread, whatever the stream count).
Asserted: every stream receives its own network map; a roster change in one
account reaches every stream of that account; no thread (``threading.enumerate``
and ``/proc/self/task``, so grpc's native threads too) is started between 10
and 200 open streams; ``stopService`` ends every stream and the server's
threads go away.
"""

from __future__ import annotations

import asyncio
import base64
import os
import threading

import grpc
import pytest
from nacl.public import Box, PrivateKey, PublicKey

from nbgateway._proto import management_pb2 as pb
from nbgateway._proto import management_pb2_grpc as pb_grpc
from nbgateway.management.grpcserver import ProxyGrpcService
from nbgateway.management.model import Account, Group, Peer, Service, Target, TargetOptions
from nbgateway.management.store import Store

CLUSTER = "eu.proxy.netbird.io"
ACCOUNTS = 5
PER_ACCOUNT = 40  # 200 streams; 4 proxy peers per account, the rest ordinary peers
WAIT = 60.0


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def os_tasks() -> set[str]:
    """Ids of this process's native threads."""
    return set(os.listdir("/proc/self/task"))


class ClientLoop:
    """An asyncio loop on one thread, for the aio client side of the test."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro, timeout: float = WAIT):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class Peerling:
    """One peer's key pair and its Sync stream (aio call, read on the client loop)."""

    def __init__(self, account_id: str, private: PrivateKey, server_public: PublicKey) -> None:
        self.account_id = account_id
        self.private = private
        self.key = b64(bytes(private.public_key))
        self.box = Box(private, server_public)
        self.proxy = False
        self.call: grpc.aio.UnaryStreamCall | None = None
        self.maps: list[pb.SyncResponse] = []

    def open_sync(self, stub: pb_grpc.ManagementServiceStub) -> None:
        req = pb.SyncRequest(meta=pb.PeerSystemMeta(hostname="t", goOS="linux"))
        body = bytes(self.box.encrypt(req.SerializeToString()))
        self.call = stub.Sync(pb.EncryptedMessage(wgPubKey=self.key, body=body))

    async def read_map(self) -> pb.SyncResponse:
        assert self.call is not None
        enc = await self.call.read()
        assert enc is not grpc.aio.EOF, "stream ended before a map"
        m = pb.SyncResponse()
        m.ParseFromString(self.box.decrypt(enc.body))
        self.maps.append(m)
        return m

    async def read_end(self) -> grpc.StatusCode:
        """Read until the stream ends; its status code."""
        assert self.call is not None
        try:
            while await self.call.read() is not grpc.aio.EOF:
                pass
        except grpc.aio.AioRpcError as exc:
            return exc.code()
        return await self.call.code()


def private_service(account_id: str, name: str, groups: tuple[str, ...]) -> Service:
    return Service(
        account_id=account_id, name=name, domain=f"{name}.{CLUSTER}", private=True,
        access_groups=groups,
        targets=(Target(target_type="cluster", target_id=CLUSTER, host="backend.lan",
                        port=8080, options=TargetOptions(direct_upstream=True)),),
    )


@pytest.fixture
def world(tmp_path):
    store = Store.open(f"sqlite:///{tmp_path / 'store.db'}", known_clusters=[CLUSTER])
    svc = ProxyGrpcService(store, addr="127.0.0.1:0",
                           peer_channel_key=str(tmp_path / "wg-server.key"))
    svc.startService()
    server_public = PublicKey(base64.b64decode(svc.peer_channel.server_key.public_b64))
    peers: list[Peerling] = []
    for a in range(ACCOUNTS):
        # per account: 4 proxy peers of the cluster, 36 user peers in group "users",
        # a private service for "users" (so users and proxy peers see each other)
        account_id = f"acct-{a}"
        store.accounts.create(Account(id=account_id, domain=f"a{a}.test"))
        users = []
        for i in range(PER_ACCOUNT):
            p = Peerling(account_id, PrivateKey.generate(), server_public)
            proxy = i < 4
            row = store.peers.create(Peer(
                account_id=account_id, name=f"p{i}", key=p.key, proxy=proxy,
                proxy_cluster=CLUSTER if proxy else "", dns_label=f"p{i}"))
            p.proxy = proxy
            if not proxy:
                users.append(row.id)
            peers.append(p)
        store.groups.create(Group(id=f"users-{a}", account_id=account_id, name="users",
                                  peers=tuple(users)))
        store.services.create(private_service(account_id, f"app{a}", (f"users-{a}",)))
    client = ClientLoop()
    stub_holder: dict[str, object] = {}

    async def make_channel():
        ch = grpc.aio.insecure_channel(f"127.0.0.1:{svc.port}")
        stub_holder["ch"] = ch
        return pb_grpc.ManagementServiceStub(ch)

    stub = client.run(make_channel())
    yield svc, store, peers, client, stub
    if svc.running:
        svc.stopService()
    client.run(stub_holder["ch"].close())  # type: ignore[attr-defined]
    client.close()
    store.close()


def _open(client: ClientLoop, stub, batch: list[Peerling]) -> list[pb.SyncResponse]:
    async def go():
        for p in batch:
            p.open_sync(stub)
        return await asyncio.gather(*(p.read_map() for p in batch))

    return client.run(go())


def test_200_sync_streams_with_a_fixed_thread_count(world) -> None:
    svc, store, peers, client, stub = world
    first = _open(client, stub, peers[:10])
    threads_small, tasks_small = set(threading.enumerate()), os_tasks()
    rest = _open(client, stub, peers[10:])
    maps = first + rest
    assert len(maps) == ACCOUNTS * PER_ACCOUNT
    for p, m in zip(peers, maps, strict=True):
        # each peer got its own map: all the other peers of its account, nobody else
        assert m.peerConfig.address, m
        remote = {r.wgPubKey for r in m.remotePeers}
        same = {q.key for q in peers if q.account_id == p.account_id and q is not p}
        assert p.key not in remote
        assert remote <= same
    assert svc.peer_channel.hub.active() == ACCOUNTS * PER_ACCOUNT
    # no thread (Python or native: grpc's own included) was started for 190 more streams
    assert set(threading.enumerate()) - threads_small == set()
    assert os_tasks() - tasks_small == set()

    # a roster change in acct-0 reaches all 40 of its streams (pushed, not polled):
    # a new user peer in "users" (the proxy peers see it) and a new proxy peer (the
    # user peers see it)
    new_user, new_proxy = (b64(bytes(PrivateKey.generate().public_key)) for _ in range(2))
    row = store.peers.create(Peer(account_id="acct-0", name="newcomer", key=new_user))
    store.groups.add_peers("acct-0", "users-0", [row.id])
    store.peers.create(Peer(account_id="acct-0", name="proxy-new", key=new_proxy, proxy=True,
                            proxy_cluster=CLUSTER, connected=True))
    acct0 = [p for p in peers if p.account_id == "acct-0"]

    async def until_newcomer(p: Peerling) -> None:
        want = new_user if p.proxy else new_proxy
        while True:
            m = await p.read_map()
            if want in {r.wgPubKey for r in m.remotePeers}:
                return

    async def all_see_newcomer() -> None:
        await asyncio.gather(*(until_newcomer(p) for p in acct0))

    client.run(all_see_newcomer())
    assert set(threading.enumerate()) - threads_small == set()

    # stopping the service ends every stream and takes the server's threads with it
    ours = [t for t in threading.enumerate() if t.name.startswith("nbmanagement-grpc")]
    assert ours
    d = svc.stopService()
    async def all_ends() -> list[grpc.StatusCode]:
        return await asyncio.gather(*(p.read_end() for p in peers))

    codes = client.run(all_ends())
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.CANCELLED,
                          grpc.StatusCode.UNAVAILABLE}, set(codes)
    assert d is not None  # fires from the reactor's pool; no reactor runs here, so
    deadline = 20.0  # wait for the server's threads themselves
    while deadline > 0 and any(t.is_alive() for t in ours):
        threading.Event().wait(0.1)
        deadline -= 0.1
    left = [t.name for t in ours if t.is_alive()]
    assert not left, left
    assert svc.peer_channel is None and svc.servicer is None
