"""Service -> ``ProxyMapping`` conversion, capability filtering, one-time tokens.

Pure helpers of the ProxyService server:

* :func:`to_proto_mapping` is upstream ``ToProtoMapping(op)``;
* :func:`proxy_accepts_mapping` / :func:`filter_mappings_for_proxy` are
  ``proxyAcceptsMapping`` / ``filterMappingsForProxy``: private mappings only
  reach proxies that declared ``supports_private_service=true``; custom-port
  L4 mappings only proxies that reported ``supports_custom_ports``; REMOVED
  always passes;
* :func:`per_proxy_mapping` is ``perProxyMessage`` with the upstream
  security fix (#6347): the clone copies **every** field (``private``
  included) and only replaces ``auth_token``;
* :class:`OneTimeTokenStore` holds the per-mapping tokens that authorise
  ``CreateProxyPeer`` (32 random bytes, base64url, keyed by the hex SHA-256,
  5 minute TTL, bounded; when full, the account holding the most tokens loses
  its oldest, so one account's streams never evict another account's tokens).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from google.protobuf import duration_pb2

from nbgateway._proto import proxy_service_pb2 as pb
from nbgateway.management import assertionkeys, clientcerts, servicetokens
from nbgateway.management.model import (
    DEFAULT_SESSION_MAX_AGE_SECONDS,
    LoadBalancing,
    Service,
    Target,
    TargetOptions,
)

CREATED = pb.UPDATE_TYPE_CREATED
MODIFIED = pb.UPDATE_TYPE_MODIFIED
REMOVED = pb.UPDATE_TYPE_REMOVED

ONE_TIME_TOKEN_TTL = 300.0
ONE_TIME_TOKEN_MAX = 200_000

_DEFAULT_PORTS = {"http": 80, "https": 443}


# --- Service -> ProxyMapping ----------------------------------------------------------


def _host_for_url(host: str) -> str:
    try:
        if ipaddress.ip_address(host).version == 6:
            return f"[{host}]"
    except ValueError:
        pass
    return host


def target_url(t: Target) -> str:
    """``<protocol>://<host>[:<port>]/``; the port is left out when 0 or the scheme default."""
    host = _host_for_url(t.host)
    if t.port and t.port != _DEFAULT_PORTS.get(t.protocol):
        return f"{t.protocol}://{host}:{t.port}/"
    return f"{t.protocol}://{host}/"


def _duration(ns: int) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(ns)
    return d


def _http_options(o: TargetOptions) -> pb.PathTargetOptions | None:
    if o.is_default():
        return None
    out = pb.PathTargetOptions(
        skip_tls_verify=o.skip_tls_verify,
        direct_upstream=o.direct_upstream,
        custom_headers=dict(o.custom_headers),
        nbgw_upstream_protocol=o.upstream_protocol,
    )
    if o.path_rewrite == "preserve":
        out.path_rewrite = pb.PATH_REWRITE_PRESERVE
    if o.request_timeout:
        out.request_timeout.CopyFrom(_duration(o.request_timeout))
    return out


def _l4_options(t: Target) -> pb.PathTargetOptions | None:
    o = t.options
    if o.is_default() and not t.proxy_protocol:
        return None
    out = pb.PathTargetOptions(
        skip_tls_verify=o.skip_tls_verify,
        proxy_protocol=t.proxy_protocol,
        direct_upstream=o.direct_upstream,
    )
    if o.request_timeout:
        out.request_timeout.CopyFrom(_duration(o.request_timeout))
    if o.session_idle_timeout:
        out.session_idle_timeout.CopyFrom(_duration(o.session_idle_timeout))
    return out


def _balancing(lb: LoadBalancing) -> pb.NbgwBalancing | None:
    """The ``nbgw_balancing`` extension every target of an HTTP service
    carries (None: defaults, nothing sent)."""
    if lb.is_default():
        return None
    out = pb.NbgwBalancing(policy=lb.policy, max_failures=lb.max_failures,
                           health_path=lb.health_path, health_status=lb.health_status)
    for name, seconds in (("backoff", lb.backoff_seconds),
                          ("max_backoff", lb.max_backoff_seconds),
                          ("health_interval", lb.health_interval_seconds),
                          ("health_timeout", lb.health_timeout_seconds)):
        if seconds:
            getattr(out, name).CopyFrom(duration_pb2.Duration(seconds=seconds))
    return out


def to_proto_mapping(s: Service, op: int) -> pb.ProxyMapping:
    """Upstream ``ToProtoMapping``; ``auth_token`` is left empty (filled per proxy).

    Target hosts must already be resolved (peer targets -> peer IP).
    """
    mode = s.mode or "http"
    m = pb.ProxyMapping(
        type=op,
        id=s.id,
        account_id=s.account_id,
        domain=s.domain,
        pass_host_header=s.pass_host_header,
        rewrite_redirects=s.rewrite_redirects,
        mode=mode,
        listen_port=s.listen_port,
        private=s.private,
    )
    a = s.auth
    m.auth.session_key = s.session_public_key
    m.auth.max_session_age_seconds = s.max_session_age_seconds or DEFAULT_SESSION_MAX_AGE_SECONDS
    if s.assertion_mode != "off" and mode == "http":
        # the signing seed travels only to this service's gateways (redacted in logs)
        assertionkeys.fill_mapping(m.nbgw_assertion, s.assertion_mode, s.assertion_keys,
                                   time.time())
    m.nbgw_sessions_not_before = s.sessions_not_before
    if mode == "http" and s.service_tokens:
        servicetokens.fill_mapping(m, s.service_tokens, time.time())
    if mode == "http" and s.client_cert_auth is not None and not s.private:
        clientcerts.fill_mapping(m, s.client_cert_auth, s.client_cert_rows)
    m.auth.password = bool(a.password_auth and a.password_auth.enabled)
    m.auth.pin = bool(a.pin_auth and a.pin_auth.enabled)
    m.auth.oidc = a.bearer_enabled
    for h in a.header_auths:
        if h.enabled:
            m.auth.header_auths.add(header=h.header, hashed_value=h.value)
    balancing = _balancing(s.load_balancing) if mode == "http" else None
    for t in s.targets:
        if not t.enabled:
            continue
        if mode == "http":
            pm = m.path.add(path=t.path or "/", target=target_url(t))
            opts = _http_options(t.options)
            if balancing is not None:
                # one PathMapping per target (as upstream); same settings on each
                opts = opts if opts is not None else pb.PathTargetOptions()
                opts.nbgw_balancing.CopyFrom(balancing)
        else:
            pm = m.path.add(target=f"{_host_for_url(t.host)}:{t.port}")
            opts = _l4_options(t)
        if opts is not None:
            pm.options.CopyFrom(opts)
    r = s.restrictions
    if not r.is_empty():
        m.access_restrictions.CopyFrom(
            pb.AccessRestrictions(
                allowed_cidrs=r.allowed_cidrs,
                blocked_cidrs=r.blocked_cidrs,
                allowed_countries=r.allowed_countries,
                blocked_countries=r.blocked_countries,
                crowdsec_mode=r.crowdsec_mode,
            )
        )
    return m


def removed_mapping(m: pb.ProxyMapping) -> pb.ProxyMapping:
    """The full mapping as REMOVED, without a one-time token (as upstream sends deletes)."""
    out = pb.ProxyMapping()
    out.CopyFrom(m)
    out.type = REMOVED
    out.auth_token = ""
    return out


# --- capability filtering ------------------------------------------------------------------


def proxy_accepts_mapping(caps: pb.ProxyCapabilities | None, m: pb.ProxyMapping) -> bool:
    """Upstream ``proxyAcceptsMapping``."""
    if m.type == REMOVED:
        return True
    if m.private:
        return (
            caps is not None
            and caps.HasField("supports_private_service")
            and caps.supports_private_service
        )
    if m.listen_port == 0 or m.mode == "tls":
        return True
    return caps is not None and caps.HasField("supports_custom_ports")


def filter_mappings_for_proxy(
    caps: pb.ProxyCapabilities | None, mappings: Sequence[pb.ProxyMapping]
) -> list[pb.ProxyMapping]:
    """Upstream ``filterMappingsForProxy`` over a multi-mapping update."""
    return [m for m in mappings if proxy_accepts_mapping(caps, m)]


def per_proxy_mapping(
    m: pb.ProxyMapping, issue_token: Callable[[str, str], str]
) -> pb.ProxyMapping:
    """Upstream ``perProxyMessage`` for one mapping, with the #6347 fix.

    REMOVED passes unchanged; every other mapping is copied **whole** (so
    ``private`` and every future field survive) and gets a fresh one-time
    ``auth_token``.
    """
    if m.type == REMOVED:
        return m
    out = pb.ProxyMapping()
    out.CopyFrom(m)
    out.auth_token = issue_token(m.account_id, m.id)
    return out


# --- one-time tokens ---------------------------------------------------------------------


class TokenError(Exception):
    """``ValidateAndConsume`` failure; the message is the upstream text."""


@dataclass(frozen=True)
class _TokenMeta:
    service_id: str
    account_id: str
    expires_at: float


class OneTimeTokenStore:
    """Thread-safe, bounded, expiring one-time tokens for CreateProxyPeer."""

    def __init__(
        self,
        ttl: float = ONE_TIME_TOKEN_TTL,
        max_tokens: int = ONE_TIME_TOKEN_MAX,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = ttl
        self.max_tokens = max_tokens
        self._clock = clock
        self._lock = threading.Lock()
        self._tokens: OrderedDict[str, _TokenMeta] = OrderedDict()
        #: each account's token keys, oldest first (who gives one up when full)
        self._by_account: dict[str, OrderedDict[str, None]] = {}

    @staticmethod
    def _key(token: str) -> str:
        return hashlib.sha256(token.encode()).hexdigest()

    def _forget(self, key: str) -> None:
        meta = self._tokens.pop(key, None)
        if meta is None:
            return
        mine = self._by_account.get(meta.account_id)
        if mine is not None:
            mine.pop(key, None)
            if not mine:
                del self._by_account[meta.account_id]

    def issue(self, account_id: str, service_id: str) -> str:
        token = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
        now = self._clock()
        with self._lock:
            while self._tokens:  # expired tokens go first
                key, first = next(iter(self._tokens.items()))
                if first.expires_at > now:
                    break
                self._forget(key)
            while len(self._tokens) >= self.max_tokens:
                # full: the biggest holder (often the caller) gives up its oldest
                biggest = max(self._by_account.values(), key=len)
                self._forget(next(iter(biggest)))
            key = self._key(token)
            self._tokens[key] = _TokenMeta(service_id, account_id, now + self.ttl)
            self._by_account.setdefault(account_id, OrderedDict())[key] = None
        return token

    def validate_and_consume(self, token: str, account_id: str, service_id: str) -> None:
        key = self._key(token)
        with self._lock:
            meta = self._tokens.get(key)
            if meta is None:
                raise TokenError("invalid token")
            if self._clock() >= meta.expires_at:
                self._forget(key)
                raise TokenError("token expired")
            if not hmac.compare_digest(meta.account_id.encode(), account_id.encode()):
                raise TokenError("account ID mismatch")
            if not hmac.compare_digest(meta.service_id.encode(), service_id.encode()):
                raise TokenError("service ID mismatch")
            self._forget(key)

    def __len__(self) -> int:
        with self._lock:
            return len(self._tokens)
