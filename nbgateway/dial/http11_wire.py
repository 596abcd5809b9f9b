"""The upstream HTTP/1.1 client's bytes-level vocabulary, sans-IO: the
request head serialised once as bytes (:func:`request_head`, the client's
framing headers replaced by ours), absolute upstream URLs split
(:func:`split_url`) and response header names as ``Headers`` stores them
(:func:`_canonical`).

It owns the two bounded module-level memos of that path: ``_NAMES``
(response header name as received -> canonical) and ``_HEAD_KINDS``
(request header name -> copied, Host or dropped).  Both are imported by
:mod:`nbgateway.dial.http11` under the same names (the same dict objects).
"""

from __future__ import annotations

from twisted.web.http_headers import Headers

#: response header names as received -> as ``Headers`` keeps them (bounded)
_NAMES: dict[bytes, bytes] = {}
_NAMES_MAX = 4096
#: longer (upstream-chosen) names are not cached: the cache stays small
_NAME_CACHED_MAX_LEN = 64


def _canonical(name: bytes) -> bytes:
    """``name`` as ``Headers`` stores it (twisted's own encoder, cached here:
    the encoder's cache is keyed by the name, so this is one lookup less)."""
    canonical = _NAMES.get(name)
    if canonical is None:
        probe = Headers()
        probe.addRawHeader(name, b"")
        canonical = next(iter(probe.getAllRawHeaders()))[0]
        if len(_NAMES) < _NAMES_MAX and len(name) <= _NAME_CACHED_MAX_LEN:
            _NAMES[name] = canonical
    return canonical


_CONTENT_LENGTH, _TRANSFER_ENCODING = map(_canonical, (b"Content-Length", b"Transfer-Encoding"))


#: ``scheme://netloc`` -> (scheme, host, port, netloc): a proxy sends every
#: request of a target to the same few; bounded, cleared when full
_ORIGINS: dict[bytes, tuple[bytes, bytes, int, bytes]] = {}
_ORIGINS_MAX = 1024
_ORIGIN_CACHED_MAX_LEN = 300


def split_url(url: bytes) -> tuple[bytes, bytes, int, bytes, bytes]:
    """``(scheme, host, port, netloc, path)`` of an absolute http(s) URL.
    The part before the path is split once per ``scheme://netloc`` (cached)."""
    start = url.find(b"://")
    slash = url.find(b"/", start + 3) if start > 0 else -1
    origin = url[:slash] if slash > 0 else url
    hit = _ORIGINS.get(origin)
    if hit is not None:
        return (*hit, url[slash:] if slash > 0 else b"/")
    parts = _split_url(url)
    if len(origin) <= _ORIGIN_CACHED_MAX_LEN:
        if len(_ORIGINS) >= _ORIGINS_MAX:
            _ORIGINS.clear()
        _ORIGINS[origin] = parts[:4]
    return parts


def _split_url(url: bytes) -> tuple[bytes, bytes, int, bytes, bytes]:
    scheme, sep, rest = url.partition(b"://")
    if not sep or scheme not in (b"http", b"https"):
        raise ValueError(f"unsupported upstream URL {url[:80]!r}")
    netloc, slash, path = rest.partition(b"/")
    path = slash + path if slash else b"/"
    if netloc.startswith(b"["):
        close = netloc.find(b"]")
        if close < 0:
            raise ValueError("bad IPv6 literal")
        host, tail = netloc[:close + 1], netloc[close + 1:]
        port_s = tail[1:] if tail.startswith(b":") else b""
    else:
        host, _, port_s = netloc.partition(b":")
    port = int(port_s) if port_s else (443 if scheme == b"https" else 80)
    if not host or not 0 < port < 65536:
        raise ValueError("bad upstream host or port")
    return scheme, host, port, netloc, path


_FRAMING = 2
#: header name as sent -> 0 (copied), 1 (Host) or _FRAMING (dropped: the
#: client's framing headers are replaced by ours); bounded, cleared when full
_HEAD_KINDS: dict[bytes, int] = {}
_HEAD_KINDS_MAX = 1024


def _head_kind(name: bytes) -> int:
    lname = name.lower()
    kind = (1 if lname == b"host" else
            _FRAMING if lname in (b"content-length", b"transfer-encoding", b"connection")
            else 0)
    if len(name) <= 64:
        if len(_HEAD_KINDS) >= _HEAD_KINDS_MAX:
            _HEAD_KINDS.clear()
        _HEAD_KINDS[name] = kind
    return kind


def request_head(method: bytes, path: bytes, headers: Headers, netloc: bytes,
                 length: int | None) -> bytes:
    """The request line and header block, one bytes object.  ``length``:
    None = chunked, -1 = no body."""
    lines = [method, b" ", path, b" HTTP/1.1\r\n"]
    has_host = False
    kinds = _HEAD_KINDS
    for name, values in headers._rawHeaders.items():  # names as Headers keeps them
        kind = kinds.get(name)
        if kind is None:
            kind = _head_kind(name)
        if kind:
            if kind == _FRAMING:
                continue  # framing is ours
            has_host = True
        for v in values:
            lines += (name, b": ", v, b"\r\n")
    if not has_host:
        lines += (b"Host: ", netloc, b"\r\n")
    if length is None:
        lines.append(b"Transfer-Encoding: chunked\r\n")
    elif length >= 0:
        lines.append(b"Content-Length: %d\r\n" % length)
    lines.append(b"\r\n")
    return b"".join(lines)
