"""The built-in demo upstream: shows the identity headers, serves no files."""

from __future__ import annotations

import io
import json
import os
import socket

from twisted.internet import defer, reactor
from twisted.trial import unittest
from twisted.web.client import Agent, readBody
from twisted.web.http_headers import Headers

from nbgateway.management import demo_upstream


class DemoUpstreamTests(unittest.TestCase):
    def setUp(self):
        # run from a directory that holds secrets: none of them may be served
        self.cwd = os.getcwd()
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(self.dir, "nbgateway-data"))
        for name in ("nbgateway-data/admin-token", "nbgateway-data/ca.key", "laptop.conf"):
            with open(os.path.join(self.dir, name), "w") as f:
                f.write("SECRET\n")
        os.chdir(self.dir)
        self.port = demo_upstream.listen(reactor, "127.0.0.1:0")
        self.base = f"http://127.0.0.1:{self.port.getHost().port}"
        self.agent = Agent(reactor)

    def tearDown(self):
        os.chdir(self.cwd)
        return self.port.stopListening()

    @defer.inlineCallbacks
    def get(self, path: str, **headers: str):
        h = Headers({k.replace("_", "-").encode(): [v.encode()] for k, v in headers.items()})
        resp = yield self.agent.request(b"GET", (self.base + path).encode(), h)
        body = yield readBody(resp)
        return resp, body.decode()

    @defer.inlineCallbacks
    def test_page_shows_identity_headers_escaped(self):
        resp, body = yield self.get("/", X_NetBird_User="alice@example.com",
                                    X_NetBird_Groups="quickstart,<b>ops</b>",
                                    X_Forwarded_For="100.64.0.2")
        self.assertEqual(resp.code, 200)
        self.assertIn("alice@example.com", body)
        self.assertIn("quickstart,&lt;b&gt;ops&lt;/b&gt;", body)
        self.assertNotIn("<b>ops</b>", body)
        self.assertIn("X-Forwarded-For", body)
        self.assertIn("X-NetBird-User", body)  # the gateway's spelling
        self.assertIn("X-NetBird-Groups", body)
        self.assertIn("100.64.0.2", body)

    @defer.inlineCallbacks
    def test_json_form(self):
        resp, body = yield self.get("/?format=json", X_NetBird_User="bob")
        self.assertEqual(resp.code, 200)
        facts = json.loads(body)
        self.assertEqual(facts["user"], "bob")
        self.assertEqual(facts["path"], "/?format=json")
        _resp, body = yield self.get("/", Accept="application/json")
        self.assertEqual(json.loads(body)["user"], "")

    @defer.inlineCallbacks
    def test_serves_no_files(self):
        for path in ("/nbgateway-data/admin-token", "/nbgateway-data/", "/laptop.conf",
                     "/nbgateway-data/ca.key", "/index.html", "//laptop.conf"):
            resp, body = yield self.get(path)
            self.assertEqual(resp.code, 404, path)
            self.assertNotIn("SECRET", body)

    @defer.inlineCallbacks
    def test_long_values_are_bounded(self):
        _resp, body = yield self.get("/?format=json", X_NetBird_User="u" * 5000)
        self.assertLessEqual(len(json.loads(body)["user"]), demo_upstream.MAX_VALUE + 3)


def test_parse_listen():
    assert demo_upstream.parse_listen("127.0.0.1:8000") == ("127.0.0.1", 8000)
    assert demo_upstream.parse_listen("[::1]:8001") == ("::1", 8001)
    assert demo_upstream.parse_listen("8002") == ("127.0.0.1", 8002)
    for bad in ("127.0.0.1:x", "127.0.0.1:70000", ""):
        try:
            demo_upstream.parse_listen(bad)
        except ValueError:
            continue
        raise AssertionError(bad)


def test_busy_port_is_one_line_and_exit_1():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        busy = s.getsockname()[1]
        err = io.StringIO()
        rc = demo_upstream.main(["--listen", f"127.0.0.1:{busy}"], out=io.StringIO(), err=err)
    assert rc == 1
    assert err.getvalue().count("\n") == 1
    assert f"cannot listen on 127.0.0.1:{busy}" in err.getvalue()


def test_bad_listen_is_usage_error():
    err = io.StringIO()
    assert demo_upstream.main(["--listen", "x:y"], out=io.StringIO(), err=err) == 2
    assert "--listen must be HOST:PORT" in err.getvalue()
