"""PeerSyncMux: every account's proxy-peer Sync on one ``NbgwSyncMany`` stream.

Issue 18: one ``Sync`` stream per account costs ~31 KiB of RSS per account
(mostly gRPC core's per-call state). ``NbgwSyncMany`` (an nbgateway
extension of ``ManagementService``, field numbers >= 1001) carries many
peers' Sync on one bidi stream: each frame names a peer's WireGuard key and
holds an ``EncryptedMessage`` sealed exactly as that peer's ``Sync`` body
(SyncRequest in, SyncResponse out), so the management authenticates every
peer by its seal as before; the stream itself carries the gateway's
ProxyService token (``authorization`` metadata).

What this module owns: one :class:`PeerSyncMux` per (shared channel, token)
in the process (:func:`acquire` / :func:`release`, reference-counted by the
:class:`~nbgateway.mgmt.peerclient.PeerChannelClient` objects using it),
its bidi stream (opened at the first :meth:`PeerSyncMux.attach`, closed when
the last peer leaves) and the table of attached peers. A peer's
:meth:`~PeerSyncMux.attach` returns the lifetime of its share of the stream:
it fails, as a ``Sync`` stream's end would, with the status the management
sent for that peer only (bad seal, unknown peer, account gone), or with the
stream's error for every attached peer. Cancelling it detaches the peer (a
leave frame). The clients keep their own cycles (GetServerKey, Login, then
Sync through here), backoff and reconnects.

Fallback: a management without the extension answers UNIMPLEMENTED (sticky:
:attr:`PeerSyncMux.supported` goes False), and one that refuses the token
(UNAUTHENTICATED, PERMISSION_DENIED for the whole stream) makes
:meth:`PeerSyncMux.usable` False for :data:`REFUSED_RETRY` seconds; the
clients then open one ``Sync`` per peer as before.

Server key: :meth:`PeerSyncMux.server_key` answers the cycles of every
client sharing the mux with one ``GetServerKey`` call (concurrent cycles wait
for the call in flight; a key fetched less than :data:`SERVER_KEY_TTL`
seconds ago is reused), so a bring-up or a reconnect wave of N accounts makes
one call, not N. A client forgets it (:meth:`PeerSyncMux.forget_server_key`)
when a cycle fails, so never more calls are made than one per cycle, and a
management that changed its key is asked again after the first failure.

Memory and flow: the bridge delivers one frame at a time and reads the next
only once the peer's handler returned (or its Deferred fired), so gRPC flow
control pushes back on the management; requests are one attach per peer
cycle and one leave per detach. Reactor thread only.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from nbgateway import errors
from nbgateway._proto import management_pb2 as pb
from nbgateway.mgmt._grpcbridge import GrpcBridge, StreamCall, status_error

__all__ = ["REFUSED_RETRY", "SERVER_KEY_TTL", "PeerSyncMux", "acquire", "enabled", "release"]

log = Logger()

#: seconds the clients use one Sync per peer after the management refused the token
REFUSED_RETRY = 300.0
#: seconds a fetched server key answers later cycles (unless a cycle failed since)
SERVER_KEY_TTL = 30.0

Metadata = tuple[tuple[str, str], ...]


def enabled(environ: Any = os.environ) -> bool:
    """False when ``NBGW_PEER_CHANNEL_MUX=0`` (one Sync per peer, as before)."""
    return environ.get("NBGW_PEER_CHANNEL_MUX", "1") != "0"


class _Attached:
    """One attached peer: its handler and the lifetime of its share (whose
    canceller is :meth:`cancelled`, a bound method: no closure per peer)."""

    __slots__ = ("key", "lifetime", "mux", "on_message")

    def __init__(self, mux: PeerSyncMux, key: str,
                 on_message: Callable[[pb.EncryptedMessage], Any]) -> None:
        self.mux = mux
        self.key = key
        self.on_message = on_message
        self.lifetime: Deferred[object] = Deferred(self.cancelled)

    def cancelled(self, _d: Deferred[object]) -> None:
        self.mux._detach(self.key, self)


class PeerSyncMux:
    """One ``NbgwSyncMany`` stream shared by many peers; see the module docstring."""

    def __init__(self, reactor: Any, stub: Any, metadata: Metadata, *,
                 name: str = "peer-mux") -> None:
        self.reactor = reactor
        self._stub = stub
        self._metadata = metadata
        self.name = name
        #: False once the management answered UNIMPLEMENTED (sticky)
        self.supported = True
        #: reactor time the management last refused the stream's token
        self.refused_at: float | None = None
        self._peers: dict[str, _Attached] = {}
        self._bridge: GrpcBridge | None = None
        self._stream: StreamCall | None = None
        #: streams opened (one per bring-up or reconnect, not per peer)
        self.streams_opened = 0
        self.users = 0
        #: the last ServerKeyResponse.key (as sent) and the reactor time it came
        self._server_key: str | None = None
        self._server_key_at = 0.0
        #: cycles waiting for the GetServerKey in flight (None: none in flight)
        self._key_waiters: list[Deferred[str]] | None = None
        #: GetServerKey calls made for the clients of this mux
        self.server_key_fetches = 0

    @property
    def attached(self) -> int:
        return len(self._peers)

    def usable(self) -> bool:
        """True when a peer's Sync should go through this stream."""
        if not self.supported:
            return False
        return self.refused_at is None or \
            self.reactor.seconds() - self.refused_at >= REFUSED_RETRY

    def server_key(self, timeout: float | None) -> Deferred[str]:
        """The management's ``ServerKeyResponse.key`` for a starting cycle: the
        one fetched less than :data:`SERVER_KEY_TTL` ago, else the answer of
        the one ``GetServerKey`` in flight (started now if none is). Fails as
        the call failed. Cancelling the Deferred only stops waiting."""
        key = self._server_key
        if key is not None and self.reactor.seconds() - self._server_key_at < SERVER_KEY_TTL:
            return succeed(key)
        waiter: Deferred[str] = Deferred(self._drop_key_waiter)
        if self._key_waiters is not None:
            self._key_waiters.append(waiter)
            return waiter
        self._key_waiters = [waiter]
        if self._bridge is None:
            self._bridge = GrpcBridge(self.reactor)
        self.server_key_fetches += 1
        self._bridge.unary(self._stub.GetServerKey, pb.Empty(), timeout=timeout
                           ).addBoth(self._key_fetched)
        return waiter

    def forget_server_key(self) -> None:
        """The next cycle asks the management again (a cycle failed: the key
        may have changed)."""
        self._server_key = None

    def _drop_key_waiter(self, waiter: Deferred[str]) -> None:
        if self._key_waiters is not None and waiter in self._key_waiters:
            self._key_waiters.remove(waiter)

    def _key_fetched(self, result: object) -> None:
        waiters, self._key_waiters = self._key_waiters or [], None
        if isinstance(result, Failure):
            for waiter in waiters:
                if not waiter.called:
                    waiter.errback(Failure(result.value))
            return None
        key: str = result.key  # type: ignore[attr-defined]
        self._server_key, self._server_key_at = key, self.reactor.seconds()
        for waiter in waiters:
            if not waiter.called:
                waiter.callback(key)
        return None

    def attach(self, key: str, request: pb.EncryptedMessage,
               on_message: Callable[[pb.EncryptedMessage], Any]) -> Deferred[object]:
        """Start ``key``'s Sync on the stream with ``request`` (its sealed
        SyncRequest); ``on_message`` gets each sealed SyncResponse for it. The
        returned Deferred fails when the peer's share ends; cancel it to leave."""
        old = self._peers.pop(key, None)
        if old is not None:
            _fail(old.lifetime, errors.ManagementCancelledError("replaced by a new sync"))
        attached = _Attached(self, key, on_message)
        self._peers[key] = attached
        frame = pb.NbgwPeerSyncFrame(nbgw_peer=key, nbgw_message=request)
        stream = self._stream
        if stream is not None and stream.active:
            stream.send(frame)
        else:
            self._open(frame)
        return attached.lifetime

    def _detach(self, key: str, attached: _Attached) -> None:
        if self._peers.get(key) is not attached:
            return
        del self._peers[key]
        stream = self._stream
        if stream is None or not stream.active:
            return
        if self._peers:
            stream.send(pb.NbgwPeerSyncFrame(nbgw_peer=key, nbgw_leave=True))
        else:  # nobody left: no idle stream
            stream.cancel()

    def _open(self, first: pb.NbgwPeerSyncFrame) -> None:
        if self._bridge is None:
            self._bridge = GrpcBridge(self.reactor)
        self.streams_opened += 1
        stream = self._bridge.bidi_stream(
            self._stub.NbgwSyncMany, self._on_frame, metadata=self._metadata,
            name=f"{self.name}-NbgwSyncMany", first=first)
        self._stream = stream
        stream.done.addBoth(self._ended, stream)

    def _on_frame(self, frame: pb.NbgwPeerSyncFrame) -> Deferred[Any] | None:
        key = frame.nbgw_peer
        attached = self._peers.get(key)
        if attached is None:
            return None  # left already
        if frame.nbgw_code or frame.nbgw_leave:
            del self._peers[key]
            exc: errors.ManagementError = (
                status_error(frame.nbgw_code, frame.nbgw_details) if frame.nbgw_code
                else errors.ManagementStreamClosedError("sync of this peer ended by server"))
            _fail(attached.lifetime, exc)
            return None
        if not frame.HasField("nbgw_message"):
            return None
        d = maybeDeferred(attached.on_message, frame.nbgw_message)

        def failed(reason: Failure) -> None:  # this peer only, never the stream
            log.failure("{name}: handler of peer {key} failed", reason, name=self.name,
                        key=key)
            if self._peers.get(key) is attached:
                self._detach(key, attached)
            _fail(attached.lifetime, reason.value)

        return d.addErrback(failed)

    def _ended(self, result: object, stream: StreamCall) -> None:
        if self._stream is stream:
            self._stream = None
        exc = result.value if isinstance(result, Failure) else \
            errors.ManagementStreamClosedError("NbgwSyncMany closed by server")
        if isinstance(exc, errors.ManagementUnimplementedError):
            if self.supported:
                log.info("{name}: management has no NbgwSyncMany; one Sync per peer",
                         name=self.name)
            self.supported = False
        elif isinstance(exc, (errors.ManagementUnauthenticatedError,
                              errors.ManagementPermissionDeniedError)):
            log.warn("{name}: management refused NbgwSyncMany ({reason}); one Sync per "
                     "peer for {retry:.0f}s", name=self.name, reason=str(exc),
                     retry=REFUSED_RETRY)
            self.refused_at = self.reactor.seconds()
        peers, self._peers = self._peers, {}
        for attached in peers.values():
            _fail(attached.lifetime, exc)

    def close(self) -> None:
        """End the stream (every attached peer's lifetime fails) and the bridge."""
        if self._stream is not None:
            self._stream.cancel()
        if self._bridge is not None:
            self._bridge.stop()
            self._bridge = None


def _fail(d: Deferred[object], exc: BaseException) -> None:
    if not d.called:
        d.errback(Failure(exc))


#: (channel key, metadata) -> the process's mux for it (reactor thread only)
_muxes: dict[tuple[Any, ...], PeerSyncMux] = {}


def acquire(reactor: Any, channel_key: tuple[Any, ...], stub: Any,
            metadata: Metadata) -> PeerSyncMux:
    """The process's mux for this shared channel and token (created on first
    use); give it back with :func:`release`."""
    key = (channel_key, metadata)
    mux = _muxes.get(key)
    if mux is None:
        mux = _muxes[key] = PeerSyncMux(reactor, stub, metadata)
    mux.users += 1
    return mux


def release(mux: PeerSyncMux) -> None:
    mux.users -= 1
    if mux.users > 0:
        return
    for key, value in list(_muxes.items()):
        if value is mux:
            del _muxes[key]
    mux.close()
