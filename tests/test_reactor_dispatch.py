"""nbgateway.service.loop: the lean dispatch of ready descriptors behaves as
Twisted's ``EPollReactor.doPoll`` + ``_doReadOrWrite`` (data delivered,
clean close, hang-up without input, lost descriptor, an exception in a
protocol drops that connection only and is logged with the selectable's
``logPrefix`` as ``system``, writes resume after backpressure), and is
installed only on a plain EPollReactor.

Every scenario runs on a fresh reactor instance (never the global one),
driven with ``iterate()``, once with Twisted's dispatch and once with the
lean one; the observations must be equal, and right.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from twisted.internet import abstract, error, protocol
from twisted.logger import globalLogPublisher
from twisted.python import failure

from nbgateway.service import loop

epollreactor = pytest.importorskip("twisted.internet.epollreactor")

MODES = ("stock", "lean")


def make_reactor(mode: str):
    r = epollreactor.EPollReactor()
    if mode == "lean":
        assert loop.install(r) is True
        assert loop.installed(r)
    else:
        assert not loop.installed(r)
    return r


def close_reactor(r) -> None:
    for s in r.removeAll():
        with contextlib.suppress(Exception):
            s.connectionLost(failure.Failure(error.ConnectionDone()))
    for s in list(r._internalReaders):
        r.removeReader(s)
        s.connectionLost(failure.Failure(error.ConnectionDone()))
    r._poller.close()


@contextlib.contextmanager
def tcp_server(mode: str, **server_kw):
    """A reactor of ``mode`` with a :class:`Server` (``server_kw``) listening on
    127.0.0.1: ``(reactor, factory, port)``; the reactor is closed afterwards."""
    r = make_reactor(mode)
    try:
        factory = Server(**server_kw)
        yield r, factory, r.listenTCP(0, factory, interface="127.0.0.1")
    finally:
        close_reactor(r)


def spin(r, until, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < deadline, "timed out"
        r.iterate(0.01)


class Recorder(protocol.Protocol):
    def __init__(self, raise_on: bytes | None = None) -> None:
        self.data = b""
        self.lost: failure.Failure | None = None
        self.raise_on = raise_on

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        if self.raise_on is not None and self.raise_on in self.data:
            raise ValueError("boom in dataReceived")

    def connectionLost(self, reason=protocol.connectionDone) -> None:
        self.lost = reason


class Server(protocol.Factory):
    def __init__(self, raise_on: bytes | None = None) -> None:
        self.protocols: list[Recorder] = []
        self.raise_on = raise_on

    def buildProtocol(self, addr):
        p = Recorder(self.raise_on)
        p.factory = self
        self.protocols.append(p)
        return p


@pytest.fixture
def failures():
    """Logged failure events: (system, exception type, message)."""
    seen: list[tuple[str, type, str]] = []

    def observer(event):
        f = event.get("log_failure") or event.get("failure")
        if f is not None:
            seen.append((event.get("log_system"), f.type, str(f.value)))

    globalLogPublisher.addObserver(observer)
    yield seen
    globalLogPublisher.removeObserver(observer)


def recv(r, peer: socket.socket, until_eof: bool = False) -> bytes:
    """Read what the reactor sends to ``peer`` (spinning it meanwhile): the
    first chunk, or everything up to EOF."""
    peer.setblocking(False)
    got = b""
    deadline = time.monotonic() + 5
    while True:
        assert time.monotonic() < deadline, "timed out"
        r.iterate(0.01)
        try:
            chunk = peer.recv(65536)
        except BlockingIOError:
            continue
        got += chunk
        if not chunk or not until_eof:
            return got


def _connect(r, factory: Server, port) -> socket.socket:
    peer = socket.create_connection(("127.0.0.1", port.getHost().port))
    n = len(factory.protocols)
    spin(r, lambda: len(factory.protocols) > n)
    return peer


def scenario_data_and_close(mode: str):
    with tcp_server(mode) as (r, factory, port):
        peer = _connect(r, factory, port)
        p = factory.protocols[0]
        peer.sendall(b"hello " * 1000)
        spin(r, lambda: len(p.data) == 6000)
        p.transport.write(b"reply")
        got = recv(r, peer)
        peer.close()
        spin(r, lambda: p.lost is not None)
        port.stopListening()
        return got, p.data == b"hello " * 1000, p.lost.type


@pytest.mark.parametrize("mode", MODES)
def test_data_delivered_and_peer_close_is_connection_done(mode):
    got, data_ok, lost = scenario_data_and_close(mode)
    assert (got, data_ok, lost) == (b"reply", True, error.ConnectionDone)


def scenario_exception_drops_one(mode: str, failures):
    with tcp_server(mode, raise_on=b"BAD") as (r, factory, port):
        good_peer = _connect(r, factory, port)
        bad_peer = _connect(r, factory, port)
        good, bad = factory.protocols
        prefix = bad.transport.logPrefix()
        bad_peer.sendall(b"BAD")
        good_peer.sendall(b"first")
        spin(r, lambda: bad.lost is not None and good.data == b"first")
        good_peer.sendall(b" second")
        spin(r, lambda: good.data == b"first second")
        good.transport.write(b"still here")
        answer = recv(r, good_peer)
        closed = recv(r, bad_peer, until_eof=True)  # the dropped connection was closed
        logged = [f for f in failures if f[1] is ValueError]
        good_peer.close()
        bad_peer.close()
        port.stopListening()
        return (bad.lost.type, good.lost, answer, closed,
                logged == [(prefix, ValueError, "boom in dataReceived")])


@pytest.mark.parametrize("mode", MODES)
def test_exception_in_data_received_drops_that_connection_only_and_is_logged(mode, failures):
    outcome = scenario_exception_drops_one(mode, failures)
    assert outcome == (ValueError, None, b"still here", b"", True)


def scenario_backpressure(mode: str):
    with tcp_server(mode) as (r, factory, port):
        peer = _connect(r, factory, port)
        p = factory.protocols[0]
        payload = bytes(range(256)) * (8 * 4096)  # 8 MiB: far beyond the socket buffers
        p.transport.write(payload)
        r.iterate(0)
        buffered = len(p.transport.dataBuffer) + p.transport._tempDataLen > 0
        peer.setblocking(False)
        received = bytearray()
        deadline = time.monotonic() + 10
        while len(received) < len(payload):
            assert time.monotonic() < deadline
            r.iterate(0)
            try:
                chunk = peer.recv(1 << 20)
            except BlockingIOError:
                continue
            received += chunk
        peer.close()
        spin(r, lambda: p.lost is not None)
        port.stopListening()
        return buffered, bytes(received) == payload


@pytest.mark.parametrize("mode", MODES)
def test_writes_resume_after_backpressure(mode):
    assert scenario_backpressure(mode) == (True, True)


def scenario_reset_while_only_writing(mode: str):
    """HUP/ERR without input on a descriptor not reading: ConnectionLost."""
    with tcp_server(mode) as (r, factory, port):
        peer = _connect(r, factory, port)
        p = factory.protocols[0]
        p.transport.stopReading()
        p.transport.write(b"x" * (16 << 20))  # stays registered for writing
        r.iterate(0)
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
        peer.close()  # RST
        spin(r, lambda: p.lost is not None)
        port.stopListening()
        return p.lost.type


@pytest.mark.parametrize("mode", MODES)
def test_reset_of_a_writing_only_descriptor_is_connection_lost(mode):
    assert scenario_reset_while_only_writing(mode) is error.ConnectionLost


class PipeReader(abstract.FileDescriptor):
    """A bare selectable on a pipe's read end (no transport machinery)."""

    def __init__(self, fd: int, reactor, *, lose_fd: bool = False,
                 raise_in_lost: bool = False) -> None:
        super().__init__(reactor=reactor)
        self.fd = fd
        self.lose_fd = lose_fd
        self.raise_in_lost = raise_in_lost
        self.reads: list[bytes] = []
        self.lost: failure.Failure | None = None

    def fileno(self) -> int:
        return -1 if self.lose_fd else self.fd

    def logPrefix(self) -> str:
        return "PipeReader"

    def doRead(self):
        data = os.read(self.fd, 65536)
        if not data:
            return error.ConnectionDone()
        self.reads.append(data)
        return None

    def connectionLost(self, reason) -> None:
        self.lost = reason
        os.close(self.fd)
        if self.raise_in_lost:
            raise RuntimeError("boom in connectionLost")


def scenario_pipe(mode: str, failures, **kw):
    r = make_reactor(mode)
    try:
        rfd, wfd = os.pipe()
        reader = PipeReader(rfd, r, **{k: v for k, v in kw.items() if k == "raise_in_lost"})
        r.addReader(reader)
        os.write(wfd, b"abc")
        spin(r, lambda: reader.reads == [b"abc"])
        if kw.get("lose_fd"):
            reader.lose_fd = True
            os.write(wfd, b"more")
        os.close(wfd)  # a pipe with no writer and no data: EPOLLHUP without EPOLLIN
        spin(r, lambda: reader.lost is not None)
        # the dispatch keeps going afterwards (a timer still fires)
        fired = []
        r.callLater(0, fired.append, True)
        spin(r, lambda: fired == [True])
        assert reader not in r.getReaders()
        logged = [f for f in failures if f[1] is RuntimeError]
        return reader.lost.type, logged
    finally:
        close_reactor(r)


@pytest.mark.parametrize("mode", MODES)
def test_hangup_without_input_on_a_reader_is_connection_done(mode, failures):
    assert scenario_pipe(mode, failures) == (error.ConnectionDone, [])


@pytest.mark.parametrize("mode", MODES)
def test_a_lost_descriptor_is_disconnected(mode, failures):
    assert scenario_pipe(mode, failures, lose_fd=True) == (error.ConnectionFdescWentAway, [])


@pytest.mark.parametrize("mode", MODES)
def test_an_exception_in_connection_lost_is_logged_and_contained(mode, failures):
    lost, logged = scenario_pipe(mode, failures, raise_in_lost=True)
    assert lost is error.ConnectionDone
    assert logged == [("PipeReader", RuntimeError, "boom in connectionLost")]


def test_not_installed_on_other_reactors(monkeypatch):
    from twisted.internet import pollreactor, selectreactor
    from twisted.internet.task import Clock
    from twisted.internet.testing import MemoryReactorClock

    class Sub(epollreactor.EPollReactor):
        pass

    made = [pollreactor.PollReactor(), selectreactor.SelectReactor(), Sub()]
    try:
        for r in [*made, Clock(), MemoryReactorClock()]:
            assert loop.install(r) is False, r
            assert not loop.installed(r)
            assert "doIteration" not in vars(r)
    finally:
        for r in made:
            if isinstance(r, epollreactor.EPollReactor):
                close_reactor(r)


def test_switch_off_and_someone_elses_patch_are_respected(monkeypatch):
    r = epollreactor.EPollReactor()
    try:
        monkeypatch.setenv(loop.ENV, "0")
        assert loop.install(r) is False
        monkeypatch.delenv(loop.ENV)
        theirs = r.doPoll
        r.doIteration = theirs
        assert loop.install(r) is False
        assert r.doIteration is theirs
        del r.doIteration
        assert loop.install(r) is True
        assert loop.install(r) is True  # idempotent
        loop.uninstall(r)
        assert "doIteration" not in vars(r)
        assert r.doIteration.__func__ is epollreactor.EPollReactor.doPoll
    finally:
        close_reactor(r)


def test_the_gateway_service_installs_it_on_its_epoll_reactor(tmp_path: Path):
    """In a subprocess: GatewayService.startService on a fresh EPollReactor
    installs the lean dispatch; on a PollReactor it does not."""
    script = textwrap.dedent("""
        import os, sys
        from twisted.internet import epollreactor, pollreactor
        from nbgateway.config import load
        from nbgateway.mgmt.fake import FakeManagementClient
        from nbgateway.service import GatewayService, loop
        out = []
        for i, r in enumerate((epollreactor.EPollReactor(), pollreactor.PollReactor())):
            config = load({"mgmt": "http://127.0.0.1:1", "domain": "gw.test", "wg_port": "0",
                           "datadir": os.path.join(sys.argv[1], str(i)), "health_addr": "",
                           "addr": "127.0.0.1:0"}, {"NB_PROXY_TOKEN": "t"})
            svc = GatewayService(config, reactor=r, management=FakeManagementClient())
            before = loop.installed(r)
            svc.privilegedStartService()
            svc.startService()
            out.append((before, loop.installed(r)))
        print(out, flush=True)
        os._exit(0)
    """)
    env = {k: v for k, v in os.environ.items() if k != loop.ENV}
    res = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True,
                         text=True, timeout=60, env=env)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1] == "[(False, True), (False, False)]"


# -- deferred TCP writers ------------------------------------------------------------------


class CountingPoller:
    """The reactor's epoll object, counting epoll_ctl calls (register/modify/unregister)."""

    def __init__(self, real) -> None:
        self.real = real
        self.ctl = 0

    def __getattr__(self, name):
        return getattr(self.real, name)

    def register(self, *a):
        self.ctl += 1
        return self.real.register(*a)

    def modify(self, *a):
        self.ctl += 1
        return self.real.modify(*a)

    def unregister(self, *a):
        self.ctl += 1
        return self.real.unregister(*a)


class Client(protocol.Protocol):
    def __init__(self) -> None:
        self.data = b""
        self.lost = None

    def connectionMade(self) -> None:
        self.transport.write(b"hello from the client")

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason=protocol.connectionDone) -> None:
        self.lost = reason


def scenario_client_exchange(mode: str):
    """A client and a server in one reactor: connect, request, response,
    close; the epoll_ctl calls of one request/response once connected."""
    with tcp_server(mode) as (r, factory, port):
        client = Client()
        cf = protocol.ClientFactory()
        cf.buildProtocol = lambda addr: client
        r.connectTCP("127.0.0.1", port.getHost().port, cf)
        spin(r, lambda: factory.protocols and factory.protocols[0].data == b"hello from the client")
        srv = factory.protocols[0]
        counting = r._poller = CountingPoller(r._poller)
        srv.transport.write(b"response")
        spin(r, lambda: client.data == b"response")
        client.transport.write(b"second")
        client.transport.write(b" request")  # one turn: the two writes leave together
        spin(r, lambda: srv.data.endswith(b"second request"))
        ctl = counting.ctl
        client.transport.loseConnection()
        spin(r, lambda: client.lost is not None and srv.lost is not None)
        port.stopListening()
        return ctl, client.lost.type, srv.lost.type


def test_deferred_writers_need_no_epoll_registration():
    stock_ctl, *stock = scenario_client_exchange("stock")
    lean_ctl, *lean = scenario_client_exchange("lean")
    assert stock == lean == [error.ConnectionDone, error.ConnectionDone]
    assert stock_ctl == 4  # two writes: register for writing, then unregister, each
    assert lean_ctl == 0


class PullProducer:
    """A non-streaming producer: asked for more at registration, then when
    its transport's buffer empties (from inside that transport's doWrite);
    runs ``action`` then (the second call)."""

    def __init__(self, action) -> None:
        self.action = action
        self.calls = 0

    def resumeProducing(self) -> None:
        self.calls += 1
        if self.calls == 2:
            self.action()

    def stopProducing(self) -> None:
        pass


def scenario_writer_chain(mode: str, abort_other: bool):
    """Connection A's doWrite (its producer) aborts B, or writes to B, while
    B waits for its own first write in the same turn."""
    with tcp_server(mode) as (r, factory, port):
        peer_a = _connect(r, factory, port)
        peer_b = _connect(r, factory, port)
        a, b = factory.protocols
        if abort_other:
            a.transport.registerProducer(PullProducer(b.transport.abortConnection), False)
            a.transport.write(b"to a")
            b.transport.write(b"to b, never sent")
        else:
            a.transport.registerProducer(PullProducer(lambda: b.transport.write(b"chained")),
                                         False)
            a.transport.write(b"to a")
        t0 = time.monotonic()
        r.iterate(2.0)
        if not abort_other:  # B, written from A's doWrite, needs no sleep of the poll
            r.iterate(2.0)
        quick = time.monotonic() - t0 < 1.5
        got_a = recv(r, peer_a)
        if abort_other:
            spin(r, lambda: b.lost is not None)
            try:
                got_b = recv(r, peer_b, until_eof=True)
            except ConnectionResetError:
                got_b = b"reset"
        else:
            got_b = recv(r, peer_b)
        peer_a.close()
        peer_b.close()
        port.stopListening()
        return quick, got_a, got_b, b.lost.type if b.lost else None


@pytest.mark.parametrize("mode", MODES)
def test_a_writer_aborted_by_an_earlier_writer_of_the_same_turn_is_not_written(mode):
    assert scenario_writer_chain(mode, abort_other=True) == (
        True, b"to a", b"reset", error.ConnectionAborted)


@pytest.mark.parametrize("mode", MODES)
def test_a_writer_added_by_another_writer_goes_out_without_waiting(mode):
    assert scenario_writer_chain(mode, abort_other=False) == (True, b"to a", b"chained", None)


@pytest.mark.parametrize("mode", MODES)
def test_lose_connection_after_a_write_sends_it_first(mode):
    with tcp_server(mode) as (r, factory, port):
        peer = _connect(r, factory, port)
        p = factory.protocols[0]
        p.transport.write(b"last words")
        p.transport.loseConnection()
        assert recv(r, peer, until_eof=True) == b"last words"
        spin(r, lambda: p.lost is not None)
        assert p.lost.type is error.ConnectionDone
        peer.close()
        port.stopListening()


def test_deferred_writers_are_listed_removed_and_handed_back():
    r = make_reactor("lean")
    try:
        assert loop.defers_writes(r)
        factory = Server()
        port = r.listenTCP(0, factory, interface="127.0.0.1")
        peers = [_connect(r, factory, port) for _ in range(2)]
        a, b = factory.protocols
        a.transport.write(b"x")
        assert a.transport in r.getWriters()
        assert a.transport.fileno() not in r._writes  # not registered with epoll
        b.transport.write(b"y")
        loop.uninstall(r)  # Twisted's dispatch: the deferred writer is registered now
        assert not loop.installed(r) and not loop.defers_writes(r)
        assert {a.transport.fileno(), b.transport.fileno()} <= r._writes
        assert recv(r, peers[0]) == b"x" and recv(r, peers[1]) == b"y"
        assert loop.install(r)
        a.transport.write(b"z")
        removed = r.removeAll()
        assert a.transport in removed and b.transport in removed
        assert a.transport not in r.getWriters()
        for s in removed:
            s.connectionLost(failure.Failure(error.ConnectionDone()))
        for peer in peers:
            peer.close()
        port.stopListening()
    finally:
        close_reactor(r)


def test_writers_not_deferred_when_switched_off(monkeypatch):
    monkeypatch.setenv(loop.ENV_WRITES, "0")
    r = epollreactor.EPollReactor()
    try:
        assert loop.install(r) and not loop.defers_writes(r)
        assert "addWriter" not in vars(r)
    finally:
        close_reactor(r)


@pytest.mark.parametrize("mode", MODES)
def test_a_timer_set_by_a_deferred_write_runs_without_waiting(mode):
    """reactor.run(): a callLater(0) made inside a writer's doWrite (its
    producer) runs in the next loop turn, not after the poll's timeout."""
    with tcp_server(mode) as (r, factory, port):
        peer = _connect(r, factory, port)
        p = factory.protocols[0]
        times: list[float] = []

        def from_do_write() -> None:
            r.callLater(0, lambda: (times.append(time.monotonic()), r.stop()))

        def start() -> None:
            times.append(time.monotonic())
            p.transport.registerProducer(PullProducer(from_do_write), False)
            p.transport.write(b"data")

        r.callLater(0.05, start)
        r.callLater(3, r.stop)  # nothing else would wake the poll before this
        r.run(installSignalHandlers=False)
        assert len(times) == 2 and times[1] - times[0] < 1.0
        assert recv(r, peer) == b"data"
        peer.close()


class Trigger(protocol.Protocol):
    def __init__(self, action) -> None:
        self.action = action

    def dataReceived(self, data: bytes) -> None:
        self.action()


@pytest.mark.parametrize("mode", MODES)
def test_an_answer_before_a_reset_is_read_before_the_write_fails(mode):
    """During one poll's dispatch the peer answers and resets, then the
    client writes: the client still reads the answer before its write
    fails (Twisted reads a socket that is readable and writable first)."""
    r = make_reactor(mode)
    try:
        lst = socket.create_server(("127.0.0.1", 0))
        client = Client()
        cf = protocol.ClientFactory()
        cf.buildProtocol = lambda addr: client
        r.connectTCP("127.0.0.1", lst.getsockname()[1], cf)
        lst.setblocking(False)
        accepted: list[socket.socket] = []

        def accept() -> bool:
            with contextlib.suppress(BlockingIOError):
                accepted.append(lst.accept()[0])
            return bool(accepted)

        spin(r, accept)
        peer = accepted[0]
        spin(r, lambda: client.transport is not None and client.transport.connected
             and not r.getWriters())
        peer.settimeout(5)
        assert peer.recv(100) == b"hello from the client"

        def answer_reset_then_write() -> None:
            peer.sendall(b"early answer")
            peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
            peer.close()  # RST; the answer waits in the client's receive queue
            client.transport.write(b"more")

        trigger = protocol.Factory()
        trigger.buildProtocol = lambda addr: Trigger(answer_reset_then_write)
        tport = r.listenTCP(0, trigger, interface="127.0.0.1")
        tpeer = socket.create_connection(("127.0.0.1", tport.getHost().port))
        tpeer.sendall(b"go")
        spin(r, lambda: client.lost is not None)
        tpeer.close()
        tport.stopListening()
        lst.close()
        assert client.data == b"early answer"
    finally:
        close_reactor(r)


def test_a_deferred_writer_lost_without_remove_writer_is_skipped():
    """connectionLost called directly (no removeWriter) while waiting for
    the flush: it is not written to, nor lost a second time."""
    with tcp_server("lean") as (r, factory, port):
        peer = _connect(r, factory, port)
        p = factory.protocols[0]
        calls = []
        p.connectionLost = lambda reason: calls.append(reason.type)
        p.transport.write(b"never")
        r.removeReader(p.transport)
        p.transport.connectionLost(failure.Failure(error.ConnectionDone()))
        r.iterate(0)
        r.iterate(0)
        assert calls == [error.ConnectionDone]
        assert p.transport not in r.getWriters()
        peer.close()
        port.stopListening()


# -- the timers' share of a turn (runUntilCurrent / timeout) -----------------------------


def scenario_timers(mode: str):
    """Timers fire in order at their time (one set from a timer, one moved
    later, one cancelled), a thread's call runs, the poll's sleep follows
    the next timer, and 200 cancellations are compacted away."""
    import threading

    r = make_reactor(mode)
    try:
        fired: list[str] = []
        sleeps = [r.timeout()]  # no timers
        r.callLater(0.03, fired.append, "b")
        r.callLater(0.01, lambda: (fired.append("a"), r.callLater(0, fired.append, "a2")))
        moved = r.callLater(0.005, fired.append, "moved")
        moved.reset(0.05)
        r.callLater(0.02, fired.append, "cancelled").cancel()
        sleeps.append(0 < r.timeout() <= 0.01)
        far = r.callLater(10_000_000, fired.append, "far")
        t = threading.Thread(target=r.callFromThread, args=(fired.append, "thread"))
        t.start()
        t.join()
        spin(r, lambda: "moved" in fired)
        sleeps.append(r.timeout() == 2147483)  # only the far one: epoll's longest sleep
        far.cancel()
        later = [r.callLater(100 + i, fired.append, "x") for i in range(200)]
        r.iterate(0)  # in the heap now: the next turn has nothing new and nothing due
        for c in later[:150]:
            c.cancel()
        r.iterate(0)
        left = len(r._pendingTimedCalls)
        r.callLater(0.001, fired.append, "past")
        time.sleep(0.005)
        sleeps.append(r.timeout() == 0)  # past due: no sleep
        r.iterate(0)
        return fired, sleeps, left
    finally:
        close_reactor(r)


def test_timers_and_thread_calls_as_twisteds_turn():
    stock, lean = scenario_timers("stock"), scenario_timers("lean")
    assert lean == stock
    fired, sleeps, left = lean
    assert fired == ["thread", "a", "a2", "b", "moved", "past"]
    assert sleeps == [None, True, True, True]
    assert left <= 51  # the cancelled ones compacted away (201 timers were pending)


def test_a_running_reactor_fires_timers_and_stops_through_the_lean_turn():
    r = make_reactor("lean")
    assert r.runUntilCurrent.__func__ is loop._lean_run_until_current
    assert r.timeout.__func__ is loop._lean_timeout
    try:
        seen: list[str] = []
        r.addSystemEventTrigger("during", "shutdown", seen.append, "shutdown")
        r.callLater(0.01, seen.append, "timer")
        r.callLater(0.02, lambda: r.callFromThread(r.stop))
        r.callLater(5, seen.append, "never")
        r.run(installSignalHandlers=False)
        assert seen == ["timer", "shutdown"]
    finally:
        close_reactor(r)


def test_timer_turn_not_replaced_when_twisteds_is_not_the_class_method(monkeypatch):
    r = epollreactor.EPollReactor()
    try:
        monkeypatch.setattr(epollreactor.EPollReactor, "timeout", lambda self: 0.5,
                            raising=False)
        assert loop.install(r) is False and "runUntilCurrent" not in vars(r)
        monkeypatch.undo()
        r.timeout = lambda: 0.25  # someone else's, on the instance
        assert loop.install(r) is False and r.timeout() == 0.25
        del r.timeout
        assert loop.install(r) is True
        loop.uninstall(r)
        assert "runUntilCurrent" not in vars(r) and "timeout" not in vars(r)
    finally:
        close_reactor(r)
