"""review15 F1: a private L4 client that goes away while the private gate's
answer is pending must not be dialed afterwards (no upstream connection for a
gone client, no relay count held forever)."""

from __future__ import annotations

from twisted.internet.defer import Deferred

from tests.l4.test_router import accept, make_router, target


def test_client_gone_while_gate_pending_is_never_dialed_and_holds_nothing():
    pending: list[Deferred] = []

    def gate(t, ip):
        d: Deferred = Deferred()
        pending.append(d)
        return d

    totals: dict[str, int] = {}
    router, _clock, ep, dialed = make_router(gate=gate, account_id="A", totals=totals,
                                              max_total=2)
    router.set_route(target(private=True, account="A"))
    for i in range(3):
        proto, _client = accept(router, peer=("100.64.0.2", 1000 + i))
        assert proto.state == "gate"
        proto.connectionLost(None)  # the peer resets while ValidateTunnelPeer runs
    for d in pending:
        d.callback((True, "", "user1", ()))
    assert dialed == [] and ep.factories == []  # nobody to relay for
    assert router.account_relays == {} and totals == {}
    # the account's own next client still gets a relay
    proto, _client = accept(router, peer=("100.64.0.2", 2000))
    pending[-1].callback((True, "", "user1", ()))
    assert len(dialed) == 1 and proto.state == "dialing"
