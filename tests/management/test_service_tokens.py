"""Machine-client service tokens against a live ``twistd nbmanagement``:
create through REST and ``nbgateway-admin services token`` (secret shown once,
only its SHA-256 stored), the digest in the service's mapping, revocation
removing it, a service update keeping the tokens, validation, and the
gateway's check of the shapes management mints."""

from __future__ import annotations

import hashlib
import json

import pytest

from nbgateway.auth import tokens as gw_tokens
from nbgateway.management import servicetokens
from nbgateway.management.proxymapping import to_proto_mapping
from nbgateway.routes.service import entry_from_mapping

from .apiserver import running_server
from .test_cli import cli_service, ok, run


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_server(tmp_path_factory) as srv:
        yield srv


def _mapping(server, domain):
    store = server.open_store()
    try:
        return to_proto_mapping(store.services.get_by_domain(domain), 1)
    finally:
        store.close()


def test_create_list_revoke_and_mapping(server):
    svc = cli_service(server, "tk")
    domain, sid = svc["domain"], svc["id"]
    base = f"/api/reverse-proxies/services/{sid}/tokens"
    made = server.ok("POST", base, {"name": "ci", "expires_in_seconds": 3600}, status=201)
    assert made["id"].startswith("nbt_") and made["state"] == "active"
    assert made["bearer"] == f"{made['id']}.{made['secret']}"
    listed = server.ok("GET", base)
    assert [t["id"] for t in listed] == [made["id"]]
    assert "secret" not in listed[0] and "sha256" not in json.dumps(listed)

    # the secret itself is stored nowhere; the mapping carries its digest
    mapping = _mapping(server, domain)
    [t] = mapping.nbgw_tokens
    assert t.id == made["id"] and t.secret_sha256 == hashlib.sha256(
        made["secret"].encode()).hexdigest()
    assert made["secret"] not in str(mapping)
    entry = entry_from_mapping(mapping)
    assert entry.has_schemes
    ident = gw_tokens.check(entry.tokens, made["id"], made["secret"], t.expires_at - 1)
    assert ident is not None and ident.user_id == f"token:{made['id']}"
    assert gw_tokens.check(entry.tokens, made["id"], made["secret"], t.expires_at) is None

    # the CLI: create (secret printed once), list, revoke
    out = ok(server, "services", "token", domain, "create", "mobile")
    assert "X-NetBird-Token-Secret: " in out and "Authorization: Bearer nbt_" in out
    cli_id = out.split()[1]
    assert cli_id in ok(server, "services", "token", domain, "list")
    # an ordinary service update keeps the tokens
    ok(server, "services", "auth", domain, "--pin", "2468")
    assert len(_mapping(server, domain).nbgw_tokens) == 2
    assert ok(server, "services", "token", domain, "revoke", cli_id) == \
        f"token {cli_id} revoked\n"
    assert [t.id for t in _mapping(server, domain).nbgw_tokens] == [made["id"]]
    revoked = server.ok("DELETE", f"{base}/{made['id']}")
    assert revoked["state"] == "revoked" and revoked["revoked_at"]
    last = _mapping(server, domain)
    assert list(last.nbgw_tokens) == [] and last.nbgw_token_auth
    assert entry_from_mapping(last).has_schemes  # every token revoked: still closed
    states = {t["id"]: t["state"] for t in server.ok("GET", base)}
    assert states == {made["id"]: "revoked", cli_id: "revoked"}
    assert server.request("DELETE", f"{base}/nbt_000000000000000000000000").status == 404


def test_validation(server):
    sid = cli_service(server, "tk")["id"]
    base = f"/api/reverse-proxies/services/{sid}/tokens"
    assert server.request("POST", base, {"name": ""}).status == 422
    assert server.request("POST", base, {"name": "x", "expires_in_seconds": -1}).status == 422
    assert server.request("POST", base, {"expires_in_seconds": 5}).status in (400, 422)
    server.ok("POST", base, {"name": "dup"}, status=201)
    assert server.request("POST", base, {"name": "dup"}).status == 409
    code, _, err = run(server, "services", "token", sid, "revoke")
    assert code != 0 and "TOKEN_ID" in err


def test_minted_shapes_are_what_the_gateway_accepts():
    tid, secret = servicetokens.new_token()
    assert servicetokens.digest(secret) == gw_tokens.digest(secret)
    recs = ((tid, "n", servicetokens.digest(secret), 0),)
    assert gw_tokens.check(recs, tid, secret, 0.0) is not None
    kept, _rec, _secret = servicetokens.create((), "a", 0, 100.0)
    assert servicetokens.from_json(servicetokens.to_json(kept)) == kept
    assert servicetokens.from_json([{"id": 1}]) == ()  # malformed dropped
