"""X-NetBird-Jwt-Assertion through the reverse proxy over real loopback
sockets (curl as the client): stamped and verifiable, forged copies dropped,
``required`` never forwarded unsigned (503), the service's JWKS served."""

from __future__ import annotations

import dataclasses
import json

import jwt
from twisted.internet import defer, reactor
from twisted.trial import unittest

from nbgateway.auth.assertion import AssertionSigner
from nbgateway.routes.identity import Identity
from nbgateway.routes.service import JWKS_PATH
from tests.auth.test_assertion import _keypair
from tests.proxy._harness import EchoUpstream, ProxyHarness, curl, listen_site


class AssertionThroughProxyTests(unittest.TestCase):
    def setUp(self) -> None:
        self.upstream = EchoUpstream()
        self.up_port, _ = listen_site(self.upstream)
        self.addCleanup(self.up_port.stopListening)
        self.up = f"http://127.0.0.1:{self.up_port.getHost().port}/"
        self.h = ProxyHarness()
        self.h.proxy.assertions = AssertionSigner(reactor)
        self.port = self.h.listen()
        self.addCleanup(self.h.close)
        self.settings, self.jwk = _keypair()

    def get(self, path: str = "/", *extra: str):
        return curl("-H", "Host: app.example", *extra, f"http://127.0.0.1:{self.port}{path}")

    @defer.inlineCallbacks
    def test_stamped_and_verifiable_forged_copy_dropped(self):
        self.h.add("app.example", {"/": self.up}, assertion=self.settings)
        self.h.identity = Identity("u1", "alice@x", ("g1",), ("eng",), "oidc")
        status, _, body = yield self.get("/", "-H", "X-NetBird-Jwt-Assertion: forged",
                                         "-H", "X_NetBird_Jwt_Assertion: forged")
        self.assertEqual(status, 200)
        tokens = json.loads(body)["headers"]["x-netbird-jwt-assertion"]
        self.assertEqual(len(tokens), 1)
        claims = jwt.decode(tokens[0], self.jwk, algorithms=["EdDSA"], audience="app.example")
        self.assertEqual((claims["sub"], claims["email"], claims["peer_ip"]),
                         ("u1", "alice@x", "127.0.0.1"))

    @defer.inlineCallbacks
    def test_on_without_identity_forwards_without_assertion(self):
        self.h.add("app.example", {"/": self.up}, assertion=self.settings)
        status, _, body = yield self.get("/", "-H", "X-NetBird-Jwt-Assertion: forged")
        self.assertEqual(status, 200)
        self.assertNotIn("x-netbird-jwt-assertion", json.loads(body)["headers"])

    @defer.inlineCallbacks
    def test_required_without_usable_key_is_503_never_unsigned(self):
        broken = dataclasses.replace(self.settings, mode="required", private_key="!!")
        self.h.add("app.example", {"/": self.up}, assertion=broken)
        self.h.identity = Identity("u1", "alice@x")
        status, _, body = yield self.get("/")
        self.assertEqual(status, 503)
        self.assertIn(b"Identity Assertion Unavailable", body)
        # no signer at all: also refused
        self.h.proxy.assertions = None
        self.h.add("app.example", {"/": self.up},
                   assertion=dataclasses.replace(self.settings, mode="required"))
        status, _, _ = yield self.get("/")
        self.assertEqual(status, 503)
        self.assertEqual(self.upstream.seen, [])

    @defer.inlineCallbacks
    def test_required_with_key_forwards_signed(self):
        self.h.add("app.example", {"/": self.up},
                   assertion=dataclasses.replace(self.settings, mode="required"))
        self.h.identity = Identity("u1", "alice@x")
        status, _, body = yield self.get("/")
        self.assertEqual(status, 200)
        self.assertIn("x-netbird-jwt-assertion", json.loads(body)["headers"])

    @defer.inlineCallbacks
    def test_service_jwks_served_by_the_gateway(self):
        self.h.add("app.example", {"/": self.up}, assertion=self.settings)
        status, head, body = yield self.get(JWKS_PATH)
        self.assertEqual(status, 200)
        self.assertIn("application/json", head.lower())
        doc = json.loads(body)
        self.assertEqual(doc, self.settings.jwks())
        self.assertNotIn("d", doc["keys"][0])
