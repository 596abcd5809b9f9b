"""The service entry: one ``ProxyMapping`` as the gateway serves it.

:func:`entry_from_mapping` is the one place a management mapping becomes the
gateway's model of a service, HTTP and L4 alike: :class:`ServiceEntry`
(mode, listen port, private, access restrictions, operator schemes, session
lifetime, mTLS client CA and certificate users, unusable targets)
around a :class:`ProxyService` (what the reverse
proxy needs: account, domain, path router, Host/redirect options, identity
assertion settings :class:`AssertionSettings`), whose
routes carry :class:`TargetOptions`.  Pure data and functions.
"""

from __future__ import annotations

import base64
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from nbgateway._proto import proxy_service_pb2 as pb
from nbgateway.routes.balancing import balancing_of
from nbgateway.routes.paths import PATH_REWRITE_DEFAULT, PathRouter, RouteError, parse_target
from nbgateway.routes.restrictions import Restrictions

#: mapping modes that are L4 relays (any other mode, or none, is HTTP)
L4_MODES = ("tcp", "udp", "tls")


def is_l4(mode: str) -> bool:
    """Is a mapping's ``mode`` an L4 relay (``tcp``/``udp``/``tls``)?"""
    return mode in L4_MODES


def session_key_error(mapping: pb.ProxyMapping) -> str | None:
    """Why a mapping with operator schemes (password, PIN, OIDC, header auth)
    cannot be installed: its ``auth.session_key`` must be standard padded
    base64 of exactly 32 bytes (an Ed25519 public key), else no cookie could
    ever be verified.  None when it is usable or no scheme needs it."""
    auth = mapping.auth
    if not (auth.password or auth.pin or auth.oidc or len(auth.header_auths)):
        return None
    try:
        raw = base64.b64decode(auth.session_key.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError) as exc:
        return f"decode session public key for domain {mapping.domain}: {exc}"
    if len(raw) != 32:
        return (f"invalid session public key size for domain {mapping.domain}: "
                f"got {len(raw)}, want 32")
    return None


@dataclass(frozen=True, slots=True)
class TargetOptions:
    """The per-path ``PathTargetOptions`` the proxy uses."""

    skip_tls_verify: bool = False
    request_timeout: float = 0.0  # seconds; 0 = default
    path_rewrite: int = PATH_REWRITE_DEFAULT
    custom_headers: Mapping[str, str] = field(default_factory=dict)
    direct_upstream: bool = False
    #: "" (HTTP/1.1) or "h2" (HTTP/2: h2c or ALPN h2; gRPC), see UPSTREAM_PROTOCOLS
    upstream_protocol: str = ""

    @classmethod
    def of(cls, options: Any) -> TargetOptions:
        """From a ``TargetOptions``, a protobuf ``PathTargetOptions`` or None."""
        if isinstance(options, cls):
            return options
        if options is None:
            return _DEFAULT_OPTIONS
        timeout = 0.0
        rt = getattr(options, "request_timeout", None)
        if rt is not None and (getattr(rt, "seconds", 0) or getattr(rt, "nanos", 0)):
            timeout = rt.seconds + rt.nanos / 1e9
        made = cls(
            skip_tls_verify=bool(getattr(options, "skip_tls_verify", False)),
            request_timeout=timeout,
            path_rewrite=int(getattr(options, "path_rewrite", PATH_REWRITE_DEFAULT)),
            custom_headers=dict(getattr(options, "custom_headers", {}) or {}) or _NO_HEADERS,
            direct_upstream=bool(getattr(options, "direct_upstream", False)),
            upstream_protocol=upstream_protocol(options),
        )
        # the common all-default options are one shared (immutable) object,
        # not a copy (with its own empty headers dict) per path
        return _DEFAULT_OPTIONS if made == _DEFAULT_OPTIONS else made


#: empty custom headers, shared read-only (the proxy only reads them)
_NO_HEADERS: Mapping[str, str] = MappingProxyType({})
_DEFAULT_OPTIONS = TargetOptions(custom_headers=_NO_HEADERS)


#: ``nbgw_upstream_protocol`` values: "" and "http1" are HTTP/1.1, "h2" HTTP/2
UPSTREAM_PROTOCOLS = ("", "http1", "h2")


def upstream_protocol(options: Any) -> str:
    """The normalised upstream protocol of a ``PathTargetOptions``: "" or
    "h2" (``http1`` is ""); an unknown value is returned as is, so
    :func:`entry_from_mapping` can refuse the path."""
    value = str(getattr(options, "nbgw_upstream_protocol", "") or "")
    return "" if value == "http1" else value


#: where a service's public assertion keys are served (management and gateway)
JWKS_PATH = "/.well-known/nbgateway/jwks.json"
#: assertion modes: off (none stamped), on (stamped when a key is available),
#: required (never forwarded unsigned: no key -> 503)
ASSERTION_MODES = ("off", "on", "required")
MAX_ASSERTION_LIFETIME = 300


@dataclass(frozen=True, slots=True)
class AssertionSettings:
    """A mapping's ``nbgw_assertion``: how ``X-NetBird-Jwt-Assertion`` is
    signed for the service.  ``private_key`` (base64 Ed25519 seed) is secret
    and never in the repr; ``keys`` are the published ``(kid, x)`` pairs."""

    mode: str = "off"
    kid: str = ""
    private_key: str = field(default="", repr=False)
    keys: tuple[tuple[str, str], ...] = ()
    issuer: str = ""
    lifetime: int = MAX_ASSERTION_LIFETIME
    #: after a rotation: the next key (published already), signing from ``next_from``
    next_kid: str = ""
    next_private_key: str = field(default="", repr=False)
    next_from: int = 0

    @property
    def required(self) -> bool:
        return self.mode == "required"

    def signing_key(self, now: float) -> tuple[str, str]:
        """``(kid, private_key)`` to sign with at ``now``: the next key once
        its time has come, else the current one."""
        if self.next_kid and self.next_private_key and now >= self.next_from:
            return self.next_kid, self.next_private_key
        return self.kid, self.private_key

    def jwks(self) -> dict[str, Any]:
        """The public keys as a JWKS document (RFC 7517, OKP/Ed25519)."""
        return {"keys": [{"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig",
                          "kid": kid, "x": x} for kid, x in self.keys]}

    @classmethod
    def from_proto(cls, msg: Any) -> AssertionSettings | None:
        """From a ``pb.NbgwIdentityAssertion`` (None when off/unknown mode:
        an unknown mode is read as ``required``, failing closed)."""
        mode = msg.mode or "off"
        if mode == "off":
            return None
        if mode not in ASSERTION_MODES:
            mode = "required"
        lifetime = int(msg.lifetime_seconds)
        if lifetime <= 0 or lifetime > MAX_ASSERTION_LIFETIME:
            lifetime = MAX_ASSERTION_LIFETIME
        return cls(mode=mode, kid=msg.kid, private_key=msg.private_key,
                   keys=tuple((k.kid, k.x) for k in msg.keys if k.kid and k.x),
                   issuer=msg.issuer, lifetime=lifetime, next_kid=msg.next_kid,
                   next_private_key=msg.next_private_key, next_from=int(msg.next_from))


@dataclass(frozen=True, slots=True)
class ProxyService:
    """What the reverse proxy needs to know about one HTTP mapping."""

    account_id: str
    domain: str
    router: PathRouter
    pass_host_header: bool = False
    rewrite_redirects: bool = False
    header_auth_names: tuple[str, ...] = ()
    service_id: str = ""
    #: signed identity assertion settings (None: off)
    assertion: AssertionSettings | None = None


@dataclass(frozen=True, slots=True)
class ServiceEntry:
    """A mapping as the request path needs it (HTTP; L4 entries carry the
    same record with ``mode`` and ``listen_port`` set)."""

    service: ProxyService
    private: bool
    restrictions: Restrictions | None
    has_schemes: bool
    session_max_age: int
    route_errors: tuple[str, ...] = ()
    mode: str = ""
    listen_port: int = 0
    #: interactive operator schemes in their fixed order (password, pin, oidc)
    schemes: tuple[str, ...] = ()
    #: base64 Ed25519 public key that verifies this service's session JWTs
    session_key: str = ""
    #: machine-client service tokens: (id, name, secret SHA-256 hex, expires_at)
    tokens: tuple[tuple[str, str, str, int], ...] = ()
    #: token-protected (stays closed when no token is live)
    token_auth: bool = False
    #: session revocation: nb_session cookies issued before (unix s) are refused
    sessions_not_before: int = 0
    #: mTLS: the service's client CA bundle (PEM; "" = no mTLS), verified by
    #: nbgateway.auth.mtls, and the certificate-name -> user table:
    #: (match, user_id, email, group_ids, group_names)
    client_ca_pem: str = field(default="", repr=False)
    client_cert_users: tuple[tuple[str, str, str, tuple[str, ...], tuple[str, ...]], ...] = \
        field(default=(), repr=False)

    @property
    def account_id(self) -> str:
        return self.service.account_id

    @property
    def l4(self) -> bool:
        return is_l4(self.mode)


def entry_from_mapping(mapping: pb.ProxyMapping) -> ServiceEntry:
    """Build a :class:`ServiceEntry` from a ``pb.ProxyMapping``.
    Unusable target URLs are skipped and reported in ``route_errors``."""
    routes, errors = [], []
    for pm in mapping.path:
        try:
            if upstream_protocol(pm.options) not in UPSTREAM_PROTOCOLS:
                raise RouteError(f'unknown upstream protocol '
                                 f'"{pm.options.nbgw_upstream_protocol}" for path "{pm.path}"')
            # the route keeps plain values, never a protobuf sub-message: one
            # would keep the whole mapping's upb arena (~1.4 KiB) alive
            route = parse_target(pm.path, pm.target, TargetOptions.of(pm.options))
            balancing = balancing_of(pm.options)
            routes.append(route if balancing is None else replace(route, balancing=balancing))
        except RouteError as exc:
            errors.append(str(exc))
    auth = mapping.auth
    header_names = tuple(h.header for h in auth.header_auths if h.header)
    tokens = tuple((t.id, t.name, t.secret_sha256.lower(), int(t.expires_at))
                   for t in mapping.nbgw_tokens if t.id and t.secret_sha256)
    http = not is_l4(mapping.mode)
    client_ca = mapping.nbgw_client_ca_pem if http else ""
    cert_users = tuple((u.match, u.user_id, u.email, tuple(u.group_ids), tuple(u.group_names))
                       for u in mapping.nbgw_client_cert_users) if client_ca else ()
    service = ProxyService(
        # one string per account, not a copy per service (bounded: the
        # accounts and services this gateway serves; interned strings are
        # freed with their last reference)
        # ids and names interned: one string shared with the mapping store,
        # the account runtime, L4 and the CA instead of a copy in each
        account_id=sys.intern(mapping.account_id),
        domain=sys.intern(mapping.domain),
        router=PathRouter(routes),
        pass_host_header=mapping.pass_host_header,
        rewrite_redirects=mapping.rewrite_redirects,
        header_auth_names=header_names,
        service_id=sys.intern(mapping.id),
        assertion=AssertionSettings.from_proto(mapping.nbgw_assertion)
        if mapping.HasField("nbgw_assertion") else None,
    )
    return ServiceEntry(
        service=service,
        private=mapping.private,
        restrictions=Restrictions.from_proto(mapping.access_restrictions)
        if mapping.HasField("access_restrictions") else None,
        has_schemes=bool(auth.password or auth.pin or auth.oidc or header_names or tokens
                         or mapping.nbgw_token_auth or client_ca),
        session_max_age=int(auth.max_session_age_seconds) or 86400,
        route_errors=tuple(errors),
        mode=mapping.mode,
        listen_port=int(mapping.listen_port),
        schemes=tuple(name for name, on in (("password", auth.password), ("pin", auth.pin),
                                            ("oidc", auth.oidc)) if on),
        session_key=auth.session_key,
        tokens=tokens,
        token_auth=bool(mapping.nbgw_token_auth or tokens),
        sessions_not_before=int(mapping.nbgw_sessions_not_before),
        client_ca_pem=client_ca,
        client_cert_users=cert_users,
    )
