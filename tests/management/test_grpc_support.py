"""Shared harness for the ProxyService gRPC tests (no tests of its own).

``Harness`` starts a real :class:`ProxyGrpcService` on 127.0.0.1 (ephemeral
port) over a SQLite store in a tmp dir, builds fixture F (:class:`Fixture`:
one account with users, peers, groups and services), and hands out real
grpcio stubs.  :class:`SyncClient` drives a
SyncMappings bidi stream from a test thread: it collects responses and sends
acks only when told to, so ack back-pressure can be observed.
"""

from __future__ import annotations

import base64
import os
import queue
import threading
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from nbgateway._proto import proxy_service_pb2 as pb
from nbgateway._proto import proxy_service_pb2_grpc as pb_grpc
from nbgateway.management.grpcserver import ProxyGrpcService
from nbgateway.management.model import (
    Account,
    Group,
    Peer,
    Service,
    Target,
    TargetOptions,
    User,
)
from nbgateway.management.store import Store

ACCOUNT = "acct-1"
CLUSTER = "eu.proxy.netbird.io"
DOMAIN = "myapp.eu.proxy.netbird.io"
U_IP = "100.64.0.10"
P_IP = "100.64.0.99"
WAIT = 10.0


def wg_key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


def cluster_target(host: str = "backend.lan", port: int = 8080) -> Target:
    return Target(
        host=host,
        port=port,
        protocol="http",
        target_id=CLUSTER,
        target_type="cluster",
        options=TargetOptions(direct_upstream=True),
    )


def make_service(
    name: str,
    *,
    sid: str = "",
    account_id: str = ACCOUNT,
    private: bool = False,
    access_groups: tuple[str, ...] | None = None,
    **kw: Any,
) -> Service:
    return Service(
        id=sid,
        account_id=account_id,
        name=name,
        domain=kw.pop("domain", f"{name}.{CLUSTER}"),
        targets=kw.pop("targets", (cluster_target(),)),
        private=private,
        access_groups=access_groups,
        **kw,
    )


class Fixture:
    """Fixture F in a store."""

    def __init__(self, store: Store) -> None:
        self.store = store
        store.accounts.create(Account(id=ACCOUNT, domain="netbird.test"))
        store.groups.create(Group(id="grp-admins", account_id=ACCOUNT, name="admins"))
        store.groups.create(Group(id="grp-other", account_id=ACCOUNT, name="other"))
        self.alice = store.users.create(
            User(
                id="alice",
                account_id=ACCOUNT,
                email="alice@example.com",
                auto_groups=("grp-admins",),
            )
        )
        u = store.peers.create(
            Peer(account_id=ACCOUNT, name="alice-laptop", key=wg_key(), ip=U_IP, user_id="alice")
        )
        # exactly G (the store also puts user peers into "All")
        self.u = store.peers.update(_with_groups(u, ("grp-admins",)))
        self.p = store.peers.create(
            Peer(
                account_id=ACCOUNT,
                name="proxy-p",
                key=wg_key(),
                ip=P_IP,
                proxy=True,
                proxy_cluster=CLUSTER,
                connected=True,
            )
        )
        self.s = store.services.create(
            make_service("myapp", sid="svc-1", private=True, access_groups=("grp-admins",))
        )
        self.token_record, self.token = store.proxies.create_token("shared", account_id=None)


def _with_groups(peer: Peer, groups: tuple[str, ...]) -> Peer:
    import dataclasses

    return dataclasses.replace(peer, groups=groups)


class Harness:
    """A started ProxyGrpcService on loopback plus a client channel."""

    def __init__(self, store: Store, **servicer_options: Any) -> None:
        self.store = store
        self.events: list[tuple[str, dict]] = []
        self._events_lock = threading.Lock()
        self._events_cond = threading.Condition(self._events_lock)
        servicer_options.setdefault("on_event", self._on_event)
        self.service = ProxyGrpcService(
            store, addr="127.0.0.1:0", servicer_options=servicer_options
        )
        self.service.startService()
        self.servicer = self.service.servicer
        self.address = f"127.0.0.1:{self.service.port}"
        self.channel = grpc.insecure_channel(self.address)
        self.stub = pb_grpc.ProxyServiceStub(self.channel)

    def _on_event(self, name: str, **fields: Any) -> None:
        with self._events_cond:
            self.events.append((name, fields))
            self._events_cond.notify_all()

    def wait_event(self, predicate, timeout: float = WAIT) -> None:
        with self._events_cond:
            ok = self._events_cond.wait_for(
                lambda: any(predicate(n, f) for n, f in self.events), timeout
            )
        assert ok, f"event not seen; events: {self.events}"

    def event_names(self, proxy_id: str) -> list[str]:
        with self._events_lock:
            return [
                f"{n}:{f.get('batch', f.get('size'))}"
                for n, f in self.events
                if f.get("proxy_id") == proxy_id
            ]

    def settle(self) -> None:
        """Wait until the broadcaster has handled every store change made so far."""
        assert self.servicer.wait_idle(WAIT)

    def close(self) -> None:
        self.channel.close()
        service = self.service
        if service.servicer is not None:
            service.servicer.stop()
        if service.server is not None:
            service.server.stop(0).wait(5)
        service.servicer = service.server = None
        service.running = 0


def md(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def caps(**kw: bool) -> pb.ProxyCapabilities:
    return pb.ProxyCapabilities(**kw)


X_CAPS = {"supports_private_service": True}


class SyncClient:
    """A SyncMappings stream whose acks the test sends explicitly."""

    def __init__(
        self,
        stub: pb_grpc.ProxyServiceStub,
        token: str,
        proxy_id: str,
        *,
        address: str = CLUSTER,
        capabilities: pb.ProxyCapabilities | None = None,
        first: pb.SyncMappingsRequest | None = None,
        auto_ack: bool = False,
    ) -> None:
        self._out: queue.Queue[pb.SyncMappingsRequest | None] = queue.Queue()
        self.responses: queue.Queue[Any] = queue.Queue()
        self.auto_ack = auto_ack
        init = pb.SyncMappingsInit(proxy_id=proxy_id, address=address, version="test")
        if capabilities is not None:
            init.capabilities.CopyFrom(capabilities)
        self._out.put(first if first is not None else pb.SyncMappingsRequest(init=init))
        self.call = stub.SyncMappings(self._requests(), metadata=md(token))
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _requests(self) -> Iterator[pb.SyncMappingsRequest]:
        while True:
            item = self._out.get()
            if item is None:
                return
            yield item

    def _read(self) -> None:
        try:
            for resp in self.call:
                self.responses.put(resp)
                if self.auto_ack:
                    self.ack()
        except grpc.RpcError as exc:
            self.responses.put(exc)
            return
        self.responses.put(None)

    def ack(self) -> None:
        self._out.put(pb.SyncMappingsRequest(ack=pb.SyncMappingsAck()))

    def send(self, req: pb.SyncMappingsRequest) -> None:
        self._out.put(req)

    def next(self, timeout: float = WAIT) -> pb.SyncMappingsResponse:
        item = self.responses.get(timeout=timeout)
        if isinstance(item, grpc.RpcError):
            raise item
        assert item is not None, "stream ended"
        return item

    def end(self, timeout: float = WAIT) -> grpc.RpcError | None:
        """Wait for the stream to end; the RpcError, or None for a clean end."""
        while True:
            item = self.responses.get(timeout=timeout)
            if item is None or isinstance(item, grpc.RpcError):
                return item

    def snapshot(self) -> list[pb.ProxyMapping]:
        """Read (and ack) batches until ``initial_sync_complete``."""
        out: list[pb.ProxyMapping] = []
        while True:
            resp = self.next()
            out.extend(resp.mapping)
            if not self.auto_ack:
                self.ack()
            if resp.initial_sync_complete:
                return out

    def close(self) -> None:
        self._out.put(None)
        self.call.cancel()


@pytest.fixture
def grpc_store(tmp_path) -> Iterator[Store]:
    store = Store.open(f"sqlite:///{tmp_path / 'store.db'}", known_clusters=[CLUSTER])
    yield store
    store.close()


@pytest.fixture
def fx(grpc_store: Store) -> Fixture:
    return Fixture(grpc_store)


@pytest.fixture
def harness(fx: Fixture) -> Iterator[Harness]:
    h = Harness(fx.store, heartbeat_interval=0.2)
    yield h
    h.close()
