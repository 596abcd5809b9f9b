"""``nbgateway-admin demo-upstream``: a built-in upstream for the quickstart demo.

Owns a tiny twisted.web resource that answers ``/`` with a page showing what
the gateway told the upstream about the caller: the identity headers
(``X-NetBird-User``, ``X-NetBird-Groups`` and any other ``X-NetBird-*``), the
``X-Forwarded-*`` headers, the Host and the request path.  It serves no
files at all: every other path is a 404, so nothing on the disk of the
machine it runs on (the gateway's data directory, keys, configs) can ever be
fetched through it.  ``/?format=json`` (or ``Accept: application/json``)
returns the same facts as JSON.

Header values are bounded and HTML-escaped before they are shown.
"""

from __future__ import annotations

import argparse
import html
import json
from collections.abc import Sequence
from typing import Any, TextIO

from twisted.internet.interfaces import IReactorTCP
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

log = Logger()

DEFAULT_LISTEN = "127.0.0.1:8000"
#: longest header value shown (the rest is cut and marked)
MAX_VALUE = 512
#: most headers of each kind shown
MAX_HEADERS = 32
IDENTITY_HEADERS = ("X-NetBird-User", "X-NetBird-Groups")

_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>nbgateway demo upstream</title>
<style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:.2em 1em;text-align:left}}
th{{background:#eee}}code{{background:#f4f4f4}}</style></head>
<body><h1>nbgateway demo upstream</h1>
<p>You reached this page through the gateway. It saw you as
<strong>{user}</strong> in groups <strong>{groups}</strong>, requesting
<code>{path}</code>.</p>
<h2>Identity headers the gateway added</h2>
<table><tr><th>header</th><th>value</th></tr>{rows}</table>
<p>This demo serves no files: any other path answers 404.</p>
</body></html>
"""


def _text(raw: bytes | str | None) -> str:
    if raw is None:
        return ""
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    return text if len(text) <= MAX_VALUE else text[:MAX_VALUE] + "..."


def describe(request: Request) -> dict[str, Any]:
    """What the page shows: path, host, identity and forwarding headers."""
    shown: dict[str, str] = {}
    for name, values in request.requestHeaders.getAllRawHeaders():
        low = _text(name).lower()
        if low.startswith("x-netbird-"):
            key = "X-NetBird-" + low[len("x-netbird-"):].title()
        elif low.startswith("x-forwarded-"):
            key = "X-Forwarded-" + low[len("x-forwarded-"):].title()
        else:
            continue
        if len(shown) < MAX_HEADERS:
            shown[key] = _text(b", ".join(values))
    return {
        "path": _text(request.uri),
        "method": _text(request.method),
        "host": _text(request.getHeader(b"host")),
        "user": _text(request.getHeader(b"x-netbird-user")),
        "groups": _text(request.getHeader(b"x-netbird-groups")),
        "headers": dict(sorted(shown.items())),
    }


class DemoPage(Resource):
    """``/``: the identity page; anything else: 404 (no file is ever served)."""

    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        if request.path != b"/":
            request.setResponseCode(404)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"404 not found: this demo upstream serves only /\n"
        facts = describe(request)
        log.info("demo-upstream: {method} {path} user={user!r}", method=facts["method"],
                 path=facts["path"], user=facts["user"])
        want_json = request.args.get(b"format") == [b"json"] or \
            b"application/json" in (request.getHeader(b"accept") or b"")
        request.setHeader(b"cache-control", b"no-store")
        if want_json:
            request.setHeader(b"content-type", b"application/json")
            return json.dumps(facts, indent=2).encode() + b"\n"
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>"
                       for k, v in facts["headers"].items())
        return _PAGE.format(user=html.escape(facts["user"] or "(no X-NetBird-User header)"),
                            groups=html.escape(facts["groups"] or "(none)"),
                            path=html.escape(facts["path"]),
                            rows=rows or "<tr><td colspan=2>(none)</td></tr>").encode()

    def render_HEAD(self, request: Request) -> bytes:
        return self.render_GET(request)


def site() -> Site:
    """The demo's twisted.web site (no access log of its own)."""
    s = Site(DemoPage())
    s.displayTracebacks = False
    s.log = lambda request: None  # type: ignore[method-assign]
    return s


def parse_listen(text: str) -> tuple[str, int]:
    """``127.0.0.1:8000`` / ``[::1]:8000`` / ``8000`` -> (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", text
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"--listen must be HOST:PORT, not {text!r}")
    return host, int(port)


def listen(reactor: IReactorTCP, where: str) -> Any:
    """Start the demo site on ``where``; returns the listening port."""
    host, port = parse_listen(where)
    return reactor.listenTCP(port, site(), interface=host)


def add_arguments(sp: argparse.ArgumentParser) -> None:
    """The ``demo-upstream`` subcommand's options."""
    sp.add_argument("--listen", default=DEFAULT_LISTEN, metavar="HOST:PORT",
                    help="where to listen (default: %(default)s, loopback only)")


def run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Serve until interrupted.  Exit status 2 for a bad ``--listen``, 1 when
    the address cannot be bound (for example the port is in use)."""
    from twisted.internet import reactor
    from twisted.internet.error import CannotListenError

    try:
        port = listen(reactor, args.listen)
    except ValueError as exc:
        err.write(f"error: {exc}\n")
        return 2
    except CannotListenError as exc:
        err.write(f"error: cannot listen on {args.listen}: {exc.socketError} (choose "
                  "another address with --listen HOST:PORT)\n")
        return 1
    addr = port.getHost()
    out.write(f"demo upstream on {addr.host} port {addr.port} (shows the identity "
              f"headers it receives at /; serves no files)\n")
    out.flush()
    reactor.run()
    return 0


def main(argv: Sequence[str] | None = None, out: TextIO | None = None,
         err: TextIO | None = None) -> int:
    import sys

    p = argparse.ArgumentParser(prog="nbgateway-admin demo-upstream",
                                description=__doc__.split("\n\n")[0])
    add_arguments(p)
    return run(p.parse_args(argv), out or sys.stdout, err or sys.stderr)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
