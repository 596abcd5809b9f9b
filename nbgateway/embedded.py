"""The embedded management service: ``twistd -n nbgateway`` without ``--mgmt``.

The gateway then runs :class:`~nbgateway.management.service.ManagementService`
in-process (SQLite in ``--datadir``), with its REST API and gRPC listener on
loopback, and talks to it exactly as it would to a remote management: over
gRPC, with a proxy access token.  A fresh management-wide token is created at
every start (earlier embedded tokens are revoked) and handed to the gateway's
management client before any RPC is made.
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
        self.management = ManagementService(
            datadir=config.datadir, api_addr=api_addr, grpc_addr=grpc_addr,
            known_clusters=(config.domain,), reactor=reactor)
        self.management.setServiceParent(self)

    def privilegedStartService(self) -> None:
        super().privilegedStartService()  # opens the store, binds the REST API
        store = self.management.store
        for token in store.list_proxy_tokens(None):
            if token.name == TOKEN_NAME and not token.revoked:
                store.revoke_proxy_token(None, token.id)
        _row, token = store.create_proxy_token(TOKEN_NAME, account_id=None,
                                               created_by="nbgateway")
        self.client.set_token(token)
        log.info("embedded management: REST API {api}, admin token in {path}",
                 api=self.management.api_addr,
                 path=os.path.abspath(self.management.admin_token_path))

    @property
    def store(self) -> Any:
        return self.management.store
