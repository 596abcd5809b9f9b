"""Host names as the service model keys them (pure).

Owns the one domain normalisation (:func:`domain_key`) every domain-keyed
table uses (the mapping store, the service table, the certificate store), the
Host-header split into name and port, and the request-target forms of
RFC 9112 3.2 (:func:`split_absolute_form`).
"""

from __future__ import annotations


def domain_key(name: str) -> str:
    """THE normalisation of a served domain name, used by every table that is
    keyed by domain (the mapping store, the service table, the router, the
    certificate store): surrounding whitespace and a trailing root dot removed,
    lower-cased.  ``APP.Example.``, ``app.example.`` and ``app.example`` are one
    name (DNS names are case-insensitive and the root dot is implicit); upstream
    matches exactly, which made those spellings 404 or bypass per-host rules.
    A name already in that form is returned as is (the same object), so a
    table keyed by it shares the service's domain string instead of a copy."""
    key = name.strip().rstrip(".").lower()
    return name if key == name else key


def host_without_port(host: str) -> str:
    """The Host header without its port (IPv6 brackets handled), otherwise as
    sent; :func:`domain_key` turns it into the routing key."""
    host = host.strip()
    if host.startswith("["):
        end = host.find("]")
        return host[1:end] if end > 0 else host
    if host.count(":") == 1:
        return host.split(":", 1)[0]
    return host


def host_port(host: str) -> str | None:
    """The explicit port of a Host header value, if any."""
    host = host.strip()
    if host.startswith("["):
        end = host.find("]")
        rest = host[end + 1 :] if end > 0 else ""
        return rest[1:] if rest.startswith(":") and rest[1:].isdigit() else None
    if host.count(":") == 1:
        port = host.split(":", 1)[1]
        return port if port.isdigit() else None
    return None


def split_absolute_form(target: bytes) -> tuple[bytes, bytes] | None:
    """``(authority, origin-form)`` of an absolute-form request target
    (``http://host[:port]/path?q``, RFC 9112 3.2.2), None for any other form.
    The origin form keeps the query and is ``/`` when the path is empty.
    Raises ValueError for an absolute form without a usable authority
    (userinfo included: RFC 9110 4.2.4 forbids it in http(s) URIs)."""
    scheme, sep, rest = target.partition(b"://")
    if not sep or scheme.lower() not in (b"http", b"https") or target.startswith(b"/"):
        return None
    end = len(rest)
    for stop in (b"/", b"?", b"#"):
        i = rest.find(stop)
        if i != -1:
            end = min(end, i)
    authority, tail = rest[:end], rest[end:]
    if not authority or b"@" in authority or any(c <= 0x20 or c >= 0x7F for c in authority):
        raise ValueError("absolute-form request target without a valid authority")
    tail = tail.split(b"#", 1)[0]
    if not tail.startswith(b"/"):
        tail = b"/" + tail
    return authority, tail
