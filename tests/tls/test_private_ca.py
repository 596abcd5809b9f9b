"""The name-constrained private CA (nbgateway.tls.ca): key 0600, critical
NameConstraints, refusal to issue outside them (gateway side) and rejection of
an out-of-constraint leaf by a real verifier (``openssl verify``)."""

from __future__ import annotations

import datetime
import os
import subprocess

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.logger import globalLogPublisher

from nbgateway.tls.ca import NameNotPermittedError, PrivateCA, constraints_of
from nbgateway.tls.certstore import CertificateStore, LocalCA


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def openssl_verify(tmp_path, ca_pem: bytes, leaf: x509.Certificate, name: str):
    ca_file, leaf_file = tmp_path / "verify-ca.pem", tmp_path / "verify-leaf.pem"
    ca_file.write_bytes(ca_pem)
    leaf_file.write_bytes(pem(leaf))
    return subprocess.run(["openssl", "verify", "-CAfile", str(ca_file),
                           "-verify_hostname", name, str(leaf_file)],
                          capture_output=True, text=True, timeout=30)


def forged_leaf(ca: PrivateCA, name: str) -> x509.Certificate:
    """A leaf signed with the CA key while bypassing PrivateCA's own check
    (what a buggy or compromised issuer could produce)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    return (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca.cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(ca.key, hashes.SHA256()))


def test_ca_key_is_0600_and_constraints_are_critical(tmp_path):
    ca = PrivateCA(str(tmp_path), permitted=["proxy.example"])
    assert oct(os.stat(ca.key_path).st_mode & 0o777) == "0o600"
    ext = ca.cert.extensions.get_extension_for_class(x509.NameConstraints)
    assert ext.critical
    assert [g.value for g in ext.value.permitted_subtrees] == ["proxy.example"]
    assert {str(g.value) for g in ext.value.excluded_subtrees} == {"0.0.0.0/0", "::/0"}
    assert ca.cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_loose_key_permissions_are_tightened_on_load(tmp_path):
    ca = PrivateCA(str(tmp_path), permitted=["proxy.example"])
    os.chmod(ca.key_path, 0o644)
    PrivateCA(str(tmp_path), permitted=["proxy.example"])
    assert oct(os.stat(ca.key_path).st_mode & 0o777) == "0o600"


def test_gateway_refuses_to_issue_outside_the_constraints_and_logs(tmp_path):
    ca = LocalCA(str(tmp_path), permitted=["proxy.example"])
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        for name in ("evil.example", "proxy.example.evil.example", "10.0.0.1",
                     "xproxy.example"):
            with pytest.raises(NameNotPermittedError):
                ca.issue(name)
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert ca.refused == 4
    assert any(e.get("name") == "evil.example" and "refused" in e.get("log_format", "")
               for e in events)
    # inside: the subtree itself and names below it
    assert ca.issue("proxy.example").names == ("proxy.example",)
    assert ca.issue("app.proxy.example").names == ("app.proxy.example",)


def test_openssl_accepts_inside_and_rejects_a_leaf_outside_the_constraints(tmp_path):
    ca = LocalCA(str(tmp_path / "ca"), permitted=["proxy.example"])
    good = ca.issue("app.proxy.example")
    ok = openssl_verify(tmp_path, ca.cert_pem(), good.cert, "app.proxy.example")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    bad = forged_leaf(ca, "bank.example")
    res = openssl_verify(tmp_path, ca.cert_pem(), bad, "bank.example")
    assert res.returncode != 0
    assert "permitted subtree violation" in res.stdout + res.stderr


def test_permit_reissues_same_key_and_subject_with_a_wider_set(tmp_path):
    ca = LocalCA(str(tmp_path / "ca"), permitted=["proxy.example"])
    first = ca.cert
    old_leaf = ca.issue("a.proxy.example")
    assert not ca.permit(["b.proxy.example", "PROXY.example."])  # already covered
    assert ca.cert is first
    assert ca.permit(["private.corp"])
    assert ca.cert.serial_number != first.serial_number
    assert ca.cert.subject == first.subject
    assert ca.cert.public_key() == first.public_key()
    assert ca.cert.not_valid_after_utc == first.not_valid_after_utc
    assert constraints_of(ca.cert) == {"proxy.example", "private.corp"}
    # persisted: a restart loads the wider set
    again = LocalCA(str(tmp_path / "ca"), permitted=["proxy.example"])
    assert constraints_of(again.cert) == {"proxy.example", "private.corp"}
    # the new name verifies against the new CA certificate; old leaves still do
    leaf = again.issue("app.private.corp")
    assert openssl_verify(tmp_path, again.cert_pem(), leaf.cert,
                          "app.private.corp").returncode == 0
    assert openssl_verify(tmp_path, again.cert_pem(), old_leaf.cert,
                          "a.proxy.example").returncode == 0
    # ... but not against the old one (a peer must download the CA again)
    assert openssl_verify(tmp_path, pem(first), leaf.cert, "app.private.corp").returncode != 0


def test_an_unconstrained_ca_from_before_is_constrained_on_load(tmp_path):
    LocalCA(str(tmp_path))  # old layout: no NameConstraints
    ca = LocalCA(str(tmp_path), permitted=["proxy.example"])
    assert constraints_of(ca.cert) == {"proxy.example"}
    with open(ca.cert_path, "rb") as f:
        assert constraints_of(x509.load_pem_x509_certificate(f.read())) == {"proxy.example"}


def test_gateway_store_constrains_to_default_and_served_names(tmp_path):
    served = {"app.private.corp"}
    store = CertificateStore(None, None, str(tmp_path), default_name="proxy.example",
                             serves=lambda n: n in served or n == "proxy.example")
    assert constraints_of(store.ca.cert) == {"proxy.example"}
    # an unserved name gets the default certificate; the CA is not widened
    assert store.certificate_for("bank.example").names == ("proxy.example",)
    assert constraints_of(store.ca.cert) == {"proxy.example"}
    # a mapping arrives: the store widens the CA before any handshake
    assert store.permit(["App.Private.Corp."])
    leaf = store.certificate_for("app.private.corp")
    assert leaf.names == ("app.private.corp",)
    assert openssl_verify(tmp_path, store.ca.cert_pem(), leaf.cert,
                          "app.private.corp").returncode == 0
    # an address as a name is never issued under the constraints
    assert store.certificate_for("10.1.2.3").names == ("proxy.example",)
