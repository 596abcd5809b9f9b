"""review15 pins: UDP session tables between hostile tenants.

A flood of source ports from account A's clients (on both of A's services)
is refused at A's per-service and per-account bounds without evicting or
blocking account B's sessions; replies go back only to the session's own
client; A's slots come back after the idle sweep.  A private session whose
gate answer arrives after its service was removed, or after the session
ended, opens no upstream and holds no slot.  All pass on main.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from nbgateway.l4.stats import L4Stats
from nbgateway.l4.target import target_from_mapping
from nbgateway.l4.udp import UDPService
from tests.l4.fakes import mapping
from tests.l4.test_udp import FakeSocket


def _service(sid, account, counts, clock, opened, *, private=False, gate=None,
             max_sessions=8, max_account_sessions=12, burst=1000.0):
    def open_upstream(target, protocol):
        sock = FakeSocket()
        sock.protocol = protocol
        sock.account = target.account_id
        opened.append(sock)
        return sock

    svc = UDPService(target_from_mapping(mapping(mode="udp", sid=sid, account=account,
                                                 private=private)),
                     clock=clock, stats=L4Stats(), open_upstream=open_upstream, gate=gate,
                     max_sessions=max_sessions, burst=burst, rate=burst,
                     account_sessions=counts, max_account_sessions=max_account_sessions)
    svc.transport = FakeSocket()
    svc.listening = FakeSocket()
    return svc


def test_a_source_port_flood_of_one_tenant_neither_evicts_nor_blocks_another():
    clock, counts, opened = Clock(), {}, []
    a1 = _service("a1", "A", counts, clock, opened)
    a2 = _service("a2", "A", counts, clock, opened)
    b = _service("b", "B", counts, clock, opened)
    b.datagramReceived(b"hello", ("198.51.100.5", 5353))
    b_session = b.sessions[("198.51.100.5", 5353)]
    for svc in (a1, a2):
        for port in range(1024, 1024 + 500):  # one client IP, many source ports
            svc.datagramReceived(b"x", ("203.0.113.9", port))
    assert len(a1.sessions) == 8 and len(a2.sessions) == 4 and counts["A"] == 12
    assert a1.stats.udp_session_limit_hits > 0 and a2.stats.udp_account_limit_hits > 0
    # B's session is untouched and B still opens new ones
    assert b.sessions[("198.51.100.5", 5353)] is b_session and b_session.state == "open"
    b.datagramReceived(b"again", ("198.51.100.6", 5353))
    assert len(b.sessions) == 2 and counts["B"] == 2
    # a reply on B's upstream goes to B's client only
    b_session.upstream.protocol.datagramReceived(b"answer", ("10.0.0.2", 53))
    assert b.transport.sent == [(b"answer", ("198.51.100.5", 5353))]
    assert all(not s.transport.sent for s in (a1, a2))
    assert {s.account for s in opened} == {"A", "B"}
    assert sum(1 for s in opened if s.account == "B") == 2
    # A's flood ages out; its slots come back
    b_session.last = clock.seconds() + 29  # B keeps talking
    clock.advance(30)
    a1.sweep()
    a2.sweep()
    assert a1.sessions == {} and a2.sessions == {} and "A" not in counts
    a1.datagramReceived(b"x", ("203.0.113.9", 9999))
    assert len(a1.sessions) == 1 and counts["A"] == 1


def test_a_late_gate_answer_opens_nothing_for_a_removed_service_or_ended_session():
    clock, counts, opened = Clock(), {}, []
    pending: list[Deferred] = []

    def gate(target, ip):
        d: Deferred = Deferred()
        pending.append(d)
        return d

    svc = _service("p", "A", counts, clock, opened, private=True, gate=gate)
    svc.datagramReceived(b"q1", ("100.64.0.2", 1000))
    svc.datagramReceived(b"q2", ("100.64.0.3", 1000))
    assert counts == {"A": 2} and len(pending) == 2
    svc.close("route_removed")  # the service goes while both gates are pending
    assert counts == {} and svc.queued_bytes == 0
    for d in pending:
        d.callback((True, "", "user", ()))
    assert opened == [] and svc.sessions == {} and counts == {}
    # an idle-ended session's late answer likewise
    svc2 = _service("p2", "A", counts, clock, opened, private=True, gate=gate)
    svc2.datagramReceived(b"q", ("100.64.0.4", 1000))
    clock.advance(31)
    svc2.sweep()
    assert svc2.sessions == {} and counts == {}
    pending[-1].callback((True, "", "user", ()))
    assert opened == [] and counts == {}
