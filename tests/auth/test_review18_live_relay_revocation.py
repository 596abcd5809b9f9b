"""Review 18 (sec18): revocation must reach a private L4 relay that is already open.

The private gate is asked once per TCP connection (UDP session) of a private
L4 service (``nbgateway.l4.router``: state ``gate`` before the dial).  When a
service's access groups change (or a peer leaves one of them through the
peer API) management tells the gateway only by pushing a network map for the
account's proxy peer (the access digest changed; the service's mapping does
not carry its access groups, so no mapping update comes); the gateway then
only evicts the account's cached ValidateTunnelPeer answers
(``GatewayService._account_network``).  A relay opened before is never asked
again: an SSH session through a private TCP service keeps running after its
peer lost access, for as long as it keeps traffic flowing (the idle timeout
is the only bound), whenever the peer stays in the gateway's roster (it still
reaches another private service of the account, or is a service's target).
The netstack filter does not help: it checks new flows only ("tearing down
connections when the ACL changes is the ACL owner's job").

(A user blocked or deleted, or a group losing members through the group API,
is different in practice: management then rewrites every service of the
account (``revoke_sessions_in``) and the mapping updates close all of the
account's relays, the allowed ones too.)

Real GatewayService fed by the fake management, a fake peer channel (as
tests/mgmt/test_netmap_evicts_cache.py) and fake transports on the account's
private L4 router (tests/l4/fakes.py); the relay's upstream is a recording
endpoint.  Pinned: after the map that carries the revocation, the revoked
peer's relay (session) is closed, one of a peer that is still allowed stays
open, and another account's relay from the same tunnel address is not touched.
"""

from __future__ import annotations

import ipaddress
from typing import ClassVar

from twisted.internet import defer, reactor
from twisted.internet.address import IPv4Address
from twisted.internet.task import deferLater
from twisted.trial import unittest

from nbgateway._proto import proxy_service_pb2 as pb
from nbgateway.mgmt.netmap import AccountNetwork, RosterPeer
from nbgateway.wireguard.keys import generate_private_key, key_to_base64, public_key
from tests.l4.fakes import Endpoint, Transport
from tests.test_service import start_gateway

REVOKED = "100.64.0.10"  # the peer that loses access to the service
STAYS = "100.64.0.11"  # a peer that keeps its access
PORT = 2222
UDP_PORT = 5353


class Channel:
    """The account runtime's peer channel: the test delivers maps itself."""

    by_account: ClassVar[dict] = {}

    def __init__(self, account_id, private_key, on_map):
        self.account_id = account_id
        self.on_map = on_map
        Channel.by_account[account_id] = self

    def start(self):
        pass

    def stop(self):
        pass


_KEYS = {ip: public_key(generate_private_key()) for ip in (REVOKED, STAYS)}


def network(serial: int) -> AccountNetwork:
    """The account's map: both peers stay in the roster (each still reaches
    another private service of the account)."""
    return AccountNetwork(
        serial=serial, address=ipaddress.ip_interface("100.64.0.1/10"),
        roster=tuple(RosterPeer(key_to_base64(k), k, (ipaddress.ip_network(f"{ip}/32"),))
                     for ip, k in _KEYS.items()))


def ssh_mapping(account: str) -> pb.ProxyMapping:
    m = pb.ProxyMapping(type=pb.UPDATE_TYPE_CREATED, id=f"ssh-{account}", account_id=account,
                        domain=f"ssh.{account}.example", mode="tcp", listen_port=PORT,
                        private=True, auth_token="tok")
    m.path.add(target="10.0.0.5:22")
    return m


def dns_mapping(account: str) -> pb.ProxyMapping:
    """A private UDP service (the same gate, per session)."""
    m = pb.ProxyMapping(type=pb.UPDATE_TYPE_CREATED, id=f"udp-{account}", account_id=account,
                        domain=f"udp.{account}.example", mode="udp", listen_port=UDP_PORT,
                        private=True, auth_token="tok")
    m.path.add(target="10.0.0.5:5353")
    return m


class Upstream:
    """A UDP service's upstream socket (records writes)."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.stopped = False

    def write(self, data: bytes) -> None:
        self.sent.append(data)

    def stopListening(self) -> None:
        self.stopped = True


class LiveRelayRevocationTests(unittest.TestCase):
    @defer.inlineCallbacks
    def setUp(self):
        Channel.by_account = {}
        self.svc, self.mgmt = start_gateway(self, Channel, private=True)
        yield self.mgmt.snapshot([ssh_mapping("a"), ssh_mapping("b"), dns_mapping("a")])
        for account in ("a", "b"):
            yield Channel.by_account[account].on_map(network(1))
            for ip in (REVOKED, STAYS):
                self.mgmt.allow_tunnel_peer(ip, f"ssh.{account}.example")
                self.mgmt.allow_tunnel_peer(ip, f"udp.{account}.example")
        self.upstream = Endpoint()

    @defer.inlineCallbacks
    def tearDown(self):
        yield self.svc.stopService()
        yield deferLater(reactor, 0, lambda: None)

    def open_relay(self, account: str, ip: str) -> Transport:
        """A peer's connection to the account's private SSH port, gated and
        relayed to the (recording) upstream; the client's transport."""
        router = self.svc.l4.private[(account, PORT)]
        router.dial = lambda target: self.upstream  # no real dial
        proto = router.buildProtocol(IPv4Address("TCP", ip, 40000))
        client = Transport(peer=(ip, 40000), host=("100.64.0.1", PORT))
        proto.makeConnection(client)
        self.assertEqual(proto.state, "dialing", "the gate allowed the peer")
        self.upstream.complete()
        self.assertIsNotNone(proto.relay)
        self.assertFalse(client.aborted)
        return client

    @defer.inlineCallbacks
    def test_an_open_relay_is_closed_when_its_peer_loses_access(self):
        revoked = self.open_relay("a", REVOKED)
        kept = self.open_relay("a", STAYS)
        other = self.open_relay("b", REVOKED)  # the same address in another account
        # account a's admin takes REVOKED's group out of the SSH service's access
        # groups: management answers not_in_group from now on and pushes a map
        # (same roster, new digest) to account a's proxy peer
        self.mgmt.tunnel_peers[(REVOKED, "ssh.a.example")] = pb.ValidateTunnelPeerResponse(
            valid=False, denied_reason="not_in_group")
        yield Channel.by_account["a"].on_map(network(2))
        yield deferLater(reactor, 0, lambda: None)
        # a new connection of the peer is refused (the cache was evicted) ...
        router = self.svc.l4.private[("a", PORT)]
        proto = router.buildProtocol(IPv4Address("TCP", REVOKED, 40001))
        fresh = Transport(peer=(REVOKED, 40001), host=("100.64.0.1", PORT))
        proto.makeConnection(fresh)
        self.assertTrue(fresh.aborted or fresh.disconnecting, "a new connection is refused")
        # ... and the one it opened before must not keep running
        self.assertTrue(revoked.aborted or revoked.disconnecting,
                        "the peer's open relay survived the revocation")
        self.assertFalse(kept.aborted or kept.disconnecting, "a still-allowed relay stays")
        self.assertFalse(other.aborted or other.disconnecting,
                         "another account's relay is not touched")

    @defer.inlineCallbacks
    def test_an_open_udp_session_ends_when_its_peer_loses_access(self):
        service = self.svc.l4.udp.services["udp-a"]
        service.open_upstream = lambda target, protocol: Upstream()
        service.transport = None  # replies are not looked at here
        service.datagramReceived(b"q1", (REVOKED, 40000))
        service.datagramReceived(b"q1", (STAYS, 40000))
        yield deferLater(reactor, 0, lambda: None)
        revoked, kept = service.sessions[(REVOKED, 40000)], service.sessions[(STAYS, 40000)]
        self.assertEqual((revoked.state, kept.state), ("open", "open"))
        self.mgmt.tunnel_peers[(REVOKED, "udp.a.example")] = pb.ValidateTunnelPeerResponse(
            valid=False, denied_reason="not_in_group")
        yield Channel.by_account["a"].on_map(network(2))
        yield deferLater(reactor, 0, lambda: None)
        service.datagramReceived(b"q2", (REVOKED, 40000))  # the session keeps sending
        self.assertEqual(revoked.state, "closed",
                         "the peer's UDP session survived the revocation")
        self.assertNotIn(b"q2", revoked.upstream.sent if revoked.upstream else [])
        self.assertEqual(kept.state, "open", "a still-allowed session stays")


class UpgradedConnectionsRevalidatedTests(unittest.TestCase):
    """A map push for an account also asks the gate again for the account's
    upgraded (WebSocket) connections (UpgradeRelay.revalidate, tested in
    tests/proxy/test_upgrade_revalidate.py), with the gateway's private gate."""

    @defer.inlineCallbacks
    def test_a_map_push_revalidates_the_accounts_upgrades(self):
        Channel.by_account = {}
        svc, mgmt = start_gateway(self, Channel, private=True)
        self.addCleanup(svc.stopService)
        yield mgmt.snapshot([ssh_mapping("a"), ssh_mapping("b")])
        asked = []
        svc.proxy.upgrades.revalidate = lambda account, gate: asked.append((account, gate))
        yield Channel.by_account["a"].on_map(network(1))
        self.assertEqual(asked, [("a", svc.gate)])
