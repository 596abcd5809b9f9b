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
