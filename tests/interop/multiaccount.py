"""Several accounts on one management and one gateway, for interop tests.

Builds on :class:`tests.interop.test_private_e2e.World` (namespaces, processes,
REST inside the gateway namespace, stock wireguard-go peers):

* :func:`create_account` creates an account through ``POST /api/accounts`` as
  the instance admin (the bootstrap admin) and returns ``(account_id, token)``;
  the token is the new account's first admin personal access token.
* :func:`rest_as` calls the REST API with any token; :func:`rest_status` does
  the same but returns ``(status, body)`` instead of raising on 4xx/5xx.
* :func:`global_proxy_token` creates a management-wide proxy token, so one
  gateway serves every account (a per-account netstack each).
* :class:`Tenant` is a ``World`` seen through another account's token:
  ``tenant.rest``, ``tenant.add_peer`` and ``tenant.connect_peer`` act in that
  account, sharing the world's namespaces and link numbering.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from tests.interop.test_private_e2e import World


def rest_as(world: World, token: str, method: str, path: str, body: Any = None) -> Any:
    """``world.rest`` with another personal access token (raises HTTPError on >= 400)."""
    return world.rest(method, path, body, token=token)


def rest_status(world: World, token: str, method: str, path: str,
                body: Any = None) -> tuple[int, Any]:
    """``(HTTP status, decoded body)`` of a REST call, errors included."""
    try:
        return 200, rest_as(world, token, method, path, body)
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            return exc.code, json.loads(raw)
        except ValueError:
            return exc.code, raw.decode(errors="replace")


def create_account(world: World, name: str) -> tuple[str, str]:
    """Create an account as the instance admin; ``(account id, first admin token)``."""
    created = world.rest("POST", "/accounts", {"name": name})
    return created["id"], created["token"]


def global_proxy_token(world: World, name: str = "shared-gateway") -> str:
    """A management-wide proxy token (instance admin only) for a gateway serving
    every account."""
    return world.rest("POST", "/reverse-proxies/proxy-tokens",
                      {"name": name, "global": True})["plain_token"]


class Tenant(World):
    """The world as one account's admin sees it: same namespaces, processes and
    link numbering, REST calls with this account's token."""

    def __init__(self, world: World, account_id: str, token: str) -> None:
        shared = {k: v for k, v in world.__dict__.items() if k != "n_links"}
        self.__dict__.update(shared)
        self._world = world
        self.account_id = account_id
        self.admin = token
        self.peers = {}

    @property  # type: ignore[override]
    def n_links(self) -> int:
        return self._world.n_links

    @n_links.setter
    def n_links(self, value: int) -> None:
        self._world.n_links = value


def tenant(world: World, name: str) -> Tenant:
    """Create an account and return its :class:`Tenant` view."""
    account_id, token = create_account(world, name)
    return Tenant(world, account_id, token)
