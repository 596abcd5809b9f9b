"""The gateway's HTTP routing table and mapping modes (
``tcp``/``udp``/``tls`` are L4, anything else, empty included, is HTTP)."""

from __future__ import annotations

import pytest

from nbgateway._proto import proxy_service_pb2 as pb
from nbgateway.routes.table import ServiceTable


def _mapping(mode: str) -> pb.ProxyMapping:
    return pb.ProxyMapping(
        type=pb.UPDATE_TYPE_CREATED, id=f"svc-{mode or 'empty'}", account_id="acct",
        domain=f"{mode or 'empty'}.example", mode=mode,
        path=[pb.PathMapping(path="/", target="http://127.0.0.1:8080/")])


@pytest.mark.parametrize("mode", ["", "http", "HTTP2-ish"])
def test_non_l4_modes_are_routed_as_http(mode):
    table = ServiceTable()
    m = _mapping(mode)
    table.mapping_added(m)
    entry = table.lookup(m.domain)
    assert entry is not None and entry.service.service_id == m.id


@pytest.mark.parametrize("mode", ["tcp", "udp", "tls"])
def test_l4_modes_get_no_http_route(mode):
    table = ServiceTable()
    m = _mapping(mode)
    table.mapping_added(m)
    assert table.lookup(m.domain) is None


def test_l4_entries_are_indexed_by_account_and_port():
    table = ServiceTable()
    m = _mapping("tcp")
    m.listen_port = 5432
    table.mapping_added(m)
    entry = table.lookup_port("acct", 5432)
    assert entry is not None and entry.l4 and entry.mode == "tcp" and entry.listen_port == 5432
    assert table.lookup_port("other", 5432) is None and table.lookup_port("acct", 5433) is None
    assert table.lookup(m.domain) is None  # never an HTTP route
    table.mapping_removed(m)
    assert table.lookup_port("acct", 5432) is None


def test_moving_an_l4_service_to_another_port_frees_the_old_one():
    table = ServiceTable()
    old = _mapping("udp")
    old.listen_port = 53
    table.mapping_added(old)
    new = pb.ProxyMapping()
    new.CopyFrom(old)
    new.listen_port = 5353
    table.mapping_changed(old, new)
    assert table.lookup_port("acct", 53) is None
    assert table.lookup_port("acct", 5353).service.service_id == old.id


def test_table_is_a_complete_store_observer():
    from nbgateway.store.mappings import MappingObserver, MappingStore

    hooks = [n for n in vars(MappingObserver) if not n.startswith("_")]
    assert all(callable(getattr(ServiceTable, n, None)) for n in hooks)
    store, table = MappingStore(), ServiceTable()
    store.add_observer(table)
    m = _mapping("")
    store.apply_batch([m], True)  # snapshot: every hook path runs without error
    assert table.lookup(m.domain) is not None
