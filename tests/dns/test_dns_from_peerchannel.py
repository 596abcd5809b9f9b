"""The whole chain on the real reactor: the REAL management peer channel (SQLite store,
grpc.server on 127.0.0.1) -> PeerChannelClient -> netmap.convert -> the responder's zones,
queried by twisted.names' client Resolver on a host socket.  A roster change in
management (a peer joins the access group) becomes a resolvable name."""

from __future__ import annotations

import dataclasses
import os

from twisted.internet import defer, reactor
from twisted.internet.threads import deferToThread
from twisted.names import client, error
from twisted.trial import unittest

from nbgateway.dns.server import DNSResponderFactory
from nbgateway.dns.zone import ZoneAuthority, account_zones
from nbgateway.management.model import Account, Group, Peer, Service, Target, TargetOptions
from nbgateway.mgmt import netmap
from nbgateway.mgmt.peerclient import PeerChannelClient
from nbgateway.wireguard.keys import generate_private_key, public_key
from tests.mgmt.test_peerclient import (
    CLUSTER,
    ManagementServer,
    b64,
    fast_backoff,
    sqlite_store,
    wait_for,
)


class ChainTests(unittest.TestCase):
    timeout = 60

    def setUp(self):
        self.store, tmp = sqlite_store(self)
        self.store.accounts.create(Account(id="acct-1", domain="netbird.test"))
        self.mgmt = ManagementServer(self.store, os.path.join(tmp, "wg-server.key"))
        self.addCleanup(lambda: self.mgmt.stop())
        self.private = generate_private_key()
        self.store.peers.create(Peer(
            account_id="acct-1", name="proxy-1", key=b64(public_key(self.private)),
            ip="100.64.0.99", dns_label="proxy-1", proxy=True, proxy_cluster=CLUSTER))
        self.laptop = self.store.peers.create(Peer(
            account_id="acct-1", name="laptop", key=b64(public_key(generate_private_key())),
            ip="100.64.0.10", dns_label="laptop"))
        self.desktop = self.store.peers.create(Peer(
            account_id="acct-1", name="desktop", key=b64(public_key(generate_private_key())),
            ip="100.64.0.11", dns_label="desktop"))
        self.group = self.store.groups.create(Group(id="grp-admins", account_id="acct-1",
                                                   name="admins", peers=(self.laptop.id,)))
        self.store.services.create(Service(
            account_id="acct-1", name="myapp", domain="myapp.eu.proxy.netbird.io",
            private=True, access_groups=(self.group.id,),
            targets=(Target(target_type="cluster", target_id=CLUSTER, host="backend.lan",
                            port=8080, options=TargetOptions(direct_upstream=True)),),
        ))
        self.factory = DNSResponderFactory(ZoneAuthority())
        self.udp = reactor.listenUDP(0, self.factory.datagram_protocol(), interface="127.0.0.1")
        self.addCleanup(self.udp.stopListening)
        self.resolver = client.Resolver(servers=[("127.0.0.1", self.udp.getHost().port)],
                                        reactor=reactor)
        self.applied = []

    def on_map(self, nm):
        """What the per-account runtime does with a map (the DNS part)."""
        net = netmap.convert(nm)
        zones = account_zones(net, ["myapp.eu.proxy.netbird.io"])
        self.factory.replace_zones(zones, serial=net.serial & 0xFFFFFFFF)
        self.applied.append(net)

    @defer.inlineCallbacks
    def test_network_map_zones_are_served_and_follow_roster_changes(self):
        c = PeerChannelClient(reactor, f"http://127.0.0.1:{self.mgmt.port}", self.private,
                              self.on_map, backoff=fast_backoff())
        self.addCleanup(c.stop)
        c.start()
        yield wait_for(lambda: self.applied, "first map applied")
        answers, _, _ = yield self.resolver.lookupAddress("myapp.eu.proxy.netbird.io")
        assert [(a.ttl, a.payload.dottedQuad()) for a in answers] == [(5, "100.64.0.99")]
        answers, _, _ = yield self.resolver.lookupAddress("laptop.netbird.test")
        assert [a.payload.dottedQuad() for a in answers] == ["100.64.0.10"]
        with self.assertRaises(error.DNSNameError):  # not a remote peer of the proxy yet
            yield self.resolver.lookupAddress("desktop.netbird.test")
        with self.assertRaises(error.DNSQueryRefusedError):
            yield self.resolver.lookupAddress("www.example.com")
        yield deferToThread(self.store.groups.update, dataclasses.replace(
            self.group, peers=(self.laptop.id, self.desktop.id)))
        yield wait_for(lambda: len(self.applied[-1].roster) == 2, "map with the new member")
        answers, _, _ = yield self.resolver.lookupAddress("desktop.netbird.test")
        assert [(a.ttl, a.payload.dottedQuad()) for a in answers] == [(300, "100.64.0.11")]
