"""The stack's public interface to its layers (nbgateway.netstack.iplayer)."""

from __future__ import annotations

import ast
import ipaddress
from pathlib import Path

from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from nbgateway.netstack.iplayer import IIPLayer
from nbgateway.netstack.stack import Stack

NETSTACK = Path(__file__).resolve().parents[2] / "nbgateway" / "netstack"


class Sink:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def sendPacket(self, packet: bytes) -> bool:
        self.sent.append(packet)
        return True


def test_stack_provides_the_interface():
    stack = Stack(Sink(), Clock(), ["100.64.0.1", "fd00::1"])
    assert verifyObject(IIPLayer, stack)
    v4, v6 = ipaddress.ip_address("100.64.0.1"), ipaddress.ip_address("fd00::1")
    assert stack.local_address(v4.packed) == v4
    assert stack.local_address(ipaddress.ip_address("100.64.0.2").packed) is None
    assert stack.source_for(b"\x0a\x00\x00\x01") == v4.packed
    assert stack.source_for(bytes(16)) == v6.packed
    assert stack.address_text(v6.packed) == "fd00::1"
    assert stack.address_object(v4.packed) == v4


def test_send_ip_emits_one_packet():
    sink = Sink()
    stack = Stack(sink, Clock(), ["100.64.0.1"])
    assert stack.send_ip(ipaddress.ip_address("100.64.0.1").packed,
                         ipaddress.ip_address("100.64.0.9").packed, 17, b"\0" * 8)
    assert len(sink.sent) == 1 and sink.sent[0][9] == 17 and len(sink.sent[0]) == 28


def _private_stack_uses(tree: ast.AST) -> set[str]:
    """``stack._x`` / ``self.stack._x`` attribute uses in a module."""
    found = set()
    for n in ast.walk(tree):
        if not (isinstance(n, ast.Attribute) and n.attr.startswith("_")
                and not n.attr.startswith("__")):
            continue
        v = n.value
        if (isinstance(v, ast.Name) and v.id == "stack") or (
                isinstance(v, ast.Attribute) and v.attr == "stack"):
            found.add(n.attr)
    return found


def test_layers_use_only_the_public_interface():
    for name in ("icmp.py", "udp.py"):
        tree = ast.parse((NETSTACK / name).read_text())
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert "nbgateway.netstack.stack" not in imported, name
        assert _private_stack_uses(tree) == set(), name


def test_the_check_sees_private_uses():
    tree = ast.parse("def f(self, stack):\n    stack._send_ip()\n    self.stack._local.get(1)\n")
    assert _private_stack_uses(tree) == {"_send_ip", "_local"}
