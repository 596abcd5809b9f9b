"""The graceful shutdown's connection drain: what is still in flight, waiting
for it up to a deadline, and closing the client connections left over.

:class:`ConnectionDrain` owns the (weak) set of protocols the public listener
accepted, the in-flight measure (HTTP requests in flight plus bytes queued in
the accounts' tunnel TCP send buffers), the deadline poll and the final close
(reset at the deadline, FIN after a complete drain).  It starts nothing by
itself: :meth:`nbgateway.service.GatewayService.stopService` calls it once the
listeners stopped accepting.  Time comes from the injected reactor.
"""

from __future__ import annotations

from typing import Any
from weakref import WeakSet

from twisted.internet.defer import Deferred
from twisted.logger import Logger

log = Logger(namespace="nbgateway.service")  # one namespace for the package


class ConnectionDrain:
    """In-flight work of one gateway, drained at shutdown.

    ``accounts`` is the gateway's :class:`~nbgateway.accounts.AccountRegistry`
    (its ``runtimes``' netstacks hold the tunnel connections), ``requests`` the
    request statistics whose ``active`` counts HTTP requests in flight."""

    def __init__(self, reactor: Any, accounts: Any, requests: Any) -> None:
        self.reactor = reactor
        self.accounts = accounts
        self.requests = requests
        #: protocols accepted on the public listener (reset at the drain deadline)
        self.public_protocols: WeakSet[Any] = WeakSet()

    def track(self, factory: Any) -> Any:
        """``factory`` remembering (weakly) every protocol it builds, so the
        connections the public listener accepted can be closed at shutdown."""
        build = factory.buildProtocol

        def build_protocol(addr: Any) -> Any:
            protocol = build(addr)
            if protocol is not None:
                self.public_protocols.add(protocol)
            return protocol

        factory.buildProtocol = build_protocol
        return factory

    def in_flight(self) -> tuple[int, int]:
        """(HTTP requests in flight, bytes queued in tunnel TCP send buffers)."""
        queued = 0
        for runtime in self.accounts.runtimes.values():
            tcp = getattr(runtime.stack, "tcp", None)
            for conn in list(getattr(tcp, "conns", {}).values()):
                queued += getattr(conn, "send_queued", 0)
        return self.requests.active, queued

    def drain(self, deadline: float, poll_interval: float) -> Deferred:
        """Fires once nothing is in flight (with False), or at ``deadline``
        (with True; polled every ``poll_interval`` seconds; immediately when
        already idle)."""
        done: Deferred = Deferred()

        def poll() -> None:
            requests, queued = self.in_flight()
            if not requests and not queued:
                done.callback(False)
            elif self.reactor.seconds() >= deadline:
                log.warn("drain timeout: {requests} request(s) still in flight, {queued} "
                         "byte(s) unsent; resetting their connections",
                         requests=requests, queued=queued)
                done.callback(True)
            else:
                self.reactor.callLater(poll_interval, poll)

        requests, _queued = self.in_flight()
        if requests:
            log.info("draining {requests} in-flight request(s)", requests=requests)
        poll()
        return done

    def close_remaining(self, timed_out: Any) -> None:
        """After the drain: close every client connection still open before the
        tunnels go away, so no client is left waiting on a silent socket.  At
        the drain deadline (``timed_out`` True) they are reset: host sockets
        with ``abortConnection`` (SO_LINGER 0: RST), tunnel TCP connections by
        the netstack's RST; after a complete drain (only idle keep-alive
        connections remain) they are closed normally (FIN).  Never raises."""
        abort = timed_out is True
        closed = 0
        for protocol in list(self.public_protocols):
            transport = getattr(protocol, "transport", None)
            if transport is None or not getattr(transport, "connected", False):
                continue
            try:
                transport.abortConnection() if abort else transport.loseConnection()
                closed += 1
            except Exception:
                log.failure("closing a public connection at shutdown")
        for runtime in list(self.accounts.runtimes.values()):
            tcp = getattr(runtime.stack, "tcp", None)
            conns = list(getattr(tcp, "conns", {}).values())
            try:
                if abort and conns:
                    closed += len(conns)
                    tcp.close()  # RST on every connection, users see ConnectionLost
                    continue
                for conn in conns:
                    user = getattr(conn, "user", None)
                    if user is not None and hasattr(user, "loseConnection"):
                        user.loseConnection()
                        closed += 1
            except Exception:
                log.failure("closing tunnel connections of {account} at shutdown",
                            account=runtime.account_id)
        if closed:
            log.info("shutdown: {how} {count} remaining client connection(s)",
                     how="reset" if abort else "closed", count=closed)
