"""How a :class:`~nbgateway.service.GatewayService` gets its L4 relays.

:func:`attach_l4` builds the :class:`~nbgateway.l4.manager.L4Manager` (and
its UDP relays) from the gateway's configuration and live objects: dials go
through ``gateway.dialer_for`` (the account's tunnel, or the guarded host
dialer for ``direct_upstream``), private connections through
``gateway.gate`` (roster short-circuit, then the validation cache), entries
through ``gateway.access_log``.  A ``direct_upstream`` UDP target is an IP
literal the dial guard allows and never one of this gateway's own UDP
sockets (:func:`own_udp_socket`: the WireGuard port, the public UDP
relays).  The gateway object is used by attribute only; nothing here
imports :mod:`nbgateway.service`.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from nbgateway.dial import DirectUpstreamDeniedError, ProxyNotConnectedError
from nbgateway.dial.fdbudget import account_share
from nbgateway.dial.guard import (
    GATEWAY_LISTENER,
    INVALID_HOST,
    DialPolicy,
    IPAddress,
    Listener,
    parse_ip_literal,
)
from nbgateway.l4.manager import ACCOUNT_RELAYS_FACTOR, DEFAULT_PUBLIC_PORTS, L4Manager
from nbgateway.l4.router import MAX_RELAYS
from nbgateway.l4.target import L4Target
from nbgateway.l4.udp import MAX_DATAGRAM, UDPRelays
from nbgateway.proxy.headers import TrustedProxies

log = Logger()


class _LateAccessLog:
    """The gateway's access log, looked up when an entry is written (it is
    built after the mapping observers)."""

    def __init__(self, gateway: Any) -> None:
        self.gateway = gateway

    def log(self, entry: Any) -> None:
        sink = getattr(self.gateway, "access_log", None)
        if sink is not None:
            sink.log(entry)


def own_udp_sockets(manager: L4Manager) -> list[Listener]:
    """This gateway's UDP sockets on the host: the WireGuard port (every
    interface) and the public UDP relays' ports.  The dial guard's listener
    set is TCP; a ``direct_upstream`` UDP target is checked against these."""
    out = []
    wg = manager.wg_port
    if wg:
        out.append(Listener(None, wg))
    udp = manager.udp
    for svc in (udp.services.values() if udp is not None else ()):
        if not svc.target.private and svc.listening is not None:
            try:
                out.append(Listener.of(manager.bind_host, svc.target.listen_port))
            except ValueError:
                continue
    return out


def own_udp_socket(manager: L4Manager, policy: Any, ip: IPAddress, port: int) -> bool:
    """Whether ``ip:port`` reaches one of this gateway's own UDP sockets
    (:func:`own_udp_sockets`, judged as the guard judges its TCP listeners:
    loopback, the unspecified address and this host's addresses for a socket
    on every interface)."""
    own = DialPolicy(listeners=lambda: own_udp_sockets(manager),
                     is_local=getattr(policy, "is_local", lambda ip: False))
    return own.check("", ip, port).reason == GATEWAY_LISTENER


def attach_l4(gateway: Any) -> L4Manager:
    cfg = gateway.config
    reactor = gateway.reactor

    def dial(target: L4Target) -> Any:
        dialer = gateway.dialer_for(target.account_id, target.direct)
        if dialer is None:
            raise ProxyNotConnectedError(f"no client for account {target.account_id}")
        return dialer.endpoint(target.host, target.port, target.dial_timeout)

    def gate(target: L4Target, client_ip: str) -> Deferred:
        d = gateway.gate.check(listener_account=target.account_id,
                               mapping_account=target.account_id, domain=target.domain,
                               client_ip=client_ip)

        def verdict(decision: Any) -> tuple[bool, str, str, tuple[str, ...]]:
            ident = decision.identity
            return (decision.allowed, decision.reason, ident.user_id if ident else "",
                    tuple(ident.group_names or ident.group_ids) if ident else ())

        return d.addCallback(verdict)

    def tunnel_listen(account_id: str, port: int, factory: Any) -> Deferred | None:
        from nbgateway.netstack.endpoints import TunnelServerEndpoint

        stack = gateway.tunnel_stack(account_id)
        if stack is None:
            return None
        return TunnelServerEndpoint(stack, port).listen(factory)

    trusted_list = tuple(getattr(cfg, "trusted_proxies", ()) or ())
    trusted = TrustedProxies(trusted_list)
    proxy_protocol = bool(getattr(cfg, "proxy_protocol", False))
    if proxy_protocol and not trusted_list:
        log.warn("--proxy-protocol without --trusted-proxies: any source may set its "
                 "client address with a PROXY header on the L4 listeners")
    addr = cfg.addr
    max_relays = int(getattr(cfg, "max_relays", 0) or MAX_RELAYS)
    # one account's relays and UDP sessions take at most a share of the
    # process's descriptors (a relay to a direct target holds two sockets)
    relay_share = account_share(per_item=2)
    session_share = account_share()
    manager = L4Manager(
        reactor, dial=dial, bind_host=addr.host if addr is not None else "",
        wg_port=lambda: gateway.wg_port or int(getattr(cfg, "wg_port", 0) or 0),
        main_port=addr.port if addr is not None else 0,
        tunnel_ports=(cfg.tunnel_http_port, cfg.tunnel_https_port, 53),
        max_dial_timeout=float(cfg.max_dial_timeout or 0),
        max_idle_timeout=float(cfg.max_session_idle_timeout or 0),
        proxy_protocol=proxy_protocol,
        trusted=trusted.contains if trusted_list else None,
        mgmt=gateway.mgmt, access_log=_LateAccessLog(gateway), gate=gate,
        tunnel_listen=tunnel_listen, tunnel_of=gateway.tunnel_stack,
        max_relays=max_relays,
        max_account_relays=(min(ACCOUNT_RELAYS_FACTOR * max_relays, relay_share)
                            if relay_share else None),
        public_ports=getattr(cfg, "l4_public_ports", DEFAULT_PUBLIC_PORTS))
    def udp_listen(target: L4Target, protocol: Any) -> Any:
        if target.private:
            from nbgateway.netstack.udp import listen_udp

            stack = gateway.tunnel_stack(target.account_id)
            if stack is None:
                return None
            return listen_udp(stack, target.listen_port, protocol, maxPacketSize=MAX_DATAGRAM)
        return reactor.listenUDP(target.listen_port, protocol, interface=manager.bind_host,
                                 maxPacketSize=MAX_DATAGRAM)

    def udp_open(target: L4Target, protocol: Any) -> Any:
        """A UDP socket connected to the target: through the tunnel, or (for
        ``direct_upstream``) the host network for an IP literal the dial guard allows."""
        if target.direct:
            ip = parse_ip_literal(target.host)
            if ip is None:
                raise DirectUpstreamDeniedError(INVALID_HOST, target.host, target.port)
            policy = gateway.direct.policy
            if own_udp_socket(manager, policy, ip, target.port):
                # the WireGuard port or another service's public UDP relay,
                # reached from this host's own address (the TCP guard's rule 1)
                raise DirectUpstreamDeniedError(GATEWAY_LISTENER, target.host, target.port,
                                                str(ip))
            decision = policy.check(target.account_id, ip, target.port)
            if not decision:
                raise DirectUpstreamDeniedError(decision.reason, target.host, target.port,
                                                str(ip))
            port = reactor.listenUDP(0, protocol, maxPacketSize=MAX_DATAGRAM)
            port.connect(str(ip), target.port)
            return port
        from nbgateway.netstack.udp import listen_udp

        stack = gateway.tunnel_stack(target.account_id)
        if stack is None:
            raise ProxyNotConnectedError(f"no client for account {target.account_id}")
        port = listen_udp(stack, 0, protocol, maxPacketSize=MAX_DATAGRAM)
        port.connect(target.host, target.port)
        return port

    manager.udp = UDPRelays(manager, listen=udp_listen, open_upstream=udp_open)
    if session_share:
        manager.udp.max_account_sessions = min(manager.udp.max_account_sessions, session_share)
    return manager
