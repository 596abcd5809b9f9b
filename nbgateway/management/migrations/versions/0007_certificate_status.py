"""Certificate status per service and the gateways' private CA certificates.

Both tables are new (additive: replicas on revision 0006 keep working):

* ``service_certificates``: what a gateway reported with its last status update
  for a service (issuer, not-after, source, last error, which private CA).
* ``private_ca_certificates``: the newest CA certificate per account and CA
  key, served to the account's peers.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from nbgateway.management.store.schema import BoundedString, UTCDateTime

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "service_certificates",
        sa.Column("service_id", BoundedString(255),
                  sa.ForeignKey("services.id", ondelete="CASCADE",
                                name="fk_service_certificates_service_id_services"),
                  primary_key=True),
        sa.Column("account_id", BoundedString(255), nullable=False),
        sa.Column("issuer", sa.Text(), nullable=False),
        sa.Column("not_after", UTCDateTime(), nullable=True),
        sa.Column("source", BoundedString(32), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("ca_key_id", BoundedString(64), nullable=True),
        sa.Column("updated_at", UTCDateTime(), nullable=True),
    )
    op.create_index("ix_service_certificates_account_id", "service_certificates",
                    ["account_id"])
    op.create_table(
        "private_ca_certificates",
        sa.Column("account_id", BoundedString(255),
                  sa.ForeignKey("accounts.id", ondelete="CASCADE",
                                name="fk_private_ca_certificates_account_id_accounts"),
                  primary_key=True),
        sa.Column("key_id", BoundedString(64), primary_key=True),
        sa.Column("pem", sa.Text(), nullable=False),
        sa.Column("fingerprint", BoundedString(64), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("private_ca_certificates")
    op.drop_index("ix_service_certificates_account_id", table_name="service_certificates")
    op.drop_table("service_certificates")
