"""One GetServerKey per gateway<->management session (issue 18, fourth round).

:meth:`nbgateway.mgmt.peermux.PeerSyncMux.server_key` answers the cycles of
every client sharing a mux with one call (concurrent cycles wait for it, a
fresh answer is reused for ``SERVER_KEY_TTL``), a failed cycle makes the next
one ask again, and with a real management two accounts' clients make one call
between them and one more after a restart."""

from __future__ import annotations

import functools
import os

import grpc
from twisted.internet import defer

from nbgateway._proto import management_pb2 as pb
from nbgateway.mgmt import peermux

from .test_peerclient import threaded, wait_for
from .test_peermux import GatewaysTestCase


class _KeyFuture:
    """A grpcio-style future for a fake GetServerKey multicallable."""

    def __init__(self) -> None:
        self.callbacks: list = []
        self._result = None
        self._exc: BaseException | None = None
        self._cancelled = False

    def add_done_callback(self, cb) -> None:
        self.callbacks.append(cb)

    def finish(self, result=None, exc: BaseException | None = None) -> None:
        self._result, self._exc = result, exc
        for cb in self.callbacks:
            cb(self)

    def cancel(self) -> None:
        self._cancelled = True
        for cb in self.callbacks:
            cb(self)

    def cancelled(self) -> bool:
        return self._cancelled

    def exception(self):
        return self._exc

    def result(self):
        return self._result


class _KeyMethod:
    def __init__(self) -> None:
        self.calls: list[_KeyFuture] = []

    def future(self, request, timeout=None, metadata=()):
        fut = _KeyFuture()
        self.calls.append(fut)
        return fut


def _key_mux():
    from twisted.internet.task import Clock

    class Reactor(Clock):
        def callFromThread(self, f, *args):
            f(*args)

    class Stub:
        GetServerKey = _KeyMethod()

    clock = Reactor()
    return clock, Stub.GetServerKey, peermux.PeerSyncMux(clock, Stub(), ())


def test_server_key_is_one_call_for_concurrent_cycles_and_reused_for_a_while() -> None:
    clock, method, mux = _key_mux()
    got: list[str] = []
    for _ in range(5):
        mux.server_key(1.0).addCallback(got.append)
    assert len(method.calls) == 1 and got == []
    method.calls[0].finish(pb.ServerKeyResponse(key="k1"))
    assert got == ["k1"] * 5 and mux.server_key_fetches == 1
    # a cycle starting soon after takes the same answer without a call
    mux.server_key(1.0).addCallback(got.append)
    assert got[-1] == "k1" and len(method.calls) == 1
    # later, or after a failed cycle, the management is asked again
    clock.advance(peermux.SERVER_KEY_TTL)
    mux.server_key(1.0).addCallback(got.append)
    assert len(method.calls) == 2
    method.calls[1].finish(pb.ServerKeyResponse(key="k2"))
    assert got[-1] == "k2"
    mux.forget_server_key()
    mux.server_key(1.0).addCallback(got.append)
    assert len(method.calls) == 3


def test_server_key_failure_reaches_every_waiter_and_a_cancelled_one_only_leaves() -> None:
    from nbgateway import errors

    _, method, mux = _key_mux()
    failures: list[BaseException] = []
    got: list[str] = []
    a = mux.server_key(1.0)
    a.addErrback(lambda f: failures.append(f.value))
    b = mux.server_key(1.0)
    b.addErrback(lambda f: failures.append(f.value))
    method.calls[0].finish(exc=grpc.RpcError())  # mapped like any unary failure
    assert len(failures) == 2
    assert all(isinstance(e, errors.ManagementError) for e in failures)
    # nothing cached from a failure: the next cycle calls again
    cancelled = mux.server_key(1.0)
    cancelled.addErrback(lambda f: failures.append(f.value))
    mux.server_key(1.0).addCallback(got.append)
    assert len(method.calls) == 2
    cancelled.cancel()
    assert isinstance(failures[-1], defer.CancelledError)
    method.calls[1].finish(pb.ServerKeyResponse(key="k"))
    assert got == ["k"] and len(failures) == 3


class RealManagementTests(GatewaysTestCase):
    @defer.inlineCallbacks
    def test_two_accounts_one_server_key_call_and_again_after_a_restart(self):
        a, b = self.client("acct-1"), self.client("acct-2")
        yield wait_for(lambda: self.maps["acct-1"] and self.maps["acct-2"], "both maps")
        assert a.mux is b.mux and a.mux is not None
        assert a.mux.server_key_fetches == 1
        assert a.server_key is not None and a.server_key == b.server_key
        assert a.logins == 1 and b.logins == 1
        port = self.mgmt.port
        yield threaded(self.mgmt.stop)
        yield wait_for(lambda: not a.connected and not b.connected, "disconnect noticed")
        self.mgmt = yield threaded(functools.partial(self.management, port=port))
        yield wait_for(lambda: a.connected and b.connected and a.logins >= 2 and b.logins >= 2,
                       "logged in again")
        # the failed cycles forgot the key: asked again, not once per account
        # per retry beyond the failures
        assert a.mux.server_key_fetches >= 2
        assert a.syncs_own == 0 and b.syncs_own == 0

    @defer.inlineCallbacks
    def test_without_the_mux_each_client_asks_itself(self):
        os.environ["NBGW_PEER_CHANNEL_MUX"] = "0"
        self.addCleanup(os.environ.pop, "NBGW_PEER_CHANNEL_MUX", None)
        a = self.client("acct-1")
        yield wait_for(lambda: self.maps["acct-1"], "map")
        assert a.mux is None and a.server_key is not None and a.syncs_own == 1
