"""The ProxyService servicer is composed: each unary RPC is routed to a handler
object of one RPC family, which holds its own state (no mixins)."""

from __future__ import annotations

from nbgateway.management.proxyrpcs import (
    AccessLogRpcs,
    SessionRpcs,
    StatusRpcs,
    TunnelPeerRpcs,
)
from nbgateway.management.proxyservice import ProxyServiceServicer
from nbgateway.management.store import Store

FAMILIES = {
    "ValidateTunnelPeer": TunnelPeerRpcs,
    "CreateProxyPeer": TunnelPeerRpcs,
    "ValidateSession": SessionRpcs,
    "Authenticate": SessionRpcs,
    "GetOIDCURL": SessionRpcs,
    "SendStatusUpdate": StatusRpcs,
    "SendAccessLog": AccessLogRpcs,
    "NbgwSendAccessLogBatch": AccessLogRpcs,
}


def test_servicer_is_not_a_mixin() -> None:
    assert ProxyServiceServicer.__mro__ == (ProxyServiceServicer, object)
    for name in FAMILIES:
        assert not hasattr(ProxyServiceServicer, name), name


def test_each_unary_rpc_is_routed_to_its_family_object(store: Store) -> None:
    sso = object()
    servicer = ProxyServiceServicer(store, sso=sso)
    routed = servicer.unary_methods()
    assert set(routed) == set(FAMILIES)
    for name, (fn, req_cls, resp_cls) in routed.items():
        owner = fn.__self__
        assert type(owner) is FAMILIES[name], name
        assert owner.store is store
        assert fn.__name__ == name
        assert req_cls.__name__ == f"{name}Request" and resp_cls.__name__ == f"{name}Response"
    # the state each family holds is its own or shared explicitly, never looked up on the servicer
    assert servicer.tunnel_peers.tokens is servicer.tokens
    assert servicer.sessions.guesses is servicer.guesses
    assert servicer.sessions.sso is sso and servicer.sso is sso
    assert servicer.status.connections() == []
    servicer.access_logs.rejected = 3
    assert servicer.access_log_rejected == 3
