"""The gateway drops an account's cached ValidateTunnelPeer answers whenever a
network map for that account's proxy peer arrives (management pushes one on
every change that can revoke access: issue 11 item 2), and only that
account's.  Fake management and a fake peer channel; real GatewayService."""

from __future__ import annotations

import ipaddress

from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.trial import unittest

from nbgateway._proto import proxy_service_pb2 as pb
from nbgateway.mgmt.netmap import AccountNetwork, RosterPeer
from nbgateway.wireguard.keys import generate_private_key, key_to_base64, public_key
from tests.test_service import start_gateway

PEER_IP = "100.64.0.10"


class Channel:
    def __init__(self, account_id, private_key, on_map):
        self.account_id = account_id
        self.on_map = on_map
        Channel.by_account[account_id] = self

    by_account: dict = {}

    def start(self):
        pass

    def stop(self):
        pass


def network(serial: int) -> AccountNetwork:
    key = public_key(generate_private_key())
    return AccountNetwork(
        serial=serial, address=ipaddress.ip_interface("100.64.0.1/10"),
        roster=(RosterPeer(key_to_base64(key), key,
                           (ipaddress.ip_network(f"{PEER_IP}/32"),)),))


def mapping(account: str, domain: str) -> pb.ProxyMapping:
    return pb.ProxyMapping(type=pb.UPDATE_TYPE_CREATED, id=f"svc-{account}",
                           account_id=account, domain=domain, auth_token="tok", private=True,
                           path=[pb.PathMapping(path="/", target="http://127.0.0.1:9/")])


class NetworkMapEvictionTests(unittest.TestCase):
    @defer.inlineCallbacks
    def setUp(self):
        Channel.by_account = {}
        self.svc, self.mgmt = start_gateway(self, Channel, private=True)
        yield self.mgmt.snapshot([mapping("a", "one.example"), mapping("b", "two.example")])
        for account in ("a", "b"):
            yield Channel.by_account[account].on_map(network(1))
        for account, domain in (("a", "one.example"), ("b", "two.example")):
            self.mgmt.allow_tunnel_peer(PEER_IP, domain)
            yield self.svc.cache.validate(account, PEER_IP, domain)
        self.assertEqual(len(self.svc.cache), 2)

    @defer.inlineCallbacks
    def tearDown(self):
        yield self.svc.stopService()
        yield deferLater(reactor, 0, lambda: None)

    @defer.inlineCallbacks
    def test_map_for_one_account_evicts_only_that_account(self):
        yield Channel.by_account["a"].on_map(network(2))
        self.assertIsNone(self.svc.cache.lookup("a", PEER_IP, "one.example"))
        self.assertIsNotNone(self.svc.cache.lookup("b", PEER_IP, "two.example"))
        # the next request for account a asks management again
        calls = self.mgmt.count("validate_tunnel_peer")
        yield self.svc.cache.validate("a", PEER_IP, "one.example")
        self.assertEqual(self.mgmt.count("validate_tunnel_peer"), calls + 1)
