"""The peer channel: NetBird's ``ManagementService`` (GetServerKey, Login, Sync) over grpcio.

A WireGuard peer (a REST-created peer or a proxy peer registered by
``CreateProxyPeer``) proves possession of its key by sealing its
LoginRequest/SyncRequest in a NaCl box to the server key
(:mod:`nbgateway.peerbox`). Error statuses follow upstream
``management/internals/shared/grpc/server.go``:

* unparsable ``wgPubKey`` -> INVALID_ARGUMENT ``provided wgPubKey <k> is invalid``;
  a body that does not open or parse -> INVALID_ARGUMENT ``invalid request message``;
* Login without ``meta`` -> FAILED_PRECONDITION;
* Login of an unknown key -> PERMISSION_DENIED (no auth method) or NOT_FOUND (a
  setup key was offered: nbgateway has none); Sync of an unknown key ->
  PERMISSION_DENIED ``peer is not registered``;
* too many concurrent Sync streams -> RESOURCE_EXHAUSTED.

Nothing is written to the store by Login. A Sync stream marks the peer
connected while it is the peer's current stream (a newer stream for the same
key ends the older one) and disconnected when it ends.

Push model: the store's after-commit change listener marks every stream of
the touched account dirty (:class:`PeerUpdateHub`). Each stream holds at
most one pending "rebuild" flag (its bounded queue: bursts coalesce, and a
slow reader never makes the server buffer more than one map), gets its map
from the account's memo (:class:`~nbgateway.management.mapcache.MapCache`:
one read per account revision, each peer's map, encoded response and the
access digest built once per revision; a change of connection state or
service status keeps the revision), and sends it only if it differs from
the last map it sent.

Login reads only the peer and its account (one transaction): its answer is
the peer's own address, IPv6 address and FQDN, no policy evaluation.

Threads: ``Sync`` is a coroutine on the gRPC server's asyncio loop
(:mod:`~nbgateway.management.grpcloop`); it waits on an ``asyncio.Event``
and holds no thread.  Its blocking work (store reads, building and sealing a
map) runs in the loop's small fixed executor; the store listener wakes
streams with ``loop.call_soon_threadsafe``.  Streams are admitted by
:class:`~nbgateway.management.streamslots.StreamSlots` (``max_streams``,
default 4,096, at most a quarter per account and kind).

One stream for many proxy peers (``NbgwSyncMany``, an nbgateway extension):
:mod:`nbgateway.management.syncmany`; the servicer checks the gateway's
ProxyService token (``authenticate``; without one the method answers
UNIMPLEMENTED and the gateway falls back to ``Sync``) and hands the stream to
:class:`~nbgateway.management.syncmany.SyncMany`.

Revocation: a proxy peer's map carries no peer groups, user states or service
access groups, yet the gateway caches ValidateTunnelPeer answers that depend
on them. So a proxy peer's stream compares, besides the map, an
:func:`access_digest` of everything such an answer depends on (each peer's
address, owner and groups; group names; users' email and blocked/pending
state; each service's domain, private flag, access and bearer groups). When
only the digest changed the same map is sent again with a new ``Serial``: the
gateway evicts the account's cached validations on every map it receives.
Removing a peer from a group, deleting a peer, blocking its user or changing a
service's access groups thus reaches the gateway within one coalesced push,
while connection-state churn (``connected``, ``last_seen``) changes neither
and sends nothing.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from twisted.logger import Logger

from nbgateway._proto import management_pb2 as pb
from nbgateway._proto import management_pb2_grpc as pb_grpc
from nbgateway.management.crypto_box import ServerKey
from nbgateway.management.errors import NotFound
from nbgateway.management.grpcloop import RpcAbortError, write_or_stop
from nbgateway.management.mapcache import AccountEntry, MapCache
from nbgateway.management.model import ChangeKind, ProxyAccessToken, User, utcnow
from nbgateway.management.networkmap import (
    NetworkMap,
    build_network_map,
    own_network_map,
    to_proto_network_map,
    to_proto_peer_config,
)
from nbgateway.management.peerhub import PeerUpdateHub, Subscription
from nbgateway.management.streamslots import StreamSlots
from nbgateway.management.syncmany import SyncMany
from nbgateway.management.synthetic import AccountView
from nbgateway.peerbox import (
    BoxError,
    decode_wg_key,
    encode_wg_key,
    open_message,
    seal_message,
)

__all__ = [
    "MAX_BODY_BYTES",
    "SERVER_KEY_FILE",
    "ManagementServicer",
    "access_digest",
    "add_to_server",
]

log = Logger()

MAX_BODY_BYTES = 1 << 20
#: file name of the server's WireGuard private key inside the data directory
SERVER_KEY_FILE = "wg-server.key"
#: concurrent Sync streams per process (a stream is a coroutine, not a thread)
DEFAULT_MAX_STREAMS = 4096
SERVER_KEY_VALIDITY_S = 24 * 3600


class _SerialClock:
    """Monotonic NetworkMap serials that also keep growing across restarts."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last = 0

    def next(self) -> int:
        with self._lock:
            self._last = max(self._last + 1, time.time_ns() // 1_000_000)
            return self._last


def access_digest(view: AccountView, users: Iterable[User]) -> bytes:
    """A digest of everything a ValidateTunnelPeer answer for the account
    depends on (see the module docstring); connection state is left out."""
    member_of: dict[str, set[str]] = {}  # one pass over the groups (not per peer)
    for gid, g in view.groups.items():
        for pid in g.peers:
            member_of.setdefault(pid, set()).add(gid)
    peers = sorted(
        (p.id, p.ip, p.ipv6 or "", p.user_id or "", p.name, p.key,
         tuple(sorted(member_of.get(p.id, set()).union(
             g for g in p.groups if g in view.groups))))
        for p in view.peers.values()
    )
    groups = sorted((g.id, g.name) for g in view.groups.values())
    people = sorted((u.id, u.email, u.blocked, u.pending_approval) for u in users)
    services = []
    for svc in view.services:
        bearer = svc.auth.bearer_auth
        services.append((
            svc.id, svc.domain, svc.private, svc.enabled,
            tuple(svc.access_groups) if svc.access_groups is not None else None,
            bool(bearer and bearer.enabled),
            tuple(bearer.distribution_groups) if bearer else (),
        ))
    services.sort()
    return hashlib.sha256(repr((peers, groups, people, services)).encode()).digest()


def _zero_timestamp() -> Timestamp:
    """The explicit-zero ``sessionExpiresAt``: login expiry disabled."""
    return Timestamp()


class ManagementServicer(pb_grpc.ManagementServiceServicer):
    """gRPC servicer of the peer channel; see the module docstring."""

    def __init__(
        self,
        store: Any,
        server_key: ServerKey,
        *,
        max_streams: int = DEFAULT_MAX_STREAMS,
        coalesce_delay: float = 0.05,
        poll_interval: float = 1.0,
        netbird_config: pb.NetbirdConfig | None = None,
        authenticate: Callable[[Any], Awaitable[ProxyAccessToken]] | None = None,
    ) -> None:
        self.store = store
        #: the ProxyService token check of NbgwSyncMany (a coroutine taking the
        #: call's context: the caller's token, or it aborts); None: UNIMPLEMENTED
        self.authenticate = authenticate
        #: STUN/TURN/signal/relay hints handed to peers (empty: peers use endpoints)
        self.netbird_config = netbird_config or pb.NetbirdConfig()
        self.server_key = server_key
        self.max_streams = max_streams
        self.coalesce_delay = coalesce_delay
        #: unused since streams are coroutines (a closed or cancelled stream is woken
        #: at once, nothing polls); accepted so existing callers keep working
        self.poll_interval = poll_interval
        #: the per-account memo of views and built maps (mapcache.MapCache)
        self.maps = MapCache(store)
        self.hub = PeerUpdateHub(self.maps.changed)
        self._serials = _SerialClock()
        self._slots = StreamSlots(max_streams)
        self._listening = False
        #: open NbgwSyncMany streams (added and removed on the loop; read by the
        #: store listener and close(): under _muxes_lock)
        self._muxes: set[SyncMany] = set()
        self._muxes_lock = threading.Lock()

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> None:
        if not self._listening:
            self.store.add_listener(self.hub.on_change)
            self.store.add_listener(self._token_changed)
            self._listening = True

    def close(self) -> None:
        """Detach from the store and end every open Sync stream."""
        if self._listening:
            self.store.remove_listener(self.hub.on_change)
            self.store.remove_listener(self._token_changed)
            self._listening = False
        self.hub.close_all()
        with self._muxes_lock:
            muxes = list(self._muxes)
        for mux in muxes:
            mux.stop_threadsafe()

    def _token_changed(self, kind: ChangeKind, account_id: str, ids: tuple[str, ...]) -> None:
        """Store listener: an NbgwSyncMany stream whose token changed (revoked,
        deleted) checks it again and ends UNAUTHENTICATED if it is no longer valid."""
        if kind != ChangeKind.PROXY_TOKEN:
            return
        with self._muxes_lock:
            muxes = [m for m in self._muxes if m.caller.id in ids]
        for mux in muxes:
            mux.recheck_threadsafe()

    def _token_valid(self, token_id: str) -> bool:
        try:
            return self.store.proxies.get_token(token_id).is_valid(utcnow())
        except NotFound:
            return False

    # -- request decoding -------------------------------------------------------------

    def _parse(self, request: pb.EncryptedMessage, into: Any) -> bytes:
        """Open ``request`` into ``into``; the peer's key, or :class:`RpcAbortError`."""
        try:
            peer_key = decode_wg_key(request.wgPubKey)
        except BoxError:
            raise RpcAbortError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"provided wgPubKey {request.wgPubKey[:64]} is invalid",
            ) from None
        if len(request.body) > MAX_BODY_BYTES:
            raise RpcAbortError(grpc.StatusCode.INVALID_ARGUMENT, "invalid request message")
        try:
            open_message(request.body, into, peer_key, self.server_key.private_bytes)
        except BoxError:
            log.debug("undecryptable peer-channel message from {key}", key=request.wgPubKey)
            raise RpcAbortError(grpc.StatusCode.INVALID_ARGUMENT,
                                "invalid request message") from None
        return peer_key

    def _seal(self, message: Any, peer_key: bytes) -> pb.EncryptedMessage:
        return pb.EncryptedMessage(
            wgPubKey=self.server_key.public_b64,
            body=seal_message(message, peer_key, self.server_key.private_bytes),
        )

    # -- RPCs (unary ones run in the server's small thread pool) -----------------------

    def GetServerKey(self, request: pb.Empty, context: grpc.ServicerContext):
        expires = Timestamp()
        expires.FromSeconds(int(time.time()) + SERVER_KEY_VALIDITY_S)
        return pb.ServerKeyResponse(key=self.server_key.public_b64, expiresAt=expires)

    def isHealthy(self, request: pb.Empty, context: grpc.ServicerContext):
        return pb.Empty()

    def Login(self, request: pb.EncryptedMessage, context: grpc.ServicerContext):
        try:
            return self._login(request)
        except RpcAbortError as exc:
            context.abort(exc.code, exc.details)

    def _login(self, request: pb.EncryptedMessage) -> pb.EncryptedMessage:
        login = pb.LoginRequest()
        peer_key = self._parse(request, login)
        if not login.HasField("meta"):
            raise RpcAbortError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"peer system meta has to be provided to log in. Peer {request.wgPubKey}",
            )
        found = self.store.peers.get_by_key_with_account(encode_wg_key(peer_key))
        if found is None:
            if login.setupKey:
                raise RpcAbortError(grpc.StatusCode.NOT_FOUND,
                                    "couldn't add peer: setup key is invalid")
            raise RpcAbortError(
                grpc.StatusCode.PERMISSION_DENIED,
                "no peer auth method provided, please use a setup key or interactive SSO login",
            )
        peer, account = found
        nm = own_network_map(peer, account)
        # a gateway logs its proxy peers in once per account at every start:
        # one info line each would be thousands per gateway start
        (log.debug if peer.proxy else log.info)(
            "peer {peer_id} logged in (account {account_id})",
            peer_id=peer.id,
            account_id=peer.account_id,
        )
        resp = pb.LoginResponse(
            netbirdConfig=self.netbird_config,
            peerConfig=to_proto_peer_config(
                nm, ipv6=pb.PeerCapabilityIPv6Overlay in login.meta.capabilities),
            sessionExpiresAt=_zero_timestamp(),
        )
        return self._seal(resp, peer_key)

    async def Sync(self, request: pb.EncryptedMessage, context: Any) -> None:
        """A coroutine on the server's loop: it holds no thread while it waits."""
        loop = asyncio.get_running_loop()
        try:
            peer_key, peer, sync = await loop.run_in_executor(None, self._sync_open, request)
        except RpcAbortError as exc:
            await context.abort(exc.code, exc.details)
        if not self._slots.acquire(peer.account_id, peer.proxy):
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "too many concurrent sync requests, please try again later",
            )
        source_prefixes = pb.PeerCapabilitySourcePrefixes in sync.meta.capabilities
        ipv6 = pb.PeerCapabilityIPv6Overlay in sync.meta.capabilities
        sub = Subscription(peer.account_id, peer.id, peer.key, loop)
        self.hub.subscribe(sub)
        try:
            await self._stream(sub, peer_key, source_prefixes, context, ipv6=ipv6)
        finally:
            self._end(sub, loop)
            self._slots.release(peer.account_id, peer.proxy)

    def _sync_open(self, request: pb.EncryptedMessage) -> tuple[bytes, Any, pb.SyncRequest]:
        sync = pb.SyncRequest()
        peer_key = self._parse(request, sync)
        peer = self.store.peers.get_by_key(encode_wg_key(peer_key))
        if peer is None:
            raise RpcAbortError(grpc.StatusCode.PERMISSION_DENIED, "peer is not registered")
        return peer_key, peer, sync

    async def NbgwSyncMany(self, request_iterator: AsyncIterator[pb.NbgwPeerSyncFrame],
                           context: Any) -> None:
        """Many proxy peers' Sync on one stream (see the module docstring)."""
        if self.authenticate is None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED,
                                "NbgwSyncMany needs the ProxyService token check")
        assert self.authenticate is not None
        caller = await self.authenticate(context)
        mux = SyncMany(self, caller, context, asyncio.get_running_loop())
        with self._muxes_lock:
            self._muxes.add(mux)
        # a token revoked between the check above and this registration was
        # not seen by _token_changed: check it once more, now registered
        mux.recheck_threadsafe()
        reader = asyncio.ensure_future(mux.read(request_iterator))
        reader.add_done_callback(mux.reader_done)
        try:
            await mux.write_loop()
        finally:
            reader.cancel()
            with self._muxes_lock:
                self._muxes.discard(mux)
            mux.drop_all()
        if mux.revoked:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "token expired or revoked")

    # -- Sync internals ---------------------------------------------------------------------

    def _build(self, account_id: str, peer_id: str) -> NetworkMap | None:
        view = self.maps.get(account_id).view
        return build_network_map(view, peer_id) if peer_id in view.peers else None

    def _sync_response(
        self, nm: NetworkMap, source_prefixes: bool, ipv6: bool = False
    ) -> pb.SyncResponse:
        netmap = to_proto_network_map(
            nm, self._serials.next(), source_prefixes=source_prefixes, ipv6=ipv6)
        resp = pb.SyncResponse(
            netbirdConfig=self.netbird_config,
            peerConfig=netmap.peerConfig,
            NetworkMap=netmap,
            remotePeersIsEmpty=netmap.remotePeersIsEmpty,
            sessionExpiresAt=_zero_timestamp(),
        )
        resp.remotePeers.extend(netmap.remotePeers)
        return resp

    @staticmethod
    def _access_digest(entry: AccountEntry) -> bytes:
        return entry.memo("access-digest", lambda: access_digest(entry.view, entry.users))

    def _encoded(self, view: AccountView, peer_id: str, source_prefixes: bool,
                 ipv6: bool) -> bytes:
        """The peer's response with serial 0, serialized: its fingerprint, and
        what is parsed back to send it (kept instead of the built map: smaller)."""
        resp = self._sync_response(build_network_map(view, peer_id), source_prefixes, ipv6)
        resp.NetworkMap.Serial = 0
        return resp.SerializeToString(deterministic=True)

    def _render(self, sub: Subscription, peer_key: bytes, source_prefixes: bool,
                ipv6: bool, last: bytes) -> tuple[bytes, pb.EncryptedMessage | None] | None:
        """Build the peer's map (executor thread): ``None`` when the peer is gone,
        else ``(fingerprint, sealed response or None when unchanged)``."""
        entry = self.maps.get(sub.account_id)
        peer = entry.view.peers.get(sub.peer_id)
        if peer is None or peer.key != sub.key:
            return None
        encoded = entry.memo(
            ("sync", sub.peer_id, source_prefixes, ipv6),
            lambda: self._encoded(entry.view, sub.peer_id, source_prefixes, ipv6))
        fp = encoded
        if peer.proxy:  # the gateway caches validations: see the docstring
            fp += self._access_digest(entry)
        if fp == last:
            return fp, None
        resp = pb.SyncResponse.FromString(encoded)
        resp.NetworkMap.Serial = self._serials.next()
        return fp, self._seal(resp, peer_key)

    async def _stream(self, sub: Subscription, peer_key: bytes, source_prefixes: bool,
                      context: Any, ipv6: bool = False) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(None, functools.partial(
                self.store.peers.set_connected, sub.account_id, sub.peer_id, True,
                reload=False))
        except NotFound:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "peer is not registered")
        last = b""
        pending = True  # the initial map
        while True:
            if pending:
                out = await loop.run_in_executor(
                    None, self._render, sub, peer_key, source_prefixes, ipv6, last)
                if out is None:
                    log.info("sync stream of removed peer {peer_id} ends", peer_id=sub.peer_id)
                    await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                        "peer is not registered")
                    return
                fp, sealed = out
                if sealed is not None:
                    last = fp
                    if not await write_or_stop(context, sealed, sub.closed_event):
                        return
            pending = await sub.next_change()
            if not pending:
                return  # closed: superseded, or the service is stopping
            if self.coalesce_delay > 0:
                # let the rest of a burst land; the one-slot flag absorbs it
                await asyncio.sleep(self.coalesce_delay)
                sub.take()

    def _end(self, sub: Subscription, loop: asyncio.AbstractEventLoop) -> None:
        sub.close()
        if self.hub.unsubscribe(sub):
            loop.run_in_executor(None, self._mark_disconnected, sub)

    def _mark_disconnected(self, sub: Subscription) -> None:
        try:
            self.store.peers.set_connected(sub.account_id, sub.peer_id, False, reload=False)
        except NotFound:
            pass
        except Exception:
            log.failure("marking peer {peer_id} disconnected failed", peer_id=sub.peer_id)


def add_to_server(
    server: Any,
    store: Any,
    server_key: ServerKey | str,
    **kwargs: Any,
) -> ManagementServicer:
    """Register the peer channel on ``server`` and attach it to the store's changes.

    ``server_key`` is a :class:`ServerKey` or the path of its key file (created
    0600 on first use; by convention ``DATADIR/`` + :data:`SERVER_KEY_FILE`).
    ``server`` is a ``grpc.aio`` server or a
    :class:`~nbgateway.management.grpcloop.LoopServer` (``Sync`` is a
    coroutine: a threaded ``grpc.server`` cannot host it).
    Call before ``server.start()``; returns the servicer, whose ``close()``
    must be called when stopping the server (it ends the open Sync streams).
    """
    if isinstance(server_key, str):
        server_key = ServerKey.load_or_create(server_key)
    servicer = ManagementServicer(store, server_key, **kwargs)
    pb_grpc.add_ManagementServiceServicer_to_server(servicer, server)
    servicer.start()
    return servicer
