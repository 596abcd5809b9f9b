"""``nbgateway-admin`` commands over the REST resources: users, groups, peers,
services, proxy tokens, access logs, clusters, domains and accounts.

This module owns their order in the help; the commands live in one module per
family: :mod:`._members` (users, groups, peers), :mod:`._services` (with
:mod:`._targets` and :mod:`._clientca`), :mod:`._gateways` (proxy tokens,
logs, clusters, domains) and :mod:`._accounts`; how a command finds the object
it names is :mod:`._lookup`.  Each handler takes ``(client, args, out)``.
Secrets are printed only when the command's purpose is to hand one out
(``peers config``, ``tokens create``, ``users token``, ``accounts create``);
``peers create`` never prints the generated private key.
"""

from __future__ import annotations

from nbgateway.management.cli import _accounts, _gateways, _members, _services
from nbgateway.management.cli._lookup import resolve
from nbgateway.management.cli._parsing import Commands
from nbgateway.management.cli._targets import parse_target

__all__ = ["parse_target", "register", "resolve"]


def register(cmd: Commands) -> None:
    """Add the resource commands, in the order the help lists them."""
    for family in (_members, _services, _gateways, _accounts):
        family.register(cmd)
