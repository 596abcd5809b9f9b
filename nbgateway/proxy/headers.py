"""Outgoing request header processing for the reverse proxy (pure), exactly in
this order, with these forwarding rules and this identity encoding:

0. hop-by-hop headers (and those named by ``Connection``) removed, inbound
   identity and forwarding headers (``X-NetBird-*``, ``Forwarded``,
   ``X-Forwarded-*``, ``X-Real-IP``) removed in ANY spelling: names are
   compared by :func:`header_key` (case-folded, ``_`` = ``-``), as a CGI/WSGI
   upstream compares them (issue 11.3);
1. header-auth credential headers removed (same comparison);
2. custom headers set (overriding client values);
3. ``X-NetBird-User`` / ``X-NetBird-Groups`` / ``X-NetBird-Jwt-Assertion``
   deleted, then stamped from the validated identity and the signed assertion
   the caller minted for it (anti-spoof: always deleted, even without identity);
4. forwarding headers set (trusted-proxy aware);
5. ``Cookie`` rebuilt from the inbound cookies minus ``nb_session``.

Hardening: tunnel identity always comes from the socket peer,
never from ``X-Forwarded-For``; that is the caller's ``client_ip``.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable
from typing import Protocol

from twisted.web.http_headers import Headers

from nbgateway.routes.hosts import host_port
from nbgateway.routes.identity import Identity
from nbgateway.routes.paths import Route, rewrite_location

USER_HEADER = "X-NetBird-User"
GROUPS_HEADER = "X-NetBird-Groups"
ASSERTION_HEADER = "X-NetBird-Jwt-Assertion"
SESSION_COOKIE = "nb_session"

HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
        "Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade",
    )
)
_INBOUND_FORWARDING = ("forwarded", "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto")
#: Header keys (see :func:`header_key`) the gateway owns towards upstreams: an
#: inbound header with one of these keys, in any spelling, never passes.
PROTECTED_KEYS = frozenset((
    *_INBOUND_FORWARDING, "x-forwarded-port", "x-forwarded-server", "x-real-ip",
))
PROTECTED_PREFIX = "x-netbird-"


def header_key(name: str | bytes) -> str:
    """A header name as CGI/WSGI (``HTTP_X_NETBIRD_USER``), PHP and many
    frameworks see it: case-folded, ``_`` and ``-`` equal.  Two names with one
    key are one header to such an upstream, so identity checks compare keys."""
    if isinstance(name, bytes):
        name = name.decode("latin-1")
    return name.lower().replace("_", "-")


def is_protected(name: str | bytes) -> bool:
    """True for identity and forwarding headers in any spelling."""
    key = header_key(name)
    return key in PROTECTED_KEYS or key.startswith(PROTECTED_PREFIX)


def drop_underscore_headers(headers: Headers, *, allow: bool = False) -> int:
    """Remove inbound header names containing ``_`` (as nginx does by default,
    ``underscores_in_headers off``): a CGI-style upstream would merge
    ``X_NetBird_User`` with the stamped ``X-NetBird-User``.  With ``allow``
    only underscore spellings of protected headers are removed.  Returns how
    many names were removed."""
    doomed = [name for name, _values in headers.getAllRawHeaders()
              if b"_" in name and (not allow or is_protected(name))]
    for name in doomed:
        headers.removeHeader(name)
    return len(doomed)


class TrustedProxies:
    """The ``--trusted-proxies`` CIDR list."""

    def __init__(self, cidrs: Iterable[str] = ()) -> None:
        self.networks = [ipaddress.ip_network(c.strip(), strict=False) for c in cidrs if c.strip()]

    def __bool__(self) -> bool:
        return bool(self.networks)

    def contains(self, ip: str) -> bool:
        try:
            addr = ipaddress.ip_address(ip.strip())
        except ValueError:
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
            addr = addr.ipv4_mapped
        return any(addr in n for n in self.networks)


_NO_TRUSTED_PROXIES = TrustedProxies()


def _printable(value: str) -> bool:
    return all(c == "\t" or " " <= c <= "~" for c in value)


def identity_headers(identity: Identity | None) -> dict[str, str]:
    """The identity headers to stamp (possibly none).  The result is shared:
    callers must not modify it."""
    if identity is None:
        return {}
    try:
        return _cached_identity_headers(identity)
    except TypeError:  # an Identity built with lists is not hashable
        return _identity_headers(identity)


def _identity_headers(identity: Identity) -> dict[str, str]:
    out: dict[str, str] = {}
    if identity.email and _printable(identity.email):
        out[USER_HEADER] = identity.email
    labels = []
    for i, gid in enumerate(identity.group_ids):
        name = identity.group_names[i] if i < len(identity.group_names) else ""
        label = name or gid
        if label and "," not in label and _printable(label):
            labels.append(label)
    if labels:
        out[GROUPS_HEADER] = ",".join(labels)
    return out


#: Identity is a frozen value and the same few callers repeat: the labels are
#: validated and joined once per identity, not once per request
_cached_identity_headers = functools.lru_cache(maxsize=1024)(_identity_headers)


def canonical_name(name: str) -> bytes:
    """``name`` as twisted's ``Headers`` stores it (found through its public API)."""
    h = Headers()
    h.setRawHeaders(name, [b""])
    return next(iter(h.getAllRawHeaders()))[0]


def headers_from_raw(raw: dict[bytes, list[bytes]]) -> Headers:
    """A ``Headers`` holding ``raw`` as is: names already canonical (taken
    from another ``Headers`` or from :func:`canonical_name`), values already
    sanitised (taken from another ``Headers``, or made of clean parts).
    Building one through ``setRawHeaders`` re-encodes and re-sanitises every
    name and value, the largest header cost per proxied request; the
    equivalence with the public API is a test (tests/proxy/test_headers.py)."""
    out = _new_headers(Headers)  # no Headers.__init__ call: the dict is set right after
    out._rawHeaders = raw
    return out


_new_headers = Headers.__new__


_HOST, _COOKIE, _TE, _UPGRADE, _CONNECTION = map(
    canonical_name, ("Host", "Cookie", "TE", "Upgrade", "Connection"))
_XFF, _XRI, _XFH, _XFP, _XFPORT = map(canonical_name, (
    "X-Forwarded-For", "X-Real-IP", "X-Forwarded-Host", "X-Forwarded-Proto", "X-Forwarded-Port"))
_IDENTITY_NAMES = tuple(map(canonical_name, (USER_HEADER, GROUPS_HEADER, ASSERTION_HEADER)))
_HOP_BY_HOP_B = frozenset(h.encode("latin-1") for h in HOP_BY_HOP)
_PROTECTED_B = frozenset(k.encode("latin-1") for k in PROTECTED_KEYS)
_PROTECTED_PREFIX_B = PROTECTED_PREFIX.encode("latin-1")
_SESSION_COOKIE_B = SESSION_COOKIE.encode("latin-1")
#: inbound names (canonical bytes) -> never forwarded as they are; bounded
_DROPPED: dict[bytes, bool] = {}
_DROPPED_MAX = 4096


def _always_dropped(name: bytes) -> bool:
    """Hop-by-hop, identity/forwarding in any spelling, Host and Cookie."""
    verdict = _DROPPED.get(name)
    if verdict is None:
        lname = name.lower()
        key = lname.replace(b"_", b"-")
        verdict = (lname in _HOP_BY_HOP_B or key in _PROTECTED_B
                   or key.startswith(_PROTECTED_PREFIX_B) or lname in (b"host", b"cookie"))
        if len(_DROPPED) < _DROPPED_MAX and len(name) <= 64:  # names are client-chosen
            _DROPPED[name] = verdict
    return verdict


def _tokens(values: list[bytes] | None) -> set[bytes]:
    out: set[bytes] = set()
    for value in values or ():
        out.update(t.strip().lower() for t in value.split(b",") if t.strip())
    return out


def connection_close(values: Iterable[bytes]) -> bool:
    """Whether ``Connection`` field values hold the ``close`` token: each a
    comma-separated list (RFC 9110 7.6.1, as :func:`_tokens` reads it),
    compared caselessly; a ``close`` separated by whitespace alone still
    counts (twisted.web's rule, which split on spaces only: closing is the
    safe reading).  Both HTTP/1.1 paths decide persistence with it."""
    return any(b"close" in value.lower().replace(b",", b" ").split() for value in values)


_EXPECT_B, _CONTENT_LENGTH_B = map(canonical_name, ("Expect", "Content-Length"))
#: lower-case names the upstream client drops from a request head (its own framing)
FRAMING_LOWER = (b"content-length", b"transfer-encoding", b"connection")
#: inbound header name (as ``Headers`` keeps it) -> never copied into a route
#: plan's upstream head (hop-by-hop, identity/forwarding in any spelling,
#: Host, Cookie, Expect, framing); bounded
PLAN_SKIPS: dict[bytes, bool] = {}
_PLAN_SKIPS_MAX = 4096


def plan_skips(name: bytes) -> bool:
    """Is the inbound header ``name`` (canonical) one a route plan's head
    (:meth:`~nbgateway.proxy.plan.RoutePlan.head`) never copies as it is?
    Whatever the request: the general path drops or replaces those."""
    verdict = (_always_dropped(name) or name in (_EXPECT_B, _CONTENT_LENGTH_B)
               or name.lower() in FRAMING_LOWER)
    if len(PLAN_SKIPS) < _PLAN_SKIPS_MAX and len(name) <= 64:
        PLAN_SKIPS[name] = verdict
    return verdict


#: a Connection header's value -> the names it makes hop-by-hop besides the
#: standard set (lower-case; empty for the common "keep-alive", a name every
#: relay drops anyway); bounded, short values only
_CONNECTION_NAMED: dict[bytes, frozenset[bytes]] = {}
_CONNECTION_NAMED_MAX = 256
#: ``_CONNECTION_NAMED.get``, bound once (see tests/proxy/test_imported_method_calls.py)
connection_named_of = _CONNECTION_NAMED.get


def connection_named(values: list[bytes]) -> frozenset[bytes]:
    """The header names (lower-case) a message's ``Connection`` values name,
    less the standard hop-by-hop ones (a relay drops those whatever
    ``Connection`` says): dropping a header whose lower-case name is in the
    answer, or in the standard set, is dropping the names :func:`_tokens`
    gives.  Empty (falsy) for ``keep-alive`` (browsers, nginx), so the relays
    make no lower-case copy of every other name to look for it.  One value
    (the usual case) is memoised."""
    if len(values) == 1:
        value = values[0]
        hit = _CONNECTION_NAMED.get(value)
        if hit is not None:
            return hit
        named = frozenset(_tokens(values) - _HOP_BY_HOP_B)
        if len(value) <= 64 and len(_CONNECTION_NAMED) < _CONNECTION_NAMED_MAX:
            _CONNECTION_NAMED[value] = named
        return named
    return frozenset(_tokens(values) - _HOP_BY_HOP_B)


def _without_session_cookie(values: list[bytes]) -> bytes | None:
    kept = []
    for value in values:
        for part in value.split(b";"):
            part = part.strip()
            if not part:
                continue
            if part.split(b"=", 1)[0].strip() == _SESSION_COOKIE_B:
                continue
            kept.append(part)
    return b"; ".join(kept) if kept else None


def _real_client(xff: str | None, peer_ip: str, trusted: TrustedProxies) -> str:
    if not xff:
        return peer_ip
    hops = [h.strip() for h in xff.split(",") if h.strip()]
    for hop in reversed(hops):
        if not trusted.contains(hop):
            return hop
    return hops[0] if hops else peer_ip


def _joined(raw: dict[bytes, list[bytes]], name: bytes) -> str | None:
    values = raw.get(name)
    return b",".join(values).decode("utf-8") if values else None


def _clean(value: str) -> bytes:
    # what Headers.setRawHeaders does to a str value
    return b" ".join(value.encode("utf-8").splitlines())


def prepare_upstream_headers(
    inbound: Headers,
    *,
    host_header: str,
    target_netloc: str,
    pass_host_header: bool,
    custom_headers: dict[str, str] | None = None,
    header_auth_names: Iterable[str] = (),
    identity: Identity | None = None,
    client_ip: str,
    over_tls: bool,
    forwarded_proto: str = "auto",
    trusted_proxies: TrustedProxies | None = None,
    keep_upgrade: bool = False,
    assertion: str | None = None,
) -> Headers:
    """A NEW Headers for the upstream request (including ``Host``);
    ``assertion`` is the signed identity assertion JWT to stamp, if any.

    One pass over the inbound headers in bytes (names as ``Headers`` keeps
    them); the result is the same as building it header by header through
    ``Headers.setRawHeaders`` in the order of the module docstring."""
    trusted = trusted_proxies if trusted_proxies is not None else _NO_TRUSTED_PROXIES
    peer_trusted = bool(trusted.networks) and trusted.contains(client_ip)
    # the inbound Headers' own dict, read only (names canonical already)
    inbound_raw: dict[bytes, list[bytes]] = inbound._rawHeaders

    # 0. hop-by-hop and inbound forwarding headers
    connection = inbound_raw.get(_CONNECTION)
    named = connection_named(connection) if connection else None
    raw: dict[bytes, list[bytes]] = {}
    dropped = _DROPPED  # _always_dropped's memo, read here first (no call per name)
    for name, values in inbound_raw.items():
        verdict = dropped.get(name)
        if verdict is None:
            verdict = _always_dropped(name)
        if verdict or (named and name.lower() in named):
            continue
        raw[name] = list(values)
    te = inbound_raw.get(_TE)
    if te and b"trailers" in _tokens([b",".join(te)]):
        raw[_TE] = [b"trailers"]
    if keep_upgrade and inbound_raw.get(_UPGRADE):
        raw[_UPGRADE] = [b",".join(inbound_raw[_UPGRADE])]
        raw[_CONNECTION] = [b"Upgrade"]

    # 1. header-auth credentials never reach the backend (in any spelling)
    if header_auth_names:
        credential_keys = {header_key(name) for name in header_auth_names}
        if credential_keys:
            for name in [n for n in raw if header_key(n) in credential_keys]:
                del raw[name]
    out = headers_from_raw(raw)
    # 2. custom headers (operator input: through the public API)
    if custom_headers:
        for name, value in custom_headers.items():
            out.setRawHeaders(name, [value])
    # 3. identity: strip then stamp
    for name in _IDENTITY_NAMES:
        raw.pop(name, None)
    if identity is not None:
        hit = _IDENTITY_RAW.get(id(identity))
        for name, value in (hit[1] if hit is not None and hit[0] is identity
                            else _identity_raw(identity)):
            raw[name] = [value]
    if assertion:
        out.setRawHeaders(ASSERTION_HEADER, [assertion])
    # 4. forwarding headers
    if forwarded_proto in ("http", "https"):
        proto = forwarded_proto
    else:
        proto = "https" if over_tls else "http"
    if not peer_trusted:
        # assignments: a custom header of the same name is replaced in its place
        xff_b, real_b, host_b, proto_b, port_b = (
            _forwarding(client_ip, host_header, proto) if len(host_header) <= _CACHED_MAX_LEN
            else _forwarding.__wrapped__(client_ip, host_header, proto))
        raw[_XFF] = [xff_b]
        raw[_XRI] = [real_b]
        raw[_XFH] = [host_b]
        raw[_XFP] = [proto_b]
        raw[_XFPORT] = [port_b]
    else:
        _trusted_forwarding(raw, inbound_raw, client_ip, host_header, proto, trusted)
    # 5. cookies minus the session cookie (a custom Cookie header is discarded)
    raw.pop(_COOKIE, None)
    cookie_in = inbound_raw.get(_COOKIE)
    if cookie_in:
        cookie = _without_session_cookie(cookie_in)
        if cookie:
            raw[_COOKIE] = [cookie]
    host_value = host_header if pass_host_header else target_netloc
    raw[_HOST] = [_clean_cached(host_value) if len(host_value) <= _CACHED_MAX_LEN
                  else _clean(host_value)]
    return out


#: longer values (client-chosen Host headers) are never cached: the caches
#: stay small whatever the clients send
_CACHED_MAX_LEN = 255


def _port_of(host_header: str, proto: str) -> str:
    return host_port(host_header) or ("443" if proto == "https" else "80")


@functools.lru_cache(maxsize=4096)
def _forwarding(client_ip: str, host_header: str, proto: str) -> tuple[bytes, ...]:
    """The forwarding header values for a peer that is no trusted proxy
    (X-Forwarded-For, X-Real-IP, X-Forwarded-Host, -Proto, -Port): a pure
    function of its arguments, asked per request (cached, bounded)."""
    return (_clean(client_ip), _clean(client_ip), _clean(host_header), _clean(proto),
            _clean(_port_of(host_header, proto)))


@functools.lru_cache(maxsize=4096)
def _clean_cached(value: str) -> bytes:
    return _clean(value)


#: id(identity) -> (identity, its header names and values as Headers keeps
#: them); the identity is held, so its id is not reused while cached
_IDENTITY_RAW: dict[int, tuple[Identity, tuple[tuple[bytes, bytes], ...]]] = {}
_IDENTITY_RAW_MAX = 1024


def _identity_raw(identity: Identity) -> tuple[tuple[bytes, bytes], ...]:
    """:func:`identity_headers` as canonical names and the values
    ``setRawHeaders`` would store, once per identity object (the gate hands
    out one Identity per cached validation)."""
    hit = _IDENTITY_RAW.get(id(identity))
    if hit is not None and hit[0] is identity:
        return hit[1]
    pairs = tuple((canonical_name(name), _clean(value))
                  for name, value in identity_headers(identity).items())
    if type(identity.group_ids) is not tuple or type(identity.group_names) is not tuple:
        return pairs  # built with lists (mutable): never cached
    if len(_IDENTITY_RAW) >= _IDENTITY_RAW_MAX:
        _IDENTITY_RAW.clear()
    _IDENTITY_RAW[id(identity)] = (identity, pairs)
    return pairs


def _trusted_forwarding(raw: dict[bytes, list[bytes]], inbound_raw: dict[bytes, list[bytes]],
                        client_ip: str, host_header: str, proto: str,
                        trusted: TrustedProxies) -> None:
    """The forwarding headers for a peer that is a trusted proxy: its own
    X-Forwarded-* values are kept (and the client address appended)."""
    port = _port_of(host_header, proto)
    inbound_xff = _joined(inbound_raw, _XFF)
    xff = f"{inbound_xff}, {client_ip}" if inbound_xff else client_ip
    real = _joined(inbound_raw, _XRI) or _real_client(inbound_xff, client_ip, trusted)
    fwd_host = _joined(inbound_raw, _XFH) or host_header
    fwd_proto = _joined(inbound_raw, _XFP) or proto
    fwd_port = _joined(inbound_raw, _XFPORT) or port
    raw[_XFF] = [_clean(xff)]
    raw[_XRI] = [_clean(real)]
    raw[_XFH] = [_clean(fwd_host)]
    raw[_XFP] = [_clean(fwd_proto)]
    raw[_XFPORT] = [_clean(fwd_port)]


def filter_response_headers(headers: Headers) -> Headers:
    """Response headers minus hop-by-hop ones (and those named by Connection)."""
    named = _tokens(headers.getRawHeaders(b"connection"))
    raw: dict[bytes, list[bytes]] = {}
    for name, values in headers.getAllRawHeaders():
        lname = name.lower()
        if lname in _HOP_BY_HOP_B or lname in named:
            continue
        raw[name] = list(values)
    return headers_from_raw(raw)


_SERVER_B, _SET_COOKIE, _CONTENT_LENGTH = map(canonical_name,
                                               ("Server", "Set-Cookie", "Content-Length"))


#: the hop-by-hop names as ``Headers`` keeps them (a name's every spelling)
_HOP_BY_HOP_KEYS = tuple(canonical_name(h) for h in sorted(HOP_BY_HOP))

_RELAY_COPY, _RELAY_DROP, _RELAY_APPEND = range(3)
#: response header name (as Headers keeps it) -> what the relay does with it
#: (hop-by-hop: dropped; Set-Cookie: appended; else copied); bounded
_RELAY_KINDS: dict[bytes, int] = {}
_RELAY_KINDS_MAX = 4096


def _relay_kind(name: bytes) -> int:
    kind = (_RELAY_DROP if name.lower() in _HOP_BY_HOP_B
            else _RELAY_APPEND if name == _SET_COOKIE else _RELAY_COPY)
    if len(_RELAY_KINDS) < _RELAY_KINDS_MAX and len(name) <= 64:  # names are upstream-chosen
        _RELAY_KINDS[name] = kind
    return kind


class RawHeaders(Protocol):
    """What :func:`relay_response_headers` reads of the upstream's headers:
    their dict as ``Headers`` keeps it (a ``Headers``, or the lean client's
    response, which holds its head's dict itself)."""

    _rawHeaders: dict[bytes, list[bytes]]


def relay_response_headers(target: Headers, upstream: RawHeaders,
                           content_length: int | None = None, owned: bool = False) -> None:
    """Put the upstream response's headers into the client response's
    ``target`` in one pass: the same result as :func:`filter_response_headers`
    followed by ``target.removeHeader("Server")``, ``setRawHeaders`` per name
    (``addRawHeader`` per ``Set-Cookie`` value) and, with ``content_length``,
    ``setRawHeaders("Content-Length", ...)``; both sides are ``Headers``, so
    names are canonical and values sanitised already and are copied as they
    are (the equivalence is a test, tests/proxy/test_headers.py).  ``owned``:
    ``upstream`` is made for this response and read by nothing after (the
    lean client's, whose names are as ``Headers`` keeps them): its value
    lists are moved into ``target``, not copied, and its hop-by-hop names
    dropped from it."""
    raw = target._rawHeaders
    raw.pop(_SERVER_B, None)
    source = upstream._rawHeaders
    connection = source.get(_CONNECTION)
    named = None
    if connection:  # connection_named(connection), its memo read inline
        named = connection_named_of(connection[0]) if len(connection) == 1 else None
        if named is None:
            named = connection_named(connection)
    if owned and not named:
        # the loop below in C: the hop-by-hop names (as Headers keeps them:
        # every spelling of a name is one key) dropped from the owned dict,
        # Set-Cookie added to the client's own, and every other name copied
        # in order by one update (assigned, or replaced in its place)
        for hop in _HOP_BY_HOP_KEYS:
            if hop in source:
                del source[hop]
        if _SET_COOKIE in source and _SET_COOKIE in raw:
            raw[_SET_COOKIE].extend(source.pop(_SET_COOKIE))
        raw.update(source)
        if content_length is not None:
            raw[_CONTENT_LENGTH] = [b"%d" % content_length]
        return
    kinds = _RELAY_KINDS
    for name, values in source.items():
        kind = kinds.get(name)
        if kind is None:
            kind = _relay_kind(name)
        if kind == _RELAY_DROP or (named and name.lower() in named):
            continue
        if kind == _RELAY_APPEND:
            raw.setdefault(name, []).extend(values)
        else:
            raw[name] = values if owned else list(values)
    if content_length is not None:
        raw[_CONTENT_LENGTH] = [b"%d" % content_length]


def rewrite_locations(headers: Headers, route: Route, host: str, secure: bool,
                      forwarded_proto: str | None, path_rewrite: int) -> None:
    """Rewrite the upstream's ``Location`` headers to the client's view of the
    service (``rewrite_redirects``), in place: scheme from the forwarded
    proto when set, else the client connection.  ``ValueError`` for a
    Location that cannot be rewritten."""
    locations = headers.getRawHeaders("Location")
    if not locations:
        return
    proto = "https" if secure else "http"
    if forwarded_proto in ("http", "https"):
        proto = forwarded_proto
    headers.setRawHeaders("Location", [
        rewrite_location(loc, route, host, proto, path_rewrite)
        for loc in locations])
