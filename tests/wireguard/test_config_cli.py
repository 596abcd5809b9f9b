"""wg-quick style config parsing and the nbgateway-wg command."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from nbgateway.wireguard.cli import main
from nbgateway.wireguard.config import ConfigError, parse_config, parse_endpoint

PRIV = "iKhl3HS4oi3SQR/T5mRncNK0dSpAj/DF5GWt5O1r21U="
PUB = "RYS6HAuxttBqBNr+cIZi/3P8eYNqRZbWr0hx3mCMKm0="

GOOD = f"""
# comment
[Interface]
PrivateKey = {PRIV}
ListenPort = 51820
Address = 100.64.0.1/32, fd00:64::1/128
DNS = 1.1.1.1

[Peer]
PublicKey = {PUB}
AllowedIPs = 100.64.0.2/32, fd00:64::2/128
Endpoint = [::1]:51821
PresharedKey = {PRIV}
PersistentKeepalive = 25

[Peer]
PublicKey = {PUB}
Endpoint = 127.0.0.1:9
"""


def test_parse_good_config():
    cfg = parse_config(GOOD, "wg0.conf")
    assert cfg.listen_port == 51820
    assert [str(a) for a in cfg.addresses] == ["100.64.0.1/32", "fd00:64::1/128"]
    p = cfg.peers[0]
    assert p.endpoint == ("::1", 51821)
    assert p.persistent_keepalive == 25
    assert [str(n) for n in p.allowed_ips] == ["100.64.0.2/32", "fd00:64::2/128"]
    assert cfg.peers[1].endpoint == ("127.0.0.1", 9)


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("[Interface]\nPrivateKey = nope\n", 2, "key must be"),
        (f"[Interface]\nPrivateKey = {PRIV}\nListenPort = 70000\n", 3, "ListenPort"),
        (f"[Interface]\nPrivateKey = {PRIV}\n[Peer]\nAllowedIPs = 1.2.3.4/32\n", 4,
         "PublicKey must come first"),
        (f"[Interface]\nPrivateKey = {PRIV}\n[Peer]\nPublicKey = {PUB}\nEndpoint = 1.2.3.4\n", 5,
         "host:port"),
        (f"[Interface]\nPrivateKey = {PRIV}\nBogus = 1\n", 3, "unknown [Interface] key"),
        (f"[Interface]\nPrivateKey = {PRIV}\nAddress = 300.1.1.1/32\n", 3, "300.1.1.1"),
        ("[Wat]\n", 1, "unknown section"),
        ("PrivateKey = x\n", 1, "outside of a section"),
        (f"[Interface]\nPrivateKey = {PRIV}\n[Peer]\n", 3, "without PublicKey"),
    ],
)
def test_errors_name_the_line(text, line, fragment):
    with pytest.raises(ConfigError) as e:
        parse_config(text, "wg0.conf")
    msg = str(e.value)
    assert msg.startswith(f"wg0.conf:{line}:"), msg
    assert fragment in msg
    assert "\n" not in msg


def test_missing_private_key():
    with pytest.raises(ConfigError, match="PrivateKey is required"):
        parse_config("[Interface]\nListenPort = 1\n", "x.conf")


def test_parse_endpoint_forms():
    assert parse_endpoint("[fd00::1]:5") == ("fd00::1", 5)
    assert parse_endpoint("127.0.0.1:65535") == ("127.0.0.1", 65535)
    with pytest.raises(ValueError):
        parse_endpoint("127.0.0.1:0")
    with pytest.raises(ValueError):
        parse_endpoint("example.invalid:1", resolve=False)


def test_genkey_pubkey(capsys, monkeypatch):
    import io

    assert main(["genkey"]) == 0
    key = capsys.readouterr().out.strip()
    assert len(key) == 44
    monkeypatch.setattr(sys, "stdin", io.StringIO(PRIV + "\n"))
    assert main(["pubkey"]) == 0
    assert capsys.readouterr().out.strip() == PUB
    monkeypatch.setattr(sys, "stdin", io.StringIO("garbage\n"))
    assert main(["pubkey"]) == 1
    assert "error" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("wg") is None, reason="wireguard-tools (wg) not installed")
def test_pubkey_matches_wg_tools():
    gen = subprocess.run([sys.executable, "-m", "nbgateway.wireguard.cli", "genkey"],
                         capture_output=True, text=True, check=True).stdout
    ours = subprocess.run([sys.executable, "-m", "nbgateway.wireguard.cli", "pubkey"],
                          input=gen, capture_output=True, text=True, check=True).stdout
    theirs = subprocess.run(["wg", "pubkey"], input=gen, capture_output=True, text=True,
                            check=True).stdout
    assert ours == theirs
    # and the reverse direction: a key made by wg
    wgkey = subprocess.run(["wg", "genkey"], capture_output=True, text=True, check=True).stdout
    ours = subprocess.run([sys.executable, "-m", "nbgateway.wireguard.cli", "pubkey"],
                          input=wgkey, capture_output=True, text=True, check=True).stdout
    theirs = subprocess.run(["wg", "pubkey"], input=wgkey, capture_output=True, text=True,
                            check=True).stdout
    assert ours == theirs


def test_run_bad_config_one_line_error(tmp_path):
    path = tmp_path / "bad.conf"
    path.write_text(f"[Interface]\nPrivateKey = {PRIV}\nListenPort = x\n")
    proc = subprocess.run([sys.executable, "-m", "nbgateway.wireguard.cli", "run", str(path)],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{path}:3:" in lines[0]


def test_udp_listen_enlarges_socket_buffers():
    from twisted.internet import reactor
    from twisted.internet.task import Clock

    from nbgateway.wireguard import udp
    from nbgateway.wireguard.device import WireGuardDevice
    from nbgateway.wireguard.keys import generate_private_key

    port = udp.listen(reactor, WireGuardDevice(generate_private_key(), Clock()), 0,
                      interface="127.0.0.1")
    try:
        import socket

        rcv = port.socket.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        with open("/proc/sys/net/core/rmem_max") as f:
            rmem_max = int(f.read())
        # root may exceed rmem_max (SO_RCVBUFFORCE); Linux reports twice the request
        wanted = udp.SOCKET_BUFFER if os.geteuid() == 0 else min(udp.SOCKET_BUFFER, rmem_max)
        assert rcv >= wanted
    finally:
        port.stopListening()
