"""Store: proxy rows, cluster view, inbound listeners, proxy tokens, access logs."""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from nbgateway.management.errors import NotFound, Unauthenticated, ValidationError
from nbgateway.management.model import (
    AccessLogEntry,
    AccessLogQuery,
    Account,
    ChangeKind,
    Group,
    Peer,
    ProxyCapabilities,
    ProxyInboundListener,
    ProxyRecord,
    User,
)
from nbgateway.management.store.schema import proxies, proxy_access_tokens

C = "eu.proxy.netbird.io"


def now() -> datetime:
    return datetime.now(UTC)


# --- proxies and clusters --------------------------------------------------------------------


def test_register_heartbeat_disconnect_sessions_acceptance_43(store):
    rec = store.proxies.register(
        ProxyRecord(id="px", session_id="s1", cluster_address=C, ip_address="127.0.0.1")
    )
    assert rec.status == "connected" and rec.last_seen and rec.account_id is None
    # a second connection supersedes the first
    store.proxies.register(ProxyRecord(id="px", session_id="s2", cluster_address=C))
    assert store.proxies.heartbeat("px", "s1") is False
    assert store.proxies.disconnect("px", "s1") is False  # stale session: row untouched
    assert store.proxies.get("px").status == "connected"
    assert store.proxies.heartbeat("px", "s2") is True
    assert store.proxies.disconnect("px", "s2") is True
    got = store.proxies.get("px")
    assert got.status == "disconnected" and got.disconnected_at is not None
    with pytest.raises(NotFound, match="proxy not found"):
        store.proxies.get("nope")
    with pytest.raises(ValidationError):
        store.proxies.register(ProxyRecord(id=""))


def test_cluster_private_any_true_acceptance_24(store, account):
    caps_t = ProxyCapabilities(private=True)
    caps_f = ProxyCapabilities(private=False)
    store.proxies.register(
        ProxyRecord(id="a", session_id="s", cluster_address=C, capabilities=caps_t)
    )
    store.proxies.register(
        ProxyRecord(id="b", session_id="s", cluster_address=C, capabilities=caps_f)
    )
    [cluster] = store.proxies.list_clusters(account.id)
    assert cluster.private is True
    assert (cluster.id, cluster.type, cluster.online, cluster.connected_proxies) == (
        "a",
        "shared",
        True,
        2,
    )
    store.proxies.register(ProxyRecord(id="c", session_id="s", cluster_address="other.example"))
    other = next(c for c in store.proxies.list_clusters(account.id) if c.address == "other.example")
    assert other.private is None and other.supports_crowdsec is None


def test_cluster_stale_rows_ignored_acceptance_25(store, account):
    caps = ProxyCapabilities(private=True, supports_crowdsec=True)
    store.proxies.register(
        ProxyRecord(id="a", session_id="s", cluster_address=C, capabilities=caps)
    )
    later = now() + timedelta(minutes=3)
    [cluster] = store.proxies.list_clusters(account.id, now=later)
    assert cluster.private is None and not cluster.online and cluster.connected_proxies == 0
    store.proxies.register(
        ProxyRecord(id="b", session_id="s", cluster_address=C), now=later - timedelta(seconds=5)
    )
    [cluster] = store.proxies.list_clusters(account.id, now=later)
    assert cluster.private is None and cluster.online
    # supports_crowdsec is unanimous: an active row that did not report it makes it false
    store.proxies.register(
        ProxyRecord(id="a", session_id="s2", cluster_address=C, capabilities=caps),
        now=later - timedelta(seconds=5),
    )
    [cluster] = store.proxies.list_clusters(account.id, now=later)
    assert cluster.private is True and cluster.supports_crowdsec is False


def test_supports_private_service_not_persisted_acceptance_27(store):
    assert "supports_private_service" not in proxies.c
    rec = store.proxies.register(
        ProxyRecord(
            id="x", session_id="s", cluster_address=C, capabilities=ProxyCapabilities(private=False)
        )
    )
    assert rec.capabilities.private is False


def test_byop_visibility_and_address_in_use(store, account):
    other = store.accounts.create(Account(id="acct-2"))
    store.proxies.register(
        ProxyRecord(id="mine", session_id="s", cluster_address="byop.a", account_id=account.id)
    )
    store.proxies.register(
        ProxyRecord(id="theirs", session_id="s", cluster_address="byop.b", account_id=other.id)
    )
    store.proxies.register(ProxyRecord(id="shared", session_id="s", cluster_address=C))
    assert {c.address for c in store.proxies.list_clusters(account.id)} == {"byop.a", C}
    clusters = store.proxies.list_clusters(account.id)
    assert [c.type for c in clusters if c.address == "byop.a"] == ["account"]
    assert store.proxies.cluster_address_in_use(C, account.id)  # shared proxy uses it
    assert store.proxies.cluster_address_in_use("byop.b", account.id)  # foreign account
    assert not store.proxies.cluster_address_in_use("byop.a", account.id)  # own
    with pytest.raises(NotFound, match="cluster not found"):
        store.proxies.delete_cluster(account.id, C)  # shared rows are not the account's
    assert store.proxies.delete_cluster(account.id, "byop.a") == 1
    assert {p.id for p in store.proxies.list()} == {"theirs", "shared"}


def test_delete_stale_proxies(store):
    old = now() - timedelta(hours=2)
    store.proxies.register(ProxyRecord(id="old", session_id="s", cluster_address=C), now=old)
    store.proxies.register(ProxyRecord(id="new", session_id="s", cluster_address=C))
    seen = []
    store.add_listener(lambda k, a, ids: seen.append((k, ids)))
    assert store.proxies.delete_stale(now() - timedelta(hours=1)) == 1
    assert [p.id for p in store.proxies.list()] == ["new"]
    assert seen == [(ChangeKind.PROXY, ("old",))]


def test_inbound_listeners(store, account):
    lst = ProxyInboundListener(
        proxy_id="px", account_id=account.id, tunnel_ip="100.64.0.99", https_port=443, http_port=80
    )
    store.proxies.set_inbound_listener(lst)
    store.proxies.set_inbound_listener(
        ProxyInboundListener(
            proxy_id="px",
            account_id=account.id,
            tunnel_ip="100.64.0.98",
            https_port=8443,
            http_port=0,
        )
    )
    [got] = store.proxies.list_inbound_listeners(account.id)
    assert (got.tunnel_ip, got.https_port, got.http_port) == ("100.64.0.98", 8443, 0)
    assert store.proxies.list_inbound_listeners("acct-other") == []


# --- proxy access tokens ----------------------------------------------------------------------


def test_proxy_token_format_and_hash_acceptance_29(store, account):
    tok, plain = store.proxies.create_token("t", account_id=account.id, created_by="admin")
    assert plain.startswith("nbx_") and len(plain) == 40
    with store._engine.connect() as conn:
        row = conn.execute(sa.select(proxy_access_tokens)).one()
    assert row.hashed_token == base64.b64encode(hashlib.sha256(plain.encode()).digest()).decode()
    assert plain not in str(tuple(row))
    assert row.account_id == account.id
    got = store.proxies.verify_token(plain)
    assert got.id == tok.id and got.last_used is not None
    assert [t.id for t in store.proxies.list_tokens(account.id)] == [tok.id]
    assert store.proxies.list_tokens(None) == []


def test_proxy_token_foreign_revoke_is_not_found_acceptance_30(store, account):
    other = store.accounts.create(Account(id="acct-b"))
    tok_b, _ = store.proxies.create_token("b", account_id=other.id)
    glob, _ = store.proxies.create_token("global", account_id=None)
    with pytest.raises(NotFound, match="token not found"):
        store.proxies.revoke_token(account.id, tok_b.id)
    with pytest.raises(NotFound, match="token not found"):
        store.proxies.revoke_token(account.id, glob.id)
    assert not store.proxies.get_token(tok_b.id).revoked
    assert store.proxies.revoke_token(other.id, tok_b.id).revoked


def test_proxy_token_verification_errors(store):
    tok, plain = store.proxies.create_token("t", account_id=None)
    with pytest.raises(Unauthenticated, match="invalid token format"):
        store.proxies.verify_token("nbx_short")
    with pytest.raises(Unauthenticated, match="invalid token format"):
        store.proxies.verify_token("nbp_" + plain[4:])
    from nbgateway.management.store._secrets import PROXY_TOKEN_PREFIX, generate_token

    with pytest.raises(Unauthenticated, match=r"^invalid token$"):
        store.proxies.verify_token(generate_token(PROXY_TOKEN_PREFIX))
    store.proxies.revoke_token(None, tok.id)
    with pytest.raises(Unauthenticated, match="token expired or revoked"):
        store.proxies.verify_token(plain)
    _, soon = store.proxies.create_token(
        "e", account_id=None, expires_at=now() + timedelta(hours=1)
    )
    store.proxies.verify_token(soon)
    with pytest.raises(Unauthenticated, match="token expired or revoked"):
        store.proxies.verify_token(soon, now=now() + timedelta(hours=2))
    with pytest.raises(ValidationError):
        store.proxies.create_token("", account_id=None)
    with pytest.raises(NotFound):
        store.proxies.create_token("x", account_id="no-such-account")


# --- access logs ---------------------------------------------------------------------------------


@pytest.fixture
def logs(store, account):
    g1 = store.groups.create(Group(id="grp-admins", account_id=account.id, name="admins"))
    g2 = store.groups.create(Group(id="grp-ops", account_id=account.id, name="ops"))
    store.users.create(
        User(
            id="alice",
            account_id=account.id,
            email="alice@example.com",
            name="Alice",
            auto_groups=[g2.id, g1.id],
        )
    )
    peer = store.peers.create(Peer(account_id=account.id, name="agent-1", key="k", groups=[g1.id]))
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    entries = [
        AccessLogEntry(
            account_id=account.id,
            service_id="svc-1",
            timestamp=t0 + timedelta(minutes=i),
            method="GET",
            host="myapp.example",
            path=f"/p{i}",
            status_code=code,
            user_id=user,
            source_ip=ip,
            duration=i * 1000,
            reason=reason,
            protocol="http",
            auth_method_used="oidc",
            metadata={"k": "v"},
        )
        for i, (code, user, ip, reason) in enumerate(
            [
                (200, "alice", "::ffff:10.0.0.1", ""),
                (403, "alice", "10.0.0.2", "Authentication failed"),
                (200, peer.id, "10.0.0.3", ""),
                (502, "", "10.0.0.4", "Request failed"),
                (200, "nobody", "10.0.0.5", ""),
            ]
        )
    ]
    return [store.access_logs.append(e) for e in entries], peer


def test_access_log_user_groups_captured_at_write(store, account, logs):
    entries, _peer = logs
    assert entries[0].user_groups == ("ops", "admins")  # AutoGroups order
    assert set(entries[2].user_groups) == {"All", "admins"}  # the peer's groups
    assert entries[3].user_groups is None and entries[4].user_groups is None
    assert entries[0].source_ip == "10.0.0.1"  # v4-mapped unmapped
    # later group changes do not rewrite history
    store.groups.update(Group(id="grp-ops", account_id=account.id, name="renamed"))
    page = store.access_logs.list(account.id, AccessLogQuery(sort_order="asc"))
    assert page.data[0].user_groups == ("ops", "admins")
    assert page.data[0].metadata == {"k": "v"}


def test_access_log_filters_and_paging(store, account, logs):
    q = AccessLogQuery
    assert store.access_logs.list(account.id, q()).total_records == 5
    page = store.access_logs.list(account.id, q(page=2, page_size=2, sort_order="asc"))
    assert [e.path for e in page.data] == ["/p2", "/p3"]
    assert (page.total_pages, page.total_records) == (3, 5)
    assert [e.path for e in store.access_logs.list(account.id, q(page_size=1)).data] == ["/p4"]
    assert store.access_logs.list(account.id, q(status="failed")).total_records == 2
    assert store.access_logs.list(account.id, q(status="success")).total_records == 3
    assert store.access_logs.list(account.id, q(user_id="alice")).total_records == 2
    assert store.access_logs.list(account.id, q(user_email="ALICE@")).total_records == 2
    assert store.access_logs.list(account.id, q(user_name="alic")).total_records == 2
    assert store.access_logs.list(account.id, q(status_code=502)).data[0].path == "/p3"
    assert store.access_logs.list(account.id, q(source_ip="10.0.0.1")).total_records == 1
    assert store.access_logs.list(account.id, q(search="/P4")).total_records == 1
    assert store.access_logs.list(account.id, q(search="%")).total_records == 0  # LIKE escaped
    assert store.access_logs.list(account.id, q(search="_")).total_records == 0
    assert store.access_logs.list(account.id, q(host="myapp")).total_records == 5
    assert store.access_logs.list(account.id, q(method="get")).total_records == 5
    assert store.access_logs.list(account.id, q(service_id="svc-2")).total_records == 0
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    window = q(start_date=t0 + timedelta(minutes=1), end_date=t0 + timedelta(minutes=3))
    assert store.access_logs.list(account.id, window).total_records == 3
    by_dur = store.access_logs.list(account.id, q(sort_by="duration", sort_order="desc"))
    assert [e.duration for e in by_dur.data] == [4000, 3000, 2000, 1000, 0]
    empty = store.access_logs.list("acct-other", q())
    assert (empty.total_records, empty.total_pages, empty.data) == (0, 0, ())


@pytest.mark.parametrize(
    "bad",
    [
        AccessLogQuery(page=0),
        AccessLogQuery(page_size=101),
        AccessLogQuery(page_size=0),
        AccessLogQuery(sort_by="password"),
        AccessLogQuery(sort_order="sideways"),
        AccessLogQuery(status="meh"),
    ],
)
def test_access_log_bad_query(store, account, bad):
    with pytest.raises(ValidationError):
        store.access_logs.list(account.id, bad)


def test_access_log_unknown_account(store):
    with pytest.raises(NotFound):
        store.access_logs.append(AccessLogEntry(account_id="nope", service_id="s"))


def test_access_log_nul_replaced_not_dropped(store, account):
    e = store.access_logs.append(
        AccessLogEntry(
            account_id=account.id, service_id="s", path="/a\x00b", metadata={"k": "\x00"}
        )
    )
    assert e.path == "/a\ufffdb" and e.metadata == {"k": "\ufffd"}
    [got] = store.access_logs.list(account.id, AccessLogQuery()).data
    assert got.path == "/a\ufffdb"


def test_access_log_over_long_fields_truncated(store, account):
    e = store.access_logs.append(
        AccessLogEntry(account_id=account.id, service_id="s", method="M" * 100, protocol="http")
    )
    assert e.method == "M" * 32
    assert store.access_logs.list(account.id, AccessLogQuery()).data[0].method == "M" * 32
