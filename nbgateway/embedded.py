"""The embedded management service: ``twistd -n nbgateway`` without ``--mgmt``.

The gateway then runs :class:`~nbgateway.management.service.ManagementService`
in-process (SQLite in ``--datadir``), with its REST API and gRPC listener on
loopback, and talks to it exactly as it would to a remote management: over
gRPC, with a proxy access token.  A fresh management-wide token is created at
every start (earlier embedded tokens are revoked) and handed to the gateway's
management client before any RPC is made.

The bootstrap account is the operator's own: :meth:`EmbeddedManagement.
direct_upstream_rules` lets that account (only) reach loopback with
``direct_upstream`` (the README quickstart's demo upstream), and
:meth:`EmbeddedManagement.listeners` names the REST and gRPC ports, which the
gateway's dial guard never lets any account reach.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.application.service import MultiService
from twisted.logger import Logger

log = Logger()

TOKEN_NAME = "embedded-gateway"
DEFAULT_API_ADDR = "127.0.0.1:33071"
DEFAULT_GRPC_ADDR = "127.0.0.1:33073"


def embedded_addresses(environ: dict[str, str] | None = None) -> tuple[str, str]:
    """(REST address, gRPC address) of the embedded management; the same
    ``NB_MANAGEMENT_*`` variables as ``twistd nbmanagement``."""
    env = os.environ if environ is None else environ
    return (env.get("NB_MANAGEMENT_API_ADDR") or DEFAULT_API_ADDR,
            env.get("NB_MANAGEMENT_GRPC_ADDR") or DEFAULT_GRPC_ADDR)


def grpc_url(grpc_addr: str) -> str:
    """The URL the gateway dials for a gRPC listen address (all-interfaces
    addresses are reached on loopback)."""
    host, _, port = grpc_addr.rpartition(":")
    host = host.strip("[]")
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


class EmbeddedManagement(MultiService):
    """ManagementService plus the proxy-token hand-off to the gateway's client."""

    name = "nbgateway-embedded-management"

    def __init__(self, config: Any, client: Any, *, reactor: Any,
                 api_addr: str = DEFAULT_API_ADDR, grpc_addr: str = DEFAULT_GRPC_ADDR) -> None:
        super().__init__()
        from nbgateway.management.service import ManagementService

        self.config = config
        self.client = client
        self.api_addr = api_addr
        self.grpc_addr = grpc_addr
        self.management = ManagementService(
            datadir=config.datadir, api_addr=api_addr, grpc_addr=grpc_addr,
            known_clusters=(config.domain,), reactor=reactor)
        self.management.setServiceParent(self)

    def privilegedStartService(self) -> None:
        super().privilegedStartService()  # opens the store, binds the REST API
        store = self.management.store
        for token in store.proxies.list_tokens(None):
            if token.name == TOKEN_NAME and not token.revoked:
                store.proxies.revoke_token(None, token.id)
        _row, token = store.proxies.create_token(TOKEN_NAME, account_id=None,
                                               created_by="nbgateway")
        self.client.set_token(token)
        log.info("embedded management: REST API {api}, admin token in {path}",
                 api=self.management.api_addr,
                 path=os.path.abspath(self.management.admin_token_path))

    @property
    def store(self) -> Any:
        return self.management.store

    @property
    def operator_account_id(self) -> str:
        """The bootstrap account (created by the embedded management itself)."""
        from nbgateway.management.store._accounts import DEFAULT_ACCOUNT_ID

        return DEFAULT_ACCOUNT_ID

    def direct_upstream_rules(self) -> tuple[Any, ...]:
        """Loopback for the operator's account only (dial guard allow rules)."""
        from nbgateway.dial.guard import loopback_rules

        return loopback_rules(self.operator_account_id)

    def listeners(self) -> list[tuple[str, int]]:
        """(host, port) of the REST and gRPC listeners: configured and bound."""
        out: list[tuple[str, int]] = []
        for addr in (self.api_addr, self.grpc_addr):
            host, _, port = str(addr or "").rpartition(":")
            if port.isdigit() and int(port):
                out.append((host.strip("[]"), int(port)))
        rest = getattr(self.management, "port", None)
        if rest is not None and hasattr(rest, "getHost"):
            bound = rest.getHost()
            out.append((getattr(bound, "host", ""), int(getattr(bound, "port", 0))))
        grpc_service = getattr(self.management, "grpc", None)
        grpc_port = getattr(grpc_service, "port", None)
        if isinstance(grpc_port, int) and grpc_port:
            grpc_host = str(getattr(grpc_service, "bind_address", "")).rpartition(":")[0]
            out.append((grpc_host.strip("[]"), grpc_port))
        return out
