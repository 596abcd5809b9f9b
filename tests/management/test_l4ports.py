"""Public L4 ports the gateways advertise (``nbgw_l4_public_ports``): the pure
rules (:mod:`nbgateway.management.l4ports`), the proxies store (SQLite and
PostgreSQL), the service checks and auto-assignment in the store, and
migration 0021 up and down."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest
import sqlalchemy as sa

from nbgateway._proto import proxy_service_pb2 as pb
from nbgateway.management import l4ports, migrations
from nbgateway.management.errors import Conflict, ValidationError
from nbgateway.management.l4ports import GatewayPorts
from nbgateway.management.model import (
    Group,
    ProxyCapabilities,
    ProxyRecord,
    Service,
    Target,
    TargetOptions,
    utcnow,
)
from nbgateway.management.store._base import StoreBase, normalise_dsn

CLUSTER = "eu.proxy.netbird.io"

# --- pure rules -------------------------------------------------------------------------


def _msg(*ranges: tuple[int, int], tls: int = 0) -> pb.NbgwL4Ports:
    return pb.NbgwL4Ports(ranges=[pb.NbgwPortRange(first=a, last=b) for a, b in ranges],
                          tls_port=tls)


def test_from_proto_merges_and_drops_invalid_ranges() -> None:
    got = l4ports.from_proto(_msg((2000, 2999), (1024, 1999), (0, 80), (9000, 8000),
                                  (60000, 70000), (40000, 40000), tls=443))
    assert got == GatewayPorts(((1024, 2999), (40000, 40000)), 443)
    assert l4ports.from_proto(_msg(tls=70000)) == GatewayPorts((), 0)
    many = _msg(*[(p, p) for p in range(1000, 1000 + 2 * l4ports.MAX_RANGES + 10, 2)])
    assert len(l4ports.from_proto(many).ranges) == l4ports.MAX_RANGES


def test_text_round_trip_and_intersection() -> None:
    ranges = ((53, 53), (1024, 65535))
    assert l4ports.format_ranges(ranges) == "53,1024-65535"
    assert l4ports.parse_ranges("53,1024-65535") == ranges
    assert l4ports.parse_ranges("") == ()
    assert l4ports.parse_ranges("x, 5-3, 7") == ((7, 7),)  # garbage: fewer ports
    assert l4ports.intersect(((1024, 2000), (3000, 4000)), ((1500, 3500),)) == (
        (1500, 2000), (3000, 3500))


def test_refusal_names_the_common_ports_and_tls_port() -> None:
    a = GatewayPorts(((1024, 65535),), 443)
    b = GatewayPorts(((2000, 2999),), 443)
    assert l4ports.refusal("tcp", 80, CLUSTER, []) is None  # none advertised: nothing
    assert l4ports.refusal("tcp", 2500, CLUSTER, [a, b]) is None
    msg = l4ports.refusal("tcp", 1500, CLUSTER, [a, b])
    assert msg is not None and "1500" in msg and "(allowed: 2000-2999)" in msg
    assert "UDP port" in (l4ports.refusal("udp", 80, CLUSTER, [a]) or "")
    assert l4ports.refusal("tls", 443, CLUSTER, [a, b]) is None  # the SNI listener
    tls = l4ports.refusal("tls", 444, CLUSTER, [a, b]) or ""
    assert "allowed: 2000-2999; TLS also on 443" in tls
    assert "allowed: none" in (l4ports.refusal("tcp", 5, CLUSTER, [GatewayPorts()]) or "")


def test_pick_port_prefers_the_usual_range_inside_the_gateways() -> None:
    a = GatewayPorts(((1024, 65535),))
    assert l4ports.pick_port({10000}, (10000, 65534), [a]) == 10001
    narrow = GatewayPorts(((5000, 5001), (20000, 20001)))
    assert l4ports.pick_port(set(), (10000, 65534), [a, narrow]) == 20000
    assert l4ports.pick_port({20000, 20001}, (10000, 65534), [narrow]) == 5000
    assert l4ports.pick_port({5000, 5001, 20000, 20001}, (10000, 65534), [narrow]) is None


# --- store ------------------------------------------------------------------------------


def _register(store, pid: str, ports: GatewayPorts | None, *, account_id=None,
              cluster=CLUSTER, now=None) -> ProxyRecord:
    rec = ProxyRecord(id=pid, session_id="s-" + pid, cluster_address=cluster,
                      ip_address="10.0.0.1", account_id=account_id,
                      capabilities=ProxyCapabilities(supports_custom_ports=True,
                                                     l4_ports=ports))
    return store.proxies.register(rec, now=now)


def _target() -> Target:
    return Target(target_type="cluster", target_id=CLUSTER, host="db.lan", port=5432,
                  protocol="tcp", options=TargetOptions(direct_upstream=True))


def _l4(account, name: str, mode: str = "tcp", port: int = 0, **kw) -> Service:
    return Service(account_id=account.id, name=name, domain=f"{name}.{CLUSTER}", mode=mode,
                   listen_port=port, targets=(_target(),), **kw)


def test_proxy_row_keeps_what_was_advertised(store) -> None:
    _register(store, "gw-none", None)
    _register(store, "gw-empty", GatewayPorts())
    _register(store, "gw-some", GatewayPorts(((53, 53), (1024, 65535)), 443))
    assert store.proxies.get("gw-none").capabilities.l4_ports is None
    assert store.proxies.get("gw-empty").capabilities.l4_ports == GatewayPorts((), 0)
    some = store.proxies.get("gw-some").capabilities
    assert some.l4_ports == GatewayPorts(((53, 53), (1024, 65535)), 443)
    assert some.supports_custom_ports is True
    # a reconnect without the advertisement clears it
    _register(store, "gw-some", None)
    assert store.proxies.get("gw-some").capabilities.l4_ports is None


def test_public_listen_port_outside_the_range_is_refused(store, account) -> None:
    _register(store, "gw-1", GatewayPorts(((20000, 20099),), 443))
    _register(store, "gw-up", None)  # upstream's proxy: imposes nothing
    with pytest.raises(ValidationError, match=r"listen_port 8080: port outside the public "
                       r"L4 ports of cluster eu.proxy.netbird.io's gateways \(allowed: "
                       r"20000-20099\)"):
        store.services.create(_l4(account, "db", port=8080))
    assert store.services.list(account.id) == []  # nothing stored
    ok = store.services.create(_l4(account, "db", port=20050))
    assert ok.listen_port == 20050 and not ok.port_auto_assigned
    with pytest.raises(ValidationError, match="UDP port outside"):
        store.services.create(_l4(account, "dns", mode="udp", port=53))
    # an update to a port outside is refused too, the stored one stays
    with pytest.raises(ValidationError, match="listen_port 9000"):
        store.services.update(dataclasses.replace(ok, listen_port=9000))
    assert store.services.get(account.id, ok.id).listen_port == 20050


def test_private_and_tls_on_the_main_port_are_not_refused(store, account) -> None:
    store.groups.create(Group(id="g1", account_id=account.id, name="g1"))
    _register(store, "gw-1", GatewayPorts(((20000, 20099),), 443))
    priv = store.services.create(_l4(account, "p", port=22, private=True, access_groups=("g1",)))
    assert priv.listen_port == 22  # on the tunnel address, not the host
    tls = store.services.create(_l4(account, "t", mode="tls", port=443))
    assert tls.listen_port == 443
    with pytest.raises(ValidationError, match="TLS also on 443"):
        store.services.create(_l4(account, "t2", mode="tls", port=8443))


def test_only_active_connected_gateways_of_the_cluster_count(store, account) -> None:
    _register(store, "gw-other", GatewayPorts(((20000, 20000),)), cluster="us.proxy.test")
    _register(store, "gw-old", GatewayPorts(((20000, 20000),)),
              now=utcnow() - timedelta(minutes=5))
    _register(store, "gw-gone", GatewayPorts(((20000, 20000),)))
    store.proxies.disconnect("gw-gone", "s-gw-gone")
    _register(store, "gw-byop", GatewayPorts(((20000, 20000),)), account_id="someone-else")
    assert store.services.create(_l4(account, "db", port=8080)).listen_port == 8080
    _register(store, "gw-live", GatewayPorts(((1024, 1999),)))
    with pytest.raises(ValidationError, match=r"allowed: 1024-1999\)"):
        store.services.create(_l4(account, "db2", port=8081))


def test_every_advertising_gateway_must_allow_the_port(store, account) -> None:
    _register(store, "gw-a", GatewayPorts(((1024, 65535),)))
    _register(store, "gw-b", GatewayPorts(((30000, 30999),)))
    with pytest.raises(ValidationError, match=r"allowed: 30000-30999\)"):
        store.services.create(_l4(account, "db", port=10000))
    assert store.services.create(_l4(account, "db", port=30500)).listen_port == 30500


def test_auto_assign_picks_inside_the_advertised_ranges(store, account) -> None:
    _register(store, "gw-1", GatewayPorts(((5000, 5000), (20000, 20001))))
    ports = [store.services.create(_l4(account, f"s{i}")).listen_port for i in range(3)]
    assert ports == [20000, 20001, 5000]
    with pytest.raises(Conflict, match=r"no free tcp port left .* \(5000,20000-20001\)"):
        store.services.create(_l4(account, "s3"))
    # udp ports are their own
    assert store.services.create(_l4(account, "u0", mode="udp")).listen_port == 20000


def test_no_common_port_is_a_422(store, account) -> None:
    _register(store, "gw-a", GatewayPorts(((2000, 2999),)))
    _register(store, "gw-b", GatewayPorts(((3000, 3999),)))
    with pytest.raises(ValidationError, match=r"no common public L4 port \(theirs: "
                       r"2000-2999; 3000-3999\)"):
        store.services.create(_l4(account, "db"))


def test_kept_auto_port_is_reassigned_once_the_gateway_refuses_it(store, account) -> None:
    s = store.services.create(_l4(account, "db"))
    assert (s.listen_port, s.port_auto_assigned) == (10000, True)
    _register(store, "gw-1", GatewayPorts(((30000, 30999),)))
    again = store.services.update(dataclasses.replace(s, name="db2"))  # 10000: refused now
    assert (again.listen_port, again.port_auto_assigned) == (30000, True)
    # and inside the range it is kept
    assert store.services.update(dataclasses.replace(again, name="db3")).listen_port == 30000


# --- migration 0021 ---------------------------------------------------------------------


def _columns(conn) -> set[str]:
    return {c["name"] for c in sa.inspect(conn).get_columns("proxies")}


def test_migration_0021_up_and_down(db_dsn) -> None:
    engine = StoreBase.build_engine(normalise_dsn(db_dsn, None))
    try:
        with engine.connect() as conn:
            migrations.upgrade(conn, "0020")
            conn.execute(sa.text(
                "INSERT INTO proxies (id, session_id, cluster_address, ip_address, status) "
                "VALUES ('gw-1', 's', 'c.test', '10.0.0.1', 'connected')"))
            conn.commit()
            assert not {"l4_public_ports", "l4_tls_port"} & _columns(conn)
            migrations.upgrade(conn, "0021")
            assert {"l4_public_ports", "l4_tls_port"} <= _columns(conn)
            row = conn.execute(sa.text(
                "SELECT l4_public_ports, l4_tls_port FROM proxies WHERE id = 'gw-1'")).one()
            assert tuple(row) == (None, None)  # an older row: not advertised
            migrations.downgrade(conn, "0020")
            assert not {"l4_public_ports", "l4_tls_port"} & _columns(conn)
            assert conn.execute(sa.text("SELECT id FROM proxies")).scalars().all() == ["gw-1"]
            migrations.upgrade(conn, "head")
    finally:
        engine.dispose()
