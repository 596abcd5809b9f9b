"""Every zope interface that crosses a layer boundary.

Layers only know each other through these: the WireGuard device hands decrypted
IP packets up to an :class:`IPacketSink` (the netstack) and accepts IP packets to
encrypt through :class:`IPacketSender`.  The UDP adapter is an
:class:`IDatagramLink` so the device can be driven by memory links in tests.
"""

from __future__ import annotations

from zope.interface import Attribute, Interface


class IDatagramLink(Interface):
    """Where the WireGuard device sends its encrypted datagrams."""

    def sendDatagram(data: bytes, addr: tuple[str, int]) -> None:
        """Send one UDP datagram to ``addr`` (host, port).  Never raises."""


class IDatagramBatchLink(IDatagramLink):
    """A link that also sends several datagrams to one address in one call."""

    def sendDatagrams(datagrams: list[bytes], addr: tuple[str, int]) -> None:
        """``sendDatagram`` for each, in order.  Never raises."""


class IPacketSink(Interface):
    """Receives decrypted, source-checked IP packets from the WireGuard device."""

    def packetReceived(packet: bytes, peer_key: bytes) -> None:
        """One IPv4 or IPv6 packet that arrived from the peer with static
        public key ``peer_key`` (32 raw bytes).  ``packet`` may be a
        memoryview-backed ``bytes``; the sink must not keep references to
        buffers it does not own beyond the call."""


class IPacketBatchSink(IPacketSink):
    """A sink that also takes a run of packets at once (the WireGuard device
    hands over everything one socket read brought from one peer)."""

    def packetsReceived(packets: list[bytes], peer_key: bytes) -> None:
        """The packets, in arrival order, as ``packetReceived`` would get them
        one by one; the list is the sink's to keep."""


class IPacketSender(Interface):
    """Accepts plaintext IP packets for encryption and transmission."""

    mtu = Attribute("Largest IP packet the device carries (bytes).")

    def sendPacket(packet: bytes) -> bool:
        """Route ``packet`` by its destination address (cryptokey routing) and
        send it.  Returns False if it was dropped (no route, oversized, ...);
        the drop is counted by the device."""

    def sendPackets(packets: list[bytes]) -> int:
        """``sendPacket`` for several packets in order (one flush of the layer
        above); returns how many were not dropped."""


class IManagementClient(Interface):
    """Deferred-returning view of management's ProxyService.

    Messages are the generated protobuf classes of ``nbgateway._proto.
    proxy_service_pb2``.  Every Deferred fails with a
    :class:`nbgateway.errors.ManagementError` subclass on any RPC error,
    timeout or when the client is stopped; callers fail closed on it.
    """

    connected = Attribute("True while the mapping stream is connected (health).")

    def validate_tunnel_peer(tunnel_ip: str, domain: str, account_id: str = ""):
        """ValidateTunnelPeer -> Deferred[ValidateTunnelPeerResponse].
        ``account_id``: the listener's account (extension field
        ``nbgw_account_id``); management then answers valid only for a
        service of that account."""

    def validate_session(domain: str, session_token: str):
        """ValidateSession -> Deferred[ValidateSessionResponse]."""

    def authenticate(
        service_id: str,
        account_id: str,
        *,
        password: str | None = None,
        pin: str | None = None,
        header_value: str | None = None,
        header_name: str | None = None,
    ):
        """Authenticate with exactly one scheme -> Deferred[AuthenticateResponse]."""

    def create_proxy_peer(
        service_id: str,
        account_id: str,
        token: str,
        wireguard_public_key: str,
        cluster: str,
        wireguard_endpoint: str = "",
    ):
        """CreateProxyPeer -> Deferred[None]; ``success=false`` fails with
        ManagementRejectedError("proxy peer authentication failed: ...")."""

    def send_status_update(
        service_id: str,
        account_id: str,
        status: int,
        *,
        certificate_issued: bool = False,
        error_message: str | None = None,
        inbound_listener: tuple[str, int, int] | None = None,
    ):
        """SendStatusUpdate -> Deferred[None].  ``status`` is a
        ``proxy_service_pb2.ProxyStatus`` value; ``inbound_listener`` is
        ``(tunnel_ip, https_port, http_port)`` or None (field absent)."""

    def send_access_log(entry):
        """SendAccessLog(log=entry: proxy_service_pb2.AccessLog) -> Deferred[None]."""

    def get_oidc_url(service_id: str, account_id: str, redirect_url: str):
        """GetOIDCURL -> Deferred[str] (the URL)."""

    def subscribe_mappings(store: IMappingStore) -> None:
        """Follow management's mappings into ``store`` until the client stops:
        SyncMappings (falling back to GetMappingUpdate on UNIMPLEMENTED),
        reconnecting with backoff.  For every stream: ``store.stream_started()``,
        then ``store.apply_batch(...)`` per message (the ack is sent only after
        the Deferred it may return has fired), then ``store.stream_ended()``."""


class IMappingStore(Interface):
    """The gateway's last known set of ProxyMappings.

    Fed by :class:`IManagementClient`; read by routing and auth.  Stored
    mappings are ``proxy_service_pb2.ProxyMapping`` objects owned by the store:
    readers must not mutate them.  Keeps serving the last known mappings while
    management is unreachable.
    """

    initial_sync_complete = Attribute(
        "True once a stream delivered a complete snapshot (startup probe)."
    )

    def stream_started() -> None:
        """A new mapping stream connected: begin tracking a fresh snapshot."""

    def apply_batch(mappings, initial_sync_complete: bool):
        """Apply one batch in order (CREATED/MODIFIED/REMOVED); when
        ``initial_sync_complete`` is set, remove every stored mapping that the
        stream's snapshot did not contain.  Returns None or a Deferred that
        fires (never fails) when observers have finished with the batch."""

    def stream_ended() -> None:
        """The stream ended; an unfinished snapshot is discarded unreconciled."""

    def get(service_id: str):
        """The mapping with this service id, or None."""

    def lookup_domain(domain: str):
        """The mapping serving ``domain`` (case-insensitive, no port), or None."""

    def mappings_for_account(account_id: str) -> list:
        """All mappings of one account."""

    def accounts() -> frozenset[str]:
        """Account ids with at least one mapping."""

    def add_observer(observer) -> None:
        """Register an observer (see nbgateway.store.mappings.MappingObserver)."""

    def remove_observer(observer) -> None:
        """Unregister an observer."""
