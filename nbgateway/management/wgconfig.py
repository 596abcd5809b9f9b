"""wg-quick configuration (and its QR code) for a stock WireGuard peer.

Owns the text format only: given the peer's own key/addresses and the account's
proxy peers (public key, advertised UDP endpoint, tunnel addresses) it renders a
``wg-quick(8)`` file whose ``[Peer]`` sections are the proxy peers.  Every value
that reaches the file is validated first (base64 32-byte keys, IP addresses,
``host:port`` endpoints), so nothing stored in the database can inject extra
lines or directives into a config a user pastes into ``/etc/wireguard``.

Pure functions, no I/O; the REST layer maps store objects onto :class:`WgPeer`.
"""

from __future__ import annotations

import base64
import binascii
import io
import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

#: wg-quick keeps NAT mappings and stateful firewalls open with this interval.
PERSISTENT_KEEPALIVE = 25

PRIVATE_KEY_PLACEHOLDER = (
    "# PrivateKey = <the private key of this peer; it was generated on the client>"
)

_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?$")


class WgConfigError(ValueError):
    """A value cannot be placed in a wg-quick file (bad key, address or endpoint)."""


def check_key(key: str) -> str:
    """Return *key* if it is the base64 encoding of exactly 32 bytes."""
    if not isinstance(key, str) or len(key) != 44:
        raise WgConfigError("wireguard key must be 44 base64 characters")
    try:
        raw = base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise WgConfigError("wireguard key is not valid base64") from exc
    if len(raw) != 32:
        raise WgConfigError("wireguard key must decode to 32 bytes")
    return key


def check_endpoint(endpoint: str) -> str:
    """Return a normalised ``host:port`` / ``[v6]:port`` UDP endpoint or raise."""
    if not isinstance(endpoint, str) or not endpoint or len(endpoint) > 300:
        raise WgConfigError("endpoint must be host:port")
    if endpoint.startswith("["):
        host, sep, port = endpoint[1:].partition("]:")
        if not sep:
            raise WgConfigError("endpoint must be [ipv6]:port")
        try:
            addr = ipaddress.IPv6Address(host)
        except ValueError as exc:
            raise WgConfigError("endpoint has an invalid IPv6 address") from exc
        host = f"[{addr}]"
    else:
        host, sep, port = endpoint.rpartition(":")
        if not sep or not host:
            raise WgConfigError("endpoint must be host:port")
        try:
            host = str(ipaddress.IPv4Address(host))
        except ValueError:
            if not _HOSTNAME.fullmatch(host):
                raise WgConfigError("endpoint has an invalid host name") from None
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise WgConfigError("endpoint port must be 1..65535")
    return f"{host}:{int(port)}"


def host_prefix(address: str) -> str:
    """``100.64.0.9`` -> ``100.64.0.9/32``; ``fd00::9`` -> ``fd00::9/128``."""
    addr = ipaddress.ip_address(str(address).split("/")[0])
    return f"{addr}/{addr.max_prefixlen}"


@dataclass(frozen=True)
class WgPeer:
    """One ``[Peer]`` section: a proxy peer of the account."""

    public_key: str
    endpoint: str | None = None
    addresses: Sequence[str] = field(default_factory=tuple)


def _addresses(values: Iterable[str | None]) -> list[str]:
    out = []
    for value in values:
        if not value:
            continue
        try:
            out.append(host_prefix(value))
        except ValueError as exc:
            raise WgConfigError(f"invalid tunnel address {value!r}") from exc
    return out


@dataclass(frozen=True)
class WithheldPeer:
    """A proxy peer left out of the config: this peer may reach none of its
    services.  ``groups`` names the access groups that would let it in."""

    cluster: str
    groups: Sequence[str] = field(default_factory=tuple)


def comment_text(text: str, limit: int = 200) -> str:
    """``text`` made safe for one ``#`` comment line: printable ASCII only
    (a stored name can never start a new line or directive), bounded."""
    clean = "".join(c if " " <= c <= "~" else "?" for c in str(text))
    return clean if len(clean) <= limit else clean[:limit] + "..."


def withheld_comment(peer: WithheldPeer) -> list[str]:
    """The comment lines that say why a proxy peer is not a ``[Peer]``."""
    groups = ", ".join(comment_text(g, 60) for g in list(peer.groups)[:10])
    lines = [f"# The gateway {comment_text(peer.cluster, 100)} is left out of this config: "
             "this peer is in", "# none of the access groups of its private services and no "
             "service targets it,", "# so the gateway would drop its handshakes."]
    if groups:
        lines.append(f"# Add this peer to one of: {groups}; then fetch this config again.")
    else:
        lines.append("# It serves no private service with an access group yet.")
    return lines


def render_config(
    *,
    private_key: str | None,
    addresses: Iterable[str | None],
    proxy_peers: Iterable[WgPeer],
    keepalive: int = PERSISTENT_KEEPALIVE,
    withheld: Iterable[WithheldPeer] = (),
) -> str:
    """Render the wg-quick file.

    ``DNS`` lists the proxy peers' tunnel addresses (they answer for the private
    service names); it is left out when the account has no proxy peer.  Each
    ``withheld`` proxy peer becomes a comment saying why it is not listed.
    """
    own = _addresses(addresses)
    if not own:
        raise WgConfigError("the peer has no tunnel address")
    peers = list(proxy_peers)
    lines = ["[Interface]"]
    lines.append(f"PrivateKey = {check_key(private_key)}" if private_key else
                 PRIVATE_KEY_PLACEHOLDER)
    lines.append(f"Address = {', '.join(own)}")
    dns: list[str] = []
    for peer in peers:
        dns.extend(str(ipaddress.ip_interface(a).ip) for a in _addresses(peer.addresses))
    if dns:
        lines.append(f"DNS = {', '.join(dict.fromkeys(dns))}")
    for gone in withheld:
        lines += ["", *withheld_comment(gone)]
    for peer in peers:
        allowed = _addresses(peer.addresses)
        lines += ["", "[Peer]", f"PublicKey = {check_key(peer.public_key)}"]
        if peer.endpoint:
            lines.append(f"Endpoint = {check_endpoint(peer.endpoint)}")
        else:
            lines.append("# Endpoint unknown: this proxy peer advertises no UDP endpoint")
        if allowed:
            lines.append(f"AllowedIPs = {', '.join(allowed)}")
        lines.append(f"PersistentKeepalive = {int(keepalive)}")
    return "\n".join(lines) + "\n"


def render_qr_png(text: str) -> bytes:
    """Encode *text* as a PNG QR code (qrcode + pypng; no PIL needed)."""
    import qrcode
    from qrcode.image.pure import PyPNGImage

    qr = qrcode.QRCode(error_correction=qrcode.constants.ERROR_CORRECT_M,
                       image_factory=PyPNGImage, border=4, box_size=6)
    qr.add_data(text)
    qr.make(fit=True)
    buf = io.BytesIO()
    qr.make_image().save(buf)
    return buf.getvalue()
