"""How the gateway builds its dial guard (issue 11.1): the embedded default's
loopback for the operator's account only, the gateway's own listeners
(public, health, embedded management REST/gRPC, a loopback --mgmt) never,
the operator's flag for everything else.  Objects only: nothing binds."""

from __future__ import annotations

import ipaddress

from twisted.internet import reactor
from twisted.trial import unittest

from nbgateway.config import load
from nbgateway.dial.direct import DirectDialer
from nbgateway.tap import build_gateway

ip = ipaddress.ip_address
EMBEDDED_ENV = {"NB_MANAGEMENT_API_ADDR": "127.0.0.1:33071",
                "NB_MANAGEMENT_GRPC_ADDR": "127.0.0.1:33073"}


class GatewayDialGuardTests(unittest.TestCase):
    def build(self, flags: dict, environ: dict | None = None):
        flags = {"datadir": self.mktemp(), "wg_port": "0", "addr": "127.0.0.1:8443",
                 "health_addr": "127.0.0.1:8080", **flags}
        config = load(flags, environ or {})
        return build_gateway(config, reactor, environ=EMBEDDED_ENV)

    def check(self, svc, account: str, address: str, port: int):
        return svc.direct.policy.check(account, ip(address), port)

    def test_embedded_default_allows_loopback_for_the_operator_account_only(self):
        svc = self.build({})
        self.assertTrue(svc.config.embedded)
        self.assertTrue(self.check(svc, "default", "127.0.0.1", 8000).allowed)
        self.assertTrue(self.check(svc, "default", "::1", 8000).allowed)
        self.assertEqual(self.check(svc, "tenant-b", "127.0.0.1", 8000).reason, "loopback")
        self.assertEqual(self.check(svc, "default", "10.0.0.1", 80).reason, "not_allowed")
        # its own listeners, even for the operator's account
        for port in (33071, 33073, 8080, 8443):
            self.assertEqual(self.check(svc, "default", "127.0.0.1", port).reason,
                             "gateway_listener", port)

    def test_embedded_default_plus_the_operators_flag(self):
        svc = self.build({"direct_upstream_allow": "192.0.2.0/24@tenant-b"})
        self.assertTrue(self.check(svc, "tenant-b", "192.0.2.7", 80).allowed)
        self.assertEqual(self.check(svc, "tenant-b", "127.0.0.1", 8000).reason, "loopback")
        self.assertEqual(self.check(svc, "other", "192.0.2.7", 80).reason, "not_allowed")

    def test_remote_management_has_no_implicit_loopback(self):
        svc = self.build({"mgmt": "http://127.0.0.1:33073", "domain": "gw.test"},
                         {"NB_PROXY_TOKEN": "t"})
        self.assertFalse(svc.config.embedded)
        self.assertEqual(self.check(svc, "default", "127.0.0.1", 8000).reason, "loopback")
        svc = self.build({"mgmt": "http://127.0.0.1:33073", "domain": "gw.test",
                          "direct_upstream_allow": "127.0.0.0/8"}, {"NB_PROXY_TOKEN": "t"})
        self.assertTrue(self.check(svc, "anyone", "127.0.0.1", 8000).allowed)
        # the management this gateway talks to, and its own listeners, stay out of reach
        for port in (33073, 8080, 8443):
            self.assertEqual(self.check(svc, "anyone", "127.0.0.1", port).reason,
                             "gateway_listener", port)

    def test_direct_dialer_is_guarded_per_account(self):
        svc = self.build({})
        a, b = svc.dialer_for("default", True), svc.dialer_for("tenant-b", True)
        self.assertIsInstance(a, DirectDialer)
        self.assertEqual((a.account_id, b.account_id), ("default", "tenant-b"))
        self.assertIs(a.policy, svc.direct.policy)
        self.assertIsNotNone(a.policy)

    def test_metric_is_registered(self):
        svc = self.build({})
        svc.direct_stats.denied["loopback"] += 1
        value = svc.metrics.registry.get_sample_value(
            "nbgateway_direct_upstream_dials_total", {"result": "denied", "reason": "loopback"})
        self.assertEqual(value, 1)
