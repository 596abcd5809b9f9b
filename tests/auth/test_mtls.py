"""mTLS core (nbgateway.auth.mtls): CA bundle validation, chain verification
against the service's CAs only, expiry and CA removal, certificate -> user
mapping, and the policy step (auth/policy.py)."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from nbgateway.auth import mtls
from nbgateway.auth.policy import Forward, Protect, RequestFacts, Respond
from nbgateway.auth.session import SessionVerifier
from nbgateway.routes.identity import Identity
from tests.tls._clientcerts import NOW, IssuingCA

T = NOW.timestamp()
USERS = (("alice@example.com", "u-alice", "alice@example.com", ("g1",), ("eng",)),
         ("spiffe://example/ci", "u-ci", "ci@example.com", (), ()),
         ("build-bot", "u-bot", "bot@example.com", ("g2",), ("ops",)))


@pytest.fixture(scope="module")
def ca():
    return IssuingCA("Service CA")


@pytest.fixture(scope="module")
def other():
    return IssuingCA("Other CA")


# -- bundle validation ---------------------------------------------------------------


def test_bundle_of_cas_is_accepted_and_deduplicated(ca, other):
    certs = mtls.parse_ca_bundle(ca.pem + other.pem + ca.pem, now=T)
    assert [c.subject.rfc4514_string() for c in certs] == ["CN=Service CA", "CN=Other CA"]


@pytest.mark.parametrize("bad, why", [
    ("", "empty"),
    ("hello", "no PEM certificate"),
    ("x" * (mtls.MAX_BUNDLE_BYTES + 1), "larger than"),
])
def test_bundle_shapes_refused(bad, why):
    with pytest.raises(mtls.BundleError, match=why):
        mtls.parse_ca_bundle(bad)


def test_bundle_with_a_private_key_is_refused(ca):
    key = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()).decode()
    with pytest.raises(mtls.BundleError, match="certificates only, found PRIVATE KEY"):
        mtls.parse_ca_bundle(ca.pem + key)


def test_leaf_certificate_is_not_a_ca(ca):
    leaf = ca.issue("alice").cert.public_bytes(serialization.Encoding.PEM).decode()
    with pytest.raises(mtls.BundleError, match="is not a CA"):
        mtls.parse_ca_bundle(leaf)
    with pytest.raises(mtls.BundleError, match="may not sign"):
        mtls.parse_ca_bundle(IssuingCA("no sign", key_cert_sign=False).pem)


def test_expired_ca_and_too_many_cas_refused():
    old = IssuingCA("old", not_after=NOW - dt.timedelta(days=1))
    with pytest.raises(mtls.BundleError, match="has expired"):
        mtls.parse_ca_bundle(old.pem, now=T)
    many = "".join(IssuingCA(f"ca{i}").pem for i in range(mtls.MAX_CAS + 1))
    with pytest.raises(mtls.BundleError, match="more than"):
        mtls.parse_ca_bundle(many)


# -- names and mapping ---------------------------------------------------------------


def test_names_and_mapping_order(ca):
    cert = ca.issue("build-bot", emails=("Alice@Example.com",), uris=("spiffe://example/ci",))
    names = mtls.cert_names(cert.cert)
    assert names == mtls.CertNames(("Alice@Example.com",), ("spiffe://example/ci",), "build-bot")
    # SAN email first (case-insensitive), then URI, then CN
    assert mtls.identify(USERS, names).user_id == "u-alice"
    assert mtls.identify(USERS, mtls.CertNames((), ("spiffe://example/ci",), "build-bot")
                         ).user_id == "u-ci"
    ident = mtls.identify(USERS, mtls.CertNames((), (), "build-bot"))
    assert ident == Identity("u-bot", "bot@example.com", ("g2",), ("ops",), "mtls")
    assert mtls.identify(USERS, mtls.CertNames((), (), "BUILD-BOT")) is None  # CN exact
    assert mtls.identify(USERS, mtls.CertNames(("mallory@example.com",), (), "")) is None
    assert mtls.identify((), names) is None


# -- chain verification --------------------------------------------------------------


def test_chain_from_the_service_ca_verifies(ca):
    v = mtls.MtlsVerifier()
    svc = v.ca_for(ca.pem)
    leaf = ca.issue("build-bot", emails=("alice@example.com",))
    verdict = v.verify(svc, leaf.cert, [], T)
    assert verdict.ok and verdict.names.emails == ("alice@example.com",)
    # memoised per chain and bundle
    assert v.verify(svc, leaf.cert, [leaf.cert], T).ok and v.verified == 1


def test_other_ca_self_signed_and_wrong_usage_refused(ca, other):
    v = mtls.MtlsVerifier()
    svc = v.ca_for(ca.pem)
    assert not v.verify(svc, other.issue("alice").cert, [], T).ok
    # presenting the other CA as "intermediate" does not help: it is not an anchor
    assert not v.verify(svc, other.issue("alice").cert, [other.cert], T).ok
    # the service CA's own certificate is no client certificate... a leaf
    # claiming the service CA's name but signed by another key fails too
    forged = IssuingCA("Service CA").issue("alice")
    verdict = v.verify(svc, forged.cert, [], T)
    assert not verdict.ok and "certificate not accepted" in verdict.reason
    server_only = ca.issue("alice", eku=(ExtendedKeyUsageOID.SERVER_AUTH,))
    assert "client authentication" in v.verify(svc, server_only.cert, [], T).reason


def test_intermediate_sent_by_the_client_chains_to_the_root(ca):
    inter = IssuingCA("Issuing CA", issuer=ca)
    leaf = inter.issue("build-bot")
    v = mtls.MtlsVerifier()
    svc = v.ca_for(ca.pem)
    assert not v.verify(svc, leaf.cert, [], T).ok
    assert v.verify(svc, leaf.cert, [inter.cert], T).ok
    # an uploaded intermediate alone is an anchor too
    assert v.verify(v.ca_for(inter.pem), leaf.cert, [], T).ok


def test_expiry_is_checked_at_every_now(ca):
    v = mtls.MtlsVerifier()
    svc = v.ca_for(ca.pem)
    leaf = ca.issue("x", not_after=NOW + dt.timedelta(hours=1))
    assert v.verify(svc, leaf.cert, [], T).ok
    later = v.verify(svc, leaf.cert, [], T + 7200)
    assert not later.ok and "expired" in later.reason
    early = ca.issue("y", not_before=NOW + dt.timedelta(hours=1))
    assert not v.verify(svc, early.cert, [], T).ok


def test_removing_the_ca_from_the_bundle_refuses_its_certificates(ca, other):
    v = mtls.MtlsVerifier()
    leaf = ca.issue("x")
    assert v.verify(v.ca_for(ca.pem + other.pem), leaf.cert, [], T).ok
    assert not v.verify(v.ca_for(other.pem), leaf.cert, [], T).ok


def test_unusable_bundle_is_none_and_memory_is_bounded(ca):
    v = mtls.MtlsVerifier(max_bundles=2, max_chains=3)
    assert v.ca_for("") is None and v.ca_for("junk") is None
    svc = v.ca_for(ca.pem)
    for i in range(5):
        v.verify(svc, ca.issue(f"c{i}").cert, [], T)
    assert len(v._chains) == 3 and len(v._bundles) == 2


# -- the policy step -----------------------------------------------------------------


def _facts(**kw) -> RequestFacts:
    base = dict(host="app.example", uri="/x", tls=True, overlay=False, now=T,
                account_id="a", service_id="s", schemes=(), header_names=(),
                session_key="", max_age=3600, mtls=True)
    base.update(kw)
    return RequestFacts(**base)


def test_policy_valid_certificate_forwards_with_identity():
    ident = Identity("u-alice", "alice@example.com", ("g1",), ("eng",), "mtls")
    step = Protect(_facts(mtls_identity=ident), SessionVerifier()).start()
    assert step == Forward(ident, "mtls")


def test_policy_mtls_only_without_certificate_is_401_page():
    step = Protect(_facts(mtls_error="no client certificate was presented"),
                   SessionVerifier()).start()
    assert isinstance(step, Respond)
    assert (step.status, step.kind, step.mechanism) == (401, "certificate", "mtls")
    assert step.message == "no client certificate was presented"


def test_policy_with_other_schemes_falls_through_to_the_login():
    step = Protect(_facts(schemes=("password",), mtls_error="x"), SessionVerifier()).start()
    assert isinstance(step, Respond) and step.kind == "login"
    assert step.methods == (("password", "password"),)


def test_policy_oidc_with_mtls_falls_through_to_the_idp():
    from nbgateway.auth.policy import CallOIDCURL

    step = Protect(_facts(schemes=("oidc",), mtls_error="x"), SessionVerifier()).start()
    assert step == CallOIDCURL("https://app.example/x")


def test_policy_invalid_service_token_still_401_before_mtls():
    ident = Identity("u-alice", "alice@example.com", method="mtls")
    step = Protect(_facts(mtls_identity=ident, token_auth=True,
                          headers={"x-netbird-token-id": "nbt_x",
                                   "x-netbird-token-secret": "y"}), SessionVerifier()).start()
    assert isinstance(step, Respond) and step.status == 401 and step.mechanism == "token"


def test_tls_lookup_only_for_public_http_services_with_a_usable_bundle(ca):
    from types import SimpleNamespace

    def entry(**kw):
        base = dict(private=False, l4=False, client_ca_pem=ca.pem)
        base.update(kw)
        return SimpleNamespace(**base)

    entries = {"a": entry(), "private": entry(private=True), "tcp": entry(l4=True),
               "none": entry(client_ca_pem=""), "bad": entry(client_ca_pem="junk")}
    lookup = mtls.tls_lookup(entries.get, mtls.MtlsVerifier())
    assert lookup("a", None).cas[0].subject.rfc4514_string() == "CN=Service CA"
    assert lookup("a", None) is lookup("a", "acct")  # one parsed bundle
    for name in ("private", "tcp", "none", "bad", "unknown"):
        assert lookup(name, None) is None, name
