"""Private CA rows: forget the gateways' one shared CA (review 16).

Until this revision a gateway had one local CA for every account it served;
its name constraints listed every account's mapped names, private ones
included, and it was stored (``private_ca_certificates``, revision 0007) and
served to every account: REST ``/reverse-proxies/ca-certificate``,
``nbgateway-admin ca``, the wg-quick config's CA block, the dashboard.  A
gateway now keeps one CA per account, constrained to that account's names,
and reports it with the account's certificate statuses.  Management refuses
a narrower copy of a stored key and a shared CA's key is never reported
again by an upgraded gateway, so the old rows (every other account's names)
would be served for ever.  The rows are a cache of what gateways report:
this revision empties the table and the gateways' next reports (each
mapping's status, at the latest when the gateway restarts on the new
version) store each account's own CA.  A gateway still on an older version
reports its shared CA again; upgrade the gateways with the management.

The downgrade changes nothing (the reports fill the table again).

Revision ID: 0028
Revises: 0027
Create Date: 2026-12-08
"""

from __future__ import annotations

from alembic import op

revision = "0028"
down_revision = "0027"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("DELETE FROM private_ca_certificates")


def downgrade() -> None:
    pass
