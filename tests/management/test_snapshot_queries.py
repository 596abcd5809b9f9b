"""The snapshot for one gateway reads the store in a fixed number of queries
(one per table, not one per service) and decodes shared JSON configurations
once per load without mixing up services whose configurations differ."""

from __future__ import annotations

import dataclasses
import types

import sqlalchemy as sa

from nbgateway._proto import proxy_service_pb2 as pb
from nbgateway.management.mappingstreams import MappingStreams
from nbgateway.management.model import HeaderAuth
from nbgateway.management.proxymapping import OneTimeTokenStore
from nbgateway.management.store import Store
from tests.management.test_grpc_support import CLUSTER, Fixture, make_service


def _conn(account_id: str | None = None) -> types.SimpleNamespace:
    return types.SimpleNamespace(address=CLUSTER, account_id=account_id,
                                 caps=pb.ProxyCapabilities(supports_private_service=True))


def _count_statements(store: Store, fn) -> tuple[int, object]:
    seen: list[str] = []

    def on_execute(conn, cursor, statement, params, context, executemany):
        seen.append(statement)

    sa.event.listen(store._engine, "before_cursor_execute", on_execute)
    try:
        result = fn()
    finally:
        sa.event.remove(store._engine, "before_cursor_execute", on_execute)
    return len([s for s in seen if s.lstrip().upper().startswith("SELECT")]), result


def test_snapshot_query_count_does_not_grow_with_services(store: Store) -> None:
    Fixture(store)
    streams = MappingStreams(store, OneTimeTokenStore(), batch_size=100)
    for i in range(3):
        store.services.create(make_service(f"q{i}", private=True, access_groups=("grp-admins",)))
    small, mappings = _count_statements(store, lambda: streams.snapshot_mappings(_conn()))
    assert len(mappings) == 3 + 1  # fixture F has one service of its own
    for i in range(3, 120):
        store.services.create(make_service(f"q{i}", private=True, access_groups=("grp-admins",)))
    large, mappings = _count_statements(store, lambda: streams.snapshot_mappings(_conn()))
    assert len(mappings) == 120 + 1
    assert small == large, (small, large)
    assert large <= 6, large


def test_shared_and_distinct_configurations_decode_per_service(store: Store) -> None:
    Fixture(store)
    a = make_service("same-a", private=True, access_groups=("grp-admins",))
    b = make_service("same-b", private=True, access_groups=("grp-admins",))
    c = make_service("other-c", access_groups=("grp-admins", "grp-other"))
    c = dataclasses.replace(c, auth=dataclasses.replace(
        c.auth, header_auths=(HeaderAuth(True, "X-Key", "secret-value"),)))
    for s in (a, b, c):
        store.services.create(s)
    loaded = {s.domain.split(".")[0]: s for s in store.services.list_for_cluster(CLUSTER)}
    sa_, sb, sc = loaded["same-a"], loaded["same-b"], loaded["other-c"]
    assert sa_.access_groups == sb.access_groups == ("grp-admins",)
    assert sc.access_groups == ("grp-admins", "grp-other")
    assert sa_.auth == sb.auth
    assert sa_.auth.header_auths == ()
    assert [h.header for h in sc.auth.header_auths] == ["X-Key"]
    # identical stored text is decoded once: the immutable value is shared
    assert sa_.auth is sb.auth
    mappings = {m.domain.split(".")[0]: m for m in
                MappingStreams(store, OneTimeTokenStore(), batch_size=10)
                .snapshot_mappings(_conn())}
    assert [h.header for h in mappings["other-c"].auth.header_auths] == ["X-Key"]
    assert not mappings["same-a"].auth.header_auths
