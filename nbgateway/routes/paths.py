"""Path routes of an HTTP service (pure): path -> target(s), and the outgoing
path/query/redirect (``Location``) rewriting.

Several ``PathMapping`` entries with the same path (upstream sends one per
target) are one route with several targets: the first entry is the route,
``Route.targets`` lists every distinct target in mapping order and
``Route.balancing`` says how the proxy chooses among them
(:mod:`nbgateway.routes.balancing`).

Hardening over upstream (issue 6): path prefixes match on
segment boundaries (``/api`` matches ``/api`` and ``/api/x`` but not
``/apiv2``), and equal-length prefixes are tried in lexical order so the
choice is deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from nbgateway.routes.balancing import DEFAULT_BALANCING, Balancing, balancing_of

PATH_REWRITE_DEFAULT = 0
PATH_REWRITE_PRESERVE = 1
SESSION_TOKEN_PARAM = "session_token"


def prefix_matches(prefix: str, path: str) -> bool:
    """Segment-aware prefix test: '/' and '' match everything."""
    if prefix in ("", "/"):
        return True
    prefix = prefix.rstrip("/")
    if not path.startswith(prefix):
        return False
    return len(path) == len(prefix) or path[len(prefix)] == "/"


@dataclass(frozen=True, slots=True)
class Route:
    """One path entry of a mapping, with its parsed target."""

    path: str
    target: str
    scheme: str
    netloc: str
    host: str
    port: int
    target_path: str
    target_query: str
    options: object | None = None  # PathTargetOptions, passed through untouched
    #: every target of this path in mapping order (this one first); () = this one only
    group: tuple[Route, ...] = ()
    balancing: Balancing = DEFAULT_BALANCING
    #: ``scheme://host:port`` of the target: how logs and metrics name it (no
    #: user info, path or query)
    origin: str = ""

    @property
    def targets(self) -> tuple[Route, ...]:
        """The path's targets (each a :class:`Route` of the same path)."""
        return self.group or (self,)


class RouteError(ValueError):
    """A target URL that cannot be used (the mapping reports it as ERROR)."""


def parse_target(path: str, target: str, options: object | None = None) -> Route:
    parts = urlsplit(target)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise RouteError(f'invalid target URL "{target}" for path "{path}": '
                         "want http(s)://host[:port]/path")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise RouteError(f'invalid target URL "{target}" for path "{path}": {exc}') from None
    hostname = parts.hostname  # a property computing a fresh string per read
    host = f"[{hostname}]" if ":" in hostname else hostname
    scheme = "https" if parts.scheme == "https" else "http"  # shared, not a copy per route
    return Route(path, target, scheme, parts.netloc, hostname, port,
                 parts.path or "/", parts.query, options,
                 origin=f"{scheme}://{host}:{port}")


class PathRouter:
    """Longest segment-aware prefix wins; ties broken lexically.  Entries with
    the same path are one route with several targets (a repeated target URL
    is kept once)."""

    __slots__ = ("routes",)

    def __init__(self, routes: list[Route]) -> None:
        by_path: dict[str, list[Route]] = {}
        for r in routes:
            same = by_path.setdefault(r.path, [])
            if all(o.target != r.target for o in same):
                same.append(r)
        grouped = [_group(same) for same in by_path.values()]
        # a tuple: one block (a list is two, the object and its item array)
        self.routes = tuple(sorted(grouped, key=lambda r: (-len(r.path.rstrip("/")), r.path)))

    def match(self, path: str) -> Route | None:
        for route in self.routes:
            prefix = route.path  # prefix_matches(route.path, path), inline
            if prefix in ("", "/"):
                return route
            prefix = prefix.rstrip("/")
            if path.startswith(prefix) and (len(path) == len(prefix)
                                            or path[len(prefix)] == "/"):
                return route
        return None


def _balancing(route: Route) -> Balancing | None:
    """A route's own ``nbgw_balancing``: set on the route (the service model
    converts it, see routes/service.py) or in protobuf options; None: none."""
    if route.balancing is not DEFAULT_BALANCING:
        return route.balancing
    return balancing_of(route.options)


def _group(same: list[Route]) -> Route:
    """One route for the entries of one path: the first entry's settings,
    every target, the first ``nbgw_balancing`` found."""
    balancing = next((b for b in (_balancing(r) for r in same) if b is not None),
                     DEFAULT_BALANCING)
    members = tuple(replace(r, balancing=balancing) for r in same)
    if len(members) == 1:
        return members[0]
    return replace(members[0], group=members)


def _join(base: str, rest: str) -> str:
    """Single-slash join: '/' + '/users' -> '/users'; '/heise' + '/' -> '/heise/'."""
    if not base:
        base = "/"
    if not rest:
        return base
    return base.rstrip("/") + "/" + rest.lstrip("/")


def strip_session_token(query: str) -> str:
    if not query or SESSION_TOKEN_PARAM not in query:
        return query
    pairs = [(k, v) for k, v in parse_qsl(query, keep_blank_values=True)
             if k != SESSION_TOKEN_PARAM]
    return urlencode(pairs)


def outgoing_path(route: Route, request_path: str, request_query: str, mode: int) -> str:
    """The upstream request target (path + query) for ``request_path``."""
    path = request_path or "/"
    matched = route.path
    if mode != PATH_REWRITE_PRESERVE and matched not in ("", "/"):
        path = path[len(matched.rstrip("/")) :] or "/"
    # _join(route.target_path, path) with a non-empty path, inline
    path = (route.target_path or "/").rstrip("/") + "/" + path.lstrip("/")
    if request_query and SESSION_TOKEN_PARAM in request_query:
        request_query = strip_session_token(request_query)
    target_query = route.target_query
    # "&".join of the non-empty ones
    query = (target_query + "&" + request_query if target_query and request_query
             else target_query or request_query)
    return f"{path}?{query}" if query else path


def _authority(scheme: str, netloc: str) -> str:
    host = netloc.lower()
    default = ":443" if scheme == "https" else ":80"
    return host if (":" in host.rsplit("]", 1)[-1]) else host + default


def rewrite_location(
    location: str, route: Route, inbound_host: str, proto: str, mode: int
) -> str:
    """rewrite_redirects: absolute Locations pointing at the target
    are rewritten to the inbound host and scheme, re-prefixed with the matched
    path.  Raises ValueError for an unparseable Location."""
    parts = urlsplit(location)
    _ = parts.port  # raises ValueError on a bad port
    if not parts.scheme or not parts.netloc:
        return location
    if _authority(parts.scheme, parts.netloc) != _authority(route.scheme, route.netloc):
        return location
    path = parts.path
    if mode != PATH_REWRITE_PRESERVE and route.path not in ("", "/"):
        path = route.path.rstrip("/") + "/" + path.lstrip("/")
    return urlunsplit((proto, inbound_host, path, parts.query, parts.fragment))
