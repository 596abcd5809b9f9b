"""Store: accounts created with their first admin, and deleted with everything in them
(SQLite and PostgreSQL)."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from nbgateway.management.errors import BadRequest, NotFound, ValidationError
from nbgateway.management.model import (
    AccessLogEntry,
    ChangeKind,
    CustomDomain,
    Group,
    Peer,
    ProxyInboundListener,
    ProxyRecord,
    Service,
    Target,
    TargetOptions,
    User,
    utcnow,
)
from nbgateway.management.store import schema
from nbgateway.tls.certstore import LocalCA

from .conftest import CLUSTER


def _populate(store, account_id: str, tag: str, tmp_path) -> Service:
    grp = store.groups.create(Group(account_id=account_id, name="devs"))
    user = store.users.create(User(account_id=account_id, email=f"{tag}@x.test", role="user"))
    store.users.create_token(account_id, user.id, "t")
    peer = store.peers.create(Peer(account_id=account_id, name="p", key=f"key-{tag}",
                                  user_id=user.id, groups=(grp.id,)))
    store.domains.create(CustomDomain(account_id=account_id, domain=f"{tag}.test",
                                     target_cluster=CLUSTER))
    svc = store.services.create(Service(
        account_id=account_id, name="s", domain=f"s.{tag}.test", private=True,
        access_groups=(grp.id,),
        targets=(Target(target_type="cluster", target_id=CLUSTER, host="10.0.0.5", port=80,
                        options=TargetOptions(direct_upstream=True)),)))
    store.proxies.create_token("gw", account_id=account_id)
    store.proxies.register(ProxyRecord(id=f"px-{tag}", session_id="s", cluster_address=CLUSTER,
                                     ip_address="127.0.0.1", account_id=account_id))
    store.proxies.set_inbound_listener(ProxyInboundListener(proxy_id=f"px-{tag}",
                                                            account_id=account_id,
                                                    tunnel_ip="100.64.0.9", https_port=443,
                                                    http_port=80))
    store.access_logs.append(AccessLogEntry(account_id=account_id, service_id=svc.id,
                                           timestamp=utcnow(), method="GET", host=svc.domain,
                                           path="/", status_code=200, user_id=peer.user_id))
    ca = LocalCA(str(tmp_path / f"ca-{tag}"), permitted=[f"{tag}.test"])
    store.certificates.record(account_id, svc.id, issuer="CN=nbgateway local CA",
                              not_after=None, source="local-ca", ca_pem=ca.cert_pem().decode())
    return svc


#: tables the database fills only on PostgreSQL (triggers); SQLite counts directly
_POSTGRESQL_ONLY = {"access_log_groups", "access_log_hours", "access_log_values"}


def _rows(store, account_id: str) -> dict[str, int]:
    out = {}
    with store._read() as conn:
        for table in schema.metadata.sorted_tables:
            if store.dialect != "postgresql" and table.name in _POSTGRESQL_ONLY:
                continue
            if "account_id" in table.c:
                n = conn.execute(sa.select(sa.func.count()).select_from(table)
                                 .where(table.c.account_id == account_id)).scalar_one()
                out[table.name] = n
        out["accounts"] = conn.execute(sa.select(sa.func.count()).select_from(schema.accounts)
                                       .where(schema.accounts.c.id == account_id)).scalar_one()
    return out


def test_create_account_with_admin(store):
    boot = store.accounts.create_with_admin("Tenant", admin_email="ops@tenant.test")
    assert boot.account.name == "Tenant" and boot.admin_token
    assert boot.admin_user.role == "owner" and not boot.admin_user.instance_admin
    user, _ = store.users.authenticate_token(boot.admin_token)
    assert user.id == boot.admin_user.id and user.account_id == boot.account.id
    assert [g.name for g in store.groups.list(boot.account.id)] == ["All"]
    assert store.accounts.get(boot.account.id).name == "Tenant"
    for bad in ("", "  ", "x" * 256, "a\x00b"):
        with pytest.raises(ValidationError):
            store.accounts.create_with_admin(bad)


def test_delete_account_removes_every_row_of_the_account_only(store, tmp_path):
    a = store.accounts.create_with_admin("a").account
    b = store.accounts.create_with_admin("b").account
    _populate(store, a.id, "a", tmp_path)
    _populate(store, b.id, "b", tmp_path)
    before_b = _rows(store, b.id)
    assert all(n > 0 for n in _rows(store, a.id).values()), _rows(store, a.id)
    seen = []
    store.add_listener(lambda kind, acct, ids: seen.append((kind, acct)))
    store.accounts.delete(a.id)
    assert _rows(store, a.id) == dict.fromkeys(before_b, 0)
    assert _rows(store, b.id) == before_b
    assert (ChangeKind.SERVICE_DELETED, a.id) in seen
    assert (ChangeKind.PROXY_TOKEN, a.id) in seen
    with pytest.raises(NotFound):
        store.accounts.delete(a.id)
    with pytest.raises(BadRequest):
        store.accounts.delete("default")
