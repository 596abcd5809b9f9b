"""ManagementService: the twisted service owning the store, its thread pool and the REST listener.

Lifecycle (nothing live before fork; constructors only build objects):

* ``privilegedStartService``: create the data directory, open (and migrate) the
  store, bootstrap the default account and write the first admin token to
  ``DATADIR/admin-token`` (mode 0600; the path is logged once, the token never),
  then bind the REST listener.
  The configured per-account quotas (:mod:`.quotas`) are set on the store it
  opens; the REST site checks the per-account rate limits (:mod:`.ratelimit`).
* ``startService``: start the dedicated store thread pool (requests accepted
  before that are queued on it).
* ``stopService``: stop listening, drain and stop the pool, dispose of the store.

It is a ``MultiService`` so the gRPC server (issue 5) can join as a child that
shares :attr:`store` and :attr:`threadpool`.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from nbgateway.atomicfile import write_atomic
from nbgateway.management.api import build_site
from nbgateway.management.quotas import Quotas
from nbgateway.management.ratelimit import (
    DEFAULT_READ_RATE,
    DEFAULT_WRITE_RATE,
    AccountRateLimit,
)
from nbgateway.management.retention import (
    DEFAULT_MAX_AGE,
    DEFAULT_MAX_ROWS,
    AccessLogRetention,
    parse_max_age,
)

log = Logger()

DEFAULT_API_ADDR = "127.0.0.1:33071"
DEFAULT_DATADIR = "nbgateway-data"
ADMIN_TOKEN_FILE = "admin-token"
#: allows a plaintext gRPC listener on a non-loopback address (``--grpc-insecure-bind-any``)
INSECURE_BIND_ANY_ENV = "NB_MANAGEMENT_GRPC_INSECURE_BIND_ANY"
#: per-account REST rate limits (flags --api-write-rate / --api-read-rate)
API_WRITE_RATE_ENV = "NB_MANAGEMENT_API_WRITE_RATE"
API_READ_RATE_ENV = "NB_MANAGEMENT_API_READ_RATE"


def env_flag(value: str) -> bool:
    """An environment flag: ``1``, ``true``, ``yes``, ``on`` (any case) are true."""
    return value.strip().lower() in ("1", "true", "yes", "on")


def endpoint_description(addr: str) -> str:
    """``HOST:PORT`` / ``[V6]:PORT`` -> a twisted server endpoint description.

    A value that already is an endpoint description (``tcp:``, ``tcp6:``,
    ``unix:``, ``ssl:``, ``systemd:``) is passed through unchanged.
    """
    if addr.split(":", 1)[0] in ("tcp", "tcp6", "unix", "ssl", "systemd"):
        return addr
    if addr.startswith("["):
        host, sep, port = addr[1:].partition("]:")
        if not sep:
            raise ValueError(f"invalid address {addr!r}: expected [IPV6]:PORT")
        kind = "tcp6"
    else:
        host, sep, port = addr.rpartition(":")
        if not sep:
            raise ValueError(f"invalid address {addr!r}: expected HOST:PORT")
        kind = "tcp6" if ":" in host else "tcp"
    if not port.isdigit() or int(port) > 65535:
        raise ValueError(f"invalid port in {addr!r}")
    desc = f"{kind}:port={int(port)}"
    if host:
        desc += ":interface=" + host.replace(":", r"\:")
    return desc


def write_secret_file(path: str, text: str) -> None:
    """Atomically and durably write *text* (and a newline) to *path* with
    mode exactly 0600 (never readable by others, whatever the umask)."""
    write_atomic(path, (text + "\n").encode(), 0o600, exact_mode=True)


class ManagementService(MultiService):
    """Management server: store + thread pool + REST API on ``api_addr``."""

    name = "nbmanagement"

    def __init__(self, *, datadir: str = DEFAULT_DATADIR, api_addr: str = DEFAULT_API_ADDR,
                 store_dsn: str | None = None, reactor: Any = None,
                 pool_size: int = 8, store: Any = None,
                 known_clusters: tuple[str, ...] = (),
                 grpc_addr: str | None = None, grpc_cert: str | None = None,
                 grpc_key: str | None = None, grpc_insecure_bind_any: bool | None = None,
                 access_log_max_age: timedelta | str | None = DEFAULT_MAX_AGE,
                 access_log_max_rows: int | None = DEFAULT_MAX_ROWS,
                 sso_settings: Any = None, sso_auto_groups: tuple[str, ...] = (),
                 quotas: Any = None, api_write_rate: str | None = None,
                 api_read_rate: str | None = None):
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.datadir = datadir
        self.api_addr = api_addr
        self.api_endpoint = endpoint_description(api_addr)
        self.store_dsn = store_dsn
        #: cluster addresses usable for domain -> cluster derivation without a live proxy
        #: (an embedding gateway passes its own address)
        self.known_clusters = tuple(known_clusters)
        self.reactor = reactor
        self.store = store
        self._owns_store = store is None
        # per-account quotas and REST rate limits: twistd passes the flags;
        # library and embedded use read the same NB_MANAGEMENT_* variables
        self._quotas_given = quotas is not None
        self.quotas = quotas if quotas is not None else Quotas.from_environ(os.environ)
        if api_write_rate is None:
            api_write_rate = os.environ.get(API_WRITE_RATE_ENV) or DEFAULT_WRITE_RATE
        if api_read_rate is None:
            api_read_rate = os.environ.get(API_READ_RATE_ENV) or DEFAULT_READ_RATE
        self.rate_limit = AccountRateLimit.from_settings(api_write_rate, api_read_rate,
                                                         reactor.seconds)
        self.threadpool = ThreadPool(minthreads=0, maxthreads=pool_size,
                                     name="nbmanagement-store")
        #: background pruning of the access log (age / per-account row count)
        if isinstance(access_log_max_age, str):
            access_log_max_age = parse_max_age(access_log_max_age)
        self.retention = AccessLogRetention(lambda: self.store, self.threadpool, reactor,
                                            max_age=access_log_max_age,
                                            max_rows=access_log_max_rows)
        self.retention.setServiceParent(self)
        self.port: Any = None
        #: SSO for public services (GetOIDCURL + /reverse-proxy/callback), when an IdP is set
        self.sso: Any = None
        if sso_settings is not None:
            from nbgateway.management.sso import SSO

            self.sso = SSO.from_settings(lambda: self.store, sso_settings, sso_auto_groups)
        self.admin_token_path = os.path.join(datadir, ADMIN_TOKEN_FILE)
        #: the gRPC side (ProxyService + the peers' ManagementService), if enabled
        self.grpc: Any = None
        if grpc_addr:
            from nbgateway.management.grpcserver import ProxyGrpcService
            from nbgateway.management.peerchannel import SERVER_KEY_FILE

            if grpc_insecure_bind_any is None:  # library/embedded use: the environment
                grpc_insecure_bind_any = env_flag(os.environ.get(INSECURE_BIND_ANY_ENV, ""))
            self.grpc = ProxyGrpcService(
                store_getter=lambda: self.store, addr=grpc_addr, cert_path=grpc_cert,
                key_path=grpc_key, peer_channel_key=os.path.join(datadir, SERVER_KEY_FILE),
                insecure_bind_any=grpc_insecure_bind_any,
                servicer_options={"sso": self.sso} if self.sso is not None else None)
            self.grpc.setServiceParent(self)

    # -- lifecycle ---------------------------------------------------------------

    def privilegedStartService(self) -> None:
        os.makedirs(self.datadir, mode=0o700, exist_ok=True)
        if os.stat(self.datadir).st_mode & 0o077:
            log.warn("data directory {path} is accessible to other users; it holds the "
                     "store (session and WireGuard private keys) and the admin token: "
                     "chmod 700 it", path=os.path.abspath(self.datadir))
        if self.store is None:
            from nbgateway.management.store import Store

            self.store = Store.open(self.store_dsn, datadir=self.datadir,
                                    known_clusters=self.known_clusters)
        if self._owns_store or self._quotas_given:
            self.store.quotas = self.quotas
        self._bootstrap()
        site = build_site(self.store, self.threadpool, self.reactor,
                          ca_cert_path=os.path.join(self.datadir, "ca.crt"), sso=self.sso,
                          rate_limit=self.rate_limit)
        endpoint = serverFromString(self.reactor, self.api_endpoint)
        failures: list[Any] = []
        d = endpoint.listen(site)
        d.addCallbacks(self._listening, failures.append)
        if failures:
            if self._owns_store:
                store, self.store = self.store, None
                store.close()
            from nbgateway.startup import listen_failed

            raise listen_failed(failures[0].value, "the management REST API (TCP)",
                                "--api-addr / NB_MANAGEMENT_API_ADDR")
        super().privilegedStartService()

    def _listening(self, port: Any) -> None:
        self.port = port
        log.info("management REST API listening on {address}", address=port.getHost())

    def _bootstrap(self) -> None:
        boot = self.store.accounts.ensure_default()
        if boot.admin_token is not None:
            write_secret_file(self.admin_token_path, boot.admin_token)
            log.info("first admin token written to {path} (mode 0600)",
                     path=os.path.abspath(self.admin_token_path))

    def startService(self) -> None:
        self.threadpool.start()
        super().startService()
        # replicas on one PostgreSQL database hear each other's changes (LISTEN/NOTIFY)
        if self.store is not None and getattr(self.store, "dialect", "") == "postgresql":
            self.store.start_change_feed()

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        yield defer.maybeDeferred(super().stopService)
        if self.store is not None and getattr(self.store, "change_feed", None) is not None:
            self.store.stop_change_feed()
        if self.port is not None:
            port, self.port = self.port, None
            yield defer.maybeDeferred(port.stopListening)
        if self.threadpool.started:
            self.threadpool.stop()
        if self._owns_store and self.store is not None:
            store, self.store = self.store, None
            store.close()
