"""TunnelTCPTransport and the endpoints, over two fake stacks on task.Clock."""

from __future__ import annotations

import os

from twisted.internet import error, interfaces
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer, verify

from nbgateway.netstack.endpoints import TunnelClientEndpoint, TunnelServerEndpoint
from nbgateway.netstack.tcp_const import RCV_BUF
from nbgateway.netstack.transport import SEND_HIGH_WATER, TunnelTCPTransport

from .tcp_fakes import A4, B4, make_pair


class Collect(Protocol):
    def __init__(self) -> None:
        self.data = bytearray()
        self.lost: Failure | None = None
        self.made = False

    def connectionMade(self) -> None:
        self.made = True

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Failure) -> None:
        self.lost = reason


class Echo(Collect):
    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        self.transport.write(data)


@implementer(interfaces.IHalfCloseableProtocol)
class HalfClose(Collect):
    """Replies with the byte count once the peer half-closes."""

    read_lost = False
    write_lost = False

    def readConnectionLost(self) -> None:
        self.read_lost = True
        self.transport.write(b"got %d" % len(self.data))
        self.transport.loseWriteConnection()

    def writeConnectionLost(self) -> None:
        self.write_lost = True


def factory_of(cls, store):
    def build(addr):
        p = cls()
        p.addr = addr
        store.append(p)
        return p

    f = Factory()
    f.buildProtocol = build
    return f


def setup(server_cls=Collect, client_cls=Collect, **pair_kw):
    clock, a, b, w = make_pair(**pair_kw)
    servers: list = []
    ports: list = []
    TunnelServerEndpoint(b.tcp, 8080, interface=str(B4)).listen(
        factory_of(server_cls, servers)).addCallback(ports.append)
    clients: list = []
    results: list = []
    TunnelClientEndpoint(a.tcp, str(B4), 8080, timeout=10).connect(
        factory_of(client_cls, clients)).addBoth(results.append)
    w.run(until=lambda: results and servers)
    assert results and results[0] is clients[0], results
    return clock, a, b, w, clients[0], servers[0], ports[0]


def test_interfaces_and_addresses():
    _clock, _a, _b, _w, cli, srv, port = setup()
    t = cli.transport
    assert isinstance(t, TunnelTCPTransport)
    for iface in (interfaces.ITCPTransport, interfaces.IPushProducer, interfaces.IConsumer):
        verify.verifyObject(iface, t)
    verify.verifyObject(interfaces.IListeningPort, port)
    assert t.getPeer().host == str(B4) and t.getPeer().port == 8080 and t.getPeer().type == "TCP"
    assert srv.transport.getPeer() == t.getHost()
    assert srv.addr == t.getHost()
    assert port.getHost().port == 8080 and port.getHost().host == str(B4)
    assert t.getTcpNoDelay() is True
    t.setTcpNoDelay(False)
    assert t.getTcpNoDelay() is False
    assert t.getTcpKeepAlive() is False
    t.setTcpKeepAlive(True)
    assert t.getTcpKeepAlive() is True


def test_echo_and_clean_close():
    _clock, a, b, w, cli, srv, _port = setup(server_cls=Echo)
    data = os.urandom(500_000)
    cli.transport.write(data[:1000])
    cli.transport.writeSequence([data[1000:2000], data[2000:]])
    w.run(until=lambda: len(cli.data) == len(data))
    assert bytes(cli.data) == data == bytes(srv.data)
    cli.transport.loseConnection()
    w.run(until=lambda: cli.lost and srv.lost)
    assert cli.lost.check(error.ConnectionDone) and srv.lost.check(error.ConnectionDone)
    # writes after close are ignored, never raise
    cli.transport.write(b"ignored")
    w.run()
    assert not a.tcp.conns and not b.tcp.conns


def test_write_rejects_str():
    _clock, _a, _b, _w, cli, _srv, _port = setup()
    try:
        cli.transport.write("text")
    except TypeError:
        pass
    else:
        raise AssertionError("str accepted")


def test_half_close_protocol():
    _clock, _a, _b, w, cli, srv, _port = setup(server_cls=HalfClose, client_cls=HalfClose)
    cli.transport.write(b"x" * 1234)
    cli.transport.loseWriteConnection()
    w.run(until=lambda: cli.lost and srv.lost)
    assert srv.read_lost and srv.write_lost and cli.write_lost and cli.read_lost
    assert bytes(cli.data) == b"got 1234"
    assert cli.lost.check(error.ConnectionDone) and srv.lost.check(error.ConnectionDone)


def test_plain_protocol_gets_connection_lost_on_peer_fin():
    _clock, _a, _b, w, cli, srv, _port = setup(client_cls=HalfClose)
    cli.transport.write(b"hello")
    cli.transport.loseWriteConnection()
    w.run(until=lambda: srv.lost)
    assert srv.lost.check(error.ConnectionDone) and bytes(srv.data) == b"hello"
    w.run(until=lambda: cli.lost)
    assert cli.read_lost and cli.lost.check(error.ConnectionDone)


def test_abort_resets_peer():
    _clock, _a, b, w, cli, srv, _port = setup()
    cli.transport.abortConnection()
    assert cli.lost.check(error.ConnectionAborted)
    w.run(until=lambda: srv.lost)
    assert srv.lost.check(error.ConnectionLost)
    assert b.counters["tcp_rst_received"] == 1


def test_pause_producing_closes_receive_window():
    _clock, a, _b, w, cli, srv, _port = setup()
    srv.transport.pauseProducing()
    data = os.urandom(3 * RCV_BUF)
    cli.transport.write(data)
    w.run(until=lambda: a.counters["tcp_window_probes"] >= 3, max_time=120)
    sconn = srv.transport.conn
    assert len(srv.data) == 0
    assert sconn.rcv_queued <= sconn.rcv_buf  # bounded by the advertised window
    assert sconn.rcv_queued >= sconn.rcv_buf - 2 * sconn.mss
    assert cli.transport.conn.snd_wnd == 0
    srv.transport.resumeProducing()
    w.run(until=lambda: len(srv.data) == len(data), max_time=300)
    assert bytes(srv.data) == data


class Streamer:
    """A streaming producer that writes until paused."""

    def __init__(self, transport, chunk=16384, total=2_000_000):
        self.t = transport
        self.chunk = chunk
        self.left = total
        self.paused = False
        self.pauses = self.resumes = 0
        self.stopped = False

    def pump(self):
        while not self.paused and self.left > 0:
            n = min(self.chunk, self.left)
            self.left -= n
            self.t.write(b"z" * n)
        if self.left == 0 and not self.paused:
            self.t.unregisterProducer()
            self.t.loseConnection()
            self.left = -1

    def pauseProducing(self):
        self.paused = True
        self.pauses += 1

    def resumeProducing(self):
        self.paused = False
        self.resumes += 1
        self.pump()

    def stopProducing(self):
        self.stopped = True


def test_streaming_producer_backpressure():
    _clock, _a, _b, w, cli, srv, _port = setup()
    prod = Streamer(cli.transport)
    cli.transport.registerProducer(prod, True)
    prod.pump()
    assert prod.paused and prod.pauses == 1
    assert cli.transport.conn.send_queued <= SEND_HIGH_WATER + prod.chunk
    w.run(until=lambda: srv.lost, max_time=300)
    assert len(srv.data) == 2_000_000 and prod.resumes >= 1
    assert srv.lost.check(error.ConnectionDone)


def test_pull_producer():
    _clock, _a, _b, w, cli, srv, _port = setup()

    class Pull:
        n = 0

        def resumeProducing(self):
            self.n += 1
            if self.n <= 20:
                cli.transport.write(b"p" * 100_000)
            else:
                cli.transport.unregisterProducer()
                cli.transport.loseConnection()

        def stopProducing(self):
            pass

    cli.transport.registerProducer(Pull(), False)
    w.run(until=lambda: srv.lost, max_time=300)
    assert len(srv.data) == 2_000_000


def test_connect_refused_and_timeout_and_cancel():
    _clock, a, _b, w = make_pair()
    results: list = []
    TunnelClientEndpoint(a.tcp, str(B4), 9, timeout=5).connect(Factory.forProtocol(Protocol)) \
        .addErrback(results.append)
    w.run(until=lambda: results)
    assert results[0].check(error.ConnectionRefusedError)

    _clock, a, _b, w = make_pair(fault=lambda d, i, s: [])
    results = []
    TunnelClientEndpoint(a.tcp, str(B4), 80, timeout=5).connect(Factory.forProtocol(Protocol)) \
        .addErrback(results.append)
    w.run(until=lambda: results)
    assert results[0].check(error.TimeoutError) and not a.tcp.conns

    results = []
    d = TunnelClientEndpoint(a.tcp, str(B4), 80).connect(Factory.forProtocol(Protocol))
    d.addErrback(results.append)
    d.cancel()
    assert results[0].check(error.ConnectingCancelledError) and not a.tcp.conns


def test_listen_twice_fails_and_stop_listening():
    _clock, a, b, w = make_pair()
    ports: list = []
    TunnelServerEndpoint(b.tcp, 80).listen(Factory.forProtocol(Protocol)).addBoth(ports.append)
    TunnelServerEndpoint(b.tcp, 80, interface=str(B4)).listen(
        Factory.forProtocol(Protocol)).addBoth(ports.append)
    assert isinstance(ports[1], Failure) and ports[1].check(error.CannotListenError)
    ports[0].stopListening()
    results: list = []
    TunnelClientEndpoint(a.tcp, str(B4), 80).connect(Factory.forProtocol(Protocol)) \
        .addErrback(results.append)
    w.run(until=lambda: results)
    assert results[0].check(error.ConnectionRefusedError)
    assert A4 in a.addresses


def test_layer_close_resets_everything():
    _clock, _a, b, w, cli, srv, port = setup()
    b.tcp.close()
    assert srv.lost.check(error.ConnectionLost) and not b.tcp.conns and not b.tcp.listeners
    w.run(until=lambda: cli.lost)
    assert cli.lost.check(error.ConnectionLost)  # the peer saw our RST
    assert port.listener.closed


def test_listen_on_port_zero_picks_a_free_port():
    _clock, a, b, w = make_pair()
    ports: list = []
    TunnelServerEndpoint(b.tcp, 0).listen(Factory.forProtocol(Echo)).addCallback(ports.append)
    port = ports[0].getHost().port
    assert 49152 <= port <= 65535
    got: list = []

    class Hi(Protocol):
        def connectionMade(self):
            self.transport.write(b"hi")

        def dataReceived(self, data):
            got.append(data)

    TunnelClientEndpoint(a.tcp, str(B4), port).connect(Factory.forProtocol(Hi))
    w.run(until=lambda: got)
    assert got == [b"hi"]


def test_paused_listener_bounded_accept_backlog():
    _clock, a, b, w = make_pair()
    servers: list = []
    ports: list = []
    TunnelServerEndpoint(b.tcp, 8081, backlog=3).listen(factory_of(Collect, servers)) \
        .addCallback(ports.append)
    ports[0].pauseAccepting()
    clients: list = []
    results: list = []

    class Hello(Collect):
        def connectionMade(self):
            self.transport.write(b"early data")

    for _ in range(5):
        TunnelClientEndpoint(a.tcp, str(B4), 8081, timeout=10).connect(
            factory_of(Hello, clients)).addBoth(results.append)
    w.run(until=lambda: len(results) == 5 and sum(c.lost is not None for c in clients) == 2,
          max_time=5)
    listener = ports[0].listener
    assert len(listener.accept_queue) == 3 and not servers
    # the two beyond the backlog completed their handshake into a full queue: reset
    assert b.counters["tcp_accept_overflow"] == 2
    assert sum(c.lost is not None and c.lost.check(error.ConnectionLost) is not None
               for c in clients) == 2
    ports[0].resumeAccepting()
    w.run(until=lambda: len(servers) == 3, max_time=10)
    assert len(servers) == 3 and not listener.accept_queue
    w.run(until=lambda: all(s.data == b"early data" for s in servers), max_time=10)
    assert all(bytes(s.data) == b"early data" for s in servers)  # queued before accept
    # with the queue drained, new connections are accepted again
    TunnelClientEndpoint(a.tcp, str(B4), 8081).connect(factory_of(Hello, clients))
    w.run(until=lambda: len(servers) == 4, max_time=10)
    assert len(servers) == 4


def test_lose_connection_with_registered_streaming_producer():
    # paused producer: it is resumed as the buffer drains, its data still goes out
    _clock, _a, _b, w, cli, srv, _port = setup()
    prod = Streamer(cli.transport, total=1_000_000)
    cli.transport.registerProducer(prod, True)
    prod.pump()
    assert prod.paused
    cli.transport.loseConnection()
    w.run(until=lambda: srv.lost, max_time=300)
    assert len(srv.data) == 1_000_000 and srv.lost.check(error.ConnectionDone)

    # unpaused producer (like HTTPChannel registering itself): closes at once
    _clock, _a, _b, w, cli, srv, _port = setup()

    class Idle:
        stopped = False

        def pauseProducing(self):
            pass

        def resumeProducing(self):
            pass

        def stopProducing(self):
            self.stopped = True

    idle = Idle()
    cli.transport.registerProducer(idle, True)
    cli.transport.write(b"bye")
    cli.transport.loseConnection()
    w.run(until=lambda: cli.lost and srv.lost, max_time=60)
    assert bytes(srv.data) == b"bye" and cli.lost.check(error.ConnectionDone)
    assert idle.stopped  # connectionLost stops the producer, as Twisted does
