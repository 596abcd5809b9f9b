"""A target's ``upstream_protocol`` (HTTP/2 / gRPC upstreams): validation,
REST in and out, the store (SQLite and PostgreSQL), the mapping sent to
gateways (``PathTargetOptions.nbgw_upstream_protocol``, field 1050), the
CLI's ``upstream=h2`` and how the gateway reads it (unknown: path unusable)."""

from __future__ import annotations

import pytest

from nbgateway._proto import proxy_service_pb2 as pb
from nbgateway.management.api.mapping import target_from_api, target_to_api
from nbgateway.management.cli import CliError, parse_target
from nbgateway.management.errors import ValidationError
from nbgateway.management.model import Peer, Service, Target, TargetOptions
from nbgateway.management.proxymapping import to_proto_mapping
from nbgateway.management.validation import validate_service
from nbgateway.routes.service import entry_from_mapping

DOMAIN = "myapp.eu.proxy.netbird.io"


def h2_target(**kw) -> Target:
    base = dict(target_type="cluster", target_id="eu.proxy.netbird.io", host="backend.lan",
                port=50051, protocol="http",
                options=TargetOptions(direct_upstream=True, upstream_protocol="h2"))
    base.update(kw)
    return Target(**base)


def svc(*targets: Target, **kw) -> Service:
    base = dict(account_id="acct-1", name="grpc", domain=DOMAIN, targets=targets or
                (h2_target(),))
    base.update(kw)
    return Service(**base)


def test_validation_accepts_h2_and_http1_and_refuses_others():
    assert validate_service(svc()).targets[0].options.upstream_protocol == "h2"
    http1 = h2_target(options=TargetOptions(direct_upstream=True, upstream_protocol="http1"))
    validate_service(svc(http1))
    bad = h2_target(options=TargetOptions(direct_upstream=True, upstream_protocol="h3"))
    with pytest.raises(ValidationError) as info:
        validate_service(svc(bad))
    assert 'invalid upstream_protocol "h3"' in info.value.message


def test_validation_refuses_upstream_protocol_on_l4():
    t = h2_target(protocol="tcp", port=5432)
    with pytest.raises(ValidationError) as info:
        validate_service(svc(t, mode="tcp", listen_port=5432))
    assert "upstream_protocol is not supported for L4" in info.value.message


def test_rest_in_and_out():
    t = target_from_api(0, {"target_type": "cluster", "target_id": "c", "host": "h",
                            "port": 50051, "protocol": "https", "enabled": True,
                            "options": {"direct_upstream": True, "upstream_protocol": "h2"}})
    assert t.options.upstream_protocol == "h2"
    out = target_to_api(t, terminated=False)
    assert out["options"]["upstream_protocol"] == "h2"
    plain = target_from_api(0, {"target_type": "peer", "target_id": "p", "port": 80,
                                "protocol": "http", "enabled": True})
    assert plain.options.upstream_protocol == ""
    assert "upstream_protocol" not in target_to_api(plain, terminated=False)["options"]


def test_store_roundtrip(store, account):
    p = store.peers.create(Peer(account_id=account.id, name="srv", key="k"))
    h2 = Target(target_type="peer", target_id=p.id, port=50051,
                options=TargetOptions(upstream_protocol="h2"))
    plain = Target(target_type="peer", target_id=p.id, port=8080, path="/web")
    s = store.services.create(Service(account_id=account.id, name="grpc", domain=DOMAIN,
                                      targets=(h2, plain)))
    got = store.services.get(account.id, s.id)
    assert [t.options.upstream_protocol for t in got.targets] == ["h2", ""]


def test_mapping_carries_field_1050_and_the_gateway_reads_it():
    s = validate_service(svc(id="svc-1"))
    m = to_proto_mapping(s, pb.UPDATE_TYPE_CREATED)
    assert m.path[0].options.nbgw_upstream_protocol == "h2"
    assert pb.PathTargetOptions.DESCRIPTOR.fields_by_name[
        "nbgw_upstream_protocol"].number == 1050
    entry = entry_from_mapping(m)
    route = entry.service.router.match("/pkg.Svc/Method")
    from nbgateway.routes.service import TargetOptions as GwOptions

    assert GwOptions.of(route.options).upstream_protocol == "h2"
    assert entry.route_errors == ()


def test_gateway_refuses_an_unknown_upstream_protocol():
    m = pb.ProxyMapping(id="s", account_id="a", domain="x.example", path=[
        pb.PathMapping(path="/", target="http://10.0.0.1:50051/",
                       options=pb.PathTargetOptions(nbgw_upstream_protocol="h3")),
        pb.PathMapping(path="/ok", target="http://10.0.0.1:8080/",
                       options=pb.PathTargetOptions(nbgw_upstream_protocol="http1"))])
    entry = entry_from_mapping(m)
    assert any('unknown upstream protocol "h3"' in e for e in entry.route_errors)
    assert entry.service.router.match("/other") is None  # fails closed: no route
    from nbgateway.routes.service import TargetOptions as GwOptions

    assert GwOptions.of(entry.service.router.match("/ok").options).upstream_protocol == ""


def test_cli_target_field():
    t = parse_target("type=cluster,host=10.0.0.5,port=50051,upstream=h2")
    assert t["options"] == {"direct_upstream": True, "upstream_protocol": "h2"}
    with pytest.raises(CliError):
        parse_target("type=cluster,host=10.0.0.5,port=50051,upstream=spdy")
