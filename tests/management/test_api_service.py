"""ManagementService lifecycle in-process (trial): nothing live before start, clean stop.

Also checks the first-start admin token (0600 file, path logged, token never
logged) and that a restart on the same data directory keeps the token.
"""

from __future__ import annotations

import json
import os
import stat

from twisted.internet import defer, reactor
from twisted.internet.error import CannotListenError
from twisted.logger import globalLogPublisher
from twisted.trial import unittest
from twisted.web.client import Agent, readBody
from twisted.web.http_headers import Headers

from nbgateway.management.service import ManagementService


class ServiceLifecycleTests(unittest.TestCase):
    def setUp(self):
        self.datadir = os.path.join(self.mktemp(), "data")
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def make(self):
        return ManagementService(datadir=self.datadir, api_addr="127.0.0.1:0", reactor=reactor)

    @defer.inlineCallbacks
    def get(self, svc, path, token=None):
        port = svc.port.getHost().port
        headers = Headers({b"Authorization": [f"Token {token}".encode()]} if token else {})
        resp = yield Agent(reactor).request(b"GET", f"http://127.0.0.1:{port}{path}".encode(),
                                            headers)
        body = yield readBody(resp)
        return resp.code, body

    @defer.inlineCallbacks
    def test_start_serve_stop_restart(self):
        svc = self.make()
        self.assertFalse(os.path.exists(self.datadir))
        self.assertIsNone(svc.port)
        self.assertIsNone(svc.store)
        self.assertFalse(svc.threadpool.started)

        svc.privilegedStartService()
        self.assertIsNotNone(svc.port)
        self.assertFalse(svc.threadpool.started)  # threads only in startService
        token_path = os.path.join(self.datadir, "admin-token")
        self.assertEqual(stat.S_IMODE(os.stat(token_path).st_mode), 0o600)
        with open(token_path) as f:
            token = f.read().strip()
        svc.startService()
        self.assertTrue(svc.threadpool.started)
        try:
            code, body = yield self.get(svc, "/api/groups", token)
            self.assertEqual(code, 200)
            self.assertIn("All", [g["name"] for g in json.loads(body)])
            code, body = yield self.get(svc, "/api/groups", "nbp_nope")
            self.assertEqual((code, json.loads(body)["code"]), (401, 401))
        finally:
            yield svc.stopService()
        self.assertIsNone(svc.port)
        self.assertFalse(svc.threadpool.started)

        texts = [str(e.get("log_format", "")) + repr(e) for e in self.events]
        self.assertTrue(any(os.path.abspath(token_path) in t for t in texts))
        self.assertFalse(any(token in t for t in texts))

        # restart on the same data directory: same token, file untouched, still valid
        mtime = os.stat(token_path).st_mtime_ns
        svc2 = self.make()
        svc2.privilegedStartService()
        svc2.startService()
        try:
            code, _ = yield self.get(svc2, "/api/users", token)
            self.assertEqual(code, 200)
        finally:
            yield svc2.stopService()
        self.assertEqual(os.stat(token_path).st_mtime_ns, mtime)

    def test_bind_failure_raises_in_privileged_start(self):
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            s.listen()
            busy = s.getsockname()[1]
            svc = ManagementService(datadir=self.datadir, api_addr=f"127.0.0.1:{busy}",
                                    reactor=reactor)
            self.assertRaises(CannotListenError, svc.privilegedStartService)
            self.assertIsNone(svc.store)  # closed again, nothing leaked
