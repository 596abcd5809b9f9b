"""The request's path is decoded once per request: the front resource
decodes it for the access log (from the request's ``path``, kept in step
with the uri by the front door) and hands it on in ``ctx.path``; the proxy
uses it instead of decoding the uri again, and decodes it itself when the
front resource made none.  The access log's method text of common methods
comes from a table, others are decoded: the same text either way."""

from __future__ import annotations

from typing import Any

from nbgateway.proxy import reverse
from nbgateway.routes.context import RequestContext
from tests.proxy.test_lean_path import GET, Path

_ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def _contexts(monkeypatch: Any) -> list[RequestContext]:
    seen: list[RequestContext] = []
    real = reverse.ReverseProxy.render

    def render(self: Any, request: Any, ctx: RequestContext) -> Any:
        seen.append(ctx)
        return real(self, request, ctx)

    monkeypatch.setattr(reverse.ReverseProxy, "render", render)
    return seen


def test_the_front_resources_path_reaches_the_proxy_and_the_log(monkeypatch):
    seen = _contexts(monkeypatch)
    path = Path()
    for i, target in enumerate((b"/index.html?q=1", b"/a%20b/c?x=%C3%A9", b"/d/", b"/e")):
        request = GET.replace(b"/index.html?q=1", target)
        sent, got = path.exchange(request, _ANSWER)
        assert got.endswith(b"\r\n\r\nok"), got
        # the upstream target is the request's own bytes, query included
        assert sent.startswith(b"GET " + target + b" HTTP/1.1\r\n"), sent
        logged = path.log.entries[i].path
        assert logged == target.split(b"?")[0].decode("latin-1") == seen[i].path


def test_an_absolute_form_target_is_decoded_after_the_front_doors_rewrite(monkeypatch):
    seen = _contexts(monkeypatch)
    path = Path()
    request = GET.replace(b"/index.html?q=1", b"http://app.example/abs/p?z=1")
    sent, got = path.exchange(request, _ANSWER)
    assert got.endswith(b"\r\n\r\nok"), got
    assert sent.startswith(b"GET /abs/p?z=1 HTTP/1.1\r\n"), sent
    assert path.log.entries[-1].path == seen[-1].path == "/abs/p"


def test_the_proxy_decodes_the_path_itself_without_the_front_resources():
    path = Path()
    path.channel.site.resource.access_log = None  # no entry: no path decoded up front
    sent, got = path.exchange(GET.replace(b"/index.html", b"/x/y"), _ANSWER)
    assert sent.startswith(b"GET /x/y?q=1 HTTP/1.1\r\n") and got.endswith(b"ok")


def test_a_context_made_elsewhere_has_no_path():
    assert RequestContext().path is None


def test_the_logged_method_text_of_common_and_other_methods():
    path = Path()
    methods = [b"GET", b"DELETE", b"OPTIONS", b"PURGE", b"M-SEARCH"]
    for method in methods:
        _sent, got = path.exchange(GET.replace(b"GET ", method + b" ", 1), _ANSWER)
        assert got.endswith(b"ok"), (method, got)
    assert [e.method for e in path.log.entries] == [m.decode() for m in methods]
