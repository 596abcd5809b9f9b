"""The netstack's big classes are assembled from method-only mixins
(``Connection`` from ``tcp_input``/``tcp_receive``/``tcp_output``, ``Stack``
from ``stack_input``/``stack_output``): the mixins must hold no state (so
instances stay dict-free and the slots live in one place) and no method may
be defined twice along the MRO (a second definition would silently shadow
the other)."""

from __future__ import annotations

import inspect
import ipaddress

from twisted.internet.task import Clock

from nbgateway.netstack.stack import Stack
from nbgateway.netstack.stack_input import StackInput
from nbgateway.netstack.stack_output import StackOutput
from nbgateway.netstack.tcp_conn import Connection
from nbgateway.netstack.tcp_input import ConnectionInput
from nbgateway.netstack.tcp_output import ConnectionOutput
from nbgateway.netstack.tcp_receive import ConnectionReceive


class _Sink:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def sendPacket(self, packet: bytes) -> bool:
        self.sent.append(packet)
        return True

    def sendPackets(self, packets: list[bytes]) -> int:
        self.sent.extend(packets)
        return len(packets)


class _User:
    def tcp_established(self) -> None: ...
    def tcp_data(self, data: bytes) -> None: ...
    def tcp_eof(self) -> None: ...
    def tcp_fin_acked(self) -> None: ...
    def tcp_writable(self) -> None: ...
    def tcp_closed(self, reason: Exception | None) -> None: ...


def _own_functions(cls: type) -> set[str]:
    return {n for n, v in vars(cls).items()
            if inspect.isfunction(v) or isinstance(v, property)}


def test_mixins_hold_no_state():
    for mixin in (ConnectionInput, ConnectionReceive, ConnectionOutput, StackInput, StackOutput):
        assert vars(mixin)["__slots__"] == (), mixin
    assert Connection.__mro__[1:] == (ConnectionInput, ConnectionReceive, ConnectionOutput,
                                      object)
    assert Stack.__mro__[1:] == (StackInput, StackOutput, object)


def test_no_method_is_defined_twice():
    for cls in (Connection, Stack):
        seen: dict[str, type] = {}
        for part in cls.__mro__[:-1]:
            for name in _own_functions(part) - {"__init__", "__repr__"}:
                assert name not in seen, (name, part, seen.get(name))
                seen[name] = part


def test_instances_are_dict_free():
    sink = _Sink()
    stack = Stack(sink, Clock(), ["100.64.0.1"])
    assert not hasattr(stack, "__dict__")
    conn = stack.tcp.connect(ipaddress.ip_address("100.64.0.9"), 80, _User())
    assert not hasattr(conn, "__dict__")
    assert conn.state_name == "SYN-SENT" and sink.sent  # the SYN went out (tcp_output)
    stack.close()
