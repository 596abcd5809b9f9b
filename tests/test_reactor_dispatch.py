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
    r = make_reactor(mode)
    try:
        factory = Server()
        port = r.listenTCP(0, factory, interface="127.0.0.1")
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
    finally:
        close_reactor(r)


@pytest.mark.parametrize("mode", MODES)
def test_data_delivered_and_peer_close_is_connection_done(mode):
    got, data_ok, lost = scenario_data_and_close(mode)
    assert (got, data_ok, lost) == (b"reply", True, error.ConnectionDone)


def scenario_exception_drops_one(mode: str, failures):
    r = make_reactor(mode)
    try:
        factory = Server(raise_on=b"BAD")
        port = r.listenTCP(0, factory, interface="127.0.0.1")
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
    finally:
        close_reactor(r)


@pytest.mark.parametrize("mode", MODES)
def test_exception_in_data_received_drops_that_connection_only_and_is_logged(mode, failures):
    outcome = scenario_exception_drops_one(mode, failures)
    assert outcome == (ValueError, None, b"still here", b"", True)


def scenario_backpressure(mode: str):
    r = make_reactor(mode)
    try:
        factory = Server()
        port = r.listenTCP(0, factory, interface="127.0.0.1")
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
    finally:
        close_reactor(r)


@pytest.mark.parametrize("mode", MODES)
def test_writes_resume_after_backpressure(mode):
    assert scenario_backpressure(mode) == (True, True)


def scenario_reset_while_only_writing(mode: str):
    """HUP/ERR without input on a descriptor not reading: ConnectionLost."""
    r = make_reactor(mode)
    try:
        factory = Server()
        port = r.listenTCP(0, factory, interface="127.0.0.1")
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
    finally:
        close_reactor(r)


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
