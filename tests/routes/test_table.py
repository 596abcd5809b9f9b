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


class _Mgmt:
    def __init__(self) -> None:
        self.updates: list[tuple] = []

    def send_status_update(self, service_id, account_id, status, error_message=""):
        self.updates.append((service_id, status, error_message))


GOOD_KEY = "A" * 43 + "="  # 32 bytes


@pytest.mark.parametrize(("key", "why"), [
    ("", "got 0, want 32"),
    ("A" * 44, "got 33, want 32"),
    ("not base64!", "decode session public key for domain empty.example"),
    ("A" * 43, "decode session public key for domain empty.example"),  # unpadded
])
def test_a_mapping_with_schemes_and_an_unusable_session_key_is_not_installed(key, why):
    mgmt = _Mgmt()
    table = ServiceTable(mgmt)
    m = _mapping("")
    m.auth.password = True
    m.auth.session_key = key
    table.mapping_added(m)
    assert table.lookup(m.domain) is None
    [(service_id, status, message)] = mgmt.updates
    assert (service_id, status) == (m.id, pb.PROXY_STATUS_ERROR) and why in message


def test_a_failed_update_leaves_the_previous_config_intact():
    mgmt = _Mgmt()
    table = ServiceTable(mgmt)
    old = _mapping("")
    old.auth.pin = True
    old.auth.session_key = GOOD_KEY
    table.mapping_added(old)
    assert table.lookup(old.domain).schemes == ("pin",)
    new = pb.ProxyMapping()
    new.CopyFrom(old)
    new.auth.header_auths.add(header="X-Key", hashed_value="h")
    new.auth.session_key = "short"
    table.mapping_changed(old, new)
    entry = table.lookup(old.domain)
    assert entry is not None and entry.session_key == GOOD_KEY  # the old entry serves on
    assert mgmt.updates[-1][1] == pb.PROXY_STATUS_ERROR


def test_no_schemes_need_no_session_key():
    # a private mapping without schemes and an empty session_key installs
    table = ServiceTable(_Mgmt())
    m = _mapping("")
    m.private = True
    table.mapping_added(m)
    assert table.lookup(m.domain) is not None


def test_entries_hold_no_protobuf_sub_messages():
    """A route keeps plain option values: a protobuf sub-message would keep the
    whole mapping's upb arena alive for as long as the route (memory per
    service), and the store keeps mappings serialized."""
    from google.protobuf.message import Message

    from nbgateway.routes.balancing import DEFAULT_BALANCING
    from nbgateway.routes.service import TargetOptions, entry_from_mapping

    opts = pb.PathTargetOptions(
        skip_tls_verify=True, custom_headers={"X-A": "1"}, nbgw_upstream_protocol="h2",
        nbgw_balancing=pb.NbgwBalancing(policy="least_conn", health_path="/hz"))
    mapping = pb.ProxyMapping(id="s", account_id="a", domain="app.example", path=[
        pb.PathMapping(path="/", target="http://10.0.0.1:80/", options=opts),
        pb.PathMapping(path="/", target="http://10.0.0.2:80/"),
        pb.PathMapping(path="/plain", target="http://10.0.0.3:80/")])
    entry = entry_from_mapping(mapping)
    routes = {r.path: r for r in entry.service.router.routes}
    both = routes["/"]
    assert [t.host for t in both.targets] == ["10.0.0.1", "10.0.0.2"]
    assert both.options == TargetOptions(skip_tls_verify=True, custom_headers={"X-A": "1"},
                                         upstream_protocol="h2")
    # the first target's nbgw_balancing applies to the path's every target
    assert all(t.balancing.policy == "least_conn" and t.balancing.health_path == "/hz"
               for t in both.targets)
    assert routes["/plain"].balancing is DEFAULT_BALANCING
    held = [getattr(r, f) for route in routes.values() for r in route.targets
            for f in r.__slots__]
    assert not any(isinstance(v, Message) for v in held)


def _http(service_id: str, account: str, domain: str, target: str) -> pb.ProxyMapping:
    return pb.ProxyMapping(type=pb.UPDATE_TYPE_CREATED, id=service_id, account_id=account,
                           domain=domain, path=[pb.PathMapping(path="/", target=target)])


class _Reports:
    def __init__(self) -> None:
        self.reports: list[tuple[str, str, int, str]] = []

    def send_status_update(self, service_id, account_id, status, error_message=""):
        self.reports.append((service_id, account_id, status, error_message))


def test_another_accounts_mapping_does_not_take_a_served_domain():
    """A domain belongs to one account at a time: B's mapping for a domain A
    serves (any spelling) is reported and held back, and A keeps it."""
    mgmt, gone = _Reports(), []
    table = ServiceTable(mgmt, on_domain_gone=gone.append)
    a = _http("a", "A", "x.example", "http://10.0.0.1/")
    b = _http("b", "B", "X.Example.", "http://10.0.0.2/")
    table.mapping_added(a)
    table.mapping_added(b)
    assert table.lookup("x.example").service.account_id == "A"
    assert mgmt.reports == [("b", "B", pb.PROXY_STATUS_ERROR,
                             "domain x.example is served for another account")]
    # B's held-back mapping going away leaves A's domain and connections alone
    table.mapping_removed(b)
    assert table.lookup("x.example").service.service_id == "a"
    assert gone == [] and table.held_back == {}
    table.mapping_removed(a)
    assert table.lookup("x.example") is None and gone == ["x.example"]


def test_a_domain_handed_to_another_account_add_first_is_installed_when_the_holder_goes():
    table = ServiceTable()
    a = _http("a", "A", "x.example", "http://10.0.0.1/")
    b = _http("b", "B", "x.example", "http://10.0.0.2/")
    table.mapping_added(a)
    table.mapping_added(b)        # B's create arrived before A's delete
    table.mapping_removed(a)
    entry = table.lookup("x.example")
    assert entry is not None and (entry.service.account_id, entry.service.service_id) == ("B", "b")
    assert table.held_back == {}
    # an update of the held-back mapping replaces what waits
    table2 = ServiceTable()
    table2.mapping_added(a)
    table2.mapping_added(b)
    b2 = _http("b", "B", "x.example", "http://10.0.0.3/")
    table2.mapping_changed(b, b2)
    assert table2.lookup("x.example").service.account_id == "A"
    assert table2.held_back["x.example"] is b2
    a_moved = _http("a", "A", "y.example", "http://10.0.0.1/")
    table2.mapping_changed(a, a_moved)
    assert table2.lookup("x.example").service.service_id == "b"
    assert table2.lookup("y.example").service.service_id == "a"


def test_same_account_mapping_for_a_domain_still_replaces():
    table = ServiceTable()
    table.mapping_added(_http("a1", "A", "x.example", "http://10.0.0.1/"))
    table.mapping_added(_http("a2", "A", "x.example", "http://10.0.0.2/"))
    assert table.lookup("x.example").service.service_id == "a2"
    assert table.held_back == {}
