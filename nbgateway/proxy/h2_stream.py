"""The twisted.web side of one HTTP/2 request stream on the gateway's
connections (:class:`~nbgateway.proxy.h2trailers.TrailersH2Connection`).

:class:`GatewayH2Stream` is Twisted's ``H2Stream`` with the received header
block put into the request's ``Headers`` in one loop: Twisted calls
``getRawHeaders`` and ``setRawHeaders`` per field (each canonicalising the
name and sanitising every value, ~12 % of an HTTP/2 request's instructions in
bench/h2_path.py).  The result is the same dict: the same canonical names
(``Headers``' own name encoder and its cache; an invalid name raises the same
``InvalidHeaderName``), values in arrival order, ``:authority`` as ``Host``,
``content-length`` given to ``gotLength``, then Twisted's ``gotLength`` /
cookie / ``Expect: 100-continue`` steps.  Values are stored as received:
``h2``'s inbound validation (on in the connection's configuration, which
this checks) has refused any value holding CR or LF, so Twisted's
line-folding sanitiser would leave them unchanged; with validation off the
stream is Twisted's.
"""

from __future__ import annotations

from typing import Any

from twisted.web._http2 import H2Stream
from twisted.web.http_headers import _nameEncoder

#: ``Headers``' name encoder: its cache of canonical names and the encoder
_CANONICAL: dict[Any, bytes] = _nameEncoder._canonicalHeaderCache
_encode_name = _nameEncoder.encode


class GatewayH2Stream(H2Stream):
    """Twisted's ``H2Stream``; the request head is filled in one loop."""

    def _convertHeaders(self, headers: Any) -> None:
        if not self._conn.conn.config.validate_inbound_headers:
            super()._convertHeaders(headers)  # values may hold CR/LF
            return
        request = self._request
        raw = request.requestHeaders._rawHeaders
        got_length = False
        for name, value in headers:
            if name[0] == 0x3A:  # ":" (h2 refused empty names)
                if name == b":method":
                    self.command = value
                    continue
                if name == b":path":
                    self.path = value
                    continue
                if name != b":authority":
                    continue
                key = b"Host"
            else:
                key = _CANONICAL.get(name) or _encode_name(name)
            values = raw.get(key)
            if values is None:
                raw[key] = [value]
            else:
                values.append(value)
            if name == b"content-length":
                request.gotLength(int(value))
                got_length = True
        if not got_length:
            request.gotLength(0 if self.command in (b"GET", b"HEAD") else None)
        request.parseCookies()
        expect = raw.get(b"Expect")
        if expect and expect[0].lower() == b"100-continue":
            self._send100Continue()
