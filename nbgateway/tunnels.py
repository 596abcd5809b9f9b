"""Tunnel endpoints for any Twisted program: ``nbtunnel:`` endpoint strings.

Owns two things:

* :data:`registry` -- which running gateway in this process has which
  account's tunnel.  A :class:`~nbgateway.service.GatewayService` registers
  itself when it starts and unregisters when it stops; an account's netstack
  exists once the gateway serves at least one of that account's services and
  has its network map.  Several gateways in one process are searched in start
  order.
* the string endpoint parsers behind the ``twisted/plugins/nbtunnel_endpoints.py``
  dropin, so a host application can listen on or dial through an account's
  tunnel without importing nbgateway internals::

      serverFromString(reactor, "nbtunnel:account=ACCOUNT:port=443")
      serverFromString(reactor, "nbtunnel:account=ACCOUNT:port=8080:interface=100.64.0.5")
      clientFromString(reactor, "nbtunnel:account=ACCOUNT:host=100.64.0.7:port=80")
      clientFromString(reactor, "nbtunnel:account=ACCOUNT:host=100.64.0.7:port=80:timeout=10")

  The account's netstack is looked up when ``listen()`` / ``connect()`` is
  called, not when the string is parsed; without a started gateway that has
  the account's tunnel the Deferred fails with :class:`NoTunnelError`, whose
  message says so.  ``host`` must be an IP address (there is no resolver on
  the tunnel); IPv6 literals escape their colons (``host=fd00\\:\\:7``).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, interfaces
from twisted.plugin import IPlugin
from zope.interface import implementer

#: an account id -> that account's netstack (or None: not running here)
StackLookup = Callable[[str], Any]


class NoTunnelError(LookupError):
    """No running gateway in this process has the account's tunnel."""


class TunnelRegistry:
    """Account netstacks of the gateways running in this process."""

    def __init__(self) -> None:
        self._owners: dict[int, tuple[object, StackLookup]] = {}

    def register(self, owner: object, lookup: StackLookup) -> None:
        """``owner`` (a started gateway) answers ``lookup(account_id)``."""
        self._owners[id(owner)] = (owner, lookup)

    def unregister(self, owner: object) -> None:
        self._owners.pop(id(owner), None)

    def stack_for(self, account_id: str) -> Any:
        """The netstack of ``account_id``'s tunnel; :class:`NoTunnelError` if none."""
        if not self._owners:
            raise NoTunnelError(
                f"no nbgateway is running in this process (account {account_id!r}): "
                "start a GatewayService before listening or dialing on nbtunnel: endpoints")
        for _owner, lookup in list(self._owners.values()):
            stack = lookup(account_id)
            if stack is not None:
                return stack
        raise NoTunnelError(
            f"no running nbgateway in this process has a tunnel for account {account_id!r} "
            "(the gateway creates it when it serves one of the account's services and "
            "has received the account's network map)")


#: the process-wide registry the ``nbtunnel:`` endpoints use
registry = TunnelRegistry()


@implementer(interfaces.IStreamServerEndpoint)
class AccountServerEndpoint:
    """Listens on ``port`` of an account's tunnel (looked up at ``listen()``)."""

    def __init__(self, account_id: str, port: int, interface: str | None = None,
                 backlog: int | None = None, tunnels: TunnelRegistry = registry) -> None:
        self.account_id = account_id
        self.port = port
        self.interface = interface
        self.backlog = backlog
        self.tunnels = tunnels

    def listen(self, protocolFactory: Any) -> defer.Deferred[Any]:
        try:
            stack = self.tunnels.stack_for(self.account_id)
        except NoTunnelError:
            return defer.fail()
        from nbgateway.netstack.endpoints import TunnelServerEndpoint

        kw: dict[str, Any] = {"interface": self.interface}
        if self.backlog is not None:
            kw["backlog"] = self.backlog
        return TunnelServerEndpoint(stack, self.port, **kw).listen(protocolFactory)


@implementer(interfaces.IStreamClientEndpoint)
class AccountClientEndpoint:
    """Dials ``host:port`` through an account's tunnel (looked up at ``connect()``)."""

    def __init__(self, account_id: str, host: str, port: int, timeout: float = 30.0,
                 tunnels: TunnelRegistry = registry) -> None:
        self.account_id = account_id
        self.host = host
        self.port = port
        self.timeout = timeout
        self.tunnels = tunnels

    def connect(self, protocolFactory: Any) -> defer.Deferred[Any]:
        try:
            stack = self.tunnels.stack_for(self.account_id)
        except NoTunnelError:
            return defer.fail()
        from nbgateway.netstack.endpoints import TunnelClientEndpoint

        return TunnelClientEndpoint(stack, self.host, self.port,
                                    timeout=self.timeout).connect(protocolFactory)


def _port(value: str, what: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise ValueError(f"nbtunnel: {what} must be a number, not {value!r}") from None
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"nbtunnel: {what} {port} is out of range")
    return port


def _address(value: str, what: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ValueError(f"nbtunnel: {what} must be an IP address, not {value!r}") from None


def _check_keys(kwargs: dict[str, str], allowed: set[str], required: set[str]) -> None:
    unknown = set(kwargs) - allowed
    if unknown:
        raise TypeError(f"nbtunnel: unknown parameter(s) {', '.join(sorted(unknown))}; "
                        f"allowed: {', '.join(sorted(allowed))}")
    missing = required - {k for k, v in kwargs.items() if v}
    if missing:
        raise TypeError(f"nbtunnel: missing {', '.join(sorted(missing))}")


@implementer(IPlugin, interfaces.IStreamServerEndpointStringParser)
class ServerParser:
    """``nbtunnel:account=ID:port=N[:interface=IP][:backlog=N]``."""

    prefix = "nbtunnel"

    def parseStreamServer(self, reactor: Any, *args: str, **kwargs: str) -> AccountServerEndpoint:
        if args:
            raise TypeError("nbtunnel: parameters are named (account=..., port=...)")
        _check_keys(kwargs, {"account", "port", "interface", "backlog"}, {"account", "port"})
        interface = kwargs.get("interface") or None
        return AccountServerEndpoint(
            kwargs["account"], _port(kwargs["port"], "port"),
            interface=_address(interface, "interface") if interface else None,
            backlog=int(kwargs["backlog"]) if kwargs.get("backlog") else None)


@implementer(IPlugin, interfaces.IStreamClientEndpointStringParserWithReactor)
class ClientParser:
    """``nbtunnel:account=ID:host=IP:port=N[:timeout=SECONDS]``."""

    prefix = "nbtunnel"

    def parseStreamClient(self, reactor: Any, *args: str, **kwargs: str) -> AccountClientEndpoint:
        if args:
            raise TypeError("nbtunnel: parameters are named (account=..., host=..., port=...)")
        _check_keys(kwargs, {"account", "host", "port", "timeout"}, {"account", "host", "port"})
        port = _port(kwargs["port"], "port")
        if port == 0:
            raise ValueError("nbtunnel: port 0 cannot be dialed")
        timeout = float(kwargs["timeout"]) if kwargs.get("timeout") else 30.0
        if not timeout > 0:
            raise ValueError("nbtunnel: timeout must be positive")
        return AccountClientEndpoint(kwargs["account"], _address(kwargs["host"], "host"),
                                     port, timeout=timeout)
