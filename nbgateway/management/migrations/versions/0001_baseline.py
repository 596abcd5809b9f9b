"""Baseline schema: NetBird management tables before private services.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

ID = sa.String(255)


def upgrade() -> None:
    op.create_table(
        "accounts",
        sa.Column("id", ID, nullable=False),
        sa.Column("domain", sa.String(255), nullable=False),
        sa.Column("network_v4", sa.String(64), nullable=False),
        sa.Column("network_v6", sa.String(64), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_accounts"),
    )
    op.create_table(
        "users",
        sa.Column("id", ID, nullable=False),
        sa.Column("account_id", ID, nullable=False),
        sa.Column("email", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("role", sa.String(32), nullable=False),
        sa.Column("is_service_user", sa.Boolean(), nullable=False),
        sa.Column("auto_groups", sa.Text(), nullable=True),
        sa.Column("blocked", sa.Boolean(), nullable=False),
        sa.Column("pending_approval", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_users"),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
            ondelete="CASCADE",
            name="fk_users_account_id_accounts",
        ),
    )
    op.create_index("ix_users_account_id", "users", ["account_id"])
    op.create_table(
        "groups",
        sa.Column("id", ID, nullable=False),
        sa.Column("account_id", ID, nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("issued", sa.String(32), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_groups"),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
            ondelete="CASCADE",
            name="fk_groups_account_id_accounts",
        ),
    )
    op.create_index("ix_groups_account_id", "groups", ["account_id"])
    op.create_table(
        "peers",
        sa.Column("id", ID, nullable=False),
        sa.Column("account_id", ID, nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("key", sa.String(255), nullable=False),
        sa.Column("ip", sa.String(64), nullable=False),
        sa.Column("ipv6", sa.String(64), nullable=True),
        sa.Column("dns_label", sa.Text(), nullable=False),
        sa.Column("user_id", ID, nullable=True),
        sa.Column("endpoint", sa.Text(), nullable=True),
        sa.Column("proxy_meta_embedded", sa.Boolean(), nullable=False),
        sa.Column("proxy_meta_cluster", sa.String(255), nullable=False),
        sa.Column("peer_status_connected", sa.Boolean(), nullable=False),
        sa.Column("ephemeral", sa.Boolean(), nullable=False),
        sa.Column("wg_private_key", sa.Text(), nullable=True),
        sa.Column("last_seen", sa.DateTime(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_peers"),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
            ondelete="CASCADE",
            name="fk_peers_account_id_accounts",
        ),
        sa.UniqueConstraint("key", name="uq_peers_key"),
        sa.UniqueConstraint("account_id", "ip", name="uq_peers_account_id_ip"),
        sa.UniqueConstraint("account_id", "ipv6", name="uq_peers_account_id_ipv6"),
    )
    op.create_index("ix_peers_account_id", "peers", ["account_id"])
    op.create_table(
        "group_peers",
        sa.Column("group_id", ID, nullable=False),
        sa.Column("peer_id", ID, nullable=False),
        sa.Column("account_id", ID, nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("group_id", "peer_id", name="pk_group_peers"),
        sa.ForeignKeyConstraint(
            ["group_id"], ["groups.id"], ondelete="CASCADE", name="fk_group_peers_group_id_groups"
        ),
        sa.ForeignKeyConstraint(
            ["peer_id"], ["peers.id"], ondelete="CASCADE", name="fk_group_peers_peer_id_peers"
        ),
    )
    op.create_index("ix_group_peers_peer_id", "group_peers", ["peer_id"])
    op.create_table(
        "services",
        sa.Column("id", ID, nullable=False),
        sa.Column("account_id", ID, nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("domain", sa.String(255), nullable=False),
        sa.Column("proxy_cluster", sa.String(255), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("terminated", sa.Boolean(), nullable=False),
        sa.Column("pass_host_header", sa.Boolean(), nullable=False),
        sa.Column("rewrite_redirects", sa.Boolean(), nullable=False),
        sa.Column("auth", sa.Text(), nullable=True),
        sa.Column("restrictions", sa.Text(), nullable=True),
        sa.Column("meta_created_at", sa.DateTime(), nullable=True),
        sa.Column("meta_certificate_issued_at", sa.DateTime(), nullable=True),
        sa.Column("meta_status", sa.String(32), nullable=False),
        sa.Column("meta_last_renewed_at", sa.DateTime(), nullable=True),
        sa.Column("session_private_key", sa.Text(), nullable=False),
        sa.Column("session_public_key", sa.Text(), nullable=False),
        sa.Column("source", sa.String(32), nullable=False, server_default="permanent"),
        sa.Column("source_peer", ID, nullable=False, server_default=""),
        sa.Column("mode", sa.String(8), nullable=False, server_default="http"),
        sa.Column("listen_port", sa.Integer(), nullable=False),
        sa.Column("port_auto_assigned", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_services"),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
            ondelete="CASCADE",
            name="fk_services_account_id_accounts",
        ),
        sa.UniqueConstraint("domain", name="uq_services_domain"),
    )
    op.create_index("ix_services_account_id", "services", ["account_id"])
    op.create_index("ix_services_proxy_cluster", "services", ["proxy_cluster"])
    op.create_table(
        "targets",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("account_id", ID, nullable=False),
        sa.Column("service_id", ID, nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("path", sa.Text(), nullable=True),
        sa.Column("host", sa.Text(), nullable=False),
        sa.Column("port", sa.Integer(), nullable=False),
        sa.Column("protocol", sa.String(16), nullable=False),
        sa.Column("target_id", sa.String(255), nullable=False),
        sa.Column("target_type", sa.String(16), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("proxy_protocol", sa.Boolean(), nullable=False),
        sa.Column("skip_tls_verify", sa.Boolean(), nullable=False),
        sa.Column("request_timeout", sa.BigInteger(), nullable=False),
        sa.Column("session_idle_timeout", sa.BigInteger(), nullable=False),
        sa.Column("path_rewrite", sa.String(16), nullable=False),
        sa.Column("custom_headers", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_targets"),
        sa.ForeignKeyConstraint(
            ["service_id"],
            ["services.id"],
            ondelete="CASCADE",
            name="fk_targets_service_id_services",
        ),
    )
    op.create_index("ix_targets_account_id", "targets", ["account_id"])
    op.create_index("ix_targets_service_id", "targets", ["service_id"])
    op.create_index("ix_targets_target_id", "targets", ["target_id"])
    op.create_table(
        "proxies",
        sa.Column("id", ID, nullable=False),
        sa.Column("session_id", sa.String(64), nullable=False),
        sa.Column("cluster_address", sa.String(255), nullable=False),
        sa.Column("ip_address", sa.String(64), nullable=False),
        sa.Column("account_id", ID, nullable=True),
        sa.Column("last_seen", sa.DateTime(), nullable=True),
        sa.Column("connected_at", sa.DateTime(), nullable=True),
        sa.Column("disconnected_at", sa.DateTime(), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("supports_custom_ports", sa.Boolean(), nullable=True),
        sa.Column("require_subdomain", sa.Boolean(), nullable=True),
        sa.Column("supports_crowdsec", sa.Boolean(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_proxies"),
    )
    op.create_index("ix_proxies_cluster_address", "proxies", ["cluster_address"])
    op.create_index("ix_proxies_account_id", "proxies", ["account_id"])
    op.create_table(
        "domains",
        sa.Column("id", ID, nullable=False),
        sa.Column("domain", sa.String(255), nullable=False),
        sa.Column("account_id", ID, nullable=False),
        sa.Column("target_cluster", sa.String(255), nullable=False),
        sa.Column("validated", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_domains"),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
            ondelete="CASCADE",
            name="fk_domains_account_id_accounts",
        ),
        sa.UniqueConstraint("domain", name="uq_domains_domain"),
    )
    op.create_index("ix_domains_account_id", "domains", ["account_id"])
    op.create_table(
        "proxy_access_tokens",
        sa.Column("id", ID, nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("hashed_token", sa.String(64), nullable=False),
        sa.Column("account_id", ID, nullable=True),
        sa.Column("expires_at", sa.DateTime(), nullable=True),
        sa.Column("created_by", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=True),
        sa.Column("last_used", sa.DateTime(), nullable=True),
        sa.Column("revoked", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_proxy_access_tokens"),
        sa.UniqueConstraint("hashed_token", name="uq_proxy_access_tokens_hashed_token"),
    )
    op.create_index("ix_proxy_access_tokens_account_id", "proxy_access_tokens", ["account_id"])
    op.create_table(
        "personal_access_tokens",
        sa.Column("id", ID, nullable=False),
        sa.Column("account_id", ID, nullable=False),
        sa.Column("user_id", ID, nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("hashed_token", sa.String(64), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=True),
        sa.Column("created_by", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=True),
        sa.Column("last_used", sa.DateTime(), nullable=True),
        sa.Column("revoked", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_personal_access_tokens"),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            ondelete="CASCADE",
            name="fk_personal_access_tokens_user_id_users",
        ),
        sa.UniqueConstraint("hashed_token", name="uq_personal_access_tokens_hashed_token"),
    )
    op.create_index("ix_personal_access_tokens_user_id", "personal_access_tokens", ["user_id"])
    op.create_table(
        "access_log_entries",
        sa.Column("id", ID, nullable=False),
        sa.Column("account_id", ID, nullable=False),
        sa.Column("service_id", ID, nullable=False),
        sa.Column("timestamp", sa.DateTime(), nullable=False),
        sa.Column("location_connection_ip", sa.String(64), nullable=False),
        sa.Column("location_country_code", sa.String(8), nullable=False),
        sa.Column("location_city_name", sa.Text(), nullable=False),
        sa.Column("location_geo_name_id", sa.BigInteger(), nullable=False),
        sa.Column("subdivision_code", sa.String(16), nullable=False),
        sa.Column("method", sa.String(32), nullable=False),
        sa.Column("host", sa.Text(), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("duration", sa.BigInteger(), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("user_id", ID, nullable=False),
        sa.Column("auth_method_used", sa.String(32), nullable=False),
        sa.Column("bytes_upload", sa.BigInteger(), nullable=False),
        sa.Column("bytes_download", sa.BigInteger(), nullable=False),
        sa.Column("protocol", sa.String(8), nullable=False),
        sa.Column("metadata", sa.Text(), nullable=True),
        sa.Column("agent_network", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_access_log_entries"),
    )
    op.create_index("ix_access_log_entries_account_id", "access_log_entries", ["account_id"])
    op.create_index("ix_access_log_entries_service_id", "access_log_entries", ["service_id"])
    op.create_index("ix_access_log_entries_timestamp", "access_log_entries", ["timestamp"])


def downgrade() -> None:
    for table in (
        "access_log_entries",
        "personal_access_tokens",
        "proxy_access_tokens",
        "domains",
        "proxies",
        "targets",
        "services",
        "group_peers",
        "peers",
        "groups",
        "users",
        "accounts",
    ):
        op.drop_table(table)
