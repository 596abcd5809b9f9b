"""SQLAlchemy Core tables of the management store, as of the head migration.

The DDL history lives in :mod:`nbgateway.management.migrations`; a test checks
that a database migrated to head matches this metadata exactly. Column names
follow upstream NetBird; JSON-valued
columns (``access_groups``, ``auth``, ``restrictions``, ``custom_headers``,
``auto_groups``, ``metadata``, ``user_groups``) are TEXT holding JSON, with a
None value stored as SQL NULL.
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes stored as naive UTC (portable across SQLite and Postgres)."""

    impl = sa.DateTime
    cache_ok = True

    def process_bind_param(self, value, dialect):  # type: ignore[no-untyped-def]
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; use UTC-aware datetimes")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value, dialect):  # type: ignore[no-untyped-def]
        if value is None:
            return None
        return value.replace(tzinfo=UTC)


NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_name)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class BoundedString(TypeDecorator[str]):
    """VARCHAR(n) whose limit is enforced in Python for every backend (SQLite
    ignores lengths; PostgreSQL would fail the statement): too long a value
    raises ``ValueError`` at bind time, which the store reports as a 422."""

    impl = sa.String
    cache_ok = True

    def __init__(self, length: int) -> None:
        super().__init__(length)
        self.max_length = length

    def process_bind_param(self, value, dialect):  # type: ignore[no-untyped-def]
        if value is not None and len(value) > self.max_length:
            raise ValueError(f"value exceeds maximum length of {self.max_length} characters")
        return value


metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)

ID = BoundedString(255)

accounts = sa.Table(
    "accounts",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("domain", BoundedString(255), nullable=False),
    sa.Column("network_v4", BoundedString(64), nullable=False),
    sa.Column("network_v6", BoundedString(64), nullable=True),
    sa.Column("created_at", UTCDateTime(), nullable=True),
    # revision 0003 (account creation through the API)
    sa.Column("name", sa.Text(), nullable=True),
)

users = sa.Table(
    "users",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column(
        "account_id",
        ID,
        sa.ForeignKey("accounts.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    sa.Column("email", sa.Text(), nullable=False),
    sa.Column("name", sa.Text(), nullable=False),
    sa.Column("role", BoundedString(32), nullable=False),
    sa.Column("is_service_user", sa.Boolean(), nullable=False),
    sa.Column("auto_groups", sa.Text(), nullable=True),
    sa.Column("blocked", sa.Boolean(), nullable=False),
    sa.Column("pending_approval", sa.Boolean(), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=True),
    # revision 0003: the operator (may create accounts, sees every account's status)
    sa.Column("instance_admin", sa.Boolean(), nullable=True),
)

groups = sa.Table(
    "groups",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column(
        "account_id",
        ID,
        sa.ForeignKey("accounts.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    sa.Column("name", sa.Text(), nullable=False),
    sa.Column("issued", BoundedString(32), nullable=False),
    # rows of ``group_peers`` of the group, kept by triggers (migration 0014)
    sa.Column("peers_count", sa.Integer(), nullable=False, server_default="0"),
)

peers = sa.Table(
    "peers",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column(
        "account_id",
        ID,
        sa.ForeignKey("accounts.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    sa.Column("name", sa.Text(), nullable=False),
    sa.Column("key", BoundedString(255), nullable=False, unique=True),
    sa.Column("ip", BoundedString(64), nullable=False),
    sa.Column("ipv6", BoundedString(64), nullable=True),
    sa.Column("dns_label", sa.Text(), nullable=False),
    sa.Column("user_id", ID, nullable=True),
    sa.Column("endpoint", sa.Text(), nullable=True),
    sa.Column("proxy_meta_embedded", sa.Boolean(), nullable=False),
    sa.Column("proxy_meta_cluster", BoundedString(255), nullable=False),
    sa.Column("peer_status_connected", sa.Boolean(), nullable=False),
    sa.Column("ephemeral", sa.Boolean(), nullable=False),
    sa.Column("wg_private_key", sa.Text(), nullable=True),
    sa.Column("last_seen", UTCDateTime(), nullable=True),
    sa.Column("created_at", UTCDateTime(), nullable=True),
    sa.UniqueConstraint("account_id", "ip", name="uq_peers_account_id_ip"),
    sa.UniqueConstraint("account_id", "ipv6", name="uq_peers_account_id_ipv6"),
)

group_peers = sa.Table(
    "group_peers",
    metadata,
    sa.Column("group_id", ID, sa.ForeignKey("groups.id", ondelete="CASCADE"), primary_key=True),
    sa.Column(
        "peer_id",
        ID,
        sa.ForeignKey("peers.id", ondelete="CASCADE"),
        primary_key=True,
        index=True,
    ),
    sa.Column("account_id", ID, nullable=False),
    sa.Column("position", sa.Integer(), nullable=False),
)

services = sa.Table(
    "services",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column(
        "account_id",
        ID,
        sa.ForeignKey("accounts.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    sa.Column("name", sa.Text(), nullable=False),
    sa.Column("domain", BoundedString(255), nullable=False, unique=True),
    sa.Column("proxy_cluster", BoundedString(255), nullable=False, index=True),
    sa.Column("enabled", sa.Boolean(), nullable=False),
    sa.Column("terminated", sa.Boolean(), nullable=False),
    sa.Column("pass_host_header", sa.Boolean(), nullable=False),
    sa.Column("rewrite_redirects", sa.Boolean(), nullable=False),
    sa.Column("auth", sa.Text(), nullable=True),
    sa.Column("restrictions", sa.Text(), nullable=True),
    sa.Column("meta_created_at", UTCDateTime(), nullable=True),
    sa.Column("meta_certificate_issued_at", UTCDateTime(), nullable=True),
    sa.Column("meta_status", BoundedString(32), nullable=False),
    sa.Column("meta_last_renewed_at", UTCDateTime(), nullable=True),
    sa.Column("session_private_key", sa.Text(), nullable=False),
    sa.Column("session_public_key", sa.Text(), nullable=False),
    sa.Column("source", BoundedString(32), nullable=False, server_default="permanent"),
    sa.Column("source_peer", ID, nullable=False, server_default=""),
    sa.Column("mode", BoundedString(8), nullable=False, server_default="http"),
    sa.Column("listen_port", sa.Integer(), nullable=False),
    sa.Column("port_auto_assigned", sa.Boolean(), nullable=False),
    # revision 0002 (private services)
    sa.Column("private", sa.Boolean(), nullable=True),
    sa.Column("access_groups", sa.Text(), nullable=True),
    # revision 0003: the message of the last gateway status update (e.g. a refusal)
    sa.Column("meta_status_message", sa.Text(), nullable=True),
    sa.Column("meta_status_updated_at", UTCDateTime(), nullable=True),
    # revision 0006: identity assertion and session length (issue 16)
    sa.Column("assertion_mode", BoundedString(16), nullable=True),
    sa.Column("assertion_keys", sa.Text(), nullable=True),
    sa.Column("max_session_age_seconds", sa.Integer(), nullable=True),
    # revision 0008: machine-client service tokens (JSON, digests only)
    sa.Column("service_tokens", sa.Text(), nullable=True),
    # revision 0010: session revocation (cookies issued before are refused)
    sa.Column("sessions_not_before", sa.BigInteger(), nullable=True),
    # revision 0011: several targets per path (JSON; NULL = gateway defaults)
    sa.Column("load_balancing", sa.Text(), nullable=True),
    # revision 0013: mTLS client certificates (JSON: CA bundle and user mapping)
    sa.Column("client_cert_auth", sa.Text(), nullable=True),
)

targets = sa.Table(
    "targets",
    metadata,
    sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
    sa.Column("account_id", ID, nullable=False, index=True),
    sa.Column(
        "service_id",
        ID,
        sa.ForeignKey("services.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    sa.Column("position", sa.Integer(), nullable=False),
    sa.Column("path", sa.Text(), nullable=True),
    sa.Column("host", sa.Text(), nullable=False),
    sa.Column("port", sa.Integer(), nullable=False),
    sa.Column("protocol", BoundedString(16), nullable=False),
    sa.Column("target_id", BoundedString(255), nullable=False, index=True),
    sa.Column("target_type", BoundedString(16), nullable=False),
    sa.Column("enabled", sa.Boolean(), nullable=False),
    sa.Column("proxy_protocol", sa.Boolean(), nullable=False),
    sa.Column("skip_tls_verify", sa.Boolean(), nullable=False),
    sa.Column("request_timeout", sa.BigInteger(), nullable=False),
    sa.Column("session_idle_timeout", sa.BigInteger(), nullable=False),
    sa.Column("path_rewrite", BoundedString(16), nullable=False),
    sa.Column("custom_headers", sa.Text(), nullable=True),
    # revision 0002 (private services)
    sa.Column("direct_upstream", sa.Boolean(), nullable=True),
    # revision 0012 (gRPC / HTTP/2 upstreams): "h2", or NULL = HTTP/1.1
    sa.Column("upstream_protocol", BoundedString(16), nullable=True),
)

proxies = sa.Table(
    "proxies",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("session_id", BoundedString(64), nullable=False),
    sa.Column("cluster_address", BoundedString(255), nullable=False, index=True),
    sa.Column("ip_address", BoundedString(64), nullable=False),
    sa.Column("account_id", ID, nullable=True, index=True),
    sa.Column("last_seen", UTCDateTime(), nullable=True),
    sa.Column("connected_at", UTCDateTime(), nullable=True),
    sa.Column("disconnected_at", UTCDateTime(), nullable=True),
    sa.Column("status", BoundedString(16), nullable=False),
    sa.Column("supports_custom_ports", sa.Boolean(), nullable=True),
    sa.Column("require_subdomain", sa.Boolean(), nullable=True),
    sa.Column("supports_crowdsec", sa.Boolean(), nullable=True),
    # revision 0002 (private services)
    sa.Column("private", sa.Boolean(), nullable=True),
    # revision 0021: the host ports public L4 services may bind on the proxy
    # (nbgw_l4_public_ports, flag syntax "1024-65535", "" = none, NULL = not
    # advertised) and its main HTTPS port for TLS services (NULL/0 = none)
    sa.Column("l4_public_ports", sa.Text(), nullable=True),
    sa.Column("l4_tls_port", sa.Integer(), nullable=True),
)

# revision 0002: nbgateway extension, where a proxy listens inside an account
proxy_inbound_listeners = sa.Table(
    "proxy_inbound_listeners",
    metadata,
    sa.Column("proxy_id", ID, primary_key=True),
    sa.Column("account_id", ID, primary_key=True),
    sa.Column("tunnel_ip", BoundedString(64), nullable=False),
    sa.Column("https_port", sa.Integer(), nullable=False),
    sa.Column("http_port", sa.Integer(), nullable=False),
    sa.Column("updated_at", UTCDateTime(), nullable=True),
)

domains = sa.Table(
    "domains",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("domain", BoundedString(255), nullable=False, unique=True),
    sa.Column(
        "account_id",
        ID,
        sa.ForeignKey("accounts.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    sa.Column("target_cluster", BoundedString(255), nullable=False),
    sa.Column("validated", sa.Boolean(), nullable=False),
)

proxy_access_tokens = sa.Table(
    "proxy_access_tokens",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("name", sa.Text(), nullable=False),
    sa.Column("hashed_token", BoundedString(64), nullable=False, unique=True),
    sa.Column("account_id", ID, nullable=True, index=True),
    sa.Column("expires_at", UTCDateTime(), nullable=True),
    sa.Column("created_by", sa.Text(), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=True),
    sa.Column("last_used", UTCDateTime(), nullable=True),
    sa.Column("revoked", sa.Boolean(), nullable=False),
)

personal_access_tokens = sa.Table(
    "personal_access_tokens",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("account_id", ID, nullable=False),
    sa.Column(
        "user_id", ID, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True
    ),
    sa.Column("name", sa.Text(), nullable=False),
    sa.Column("hashed_token", BoundedString(64), nullable=False, unique=True),
    sa.Column("expires_at", UTCDateTime(), nullable=True),
    sa.Column("created_by", sa.Text(), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=True),
    sa.Column("last_used", UTCDateTime(), nullable=True),
    sa.Column("revoked", sa.Boolean(), nullable=False),
)

access_log_entries = sa.Table(
    "access_log_entries",
    metadata,
    sa.Column("id", ID, primary_key=True),
    # indexed by ix_access_log_entries_account_time below (revision 0004)
    sa.Column("account_id", ID, nullable=False),
    # ix_access_log_entries_service_id below (SQLite only since revision 0025)
    sa.Column("service_id", ID, nullable=False),
    # revision 0001's ix_access_log_entries_timestamp: dropped on SQLite by
    # revision 0022, on PostgreSQL by revision 0025
    sa.Column("timestamp", UTCDateTime(), nullable=False),
    sa.Column("location_connection_ip", BoundedString(64), nullable=False),
    sa.Column("location_country_code", BoundedString(8), nullable=False),
    sa.Column("location_city_name", sa.Text(), nullable=False),
    sa.Column("location_geo_name_id", sa.BigInteger(), nullable=False),
    sa.Column("subdivision_code", BoundedString(16), nullable=False),
    sa.Column("method", BoundedString(32), nullable=False),
    sa.Column("host", sa.Text(), nullable=False),
    sa.Column("path", sa.Text(), nullable=False),
    sa.Column("duration", sa.BigInteger(), nullable=False),
    sa.Column("status_code", sa.Integer(), nullable=False),
    sa.Column("reason", sa.Text(), nullable=False),
    sa.Column("user_id", ID, nullable=False),
    sa.Column("auth_method_used", BoundedString(32), nullable=False),
    sa.Column("bytes_upload", sa.BigInteger(), nullable=False),
    sa.Column("bytes_download", sa.BigInteger(), nullable=False),
    sa.Column("protocol", BoundedString(8), nullable=False),
    sa.Column("metadata", sa.Text(), nullable=True),
    sa.Column("agent_network", sa.Boolean(), nullable=False),
    # revision 0002: nbgateway extension (not in upstream's schema)
    sa.Column("user_groups", sa.Text(), nullable=True),
    # revision 0011: the upstream target that served the request
    sa.Column("upstream_target", BoundedString(255), nullable=True),
)
# revision 0001: entries by service; revision 0025 drops it on PostgreSQL,
# where no query of the store reads it (every one names the account first)
sa.Index("ix_access_log_entries_service_id", access_log_entries.c.service_id).ddl_if(
    dialect="sqlite"
)
# revision 0004: the account's entries by time (list sort, retention)
sa.Index(
    "ix_access_log_entries_account_time",
    access_log_entries.c.account_id,
    access_log_entries.c.timestamp,
    access_log_entries.c.id,
)
# revision 0016: an account's entries of one user by time (a regular user's
# list), on PostgreSQL only (SQLite pays for it in the ingesting process);
# revision 0026: with the columns a user's other filters and sorts read
sa.Index(
    "ix_access_log_entries_account_user_time",
    access_log_entries.c.account_id,
    access_log_entries.c.user_id,
    access_log_entries.c.timestamp,
    access_log_entries.c.id,
    postgresql_include=["duration", "status_code", "service_id", "method"],
).ddl_if(dialect="postgresql")
# revision 0020 (PostgreSQL only): the source-IP filter and the duration sort,
# per day (``date_trunc('day', timestamp)``: a batch's rows land in the
# current day's part of each index; the day leads, so that a query on the
# account alone does not take them)
_DAY = sa.text("date_trunc('day', timestamp)")
sa.Index(
    "ix_access_log_entries_day_account_ip",
    _DAY,
    access_log_entries.c.account_id,
    access_log_entries.c.location_connection_ip,
    access_log_entries.c.timestamp,
    access_log_entries.c.id,
).ddl_if(dialect="postgresql")
sa.Index(
    "ix_access_log_entries_day_account_duration",
    _DAY,
    access_log_entries.c.account_id,
    access_log_entries.c.duration,
    access_log_entries.c.id,
    postgresql_include=["timestamp"],
).ddl_if(dialect="postgresql")
# revision 0024 (PostgreSQL only): the sort by URL, per day, for the entries
# whose host and path fit a btree entry; the longer ones by account (few)
_LONG_URL = "octet_length(host) + octet_length(path) > 2000"
sa.Index(
    "ix_access_log_entries_day_account_url",
    _DAY,
    access_log_entries.c.account_id,
    access_log_entries.c.host,
    access_log_entries.c.path,
    access_log_entries.c.id,
    postgresql_include=["timestamp"],
    postgresql_where=sa.text(f"NOT ({_LONG_URL})"),
).ddl_if(dialect="postgresql")
sa.Index(
    "ix_access_log_entries_account_long_url",
    access_log_entries.c.account_id,
    access_log_entries.c.id,
    postgresql_where=sa.text(_LONG_URL),
).ddl_if(dialect="postgresql")
# revision 0015: the failed entries of an account by time (list status=failed);
# the predicate is the list's condition, textually; 0018: service_id included
sa.Index(
    "ix_access_log_entries_failed",
    access_log_entries.c.account_id,
    access_log_entries.c.timestamp,
    access_log_entries.c.id,
    postgresql_where=sa.text("status_code >= 400 OR reason <> ''"),
    postgresql_include=["status_code", "service_id"],
    sqlite_where=sa.text("status_code >= 400 OR reason <> ''"),
)
# revision 0015: entries per account, kept by triggers on access_log_entries
# (revision 0022, SQLite: inserts are counted by the store, per batch)
access_log_counts = sa.Table(
    "access_log_counts",
    metadata,
    sa.Column("account_id", ID, sa.ForeignKey("accounts.id", ondelete="CASCADE"),
              primary_key=True),
    sa.Column("entries", sa.BigInteger(), nullable=False, server_default="0"),
)
# revision 0017: entries per account, hour and service, kept by triggers on
# PostgreSQL (time-range and service totals of the list); empty on SQLite
access_log_hours = sa.Table(
    "access_log_hours",
    metadata,
    sa.Column("account_id", ID, sa.ForeignKey("accounts.id", ondelete="CASCADE"),
              primary_key=True),
    sa.Column("hour", UTCDateTime(), primary_key=True),
    sa.Column("service_id", ID, primary_key=True),
    sa.Column("entries", sa.BigInteger(), nullable=False),
)
# revision 0019: entries per account and low-cardinality values (host by its
# SHA-256), kept by triggers on PostgreSQL (method / status code / host totals
# and sorts of the list); empty on SQLite
access_log_values = sa.Table(
    "access_log_values",
    metadata,
    sa.Column("account_id", ID, sa.ForeignKey("accounts.id", ondelete="CASCADE"),
              primary_key=True),
    sa.Column("service_id", ID, primary_key=True),
    sa.Column("host_key", sa.LargeBinary(), primary_key=True),
    sa.Column("method", BoundedString(32), primary_key=True),
    sa.Column("status_code", sa.Integer(), primary_key=True),
    sa.Column("failed", sa.Boolean(), primary_key=True),
    sa.Column("host", sa.Text(), nullable=False),
    sa.Column("entries", sa.BigInteger(), nullable=False),
)
# revision 0023, per hour since 0027: entries per account, hour and captured
# user-group set (by the SHA-256 of the ``user_groups`` text), kept by
# triggers on PostgreSQL (the group filter's total, over a time range too);
# empty on SQLite
access_log_groups = sa.Table(
    "access_log_groups",
    metadata,
    sa.Column("account_id", ID, sa.ForeignKey("accounts.id", ondelete="CASCADE"),
              primary_key=True),
    sa.Column("hour", UTCDateTime(), primary_key=True),
    sa.Column("groups_key", sa.LargeBinary(), primary_key=True),
    sa.Column("user_groups", sa.Text(), nullable=False),
    sa.Column("entries", sa.BigInteger(), nullable=False),
)
# revision 0005: max(position) of a group's members (appending a member)
sa.Index("ix_group_peers_group_position", group_peers.c.group_id, group_peers.c.position)

# revision 0007: certificate status per service as the gateway last reported it
# (nbgateway extension SendStatusUpdateRequest.nbgw_certificate)
service_certificates = sa.Table(
    "service_certificates",
    metadata,
    sa.Column("service_id", ID, sa.ForeignKey("services.id", ondelete="CASCADE"),
              primary_key=True),
    sa.Column("account_id", ID, nullable=False, index=True),
    sa.Column("issuer", sa.Text(), nullable=False),
    sa.Column("not_after", UTCDateTime(), nullable=True),
    sa.Column("source", BoundedString(32), nullable=False),
    sa.Column("last_error", sa.Text(), nullable=True),
    sa.Column("ca_key_id", BoundedString(64), nullable=True),
    sa.Column("updated_at", UTCDateTime(), nullable=True),
)

# revision 0007: the gateways' private CA certificates, per account and CA key
# (SHA-256 of the public key; a re-issued CA with the same key replaces its row)
private_ca_certificates = sa.Table(
    "private_ca_certificates",
    metadata,
    sa.Column("account_id", ID, sa.ForeignKey("accounts.id", ondelete="CASCADE"),
              primary_key=True),
    sa.Column("key_id", BoundedString(64), primary_key=True),
    sa.Column("pem", sa.Text(), nullable=False),
    sa.Column("fingerprint", BoundedString(64), nullable=False),
    sa.Column("updated_at", UTCDateTime(), nullable=True),
)
# revision 0009: keyset pagination of an account's peers and services (by id)
sa.Index("ix_peers_account_id_id", peers.c.account_id, peers.c.id)
sa.Index("ix_services_account_id_id", services.c.account_id, services.c.id)
