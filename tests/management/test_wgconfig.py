"""wg-quick rendering: structure, validation of every interpolated value, QR PNG."""

from __future__ import annotations

import base64
import os
import struct
import zlib

import pytest

from nbgateway.management.wgconfig import (
    PRIVATE_KEY_PLACEHOLDER,
    WgConfigError,
    WgPeer,
    check_endpoint,
    check_key,
    render_config,
    render_qr_png,
)


def key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


def test_full_config_layout():
    priv, p1, p2 = key(), key(), key()
    text = render_config(
        private_key=priv,
        addresses=["100.64.0.10", "fd00::a"],
        proxy_peers=[
            WgPeer(p1, "127.0.0.1:51820", ["100.64.0.99", "fd00::63"]),
            WgPeer(p2, "[::1]:51821", ["100.64.0.100"]),
        ],
    )
    assert text == (
        "[Interface]\n"
        f"PrivateKey = {priv}\n"
        "Address = 100.64.0.10/32, fd00::a/128\n"
        "DNS = 100.64.0.99, fd00::63, 100.64.0.100\n"
        "\n[Peer]\n"
        f"PublicKey = {p1}\n"
        "Endpoint = 127.0.0.1:51820\n"
        "AllowedIPs = 100.64.0.99/32, fd00::63/128\n"
        "PersistentKeepalive = 25\n"
        "\n[Peer]\n"
        f"PublicKey = {p2}\n"
        "Endpoint = [::1]:51821\n"
        "AllowedIPs = 100.64.0.100/32\n"
        "PersistentKeepalive = 25\n"
    )


def test_no_private_key_and_no_proxy_peers():
    text = render_config(private_key=None, addresses=["100.64.0.10", None], proxy_peers=[])
    assert text == f"[Interface]\n{PRIVATE_KEY_PLACEHOLDER}\nAddress = 100.64.0.10/32\n"
    assert "DNS" not in text


def test_proxy_peer_without_endpoint_gets_comment_not_directive():
    text = render_config(private_key=None, addresses=["100.64.0.10"],
                         proxy_peers=[WgPeer(key(), None, ["100.64.0.99"])])
    assert "Endpoint =" not in text
    assert "# Endpoint unknown" in text


@pytest.mark.parametrize("bad", ["", "abc", "A" * 44, base64.b64encode(b"x" * 31).decode() + "==",
                                 key()[:-1] + "\n", key() + "\nDNS = 1.1.1.1"])
def test_bad_keys_rejected(bad):
    with pytest.raises(WgConfigError):
        check_key(bad)


@pytest.mark.parametrize("endpoint,expected", [
    ("127.0.0.1:51820", "127.0.0.1:51820"),
    ("gw.example.com:443", "gw.example.com:443"),
    ("[::1]:9", "[::1]:9"),
    ("[fd00:0::1]:09", "[fd00::1]:9"),
])
def test_endpoints_normalised(endpoint, expected):
    assert check_endpoint(endpoint) == expected


@pytest.mark.parametrize("bad", ["", "127.0.0.1", "host:0", "host:70000", "ho st:1", ":1",
                                 "h:1\nPostUp = rm -rf /", "[::1:5", "[zz::]:5", "-a.b:1"])
def test_bad_endpoints_rejected(bad):
    with pytest.raises(WgConfigError):
        check_endpoint(bad)


def test_bad_addresses_rejected():
    with pytest.raises(WgConfigError):
        render_config(private_key=None, addresses=["100.64.0.10\nPostUp=x"], proxy_peers=[])
    with pytest.raises(WgConfigError):
        render_config(private_key=None, addresses=[], proxy_peers=[])


def _png_chunks(data: bytes):
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos = 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        ctype = data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert zlib.crc32(ctype + body) == crc
        yield ctype, body
        pos += 12 + length


def test_qr_png_is_a_valid_png():
    text = render_config(private_key=key(), addresses=["100.64.0.10"],
                         proxy_peers=[WgPeer(key(), "127.0.0.1:51820", ["100.64.0.99"])])
    png = render_qr_png(text)
    chunks = dict(_png_chunks(png))
    width, height = struct.unpack(">II", chunks[b"IHDR"][:8])
    assert width == height and width > 100
    assert b"IEND" in chunks
