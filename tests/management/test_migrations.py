"""Alembic migrations: first -> head on empty and populated databases, on both stores."""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from nbgateway.management import migrations
from nbgateway.management.model import (
    AccessLogQuery,
    Account,
    Group,
    Peer,
    Service,
    Target,
    TargetOptions,
)
from nbgateway.management.store import Store
from nbgateway.management.store._base import StoreBase, normalise_dsn
from nbgateway.management.store.schema import metadata

T0 = datetime(2026, 1, 1, 12, 0, 0)


def engine_for(dsn: str) -> sa.Engine:
    return StoreBase.build_engine(normalise_dsn(dsn, None))


def table_names(engine: sa.Engine) -> set[str]:
    return set(sa.inspect(engine).get_table_names())


def test_revision_chain_has_first_and_head():
    assert migrations.FIRST_REVISION == "0001"
    assert migrations.head_revision() == "0028"


def _built_on(dialect: str):
    """Alembic's include_object hook leaving out what the schema builds only
    on other dialects (``Index.ddl_if(dialect=...)``; autogenerate ignores it)."""

    def include(obj, name, type_, reflected, compare_to):
        ddl_if = getattr(obj, "_ddl_if", None)
        if ddl_if is None or ddl_if.dialect is None:
            return True
        wanted = (ddl_if.dialect,) if isinstance(ddl_if.dialect, str) else ddl_if.dialect
        return dialect in wanted

    return include


def test_empty_database_first_to_head_matches_schema(db_dsn):
    engine = engine_for(db_dsn)
    try:
        with engine.connect() as conn:
            migrations.upgrade(conn, migrations.FIRST_REVISION)
            assert migrations.current_revision(conn) == "0001"
        assert "services" in table_names(engine)
        assert "proxy_inbound_listeners" not in table_names(engine)
        with engine.connect() as conn:
            migrations.upgrade(conn, "head")
            assert migrations.current_revision(conn) == migrations.head_revision()
            context = MigrationContext.configure(
                conn, opts={"include_object": _built_on(conn.dialect.name)})
            diff = compare_metadata(context, metadata)
        assert diff == [], diff
        # opening the store again is a no-op migration
        Store.open(db_dsn).close()
        with engine.connect() as conn:
            assert migrations.current_revision(conn) == migrations.head_revision()
    finally:
        engine.dispose()


def test_downgrade_to_first_and_back(db_dsn):
    engine = engine_for(db_dsn)
    try:
        with engine.connect() as conn:
            migrations.upgrade(conn, "head")
            migrations.downgrade(conn, migrations.FIRST_REVISION)
            cols = {c["name"] for c in sa.inspect(conn).get_columns("services")}
            assert "private" not in cols and "access_groups" not in cols
            migrations.upgrade(conn, "head")
            cols = {c["name"] for c in sa.inspect(conn).get_columns("services")}
            assert {"private", "access_groups"} <= cols
    finally:
        engine.dispose()


def _populate_at_revision_1(conn: sa.Connection) -> None:
    """Rows as a pre-private-services installation wrote them (no new columns)."""
    meta = sa.MetaData()
    meta.reflect(conn)
    t = meta.tables
    conn.execute(
        t["accounts"]
        .insert()
        .values(
            id="acct-1",
            domain="old.test",
            network_v4="100.64.0.0/10",
            network_v6="fd00:1:2::/64",
            created_at=T0,
        )
    )
    conn.execute(
        t["groups"]
        .insert()
        .values(id="grp-admins", account_id="acct-1", name="admins", issued="api")
    )
    conn.execute(
        t["peers"]
        .insert()
        .values(
            id="peer-1",
            account_id="acct-1",
            name="u",
            key="key-1",
            ip="100.64.0.10",
            ipv6="fd00:1:2::1",
            dns_label="u",
            user_id=None,
            endpoint=None,
            proxy_meta_embedded=False,
            proxy_meta_cluster="",
            peer_status_connected=True,
            ephemeral=False,
            wg_private_key=None,
            last_seen=T0,
            created_at=T0,
        )
    )
    conn.execute(
        t["group_peers"]
        .insert()
        .values(group_id="grp-admins", peer_id="peer-1", account_id="acct-1", position=0)
    )
    conn.execute(
        t["services"]
        .insert()
        .values(
            id="svc-old",
            account_id="acct-1",
            name="legacy",
            domain="legacy.eu.proxy.netbird.io",
            proxy_cluster="eu.proxy.netbird.io",
            enabled=True,
            terminated=False,
            pass_host_header=False,
            rewrite_redirects=False,
            auth='{"password_auth":null}',
            restrictions=None,
            meta_created_at=T0,
            meta_certificate_issued_at=None,
            meta_status="active",
            meta_last_renewed_at=None,
            session_private_key="priv",
            session_public_key="pub",
            listen_port=0,
            port_auto_assigned=False,
        )
    )
    conn.execute(
        t["targets"]
        .insert()
        .values(
            account_id="acct-1",
            service_id="svc-old",
            position=0,
            path="/",
            host="",
            port=8080,
            protocol="http",
            target_id="peer-1",
            target_type="peer",
            enabled=True,
            proxy_protocol=False,
            skip_tls_verify=False,
            request_timeout=30_000_000_000,
            session_idle_timeout=0,
            path_rewrite="",
            custom_headers=None,
        )
    )
    conn.execute(
        t["proxies"]
        .insert()
        .values(
            id="px-1",
            session_id="s",
            cluster_address="eu.proxy.netbird.io",
            ip_address="127.0.0.1",
            account_id=None,
            last_seen=T0,
            connected_at=T0,
            disconnected_at=None,
            status="connected",
            supports_custom_ports=True,
            require_subdomain=None,
            supports_crowdsec=None,
        )
    )
    conn.execute(
        t["access_log_entries"]
        .insert()
        .values(
            id="log-1",
            account_id="acct-1",
            service_id="svc-old",
            timestamp=T0,
            location_connection_ip="10.0.0.1",
            location_country_code="",
            location_city_name="",
            location_geo_name_id=0,
            subdivision_code="",
            method="GET",
            host="legacy",
            path="/",
            duration=5,
            status_code=200,
            reason="",
            user_id="peer-1",
            auth_method_used="",
            bytes_upload=1,
            bytes_download=2,
            protocol="http",
            metadata=None,
            agent_network=False,
        )
    )
    conn.commit()


def test_populated_database_first_to_head(db_dsn):
    engine = engine_for(db_dsn)
    try:
        with engine.connect() as conn:
            migrations.upgrade(conn, migrations.FIRST_REVISION)
            _populate_at_revision_1(conn)
    finally:
        engine.dispose()
    store = Store.open(db_dsn, known_clusters=["eu.proxy.netbird.io"])  # upgrades to head
    try:
        svc = store.services.get("acct-1", "svc-old")
        # NULL private/access_groups load as false/None
        assert svc.private is False and svc.access_groups is None
        assert svc.meta.status == "active" and svc.meta.created_at == T0.replace(tzinfo=UTC)
        assert svc.targets[0].options.direct_upstream is False
        assert svc.targets[0].options.request_timeout == 30_000_000_000
        assert store.proxies.get("px-1").capabilities.private is None
        assert store.proxies.get("px-1").capabilities.supports_custom_ports is True
        peer = store.peers.get_by_ip("acct-1", "100.64.0.10")
        assert peer.id == "peer-1" and peer.groups == ("grp-admins",)
        [entry] = store.access_logs.list("acct-1", AccessLogQuery()).data
        assert entry.user_groups is None and entry.id == "log-1"
        # the migrated rows work with new features
        assert store.accounts.get("acct-1") == Account(
            id="acct-1",
            domain="old.test",
            network_v4="100.64.0.0/10",
            network_v6="fd00:1:2::/64",
            created_at=T0.replace(tzinfo=UTC),
        )
        new = store.services.create(
            Service(
                account_id="acct-1",
                name="new",
                domain="new.eu.proxy.netbird.io",
                private=True,
                access_groups=("grp-admins",),
                targets=(
                    Target(
                        target_type="cluster",
                        target_id="eu.proxy.netbird.io",
                        host="b.lan",
                        port=80,
                        options=TargetOptions(direct_upstream=True),
                    ),
                ),
            )
        )
        assert store.services.get("acct-1", new.id).private is True
        assert store.groups.create(Group(account_id="acct-1", name="ops")).name == "ops"
        assert store.peers.get_by_ip("acct-1", "100.64.0.10") == store.peers.get("acct-1", "peer-1")
        assert (
            store.peers.create(Peer(account_id="acct-1", name="n", key="key-2")).ip == "100.64.0.1"
        )
    finally:
        store.close()


def test_migrations_are_package_resources():
    from importlib import resources

    files = {p.name for p in resources.files("nbgateway.management.migrations.versions").iterdir()}
    assert {"0001_baseline.py", "0002_private_services.py"} <= files
    assert (resources.files("nbgateway.management.migrations") / "env.py").is_file()


def test_revision_3_makes_the_bootstrap_admin_the_instance_admin(db_dsn):
    """An existing install keeps its operator: after 0003 the bootstrap admin
    (user ``admin`` of account ``default``) is the instance admin, nobody else."""
    engine = engine_for(db_dsn)
    try:
        with engine.connect() as conn:
            migrations.upgrade(conn, "0002")
            for acct in ("default", "acct-2"):
                conn.execute(
                    sa.text(
                        "INSERT INTO accounts (id, domain, network_v4, network_v6) "
                        "VALUES (:a, 'd.test', '100.64.0.0/10', 'fd00::/64')"
                    ),
                    {"a": acct},
                )
            for uid, acct in (("admin", "default"), ("other", "default"), ("admin2", "acct-2")):
                conn.execute(
                    sa.text(
                        "INSERT INTO users (id, account_id, email, name, role, "
                        "is_service_user, blocked, pending_approval) "
                        "VALUES (:u, :a, '', '', 'owner', false, false, false)"
                    ),
                    {"u": uid, "a": acct},
                )
            conn.commit()
            migrations.upgrade(conn, "0003")
            assert migrations.current_revision(conn) == "0003"
    finally:
        engine.dispose()
    store = Store.open(db_dsn, known_clusters=[])
    try:
        assert store.users.get("default", "admin").instance_admin is True
        assert store.users.get("default", "other").instance_admin is False
        assert store.users.get("acct-2", "admin2").instance_admin is False
        assert store.accounts.get("acct-2").name == ""
        # the upgraded bootstrap is not redone, and keeps its flag
        assert store.accounts.ensure_default().admin_user.instance_admin is True
    finally:
        store.close()
