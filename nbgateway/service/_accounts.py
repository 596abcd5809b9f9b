"""What the gateway gives each account's runtime besides the shared objects:
its WireGuard identity on disk and its listeners on the tunnel address.

* :func:`account_key`: the account's private key in ``DATADIR/accounts/``
  (0600, written atomically), so a restarted gateway keeps its tunnel identity
  (replaced when management refuses it as another peer's);
* :func:`peer_endpoint_refusal`: the dial guard's judgement of a roster peer's
  endpoint address (special blocks, this host's addresses);
* :func:`listen_inbound`: HTTP and HTTPS (each port accepting both) on every
  address of the account's netstack, behind a :class:`BuiltOnFirstConnection`
  factory, plus the DNS responder (UDP and TCP 53) on the account's zone.

The runtime calls these when it brings its tunnel up (never before
:meth:`~nbgateway.service.GatewayService.startService`); netstack listeners are
userspace objects, not host sockets.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
from collections.abc import Callable
from functools import partial
from typing import Any

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.protocol import Factory
from twisted.logger import Logger

from nbgateway.accounts import AccountRuntime
from nbgateway.atomicfile import write_atomic
from nbgateway.dial.direct import is_host_address
from nbgateway.dial.guard import INVALID_HOST, endpoint_refusal
from nbgateway.dns.server import DNSResponderFactory, listen_dns
from nbgateway.dns.zone import ZoneAuthority
from nbgateway.netstack.endpoints import TunnelServerEndpoint
from nbgateway.wireguard.keys import generate_private_key, key_from_base64, key_to_base64

log = Logger(namespace="nbgateway.service")  # one namespace for the package


def account_key(datadir: str, account_id: str, fresh: bool = False) -> bytes:
    """The account's WireGuard private key, kept in ``DATADIR/accounts/``
    (0600) so a restarted gateway keeps its tunnel identity: management
    re-registers the same proxy peer and stock peers' configs stay valid.
    An unreadable key file is replaced (logged).  ``fresh``: a new key
    replaces the stored one (management refused it as another peer's)."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", account_id)[:64]
    name = f"{safe}-{hashlib.sha256(account_id.encode()).hexdigest()[:8]}.key"
    folder = os.path.join(datadir, "accounts")
    path = os.path.join(folder, name)
    try:
        if not fresh:
            with open(path) as f:
                return key_from_base64(f.read())
    except FileNotFoundError:
        pass
    except ValueError:
        log.warn("replacing unreadable account key {path}", path=path)
    key = generate_private_key()
    os.makedirs(folder, mode=0o700, exist_ok=True)
    write_atomic(path, (key_to_base64(key) + "\n").encode(), 0o600)
    return key


def peer_endpoint_refusal(host: str) -> str | None:
    """Why a roster peer's endpoint address (an IP string) must not get the
    gateway's handshakes (:func:`nbgateway.dial.guard.endpoint_refusal`, this
    host's addresses by a routing lookup), or None; an unparsable one is
    refused."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return INVALID_HOST
    return endpoint_refusal(ip, is_host_address)


class Stoppable:
    """Adapts an object with ``stop()`` to the ``stopListening()`` of ports."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def stopListening(self) -> Any:
        return self.inner.stop()


class BuiltOnFirstConnection(Factory):
    """A listener's factory that builds the real one on the first connection
    (an idle account's tunnel ports hold this object, not a site, resource,
    TLS creator and dispatcher: ~2.5 KiB an account).  The port is bound and
    answers at once; the build is synchronous, so the first connection is
    served by the real factory like every later one."""

    noisy = False  # no "Starting factory" line per account

    def __init__(self, build: Callable[[], Any]) -> None:
        self._build = build
        self.built: Any = None

    def buildProtocol(self, addr: Any) -> Any:
        if self.built is None:
            if not self.numPorts:
                return None  # no port listening: refuse
            self.built = self._build()
            self.built.doStart()
        return self.built.buildProtocol(addr)

    def stopFactory(self) -> None:  # the last port stopped
        built, self.built = self.built, None
        if built is not None:
            built.doStop()


def listen_inbound(runtime: AccountRuntime, web_factory: Callable[[str], Any],
                   dns: dict[str, ZoneAuthority], clock: Any) -> Deferred:
    """The account's listeners on its tunnel address: HTTP on the HTTP port,
    HTTPS on the HTTPS port (each also accepting the other protocol), DNS.
    ``web_factory(account_id)`` builds the web factory on the first connection;
    ``dns`` maps accounts to their zones (this account's is made if missing).
    Fires with the listening ports."""
    cfg = runtime.settings
    # every address of the account's stack (its tunnel IPv4 and, if any, IPv6);
    # one factory (site, resource, TLS creator) serves both ports, built
    # on the account's first connection
    account_id = runtime.account_id
    web = BuiltOnFirstConnection(partial(web_factory, account_id))
    listens = [
        TunnelServerEndpoint(runtime.stack, port).listen(web)
        for port in dict.fromkeys((cfg.http_port, cfg.https_port))
    ]
    d = DeferredList(listens, fireOnOneErrback=True, consumeErrors=True)
    d.addCallback(lambda results: [port for _ok, port in results])
    return d.addCallback(_serve_dns, runtime, dns, clock)


def _serve_dns(ports: list[Any], runtime: AccountRuntime, dns: dict[str, ZoneAuthority],
               clock: Any) -> Deferred:
    """Add the DNS responder (UDP and TCP 53) to the account's listeners;
    a DNS bind failure is logged and leaves the web listeners up."""
    authority = dns.setdefault(runtime.account_id, ZoneAuthority())
    factory = DNSResponderFactory(authority, clock=clock)
    d = listen_dns(runtime.stack, factory, interface="")

    def bound(listeners: Any) -> list[Any]:
        return [*ports, Stoppable(listeners)]

    def failed(failure: Any) -> list[Any]:
        log.warn("account {account}: DNS responder not started: {err}",
                 account=runtime.account_id, err=failure.getErrorMessage())
        return ports

    return d.addCallbacks(bound, failed)
