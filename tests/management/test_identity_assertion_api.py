"""Identity assertion keys and session length against a live ``twistd
nbmanagement``: the service fields through REST and ``nbgateway-admin services
identity``, the unauthenticated per-service JWKS, rotation keeping the old key
published, the mapping a gateway receives (seed present, redacted in logs),
the session JWT lifetime, validation."""

from __future__ import annotations

import json
import time

import jwt
import pytest

from nbgateway._proto import proxy_service_pb2 as pb
from nbgateway.management import assertionkeys, sessionjwt
from nbgateway.management.proxymapping import to_proto_mapping
from nbgateway.routes.redaction import redacted_json

from .apiserver import running_server
from .test_cli import cli_service, ok, run


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_server(tmp_path_factory) as srv:
        yield srv


def test_fields_jwks_rotation_and_mapping(server):
    svc = cli_service(server, "id")
    domain = svc["domain"]
    assert svc["assertion"] == "off" and svc["max_session_age_seconds"] == 0
    jwks_url = f"/.well-known/nbgateway/jwks.json?domain={domain}"
    assert server.get(jwks_url, auth=False).status == 404  # off: nothing published

    out = ok(server, "services", "identity", domain, "--assertion", "on",
             "--max-session-age", "3600")
    assert out == f"{domain}: assertion on, session 3600 s\n"
    shown = server.ok("GET", f"/api/reverse-proxies/services/{svc['id']}")
    assert shown["assertion"] == "on" and shown["max_session_age_seconds"] == 3600
    assert "assertion_keys" not in shown

    resp = server.get(jwks_url, auth=False)
    assert resp.status == 200
    keys = resp.json["keys"]
    assert len(keys) == 1 and keys[0]["kty"] == "OKP" and keys[0]["crv"] == "Ed25519"
    assert "d" not in keys[0]
    assert server.get("/.well-known/nbgateway/jwks.json", auth=False).status == 400
    assert server.get("/.well-known/nbgateway/jwks.json?domain=nope.test",
                      auth=False).status == 404

    # the gateway's mapping carries the signing seed of the published key
    store = server.open_store()
    try:
        model = store.services.get_by_domain(domain)
        mapping = to_proto_mapping(model, 1)
        assert mapping.auth.max_session_age_seconds == 3600
        a = mapping.nbgw_assertion
        assert a.mode == "on" and a.kid == keys[0]["kid"] and a.lifetime_seconds == 300
        assert a.private_key and a.private_key not in redacted_json(mapping)
        assert a.private_key not in json.dumps(shown)  # never through REST
        # the session JWT lives max_session_age_seconds
        token = sessionjwt.sign_session(model.session_private_key, subject="u", domain=domain,
                                        method="pin", expiry=model.max_session_age_seconds
                                        or sessionjwt.DEFAULT_SESSION_EXPIRY)
        claims = jwt.decode(token, options={"verify_signature": False})
        assert claims["exp"] - claims["iat"] == 3600
    finally:
        store.close()

    out = ok(server, "services", "identity", domain, "--rotate-key")
    assert out.endswith("signing key rotated\n")
    rotated = server.get(jwks_url, auth=False).json["keys"]
    assert len(rotated) == 2 and rotated[1]["kid"] == keys[0]["kid"]
    assert rotated[0]["kid"] != keys[0]["kid"]
    # another PUT (services auth) keeps the mode and the keys
    ok(server, "services", "auth", domain, "--pin", "2468")
    again = server.get(jwks_url, auth=False).json["keys"]
    assert [k["kid"] for k in again] == [k["kid"] for k in rotated]


def test_validation(server):
    domain = cli_service(server, "id")["domain"]
    code, _, err = run(server, "services", "identity", domain, "--max-session-age", "5")
    assert code != 0 and "max_session_age_seconds" in err
    svc = server.ok("GET", "/api/reverse-proxies/services")[0]
    body = {k: svc[k] for k in ("name", "domain", "targets", "enabled") if k in svc}
    resp = server.put(f"/api/reverse-proxies/services/{svc['id']}",
                      dict(body, assertion="sometimes"))
    assert resp.status in (400, 422)


def test_rotation_publishes_first_then_signs_then_retires():
    now = time.time()
    keys = assertionkeys.ensure((), now)
    old = assertionkeys.current(keys, now)
    assert old is keys[0] and assertionkeys.ensure(keys, now) == keys
    keys = assertionkeys.rotate(keys, now, ahead=60)
    new = keys[0]
    # published at once, signing only from now + 60; the old key signs until then
    assert [k.kid for k in assertionkeys.published(keys, now)] == [new.kid, old.kid]
    assert assertionkeys.current(keys, now).kid == old.kid
    assert assertionkeys.upcoming(keys, now) is new
    assert assertionkeys.current(keys, now + 60) is new
    assert assertionkeys.upcoming(keys, now + 60) is None
    grace = assertionkeys.RETIRED_GRACE
    assert len(assertionkeys.published(keys, now + 60 + grace - 1)) == 2
    assert len(assertionkeys.published(keys, now + 60 + grace)) == 1
    # the mapping names both keys and the switch time
    msg = pb.ProxyMapping().nbgw_assertion
    assertionkeys.fill_mapping(msg, "on", keys, now)
    assert (msg.kid, msg.next_kid, msg.next_from) == (old.kid, new.kid, new.activates)
    assert msg.private_key == old.private and msg.next_private_key == new.private
    assert [k.kid for k in msg.keys] == [new.kid, old.kid]
    assert assertionkeys.from_json(json.loads(json.dumps(assertionkeys.to_json(keys)))) == keys
    assert assertionkeys.from_json([{"kid": 1}, "x", None]) == ()


def test_rotating_a_service_without_keys_signs_at_once():
    now = time.time()
    keys = assertionkeys.rotate((), now, ahead=60)
    assert len(keys) == 1 and assertionkeys.current(keys, now) is keys[0]


def test_lifetime_and_publish_ahead_settings():
    assert assertionkeys.lifetime({}) == 300
    assert assertionkeys.lifetime({"NB_MANAGEMENT_ASSERTION_LIFETIME": "10"}) == 10
    for bad in ("0", "301", "-5", "ten"):
        assert assertionkeys.lifetime({"NB_MANAGEMENT_ASSERTION_LIFETIME": bad}) == 300
    assert assertionkeys.publish_ahead({}) == 60
    assert assertionkeys.publish_ahead({"NB_MANAGEMENT_ASSERTION_PUBLISH_AHEAD": "5"}) == 5
