"""Upgraded (WebSocket) connections of private services are gated again
when their account's access changes (:meth:`UpgradeRelay.revalidate`).

The private gate is asked once for the upgrade request; a revocation (a peer
out of the service's access groups, a user blocked) reaches the gateway as a
network map for the account, after which the spliced connections of the
account's private services are asked about again: those the gate no longer
allows are closed, the allowed ones, public services' and other accounts'
stay (and are not asked about)."""

from __future__ import annotations

from twisted.internet.defer import fail, succeed
from twisted.trial import unittest

from nbgateway.auth.tunnel import GateDecision
from nbgateway.proxy.upgrade import UpgradeRelay, _Splice
from nbgateway.routes.context import RequestContext
from nbgateway.routes.paths import PathRouter
from nbgateway.routes.service import ProxyService, ServiceEntry


class _Transport:
    def __init__(self) -> None:
        self.lost = False

    def loseConnection(self) -> None:
        self.lost = True


class _Req:
    finished = False
    _disconnected = False
    sentLength = 0

    def finish(self) -> None:
        self.finished = True


class _Side:
    def __init__(self) -> None:
        self.transport = _Transport()


class _Gate:
    """Allows every address but the revoked ones; records what it was asked."""

    def __init__(self, revoked: set[str], error: bool = False) -> None:
        self.revoked = revoked
        self.error = error
        self.asked: list[dict] = []

    def check(self, **kw):
        self.asked.append(kw)
        if self.error:
            return fail(RuntimeError("gate failed"))
        return succeed(GateDecision(kw["client_ip"] not in self.revoked,
                                    "not_in_group" if kw["client_ip"] in self.revoked else ""))


def _splice(relay: UpgradeRelay, account: str, ip: str, private: bool = True) -> _Splice:
    service = ProxyService(account_id=account, domain=f"ws.{account}.example",
                           router=PathRouter([]))
    entry = ServiceEntry(service=service, private=private, restrictions=None,
                         has_schemes=False, session_max_age=0)
    ctx = RequestContext(source_ip=ip, listener_account=account if private else None,
                         entry=entry, service=service)
    splice = _Splice(relay, service.domain, _Req(), _Side(), ctx)
    splice.client_transport = _Transport()
    relay.track(splice)
    return splice


def _closed(splice: _Splice) -> bool:
    return splice.client_transport.lost and splice.upstream.transport.lost


class RevalidateTests(unittest.TestCase):
    def test_revoked_connections_close_and_others_stay(self):
        relay = UpgradeRelay(proxy=None)
        revoked = _splice(relay, "a", "100.64.0.10")
        kept = _splice(relay, "a", "100.64.0.11")
        other = _splice(relay, "b", "100.64.0.10")  # same address, another account
        public = _splice(relay, "a", "203.0.113.7", private=False)
        gate = _Gate({"100.64.0.10"})
        self.assertEqual(relay.revalidate("a", gate), 2)
        self.assertTrue(_closed(revoked), "the revoked peer's WebSocket survived")
        self.assertFalse(_closed(kept) or _closed(other) or _closed(public))
        self.assertEqual(sorted(a["client_ip"] for a in gate.asked),
                         ["100.64.0.10", "100.64.0.11"])
        self.assertEqual({(a["listener_account"], a["mapping_account"], a["domain"])
                          for a in gate.asked}, {("a", "a", "ws.a.example")})

    def test_a_failing_gate_closes(self):
        relay = UpgradeRelay(proxy=None)
        splice = _splice(relay, "a", "100.64.0.11")
        relay.revalidate("a", _Gate(set(), error=True))
        self.assertTrue(_closed(splice), "in doubt the connection is closed")

    def test_a_splice_without_context_is_not_asked(self):
        relay = UpgradeRelay(proxy=None)
        splice = _Splice(relay, "ws.a.example", object(), _Side())
        splice.client_transport = _Transport()
        relay.track(splice)
        gate = _Gate({"100.64.0.10"})
        self.assertEqual(relay.revalidate("a", gate), 0)
        self.assertFalse(_closed(splice))


class AccountShareTests(unittest.TestCase):
    """Spliced connections per account are counted (a share of the process's
    descriptors bounds them, :mod:`nbgateway.dial.fdbudget`)."""

    def test_counted_per_account_and_released(self):
        relay = UpgradeRelay(proxy=None, max_per_account=2)
        a1, a2 = _splice(relay, "a", "100.64.0.10"), _splice(relay, "a", "100.64.0.11")
        _splice(relay, "b", "100.64.0.10")
        self.assertEqual((relay.account_active("a"), relay.account_active("b")), (2, 1))
        relay.track(a1)  # tracked twice: counted once
        self.assertEqual(relay.account_active("a"), 2)
        a1.closed("client")
        a2.closed("upstream")
        a2.closed("client")  # twice: released once
        self.assertEqual((relay.account_active("a"), relay.account_active("b")), (0, 1))
        self.assertNotIn("a", relay._accounts)

    def test_an_account_at_its_share_is_overloaded(self):
        relay = UpgradeRelay(proxy=None, max_per_account=1)
        _splice(relay, "a", "100.64.0.10")
        sent = []

        class _Request:
            channel = type("C", (), {"take_over": lambda self, p: None})()

        import nbgateway.proxy.upgrade as upgrade

        original = upgrade.pages.send_page
        upgrade.pages.send_page = lambda request, page, **kw: sent.append(page)
        try:
            service = ProxyService(account_id="a", domain="ws2.a.example", router=PathRouter([]))
            relay.relay(_Request(), RequestContext(service=service), None, None, None, "/", 5.0)
        finally:
            upgrade.pages.send_page = original
        self.assertEqual(sent, [upgrade.pages.SERVICE_OVERLOADED])

    def test_the_default_share_follows_the_descriptor_budget(self):
        from nbgateway.dial.fdbudget import account_share

        self.assertEqual(UpgradeRelay(proxy=None).max_per_account, account_share(per_item=2))
