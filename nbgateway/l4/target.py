"""One L4 mapping as the relays need it, and the dial/idle timeout rules.

:func:`target_from_mapping` turns a ``pb.ProxyMapping`` with mode
``tcp``/``tls``/``udp`` into an :class:`L4Target` or raises
:class:`L4ConfigError` with upstream's message.  Timeouts (upstream's
``clamp*``): dial = the target's ``request_timeout`` capped by
``--max-dial-timeout`` (the cap when unset; 30 s when neither); idle =
``session_idle_timeout`` capped by ``--max-session-idle-timeout`` when
larger (0 is not replaced by the cap), else TCP 5 min / UDP 30 s.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

from nbgateway.routes.hosts import domain_key
from nbgateway.routes.restrictions import Restrictions

DEFAULT_DIAL_TIMEOUT = 30.0
DEFAULT_IDLE = {"tcp": 300.0, "tls": 300.0, "udp": 30.0}


class L4ConfigError(ValueError):
    """A mapping this gateway cannot serve (the message goes to management)."""


def dial_timeout(request_timeout: float, cap: float) -> float:
    t = request_timeout if request_timeout > 0 else cap
    if cap > 0 and t > cap:
        t = cap
    return t if t > 0 else DEFAULT_DIAL_TIMEOUT


def idle_timeout(session_idle: float, cap: float, mode: str) -> float:
    t = session_idle
    if t > 0 and cap > 0 and t > cap:
        t = cap
    return t if t > 0 else DEFAULT_IDLE.get(mode, 300.0)


def _seconds(duration: Any) -> float:
    if duration is None:
        return 0.0
    return float(getattr(duration, "seconds", 0)) + getattr(duration, "nanos", 0) / 1e9


def split_host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(text)
    value = int(port)
    if not 0 < value <= 65535:
        raise ValueError(text)
    return host.strip("[]"), value


@dataclass(frozen=True, slots=True)
class L4Target:
    service_id: str
    account_id: str
    mode: str  # tcp | tls | udp
    domain: str  # SNI key (lower-cased, no trailing dot)
    listen_port: int
    host: str
    port: int
    private: bool = False
    direct: bool = False
    proxy_protocol: bool = False
    dial_timeout: float = DEFAULT_DIAL_TIMEOUT
    idle_timeout: float = 300.0
    restrictions: Restrictions | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def target_from_mapping(mapping: Any, *, max_dial_timeout: float = 0.0,
                        max_idle_timeout: float = 0.0) -> L4Target:
    mode = mapping.mode
    port = int(mapping.listen_port)
    if not 1 <= port <= 65535:
        raise L4ConfigError(f"invalid port {port}: must be 1–65535")  # noqa: RUF001 (upstream's text)
    if not mapping.path or not mapping.path[0].target:
        raise L4ConfigError(f"empty target address for {mode.upper()} service {mapping.id}")
    first = mapping.path[0]
    try:
        host, tport = split_host_port(first.target)
    except ValueError:
        raise L4ConfigError(
            f"invalid target address {first.target!r} for {mode.upper()} service "
            f"{mapping.id}") from None
    opts = first.options if first.HasField("options") else None
    restrictions = Restrictions.from_proto(mapping.access_restrictions) \
        if mapping.HasField("access_restrictions") else None
    return L4Target(
        # interned: shared with the store, the service table and the runtime
        service_id=sys.intern(mapping.id),
        account_id=sys.intern(mapping.account_id),
        mode=mode,
        domain=domain_key(sys.intern(mapping.domain)) if mapping.domain else "",
        listen_port=port,
        host=host,
        port=tport,
        private=bool(mapping.private),
        direct=bool(opts is not None and opts.direct_upstream),
        proxy_protocol=bool(opts is not None and opts.proxy_protocol) and mode != "udp",
        dial_timeout=dial_timeout(_seconds(opts.request_timeout) if opts else 0.0,
                                  max_dial_timeout),
        idle_timeout=idle_timeout(_seconds(opts.session_idle_timeout) if opts else 0.0,
                                  max_idle_timeout, mode),
        restrictions=restrictions,
    )
