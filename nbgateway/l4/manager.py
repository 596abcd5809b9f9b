"""Which L4 ports this gateway binds, for which services, and their status.

:class:`L4Manager` is a mapping-store observer.  For every ``tcp``/``tls``
mapping it builds an :class:`~nbgateway.l4.target.L4Target` and puts it on
the :class:`~nbgateway.l4.router.PortRouter` of its port:

- public mappings: a host TCP listener on ``listen_port`` (``--addr``'s host,
  all interfaces when that is empty), bound on the first route of the port
  and closed 30 s after its last one went (a service re-created on it in
  the meantime reuses the socket);
- private mappings: a listener on the account's tunnel netstack at
  ``listen_port`` (never a host port), bound once the account's tunnel is up
  (:meth:`account_ready`); each connection passes the private gate.

A public mapping binds a host port only inside ``public_ports`` (the
operator's ``--l4-public-ports``, default :data:`DEFAULT_PUBLIC_PORTS`:
ports below 1024 are the operator's); outside it the mapping is refused
(ERROR naming the port and the range, a warning, ``port_refused`` in the
stats).  A ``tls`` mapping on the main port shares the gateway's own listener
and is never refused for it; private mappings listen on the account's tunnel,
not the host, and are not concerned.

Conflicts and bind failures are recorded per service and reported ERROR
with upstream's messages; :meth:`status` is what the account runtime
reports (``ACTIVE`` only once the listener is bound).  Removing or changing a
mapping closes its live relays.  One account's live TCP relays over all its
routers (public, private, the main port) are at most ``max_account_relays``
(default :data:`ACCOUNT_RELAYS_FACTOR` x ``--max-relays``): each router bounds
its own relays, but an account may have many ports.  ``udp`` mappings go to
:mod:`nbgateway.l4.udp`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger

from nbgateway._proto import proxy_service_pb2 as pb
from nbgateway.l4.router import MAX_RELAYS, PortRouter
from nbgateway.l4.stats import L4Stats
from nbgateway.l4.target import L4ConfigError, L4Target, target_from_mapping
from nbgateway.observe.accesslog import build_entry, new_log_id
from nbgateway.routes.service import is_l4

log = Logger()

ACTIVE = pb.PROXY_STATUS_ACTIVE
#: how long a port without routes keeps its listener (upstream drains 30 s)
LISTENER_LINGER = 30.0
#: accept queue of an L4 host port (bursts of new connections; the kernel caps it)
LISTEN_BACKLOG = 4096
ERROR = pb.PROXY_STATUS_ERROR
#: one account's live TCP relays over all its routers, in ``--max-relays``
ACCOUNT_RELAYS_FACTOR = 4
#: host ports public L4 services may bind unless the operator says otherwise
#: (``--l4-public-ports``): ports below 1024 are the operator's
DEFAULT_PUBLIC_PORTS: tuple[tuple[int, int], ...] = ((1024, 65535),)


def format_port_ranges(ranges: Iterable[tuple[int, int]]) -> str:
    """``1024-65535``, ``53,8000-8999``; ``none`` for no port."""
    return ",".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in ranges) or "none"


class _BoundByGateway:
    """The main router's "listening port": the gateway binds and closes it."""

    def getHost(self) -> str:
        return "the public listener"

    def stopListening(self) -> None:
        return None


class L4Manager:
    """Mapping observer for L4 services (see the module docstring)."""

    def __init__(self, reactor: Any, *, dial: Callable[[L4Target], Any],
                 bind_host: str = "", wg_port: Callable[[], int] | int = 0,
                 main_port: int = 0, tunnel_ports: tuple[int, ...] = (),
                 max_dial_timeout: float = 0.0, max_idle_timeout: float = 0.0,
                 proxy_protocol: bool = False, trusted: Callable[[str], bool] | None = None,
                 mgmt: Any = None, access_log: Any = None,
                 gate: Callable[[L4Target, str], Deferred] | None = None,
                 tunnel_listen: Callable[[str, int, Any], Any] | None = None,
                 tunnel_of: Callable[[str], Any] | None = None,
                 max_relays: int = MAX_RELAYS,
                 max_account_relays: int | None = None,
                 public_ports: Iterable[tuple[int, int]] = DEFAULT_PUBLIC_PORTS) -> None:
        self.reactor = reactor
        self.dial = dial
        self.bind_host = bind_host
        self._wg_port = wg_port
        self.main_port = main_port
        self.tunnel_ports = tunnel_ports
        self.max_dial_timeout = max_dial_timeout
        self.max_idle_timeout = max_idle_timeout
        self.proxy_protocol = proxy_protocol
        self.trusted = trusted
        self.mgmt = mgmt
        self.access_log = access_log
        self.gate = gate
        #: (account, port, factory) -> Deferred[IListeningPort] on the account's tunnel
        self.tunnel_listen = tunnel_listen
        #: account -> its current tunnel (netstack) object, or None: a private
        #: listener bound on another object belongs to a re-created tunnel
        self.tunnel_of = tunnel_of
        #: live relays per port router (``--max-relays``)
        self.max_relays = max_relays
        #: live TCP relays per account over all routers, and their bound
        self.account_relays: dict[str, int] = {}
        self.max_account_relays = (max_account_relays if max_account_relays is not None
                                   else ACCOUNT_RELAYS_FACTOR * max_relays)
        #: inclusive (low, high) host port ranges public services may bind
        self.public_ports = tuple((int(lo), int(hi)) for lo, hi in public_ports)
        self.stats = L4Stats(active=self.active_relays)
        #: public routers by host port; private routers by (account, port)
        self.public: dict[int, PortRouter] = {}
        self.private: dict[tuple[str, int], PortRouter] = {}
        self.targets: dict[str, L4Target] = {}
        self.errors: dict[str, str] = {}
        self.udp: Any = None  # nbgateway.l4.udp.UDPRelays, attached by the wiring
        #: the main port's router (HTTP channel + L4 routes), see :meth:`main_factory`
        self.main: PortRouter | None = None

    def attach_main(self, http_factory: Any, http_lookup: Callable[[str], bool]) -> PortRouter:
        """Put a router in front of the public listener's ``TLSOrPlainFactory``
        (bound by the gateway; its ``front`` hook): TLS-by-SNI and fallback
        relays of L4 services whose ``listen_port`` is the main port, and
        inbound PROXY with ``--proxy-protocol``; everything else stays HTTP."""
        router = PortRouter(
            self.main_port, clock=self.reactor, dial=self.dial, stats=self.stats,
            on_relay_end=self._relay_ended, proxy_protocol=self.proxy_protocol,
            trusted=self.trusted, http_factory=http_factory, http_lookup=http_lookup,
            max_relays=self.max_relays, totals=self.account_relays,
            max_total=self.max_account_relays)
        router.listening = _BoundByGateway()
        self.main = router
        self.public[self.main_port] = router
        http_factory.front = router.front
        return router

    @property
    def wg_port(self) -> int:
        return self._wg_port() if callable(self._wg_port) else self._wg_port

    def active_relays(self) -> int:
        return sum(len(r.connections) for r in [*self.public.values(), *self.private.values()])

    # ------------------------------------------------------------------ status

    def status(self, mapping: Any) -> tuple[int, str | None]:
        """(status, error) for an L4 mapping the account runtime reports."""
        if mapping.mode == "udp" and self.udp is not None:
            return self.udp.status(mapping)
        error = self.errors.get(mapping.id)
        if error is not None:
            return ERROR, error
        target = self.targets.get(mapping.id)
        if target is None:
            return ERROR, f"{mapping.mode.upper()} service {mapping.id} is not served"
        router = self._router_of(target)
        if router is None or router.listening is None:
            return ERROR, f"port {target.listen_port} is not bound yet"
        return ACTIVE, None

    def _report(self, mapping: Any) -> None:
        if self.mgmt is None:
            return
        status, error = self.status(mapping)
        if status == ACTIVE:
            return  # the account runtime reports ACTIVE with its tunnel state
        maybeDeferred(self.mgmt.send_status_update, mapping.id, mapping.account_id, status,
                      error_message=error).addErrback(lambda f: None)

    def _router_of(self, target: L4Target) -> PortRouter | None:
        if target.private:
            return self.private.get((target.account_id, target.listen_port))
        return self.public.get(target.listen_port)

    # ------------------------------------------------------------------ add / remove

    def port_refusal(self, target: L4Target) -> str | None:
        """Why public ``target`` may not bind its host port (outside
        ``public_ports``), or None.  Private targets and ``tls`` targets on the
        main port (the gateway's own listener, routed by SNI) are not refused."""
        port = target.listen_port
        if target.private or (target.mode == "tls" and port == self.main_port):
            return None
        if any(lo <= port <= hi for lo, hi in self.public_ports):
            return None
        what = "UDP port" if target.mode == "udp" else "port"
        return (f"{what} {port} is outside the public L4 port range of this gateway "
                f"({format_port_ranges(self.public_ports)})")

    def refused(self, target: L4Target, message: str) -> None:
        """Count and log a public mapping refused by :meth:`port_refusal` (the
        caller records the ERROR and reports it)."""
        self.stats.port_refused += 1
        log.warn("L4 service {service} of account {account} refused: {err}",
                 service=target.service_id, account=target.account_id,
                 port=target.listen_port, mode=target.mode,
                 ports=format_port_ranges(self.public_ports), err=message)

    def _conflict(self, target: L4Target, router: PortRouter | None) -> str | None:
        port = target.listen_port
        if not target.private and port == self.wg_port:
            return f"port {port} conflicts with tunnel port"
        if not target.private and port == self.main_port and self.main is None:
            return f"port {port} is the public listener's port, which is not served here"
        if target.private and port in self.tunnel_ports:
            return f"port {port} conflicts with the tunnel HTTP/HTTPS listener port"
        if router is None:
            return None
        if target.mode == "tls":
            other = router.sni_routes.get(target.domain)
            if other is not None and other.service_id != target.service_id:
                return (f"port {port}: server name {target.domain} is already used by "
                        f"service {other.service_id}")
        elif router.fallback is not None and router.fallback.service_id != target.service_id:
            return f"port {port} is already used by service {router.fallback.service_id}"
        return None

    def admit(self, mapping: Any, errors: dict[str, str], *,
              warn_invalid: bool = True) -> L4Target | None:
        """The target of ``mapping`` (TCP/TLS here, UDP for :class:`UDPRelays`)
        when it parses and :meth:`port_refusal` lets it bind; else None, with
        the reason in ``errors[mapping.id]`` and the ERROR reported (a mapping
        that does not parse is logged when ``warn_invalid``)."""
        try:
            target = target_from_mapping(mapping, max_dial_timeout=self.max_dial_timeout,
                                         max_idle_timeout=self.max_idle_timeout)
        except L4ConfigError as exc:
            errors[mapping.id] = str(exc)
            if warn_invalid:
                log.warn("L4 service {service}: {err}", service=mapping.id, err=str(exc))
            self._report(mapping)
            return None
        refusal = self.port_refusal(target)
        if refusal is not None:
            errors[mapping.id] = refusal
            self.refused(target, refusal)
            self._report(mapping)
            return None
        return target

    def add(self, mapping: Any) -> None:
        target = self.admit(mapping, self.errors)
        if target is None:
            return
        key = (target.account_id, target.listen_port)
        router = self.private.get(key) if target.private else self.public.get(target.listen_port)
        conflict = self._conflict(target, router)
        if conflict is not None:
            self.errors[mapping.id] = conflict
            log.warn("L4 service {service}: {err}", service=mapping.id, err=conflict)
            self._report(mapping)
            return
        self.targets[mapping.id] = target
        self.errors.pop(mapping.id, None)
        if router is None:
            router = self._new_router(target)
            if target.private:
                self.private[key] = router
            else:
                self.public[target.listen_port] = router
        if router.linger is not None:  # the port was lingering without routes
            router.linger.cancel()
            router.linger = None
        router.set_route(target)
        if target.private:
            self._bind_private(target.account_id)
        elif router.listening is None:
            self._bind_public(router, mapping)

    def _new_router(self, target: L4Target) -> PortRouter:
        return PortRouter(
            target.listen_port, clock=self.reactor, dial=self.dial, stats=self.stats,
            gate=self.gate if target.private else None, on_relay_end=self._relay_ended,
            proxy_protocol=self.proxy_protocol and not target.private,
            trusted=self.trusted, account_id=target.account_id if target.private else None,
            max_relays=self.max_relays, totals=self.account_relays,
            max_total=self.max_account_relays)

    def _bind_public(self, router: PortRouter, mapping: Any) -> None:
        try:
            router.listening = self.reactor.listenTCP(router.port, router, backlog=LISTEN_BACKLOG,
                                                      interface=self.bind_host)
        except Exception as exc:  # CannotListenError: the OS reason goes to management
            reason = getattr(exc, "socketError", None) or exc
            message = f"listen on port {router.port}: {reason}"
            log.warn("L4 service {service}: {err}", service=mapping.id, err=message)
            for t in router.targets():
                self.errors[t.service_id] = message
                self.targets.pop(t.service_id, None)
            self.public.pop(router.port, None)
            self._report(mapping)
            return
        log.info("L4 listener on TCP {addr} for service {service}",
                 addr=router.listening.getHost(), service=mapping.id)

    def current_tunnel(self, account_id: str) -> Any:
        """The account's tunnel object now (None when unknown or down)."""
        return self.tunnel_of(account_id) if self.tunnel_of is not None else None

    def _bind_private(self, account_id: str) -> None:
        """Bind the account's private L4 routers that are not bound yet (the
        tunnel may not be up: :meth:`account_ready` calls this again), and
        re-bind those whose listener is on a tunnel that was since re-created
        (the account went and came back while its routes stayed or lingered;
        the old netstack, its listener and relays are gone with it)."""
        if self.tunnel_listen is None:
            return
        tunnel = self.current_tunnel(account_id)
        for (acct, port), router in list(self.private.items()):
            if acct != account_id or router.empty:
                continue
            if router.listening is not None:
                if tunnel is None or router.tunnel is tunnel:
                    continue
                log.info("account {account}'s tunnel was re-created: re-binding private L4 "
                         "port {port}", account=account_id, port=port)
                router.close_all("tunnel_recreated")
                lp, router.listening, router.tunnel = router.listening, None, None
                maybeDeferred(lp.stopListening).addErrback(lambda f: None)
            d = self.tunnel_listen(account_id, port, router)
            if d is None:
                continue  # no tunnel yet

            def bound(lp: Any, router: PortRouter = router, tunnel: Any = tunnel) -> None:
                if router.empty:
                    lp.stopListening()
                    return
                router.listening = lp
                router.tunnel = tunnel
                log.info("private L4 listener on tunnel port {port} of account {account}",
                         port=router.port, account=account_id)

            def failed(f: Any, router: PortRouter = router) -> None:
                message = f"listen on tunnel port {router.port}: {f.getErrorMessage()}"
                for t in router.targets():
                    self.errors[t.service_id] = message

            d.addCallbacks(bound, failed)

    def account_ready(self, account_id: str) -> None:
        """The account's tunnel is up: bind its private L4 listeners."""
        self._bind_private(account_id)
        if self.udp is not None:
            self.udp.account_ready(account_id)

    def revalidate(self, account_id: str) -> None:
        """The account's access changed (management pushed a map for it): ask
        the private gate again for each of its live private relays and UDP
        sessions; those no longer allowed are closed (``access_revoked``)."""
        for (acct, _port), router in list(self.private.items()):
            if acct == account_id:
                router.revalidate()
        if self.udp is not None:
            self.udp.revalidate(account_id)

    def remove(self, mapping: Any, *, keep_listener: bool = False) -> None:
        """Drop the mapping's route and reset its live relays; the port's
        listener closes with its last route unless ``keep_listener`` (a
        changed mapping: a closed port cannot be bound again at once, its
        socket closes on the next reactor turn)."""
        self.errors.pop(mapping.id, None)
        target = self.targets.pop(mapping.id, None)
        if target is None:
            return
        router = self._router_of(target)
        if router is None:
            return
        closed = router.remove_service(mapping.id)
        if closed:
            log.info("L4 service {service} removed: closed {n} live connection(s)",
                     service=mapping.id, n=closed)
        if not keep_listener:
            self._drop_if_empty(router, target)

    def _drop_if_empty(self, router: PortRouter, target: L4Target) -> None:
        """A port without routes keeps its listener for :data:`LISTENER_LINGER`
        seconds (a service re-created on it reuses the socket; connections
        meanwhile find no route), then closes it."""
        if not router.empty or router is self.main or router.linger is not None:
            return
        key = (target.account_id, target.listen_port) if target.private else None

        def close() -> None:
            router.linger = None
            if not router.empty:
                return
            if key is not None:
                if self.private.get(key) is router:
                    del self.private[key]
            elif self.public.get(router.port) is router:
                del self.public[router.port]
            if router.listening is not None:
                lp, router.listening = router.listening, None
                maybeDeferred(lp.stopListening)

        router.linger = self.reactor.callLater(LISTENER_LINGER, close)

    def close_all(self) -> Deferred:
        from twisted.internet.defer import DeferredList

        ds = []
        for router in [*self.public.values(), *self.private.values()]:
            if router.linger is not None:
                router.linger.cancel()
                router.linger = None
            router.close_all()
            if router.listening is not None and router is not self.main:
                lp, router.listening = router.listening, None
                ds.append(maybeDeferred(lp.stopListening))
        if self.udp is not None:
            ds.append(maybeDeferred(self.udp.close_all))
        return DeferredList(ds, consumeErrors=True)

    # ------------------------------------------------------------------ access log

    def _relay_ended(self, conn: Any) -> None:
        if self.access_log is None or conn.target is None:
            return
        target = conn.target
        relay = conn.relay
        reason = relay.close_reason if relay is not None else conn.close_reason
        if relay is None:
            code = 403
        elif reason == "dial_failed":
            code = 502
        else:
            code = 200
        meta = {"close_reason": reason, "listen_port": str(target.listen_port)}
        if conn.groups:
            meta["groups"] = ",".join(conn.groups)
        now = self.reactor.seconds()
        try:
            self.access_log.log(build_entry(
                now=now, log_id=new_log_id(now), account_id=target.account_id,
                service_id=target.service_id, host=target.domain, path="", method="",
                response_code=code, duration_ms=int((now - conn.started) * 1000),
                source_ip=conn.source[0], auth_mechanism="oidc" if conn.user_id else "",
                user_id=conn.user_id, bytes_upload=relay.bytes_up if relay else 0,
                bytes_download=relay.bytes_down if relay else 0, protocol=target.mode,
                metadata=meta))
        except Exception:
            log.failure("L4 access log entry")

    # ------------------------------------------------------------------ MappingObserver

    def account_added(self, account_id: str) -> None:
        return None

    def account_removed(self, account_id: str) -> None:
        return None

    def _is_mine(self, mapping: Any) -> bool:
        return is_l4(mapping.mode)

    def mapping_added(self, mapping: Any) -> None:
        if not self._is_mine(mapping):
            return
        if mapping.mode == "udp":
            if self.udp is not None:
                self.udp.add(mapping)
            return
        self.add(mapping)

    def mapping_changed(self, old: Any, new: Any) -> None:
        if old.mode in ("tcp", "tls"):
            target = self.targets.get(old.id)
            self.remove(old, keep_listener=True)  # a same-port change keeps the socket
            self.mapping_added(new)
            if target is not None:
                router = self._router_of(target)
                if router is not None:
                    self._drop_if_empty(router, target)
        elif old.mode == "udp" and self.udp is not None:
            if new.mode == "udp":
                self.udp.change(old, new)
            else:
                self.udp.remove(old)
                self.mapping_added(new)
        else:
            self.mapping_added(new)
        if self._is_mine(new):
            self._report(new)

    def mapping_refreshed(self, mapping: Any) -> None:
        return None

    def mapping_removed(self, mapping: Any) -> None:
        if not self._is_mine(mapping):
            return
        if mapping.mode == "udp":
            if self.udp is not None:
                self.udp.remove(mapping)
            return
        self.remove(mapping)

    def snapshot_reconciled(self, removed_ids: frozenset[str]) -> None:
        return None
