"""ManagedChannel: the connection lifecycle both gateway-side management clients share.

The ProxyService client (:mod:`nbgateway.mgmt.client`) and the per-account
peer-channel client (:mod:`nbgateway.mgmt.peerclient`) each own one of these.
It owns, and nothing else does:

* the parsed ``--mgmt`` target (:class:`ManagementTarget`: scheme, host,
  port, the plaintext-only-to-loopback rule; several comma-separated
  addresses of management replicas, or one DNS name with several records:
  the channel's pick-first policy connects to the first that answers and
  moves to the next when it dies) and the gRPC channel built from
  it (keepalive 20 s / 10 s, pings without calls, receive limit): a
  ``grpc.aio`` channel bound to the bridge's one process-wide loop thread, so
  any number of sessions adds no thread, and shared (reference-counted) by
  every session with the same target, so a thousand accounts' peer channels
  are streams on one connection; or one a caller supplies (closed on stop
  only if the session made it). gRPC's retry machinery (transparent retries
  of a call that never reached the server) is off unless the session asks
  for it (``transparent_retries``: the ProxyService client does): it costs
  ~6 KiB of C memory per open call, i.e. per account's ``Sync`` stream, and
  the peer channel's reconnect loop already retries a failed cycle;
* the stub and the thread bridge (:class:`~nbgateway.mgmt._grpcbridge.GrpcBridge`);
* the reconnect loop (:class:`~nbgateway.mgmt.reconnect.Reconnector`) that
  runs the client's connection attempt with jittered exponential backoff;
* the current long-lived stream and the "connected" flag with its change
  callback (exceptions from the callback are logged, never raised).

Nothing is live before :meth:`ManagedChannel.open`; :meth:`ManagedChannel.close`
cancels the loop and every live call (bounded thread joins) and drops the
channel. What an attempt does (which RPCs, what a message means) stays with
the client.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import grpc
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from nbgateway import errors
from nbgateway.mgmt._grpcbridge import GrpcBridge, StreamCall, aio_loop
from nbgateway.mgmt.reconnect import Backoff, Reconnector

__all__ = [
    "DEFAULT_MAX_RECEIVE_BYTES",
    "ManagedChannel",
    "ManagementTarget",
    "SessionOwner",
    "chain_to",
    "is_loopback_host",
    "split_management_url",
]

log = Logger()

#: Largest message accepted from management unless the client says otherwise.
DEFAULT_MAX_RECEIVE_BYTES = 16 * 1024 * 1024


def split_management_url(url: str, default_scheme: str = "http") -> list[str]:
    """One URL per address of a comma-separated ``--mgmt`` value
    (``https://10.0.0.1:443,10.0.0.2:443``); an element without a scheme takes
    the first element's."""
    items = [u.strip() for u in url.split(",") if u.strip()]
    if not items:
        return []
    scheme = items[0].split("://", 1)[0] if "://" in items[0] else default_scheme
    return [u if "://" in u else f"{scheme}://{u}" for u in items]


class ManagementTarget:
    """Parsed ``--mgmt`` URL: dial target and transport security.

    Several comma-separated addresses (management replicas) must be IP
    literals of one family and share the scheme; the channel then dials them
    in order and fails over (gRPC pick-first). One DNS name with several
    records behaves the same through gRPC's resolver."""

    def __init__(self, url: str, *, allow_insecure: bool = False) -> None:
        self.endpoints: list[tuple[str, int]] = []
        schemes = set()
        for one in split_management_url(url) or [url]:
            parts = urlsplit(one if "://" in one else f"http://{one}")
            scheme = parts.scheme.lower()
            if scheme not in ("http", "https"):
                raise ValueError(f"management URL scheme must be http or https: {url!r}")
            if not parts.hostname:
                raise ValueError(f"management URL has no host: {url!r}")
            schemes.add(scheme)
            tls = scheme == "https"
            host = parts.hostname
            if not tls and not allow_insecure and not is_loopback_host(host):
                raise ValueError(
                    "refusing to send the proxy token over plaintext gRPC to "
                    f"{host}; use https:// or set NB_PROXY_ALLOW_INSECURE=true"
                )
            self.endpoints.append((host, parts.port or (443 if tls else 80)))
        if len(schemes) > 1:
            raise ValueError(f"management addresses mix http and https: {url!r}")
        self.host, self.port = self.endpoints[0]
        self.tls = schemes == {"https"}
        if len(self.endpoints) > 1:
            families = {_ip_family(h) for h, _ in self.endpoints}
            if len(families) != 1 or None in families:
                raise ValueError(
                    "several management addresses must be IP addresses of one family "
                    f"(or give one DNS name with several records): {url!r}"
                )

    @property
    def address(self) -> str:
        """The gRPC dial target: ``host:port``, or ``ipv4:``/``ipv6:`` with every
        replica's address (pick-first fails over in this order)."""
        def one(host: str, port: int) -> str:
            return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

        if len(self.endpoints) == 1:
            return one(self.host, self.port)
        family = _ip_family(self.host)
        return f"{family}:" + ",".join(one(h, p) for h, p in self.endpoints)


def _ip_family(host: str) -> str | None:
    try:
        return f"ipv{ipaddress.ip_address(host).version}"
    except ValueError:
        return None


def is_loopback_host(host: str) -> bool:
    """``localhost`` or a loopback IP literal (no name is resolved)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def make_channel(
    target: ManagementTarget,
    *,
    root_certificates: bytes | None = None,
    max_receive_bytes: int = DEFAULT_MAX_RECEIVE_BYTES,
    aio: bool = False,
    retries: bool = True,
) -> Any:
    """A channel to ``target`` with the gateway's keepalive settings.

    ``aio``: a ``grpc.aio`` channel; call it on the loop that will run its
    calls (:meth:`~nbgateway.mgmt._grpcbridge.AioLoop.run`). ``retries``
    False sets ``grpc.enable_retries`` 0: no retry state per call (~6 KiB of
    C memory per open stream, measured with grpcio 1.85), and no transparent
    retry either: a call caught by a connection failure fails UNAVAILABLE at
    once. (Flow-control and buffer options such as ``grpc.http2.bdp_probe``,
    ``lookahead_bytes``, ``initial_window_size``, ``max_frame_size``,
    ``write_buffer_size`` or the receive limit change nothing per idle
    stream; ``grpc.minimal_stack`` would save more but drops the receive
    limit: not used.)"""
    options = [
        ("grpc.keepalive_time_ms", 20_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.max_receive_message_length", max_receive_bytes),
    ]
    if not retries:
        options.append(("grpc.enable_retries", 0))
    if len(target.endpoints) > 1:  # replicas: name the first for TLS and :authority
        options.append(("grpc.default_authority", f"{target.host}:{target.port}"))
    module: Any = grpc.aio if aio else grpc
    if target.tls:
        creds = grpc.ssl_channel_credentials(root_certificates=root_certificates)
        return module.secure_channel(target.address, creds, options=options)
    return module.insecure_channel(target.address, options=options)


class _SharedChannels:
    """Process-wide ``grpc.aio`` channels, one per (target, TLS roots, receive
    limit, retries), reference-counted: every account's peer channel (and the
    ProxyService client) multiplexes its streams over one HTTP/2 connection
    instead of holding a channel and connection each."""

    def __init__(self) -> None:
        #: key -> [channel, users, {stub class: stub}]
        self._channels: dict[tuple[Any, ...], list[Any]] = {}

    def acquire(self, key: tuple[Any, ...], make: Callable[[], Any]) -> Any:
        entry = self._channels.get(key)
        if entry is None:
            entry = self._channels[key] = [aio_loop().run(make), 0, {}]
        entry[1] += 1
        return entry[0]

    def stub(self, key: tuple[Any, ...], stub_class: Callable[[Any], Any]) -> Any:
        """The channel's one ``stub_class`` stub (after :meth:`acquire`): a stub
        is a multicallable per RPC of the service, the same for every user
        (~1.3 KiB each, one per account before)."""
        stubs = self._channels[key][2]
        stub = stubs.get(stub_class)
        if stub is None:
            stub = stubs[stub_class] = stub_class(self._channels[key][0])
        return stub

    def release(self, key: tuple[Any, ...]) -> None:
        entry = self._channels.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] <= 0:
            del self._channels[key]
            aio_loop().submit(entry[0].close())

    def __len__(self) -> int:
        return len(self._channels)


#: the shared channels of this process (reactor thread only)
shared_channels = _SharedChannels()


class ManagedChannel:
    """One client's channel, bridge, reconnect loop and current stream
    (slotted: one per account)."""

    __slots__ = (
        "_channel_factory", "_owns_channel", "_shared_key", "_stub_class", "backoff", "bridge",
        "channel", "connected", "max_receive_bytes", "name", "on_state", "reactor",
        "reconnector", "root_certificates", "stream", "stub", "target", "transparent_retries",
    )

    def __init__(
        self,
        reactor: Any,
        target: ManagementTarget,
        stub_class: Callable[[grpc.Channel], Any],
        *,
        name: str,
        root_certificates: bytes | None = None,
        max_receive_bytes: int = DEFAULT_MAX_RECEIVE_BYTES,
        channel_factory: Callable[[], grpc.Channel] | None = None,
        owns_channel: bool = True,
        backoff: Backoff | None = None,
        on_state: Callable[[bool], Any] | None = None,
        transparent_retries: bool = False,
    ) -> None:
        self.reactor = reactor
        self.target = target
        self.name = name
        self.root_certificates = root_certificates
        self.max_receive_bytes = max_receive_bytes
        #: gRPC retries on the channel this session makes (see make_channel)
        self.transparent_retries = transparent_retries
        self._stub_class = stub_class
        self._channel_factory = channel_factory
        self._owns_channel = owns_channel
        self.backoff = backoff
        #: Called with True/False when :attr:`connected` changes.
        self.on_state = on_state
        self.channel: grpc.Channel | None = None
        #: key of the process-wide shared channel in use (None: a supplied one)
        self._shared_key: tuple[Any, ...] | None = None
        self.stub: Any = None
        self.bridge: GrpcBridge | None = None
        self.reconnector: Reconnector | None = None
        #: The long-lived stream currently open (None between attempts).
        self.stream: StreamCall | None = None
        self.connected = False

    @property
    def shared_key(self) -> tuple[Any, ...] | None:
        """The key of the process-wide shared channel in use (None: a supplied one)."""
        return self._shared_key

    @property
    def is_open(self) -> bool:
        return self.bridge is not None and self.stub is not None

    def open(self) -> None:
        """Create the channel, stub and bridge (idempotent)."""
        if self.is_open:
            return
        if self._channel_factory is not None:
            self.channel = self._channel_factory()
        else:
            self._shared_key = (self.target.address, self.target.tls, self.root_certificates,
                                self.max_receive_bytes, self.transparent_retries)
            self.channel = shared_channels.acquire(self._shared_key, lambda: make_channel(
                self.target,
                root_certificates=self.root_certificates,
                max_receive_bytes=self.max_receive_bytes,
                aio=True,
                retries=self.transparent_retries,
            ))
        if self._shared_key is not None:
            self.stub = shared_channels.stub(self._shared_key, self._stub_class)
        else:
            self.stub = self._stub_class(self.channel)
        self.bridge = GrpcBridge(self.reactor)

    def supervise(self, attempt: Callable[[], Deferred[object]]) -> None:
        """Run ``attempt`` forever under the reconnect loop (after :meth:`open`)."""
        if self.reconnector is not None:
            raise RuntimeError(f"{self.name}: already supervising a connection attempt")
        self.reconnector = Reconnector(self.reactor, attempt, self.backoff, name=self.name)
        self.reconnector.start()

    def close(self) -> None:
        """Stop the loop, cancel every live call, drop the channel; idempotent."""
        if self.reconnector is not None:
            self.reconnector.stop()
            self.reconnector = None
        if self.bridge is not None:
            self.bridge.stop()
            self.bridge = None
        if self._shared_key is not None:
            shared_channels.release(self._shared_key)
            self._shared_key = None
        elif self.channel is not None and self._owns_channel:
            self.channel.close()
        self.channel = None
        self.stub = None
        self.stream = None
        self.set_connected(False)

    def unary(
        self,
        method: str,
        request: Any,
        *,
        timeout: float | None,
        metadata: tuple[tuple[str, str], ...] = (),
    ) -> Deferred[Any]:
        """Call the stub's unary ``method`` on the current channel (a Deferred).

        Fails with :class:`~nbgateway.errors.ManagementUnavailableError` when
        the session is not open."""
        if self.bridge is None or self.stub is None:
            d: Deferred[Any] = Deferred()
            d.errback(errors.ManagementUnavailableError(f"{self.name}: not running"))
            return d
        return self.bridge.unary(
            getattr(self.stub, method), request, timeout=timeout, metadata=metadata
        )

    def watch(
        self, stream: StreamCall, ended: Callable[[object], Failure]
    ) -> Deferred[object]:
        """Make ``stream`` the current one; the returned Deferred is its lifetime.

        When the stream finishes, ``ended(result)`` turns its outcome into the
        failure the attempt ends with (an attempt always ends in a failure:
        even a clean close means "reconnect"). Cancelling the Deferred cancels
        the stream."""
        self.stream = stream

        def finished(result: object) -> Failure:
            if self.stream is stream:
                self.stream = None
            return ended(result)

        d: Deferred[object] = Deferred(lambda _d: stream.cancel())
        stream.done.addBoth(finished).addBoth(chain_to, d)
        return d

    def set_connected(self, value: bool) -> None:
        if value == self.connected:
            return
        self.connected = value
        if self.on_state is not None:
            try:
                self.on_state(value)
            except Exception:
                log.failure("{name}: connection state callback raised", name=self.name)


class SessionOwner:
    """What a client that owns a :class:`ManagedChannel` (``self.session``)
    reads through from it: ``connected`` and the current bridge and stream.
    No slots of its own (a slotted client stays without an instance dict)."""

    __slots__ = ()

    session: ManagedChannel

    @property
    def connected(self) -> bool:
        return self.session.connected

    @property
    def _bridge(self) -> GrpcBridge | None:
        return self.session.bridge

    @property
    def _stream(self) -> StreamCall | None:
        return self.session.stream


def chain_to(result: object, d: Deferred[object]) -> None:
    """Fire ``d`` with ``result`` (a Failure errbacks) unless it has fired
    already (cancelled); a callback for ``addBoth``."""
    if d.called:
        return
    if isinstance(result, Failure):
        d.errback(result)
    else:
        d.callback(result)
