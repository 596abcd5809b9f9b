"""UDP relays: one listening socket per ``udp`` service, sessions per client.

:class:`UDPService` listens on the service's port (a host UDP port for a
public service, the account's tunnel address for a private one).  The first
datagram from a new client address opens a :class:`UDPSession` -- after the
access restrictions, the per-service session bound (1,024) and the
new-session rate (token bucket: 50/s, burst 100) and, for a private service,
the private gate (datagrams from the client wait in a small bounded queue
meanwhile: at most :data:`MAX_QUEUED` datagrams and :data:`MAX_QUEUED_BYTES`
bytes per session, :data:`MAX_QUEUED_BYTES_SERVICE` bytes over all of a
service's pending sessions, so a flood of 64 KiB datagrams while the gate's
RPC runs costs a bounded amount of the memory every account shares) --
with its own upstream socket connected to the target.  Replies from the
target go back to that client.  A sweep on the injected clock ends
sessions idle for the service's idle timeout; each ended session writes one
access-log entry.  Datagrams are up to 65,535 bytes.  One account's live
sessions over all its services are at most :data:`MAX_ACCOUNT_SESSIONS`
(each may hold a host socket: the bound keeps one tenant from taking the
process's file descriptors and memory).

:class:`UDPRelays` keeps the services of one gateway (added/removed by
:class:`~nbgateway.l4.manager.L4Manager`; a public service's port must be
in the manager's ``public_ports``, see ``L4Manager.port_refusal``).  Sockets come from injected
``listen(target, protocol)`` / ``open_upstream(target, protocol)`` callables.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import maybeDeferred
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from nbgateway._proto import proxy_service_pb2 as pb
from nbgateway.l4.target import L4ConfigError, L4Target, target_from_mapping
from nbgateway.observe.accesslog import build_entry, new_log_id
from nbgateway.routes.restrictions import parse_ip

log = Logger()

MAX_SESSIONS = 1024
#: live sessions of one account over all its UDP services
MAX_ACCOUNT_SESSIONS = 4 * MAX_SESSIONS
SESSION_RATE = 50.0
SESSION_BURST = 100.0
MAX_DATAGRAM = 65535
#: datagrams a session holds while its private gate is pending
MAX_QUEUED = 16
#: bytes a session holds while its private gate is pending
MAX_QUEUED_BYTES = 64 * 1024
#: bytes all pending sessions of one service hold together
MAX_QUEUED_BYTES_SERVICE = 1024 * 1024
SWEEP_MAX = 60.0


class TokenBucket:
    """Sans-IO token bucket (``rate`` tokens/s, ``burst`` at most)."""

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = now

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class _Upstream(DatagramProtocol):
    def __init__(self, session: UDPSession) -> None:
        self.session = session

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        self.session.from_upstream(data)

    def connectionRefused(self) -> None:
        pass  # ICMP port unreachable: the client sees silence, as with a lost datagram


class UDPSession:
    def __init__(self, service: UDPService, client: tuple[str, int], now: float) -> None:
        self.service = service
        self.client = client
        self.started = now
        self.last = now
        self.upstream: Any = None
        self.queue: list[bytes] = []
        self.queued_bytes = 0
        self.state = "gate" if service.target.private else "open"
        self.bytes_up = 0
        self.bytes_down = 0
        self.user_id = ""
        self.groups: tuple[str, ...] = ()
        self.close_reason = ""

    def open(self) -> None:
        self.upstream = self.service.open_upstream(self.service.target, _Upstream(self))
        self.state = "open"
        queue, self.queue = self.queue, []
        self._unqueue()
        for data in queue:
            self.to_upstream(data)

    def to_upstream(self, data: bytes) -> None:
        self.bytes_up += len(data)
        if self.upstream is None:
            size = len(data)
            service = self.service
            if (len(self.queue) < MAX_QUEUED and self.queued_bytes + size <= MAX_QUEUED_BYTES
                    and service.queued_bytes + size <= MAX_QUEUED_BYTES_SERVICE):
                self.queue.append(data)
                self.queued_bytes += size
                service.queued_bytes += size
            else:
                service.stats.udp_queue_drops += 1
            return
        try:
            self.upstream.write(data)
        except Exception as exc:
            log.debug("UDP write to upstream failed: {err}", err=str(exc))

    def _unqueue(self) -> None:
        """Give the queue's bytes back to the service's budget."""
        self.service.queued_bytes -= self.queued_bytes
        self.queued_bytes = 0

    def from_upstream(self, data: bytes) -> None:
        self.last = self.service.clock.seconds()
        self.bytes_down += len(data)
        self.service.stats.udp_datagrams_out += 1
        self.service.reply(data, self.client)

    def close(self, reason: str) -> None:
        if self.state == "closed":
            return
        self.state = "closed"
        self.close_reason = reason
        self.queue = []
        self._unqueue()
        if self.upstream is not None:
            up, self.upstream = self.upstream, None
            maybeDeferred(up.stopListening)


class UDPService(DatagramProtocol):
    """One ``udp`` service: its listening socket and client sessions."""

    def __init__(self, target: L4Target, *, clock: Any, stats: Any,
                 open_upstream: Callable[[L4Target, Any], Any],
                 gate: Callable[[L4Target, str], Any] | None = None,
                 on_session_end: Callable[[UDPSession], None] | None = None,
                 max_sessions: int = MAX_SESSIONS, rate: float = SESSION_RATE,
                 burst: float = SESSION_BURST,
                 account_sessions: dict[str, int] | None = None,
                 max_account_sessions: int = MAX_ACCOUNT_SESSIONS) -> None:
        self.target = target
        #: live sessions per account, shared by the account's services (None: alone)
        self.account_sessions = account_sessions
        self.max_account_sessions = max_account_sessions
        self.clock = clock
        self.stats = stats
        self.open_upstream = open_upstream
        self.gate = gate
        self.on_session_end = on_session_end
        self.max_sessions = max_sessions
        self.bucket = TokenBucket(rate, burst, clock.seconds())
        self.sessions: dict[tuple[str, int], UDPSession] = {}
        #: bytes queued by this service's sessions waiting for the private gate
        self.queued_bytes = 0
        self.listening: Any = None
        #: the tunnel a private service's socket is bound on (see L4Manager.tunnel_of)
        self.tunnel: Any = None
        self._sweep: Any = None
        self.limit_logged = False

    # -- sweep
    def start_sweeping(self) -> None:
        interval = max(1.0, min(SWEEP_MAX, self.target.idle_timeout / 2))
        self._sweep = self.clock.callLater(interval, self.sweep)

    def sweep(self) -> None:
        now = self.clock.seconds()
        for key, s in list(self.sessions.items()):
            if now - s.last >= self.target.idle_timeout:
                self._end(key, "idle_timeout")
        if self.listening is not None:
            self.start_sweeping()

    def _end(self, key: tuple[str, int], reason: str) -> None:
        s = self.sessions.pop(key, None)
        if s is None:
            return
        counts = self.account_sessions
        if counts is not None:
            account = self.target.account_id
            held = counts.get(account, 0) - 1
            if held > 0:
                counts[account] = held
            else:
                counts.pop(account, None)
        s.close(reason)
        if self.on_session_end is not None:
            try:
                self.on_session_end(s)
            except Exception:
                log.failure("UDP session end hook")

    def revalidate(self) -> None:
        """Ask the private gate again for each open session (see
        :meth:`~nbgateway.l4.manager.L4Manager.revalidate`); a session it no
        longer allows ends (``access_revoked``)."""
        if self.gate is None or not self.target.private:
            return
        for key, session in list(self.sessions.items()):
            if session.state != "open":
                continue
            d = maybeDeferred(self.gate, self.target, key[0])
            d.addCallbacks(lambda v, s=session: self._regated(s, v),
                           lambda f, s=session: self._regated(s, (False, "gate_error", "", ())))

    def _regated(self, session: UDPSession, verdict: Any) -> None:
        if verdict[0] or session.state == "closed" \
                or self.sessions.get(session.client) is not session:
            return
        self.stats.denied += 1
        self._end(session.client, "access_revoked")

    def close(self, reason: str) -> None:
        if self._sweep is not None and self._sweep.active():
            self._sweep.cancel()
        self._sweep = None
        for key in list(self.sessions):
            self._end(key, reason)

    # -- datagrams
    def reply(self, data: bytes, client: tuple[str, int]) -> None:
        if self.transport is None:
            return
        try:
            self.transport.write(data, client)
        except Exception as exc:
            log.debug("UDP reply to client failed: {err}", err=str(exc))

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        now = self.clock.seconds()
        self.stats.udp_datagrams_in += 1
        key = (str(addr[0]), int(addr[1]))
        session = self.sessions.get(key)
        if session is None:
            session = self._new_session(key, now)
            if session is None:
                return
        session.last = now
        if session.state == "closed":
            return
        session.to_upstream(data)

    def _new_session(self, key: tuple[str, int], now: float) -> UDPSession | None:
        if len(self.sessions) >= self.max_sessions:
            self.stats.udp_session_limit_hits += 1
            if not self.limit_logged:
                self.limit_logged = True
                log.warn("UDP session limit ({limit}) reached for service {service}",
                         limit=self.max_sessions, service=self.target.service_id)
            return None
        t = self.target
        counts = self.account_sessions
        if counts is not None and counts.get(t.account_id, 0) >= self.max_account_sessions:
            self.stats.udp_account_limit_hits += 1
            if not self.limit_logged:
                self.limit_logged = True
                log.warn("UDP session limit of account {account} ({limit} over its "
                         "services) reached at service {service}", account=t.account_id,
                         limit=self.max_account_sessions, service=t.service_id)
            return None
        if not self.bucket.take(now):
            self.stats.udp_rate_limit_hits += 1
            return None
        self.limit_logged = False
        if t.restrictions is not None:
            ip = parse_ip(key[0])
            if ip is None or t.restrictions.check(ip, overlay=t.private) is not None:
                self.stats.denied += 1
                return None
        session = UDPSession(self, key, now)
        self.sessions[key] = session
        if counts is not None:
            counts[t.account_id] = counts.get(t.account_id, 0) + 1
        if t.private:
            if self.gate is None:
                self._end(key, "not_overlay")
                return None
            d = maybeDeferred(self.gate, t, key[0])
            d.addCallbacks(lambda v: self._gated(session, v),
                           lambda f: self._gated(session, (False, "gate_error", "", ())))
            return session
        return session if self._dial(session) else None

    def _dial(self, session: UDPSession) -> bool:
        """Open ``session``'s upstream; on failure count and log it, end the
        session (``dial_failed``) and return False."""
        try:
            session.open()
        except Exception as exc:
            self.stats.dial_failures += 1
            log.info("UDP upstream for service {service} failed: {err}",
                     service=self.target.service_id, err=str(exc))
            self._end(session.client, "dial_failed")
            return False
        return True

    def _gated(self, session: UDPSession, verdict: Any) -> None:
        allowed, reason, user_id, groups = verdict
        session.user_id, session.groups = user_id, tuple(groups)
        if session.state != "gate":
            return
        if not allowed:
            self.stats.denied += 1
            self._end(session.client, reason or "denied")
            return
        self._dial(session)


class UDPRelays:
    """The UDP services of one gateway (see the module docstring)."""

    def __init__(self, manager: Any,
                 listen: Callable[[L4Target, Any], Any] | None = None,
                 open_upstream: Callable[[L4Target, Any], Any] | None = None) -> None:
        self.manager = manager
        self.listen = listen
        self.open_upstream = open_upstream
        self.services: dict[str, UDPService] = {}
        #: live sessions per account over its services (see MAX_ACCOUNT_SESSIONS)
        self.account_sessions: dict[str, int] = {}
        self.max_account_sessions = MAX_ACCOUNT_SESSIONS
        self.errors: dict[str, str] = {}
        self.pending: dict[str, L4Target] = {}  # private services waiting for the tunnel
        manager.stats.udp_sessions_fn = self.session_count

    def revalidate(self, account_id: str) -> None:
        """Re-ask the private gate for the account's open private sessions."""
        for service in list(self.services.values()):
            if service.target.private and service.target.account_id == account_id:
                service.revalidate()

    def session_count(self) -> int:
        return sum(len(s.sessions) for s in self.services.values())

    def status(self, mapping: Any) -> tuple[int, str | None]:
        if mapping.id in self.errors:
            return pb.PROXY_STATUS_ERROR, self.errors[mapping.id]
        svc = self.services.get(mapping.id)
        if svc is None or svc.listening is None:
            return pb.PROXY_STATUS_ERROR, f"UDP port {mapping.listen_port} is not bound yet"
        return pb.PROXY_STATUS_ACTIVE, None

    def _conflict(self, target: L4Target) -> str | None:
        port = target.listen_port
        m = self.manager
        if not target.private and port == m.wg_port:
            return f"UDP port {port} conflicts with tunnel port"
        if target.private and port == 53:
            return f"UDP port {port} conflicts with the tunnel DNS responder"
        for other in self.services.values():
            o = other.target
            if (o.listen_port == port and o.private == target.private
                    and (not target.private or o.account_id == target.account_id)
                    and o.service_id != target.service_id):
                return f"UDP port {port} is already used by service {o.service_id}"
        return None

    def add(self, mapping: Any) -> None:
        m = self.manager
        target = m.admit(mapping, self.errors, warn_invalid=False)
        if target is None:
            return
        conflict = self._conflict(target)
        if conflict is not None:
            self.errors[mapping.id] = conflict
            log.warn("UDP service {service}: {err}", service=mapping.id, err=conflict)
            m._report(mapping)
            return
        self.errors.pop(mapping.id, None)
        svc = UDPService(target, clock=m.reactor, stats=m.stats,
                         open_upstream=self._open, gate=m.gate,
                         on_session_end=self._session_ended,
                         account_sessions=self.account_sessions,
                         max_account_sessions=self.max_account_sessions)
        self.services[mapping.id] = svc
        self._bind(svc, mapping)

    def _open(self, target: L4Target, protocol: Any) -> Any:
        if self.open_upstream is None:
            raise RuntimeError("no UDP upstream opener")
        return self.open_upstream(target, protocol)

    def _bind(self, svc: UDPService, mapping: Any = None) -> None:
        if self.listen is None or svc.listening is not None:
            return
        try:
            port = self.listen(svc.target, svc)
        except Exception as exc:
            reason = getattr(exc, "socketError", None) or exc
            message = f"listen on UDP port {svc.target.listen_port}: {reason}"
            log.warn("UDP service {service}: {err}", service=svc.target.service_id,
                     err=message)
            self.errors[svc.target.service_id] = message
            self.services.pop(svc.target.service_id, None)
            if mapping is not None:
                self.manager._report(mapping)
            return
        if port is None:
            return  # private: no tunnel yet (account_ready binds it)
        svc.listening = port
        svc.tunnel = self.manager.current_tunnel(svc.target.account_id) \
            if svc.target.private else None
        svc.start_sweeping()
        log.info("UDP relay on {addr} for service {service}", addr=port.getHost(),
                 service=svc.target.service_id)

    def account_ready(self, account_id: str) -> None:
        """The account's tunnel is up: bind its private services, re-binding
        those whose socket belongs to a tunnel that was since re-created (its
        sessions went with the old tunnel)."""
        tunnel = self.manager.current_tunnel(account_id)
        for svc in list(self.services.values()):
            if not svc.target.private or svc.target.account_id != account_id:
                continue
            if svc.listening is not None and tunnel is not None and svc.tunnel is not tunnel:
                log.info("UDP service {service}: account {account}'s tunnel was re-created, "
                         "re-binding port {port}", service=svc.target.service_id,
                         account=account_id, port=svc.target.listen_port)
                svc.close("tunnel_recreated")
                port, svc.listening, svc.tunnel = svc.listening, None, None
                maybeDeferred(port.stopListening).addErrback(lambda f: None)
            self._bind(svc)

    def change(self, old: Any, new: Any) -> None:
        """A changed ``udp`` mapping: its sessions end; on the same port the
        socket is kept (a closed port cannot be bound again at once)."""
        svc = self.services.get(old.id)
        same_port = (svc is not None and svc.listening is not None
                     and int(new.listen_port) == svc.target.listen_port
                     and bool(new.private) == svc.target.private)
        if not same_port:
            self.remove(old)
            self.add(new)
            return
        assert svc is not None
        m = self.manager
        try:
            target = target_from_mapping(new, max_dial_timeout=m.max_dial_timeout,
                                         max_idle_timeout=m.max_idle_timeout)
        except L4ConfigError as exc:
            self.remove(old)
            self.errors[new.id] = str(exc)
            m._report(new)
            return
        svc.close("route_removed")
        svc.target = target
        svc.start_sweeping()

    def remove(self, mapping: Any) -> None:
        self.errors.pop(mapping.id, None)
        svc = self.services.pop(mapping.id, None)
        if svc is None:
            return
        svc.close("route_removed")
        if svc.listening is not None:
            port, svc.listening = svc.listening, None
            maybeDeferred(port.stopListening)

    def close_all(self) -> None:
        for sid in list(self.services):
            svc = self.services.pop(sid)
            svc.close("shutdown")
            if svc.listening is not None:
                port, svc.listening = svc.listening, None
                maybeDeferred(port.stopListening)

    def _session_ended(self, s: UDPSession) -> None:
        sink = self.manager.access_log
        if sink is None:
            return
        t = s.service.target
        now = self.manager.reactor.seconds()
        meta = {"close_reason": s.close_reason, "listen_port": str(t.listen_port)}
        if s.groups:
            meta["groups"] = ",".join(s.groups)
        code = 200 if s.upstream is not None or s.close_reason in ("idle_timeout",
                                                                   "route_removed",
                                                                   "shutdown") else 403
        try:
            sink.log(build_entry(
                now=now, log_id=new_log_id(now), account_id=t.account_id,
                service_id=t.service_id, host=t.domain, path="", method="",
                response_code=code, duration_ms=int((now - s.started) * 1000),
                source_ip=s.client[0], auth_mechanism="oidc" if s.user_id else "",
                user_id=s.user_id, bytes_upload=s.bytes_up, bytes_download=s.bytes_down,
                protocol="udp", metadata=meta))
        except Exception:
            log.failure("UDP access log entry")
