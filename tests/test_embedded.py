"""``twistd nbgateway`` without --mgmt: the real management service runs
in-process and the gateway follows it over real gRPC (proxy token handed over
at start).  A private service created through the REST API reaches the
gateway, which registers its account's proxy peer with CreateProxyPeer."""

from __future__ import annotations

import json
import os
import urllib.request

from twisted.internet import defer, reactor, threads
from twisted.internet.task import deferLater
from twisted.trial import unittest

from nbgateway.config import load
from nbgateway.tap import build_gateway
from tests.ports import free_port


class EmbeddedTests(unittest.TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def setUp(self):
        self.datadir = os.path.abspath(self.mktemp())
        self.config = load({"wg_port": "0", "datadir": self.datadir, "health_addr": "",
                            "addr": "127.0.0.1:0",
                            "private": True, "domain": "gw.test"}, {})
        self.start_gateway()
        mgmt = self.svc.embedded.management
        self.api = f"http://127.0.0.1:{mgmt.port.getHost().port}/api"
        with open(mgmt.admin_token_path) as f:
            self.admin = f.read().strip()
        yield deferLater(reactor, 0, lambda: None)

    def tearDown(self):
        return self.svc.stopService()

    def start_gateway(self):
        """Build and start the gateway of ``self.config`` (its management in-process,
        REST on a free port, gRPC on another): the new ``self.svc``."""
        self.svc = build_gateway(self.config, reactor, environ={
            "NB_MANAGEMENT_API_ADDR": "127.0.0.1:0",
            "NB_MANAGEMENT_GRPC_ADDR": f"127.0.0.1:{free_port()}"})
        self.svc.privilegedStartService()
        self.svc.startService()
        return self.svc

    def create_private_service(self, domain: str, group: dict):
        """A private service at ``domain`` for ``group``'s peers (target 127.0.0.1:9)."""
        return self.rest("POST", "/reverse-proxies/services", {
            "name": "app", "domain": domain, "enabled": True, "private": True,
            "access_groups": [group["id"]],
            "targets": [{"target_id": "gw.test", "target_type": "cluster", "protocol": "http",
                         "host": "127.0.0.1", "port": 9, "enabled": True,
                         "options": {"direct_upstream": True}}]})

    def rest(self, method, path, body=None):
        def call():
            req = urllib.request.Request(
                self.api + path, method=method,
                data=None if body is None else json.dumps(body).encode(),
                headers={"Authorization": f"Token {self.admin}",
                         "Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=10) as resp:
                return json.loads(resp.read() or b"null")

        return threads.deferToThread(call)

    @defer.inlineCallbacks
    def wait_for(self, predicate, timeout=15.0):
        deadline = reactor.seconds() + timeout
        while not predicate():
            if reactor.seconds() > deadline:
                self.fail("condition not reached in time")
            yield deferLater(reactor, 0.05, lambda: None)

    @defer.inlineCallbacks
    def test_service_created_over_rest_reaches_the_gateway(self):
        self.assertTrue(os.path.exists(os.path.join(self.datadir, "admin-token")))
        group = yield self.rest("POST", "/groups", {"name": "devs"})
        service = yield self.create_private_service("app.gw.test", group)
        yield self.wait_for(lambda: self.svc.routes.lookup("app.gw.test") is not None)
        entry = self.svc.routes.lookup("app.gw.test")
        self.assertTrue(entry.private)
        self.assertEqual(entry.service.service_id, service["id"])
        # the account's runtime registered its proxy peer with management
        yield self.wait_for(lambda: any(
            r.state in ("connecting", "ready") for r in self.svc.accounts.runtimes.values()))
        runtime = next(iter(self.svc.accounts.runtimes.values()))
        peers = yield self.rest("GET", "/peers")
        from nbgateway.wireguard.keys import key_to_base64

        self.assertIn(key_to_base64(runtime.device.public_key),
                      [p.get("key") or p.get("public_key") for p in peers])
        self.assertTrue(self.svc.mgmt.connected)
        # the peer channel delivered the network map: netstack + listeners on the
        # tunnel address management allocated for the proxy peer
        yield self.wait_for(lambda: runtime.state == "ready")
        self.assertTrue(runtime.tunnel_ip.startswith("100."))
        self.assertEqual(str(runtime.stack.addresses[0]), runtime.tunnel_ip)
        self.assertTrue(runtime.listeners)

    @defer.inlineCallbacks
    def test_restart_revokes_the_previous_embedded_token(self):
        store = self.svc.embedded.store
        first = [t for t in store.proxies.list_tokens(None) if not t.revoked]
        self.assertEqual(len(first), 1)
        yield self.svc.stopService()
        again = self.start_gateway()
        live = [t for t in again.embedded.store.proxies.list_tokens(None) if not t.revoked]
        self.assertEqual(len(live), 1)
        self.assertNotEqual(live[0].id, first[0].id)

    @defer.inlineCallbacks
    def test_restarted_gateway_keeps_its_account_tunnel_identity(self):
        group = yield self.rest("POST", "/groups", {"name": "ops"})
        yield self.create_private_service("keep.gw.test", group)
        yield self.wait_for(lambda: any(
            r.state == "ready" for r in self.svc.accounts.runtimes.values()))
        first = next(iter(self.svc.accounts.runtimes.values()))
        key, ip = first.device.public_key, first.tunnel_ip
        yield self.svc.stopService()
        again = self.start_gateway()
        yield self.wait_for(lambda: any(
            r.state == "ready" for r in again.accounts.runtimes.values()))
        runtime = next(iter(again.accounts.runtimes.values()))
        self.assertEqual(runtime.device.public_key, key)
        self.assertEqual(runtime.tunnel_ip, ip)
        proxies = [p for p in again.embedded.store.peers.list(runtime.account_id, proxy=True)]
        self.assertEqual(len(proxies), 1)
        key_dir = os.path.join(self.datadir, "accounts")
        [key_file] = os.listdir(key_dir)
        self.assertEqual(os.stat(os.path.join(key_dir, key_file)).st_mode & 0o777, 0o600)
