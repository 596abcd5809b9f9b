"""RosterPeer keeps one form of the key (bytes); the base64 text is derived."""

from __future__ import annotations

import base64
import os

import pytest

from nbgateway.mgmt.netmap import AccountNetwork, RosterPeer
from nbgateway.netstack.prefix import Prefix


def _peer(raw: bytes, ip: str = "100.64.0.5/32", fqdn: str = "a.example.") -> RosterPeer:
    return RosterPeer(base64.b64encode(raw).decode(), raw, (Prefix.parse(ip),), "", fqdn)


def test_key_text_is_derived_from_the_bytes_and_not_stored():
    raw = os.urandom(32)
    p = _peer(raw)
    assert p.key_bytes is raw
    assert p.public_key == base64.b64encode(raw).decode()
    assert not hasattr(p, "__dict__")
    assert "public_key" not in RosterPeer.__slots__


def test_value_semantics_equality_hash_and_immutability():
    raw = os.urandom(32)
    a, b = _peer(raw), _peer(bytes(raw))
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    assert a != _peer(raw, ip="100.64.0.6/32")
    assert a != _peer(raw, fqdn="b.example.")
    assert a != _peer(os.urandom(32))
    assert a != (raw, a.allowed_ips, "", "a.example.")
    with pytest.raises(AttributeError):
        a.fqdn = "x."  # type: ignore[misc]
    with pytest.raises(AttributeError):
        del a.endpoint
    assert a.public_key[:8] in repr(a)


def test_network_peer_lookup_by_text():
    peers = tuple(_peer(os.urandom(32), ip=f"100.64.0.{i}/32") for i in range(1, 5))
    net = AccountNetwork(serial=1, address=None, roster=peers)
    assert net.peer(peers[2].public_key) is peers[2]
    assert net.peer(base64.b64encode(os.urandom(32)).decode()) is None
    assert net.peer("not a key") is None
