"""wg-quick style configuration files for ``nbgateway-wg run``.

Reads ``[Interface]`` (PrivateKey, ListenPort, Address, MTU) and ``[Peer]``
(PublicKey, AllowedIPs, Endpoint, PresharedKey, PersistentKeepalive) sections.
wg-quick-only keys (DNS, Table, PreUp, PostUp, ...) are accepted and ignored.
Every error is a :class:`ConfigError` whose message names the file and line.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field

from nbgateway.wireguard.keys import key_from_base64

_WG_QUICK_ONLY = {"dns", "table", "preup", "postup", "predown", "postdown", "saveconfig", "fwmark"}


class ConfigError(ValueError):
    """A configuration problem, with ``file:line:`` in its message."""


@dataclass
class PeerConfig:
    public_key: bytes
    allowed_ips: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = field(default_factory=list)
    endpoint: tuple[str, int] | None = None
    preshared_key: bytes | None = None
    persistent_keepalive: int | None = None


@dataclass
class InterfaceConfig:
    private_key: bytes
    listen_port: int = 0
    addresses: list[ipaddress.IPv4Interface | ipaddress.IPv6Interface] = field(
        default_factory=list
    )
    mtu: int = 1420
    peers: list[PeerConfig] = field(default_factory=list)


def parse_endpoint(text: str, resolve: bool = True) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` -> (address, port); hostnames are resolved."""
    text = text.strip()
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise ValueError("expected [IPv6]:port")
    else:
        host, sep, port = text.rpartition(":")
        if not sep or not host:
            raise ValueError("expected host:port")
    try:
        port_n = int(port)
    except ValueError:
        raise ValueError(f"bad port {port!r}") from None
    if not 0 < port_n < 65536:
        raise ValueError(f"port {port_n} out of range")
    try:
        addr = str(ipaddress.ip_address(host))
    except ValueError:
        if not resolve:
            raise ValueError(f"not an IP address: {host!r}") from None
        try:
            infos = socket.getaddrinfo(host, port_n, type=socket.SOCK_DGRAM)
        except OSError as exc:
            raise ValueError(f"cannot resolve {host!r}: {exc}") from None
        addr = infos[0][4][0]
    return addr, port_n


def _int(value: str, lo: int, hi: int, what: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise ValueError(f"{what} must be an integer") from None
    if not lo <= n <= hi:
        raise ValueError(f"{what} must be between {lo} and {hi}")
    return n


def parse_config(text: str, filename: str = "<config>", resolve: bool = True) -> InterfaceConfig:
    section: str | None = None
    private_key: bytes | None = None
    iface: dict = {}
    peers: list[PeerConfig] = []
    peer: PeerConfig | None = None
    peer_line = 0

    def fail(lineno: int, msg: str) -> ConfigError:
        return ConfigError(f"{filename}:{lineno}: {msg}")

    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("[") and line.endswith("]"):
            name = line[1:-1].strip().lower()
            if peer is None and section == "peer":
                raise fail(peer_line, "[Peer] section without PublicKey")
            if name == "interface":
                section, peer = "interface", None
            elif name == "peer":
                section, peer, peer_line = "peer", None, lineno
            else:
                raise fail(lineno, f"unknown section [{line[1:-1]}]")
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise fail(lineno, f"expected 'Key = Value', got {raw.strip()!r}")
        key_l, value = key.strip().lower(), value.strip()
        try:
            if section == "interface":
                if key_l == "privatekey":
                    private_key = key_from_base64(value)
                elif key_l == "listenport":
                    iface["listen_port"] = _int(value, 0, 65535, "ListenPort")
                elif key_l == "address":
                    iface.setdefault("addresses", []).extend(
                        ipaddress.ip_interface(a.strip()) for a in value.split(",") if a.strip()
                    )
                elif key_l == "mtu":
                    iface["mtu"] = _int(value, 576, 65535, "MTU")
                elif key_l not in _WG_QUICK_ONLY:
                    raise ValueError(f"unknown [Interface] key {key.strip()!r}")
            elif section == "peer":
                if key_l == "publickey":
                    if peer is not None:
                        raise ValueError("duplicate PublicKey in one [Peer] section")
                    peer = PeerConfig(key_from_base64(value))
                    peers.append(peer)
                    continue
                if peer is None:
                    raise ValueError("PublicKey must come first in a [Peer] section")
                if key_l == "allowedips":
                    peer.allowed_ips.extend(
                        ipaddress.ip_network(a.strip(), strict=False)
                        for a in value.split(",")
                        if a.strip()
                    )
                elif key_l == "endpoint":
                    peer.endpoint = parse_endpoint(value, resolve)
                elif key_l == "presharedkey":
                    peer.preshared_key = key_from_base64(value)
                elif key_l == "persistentkeepalive":
                    off = value.lower() == "off"
                    n = 0 if off else _int(value, 0, 65535, "PersistentKeepalive")
                    peer.persistent_keepalive = n or None
                else:
                    raise ValueError(f"unknown [Peer] key {key.strip()!r}")
            else:
                raise ValueError("key outside of a section")
        except ValueError as exc:
            raise fail(lineno, str(exc)) from None
    if section == "peer" and peer is None:
        raise fail(peer_line, "[Peer] section without PublicKey")
    if private_key is None:
        raise ConfigError(f"{filename}: [Interface] PrivateKey is required")
    return InterfaceConfig(private_key=private_key, peers=peers, **iface)


def load_config(path: str, resolve: bool = True) -> InterfaceConfig:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    return parse_config(text, path, resolve)
