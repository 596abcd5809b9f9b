"""The management's HTTP requests hand only form bodies to twisted.web's
Content-Type parse (``email``'s header registry, ~0.2 ms a request): JSON
bodies skip it and arrive intact; urlencoded and multipart forms are still
decoded into ``request.args``."""

from __future__ import annotations

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.resource import Resource

from nbgateway.management.api.framework import ApiSite


class Recorder(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[dict[bytes, list[bytes]], bytes, bytes | None]] = []

    def render_POST(self, request):
        ctype = request.getHeader(b"content-type")
        self.seen.append((dict(request.args), request.content.read(), ctype))
        return b"ok"


@pytest.fixture
def parses(monkeypatch):
    calls: list[bytes] = []
    real = http._parseContentType

    def counting(ctype: bytes) -> bytes:
        calls.append(ctype)
        return real(ctype)

    monkeypatch.setattr(http, "_parseContentType", counting)
    return calls


def site_for(resource: Resource) -> ApiSite:
    # the channel's idle timer and the log clock on a Clock, not the global reactor
    return ApiSite(resource, reactor=Clock())


def post(site: ApiSite, ctype: bytes, body: bytes) -> bytes:
    proto = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
    transport = StringTransport()
    proto.makeConnection(transport)
    proto.dataReceived(b"POST /x?q=1 HTTP/1.1\r\nHost: m\r\nContent-Type: " + ctype
                       + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    proto.connectionLost(Failure(ConnectionDone()))
    return transport.value()


def test_a_json_body_skips_the_content_type_parse(parses):
    res = Recorder()
    out = post(site_for(res), b"application/json; charset=utf-8", b'{"name":"a=b&c=d"}')
    assert b" 200 " in out.split(b"\r\n")[0]
    [(args, body, ctype)] = res.seen
    assert args == {b"q": [b"1"]}  # the query string only, never the body
    assert body == b'{"name":"a=b&c=d"}'
    assert ctype == b"application/json; charset=utf-8"  # the header is untouched
    assert parses == []


@pytest.mark.parametrize("ctype", [b"application/x-www-form-urlencoded",
                                   b" Application/X-WWW-Form-Urlencoded; charset=utf-8"])
def test_urlencoded_forms_are_still_decoded(parses, ctype):
    res = Recorder()
    post(site_for(res), ctype, b"user=alice&pin=1234")
    [(args, _body, _ctype)] = res.seen
    assert args == {b"q": [b"1"], b"user": [b"alice"], b"pin": [b"1234"]}
    assert len(parses) == 1


def test_multipart_forms_are_still_decoded(parses):
    res = Recorder()
    body = (b"--XyZ\r\nContent-Disposition: form-data; name=\"user\"\r\n\r\nbob\r\n"
            b"--XyZ--\r\n")
    post(site_for(res), b"multipart/form-data; boundary=XyZ", body)
    [(args, _body, _ctype)] = res.seen
    assert args[b"user"] == [b"bob"]
    assert len(parses) == 1


def test_a_site_that_turns_form_parsing_off_keeps_it_off(parses):
    res = Recorder()
    site = site_for(res)
    site._parsePOSTFormSubmission = False  # twisted.web's per-site switch
    post(site, b"application/x-www-form-urlencoded", b"user=alice")
    [(args, body, _ctype)] = res.seen
    assert args == {b"q": [b"1"]} and body == b"user=alice"
    assert parses == []
