"""The per-stack (per-account) bound on concurrent TCP connections: SYNs and
SYN-cookie ACKs beyond it are reset and counted, outgoing connects fail,
TIME-WAIT does not count, and the bound reaches the TCP layer from
:class:`~nbgateway.netstack.stack.Stack` (task.Clock, two fake stacks)."""

from __future__ import annotations

import ipaddress

from twisted.internet import error
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher

from nbgateway.netstack import stack as stack_mod
from nbgateway.netstack import tcp as tcp_mod
from nbgateway.netstack.endpoints import TunnelClientEndpoint, TunnelServerEndpoint
from nbgateway.netstack.stack import Stack
from nbgateway.netstack.tcp_wire import ACK, RST, SYN, build_segment

from .tcp_fakes import A4, B4, RecordingUser, listen_recording, make_pair
from .test_transport import Collect, factory_of

M = 0xFFFFFFFF


def limited_pair(limit: int):
    clock, a, b, w = make_pair()
    b.tcp.max_connections = limit
    servers: list = []
    TunnelServerEndpoint(b.tcp, 80).listen(factory_of(Collect, servers))
    return clock, a, b, w, servers


def dial(a, results: list, clients: list) -> None:
    TunnelClientEndpoint(a.tcp, str(B4), 80, timeout=10).connect(
        factory_of(Collect, clients)).addBoth(results.append)


def test_fourth_connection_refused_then_accepted_after_one_closes():
    _clock, a, b, w, servers = limited_pair(3)
    results: list = []
    clients: list = []
    for _ in range(4):
        dial(a, results, clients)
    w.run(until=lambda: len(results) == 4, max_time=5)
    assert len(servers) == 3 and len(clients) == 3
    refused = [r for r in results if r not in clients]
    assert len(refused) == 1 and refused[0].check(error.ConnectionRefusedError)
    assert b.counters["drop_tcp_conn_limit"] == 1
    assert len(b.tcp.conns) == 3
    # the three accepted connections keep working
    for c in clients:
        c.transport.write(b"still here")
    w.run(until=lambda: all(bytes(s.data) == b"still here" for s in servers), max_time=5)
    assert all(bytes(s.data) == b"still here" for s in servers)
    # the client closes one: the server's side ends (LAST-ACK -> CLOSED) and
    # a new connection is accepted
    clients[0].transport.loseConnection()
    w.run(until=lambda: servers[0].lost is not None and len(b.tcp.conns) == 2, max_time=5)
    assert len(b.tcp.conns) == 2
    dial(a, results, clients)
    w.run(until=lambda: len(results) == 5, max_time=5)
    assert results[-1] is clients[-1] and len(servers) == 4
    assert b.counters["drop_tcp_conn_limit"] == 1


def test_syn_at_the_limit_is_answered_with_rst_ack():
    _clock, _a, b, _w = make_pair()
    b.tcp.max_connections = 1
    listen_recording(b, 80)
    b.inject(A4, B4, build_segment(40000, 80, 100, 0, SYN, 65535))
    (synack,) = b.take()
    assert synack.flags == SYN | ACK and len(b.tcp.conns) == 1  # half-open counts
    b.inject(A4, B4, build_segment(40001, 80, 5000, 0, SYN, 65535))
    (rst,) = b.take()
    assert rst.flags == RST | ACK and rst.ack == 5001 and rst.dport == 40001
    assert len(b.tcp.conns) == 1 and b.counters["drop_tcp_conn_limit"] == 1
    assert b.counters["tcp_rst_sent"] == 1


def test_syn_cookie_ack_at_the_limit_is_reset_and_accepted_below_it():
    _clock, _a, b, _w = make_pair()
    b.tcp.max_connections = 2
    _, acc = listen_recording(b, 80, max_half_open=1)
    # p1 takes the only half-open slot; p2 gets a cookie
    b.inject(A4, B4, build_segment(41001, 80, 1000, 0, SYN, 65535))
    (synack1,) = b.take()
    b.inject(A4, B4, build_segment(41002, 80, 2000, 0, SYN, 65535))
    (cookie,) = b.take()
    assert cookie.flags == SYN | ACK and b.counters["tcp_syncookies_sent"] == 1
    assert len(b.tcp.conns) == 1
    # p1 completes (1 connection), p3 takes the freed half-open slot (2)
    b.inject(A4, B4, build_segment(41001, 80, 1001, synack1.seq + 1, ACK, 65535))
    b.inject(A4, B4, build_segment(41003, 80, 3000, 0, SYN, 65535))
    (synack3,) = b.take()
    assert synack3.flags == SYN | ACK and len(acc) == 1 and len(b.tcp.conns) == 2
    # p2's valid cookie ACK would make a third: reset, counted, no state
    cookie_ack = build_segment(41002, 80, 2001, (cookie.seq + 1) & M, ACK, 65535)
    b.inject(A4, B4, cookie_ack)
    (rst,) = b.take()
    assert rst.flags == RST and rst.seq == (cookie.seq + 1) & M
    assert b.counters["drop_tcp_conn_limit"] == 1 and b.counters["tcp_syncookies_ok"] == 0
    assert b.counters["tcp_syncookies_failed"] == 0 and len(b.tcp.conns) == 2 and len(acc) == 1
    # p3 resets its half-open connection: below the bound, the cookie ACK completes
    b.inject(A4, B4, build_segment(41003, 80, 3001, 0, RST, 0))
    assert len(b.tcp.conns) == 1
    b.inject(A4, B4, cookie_ack)
    assert b.take() == [] and b.counters["tcp_syncookies_ok"] == 1
    assert len(acc) == 2 and acc[1].conn.state_name == "ESTABLISHED"
    assert b.counters["drop_tcp_conn_limit"] == 1


def test_a_forged_cookie_ack_at_the_limit_counts_as_a_failed_cookie():
    _clock, _a, b, _w = make_pair()
    b.tcp.max_connections = 1
    listen_recording(b, 80, max_half_open=1)
    b.inject(A4, B4, build_segment(41001, 80, 1000, 0, SYN, 65535))
    b.inject(A4, B4, build_segment(41002, 80, 2000, 0, SYN, 65535))  # refused: at the limit
    b.take()
    b.tcp.listeners[(None, 80)].last_overflow = b.clock.seconds()  # cookies outstanding
    b.inject(A4, B4, build_segment(41009, 80, 9, 12345, ACK, 65535))
    (rst,) = b.take()
    assert rst.flags == RST and b.counters["tcp_syncookies_failed"] == 1
    assert b.counters["drop_tcp_conn_limit"] == 1


def test_outgoing_connections_count_and_connect_fails_at_the_limit():
    _clock, a, b, w = make_pair()
    a.tcp.max_connections = 2
    listen_recording(b, 443)
    users = [RecordingUser(), RecordingUser()]
    for u in users:
        a.tcp.connect(B4, 443, u)
    w.run(until=lambda: all(u.established for u in users), max_time=5)
    try:
        a.tcp.connect(B4, 443, RecordingUser())
    except error.ConnectError as e:
        assert "limit" in str(e)
    else:
        raise AssertionError("connect beyond the limit succeeded")
    assert a.counters["tcp_connect_limit"] == 1 and len(a.tcp.conns) == 2
    # the endpoint turns it into a failed Deferred
    results: list = []
    TunnelClientEndpoint(a.tcp, str(B4), 443).connect(Factory()).addErrback(results.append)
    assert results and results[0].check(error.ConnectError)
    # and inbound SYNs are refused while the outgoing ones hold the bound
    listen_recording(a, 80)
    a.inject(B4, A4, build_segment(50000, 80, 7, 0, SYN, 65535))
    (rst,) = a.take()
    assert rst.flags == RST | ACK and a.counters["drop_tcp_conn_limit"] == 1


def _two_server_closed_connections(a, b, w, acc) -> None:
    """Two connections from ``a``, which ``b``'s side closes first (so it
    ends them in TIME-WAIT), then the client."""
    users = [RecordingUser(), RecordingUser()]
    conns = [a.tcp.connect(B4, 80, u) for u in users]
    w.run(until=lambda: all(u.established for u in users), max_time=5)
    assert all(u.established for u in users)
    for srv in acc[-2:]:
        srv.conn.close(b.clock.seconds())
    w.run(until=lambda: all(u.eof for u in users), max_time=5)
    for conn in conns:
        conn.close(a.clock.seconds())
    w.run(until=lambda: all(u.closed for u in users), max_time=5)


def test_time_wait_does_not_count():
    _clock, a, b, w = make_pair()
    b.tcp.max_connections = 2
    _, acc = listen_recording(b, 80)
    for round_ in range(3):
        _two_server_closed_connections(a, b, w, acc)
        assert len(b.tcp.time_wait) == 2 * (round_ + 1)
    assert len(b.tcp.time_wait) == 6 and len(b.tcp.conns) == 6
    assert b.counters["drop_tcp_conn_limit"] == 0 and not b.tcp.at_connection_limit()


def test_the_limit_is_logged_at_most_once_a_minute():
    clock, _a, b, _w = make_pair()
    b.tcp.max_connections = 1
    listen_recording(b, 80)
    events: list = []
    observer = events.append
    globalLogPublisher.addObserver(observer)
    try:
        for port in range(40000, 40004):
            b.inject(A4, B4, build_segment(port, 80, 1, 0, SYN, 65535))
        clock.advance(61)
        b.inject(A4, B4, build_segment(40010, 80, 1, 0, SYN, 65535))
    finally:
        globalLogPublisher.removeObserver(observer)
    warned = [e for e in events if e.get("limit") == 1 and "refused" in e]
    assert [e["refused"] for e in warned] == [1, 4]
    assert warned[0]["addresses"] == str(B4)


def test_the_stack_passes_its_bound_to_the_tcp_layer():
    clock = Clock()
    sent: list = []

    class Sender:
        def sendPackets(self, packets, peer=None):
            sent.extend(packets)

    assert tcp_mod.DEFAULT_MAX_CONNECTIONS == stack_mod.DEFAULT_MAX_TCP_CONNECTIONS == 16384
    st = Stack(Sender(), clock, ["100.64.0.1"])
    assert st.tcp.max_connections == 16384
    st = Stack(Sender(), clock, ["100.64.0.1"], max_tcp_connections=5)
    assert st.tcp.max_connections == 5
    assert tcp_mod.TCPLayer(st, max_connections=0).max_connections == 1  # never zero
    assert ipaddress.ip_address("100.64.0.1") in st.addresses


def test_real_stacks_refuse_beyond_the_bound_and_metrics_export_the_drop():
    """Two real Stacks on a MemoryLink: the RST leaves through the IP layer,
    the client endpoint fails with ConnectionRefusedError, and the scrape
    shows nbgateway_netstack_drops_total{reason="tcp_conn_limit"}."""
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from nbgateway.netstack.testing import make_stack_pair, run_until
    from nbgateway.observe.metrics import GatewayMetrics

    clock = Clock()
    a, b, _link = make_stack_pair(clock, ("100.64.0.1",), ("100.64.0.2",),
                                  stack_kwargs={"max_tcp_connections": 2})
    a.tcp.max_connections = 100  # the client's own bound is not the one under test
    servers: list = []
    TunnelServerEndpoint(b, 80).listen(factory_of(Collect, servers))
    results: list = []
    clients: list = []
    for _ in range(3):
        TunnelClientEndpoint(a, "100.64.0.2", 80, timeout=10).connect(
            factory_of(Collect, clients)).addBoth(results.append)
    assert run_until(clock, lambda: len(results) == 3 and len(servers) == 2, timeout=10)
    assert len(servers) == 2 and len(clients) == 2
    assert [r.check(error.ConnectionRefusedError) for r in results if r not in clients] == [
        error.ConnectionRefusedError]
    metrics = GatewayMetrics()
    metrics.add_account("acct", stacks=[b])
    text = generate_latest(metrics.registry).decode()
    drops = {s.labels.get("reason"): s.value for f in text_string_to_metric_families(text)
             for s in f.samples if s.name == "nbgateway_netstack_drops_total"}
    assert drops["tcp_conn_limit"] == 1
    for c in clients:
        c.transport.abortConnection()
    run_until(clock, lambda: False, timeout=1)
