"""In-memory upstream connections for tests of the reverse proxy's lean
HTTP/1.1 client (``nbgateway.dial.http11.LeanAgent``)."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, task
from twisted.internet.testing import StringTransport

from nbgateway.dial.http11 import ConnectionPool, LeanAgent


class InMemoryPools:
    """The reverse proxy's pools (``agent(...)``) as one ``LeanAgent`` whose
    connections are in memory: ``upstreams`` holds the (transport, protocol)
    of every connection it made, oldest first; a transport's ``value()`` is
    what the gateway sent, and the test answers through the protocol's
    ``dataReceived``."""

    def __init__(self, clock: task.Clock, max_per_key: int = 8) -> None:
        self.upstreams: list[tuple[StringTransport, Any]] = []
        self.lean = LeanAgent(ConnectionPool(clock, max_per_key, 90.0), self._endpoint)

    def _endpoint(self, host: str, port: int, tls: bool) -> Any:
        made = self.upstreams

        class Endpoint:
            def connect(self, factory: Any) -> defer.Deferred[Any]:
                proto = factory.buildProtocol(None)
                wire = StringTransport()
                proto.makeConnection(wire)
                made.append((wire, proto))
                return defer.succeed(proto)

        return Endpoint()

    def agent(self, *_a: Any, **_kw: Any) -> Any:
        return self.lean
