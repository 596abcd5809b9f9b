"""The Noise_IKpsk2 handshake between two instances of the core."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nbgateway.wireguard import noise
from nbgateway.wireguard._crypto import dh, tai64n
from nbgateway.wireguard.keys import clamp
from nbgateway.wireguard.messages import INITIATION, RESPONSE, Initiation, Response

keys = st.binary(min_size=32, max_size=32).map(clamp)


def handshake(ki: bytes, kr: bytes, psk_i: bytes, psk_r: bytes):
    ini, res = noise.StaticIdentity(ki), noise.StaticIdentity(kr)
    state, init_msg = noise.create_initiation(
        ini, res.public, noise.derive_public(res.public)[0], dh(ki, res.public), psk_i, 11,
        tai64n(), clamp(os.urandom(32)),
    )
    wire = INITIATION.pack(1, *init_msg)
    parsed = Initiation.parse(wire)
    consumed = noise.consume_initiation(
        res, parsed, lambda s: dh(kr, s) if s == ini.public else None
    )
    resp, rkeys = noise.create_response(consumed, psk_r, 22, clamp(os.urandom(32)))
    parsed_resp = Response.parse(RESPONSE.pack(2, *resp))
    ikeys = noise.consume_response(ini, state, parsed_resp)
    return consumed, ikeys, rkeys


@settings(max_examples=25, deadline=None)
@given(keys, keys, st.binary(min_size=32, max_size=32))
def test_handshake_random_keys_agree(ki, kr, psk):
    consumed, ikeys, rkeys = handshake(ki, kr, psk, psk)
    assert consumed.remote_static == noise.StaticIdentity(ki).public
    assert consumed.remote_index == 11
    assert ikeys.send == rkeys.receive
    assert ikeys.receive == rkeys.send
    assert ikeys.send != ikeys.receive


def test_psk_mismatch_fails_response():
    ki, kr = clamp(os.urandom(32)), clamp(os.urandom(32))
    with pytest.raises(noise.HandshakeError) as e:
        handshake(ki, kr, bytes(32), b"\x01" * 32)
    assert e.value.reason == "decrypt"


def test_unknown_peer_rejected():
    ki, kr = clamp(os.urandom(32)), clamp(os.urandom(32))
    ini, res = noise.StaticIdentity(ki), noise.StaticIdentity(kr)
    _, msg = noise.create_initiation(
        ini, res.public, res.hash0, dh(ki, res.public), bytes(32), 1, tai64n(),
        clamp(os.urandom(32)))
    with pytest.raises(noise.HandshakeError) as e:
        noise.consume_initiation(res, msg, lambda s: None)
    assert e.value.reason == "unknown_peer"


@pytest.mark.parametrize("field", ["ephemeral", "encrypted_static", "encrypted_timestamp"])
def test_tampered_initiation_fails(field):
    ki, kr = clamp(os.urandom(32)), clamp(os.urandom(32))
    ini, res = noise.StaticIdentity(ki), noise.StaticIdentity(kr)
    _, msg = noise.create_initiation(
        ini, res.public, res.hash0, dh(ki, res.public), bytes(32), 1, tai64n(),
        clamp(os.urandom(32)))
    value = bytearray(getattr(msg, field))
    value[3] ^= 0x40
    bad = msg._replace(**{field: bytes(value)})
    with pytest.raises(noise.HandshakeError):
        noise.consume_initiation(res, bad, lambda s: dh(kr, s))


def test_low_order_ephemeral_rejected():
    kr = clamp(os.urandom(32))
    res = noise.StaticIdentity(kr)
    msg = Initiation(1, bytes(32), bytes(48), bytes(28), bytes(16), bytes(16))
    with pytest.raises(noise.HandshakeError) as e:
        noise.consume_initiation(res, msg, lambda s: None)
    assert e.value.reason == "bad_point"
