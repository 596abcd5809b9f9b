"""The one redaction of a ``ProxyMapping`` (nbgateway.routes.redaction), used by
the mapping store's debug log and by every log observer: one test table."""

from __future__ import annotations

import json

import pytest

from nbgateway._proto import proxy_service_pb2 as pb
from nbgateway.observe import logging as observe_logging
from nbgateway.routes import redaction
from nbgateway.routes.redaction import REDACTED, LazyRedacted, redacted, redacted_json
from nbgateway.store import mappings as store_mappings


def secret_mapping() -> pb.ProxyMapping:
    return pb.ProxyMapping(
        type=pb.UPDATE_TYPE_CREATED, id="svc-1", account_id="acc-1", domain="app.example.com",
        auth_token="super-secret-token",
        auth=pb.Authentication(
            session_key="public-session-key", pin=True,
            header_auths=[pb.HeaderAuth(header="X-Api-Key", hashed_value="$argon2id$secret"),
                          pb.HeaderAuth(header="X-Empty", hashed_value="")]),
        path=[pb.PathMapping(path="/", target="http://10.0.0.5:8080",
                             options=pb.PathTargetOptions(
                                 custom_headers={"Authorization": "Bearer upstream-secret",
                                                 "X-Empty": ""}))],
        private=True,
        nbgw_assertion=pb.NbgwIdentityAssertion(private_key="assertion-private-key",
                                                next_private_key="next-private-key"),
        nbgw_tokens=[pb.NbgwServiceToken(id="nbt_1", name="ci", secret_sha256="ab" * 32)],
        nbgw_client_ca_pem="-----BEGIN CERTIFICATE-----\n",
        nbgw_client_cert_users=[pb.NbgwClientCertUser(
            match="alice@example.com", user_id="u-1", email="alice@example.com",
            group_names=["eng"])],
    )


SECRETS = ("super-secret-token", "$argon2id$secret", "upstream-secret",
           "assertion-private-key", "next-private-key", "ab" * 32)

# (field as a function of the redacted copy, expected value)
TABLE = [
    ("auth_token", lambda m: m.auth_token, REDACTED),
    ("session_key (public) kept", lambda m: m.auth.session_key, "public-session-key"),
    ("hashed_value redacted, empty kept, names kept",
     lambda m: [(h.header, h.hashed_value) for h in m.auth.header_auths],
     [("X-Api-Key", REDACTED), ("X-Empty", "")]),
    ("every custom header value, names kept",
     lambda m: dict(m.path[0].options.custom_headers),
     {"Authorization": REDACTED, "X-Empty": REDACTED}),
    ("assertion signing keys", lambda m: (m.nbgw_assertion.private_key,
                                          m.nbgw_assertion.next_private_key),
     (REDACTED, REDACTED)),
    ("service token digests, ids and names kept",
     lambda m: [(t.id, t.name, t.secret_sha256) for t in m.nbgw_tokens],
     [("nbt_1", "ci", REDACTED)]),
    ("mTLS user table: names and emails, user ids and the CA kept",
     lambda m: ([(u.match, u.user_id, u.email) for u in m.nbgw_client_cert_users],
                m.nbgw_client_ca_pem),
     ([(REDACTED, "u-1", REDACTED)], "-----BEGIN CERTIFICATE-----\n")),
    ("non-secret fields untouched", lambda m: (m.id, m.domain, m.private, m.auth.pin),
     ("svc-1", "app.example.com", True, True)),
]


@pytest.mark.parametrize(("what", "get", "want"), TABLE, ids=[t[0] for t in TABLE])
def test_redaction_table(what, get, want):
    original = secret_mapping()
    before = original.SerializeToString()
    assert get(redacted(original)) == want
    assert original.SerializeToString() == before  # never mutated


def test_empty_fields_stay_empty_and_nothing_is_added():
    plain = redacted(pb.ProxyMapping(id="x"))
    assert plain.auth_token == "" and not plain.HasField("auth") and not plain.path
    no_options = redacted(pb.ProxyMapping(id="y", path=[pb.PathMapping(path="/")]))
    assert not no_options.path[0].HasField("options")


def test_json_is_single_line_protojson_with_zero_values():
    line = redacted_json(secret_mapping())
    assert "\n" not in line
    doc = json.loads(line)
    assert doc["auth_token"] == REDACTED
    assert doc["auth"]["header_auths"][0] == {"header": "X-Api-Key", "hashed_value": REDACTED}
    assert doc["auth"]["session_key"] == "public-session-key"
    assert doc["path"][0]["options"]["custom_headers"]["Authorization"] == REDACTED
    assert doc["pass_host_header"] is False  # zero values included, proto field names
    for secret in SECRETS:
        assert secret not in line
    assert json.loads(redacted_json(pb.ProxyMapping(id="s2")))["auth_token"] == ""
    assert str(LazyRedacted(secret_mapping())) == line


def test_store_and_log_observers_use_this_one_implementation():
    # no second copy to drift: both users bind the functions defined here
    assert store_mappings.LazyRedacted is redaction.LazyRedacted
    assert observe_logging.LazyRedacted is redaction.LazyRedacted
    assert observe_logging.redacted_json is redaction.redacted_json
    for module in (store_mappings, observe_logging):
        assert not hasattr(module, "redact_mapping") and not hasattr(module, "redacted")
