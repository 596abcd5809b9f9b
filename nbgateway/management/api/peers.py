"""``/api/peers``: the stock WireGuard peers of an account and what each receives.

Owns the peer CRUD (a key pair generated here, clamped like ``wg genkey``, or
a client-supplied public key; a regular user lists and reads only its own
peers), a peer's network map and wg-quick configuration (text or QR code), and
the inspection of the synthetic DNS zones and access policies the private
services give the peers.
"""

from __future__ import annotations

import base64
from typing import Any

from nacl.public import PrivateKey

from nbgateway.management import peerconfig, wgconfig
from nbgateway.management.errors import ValidationError
from nbgateway.management.model import Peer
from nbgateway.management.validation import peer_endpoint_problem

from . import mapping as m
from .calls import (
    NOT_FOUND,
    PAGE_DESCRIPTION,
    PAGE_QUERY,
    acct,
    admin_acct,
    arr,
    fetch_limit,
    fqdn,
    is_admin,
    own_peer,
    page,
    paged,
    q,
    ref,
)
from .framework import ApiError, Call, Result, Route


def _check_public_key(key: str) -> str:
    try:
        return wgconfig.check_key(key)
    except wgconfig.WgConfigError:
        raise ValidationError("invalid wireguard public key: expected 32 bytes, base64") from None


def _check_endpoint(endpoint: str | None, *, proxy: bool = False,
                    stored: str | None = None) -> str | None:
    """The normalised ``host:port``; a stock peer's endpoint (where gateways
    send handshakes) may not point at the gateway host (loopback, link-local,
    ...).  A proxy peer's endpoint is where stock peers send: a gateway on the
    peers' own host (loopback) is fine there.  ``stored``: the peer's current
    endpoint, kept as it is (an update that leaves it alone is no new claim;
    the gateways refuse such an endpoint anyway)."""
    if not endpoint:
        return None
    try:
        out = wgconfig.check_endpoint(endpoint)
    except wgconfig.WgConfigError as exc:
        raise ValidationError(f"invalid endpoint: {exc}") from None
    if not proxy and endpoint != stored:
        host = out.rpartition(":")[0]
        problem = peer_endpoint_problem(host)
        if problem is not None:
            raise ValidationError(f"invalid endpoint: {host} {problem}; gateways would send "
                                  "their handshakes to their own host")
    return out


def _peer_name(body: dict[str, Any]) -> str:
    name = body.get("name", "").strip()
    if not name:
        raise ValidationError("peer name is required")
    if len(name) > 255:
        raise ValidationError("peer name exceeds maximum length of 255 characters")
    return name


def _key_pair() -> tuple[str, str]:
    """``(private, public)`` base64 keys, the private one clamped like ``wg genkey``
    (so ``wg show`` prints the same key)."""
    raw = bytearray(bytes(PrivateKey.generate()))
    raw[0] &= 248
    raw[31] = (raw[31] & 127) | 64
    sk = PrivateKey(bytes(raw))
    return base64.b64encode(bytes(sk)).decode(), base64.b64encode(bytes(sk.public_key)).decode()


def _conf_name(name: str) -> str:
    safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in name)[:15]
    return safe or "wg0"


class PeerHandlers:
    """Handlers of the peer routes (a mixin of :class:`.routes.Handlers`)."""

    store: Any

    def _groups(self, account: str, peers: list[Peer] | None = None
                ) -> dict[str, tuple[str, int]]:
        """Name and member count of the groups of ``peers`` (all groups: None)."""
        if peers is None:
            return self.store.groups.summaries(account)
        return self.store.groups.summaries(account, sorted({g for p in peers for g in p.groups}))

    def _peer_result(self, account: str, peer: Peer) -> Result:
        return Result(200, m.peer_to_api(peer, self._groups(account, [peer])))

    def list_peers(self, call: Call) -> Result:
        account = acct(call)
        limit, after = page(call)
        assert call.identity is not None
        found = self.store.peers.list(
            account, user_id=None if is_admin(call) else call.identity.user_id, after=after,
            limit=fetch_limit(limit))
        rows = found[:limit]
        groups = self._groups(account, rows)
        return paged(found, limit, [m.peer_to_api(p, groups) for p in rows], "/peers")

    def create_peer(self, call: Call) -> Result:
        account = admin_acct(call)
        b = call.body
        name = _peer_name(b)
        private_key = None
        if b.get("public_key"):
            public_key = _check_public_key(b["public_key"])
        else:
            private_key, public_key = _key_pair()
        cluster = fqdn(b.get("proxy_cluster", ""))
        # the groups' names and member counts come from the creating transaction
        peer, groups = self.store.peers.create_with_groups(Peer(
            account_id=account, name=name, key=public_key, user_id=b.get("user_id") or None,
            endpoint=_check_endpoint(b.get("endpoint"), proxy=bool(cluster)),
            groups=tuple(b.get("groups") or ()),
            proxy=bool(cluster), proxy_cluster=cluster, wg_private_key=private_key))
        out = m.peer_to_api(peer, groups)
        if private_key is not None:
            out["private_key"] = private_key
        return Result(200, out)

    def inspect_private_services(self, call: Call) -> Result:
        from nbgateway.management.synthetic import private_service_inspection

        return Result(200, private_service_inspection(self.store, admin_acct(call)))

    def peer_network_map(self, call: Call) -> Result:
        from nbgateway.management.networkmap import inspect_peer_network_map

        own_peer(call, self.store.peers.get(acct(call), call.params["peerId"]))
        return Result(200, inspect_peer_network_map(self.store, acct(call),
                                                    call.params["peerId"]))

    def get_peer(self, call: Call) -> Result:
        account = acct(call)
        return self._peer_result(
            account, own_peer(call, self.store.peers.get(account, call.params["peerId"])))

    def update_peer(self, call: Call) -> Result:
        account = admin_acct(call)
        b = call.body
        cur = self.store.peers.get(account, call.params["peerId"])
        updated = Peer(**{**cur.__dict__, "name": _peer_name(b),
                          "user_id": b.get("user_id", cur.user_id) or None,
                          "endpoint": _check_endpoint(b.get("endpoint", cur.endpoint),
                                                      proxy=cur.proxy, stored=cur.endpoint),
                          "groups": tuple(b["groups"]) if "groups" in b else cur.groups})
        return self._peer_result(account, self.store.peers.update(updated))

    def delete_peer(self, call: Call) -> Result:
        self.store.peers.delete(admin_acct(call), call.params["peerId"])
        return Result(200, {})

    def peer_wireguard_config(self, call: Call) -> Result:
        account = admin_acct(call)
        fmt = call.query.get("format") or "conf"
        if fmt not in ("conf", "qr"):
            raise ValidationError('format must be "conf" or "qr"')
        peer = self.store.peers.get(account, call.params["peerId"])
        try:  # lists only the gateways this peer may reach; says why for the others
            text = peerconfig.render_peer_config(self.store, account, peer,
                                                 with_ca=fmt == "conf")  # small QR
        except wgconfig.WgConfigError as exc:
            raise ApiError(409, f"cannot render wireguard config: {exc}") from None
        if fmt == "qr":
            return Result(200, wgconfig.render_qr_png(text), content_type="image/png")
        return Result(200, text.encode(), content_type="text/plain; charset=utf-8",
                      headers={"Content-Disposition":
                               f'attachment; filename="{_conf_name(peer.name)}.conf"'})


def peer_routes(h: PeerHandlers) -> list[Route]:
    return [
        Route("GET", "/peers", h.list_peers, "listPeers", "List peers", "Peers",
              response_schema=arr("Peer"), query=PAGE_QUERY, errors=(422,),
              description=PAGE_DESCRIPTION),
        Route("POST", "/peers", h.create_peer, "createPeer",
              "Create a stock WireGuard peer (server-generated or client-supplied key)", "Peers",
              request_schema="PeerCreateRequest", response_schema=ref("PeerCreated"),
              errors=(400, 403, 409, 413, 422)),
        Route("GET", "/peers/{peerId}", h.get_peer, "getPeer", "Get a peer", "Peers",
              response_schema=ref("Peer"), errors=NOT_FOUND),
        Route("PUT", "/peers/{peerId}", h.update_peer, "updatePeer", "Update a peer", "Peers",
              request_schema="PeerRequest", response_schema=ref("Peer"),
              errors=(400, 403, 404, 409, 413, 422)),
        Route("DELETE", "/peers/{peerId}", h.delete_peer, "deletePeer", "Delete a peer",
              "Peers", response_schema=ref("Empty"), errors=(403, 404)),
        Route("GET", "/reverse-proxies/private-services", h.inspect_private_services,
              "inspectPrivateServices",
              "Synthetic DNS zones and access policies derived from the private services",
              "Services", response_schema=ref("PrivateServiceInspection")),
        Route("GET", "/peers/{peerId}/network-map", h.peer_network_map, "getPeerNetworkMap",
              "The network map the peer currently receives (roster, DNS, firewall rules)",
              "Peers", response_schema=ref("PeerNetworkMap"), errors=NOT_FOUND),
        Route("GET", "/peers/{peerId}/wireguard-config", h.peer_wireguard_config,
              "getPeerWireguardConfig",
              "wg-quick configuration for the peer ([Peer] = the account's proxy peers)",
              "Peers", response_content_types=("text/plain", "image/png"),
              query=[q("format", enum=["conf", "qr"], default="conf",
                       description="qr returns a PNG QR code of the config")],
              errors=(403, 404, 409, 422)),
    ]
