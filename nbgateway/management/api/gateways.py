"""``/api/reverse-proxies/{clusters,proxies,domains,proxy-tokens}``: the gateway side.

Owns what an account sees of its gateways: the proxy clusters and each
gateway's connection state, capabilities and in-tunnel listeners
(``nbgateway-admin status``), the domains they serve (free cluster addresses
and custom domains) and the proxy access tokens gateways connect with (the
plain token is in the creating answer only; a global token needs an instance
admin).  Every route is for account admins.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from nbgateway.management.errors import NotFound, ValidationError
from nbgateway.management.l4ports import format_ranges
from nbgateway.management.model import CustomDomain

from . import mapping as m
from .calls import admin_acct, arr, fqdn, ref, require_instance_admin
from .framework import ApiError, Call, Result, Route

PROXIES_SCHEMA: dict[str, Any] = {"type": "array", "items": {
    "type": "object",
    "required": ["id", "cluster_address", "status", "online", "capabilities",
                 "inbound_listeners"],
    "properties": {
        "id": {"type": "string"}, "cluster_address": {"type": "string"},
        "ip_address": {"type": "string"}, "status": {"type": "string"},
        "last_seen": {"type": "string", "format": "date-time"}, "online": {"type": "boolean"},
        "capabilities": {"type": "object", "additionalProperties": {"type": "boolean"}},
        # only when the gateway advertised them (nbgw_l4_public_ports)
        "l4_public_ports": {"type": "string", "description":
                            "host ports public L4 services may bind on this gateway "
                            "(1024-65535 syntax; empty = none)"},
        "l4_tls_port": {"type": "integer", "description":
                        "its main HTTPS port, where a TLS service is also accepted"},
        "inbound_listeners": {"type": "array", "items": {
            "type": "object", "required": ["tunnel_ip", "https_port", "http_port"],
            "properties": {"tunnel_ip": {"type": "string"}, "https_port": {"type": "integer"},
                           "http_port": {"type": "integer"}}}}}}}


class GatewayHandlers:
    """Handlers of the cluster, proxy, domain and proxy-token routes (a mixin of
    :class:`.routes.Handlers`)."""

    store: Any

    # -- clusters and proxies --------------------------------------------------

    def list_clusters(self, call: Call) -> Result:
        clusters = self.store.proxies.list_clusters(admin_acct(call))
        return Result(200, [m.cluster_to_api(c) for c in clusters])

    def list_proxies(self, call: Call) -> Result:
        """The gateways visible to the account: connection state, capabilities
        and where each listens inside this account's tunnel (``nbgateway-admin
        status``)."""
        from nbgateway.management.store._proxies import ACTIVE_WINDOW

        account = admin_acct(call)
        listeners: dict[str, list[dict[str, Any]]] = {}
        for li in self.store.proxies.list_inbound_listeners(account):
            listeners.setdefault(li.proxy_id, []).append(
                {"tunnel_ip": li.tunnel_ip, "https_port": li.https_port,
                 "http_port": li.http_port})
        now = datetime.now(UTC)
        out = []
        for p in self.store.proxies.list(account):
            seen = p.last_seen.replace(tzinfo=UTC) if p.last_seen and p.last_seen.tzinfo is None \
                else p.last_seen
            caps = p.capabilities
            online = p.status == "connected" and seen is not None and seen > now - ACTIVE_WINDOW
            out.append({
                "id": p.id, "cluster_address": p.cluster_address, "ip_address": p.ip_address,
                "status": p.status, "online": online,
                **({"last_seen": m.ts(seen)} if seen is not None else {}),
                "capabilities": {k: v for k, v in (
                    ("supports_custom_ports", caps.supports_custom_ports),
                    ("require_subdomain", caps.require_subdomain),
                    ("supports_crowdsec", caps.supports_crowdsec),
                    ("private", caps.private)) if v is not None},
                **({} if caps.l4_ports is None else {
                    "l4_public_ports": format_ranges(caps.l4_ports.ranges),
                    "l4_tls_port": caps.l4_ports.tls_port}),
                "inbound_listeners": listeners.get(p.id, [])})
        return Result(200, out)

    def delete_cluster(self, call: Call) -> Result:
        self.store.proxies.delete_cluster(admin_acct(call), call.params["clusterAddress"])
        return Result(200, {})

    # -- domains ---------------------------------------------------------------

    def list_domains(self, call: Call) -> Result:
        account = admin_acct(call)
        clusters = {c.address: c for c in self.store.proxies.list_clusters(account)}
        out = [m.free_domain_to_api(c) for c in clusters.values() if c.online]
        out += [m.custom_domain_to_api(d, clusters.get(d.target_cluster))
                for d in self.store.domains.list(account)]
        return Result(200, out)

    def create_domain(self, call: Call) -> Result:
        account = admin_acct(call)
        domain = fqdn(call.body.get("domain", ""))
        target = fqdn(call.body.get("target_cluster", ""))
        if not domain:
            raise ValidationError("domain is required")
        if not target:
            raise ValidationError("target_cluster is required")
        if len(domain) > 255 or len(target) > 255:
            raise ValidationError("domain exceeds maximum length of 255 characters")
        created = self.store.domains.create(CustomDomain(account_id=account, domain=domain,
                                                        target_cluster=target))
        clusters = {c.address: c for c in self.store.proxies.list_clusters(account)}
        return Result(200, m.custom_domain_to_api(created, clusters.get(created.target_cluster)))

    def delete_domain(self, call: Call) -> Result:
        self.store.domains.delete(admin_acct(call), call.params["domainId"])
        return Result(200, {})

    def validate_domain(self, call: Call) -> Result:
        account = admin_acct(call)
        did = call.params["domainId"]
        if not any(d.id == did for d in self.store.domains.list(account)):
            raise NotFound("domain not found")
        return Result(202, {})

    # -- proxy tokens ------------------------------------------------------------

    def list_proxy_tokens(self, call: Call) -> Result:
        return Result(200, [m.proxy_token_to_api(t)
                            for t in self.store.proxies.list_tokens(admin_acct(call))])

    def create_proxy_token(self, call: Call) -> Result:
        scope: str | None = admin_acct(call)
        assert call.identity is not None
        name = call.body.get("name", "")
        if not name or len(name) > 255:
            raise ApiError(400, "name is required and must be at most 255 characters")
        expires_in = call.body.get("expires_in", 0)
        if expires_in < 0:
            raise ApiError(400, "expires_in must be non-negative")
        expires_at = None
        if expires_in:
            try:
                expires_at = datetime.now(UTC) + timedelta(seconds=expires_in)
            except OverflowError:
                raise ApiError(400, "expires_in is too large") from None
        if call.body.get("global", False):
            require_instance_admin(call)
            scope = None
        row, plain = self.store.proxies.create_token(name, account_id=scope,
                                                   expires_at=expires_at,
                                                   created_by=call.identity.user_id)
        return Result(200, {**m.proxy_token_to_api(row), "plain_token": plain})

    def revoke_proxy_token(self, call: Call) -> Result:
        self.store.proxies.revoke_token(admin_acct(call), call.params["tokenId"])
        return Result(200, {})


def gateway_routes(h: GatewayHandlers) -> list[Route]:
    rp = "/reverse-proxies"
    return [
        Route("GET", rp + "/clusters", h.list_clusters, "listClusters", "List proxy clusters",
              "Clusters", response_schema=arr("ProxyCluster")),
        Route("GET", rp + "/proxies", h.list_proxies, "listProxies",
              "List the gateways (proxies) with capabilities and inbound listeners",
              "Services", response_schema=PROXIES_SCHEMA),
        Route("DELETE", rp + "/clusters/{clusterAddress}", h.delete_cluster, "deleteCluster",
              "Delete the account's own proxies of a cluster", "Clusters",
              response_schema=ref("Empty"), errors=(403, 404)),
        Route("GET", rp + "/domains", h.list_domains, "listDomains",
              "List free and custom domains", "Domains", response_schema=arr("ReverseProxyDomain")),
        Route("POST", rp + "/domains", h.create_domain, "createDomain",
              "Register a custom domain", "Domains", request_schema="ReverseProxyDomainRequest",
              response_schema=ref("ReverseProxyDomain"), errors=(400, 403, 409, 413, 422)),
        Route("DELETE", rp + "/domains/{domainId}", h.delete_domain, "deleteDomain",
              "Delete a custom domain", "Domains", response_schema=ref("Empty"),
              errors=(403, 404)),
        Route("GET", rp + "/domains/{domainId}/validate", h.validate_domain, "validateDomain",
              "Request validation of a custom domain (nbgateway records the request only)",
              "Domains", response_schema=ref("Empty"), response_status=202, errors=(403, 404)),
        Route("GET", rp + "/proxy-tokens", h.list_proxy_tokens, "listProxyTokens",
              "List the account's proxy access tokens", "Proxy tokens",
              response_schema=arr("ProxyToken")),
        Route("POST", rp + "/proxy-tokens", h.create_proxy_token, "createProxyToken",
              "Create an account-scoped proxy access token (plain token shown once)",
              "Proxy tokens", request_schema="ProxyTokenRequest",
              response_schema=ref("ProxyTokenCreated"), errors=(400, 403, 413, 422)),
        Route("DELETE", rp + "/proxy-tokens/{tokenId}", h.revoke_proxy_token,
              "revokeProxyToken", "Revoke a proxy access token", "Proxy tokens",
              response_schema=ref("Empty"), errors=(403, 404)),
    ]
