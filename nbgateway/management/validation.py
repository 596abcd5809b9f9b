"""Service validation, pure and DB-free.

:func:`validate_service` runs the upstream ``Service.Validate()`` checks in the
upstream order (first failure wins) and returns a *normalised copy* instead of
mutating its input: the mode is defaulted to ``http``, country codes are
upper-cased and L4 targets are forced enabled. Failures raise
:class:`~nbgateway.management.errors.ValidationError` with the upstream text
(upstream casing; the REST layer lower-cases it).

Documented deviations from upstream:

* S7: a private service may not enable password, PIN or header auth either
  (upstream only rejects bearer auth), so a private mapping never carries a
  non-tunnel way in.
* Target ``protocol`` and ``port`` ranges are checked (upstream relies on the
  OpenAPI schema, which its server never enforces).
* No field may contain a NUL character (PostgreSQL text cannot hold it).
* The service domain must be a DNS hostname; it is lower-cased and a trailing
  dot is dropped, so uniqueness cannot be dodged by case.
* A direct-upstream host must be an IP literal or a DNS hostname and never an
  unspecified, multicast or broadcast address in any spelling (``0``,
  ``0x0``, ``[::]``, ``::ffff:0.0.0.0``, ``224.1``...). Which addresses a
  gateway may dial (loopback, private ranges) is the gateway's allow-list
  decision, not management's.
* The host of a host/domain/subnet target reached through the tunnel is held
  to the same syntax (the mapping's target URL carries it as given, so
  ``a@127.0.0.1`` or ``h:22`` would rewrite its authority).

:func:`peer_endpoint_problem`: a stock peer's endpoint (``/api/peers``) is
never a loopback, link-local, unspecified, multicast or reserved address, nor
``localhost`` (the gateways would send their handshakes to themselves).

Account-dependent checks (group ids exist, peer targets exist, cluster
derivation, domain uniqueness) are done by the store in the same transaction.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import re
import socket

from nbgateway.management.errors import ValidationError
from nbgateway.management.model import (
    LB_POLICIES,
    MODES,
    TARGET_PROTOCOLS,
    UPSTREAM_PROTOCOLS,
    AccessRestrictions,
    Service,
    Target,
    format_go_duration,
)
from nbgateway.netaddr import special_reason

__all__ = [
    "MAX_HEADER_VALUE_LEN",
    "canonical_header_key",
    "direct_host_problem",
    "go_quote",
    "is_valid_header_name",
    "normalise_domain",
    "peer_endpoint_problem",
    "split_host_port_ok",
    "validate_service",
]

MAX_NAME_LEN = 255
MAX_REQUEST_TIMEOUT = 5 * 60 * 10**9
MAX_SESSION_IDLE_TIMEOUT = 10 * 60 * 10**9
MAX_CUSTOM_HEADERS = 16
MAX_HEADER_KEY_LEN = 128
MAX_HEADER_VALUE_LEN = 4096
MAX_CIDRS = 200
MAX_COUNTRIES = 50
CROWDSEC_MODES = ("", "off", "enforce", "observe")

_TOKEN_RE = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")

HOP_BY_HOP_HEADERS = frozenset(
    {
        "Connection",
        "Keep-Alive",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "Proxy-Connection",
        "Te",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
    }
)
PROXY_MANAGED_HEADERS = frozenset(
    {
        "Content-Length",
        "Content-Type",
        "Cookie",
        "Forwarded",
        "X-Forwarded-For",
        "X-Forwarded-Host",
        "X-Forwarded-Port",
        "X-Forwarded-Proto",
        "X-Real-Ip",
    }
)


def go_quote(value: str) -> str:
    """Approximate Go's ``%q``: a double-quoted string with escapes."""
    return json.dumps(value, ensure_ascii=False)


def is_valid_header_name(name: str) -> bool:
    """RFC 7230 ``token``."""
    return bool(_TOKEN_RE.fullmatch(name))


def canonical_header_key(name: str) -> str:
    """Go's ``http.CanonicalHeaderKey`` for valid tokens (``x-real-ip`` -> ``X-Real-Ip``)."""
    if not is_valid_header_name(name):
        return name
    return "-".join(part[:1].upper() + part[1:].lower() for part in name.split("-"))


def split_host_port_ok(host: str) -> bool:
    """True when Go's ``net.SplitHostPort`` would accept ``host`` (it carries a port)."""
    if host.startswith("["):
        end = host.find("]")
        if end < 0:
            return False
        rest = host[end + 1 :]
        return rest.startswith(":") and ":" not in rest[1:] and "[" not in host[1:end]
    return host.count(":") == 1 and "[" not in host and "]" not in host


def _fail(message: str) -> None:
    raise ValidationError(message)


def _validate_header_auths(service: Service) -> None:
    for i, ha in enumerate(service.auth.header_auths):
        if not ha.enabled:
            continue
        if not ha.header:
            _fail(f"header_auths[{i}]: header name is required")
        if not is_valid_header_name(ha.header):
            _fail(f"header_auths[{i}]: {go_quote(ha.header)} is not a valid HTTP header name")
        canonical = canonical_header_key(ha.header)
        if canonical in HOP_BY_HOP_HEADERS:
            _fail(
                f"header_auths[{i}]: {go_quote(ha.header)} is a hop-by-hop header "
                "and cannot be used for auth"
            )
        if canonical in PROXY_MANAGED_HEADERS:
            _fail(
                f"header_auths[{i}]: {go_quote(ha.header)} is managed by the proxy "
                "and cannot be used for auth"
            )
        if canonical == "Host":
            _fail(f"header_auths[{i}]: Host header cannot be used for auth")
        if len(ha.value.encode()) > MAX_HEADER_VALUE_LEN:
            _fail(f"header_auths[{i}]: value exceeds maximum length of {MAX_HEADER_VALUE_LEN}")


def _validate_cidrs(field: str, values: tuple[str, ...]) -> None:
    if len(values) > MAX_CIDRS:
        _fail(f"{field}: exceeds maximum of {MAX_CIDRS} entries")
    for i, raw in enumerate(values):
        if "/" not in raw:
            _fail(f"{field}[{i}]: invalid CIDR {go_quote(raw)}")
        try:
            loose = ipaddress.ip_network(raw, strict=False)
        except ValueError:
            _fail(f"{field}[{i}]: invalid CIDR {go_quote(raw)}")
        if ipaddress.ip_interface(raw).ip != loose.network_address:
            _fail(f"{field}[{i}]: {go_quote(raw)} has host bits set, use {loose} instead")


def _normalise_countries(field: str, values: tuple[str, ...]) -> tuple[str, ...]:
    if len(values) > MAX_COUNTRIES:
        _fail(f"{field}: exceeds maximum of {MAX_COUNTRIES} entries")
    out = []
    for i, raw in enumerate(values):
        if len(raw) != 2 or not raw.isascii() or not raw.isalpha():
            _fail(f"{field}[{i}]: {go_quote(raw)} must be a 2-letter ISO 3166-1 alpha-2 code")
        out.append(raw.upper())
    return tuple(out)


def _validate_restrictions(r: AccessRestrictions) -> AccessRestrictions:
    if r.crowdsec_mode not in CROWDSEC_MODES:
        _fail(f"crowdsec_mode {go_quote(r.crowdsec_mode)} is invalid")
    _validate_cidrs("allowed_cidrs", r.allowed_cidrs)
    _validate_cidrs("blocked_cidrs", r.blocked_cidrs)
    return dataclasses.replace(
        r,
        allowed_countries=_normalise_countries("allowed_countries", r.allowed_countries),
        blocked_countries=_normalise_countries("blocked_countries", r.blocked_countries),
    )


def _validate_private(service: Service) -> None:
    if not service.private:
        return
    if service.mode not in ("http", "tcp", "udp", "tls"):
        _fail(f"private services only support HTTP, TCP, UDP and TLS modes, "
              f"got {go_quote(service.mode)}")
    if service.mode != "http" and service.listen_port == 0:
        # private L4 is served on the gateway's tunnel address at this port
        _fail("listen_port is required for private TCP/UDP/TLS services")
    if not service.access_groups:
        _fail("private services require at least one access group")
    if service.auth.bearer_enabled:
        _fail(
            "private services cannot enable bearer auth (SSO): "
            "NetBird-only access and SSO are mutually exclusive"
        )
    # Deviation S7: no password/PIN/header way into a NetBird-only service.
    a = service.auth
    if (
        (a.password_auth and a.password_auth.enabled)
        or (a.pin_auth and a.pin_auth.enabled)
        or any(h.enabled for h in a.header_auths)
    ):
        _fail(
            "private services cannot enable password, pin or header auth: "
            "NetBird-only access is granted by tunnel identity"
        )
    for i, gid in enumerate(service.access_groups):
        if not gid:
            _fail(f"access_groups[{i}]: group id is required")


_HOST_LABEL_RE = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$")
_NUMERIC_LABEL_RE = re.compile(r"^(?:0[xX][0-9A-Fa-f]*|[0-9]+)$")


def _ip_literal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address ``host`` spells, in any spelling a resolver accepts
    (``127.1``, ``0x7f000001``, ``017700000001``, ``[::1]``), or None for a name."""
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        if ":" in host or not all(_NUMERIC_LABEL_RE.fullmatch(p) for p in host.split(".")):
            return None
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def direct_host_problem(host: str) -> str | None:
    """Why ``host`` can never be a direct upstream, or None when it may be one.

    What management can know without the gateway's network: the host must be an
    IP literal or a DNS hostname, and never an unspecified, multicast or
    broadcast address in any spelling. Whether a (loopback, private...) address
    may be dialed is the gateway's decision (its operator allow-list)."""
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not bare:
        return "is empty"
    addr = _ip_literal(host)
    if addr is None:
        if ":" in bare or "[" in host or "]" in host:
            return "is not a valid IP address"
        name = bare[:-1] if bare.endswith(".") else bare
        labels = name.split(".")
        if len(name) > 253 or not all(_HOST_LABEL_RE.fullmatch(label) for label in labels):
            return "is not a valid hostname or IP address"
        if all(_NUMERIC_LABEL_RE.fullmatch(label) for label in labels):
            return "is not a valid IP address"
        return None
    if addr.is_unspecified:
        return "is an unspecified address"
    if addr.is_multicast:
        return "is a multicast address"
    if addr == ipaddress.IPv4Address("255.255.255.255"):
        return "is the broadcast address"
    return None


#: the message of each special block's reason (nbgateway.netaddr)
_ENDPOINT_PROBLEMS = {
    "loopback": "is a loopback address",
    "link_local": "is a link-local address",
    "unspecified": "is an unspecified address",
    "multicast": "is a multicast address",
    "reserved": "is a reserved or broadcast address",
    "ipv4_compatible": "is an IPv4-compatible IPv6 address",
}


def peer_endpoint_problem(host: str) -> str | None:
    """Why a stock peer's endpoint host may not be set, or None.

    Gateways send handshakes to a peer's endpoint, and a tenant sets it: a
    loopback, link-local, unspecified, multicast or reserved address (in any
    spelling, IPv4-mapped or behind NAT64) or ``localhost`` would point them
    at the gateway host itself.  The gateway refuses those too, and also its
    own addresses, which management cannot know (nbgateway.dial.guard's
    ``endpoint_refusal``; both judge by :mod:`nbgateway.netaddr`);
    other names are left to the gateway, which applies no unresolved name."""
    addr = _ip_literal(host)
    if addr is None:
        name = host.lower().rstrip(".")
        if name == "localhost" or name.endswith(".localhost"):
            return "is a loopback name"
        return None
    reason = special_reason(addr)
    return None if reason is None else _ENDPOINT_PROBLEMS[reason]


def _validate_direct_host(i: int, host: str, what: str = "direct upstream host") -> None:
    if any(c in host for c in " \t/"):
        _fail(f"target {i}: host {go_quote(host)} contains invalid characters")
    if split_host_port_ok(host):
        _fail(
            f"target {i}: host {go_quote(host)} must not include a port (set target.port instead)"
        )
    problem = direct_host_problem(host.strip())
    if problem is not None:
        _fail(f"target {i}: {what} {go_quote(host)} {problem}")


def _validate_target_host(i: int, t: Target) -> None:
    """The host of a target whose host the mapping carries as given (a direct
    upstream, or a host/domain/subnet target reached through the tunnel): an IP
    literal or a hostname, so that ``a@127.0.0.1`` or ``h:22`` cannot rewrite
    the target URL's authority. A tunnel peer target's host is the peer's
    address, filled in by the store, and is not checked."""
    if not t.host or (t.target_type == "peer" and not t.options.direct_upstream):
        return
    _validate_direct_host(i, t.host, "direct upstream host" if t.options.direct_upstream
                          else "host")


def _validate_common_target(i: int, t: Target) -> None:
    if t.protocol not in TARGET_PROTOCOLS:
        _fail(f"target {i} has invalid protocol {go_quote(t.protocol)}")
    if not 0 <= t.port <= 65535:
        _fail(f"target {i}: port {t.port} is out of range")


def _validate_target_options(i: int, t: Target) -> None:
    o = t.options
    if o.path_rewrite not in ("", "preserve"):
        _fail(f"target {i}: unknown path_rewrite mode {go_quote(o.path_rewrite)}")
    for name, value, most in (("request_timeout", o.request_timeout, MAX_REQUEST_TIMEOUT),
                              ("session_idle_timeout", o.session_idle_timeout,
                               MAX_SESSION_IDLE_TIMEOUT)):
        if value < 0:
            _fail(f"target {i}: {name} must be positive")
        if value > most:
            _fail(f"target {i}: {name} exceeds maximum of {format_go_duration(most)}")
    headers = o.custom_headers
    if len(headers) > MAX_CUSTOM_HEADERS:
        _fail(
            f"target {i}: custom_headers count {len(headers)} exceeds maximum of "
            f"{MAX_CUSTOM_HEADERS}"
        )
    seen: dict[str, str] = {}
    for key in sorted(headers):
        value = headers[key]
        if not is_valid_header_name(key):
            _fail(f"target {i}: custom header key {go_quote(key)} is not a valid HTTP header name")
        if len(key) > MAX_HEADER_KEY_LEN:
            _fail(
                f"target {i}: custom header key {go_quote(key)} exceeds maximum length of "
                f"{MAX_HEADER_KEY_LEN}"
            )
        if len(value.encode()) > MAX_HEADER_VALUE_LEN:
            _fail(
                f"target {i}: custom header {go_quote(key)} value exceeds maximum length of "
                f"{MAX_HEADER_VALUE_LEN}"
            )
        if "\r" in value or "\n" in value:
            _fail(f"target {i}: custom header {go_quote(key)} contains invalid characters")
        canonical = canonical_header_key(key)
        if canonical in seen:
            _fail(
                f"target {i}: custom header keys {go_quote(seen[canonical])} and {go_quote(key)} "
                f"collide (both canonicalize to {go_quote(canonical)})"
            )
        seen[canonical] = key
        if canonical in HOP_BY_HOP_HEADERS:
            _fail(
                f"target {i}: custom header {go_quote(key)} is a hop-by-hop header "
                "and cannot be set"
            )
        if canonical in PROXY_MANAGED_HEADERS:
            _fail(
                f"target {i}: custom header {go_quote(key)} is managed by the proxy and cannot be "
                "overridden"
            )
        if canonical == "Host":
            _fail(f"target {i}: use pass_host_header instead of setting Host as a custom header")


def _validate_http_targets(service: Service) -> None:
    for i, t in enumerate(service.targets):
        tt = t.target_type
        if tt in ("peer", "host", "domain"):
            _validate_target_host(i, t)
        elif tt == "subnet":
            if not t.host:
                _fail(f"target {i} has empty host but target_type is {go_quote(tt)}")
            _validate_target_host(i, t)
        elif tt == "cluster":
            host = t.host.strip()
            if not host:
                _fail(f"target {i}: has empty host")
            if not t.options.direct_upstream:
                _fail(f"target {i}: {host} has direct upstream disabled")
            _validate_direct_host(i, t.host)
        else:
            _fail(f"target {i} has invalid target_type {go_quote(tt)}")
        if not t.target_id:
            _fail(f"target {i} has empty target_id")
        if t.proxy_protocol:
            _fail(f"target {i}: proxy_protocol is not supported for HTTP services")
        _validate_common_target(i, t)
        _validate_target_options(i, t)
        if t.options.upstream_protocol not in UPSTREAM_PROTOCOLS:
            _fail(f"target {i}: invalid upstream_protocol "
                  f"{go_quote(t.options.upstream_protocol)}: want http1 or h2")


def _validate_l4_target(t: Target) -> None:
    if t.port == 0:
        _fail("target port is required for L4 services")
    if not t.target_id:
        _fail("target_id is required for L4 services")
    if t.target_type in ("peer", "host"):
        _validate_target_host(0, t)
    elif t.target_type == "subnet":
        if not t.host:
            _fail("target host is required for subnet targets")
        _validate_target_host(0, t)
    elif t.target_type == "cluster":
        if not t.host.strip():
            _fail("target host is required for cluster targets")
        if not t.options.direct_upstream:
            _fail(f"cluster target {t.host} has direct upstream disabled")
        _validate_direct_host(0, t.host)
    else:
        _fail(f"invalid target_type {go_quote(t.target_type)} for L4 service")
    if t.path not in (None, "", "/"):
        _fail("path is not supported for L4 services")
    if t.options.upstream_protocol:
        _fail("upstream_protocol is not supported for L4 services")
    _validate_common_target(0, t)
    if t.options.request_timeout < 0:
        _fail("target 0: request_timeout must be positive")
    if t.options.session_idle_timeout < 0:
        _fail("target 0: session_idle_timeout must be positive")


def _contains_nul(value: object) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return any(_contains_nul(getattr(value, f.name)) for f in dataclasses.fields(value))
    if isinstance(value, (tuple, list)):
        return any(_contains_nul(v) for v in value)
    if isinstance(value, dict):
        return any(_contains_nul(k) or _contains_nul(v) for k, v in value.items())
    return False


_LABEL_RE = re.compile(r"^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$")


def normalise_domain(domain: str) -> str:
    """Lower-case, drop one trailing dot, and require DNS hostname syntax (hardening):
    what a service domain and a custom domain must be. ValidationError
    ``invalid domain "<d>"``."""
    name = domain.lower()
    if name.endswith("."):
        name = name[:-1]
    # fullmatch: "$" alone also matches before a final newline, and a name
    # with one is another name here but the same on every gateway (domain_key)
    if not name or len(name) > 253 or not all(_LABEL_RE.fullmatch(lb)
                                              for lb in name.split(".")):
        _fail(f"invalid domain {go_quote(domain)}")
    return name


def _validate_load_balancing(service: Service) -> None:
    """The ``load_balancing`` settings (nbgateway extension)."""
    lb = service.load_balancing
    if lb.is_default():
        return
    if (service.mode or "http") != "http":
        _fail("load_balancing is only supported for HTTP services")
    if lb.policy not in LB_POLICIES:
        _fail(f"invalid load_balancing policy {go_quote(lb.policy)}: "
              "want round_robin or least_conn")
    if not 0 <= lb.max_failures <= 100:
        _fail("load_balancing max_failures must be between 0 and 100")
    for name in ("backoff_seconds", "max_backoff_seconds", "health_interval_seconds",
                 "health_timeout_seconds"):
        if not 0 <= getattr(lb, name) <= 3600:
            _fail(f"load_balancing {name} must be between 0 and 3600")
    if lb.max_backoff_seconds and lb.max_backoff_seconds < lb.backoff_seconds:
        _fail("load_balancing max_backoff_seconds must not be below backoff_seconds")
    if lb.health_status and not 100 <= lb.health_status <= 599:
        _fail("load_balancing health_check expected_status must be 0 or from 100 to 599")
    path = lb.health_path
    if path:
        if (not path.startswith("/") or len(path) > 1024
                or any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7f for c in path)):
            _fail(f"invalid load_balancing health_check path {go_quote(path)}: "
                  "want an absolute path without spaces")
        if lb.health_timeout_seconds and lb.health_interval_seconds and (
                lb.health_timeout_seconds > lb.health_interval_seconds):
            _fail("load_balancing health_check timeout_seconds must not exceed interval_seconds")
    elif lb.health_interval_seconds or lb.health_timeout_seconds or lb.health_status:
        _fail("load_balancing health_check needs a path")


def validate_service(service: Service) -> Service:
    """Validate ``service`` and return its normalised copy (upstream's check order)."""
    if not service.name:
        _fail("service name is required")
    if len(service.name.encode()) > MAX_NAME_LEN:
        _fail(f"service name exceeds maximum length of {MAX_NAME_LEN} characters")
    if not service.targets:
        _fail("at least one target is required")
    mode = service.mode or "http"
    service = dataclasses.replace(service, mode=mode)
    _validate_header_auths(service)
    restrictions = _validate_restrictions(service.restrictions)
    service = dataclasses.replace(service, restrictions=restrictions)
    _validate_private(service)
    _validate_load_balancing(service)
    if mode == "http":
        if not service.domain:
            _fail("service domain is required")
        if service.listen_port != 0:
            _fail("listen_port is not supported for HTTP services")
        _validate_http_targets(service)
    elif mode in ("tcp", "udp"):
        if not service.domain:
            _fail("domain is required for TCP/UDP services (used for cluster derivation)")
        if len(service.targets) != 1:
            _fail("TCP/UDP services must have exactly one target")
        if mode == "udp" and service.targets[0].proxy_protocol:
            _fail("proxy_protocol is not supported for UDP services")
        _validate_l4_target(service.targets[0])
    elif mode == "tls":
        if not service.domain:
            _fail("domain is required for TLS services (used for SNI matching)")
        if service.listen_port == 0:
            _fail("listen_port is required for TLS services")
        if len(service.targets) != 1:
            _fail("TLS services must have exactly one target")
        _validate_l4_target(service.targets[0])
    else:
        assert mode not in MODES
        _fail(f"unsupported mode {go_quote(mode)}")
    service = dataclasses.replace(service, domain=normalise_domain(service.domain))
    if _contains_nul(service):
        _fail("service fields must not contain NUL characters")
    if not 0 <= service.listen_port <= 65535:
        _fail(f"listen_port {service.listen_port} is out of range")
    if mode != "http":
        service = dataclasses.replace(
            service,
            targets=tuple(dataclasses.replace(t, enabled=True) for t in service.targets),
        )
    return service
