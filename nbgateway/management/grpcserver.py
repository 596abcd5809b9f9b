"""ProxyGrpcService: the Twisted service hosting the ProxyService gRPC server.

Constructing it only records configuration.  ``startService`` builds the
:class:`~nbgateway.management.proxyservice.ProxyServiceServicer`, a
``grpc.aio`` server on one asyncio loop thread with a small fixed thread pool
(:class:`~nbgateway.management.grpcloop.LoopServer`: ``workers`` threads,
default 8, whatever the number of streams; nothing runs before
``startService``, so nothing is live before ``twistd`` forks), binds
``--grpc-addr`` (default
``127.0.0.1:33073``, loopback) with TLS when a certificate and key are given
and starts it.  Plaintext is accepted on loopback only: a plaintext bind to
any other address (proxy tokens would cross the network in clear) is refused
unless explicitly allowed (``insecure_bind_any``, the
``--grpc-insecure-bind-any`` flag of ``twistd nbmanagement``).
``stopService`` stops the servicer (store listener, broadcast thread, live
streams cancelled) and the peer channel (its Sync streams end), then the
server with a grace period and the loop thread; the returned Deferred fires
once grpc has shut down.

Long-lived streams (mapping streams, each account's peer-channel ``Sync``)
are coroutines on the loop; unary RPCs and all store work run in the pool.
The reactor is never touched from those threads.
"""

from __future__ import annotations

import ipaddress
import threading
from typing import Any

import grpc
from twisted.application import service
from twisted.internet import defer, threads
from twisted.logger import Logger

from nbgateway.management.grpcloop import DEFAULT_WORKERS, LoopServer
from nbgateway.management.proxyservice import ProxyServiceServicer
from nbgateway.startup import ConfigurationError

log = Logger()

DEFAULT_GRPC_ADDR = "127.0.0.1:33073"
#: Largest request accepted (access logs, status updates are tiny; bounded anyway).
MAX_RECEIVE_BYTES = 4 * 1024 * 1024
#: Largest response (a snapshot batch of 500 mappings stays far below this).
MAX_SEND_BYTES = 16 * 1024 * 1024
#: concurrent RPCs (streams included) before grpc answers RESOURCE_EXHAUSTED
MAX_CONCURRENT_RPCS = 10_000


def grpc_bind_address(addr: str) -> str:
    """``:PORT`` -> ``[::]:PORT``; ``HOST:PORT`` / ``[V6]:PORT`` unchanged (validated)."""
    if addr.startswith("["):
        host, sep, port = addr[1:].partition("]:")
        if not sep or not host:
            raise ValueError(f"invalid address {addr!r}: expected [IPV6]:PORT")
        host = f"[{host}]"
    else:
        host, sep, port = addr.rpartition(":")
        if not sep:
            raise ValueError(f"invalid address {addr!r}: expected HOST:PORT")
        if ":" in host:
            raise ValueError(f"invalid address {addr!r}: bracket IPv6 hosts")
        host = host or "[::]"
    if not port.isdigit() or int(port) > 65535:
        raise ValueError(f"invalid port in {addr!r}")
    return f"{host}:{int(port)}"


def is_loopback_bind(bind_address: str) -> bool:
    """True when a :func:`grpc_bind_address` result listens on loopback only
    (``127.0.0.0/8``, ``[::1]``, ``localhost``); a wildcard, another address or
    another name is not (fail closed)."""
    host = bind_address.rpartition(":")[0].strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_plaintext_bind(bind_address: str, *, tls: bool, insecure_bind_any: bool) -> None:
    """ConfigurationError (a ValueError) for a plaintext listener on a
    non-loopback address unless allowed."""
    if tls or insecure_bind_any or is_loopback_bind(bind_address):
        return
    raise ConfigurationError(
        f"refusing to serve gRPC in plaintext on {bind_address} (not loopback): proxy "
        "tokens would cross the network in clear; give --grpc-cert and --grpc-key, or "
        "--grpc-insecure-bind-any (NB_MANAGEMENT_GRPC_INSECURE_BIND_ANY=1) to allow it")


class ProxyGrpcService(service.Service):
    """Hosts ProxyService on ``addr`` (see module docstring)."""

    name = "nbmanagement-grpc"

    def __init__(
        self,
        store: Any = None,
        *,
        addr: str = DEFAULT_GRPC_ADDR,
        cert_path: str | None = None,
        key_path: str | None = None,
        max_workers: int = DEFAULT_WORKERS,
        grace: float = 5.0,
        store_getter: Any = None,
        servicer_options: dict[str, Any] | None = None,
        peer_channel_key: str | None = None,
        insecure_bind_any: bool = False,
    ) -> None:
        if (cert_path is None) != (key_path is None):
            raise ValueError("--grpc-cert and --grpc-key must be given together")
        if store is None and store_getter is None:
            raise ValueError("a store or a store_getter is required")
        self.bind_address = grpc_bind_address(addr)
        check_plaintext_bind(self.bind_address, tls=cert_path is not None,
                             insecure_bind_any=insecure_bind_any)
        self.cert_path = cert_path
        self.key_path = key_path
        #: threads of the fixed pool (unary RPCs, store work of the streams)
        self.max_workers = max_workers
        self.grace = grace
        self._store = store
        self._store_getter = store_getter
        self._servicer_options = dict(servicer_options or {})
        #: path of the peer channel's server WireGuard key; None = no ManagementService
        self.peer_channel_key = peer_channel_key
        self.peer_channel: Any = None
        self.servicer: ProxyServiceServicer | None = None
        self.server: LoopServer | None = None
        #: the bound port (useful with port 0)
        self.port: int | None = None
        #: set once grpc and the loop thread have shut down (after stopService)
        self.server_stopped: threading.Event | None = None

    def _credentials(self) -> grpc.ServerCredentials | None:
        if self.cert_path is None or self.key_path is None:
            return None
        with open(self.key_path, "rb") as f:
            key = f.read()
        with open(self.cert_path, "rb") as f:
            cert = f.read()
        return grpc.ssl_server_credentials([(key, cert)])

    def startService(self) -> None:
        store = self._store if self._store is not None else self._store_getter()
        creds = self._credentials()
        servicer = ProxyServiceServicer(store, **self._servicer_options)
        server = LoopServer(
            workers=self.max_workers,
            handlers=[servicer.generic_handler()],
            options=[
                ("grpc.max_receive_message_length", MAX_RECEIVE_BYTES),
                ("grpc.max_send_message_length", MAX_SEND_BYTES),
                # proxies ping every 20 s, also without calls in flight
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
                ("grpc.keepalive_time_ms", 60_000),
                ("grpc.keepalive_timeout_ms", 20_000),
                ("grpc.so_reuseport", 0),
            ],
            maximum_concurrent_rpcs=MAX_CONCURRENT_RPCS,
        )
        try:
            if creds is None:
                port = server.add_insecure_port(self.bind_address)
            else:
                port = server.add_secure_port(self.bind_address, creds)
        except RuntimeError:  # grpcio: "Failed to bind to address ..."
            port = 0
        if not port:
            server.stop(None).wait(5.0)
            from nbgateway.startup import bind_failure

            raise bind_failure(self.bind_address, "the management gRPC listener",
                               "--grpc-addr / NB_MANAGEMENT_GRPC_ADDR")
        servicer.start()
        if self.peer_channel_key is not None:
            from nbgateway.management import peerchannel

            # NbgwSyncMany (many proxy peers on one stream) takes the same
            # token check as ProxyService
            self.peer_channel = peerchannel.add_to_server(
                server, store, self.peer_channel_key,
                authenticate=servicer._authenticate_async)
        server.start()
        self.servicer, self.server, self.port = servicer, server, port
        if creds is None and not is_loopback_bind(self.bind_address):
            log.warn("management gRPC serves plaintext on {address} (not loopback; allowed "
                     "by --grpc-insecure-bind-any): proxy tokens cross the network in clear",
                     address=self.bind_address)
        log.info(
            "management gRPC (ProxyService) listening on {address} port {port} ({security})",
            address=self.bind_address,
            port=port,
            security="TLS" if creds is not None else "plaintext",
        )
        super().startService()

    def stopService(self) -> defer.Deferred[None] | None:
        super().stopService()
        servicer, server = self.servicer, self.server
        self.servicer = self.server = None
        if servicer is not None:
            servicer.stop()
        if self.peer_channel is not None:
            peer_channel, self.peer_channel = self.peer_channel, None
            peer_channel.close()
        if server is None:
            return None
        done = self.server_stopped = server.stop(self.grace)
        return threads.deferToThread(done.wait, self.grace + 5.0).addCallback(lambda _: None)
