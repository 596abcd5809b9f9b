"""Store: services, targets, domains and cluster derivation (SQLite and PostgreSQL)."""

from __future__ import annotations

import base64
import dataclasses
from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from nbgateway.management.errors import (
    Conflict,
    NotFound,
    PermissionDenied,
    PreconditionFailed,
    ValidationError,
)
from nbgateway.management.model import (
    Account,
    AuthConfig,
    CustomDomain,
    Group,
    HeaderAuth,
    PasswordAuth,
    Peer,
    PinAuth,
    ProxyCapabilities,
    ProxyRecord,
    Service,
    ServiceStatus,
    Target,
    TargetOptions,
    parse_go_duration,
)
from nbgateway.management.store._secrets import verify_secret

DOMAIN = "myapp.eu.proxy.netbird.io"
CLUSTER = "eu.proxy.netbird.io"
EVIL = "svc'); DELETE FROM services; -- \" % _"


@pytest.fixture
def groups(store, account):
    a = store.groups.create(Group(id="grp-admins", account_id=account.id, name="admins"))
    o = store.groups.create(Group(id="grp-ops", account_id=account.id, name="ops"))
    return a, o


def cluster_target(**kw) -> Target:
    base = dict(
        target_type="cluster",
        target_id=CLUSTER,
        host="backend.lan",
        port=8080,
        options=TargetOptions(direct_upstream=True),
    )
    base.update(kw)
    return Target(**base)


def private(account_id: str, **kw) -> Service:
    base = dict(
        account_id=account_id,
        name="myapp",
        domain=DOMAIN,
        private=True,
        access_groups=("grp-admins",),
        targets=(cluster_target(),),
    )
    base.update(kw)
    return Service(**base)


def public(account_id: str, peer_id: str, **kw) -> Service:
    base = dict(
        account_id=account_id,
        name="web",
        domain="web.eu.proxy.netbird.io",
        targets=(Target(target_type="peer", target_id=peer_id, port=80, protocol="http"),),
    )
    base.update(kw)
    return Service(**base)


def test_create_private_service_acceptance_15(store, account, groups):
    s = store.services.create(private(account.id))
    assert len(s.id) == 20
    assert s.private is True and s.access_groups == ("grp-admins",)
    assert s.meta.status == ServiceStatus.PENDING and s.meta.created_at is not None
    assert s.proxy_cluster == CLUSTER and s.mode == "http"
    # Go-shaped Ed25519 key pair: 64-byte private (seed||public), 32-byte public
    priv = base64.b64decode(s.session_private_key)
    pub = base64.b64decode(s.session_public_key)
    assert len(priv) == 64 and len(pub) == 32 and priv[32:] == pub
    key = Ed25519PrivateKey.from_private_bytes(priv[:32])
    key.public_key().verify(key.sign(b"x"), b"x")
    assert store.services.get(account.id, s.id) == s


def test_cluster_target_host_kept_acceptance_12(store, account, groups):
    s = store.services.create(private(account.id))
    t = store.services.resolve_target_hosts(s).targets[0]
    assert (t.host, t.target_type, t.options.direct_upstream) == ("backend.lan", "cluster", True)


def test_peer_target_host_resolved_on_read(store, account):
    p = store.peers.create(Peer(account_id=account.id, name="srv", key="k"))
    s = store.services.create(public(account.id, p.id))
    assert store.services.resolve_target_hosts(s).targets[0].host == p.ip
    q = store.peers.create(Peer(account_id=account.id, name="srv2", key="k2"))
    s2 = store.services.create(public(account.id, q.id, domain="w2.eu.proxy.netbird.io"))
    gone = dataclasses.replace(
        s2, targets=(dataclasses.replace(s2.targets[0], target_id="deleted-peer"),)
    )
    out = store.services.resolve_services_target_hosts([s, s2, gone])
    assert [x.targets[0].host for x in out] == [p.ip, q.ip, "unknown"]
    assert store.services.get(account.id, s.id).targets[0].host == ""  # stored host untouched


def test_direct_upstream_roundtrip_acceptance_20(store, account, groups):
    p = store.peers.create(Peer(account_id=account.id, name="srv", key="k"))
    t_on = Target(
        target_type="peer", target_id=p.id, port=80, options=TargetOptions(direct_upstream=True)
    )
    t_off = Target(target_type="peer", target_id=p.id, port=81, path="/api")
    s = store.services.create(public(account.id, p.id, targets=(t_on, t_off)))
    got = store.services.get(account.id, s.id)
    assert [t.options.direct_upstream for t in got.targets] == [True, False]
    assert [t.path for t in got.targets] == [None, "/api"]


def test_target_options_roundtrip(store, account):
    p = store.peers.create(Peer(account_id=account.id, name="srv", key="k"))
    opts = TargetOptions(
        skip_tls_verify=True,
        request_timeout=parse_go_duration("2m"),
        session_idle_timeout=parse_go_duration("30s"),
        path_rewrite="preserve",
        custom_headers={"X-Env": "prod", "X-Quote": 'it\'s "quoted"'},
    )
    t = Target(target_type="peer", target_id=p.id, port=443, protocol="https", options=opts)
    s = store.services.create(public(account.id, p.id, targets=(t,)))
    assert store.services.get(account.id, s.id).targets[0].options == opts


def test_unknown_access_group_rejected_nothing_stored(store, account, groups):
    with pytest.raises(ValidationError, match="access group 'ghost' not found"):
        store.services.create(private(account.id, access_groups=("grp-admins", "ghost")))
    assert store.services.list(account.id) == []


def test_access_group_of_other_account_rejected(store, account, groups):
    other = store.accounts.create(Account(id="acct-2"))
    store.groups.create(Group(id="grp-foreign", account_id=other.id, name="x"))
    with pytest.raises(ValidationError, match="not found in account"):
        store.services.create(private(account.id, access_groups=("grp-foreign",)))


def test_unknown_peer_target_rejected(store, account):
    with pytest.raises(ValidationError, match='peer target "ghost" not found in account'):
        store.services.create(public(account.id, "ghost"))
    assert store.services.list(account.id) == []


def test_validation_error_stores_nothing(store, account, groups):
    with pytest.raises(ValidationError, match="at least one access group"):
        store.services.create(private(account.id, access_groups=()))
    assert store.services.list(account.id) == []
    assert store.services.get_by_domain(DOMAIN) is None


def test_domain_taken_across_accounts(store, account, groups):
    store.services.create(private(account.id))
    other = store.accounts.create(Account(id="acct-2"))
    store.groups.create(Group(id="grp-x", account_id=other.id, name="x"))
    with pytest.raises(Conflict, match="domain already taken") as info:
        store.services.create(private(other.id, access_groups=("grp-x",)))
    assert info.value.http_status == 409
    assert store.services.list(other.id) == []


def test_cluster_cannot_be_derived(store, account, groups):
    with pytest.raises(
        PreconditionFailed, match=r"could not derive cluster from domain app\.example"
    ):
        store.services.create(private(account.id, domain="app.example.com"))
    assert store.services.list(account.id) == []


def test_cluster_derived_from_active_proxy(store_factory):
    store = store_factory(known_clusters=[])
    acct = store.accounts.create(Account(id="acct-1"))
    store.groups.create(Group(id="grp-admins", account_id=acct.id, name="admins"))
    with pytest.raises(PreconditionFailed):
        store.services.derive_cluster(acct.id, DOMAIN)
    store.proxies.register(ProxyRecord(id="px-1", session_id="s1", cluster_address=CLUSTER))
    assert store.services.derive_cluster(acct.id, DOMAIN) == CLUSTER
    assert store.services.create(private(acct.id)).proxy_cluster == CLUSTER


def test_require_subdomain(store_factory):
    store = store_factory(known_clusters=[])
    acct = store.accounts.create(Account(id="acct-1"))
    store.proxies.register(
        ProxyRecord(
            id="px-1",
            session_id="s",
            cluster_address=CLUSTER,
            capabilities=ProxyCapabilities(require_subdomain=True),
        )
    )
    with pytest.raises(ValidationError, match=f"domain {CLUSTER} requires a subdomain label"):
        store.services.derive_cluster(acct.id, CLUSTER)
    assert store.services.derive_cluster(acct.id, DOMAIN) == CLUSTER


def test_custom_domain_derivation_and_crud(store, account, groups):
    d = store.domains.create(
        CustomDomain(account_id=account.id, domain="Example.COM.", target_cluster=CLUSTER)
    )
    assert d.domain == "example.com" and not d.validated
    with pytest.raises(Conflict, match="domain already exists"):
        store.domains.create(
            CustomDomain(account_id=account.id, domain="example.com", target_cluster=CLUSTER)
        )
    s = store.services.create(private(account.id, domain="app.example.com"))
    assert s.proxy_cluster == CLUSTER
    assert store.domains.set_validated(account.id, d.id, True).validated
    assert store.domains.list(account.id) == [dataclasses.replace(d, validated=True)]
    store.domains.delete(account.id, d.id)
    with pytest.raises(NotFound, match="domain not found"):
        store.domains.delete(account.id, d.id)


def test_put_without_private_clears_it_acceptance_17(store, account, groups):
    s = store.services.create(private(account.id))
    replaced = Service(
        id=s.id, account_id=account.id, name=s.name, domain=s.domain, targets=s.targets
    )
    out = store.services.update(replaced)
    assert out.private is False and out.access_groups is None
    assert store.services.get(account.id, s.id).access_groups is None


def test_access_groups_order_roundtrip_acceptance_18_28(store, account, groups):
    s = store.services.create(private(account.id))
    out = store.services.update(dataclasses.replace(s, access_groups=("grp-ops", "grp-admins")))
    assert out.access_groups == ("grp-ops", "grp-admins")
    again = store.services.get_by_domain(DOMAIN)
    assert again.private and again.access_groups == ("grp-ops", "grp-admins")


def test_update_keeps_keys_and_meta_acceptance_19(store, account, groups):
    s = store.services.create(private(account.id))
    store.services.set_status(account.id, s.id, ServiceStatus.ACTIVE)
    attempt = dataclasses.replace(
        s,
        name="renamed",
        session_private_key="forged",
        session_public_key="forged",
        meta=dataclasses.replace(s.meta, created_at=datetime(2000, 1, 1, tzinfo=UTC)),
    )
    out = store.services.update(attempt)
    assert out.name == "renamed"
    assert out.session_private_key == s.session_private_key
    assert out.session_public_key == s.session_public_key
    assert out.meta.created_at == s.meta.created_at
    assert out.meta.status == ServiceStatus.ACTIVE


def test_update_unknown_or_foreign_service(store, account, groups):
    s = store.services.create(private(account.id))
    other = store.accounts.create(Account(id="acct-2"))
    with pytest.raises(NotFound, match="service not found"):
        store.services.update(dataclasses.replace(s, account_id=other.id))
    with pytest.raises(NotFound):
        store.services.get(other.id, s.id)
    with pytest.raises(NotFound):
        store.services.delete(other.id, s.id)


def test_update_mode_change_rejected(store, account, groups):
    s = store.services.create(private(account.id))
    with pytest.raises(ValidationError, match='cannot change mode from "http" to "tcp"'):
        store.services.update(dataclasses.replace(s, mode="tcp", private=False))


def test_update_terminated_service_refused(store, account, groups):
    import sqlalchemy as sa

    from nbgateway.management.store.schema import services

    s = store.services.create(private(account.id))
    with store._engine.begin() as conn:
        conn.execute(sa.update(services).where(services.c.id == s.id).values(terminated=True))
    with pytest.raises(PermissionDenied, match="service is terminated and cannot be updated"):
        store.services.update(dataclasses.replace(s, name="x"))


def test_update_validation_failure_keeps_old_state(store, account, groups):
    s = store.services.create(private(account.id))
    with pytest.raises(ValidationError):
        store.services.update(dataclasses.replace(s, targets=()))
    with pytest.raises(ValidationError):
        store.services.update(dataclasses.replace(s, access_groups=("ghost",)))
    assert store.services.get(account.id, s.id) == s


def test_secrets_hashed_and_kept_on_empty_update(store, account):
    p = store.peers.create(Peer(account_id=account.id, name="srv", key="k"))
    auth = AuthConfig(
        password_auth=PasswordAuth(True, "hunter2"),
        pin_auth=PinAuth(True, "123456"),
        header_auths=(HeaderAuth(True, "X-Api-Key", "s3cret"),),
    )
    s = store.services.create(public(account.id, p.id, auth=auth))
    stored = s.auth
    assert verify_secret(stored.password_auth.password, "hunter2")
    assert verify_secret(stored.pin_auth.pin, "123456")
    assert verify_secret(stored.header_auths[0].value, "s3cret")
    assert "hunter2" not in repr(store.services.get(account.id, s.id))
    blank = AuthConfig(
        password_auth=PasswordAuth(True, ""),
        pin_auth=PinAuth(True, "654321"),
        header_auths=(HeaderAuth(True, "X-Api-Key", ""),),
    )
    out = store.services.update(dataclasses.replace(s, auth=blank))
    assert out.auth.password_auth.password == stored.password_auth.password
    assert out.auth.header_auths[0].value == stored.header_auths[0].value
    assert verify_secret(out.auth.pin_auth.pin, "654321")


def test_header_auth_value_required_on_create(store, account):
    p = store.peers.create(Peer(account_id=account.id, name="srv", key="k"))
    auth = AuthConfig(header_auths=(HeaderAuth(True, "X-Api-Key", ""),))
    with pytest.raises(ValidationError, match=r"header_auths\[0\]: value is required"):
        store.services.create(public(account.id, p.id, auth=auth))
    assert store.services.list(account.id) == []


def test_lookups_and_status(store, account, groups):
    s = store.services.create(private(account.id))
    other = store.accounts.create(Account(id="acct-2"))
    store.groups.create(Group(id="grp-b", account_id=other.id, name="b"))
    s2 = store.services.create(
        private(other.id, domain="b.eu.proxy.netbird.io", access_groups=("grp-b",))
    )
    assert store.services.get_by_domain(DOMAIN).id == s.id
    assert store.services.get_by_domain("MYAPP.eu.proxy.netbird.io.").id == s.id
    assert store.services.get_by_domain("nope.example") is None
    assert {x.id for x in store.services.list_for_cluster(CLUSTER)} == {s.id, s2.id}
    assert [x.id for x in store.services.list_for_cluster(CLUSTER, account_id=other.id)] == [s2.id]
    assert {x.id for x in store.services.list_all()} == {s.id, s2.id}
    out = store.services.set_status(
        account.id, s.id, "certificate_pending", certificate_issued=True
    )
    assert out.meta.status == "certificate_pending" and out.meta.certificate_issued_at
    assert store.services.set_status(account.id, s.id, "weird").meta.status == "error"
    with pytest.raises(NotFound, match="service nope not found"):
        store.services.set_status(account.id, "nope", "active")
    # disabled services are still found by domain (ValidateTunnelPeer step 3)
    store.services.update(dataclasses.replace(s, enabled=False))
    assert store.services.get_by_domain(DOMAIN).enabled is False


def test_delete_service_removes_targets(store, account, groups):
    s = store.services.create(private(account.id))
    deleted = store.services.delete(account.id, s.id)
    assert deleted.id == s.id
    assert store.services.list(account.id) == []
    with pytest.raises(NotFound):
        store.services.delete(account.id, s.id)
    # the domain is free again
    assert store.services.create(private(account.id)).domain == DOMAIN


def test_sql_metacharacters_in_service_name(store, account, groups):
    s = store.services.create(private(account.id, name=EVIL))
    assert store.services.get(account.id, s.id).name == EVIL
    assert len(store.services.list(account.id)) == 1


def test_l4_port_assignment_and_conflict(store, account):
    p = store.peers.create(Peer(account_id=account.id, name="db", key="k"))
    t = Target(target_type="peer", target_id=p.id, port=5432, protocol="tcp")
    a = store.services.create(
        Service(
            account_id=account.id,
            name="db",
            domain="db.eu.proxy.netbird.io",
            mode="tcp",
            targets=(t,),
        )
    )
    assert a.port_auto_assigned and a.listen_port == 10000 and a.targets[0].enabled
    b = store.services.create(
        Service(
            account_id=account.id,
            name="db2",
            domain="db2.eu.proxy.netbird.io",
            mode="tcp",
            targets=(t,),
        )
    )
    assert b.listen_port == 10001
    with pytest.raises(Conflict, match="port 10000 is already in use"):
        store.services.create(
            Service(
                account_id=account.id,
                name="db3",
                domain="db3.eu.proxy.netbird.io",
                mode="tcp",
                listen_port=10000,
                targets=(t,),
            )
        )
    # keeping the auto-assigned port across updates
    assert store.services.update(dataclasses.replace(a, name="db-renamed")).listen_port == 10000


def test_domain_case_cannot_dodge_uniqueness(store, account, groups):
    s = store.services.create(private(account.id, domain="MyApp.EU.proxy.netbird.io."))
    assert s.domain == DOMAIN
    with pytest.raises(Conflict, match="domain already taken"):
        store.services.create(private(account.id))
    assert store.services.get_by_domain(DOMAIN).id == s.id
    assert store.services.get_by_domain("MYAPP.eu.proxy.netbird.io.").id == s.id
