"""UDP relay sessions with task.Clock and fake sockets."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from nbgateway.l4.stats import L4Stats
from nbgateway.l4.target import target_from_mapping
from nbgateway.l4.udp import TokenBucket, UDPService
from tests.l4.fakes import mapping


class FakeSocket:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, object]] = []
        self.stopped = False

    def write(self, data, addr=None):
        self.sent.append((data, addr))

    def stopListening(self):
        self.stopped = True

    def getHost(self):
        return "fake"


def make(private=False, gate=None, **kw):
    clock = Clock()
    opened = []

    def open_upstream(target, protocol):
        sock = FakeSocket()
        sock.protocol = protocol
        opened.append(sock)
        return sock

    ended = []
    svc = UDPService(target_from_mapping(mapping(mode="udp", private=private)), clock=clock,
                     stats=L4Stats(), open_upstream=open_upstream, gate=gate,
                     on_session_end=ended.append, **kw)
    svc.transport = FakeSocket()
    return svc, clock, opened, ended


def test_token_bucket():
    b = TokenBucket(50, 100, 0.0)
    assert sum(b.take(0.0) for _ in range(150)) == 100
    assert sum(b.take(1.0) for _ in range(100)) == 50


def test_sessions_keyed_by_client_and_replies_go_back():
    svc, _clock, opened, _ = make()
    svc.datagramReceived(b"q1", ("192.0.2.1", 1000))
    svc.datagramReceived(b"q2", ("192.0.2.1", 1000))
    svc.datagramReceived(b"q3", ("192.0.2.2", 1000))
    assert len(opened) == 2
    assert [d for d, _ in opened[0].sent] == [b"q1", b"q2"]
    opened[1].protocol.datagramReceived(b"r3", ("127.0.0.1", 9000))
    assert svc.transport.sent == [(b"r3", ("192.0.2.2", 1000))]


def test_session_bound_and_rate():
    svc, _clock, _opened, _ = make(max_sessions=3)
    for port in range(10):
        svc.datagramReceived(b"x", ("192.0.2.1", port))
    assert len(svc.sessions) == 3 and svc.stats.udp_session_limit_hits == 7
    svc2, clock2, _opened2, _ = make(max_sessions=1000)
    for port in range(150):
        svc2.datagramReceived(b"x", ("192.0.2.1", port))
    assert len(svc2.sessions) == 100 and svc2.stats.udp_rate_limit_hits == 50
    clock2.advance(1.0)
    for port in range(150, 250):
        svc2.datagramReceived(b"x", ("192.0.2.1", port))
    assert len(svc2.sessions) == 150


def test_idle_sweep_ends_sessions_with_an_entry():
    svc, clock, opened, ended = make()
    svc.listening = FakeSocket()
    svc.start_sweeping()
    svc.datagramReceived(b"x", ("192.0.2.1", 1))
    clock.pump([1.0] * 20)
    svc.datagramReceived(b"x", ("192.0.2.2", 1))
    clock.pump([1.0] * 26)  # sweeps every 15 s: at 30 s the first is 30 s idle, the second 10 s
    assert [s.client for s in ended] == [("192.0.2.1", 1)]
    assert ended[0].close_reason == "idle_timeout" and opened[0].stopped
    assert list(svc.sessions) == [("192.0.2.2", 1)]


def test_private_session_waits_for_the_gate_and_fails_closed():
    pending: dict[str, Deferred] = {}

    def gate(target, ip):
        d = pending[ip] = Deferred()
        return d

    svc, _clock, opened, ended = make(private=True, gate=gate)
    svc.datagramReceived(b"a1", ("100.64.0.2", 1))
    svc.datagramReceived(b"a2", ("100.64.0.2", 1))
    svc.datagramReceived(b"b1", ("100.64.0.3", 1))
    assert not opened
    pending["100.64.0.2"].callback((True, "", "u1", ("devs",)))
    assert [d for d, _ in opened[0].sent] == [b"a1", b"a2"]  # queued datagrams flushed
    pending["100.64.0.3"].errback(RuntimeError("rpc down"))
    assert len(opened) == 1 and ended[-1].close_reason == "gate_error"
    assert svc.stats.denied == 1


def test_pending_gate_queue_is_bounded_in_bytes_per_session_and_per_service():
    """While the private gate's RPC runs, 64 KiB datagrams from many client
    ports must not pile up: a session keeps at most MAX_QUEUED_BYTES, the
    service at most MAX_QUEUED_BYTES_SERVICE over all its pending sessions
    (before: 16 datagrams per session, up to 1 MiB each session)."""
    from nbgateway.l4 import udp

    pending: list[Deferred] = []

    def gate(target, ip):
        d = Deferred()
        pending.append(d)
        return d

    svc, _clock, opened, _ = make(private=True, gate=gate)
    big = b"x" * 60000
    for _ in range(16):
        svc.datagramReceived(big, ("100.64.0.2", 1))
    first = svc.sessions[("100.64.0.2", 1)]
    assert len(first.queue) == 1 and first.queued_bytes == 60000
    for port in range(2, 80):  # the rate bucket allows 100 new sessions at once
        for _ in range(4):
            svc.datagramReceived(big, ("100.64.0.2", port))
    held = sum(len(d) for s in svc.sessions.values() for d in s.queue)
    assert held == svc.queued_bytes <= udp.MAX_QUEUED_BYTES_SERVICE
    assert svc.stats.udp_queue_drops == 16 + 78 * 4 - held // 60000
    # an allowed session flushes its queue and gives its bytes back
    pending[0].callback((True, "", "u1", ()))
    assert [len(d) for d, _ in opened[0].sent] == [60000]
    assert first.queued_bytes == 0
    # a denied session gives its bytes back to the service's budget
    before = svc.queued_bytes
    second = svc.sessions[("100.64.0.2", 2)]
    n = second.queued_bytes
    pending[1].callback((False, "denied", "", ()))
    assert svc.queued_bytes == before - n
    # closing every session returns the whole budget
    svc.close("shutdown")
    assert svc.queued_bytes == 0


def test_one_accounts_sessions_over_all_its_services_are_bounded():
    """Two UDP services of account A share a per-account session bound (3
    here): the fourth client is refused (counted) though each service is far
    below its own bound; account B's service is not affected; an ended
    session frees its slot.  Before, only each service was bounded."""
    counts: dict[str, int] = {}
    clock = Clock()

    def svc(sid, account):
        s = UDPService(target_from_mapping(mapping(mode="udp", sid=sid, account=account)),
                       clock=clock, stats=L4Stats(), open_upstream=lambda t, p: FakeSocket(),
                       account_sessions=counts, max_account_sessions=3)
        s.transport = FakeSocket()
        return s

    a1, a2, b1 = svc("a1", "A"), svc("a2", "A"), svc("b1", "B")
    a1.datagramReceived(b"x", ("192.0.2.1", 1))
    a1.datagramReceived(b"x", ("192.0.2.1", 2))
    a2.datagramReceived(b"x", ("192.0.2.1", 3))
    a2.datagramReceived(b"x", ("192.0.2.1", 4))
    assert len(a1.sessions) + len(a2.sessions) == 3 and counts == {"A": 3}
    assert a2.stats.udp_account_limit_hits == 1
    b1.datagramReceived(b"x", ("192.0.2.1", 5))
    assert len(b1.sessions) == 1 and counts == {"A": 3, "B": 1}
    a1.close("route_removed")
    assert counts == {"A": 1, "B": 1}
    a2.datagramReceived(b"x", ("192.0.2.1", 4))
    assert len(a2.sessions) == 2


def test_an_upstream_that_cannot_be_opened_ends_the_session_public_or_gated():
    """Public (at the first datagram) and private (after the gate allows):
    the session ends ``dial_failed``, counted once each, nothing sent."""

    def refuse(target, protocol):
        raise OSError("no route")

    svc = UDPService(target_from_mapping(mapping(mode="udp")), clock=Clock(), stats=L4Stats(),
                     open_upstream=refuse, gate=None, on_session_end=(ended := []).append)
    svc.transport = FakeSocket()
    svc.datagramReceived(b"q", ("192.0.2.1", 1000))
    assert svc.sessions == {} and [s.close_reason for s in ended] == ["dial_failed"]
    assert svc.stats.dial_failures == 1

    pending = Deferred()
    gated = UDPService(target_from_mapping(mapping(mode="udp", private=True)), clock=Clock(),
                       stats=L4Stats(), open_upstream=refuse, gate=lambda t, ip: pending,
                       on_session_end=(gated_ended := []).append)
    gated.transport = FakeSocket()
    gated.datagramReceived(b"q", ("100.64.0.2", 1))
    assert list(gated.sessions) == [("100.64.0.2", 1)] and not gated_ended
    pending.callback((True, "", "u1", ()))
    assert gated.sessions == {} and [s.close_reason for s in gated_ended] == ["dial_failed"]
    assert gated.stats.dial_failures == 1 and gated.stats.denied == 0
    assert svc.transport.sent == [] and gated.transport.sent == []
