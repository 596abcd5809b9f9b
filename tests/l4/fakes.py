"""Fakes for the L4 unit tests: transports with half-close, a recording endpoint."""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail
from twisted.internet.testing import StringTransport

from nbgateway._proto import proxy_service_pb2 as pb


class Transport(StringTransport):
    def __init__(self, peer: tuple[str, int] = ("192.0.2.10", 40000),
                 host: tuple[str, int] = ("198.18.0.1", 7000)) -> None:
        super().__init__(hostAddress=IPv4Address("TCP", *host),
                         peerAddress=IPv4Address("TCP", *peer))
        self.write_closed = False
        self.aborted = False

    def loseWriteConnection(self) -> None:
        self.write_closed = True

    def abortConnection(self) -> None:
        self.aborted = True
        super().abortConnection()


class Endpoint:
    """Records connects; the test completes them with :meth:`complete`."""

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.factories: list[Any] = []
        self.deferreds: list[Deferred] = []

    def connect(self, factory: Any) -> Deferred:
        if self.error is not None:
            return fail(self.error)
        self.factories.append(factory)
        d: Deferred = Deferred()
        self.deferreds.append(d)
        return d

    def complete(self, index: int = -1) -> tuple[Any, Transport]:
        proto = self.factories[index].buildProtocol(None)
        t = Transport(peer=("127.0.0.1", 9000), host=("127.0.0.1", 50000))
        proto.makeConnection(t)
        self.deferreds[index].callback(proto)
        return proto, t


def mapping(mode: str = "tcp", port: int = 7000, target: str = "127.0.0.1:9000",
            sid: str = "svc1", domain: str = "a.example", private: bool = False,
            proxy_protocol: bool = False, account: str = "acct") -> pb.ProxyMapping:
    m = pb.ProxyMapping(id=sid, account_id=account, domain=domain, mode=mode,
                        listen_port=port, private=private)
    pm = m.path.add(target=target)
    if proxy_protocol:
        pm.options.proxy_protocol = True
    return m
