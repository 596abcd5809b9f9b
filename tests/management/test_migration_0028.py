"""Revision 0028 forgets the gateways' shared private CA rows (review 16):
they listed every account's names and were served to every account; the
gateways' next reports store each account's own CA."""

from __future__ import annotations

import datetime

import sqlalchemy as sa

from nbgateway.management import migrations
from nbgateway.management.store.schema import accounts, private_ca_certificates
from tests.management.test_migrations import engine_for


def test_upgrade_empties_the_private_ca_rows(db_dsn):
    engine = engine_for(db_dsn)
    try:
        with engine.connect() as conn:
            migrations.upgrade(conn, "0027")
            now = datetime.datetime(2026, 12, 1, tzinfo=datetime.UTC)
            conn.execute(sa.insert(accounts).values(
                id="acct-a", domain="a.example", network_v4="100.64.0.0/10", created_at=now))
            conn.execute(sa.insert(private_ca_certificates).values(
                account_id="acct-a", key_id="k" * 64, pem="-----BEGIN CERTIFICATE-----",
                fingerprint="f" * 64, updated_at=now))
            conn.commit()
            migrations.upgrade(conn, "0028")
            conn.commit()
            assert migrations.current_revision(conn) == "0028"
            assert conn.execute(sa.select(sa.func.count()).select_from(
                private_ca_certificates)).scalar() == 0
            assert conn.execute(sa.select(accounts.c.id)).scalars().all() == ["acct-a"]
            migrations.downgrade(conn, "0027")
            conn.commit()
            assert migrations.current_revision(conn) == "0027"
    finally:
        engine.dispose()
