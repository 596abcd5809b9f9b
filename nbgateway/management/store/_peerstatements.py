"""The prepared statements of a peer creation (see :mod:`._prepared`).

A REST peer creation is one write transaction of these statements: the
account's networks and ``All`` group in one read, the duplicate-key probe,
one probe per hinted tunnel address, the insert, one insert per group
membership that computes its own position, and (for the REST answer) each
group's name and member count (kept by triggers, not counted) in the same
transaction.
"""

from __future__ import annotations

import sqlalchemy as sa

from nbgateway.management.store._prepared import Prepared
from nbgateway.management.store.schema import accounts, group_peers, groups, peers

_IS_ALL = sa.and_(groups.c.account_id == accounts.c.id,
                  groups.c.name == sa.literal_column("'All'"))
#: the columns of :data:`ACCOUNT_NETWORKS`, first in :data:`ACCOUNT_NETWORKS_COUNTED` too
_NETWORK_COLUMNS = (
    accounts.c.network_v4,
    accounts.c.network_v6,
    sa.select(sa.func.min(groups.c.id)).where(_IS_ALL).scalar_subquery(),
)
_OF_ACCOUNT = accounts.c.id == sa.bindparam("account_id", type_=accounts.c.id.type)

#: (network_v4, network_v6, id of the ``All`` group or None) of an account
ACCOUNT_NETWORKS = Prepared(sa.select(*_NETWORK_COLUMNS).where(_OF_ACCOUNT))

#: :data:`ACCOUNT_NETWORKS` plus, for the per-account quotas (``_quotas``),
#: the account's peers besides its proxy peers (the All group's trigger-kept
#: ``peers_count``: every other peer is a member; NULL without an All group)
#: and its group memberships besides All (the sum of the other groups'
#: ``peers_count``, never a read of ``group_peers``), in the same statement:
#: a quota'd peer creation costs no extra round trip and reads no peer rows
ACCOUNT_NETWORKS_COUNTED = Prepared(
    sa.select(
        *_NETWORK_COLUMNS,
        sa.select(sa.func.max(groups.c.peers_count)).where(_IS_ALL).scalar_subquery(),
        sa.select(sa.func.coalesce(sa.func.sum(groups.c.peers_count), sa.literal_column("0")))
        .where(groups.c.account_id == accounts.c.id, groups.c.name != sa.literal_column("'All'"))
        .scalar_subquery(),
    ).where(_OF_ACCOUNT)
)

#: the id of the account's ``nth`` peer by id (0-based; none when it has
#: ``nth`` peers or fewer): "at the peer quota" for a proxy peer (not in All)
#: or an account without an All group, an index probe of at most ``nth``
#: entries of the account's ``(account_id, id)`` index (rare paths: a
#: gateway registering its proxy peer)
NTH_PEER = Prepared(
    sa.select(peers.c.id).where(peers.c.account_id == sa.bindparam(
        "account_id", type_=peers.c.account_id.type))
    .order_by(peers.c.id).limit(sa.literal_column("1"))
    .offset(sa.bindparam("nth", type_=sa.Integer()))
)

KEY_TAKEN = Prepared(
    sa.select(peers.c.id).where(peers.c.key == sa.bindparam("key", type_=peers.c.key.type))
)

IPV4_TAKEN = Prepared(
    sa.select(peers.c.id).where(
        peers.c.account_id == sa.bindparam("account_id", type_=peers.c.account_id.type),
        peers.c.ip == sa.bindparam("ip", type_=peers.c.ip.type),
    )
)

IPV6_TAKEN = Prepared(
    sa.select(peers.c.id).where(
        peers.c.account_id == sa.bindparam("account_id", type_=peers.c.account_id.type),
        peers.c.ipv6 == sa.bindparam("ip", type_=peers.c.ipv6.type),
    )
)

GROUP_OF_ACCOUNT = Prepared(
    sa.select(groups.c.id).where(
        groups.c.account_id == sa.bindparam("account_id", type_=groups.c.account_id.type),
        groups.c.id == sa.bindparam("group_id", type_=groups.c.id.type),
    )
)

PEER_COLUMNS = (
    "id", "account_id", "name", "key", "ip", "ipv6", "dns_label", "user_id", "endpoint",
    "proxy_meta_embedded", "proxy_meta_cluster", "peer_status_connected", "ephemeral",
    "wg_private_key", "last_seen", "created_at",
)

INSERT_PEER = Prepared(
    sa.insert(peers).values(
        {c: sa.bindparam(c, type_=peers.c[c].type) for c in PEER_COLUMNS}
    )
)

#: a membership appended at the end of the group (position = max + 1)
ADD_MEMBER = Prepared(
    sa.insert(group_peers).from_select(
        ["group_id", "peer_id", "account_id", "position"],
        sa.select(
            sa.bindparam("group_id", type_=group_peers.c.group_id.type),
            sa.bindparam("peer_id", type_=group_peers.c.peer_id.type),
            sa.bindparam("account_id", type_=group_peers.c.account_id.type),
            sa.func.coalesce(sa.func.max(group_peers.c.position), sa.literal_column("-1"))
            + sa.literal_column("1"),
        ).where(group_peers.c.group_id == sa.bindparam("group_id",
                                                       type_=group_peers.c.group_id.type)),
    )
)

#: (name, member count) of one group of an account; the count is the
#: trigger-kept ``groups.peers_count`` (migration 0014), not a count of members
GROUP_SUMMARY = Prepared(
    sa.select(groups.c.name, groups.c.peers_count).where(
        groups.c.account_id == sa.bindparam("account_id", type_=groups.c.account_id.type),
        groups.c.id == sa.bindparam("group_id", type_=groups.c.id.type),
    )
)
