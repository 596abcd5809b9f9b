"""``nbgateway-admin services create --target ...,upstream=h2`` against a
live ``twistd nbmanagement``: the option reaches the store through REST,
``services show`` names it, an unknown value is a usage error."""

from __future__ import annotations

import json
import uuid

import pytest

from .apiserver import running_server
from .test_cli import CLUSTER, ok, run


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_server(tmp_path_factory) as srv:
        yield srv


def test_create_and_show_an_h2_target(server):
    zone = f"h2-{uuid.uuid4().hex[:6]}.test"
    ok(server, "domains", "create", zone, CLUSTER)
    domain = f"grpc.{zone}"
    created = json.loads(ok(server, "--json", "services", "create", "--domain", domain,
                            "--target", f"type=cluster,id={CLUSTER},host=10.0.0.5,port=50051,"
                                        "upstream=h2"))
    assert created["targets"][0]["options"]["upstream_protocol"] == "h2"
    shown = ok(server, "services", "show", domain)
    assert "http://10.0.0.5:50051 (HTTP/2)" in shown
    plain = f"web.{zone}"
    ok(server, "services", "create", "--domain", plain,
       "--target", f"type=cluster,id={CLUSTER},host=10.0.0.5,port=8080")
    assert "(HTTP/2)" not in ok(server, "services", "show", plain)
    code, _, err = run(server, "services", "create", "--domain", f"x.{zone}",
                       "--target", f"type=cluster,id={CLUSTER},host=10.0.0.5,upstream=h3")
    assert code == 2 and "upstream must be h2 or http1" in err
