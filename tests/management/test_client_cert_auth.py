"""mTLS client CA per service against a live ``twistd nbmanagement`` (SQLite and PostgreSQL): REST
PUT/GET/DELETE and ``nbgateway-admin services client-ca``, bundle validation
(CA certificates only, no private key, size), the ``email`` and ``list``
rules resolved into the mapping's certificate -> user table (blocked users
left out, groups named), and the gateway verifying a certificate with
nothing but that mapping."""

from __future__ import annotations

import json
import time
import uuid

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from nbgateway.auth.mtls import MtlsVerifier, identify
from nbgateway.management.proxymapping import to_proto_mapping
from nbgateway.routes.service import entry_from_mapping
from tests.tls._clientcerts import IssuingCA

from .apiserver import running_server
from .conftest import BACKENDS
from .test_cli import cli_service, ok, run


@pytest.fixture(scope="module", params=BACKENDS)
def server(request, tmp_path_factory):
    with running_server(tmp_path_factory, request.param) as srv:
        yield srv


@pytest.fixture(scope="module")
def ca():
    return IssuingCA("Corp Client CA")


def _mapping(server, domain):
    store = server.open_store()
    try:
        svc = store.services.get_by_domain(domain)
        [svc] = store.services.resolve_client_cert_rows([svc])
        return to_proto_mapping(svc, 1)
    finally:
        store.close()


def test_rest_email_rule_into_the_mapping_and_the_gateway_check(server, ca):
    svc = cli_service(server, "ca")
    base = f"/api/reverse-proxies/services/{svc['id']}/client-ca"
    assert server.ok("GET", base) == {"enabled": False}
    grp = server.ok("POST", "/api/groups", {"name": f"eng-{uuid.uuid4().hex[:6]}"})
    email = f"alice-{uuid.uuid4().hex[:6]}@example.com"
    alice = server.ok("POST", "/api/users", {"email": email, "name": "Alice", "role": "user",
                                             "auto_groups": [grp["id"]]})
    bob = server.ok("POST", "/api/users", {"email": f"bob-{alice['id']}@example.com",
                                           "name": "Bob", "role": "user", "auto_groups": []})
    view = server.ok("PUT", base, {"ca_pem": ca.pem})
    assert view["enabled"] and view["mapping"] == "email"
    [c] = view["certificate_authorities"]
    assert c["subject"] == "CN=Corp Client CA" and len(c["sha256"]) == 64
    assert server.ok("GET", base) == view

    m = _mapping(server, svc["domain"])
    assert m.nbgw_client_ca_pem == ca.pem.strip() + "\n"
    rows = {u.match: u for u in m.nbgw_client_cert_users}
    assert rows[email.lower()].user_id == alice["id"]
    assert list(rows[email.lower()].group_names) == [grp["name"]]
    assert bob["id"] in {u.user_id for u in rows.values()}

    # the gateway needs nothing else: verify and map a certificate locally
    entry = entry_from_mapping(m)
    assert entry.has_schemes and entry.client_ca_pem
    v = MtlsVerifier()
    verdict = v.verify(v.ca_for(entry.client_ca_pem),
                       ca.issue("Alice", emails=(email.upper(),)).cert, [], time.time())
    ident = identify(entry.client_cert_users, verdict.names)
    assert ident.user_id == alice["id"] and ident.group_names == (grp["name"],)

    # a blocked user drops out of the table with the next mapping
    server.ok("PUT", f"/api/users/{bob['id']}", {"role": "user", "auto_groups": [],
                                                 "is_blocked": True})
    assert bob["id"] not in {u.user_id for u in _mapping(server, svc["domain"])
                             .nbgw_client_cert_users}

    # an ordinary service update keeps the client CA; DELETE removes it
    ok(server, "services", "auth", svc["domain"], "--pin", "2468")
    assert _mapping(server, svc["domain"]).nbgw_client_ca_pem
    assert server.ok("DELETE", base) == {"enabled": False}
    m = _mapping(server, svc["domain"])
    assert not m.nbgw_client_ca_pem and not m.nbgw_client_cert_users
    assert not entry_from_mapping(m).client_ca_pem


def test_validation(server, ca):
    svc = cli_service(server, "ca")
    base = f"/api/reverse-proxies/services/{svc['id']}/client-ca"
    key = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()).decode()
    leaf = ca.issue("x").cert.public_bytes(serialization.Encoding.PEM).decode()
    cases = [({}, "ca_pem"),
             ({"ca_pem": ca.pem + key}, "certificates only"),
             ({"ca_pem": leaf}, "is not a CA"),
             ({"ca_pem": "x" * 70000}, "longer than 65536"),  # the framework bound
             ({"ca_pem": ca.pem, "mapping": "cn"}, "mapping"),
             ({"ca_pem": ca.pem, "mapping": "list"}, "at least one"),
             ({"ca_pem": ca.pem, "mapping": "list",
               "users": [{"match": "bot", "user_id": "nobody"}]}, "not a user")]
    for body, why in cases:
        resp = server.request("PUT", base, body)
        assert resp.status in (400, 422), (body, resp)
        assert why.lower() in resp.json["message"].lower(), resp.json
    assert server.ok("GET", base) == {"enabled": False}


def test_cli_set_list_show_clear(server, ca, tmp_path):
    svc = cli_service(server, "ca")
    domain = svc["domain"]
    email = f"ci-{uuid.uuid4().hex[:6]}@example.com"
    user = server.ok("POST", "/api/users", {"email": email, "name": "CI", "role": "user",
                                            "auto_groups": []})
    pem = tmp_path / "ca.pem"
    pem.write_text(ca.pem)
    out = ok(server, "services", "client-ca", domain, "set", str(pem),
             "--user", f"spiffe://corp/ci={email}", "--user", f"build-bot={user['id']}")
    assert "client certificates mapped by list" in out and "CA CN=Corp Client CA" in out
    assert f"spiffe://corp/ci -> {user['id']}" in out
    rows = [(u.match, u.user_id) for u in _mapping(server, domain).nbgw_client_cert_users]
    assert rows == [("spiffe://corp/ci", user["id"]), ("build-bot", user["id"])]
    assert "build-bot" in ok(server, "services", "client-ca", domain, "show")
    shown = json.loads(ok(server, "--json", "services", "client-ca", domain, "show"))
    assert shown["mapping"] == "list" and len(shown["users"]) == 2
    code, _out, err = run(server, "services", "client-ca", domain, "set", str(pem),
                          "--user", "x=nobody@example.com")
    assert code != 0 and "no user" in err
    assert ok(server, "services", "client-ca", domain, "clear") == \
        f"{domain}: no client certificates\n"
    assert not _mapping(server, domain).nbgw_client_ca_pem
