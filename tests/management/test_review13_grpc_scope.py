"""Review 13: an account-scoped (BYOP) proxy token against another account,
over real gRPC, SQLite and PostgreSQL.

Any tenant admin can mint an account-scoped proxy token (``POST
/api/reverse-proxies/proxy-tokens``) and run its own gateway with it.  The
hostile tenant ``acct-evil`` here knows the victim's account id, service id,
domain, a one-time ``CreateProxyPeer`` token the victim's gateway holds and
the victim's peers' tunnel addresses (its own peers may use the same ones:
addresses are unique per account).  Pinned:

* ``SendStatusUpdate`` for the victim's service: PERMISSION_DENIED under
  the victim's account id, NOT_FOUND under its own; the victim's status,
  inbound listeners, certificate status and private CA are untouched (a
  rogue CA never reaches the victim's ``ca-certificate``).
* ``SendAccessLog`` / ``NbgwSendAccessLogBatch`` with a victim entry:
  PERMISSION_DENIED, nothing stored for anyone.
* ``ValidateTunnelPeer``: the victim's domain is PERMISSION_DENIED; its own
  domain at the victim's peer's address answers with its own peer, never the
  victim's user; a shared gateway naming the wrong account
  (``nbgw_account_id``) is ``account_mismatch``.
* ``ValidateSession``: the victim's domain is PERMISSION_DENIED; a session
  JWT of the hostile account's service is ``invalid_token`` on the victim's
  domain (each service signs with its own key).
* ``Authenticate`` / ``GetOIDCURL`` / ``CreateProxyPeer`` naming the
  victim's account: PERMISSION_DENIED; ``CreateProxyPeer`` under its own
  account with the victim's one-time token is UNAUTHENTICATED and does not
  spend it (the victim's gateway still registers with it).
* ``GetMappingUpdate`` on its own cluster: none of the victim's mappings.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import grpc
import pytest

from nbgateway._proto import proxy_service_pb2 as pb
from nbgateway.management.model import (
    AccessLogQuery,
    Account,
    AuthConfig,
    Group,
    Peer,
    PinAuth,
)
from nbgateway.tls.certstore import LocalCA
from tests.management.test_grpc_streams import GmuClient
from tests.management.test_grpc_support import (
    ACCOUNT,
    CLUSTER,
    DOMAIN,
    U_IP,
    Fixture,
    Harness,
    cluster_target,
    make_service,
    md,
    wg_key,
)

EVIL = "acct-evil"
EVIL_CLUSTER = "evil.byop.test"
EVIL_DOMAIN = f"app.{EVIL_CLUSTER}"


@dataclasses.dataclass
class World:
    h: Harness
    fx: Fixture
    evil: str  # the hostile tenant's scoped proxy token

    def call(self, method: str, req, token: str | None = None):
        return getattr(self.h.stub, method)(req, metadata=md(token or self.evil))

    def refused(self, method: str, req, token: str | None = None) -> grpc.RpcError:
        with pytest.raises(grpc.RpcError) as info:
            self.call(method, req, token)
        return info.value


@pytest.fixture
def world(store) -> Iterator[World]:
    fx = Fixture(store)
    store.accounts.create(Account(id=EVIL, domain="evil.test"))
    _, evil = store.proxies.create_token("evil", account_id=EVIL)
    h = Harness(store, heartbeat_interval=0.2)
    try:
        yield World(h, fx, evil)
    finally:
        h.close()


def _evil_service(w: World, **kw):
    """The hostile tenant's own private service on its own cluster (its gateway
    announces the cluster first)."""
    first = GmuClient(w.h, w.evil, "gw-evil", address=EVIL_CLUSTER)
    first.snapshot()
    w.fx.store.groups.create(Group(id="g-evil", account_id=EVIL, name="evil"))
    svc = w.fx.store.services.create(make_service(
        "evilapp", account_id=EVIL, domain=EVIL_DOMAIN, private=True,
        access_groups=("g-evil",),
        targets=(dataclasses.replace(cluster_target(), target_id=EVIL_CLUSTER),), **kw))
    return first, svc


def test_status_updates_for_the_victims_service_are_refused(world: World, tmp_path) -> None:
    w = world
    ca = LocalCA(str(tmp_path / "rogue-ca"))
    rogue = pb.NbgwCertificateStatus(issuer="CN=rogue", source="local-ca",
                                     ca_certificate_pem=ca.cert_pem().decode())
    listener = pb.ProxyInboundListener(tunnel_ip=U_IP, https_port=443, http_port=80)
    for account, code in ((ACCOUNT, grpc.StatusCode.PERMISSION_DENIED),
                          (EVIL, grpc.StatusCode.NOT_FOUND)):
        err = w.refused("SendStatusUpdate", pb.SendStatusUpdateRequest(
            service_id="svc-1", account_id=account, status=pb.PROXY_STATUS_ACTIVE,
            certificate_issued=True, inbound_listener=listener, nbgw_certificate=rogue))
        assert err.code() == code, err
    s = w.fx.store.services.get(ACCOUNT, "svc-1")
    assert s.meta.status == "pending" and s.meta.certificate_issued_at is None
    assert w.fx.store.proxies.list_inbound_listeners(ACCOUNT) == []
    assert w.fx.store.proxies.list_inbound_listeners(EVIL) == []
    assert not w.fx.store.certificates.private_cas(ACCOUNT)
    assert not w.fx.store.certificates.private_cas(EVIL)


def test_a_rogue_ca_of_its_own_service_stays_in_its_own_account(world: World,
                                                                tmp_path) -> None:
    w = world
    first, svc = _evil_service(w)
    ca = LocalCA(str(tmp_path / "rogue-ca"))
    w.call("SendStatusUpdate", pb.SendStatusUpdateRequest(
        service_id=svc.id, account_id=EVIL, status=pb.PROXY_STATUS_ACTIVE,
        nbgw_certificate=pb.NbgwCertificateStatus(
            issuer="CN=rogue", source="local-ca", ca_certificate_pem=ca.cert_pem().decode())))
    assert len(w.fx.store.certificates.private_cas(EVIL)) == 1
    assert not w.fx.store.certificates.private_cas(ACCOUNT)
    assert [c.service_id for c in w.fx.store.certificates.list(ACCOUNT)] == []
    first.close()


def test_access_log_entries_of_the_victim_are_refused(world: World) -> None:
    w = world
    entry = pb.AccessLog(log_id="forged-1", account_id=ACCOUNT, service_id="svc-1",
                         host=DOMAIN, path="/forged", method="GET", response_code=200,
                         auth_success=True, protocol="http")
    err = w.refused("SendAccessLog", pb.SendAccessLogRequest(log=entry))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    mine = pb.AccessLog()
    mine.CopyFrom(entry)
    mine.account_id, mine.log_id = EVIL, "own-1"
    err = w.refused("NbgwSendAccessLogBatch",
                    pb.NbgwSendAccessLogBatchRequest(logs=[mine, entry]))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    for account in (ACCOUNT, EVIL):
        assert w.fx.store.access_logs.list(account, AccessLogQuery()).data == ()


def test_validate_tunnel_peer_never_answers_with_the_victims_peer(world: World) -> None:
    w = world
    first, _svc = _evil_service(w)
    # the victim's domain: not the hostile token's business
    err = w.refused("ValidateTunnelPeer",
                    pb.ValidateTunnelPeerRequest(tunnel_ip=U_IP, domain=DOMAIN))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    # its own domain at the victim's peer's address: no peer of its own there yet
    r = w.call("ValidateTunnelPeer",
               pb.ValidateTunnelPeerRequest(tunnel_ip=U_IP, domain=EVIL_DOMAIN))
    assert not r.valid and r.denied_reason == "peer_not_found" and r.user_id == ""
    # its own peer at the same address (addresses are per account): its own identity
    peer = w.fx.store.peers.create(Peer(account_id=EVIL, name="evil-laptop", key=wg_key(),
                                        ip=U_IP, groups=("g-evil",)))
    r = w.call("ValidateTunnelPeer",
               pb.ValidateTunnelPeerRequest(tunnel_ip=U_IP, domain=EVIL_DOMAIN))
    assert r.valid and r.user_id == peer.id and "alice" not in (r.user_id, r.user_email)
    evil_groups = {g.id for g in w.fx.store.groups.list(EVIL)}
    assert "g-evil" in r.peer_group_ids and set(r.peer_group_ids) <= evil_groups
    # the shared gateway naming the wrong account for the victim's domain
    r = w.call("ValidateTunnelPeer", pb.ValidateTunnelPeerRequest(
        tunnel_ip=U_IP, domain=DOMAIN, nbgw_account_id=EVIL), token=w.fx.token)
    assert not r.valid and r.denied_reason == "account_mismatch" and not r.session_token
    first.close()


def test_validate_session_keeps_each_services_key(world: World) -> None:
    w = world
    first, _svc = _evil_service(w)
    w.fx.store.peers.create(Peer(account_id=EVIL, name="evil-laptop", key=wg_key(),
                                 ip=U_IP, groups=("g-evil",)))
    own = w.call("ValidateTunnelPeer",
                 pb.ValidateTunnelPeerRequest(tunnel_ip=U_IP, domain=EVIL_DOMAIN))
    assert own.valid and own.session_token
    err = w.refused("ValidateSession", pb.ValidateSessionRequest(
        domain=DOMAIN, session_token=own.session_token))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    # even a shared gateway asking: the hostile service's JWT is no session of the victim's
    r = w.call("ValidateSession", pb.ValidateSessionRequest(
        domain=DOMAIN, session_token=own.session_token), token=w.fx.token)
    assert not r.valid and r.denied_reason == "invalid_token"
    first.close()


def test_account_named_rpcs_of_the_victim_are_refused(world: World) -> None:
    w = world
    pinned = w.fx.store.services.create(make_service(
        "pinned", auth=AuthConfig(pin_auth=PinAuth(True, "123456"))))
    err = w.refused("Authenticate", pb.AuthenticateRequest(
        id=pinned.id, account_id=ACCOUNT, pin=pb.PinRequest(pin="123456")))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    err = w.refused("Authenticate", pb.AuthenticateRequest(
        id=pinned.id, account_id=EVIL, pin=pb.PinRequest(pin="123456")))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION  # no such service of its own
    err = w.refused("GetOIDCURL", pb.GetOIDCURLRequest(
        id="svc-1", account_id=ACCOUNT, redirect_url=f"https://{DOMAIN}/"))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED


def test_create_proxy_peer_with_the_victims_token_spends_nothing(world: World) -> None:
    w = world
    shared = GmuClient(w.h, w.fx.token, "gw-shared",
                       capabilities=pb.ProxyCapabilities(supports_private_service=True))
    token = {m.id: m.auth_token for m in shared.snapshot()}["svc-1"]
    key = wg_key()
    for account, code in ((ACCOUNT, grpc.StatusCode.PERMISSION_DENIED),
                          (EVIL, grpc.StatusCode.UNAUTHENTICATED)):
        err = w.refused("CreateProxyPeer", pb.CreateProxyPeerRequest(
            service_id="svc-1", account_id=account, token=token,
            wireguard_public_key=key, cluster=CLUSTER))
        assert err.code() == code, err
    assert w.fx.store.peers.get_by_key(key) is None
    # the victim's gateway still registers with its token
    r = w.call("CreateProxyPeer", pb.CreateProxyPeerRequest(
        service_id="svc-1", account_id=ACCOUNT, token=token, wireguard_public_key=key,
        cluster=CLUSTER), token=w.fx.token)
    assert r.success and w.fx.store.peers.get_by_key(key).account_id == ACCOUNT
    shared.close()


def test_its_own_clusters_stream_carries_none_of_the_victims_mappings(world: World) -> None:
    w = world
    first, svc = _evil_service(w)
    again = GmuClient(w.h, w.evil, "gw-evil-2", address=EVIL_CLUSTER,
                      capabilities=pb.ProxyCapabilities(supports_private_service=True))
    got = again.snapshot()
    assert [m.id for m in got] == [svc.id] and {m.account_id for m in got} == {EVIL}
    # a change of the victim's service reaches no hostile stream
    victim = w.fx.store.services.get(ACCOUNT, "svc-1")
    w.fx.store.services.update(dataclasses.replace(victim, name="renamed"))
    w.h.settle()
    seen = []
    while not again.responses.empty():  # heartbeats (empty responses) may be there
        item = again.responses.get_nowait()
        assert isinstance(item, pb.GetMappingUpdateResponse), item
        seen.extend(item.mapping)
    assert not [m for m in seen if m.account_id != EVIL or m.id == "svc-1"], seen
    again.close()
    first.close()
