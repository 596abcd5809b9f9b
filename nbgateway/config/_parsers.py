"""The configuration's value parsers: one setting's text -> its value.

Each parser takes the raw text of a flag, an ``NB_PROXY_*`` environment
variable or a default, and returns the value or raises ``ValueError`` whose
message is the reason only (:func:`nbgateway.config.load` adds the flag, the
raw value and where it came from).  Go's flag semantics where upstream has
them (``strconv.ParseBool``, Go durations); listen hosts must be IP literals,
``localhost`` or empty, since resolving names is I/O.  Pure: no sockets, no
files, no DNS.  Also :class:`HostPort`, the value a listen address parses to.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from collections.abc import Callable
from typing import NamedTuple
from urllib.parse import urlsplit

from nbgateway.durations import parse_go_duration
from nbgateway.portranges import format_ranges, merge


class HostPort(NamedTuple):
    """A listen address: ``host`` is "" for all interfaces."""

    host: str
    port: int

    def endpoint(self) -> str:
        """A Twisted ``tcp:`` server endpoint description."""
        desc = f"tcp:port={self.port}"
        if self.host:
            desc += ":interface=" + self.host.replace(":", r"\:")
        return desc

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"



class PortRanges(tuple[tuple[int, int], ...]):
    """Host ports as sorted, merged, inclusive ``(low, high)`` ranges (empty: no
    port).  ``str()`` is the canonical text (``1024-65535``, ``53,8000-8999``)."""

    __slots__ = ()

    def covers(self, port: int) -> bool:
        return any(low <= port <= high for low, high in self)

    def __str__(self) -> str:
        return format_ranges(self)


def parse_port_ranges(text: str) -> PortRanges:
    """Comma-separated ports and inclusive ranges (``1024-65535``,
    ``8000-8999,10000-20000``), each port 1-65535; blank items are skipped, so
    "" is no port at all.  Overlapping and adjacent ranges are merged."""
    ranges: list[tuple[int, int]] = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        low_text, sep, high_text = item.partition("-")
        try:
            low = _port(low_text.strip(), allow_zero=False)
            high = _port(high_text.strip(), allow_zero=False) if sep else low
        except ValueError as exc:
            raise ValueError(f"{item!r}: {exc} (ports and ranges like 1024-65535)") from None
        if low > high:
            raise ValueError(f"{item!r}: the range's first port is above its last")
        ranges.append((low, high))
    return PortRanges(merge(ranges))


_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})


def parse_bool(text: str) -> bool:
    """Go's ``strconv.ParseBool``."""
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError("must be a boolean (true/false/1/0)")


def _port(text: str, *, allow_zero: bool) -> int:
    if not text.isdigit():
        raise ValueError("must be a port number")
    port = int(text)
    low = 0 if allow_zero else 1
    if not low <= port <= 65535:
        raise ValueError(f"port must be in {low}-65535")
    return port


def parse_port(text: str) -> int:
    return _port(text, allow_zero=False)


def parse_port_or_zero(text: str) -> int:
    return _port(text, allow_zero=True)


def parse_positive_int(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise ValueError("must be a positive integer")
    return int(text)


def _split_hostport(text: str) -> tuple[str, str]:
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise ValueError("must be HOST:PORT")
        return host, port
    host, sep, port = text.rpartition(":")
    if not sep or ":" in host:
        raise ValueError("must be HOST:PORT (bracket IPv6 hosts: [::1]:443)")
    return host, port


def parse_listen(text: str) -> HostPort:
    """``HOST:PORT`` / ``:PORT`` / ``[v6]:PORT`` with HOST an IP literal or localhost."""
    host, port = _split_hostport(text.strip())
    if host == "localhost":
        host = "127.0.0.1"
    elif host:
        try:
            host = str(ipaddress.ip_address(host))
        except ValueError:
            raise ValueError(f"host {host!r} must be an IP address, localhost or empty") from None
    return HostPort(host, _port(port, allow_zero=True))


def parse_optional_listen(text: str) -> HostPort | None:
    return parse_listen(text) if text.strip() else None


_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def parse_domain(text: str) -> str:
    """A DNS name with at least two labels, lower-cased, without trailing dot."""
    name = text.strip().rstrip(".").lower()
    if not name:
        raise ValueError("domain must not be empty")
    if len(name) > 253:
        raise ValueError("domain is longer than 253 characters")
    labels = name.split(".")
    if len(labels) < 2:
        raise ValueError("domain needs at least two labels")
    if not all(_LABEL.fullmatch(label) for label in labels):
        raise ValueError("domain labels must be letters, digits and inner hyphens")
    return name


def parse_optional_domain(text: str) -> str:
    return parse_domain(text) if text.strip() else ""


def parse_endpoint(text: str) -> str:
    """``HOST:PORT`` advertised to peers (HOST a name or an IP); "" = derive."""
    if not text.strip():
        return ""
    host, port = _split_hostport(text.strip())
    if not host:
        raise ValueError("host must not be empty")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if "." in host:
            parse_domain(host)
        else:
            _single_label(host)
    _port(port, allow_zero=False)
    return text.strip()


def _single_label(host: str) -> None:
    if not _LABEL.fullmatch(host.lower()):
        raise ValueError(f"host {host!r} is not a valid name")


def parse_management_url(text: str) -> str:
    """"" (embedded management) or an ``http(s)://host[:port]`` URL; several
    comma-separated ones name management replicas (failover in that order)."""
    url = text.strip()
    if not url:
        return ""
    for one in _management_urls(url):
        parts = urlsplit(one)
        if parts.scheme.lower() not in ("http", "https"):
            raise ValueError("scheme must be http or https")
        try:
            port = parts.port
        except ValueError:
            raise ValueError("invalid port") from None
        if not parts.hostname:
            raise ValueError("URL has no host")
        if port == 0:
            raise ValueError("invalid port")
    return url


def _management_urls(url: str) -> list[str]:
    """Each element of a comma-separated ``--mgmt`` as a URL (an element without
    a scheme takes the first one's; the first defaults to https)."""
    items = [u.strip() for u in url.split(",") if u.strip()] or [url]
    scheme = items[0].split("://", 1)[0] if "://" in items[0] else "https"
    return [u if "://" in u else f"{scheme}://{u}" for u in items]


def parse_duration(text: str) -> float:
    """A non-negative Go duration ("0", "30s", "1m30s"), in seconds."""
    seconds = parse_go_duration(text)
    if seconds < 0:
        raise ValueError("duration must not be negative")
    return seconds


def parse_positive_duration(text: str) -> float:
    seconds = parse_go_duration(text)
    if seconds <= 0:
        raise ValueError("duration must be positive")
    return seconds


def parse_cache_ttl(text: str) -> float:
    """NB_PROXY_TUNNEL_CACHE_TTL as upstream reads it:
    whitespace trimmed; unparseable or <= 0 -> a warning and the 300 s default."""
    try:
        seconds = parse_go_duration(text)
    except ValueError:
        seconds = 0.0
    if seconds <= 0:
        from twisted.logger import Logger

        Logger(namespace="nbgateway.config").warn(  # the package's namespace
            "NB_PROXY_TUNNEL_CACHE_TTL={value!r} is not a positive duration; using 300s",
            value=text)
        return 300.0
    return seconds


def _choice(options: tuple[str, ...]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in options:
            *head, last = options
            raise ValueError(f"must be {', '.join(head)}, or {last}")
        return value

    return parse


def parse_trusted_proxies(text: str) -> tuple[str, ...]:
    """Comma-separated IPs/CIDRs, normalised to CIDR strings."""
    out = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        try:
            out.append(str(ipaddress.ip_network(item, strict=False)))
        except ValueError:
            raise ValueError(f"{item!r} is not an IP address or CIDR") from None
    return tuple(out)


def parse_direct_upstream_allow(text: str) -> str:
    """The direct-dial allow-list (:mod:`nbgateway.dial.guard` syntax), normalised."""
    from nbgateway.dial.guard import format_allow_list, parse_allow_list

    return format_allow_list(parse_allow_list(text))


def parse_preshared_key(text: str) -> str:
    """"" or a base64 WireGuard pre-shared key (32 bytes)."""
    text = text.strip()
    if not text:
        return ""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise ValueError("must be a base64-encoded 32-byte key")
    return text


def parse_nonempty(text: str) -> str:
    if not text.strip():
        raise ValueError("must not be empty")
    return text


def parse_text(text: str) -> str:
    return text

